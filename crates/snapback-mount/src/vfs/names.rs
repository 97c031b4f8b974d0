//! Lookups, attributes and directory listings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use snapback_core::time::strip_fraction;

use super::read::Handle;
use super::tree::{is_legacy_time_name, Node, NodeKind, Tree};
use super::{Attr, DirEntry, Entry, Kind, Vfs, ROOT_INO};
use crate::error::VfsError;

impl Vfs {
    pub(super) fn tree(&self) -> Arc<Tree> {
        self.listing
            .tree
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn is_dynamic(tree: &Tree, ino: u64) -> bool {
        match tree.nodes.get(&ino) {
            Some(Node {
                kind: NodeKind::Dir { dynamic, .. },
                ..
            }) => *dynamic,
            Some(Node {
                kind: NodeKind::Symlink(_),
                ..
            }) => true,
            _ => false,
        }
    }

    fn attr_of(&self, ino: u64, n: &Node) -> Entry {
        let (kind, size, perm, ttl) = match &n.kind {
            NodeKind::Dir { dynamic, .. } => (
                Kind::Dir,
                0,
                0o555,
                if *dynamic {
                    self.opts.refresh_ttl
                } else {
                    self.opts.immutable_ttl
                },
            ),
            NodeKind::File(f) => {
                let e = f.entry();
                // The source's bits, exactly: 0000 is a mode like any other
                // (it was once taken for "unknown" and served as 0444).
                (
                    Kind::File,
                    e.size,
                    (e.mode & 0o7777) as u16,
                    self.opts.immutable_ttl,
                )
            }
            NodeKind::Bytes(b) => (Kind::File, b.len() as u64, 0o444, self.opts.immutable_ttl),
            NodeKind::Status => (
                Kind::File,
                self.status_json().len() as u64,
                0o444,
                Duration::ZERO,
            ),
            NodeKind::Symlink(t) => (Kind::Symlink, t.len() as u64, 0o777, self.opts.refresh_ttl),
        };
        Entry {
            attr: Attr {
                ino,
                kind,
                size,
                perm,
                nlink: if kind == Kind::Dir { 2 } else { 1 },
                mtime: n.mtime,
                uid: self.opts.uid,
                gid: self.opts.gid,
            },
            ttl,
        }
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Entry, VfsError> {
        let mut tree = self.tree();
        if Self::is_dynamic(&tree, parent) {
            self.ensure_fresh();
            tree = self.tree();
        }
        let p = tree.nodes.get(&parent).ok_or(VfsError::Stale(parent))?;
        let NodeKind::Dir { children, .. } = &p.kind else {
            return Err(VfsError::NotDir);
        };
        let ino = match children.get(name) {
            Some(i) => *i,
            None => Self::legacy_child(&tree, children, name).ok_or(VfsError::NotFound)?,
        };
        let n = tree.nodes.get(&ino).ok_or(VfsError::Stale(ino))?;
        Ok(self.attr_of(ino, n))
    }

    /// Names of the older, seconds-only form still resolve (scripts and
    /// notes written before names carried the full time), without being
    /// listed: `…T17:17:00Z_9f2c4e1a` under `snapshots/`, and under
    /// `by-path` `…T17:17:00Z` (the first snapshot of that second) or
    /// `…T17:17:00Z_<short id>`.
    fn legacy_child(tree: &Tree, children: &BTreeMap<String, u64>, name: &str) -> Option<u64> {
        if !is_legacy_time_name(name) {
            return None;
        }
        children.iter().find_map(|(child, ino)| {
            let old = strip_fraction(child)?;
            if old == name {
                return Some(*ino);
            }
            match tree.nodes.get(ino).map(|n| &n.kind) {
                Some(NodeKind::File(f)) if format!("{old}_{}", f.snap.short()) == name => {
                    Some(*ino)
                }
                _ => None,
            }
        })
    }

    /// How long the kernel may remember that a name is absent from
    /// directory `parent`: as long as the directory's own listing is cached.
    /// SQLite looks for `-journal` and `-wal` files at every transaction;
    /// without this, each of those lookups would come to us.
    pub fn negative_ttl(&self, parent: u64) -> Duration {
        let tree = self.tree();
        match tree.nodes.get(&parent) {
            Some(Node {
                kind: NodeKind::Dir { dynamic: false, .. },
                ..
            }) => self.opts.immutable_ttl,
            Some(Node {
                kind: NodeKind::Dir { .. },
                ..
            }) => self.opts.refresh_ttl,
            _ => Duration::ZERO,
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Entry, VfsError> {
        let mut tree = self.tree();
        if Self::is_dynamic(&tree, ino) {
            self.ensure_fresh();
            tree = self.tree();
        }
        let n = tree.nodes.get(&ino).ok_or(VfsError::Stale(ino))?;
        Ok(self.attr_of(ino, n))
    }

    pub fn readlink(&self, ino: u64) -> Result<String, VfsError> {
        let tree = self.tree();
        match &tree.nodes.get(&ino).ok_or(VfsError::Stale(ino))?.kind {
            NodeKind::Symlink(t) => Ok(t.clone()),
            _ => Err(VfsError::NotSymlink),
        }
    }

    /// The entries of a directory, `.` and `..` first.
    pub fn list(&self, ino: u64) -> Result<Vec<DirEntry>, VfsError> {
        let mut tree = self.tree();
        if Self::is_dynamic(&tree, ino) {
            self.ensure_fresh();
            tree = self.tree();
        }
        let n = tree.nodes.get(&ino).ok_or(VfsError::Stale(ino))?;
        let NodeKind::Dir { children, .. } = &n.kind else {
            return Err(VfsError::NotDir);
        };
        let mut out = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: n.parent,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        for (name, c) in children {
            let Some(cn) = tree.nodes.get(c) else {
                continue;
            };
            let kind = match cn.kind {
                NodeKind::Dir { .. } => Kind::Dir,
                NodeKind::Symlink(_) => Kind::Symlink,
                _ => Kind::File,
            };
            out.push(DirEntry {
                ino: *c,
                kind,
                name: name.clone(),
            });
        }
        Ok(out)
    }

    /// Opens a directory: its listing is taken now, so that a listing read
    /// in several calls is consistent.
    pub fn opendir(&self, ino: u64) -> Result<u64, VfsError> {
        let entries = self.list(ino)?;
        Ok(self.new_handle(Handle::Dir(Arc::new(entries))))
    }

    /// Entries of an open directory from position `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirEntry>, VfsError> {
        match &*self.handle(fh)? {
            Handle::Dir(e) => Ok(e.iter().skip(offset as usize).cloned().collect()),
            _ => Err(VfsError::NotDir),
        }
    }

    /// Whether `ino` is generated content (a manifest or the status file),
    /// served from memory.
    pub fn is_generated(&self, ino: u64) -> bool {
        matches!(
            self.tree().nodes.get(&ino).map(|n| &n.kind),
            Some(NodeKind::Bytes(_) | NodeKind::Status)
        )
    }

    /// Resolves a path relative to the root (tests and the health check).
    pub fn resolve(&self, path: &str) -> Result<Entry, VfsError> {
        let mut e = self.getattr(ROOT_INO)?;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            e = self.lookup(e.attr.ino, c)?;
        }
        Ok(e)
    }
}
