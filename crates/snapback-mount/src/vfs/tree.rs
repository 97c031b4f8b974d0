//! The tree of nodes the mount shows, built from the snapshot list: names,
//! stable inode numbers, the generated manifests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use snapback_core::time::format_rfc3339_nanos;
use snapback_core::{FileEntry, FileKind, Id, Manifest, Snapshot};

use super::{View, MANIFEST_NAME, ROOT_INO, STATUS_NAME};

/// A file of a snapshot.
#[derive(Debug)]
pub(super) struct FileNode {
    pub(super) snap: Id,
    pub(super) manifest: Arc<Manifest>,
    pub(super) idx: usize,
}

impl FileNode {
    pub(super) fn entry(&self) -> &FileEntry {
        &self.manifest.files[self.idx]
    }

    pub(super) fn is_sqlite(&self) -> bool {
        self.entry().kind == FileKind::Sqlite
    }
}

#[derive(Debug, Clone)]
pub(super) enum NodeKind {
    Dir {
        children: BTreeMap<String, u64>,
        dynamic: bool,
    },
    File(Arc<FileNode>),
    Bytes(Arc<Vec<u8>>),
    Status,
    Symlink(String),
}

#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) parent: u64,
    pub(super) mtime: SystemTime,
    pub(super) kind: NodeKind,
}

#[derive(Debug, Default)]
pub(super) struct Tree {
    pub(super) nodes: HashMap<u64, Node>,
}

/// Inode numbers by node key, kept for the life of the mount.
#[derive(Debug)]
pub(super) struct Inodes {
    pub(super) by_key: HashMap<String, u64>,
    pub(super) next: u64,
}

struct Builder<'a> {
    inos: &'a mut Inodes,
    nodes: HashMap<u64, Node>,
}

impl Builder<'_> {
    fn ino(&mut self, key: &str) -> u64 {
        if let Some(i) = self.inos.by_key.get(key) {
            return *i;
        }
        let i = self.inos.next;
        self.inos.next += 1;
        self.inos.by_key.insert(key.to_string(), i);
        i
    }

    fn dir(dynamic: bool, parent: u64, mtime: SystemTime) -> Node {
        Node {
            parent,
            mtime,
            kind: NodeKind::Dir {
                children: BTreeMap::new(),
                dynamic,
            },
        }
    }

    /// `.snapback-status.json` in the root.
    fn add_status(&mut self, now: SystemTime) {
        self.add(
            ROOT_INO,
            STATUS_NAME,
            &format!("/{STATUS_NAME}"),
            Node {
                parent: ROOT_INO,
                mtime: now,
                kind: NodeKind::Status,
            },
        );
    }

    /// Adds `node` as `name` under `parent`; returns its inode, or None if
    /// the name is taken.
    fn add(&mut self, parent: u64, name: &str, key: &str, node: Node) -> Option<u64> {
        if !valid_name(name) {
            return None;
        }
        if let Some(Node {
            kind: NodeKind::Dir { children, .. },
            ..
        }) = self.nodes.get(&parent)
        {
            if children.contains_key(name) {
                return None;
            }
        } else {
            return None;
        }
        let ino = self.ino(key);
        self.nodes.insert(ino, node);
        if let Some(Node {
            kind: NodeKind::Dir { children, .. },
            ..
        }) = self.nodes.get_mut(&parent)
        {
            children.insert(name.to_string(), ino);
        }
        Some(ino)
    }

    /// The directory `name` under `parent`, created if missing; None if the
    /// name is taken by something else.
    fn subdir(
        &mut self,
        parent: u64,
        parent_key: &str,
        name: &str,
        dynamic: bool,
        mtime: SystemTime,
    ) -> Option<u64> {
        let existing = match self.nodes.get(&parent) {
            Some(Node {
                kind: NodeKind::Dir { children, .. },
                ..
            }) => children.get(name).copied(),
            _ => return None,
        };
        if let Some(i) = existing {
            return match self.nodes.get_mut(&i) {
                Some(n) if matches!(n.kind, NodeKind::Dir { .. }) => {
                    n.mtime = n.mtime.max(mtime);
                    Some(i)
                }
                _ => None,
            };
        }
        let key = format!("{parent_key}/{name}");
        self.add(parent, name, &key, Builder::dir(dynamic, parent, mtime))
    }

    /// Adds one snapshot's files (and its manifest) under `dir`.
    fn snapshot_content(&mut self, dir: u64, dir_key: &str, snap: &Snapshot) {
        let t: SystemTime = snap.time.into();
        let manifest = Arc::new(manifest_json(snap));
        self.add(
            dir,
            MANIFEST_NAME,
            &format!("{dir_key}/{MANIFEST_NAME}"),
            Node {
                parent: dir,
                mtime: t,
                kind: NodeKind::Bytes(manifest),
            },
        );
        for (idx, f) in snap.manifest.files.iter().enumerate() {
            let comps: Vec<&str> = f.path.split('/').filter(|c| !c.is_empty()).collect();
            let Some((leaf, dirs)) = comps.split_last() else {
                continue;
            };
            let mut parent = dir;
            let mut key = dir_key.to_string();
            let mut ok = true;
            for c in dirs {
                match self.subdir(parent, &key, c, false, t) {
                    Some(i) => {
                        parent = i;
                        key = format!("{key}/{c}");
                    }
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            let node = Node {
                parent,
                mtime: file_mtime(f, t),
                kind: NodeKind::File(Arc::new(FileNode {
                    snap: snap.id,
                    manifest: snap.manifest.clone(),
                    idx,
                })),
            };
            if !ok
                || self
                    .add(parent, leaf, &format!("{key}/{leaf}"), node)
                    .is_none()
            {
                tracing::warn!(snapshot = %snap.id.short(), path = %f.path, "not shown in the mount: its path clashes with another entry or has a '.' or '..' component");
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

fn file_mtime(f: &FileEntry, fallback: SystemTime) -> SystemTime {
    f.mtime
        .as_deref()
        .and_then(|m| snapback_core::time::parse_rfc3339(m).ok())
        .map(SystemTime::from)
        .unwrap_or(fallback)
}

/// The name of a snapshot's directory under `snapshots/`: its time in full
/// (so that `@TIME` with it selects this snapshot) and its short id; for a
/// timeline point, its name with `-` for `/` (`<segment>-<index>`).
pub fn snapshot_dir_name(s: &Snapshot) -> String {
    format!(
        "{}_{}",
        format_rfc3339_nanos(s.time),
        s.name().replace('/', "-")
    )
}

/// True for a name in the older, seconds-only form of the mount's time
/// names: `2026-02-02T17:17:00Z`, optionally with `_<8 hex>`.
pub(super) fn is_legacy_time_name(name: &str) -> bool {
    let b = name.as_bytes();
    let time_ok = b.len() >= 20
        && b[19] == b'Z'
        && b[..19].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    time_ok
        && (b.len() == 20
            || (b.len() == 29 && b[20] == b'_' && b[21..].iter().all(u8::is_ascii_hexdigit)))
}

/// The document `.snapback-manifest.json` holds. Fields in alphabetical
/// order, and the manifest as a JSON value (whose keys serde_json sorts):
/// the file was first written from a `json!()` value, and its bytes stay
/// the same (the test `manifest_json_keys_stay_in_alphabetical_order` pins
/// it).
#[derive(Debug, Serialize)]
pub(crate) struct ManifestDoc {
    pub id: String,
    pub manifest: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_notes: Option<MountNotes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point: Option<PointDoc>,
    pub short_id: String,
}

/// Which timeline point a snapshot directory is.
#[derive(Debug, Serialize)]
pub(crate) struct PointDoc {
    pub base: String,
    pub index: usize,
    pub name: String,
    pub segment: String,
}

/// What the mount serves differently from the stored image.
#[derive(Debug, Serialize)]
pub(crate) struct MountNotes {
    pub explanation: &'static str,
    pub served_as_rollback_journal: Vec<String>,
}

/// The `.snapback-manifest.json` of a snapshot: its id and manifest, and
/// what the mount serves differently from the stored image.
fn manifest_json(s: &Snapshot) -> Vec<u8> {
    super::status::json_file(&manifest_doc(s))
}

pub(crate) fn manifest_doc(s: &Snapshot) -> ManifestDoc {
    let patched: Vec<String> = s
        .manifest
        .files
        .iter()
        .filter(|f| {
            f.kind == FileKind::Sqlite && f.sqlite.as_ref().is_some_and(|q| q.journal_mode == "wal")
        })
        .map(|f| f.path.clone())
        .collect();
    ManifestDoc {
        id: s.id.to_hex(),
        short_id: s.id.short(),
        manifest: serde_json::to_value(&*s.manifest).unwrap_or(serde_json::Value::Null),
        point: s.point.as_ref().map(|p| PointDoc {
            name: p.name(),
            segment: p.segment.to_hex(),
            index: p.index,
            base: p.base.to_hex(),
        }),
        mount_notes: (!patched.is_empty()).then_some(MountNotes {
            served_as_rollback_journal: patched,
            explanation: "these WAL-mode databases are served with header bytes 18 and 19 set to 1 (rollback journal) so that they open read-only with no -wal or -shm file; every other byte is the stored image, whose SHA-256 the manifest records",
        }),
    }
}

pub(super) fn build(view: &View, snaps: &[Snapshot], inos: &mut Inodes, now: SystemTime) -> Tree {
    let mut b = Builder {
        inos,
        nodes: HashMap::new(),
    };
    match view {
        View::One(s) => {
            let t: SystemTime = s.time.into();
            b.nodes.insert(ROOT_INO, Builder::dir(false, ROOT_INO, t));
            b.snapshot_content(ROOT_INO, "", s);
            b.add_status(now);
        }
        View::All => {
            let newest: SystemTime = snaps.last().map(|s| s.time.into()).unwrap_or(now);
            b.nodes
                .insert(ROOT_INO, Builder::dir(true, ROOT_INO, newest));
            b.add_status(now);
            let snapdir = b
                .subdir(ROOT_INO, "", "snapshots", true, newest)
                .unwrap_or(ROOT_INO);
            let bypath = b
                .subdir(ROOT_INO, "", "by-path", true, newest)
                .unwrap_or(ROOT_INO);
            for s in snaps {
                let name = snapshot_dir_name(s);
                // Keyed by the full id, not by the name: the kernel keeps a
                // file's pages across opens (`keep_cache`) under its inode
                // number, so one number must never stand for two contents.
                // Two snapshots can share a name (the time and the 8-hex
                // short id), one listed after the other was forgotten.
                let key = format!("/snapshots/#{}", s.id.to_hex());
                let t: SystemTime = s.time.into();
                if let Some(d) = b.add(snapdir, &name, &key, Builder::dir(false, snapdir, t)) {
                    b.snapshot_content(d, &key, s);
                }
                for (idx, f) in s.manifest.files.iter().enumerate() {
                    by_path_entry(&mut b, bypath, s, idx, f);
                }
            }
            // What `latest` means everywhere: not a snapshot dated ahead of
            // this host's clock, the store's, or its successor's.
            let dating = snapback_core::Dating::of(snaps);
            if let Some(s) = dating.newest(snaps, snapback_core::time::now()) {
                b.add(
                    ROOT_INO,
                    "latest",
                    "/latest",
                    Node {
                        parent: ROOT_INO,
                        mtime: s.time.into(),
                        kind: NodeKind::Symlink(format!("snapshots/{}", snapshot_dir_name(s))),
                    },
                );
            }
        }
    }
    Tree { nodes: b.nodes }
}

fn by_path_entry(b: &mut Builder<'_>, bypath: u64, s: &Snapshot, idx: usize, f: &FileEntry) {
    let t: SystemTime = s.time.into();
    let mut parent = bypath;
    let mut key = "/by-path".to_string();
    for c in f.path.split('/').filter(|c| !c.is_empty()) {
        match b.subdir(parent, &key, c, true, t) {
            Some(i) => {
                parent = i;
                key = format!("{key}/{c}");
            }
            None => {
                tracing::warn!(path = %f.path, "not shown under by-path: a component clashes with another entry");
                return;
            }
        }
    }
    let time = format_rfc3339_nanos(s.time);
    let node = Node {
        parent,
        mtime: file_mtime(f, t),
        kind: NodeKind::File(Arc::new(FileNode {
            snap: s.id,
            manifest: s.manifest.clone(),
            idx,
        })),
    };
    let node_key = format!("{key}/#{}", s.id.to_hex());
    if b.add(parent, &time, &node_key, node.clone()).is_none() {
        let name = format!("{time}_{}", s.id.short());
        if b.add(parent, &name, &node_key, node).is_none() {
            tracing::warn!(path = %f.path, snapshot = %s.id.short(), "not shown under by-path: name clash");
        }
    }
}
