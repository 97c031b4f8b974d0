//! Restoring files from a snapshot.
//!
//! Plan, then apply: the plan maps every selected file to its destination
//! and is checked whole (no destination may exist without `force`) before a
//! byte is written. Each file is written to a temporary file beside its
//! destination, every chunk verified against its hash, the whole file
//! verified against the manifest's SHA-256 and checksum, fsync'd, and only
//! then renamed into place.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::layout::pack_key;
use crate::manifest::{FileEntry, FileKind};
use crate::pack::open_blob;
use crate::repo::Repository;
use crate::selector::{path_matches, Snapshot};
use crate::snapshot::checksum_of;
use crate::Progress;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Overwrite existing destination files.
    pub force: bool,
    /// Restore only this file, or the files under this directory.
    pub path: Option<String>,
    /// How long to wait for a prune's exclusive lock.
    pub lock_wait: std::time::Duration,
    /// Take no repository lock (`--no-lock`; see `Repository::read_lock`).
    pub no_lock: bool,
}

/// One file to restore and where it goes.
#[derive(Debug, Clone)]
pub struct RestoreItem {
    pub file: FileEntry,
    pub dest: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub bytes: u64,
    /// Whether the restore held a lock (see `Repository::read_lock`).
    pub lock: crate::lock::LockState,
}

/// Maps the selected files to destinations. A single selected file restores
/// to DEST itself, unless DEST is an existing directory or ends with '/';
/// otherwise every file goes to DEST/<its absolute source path>.
pub fn plan(snap: &Snapshot, dest: &Path, opts: &RestoreOptions) -> Result<Vec<RestoreItem>> {
    let files: Vec<&FileEntry> = snap
        .manifest
        .files
        .iter()
        .filter(|f| {
            opts.path
                .as_deref()
                .is_none_or(|p| path_matches(&f.path, p))
        })
        .collect();
    if files.is_empty() {
        return Err(Error::Selector(format!(
            "snapshot {} has no file matching {}; it holds: {}",
            snap.describe(),
            opts.path.as_deref().unwrap_or("(any)"),
            crate::selector::holds_list(snap)
        )));
    }
    let dest_is_dir = dest.is_dir() || dest.to_string_lossy().ends_with('/');
    let mut items = Vec::new();
    for f in files {
        let target = if items.is_empty() && !dest_is_dir && snap_selects_one(snap, opts) {
            dest.to_path_buf()
        } else {
            let rel = Path::new(&f.path);
            let mut t = dest.to_path_buf();
            for c in rel.components() {
                match c {
                    Component::RootDir => {}
                    Component::Normal(n) => t.push(n),
                    _ => {
                        return Err(Error::corrupt(
                            "manifest",
                            format!(
                                "file path {} would escape the destination; refusing to restore it",
                                f.path
                            ),
                        ))
                    }
                }
            }
            no_links_below(dest, &t)?;
            t
        };
        items.push(RestoreItem {
            file: f.clone(),
            dest: target,
        });
    }
    Ok(items)
}

/// Refuses a target below `dest` that passes through a symbolic link: the
/// link could point outside the destination, and the restore would write
/// there.
fn no_links_below(dest: &Path, target: &Path) -> Result<()> {
    let Ok(rel) = target.strip_prefix(dest) else {
        return Ok(());
    };
    let mut p = dest.to_path_buf();
    for c in rel.components() {
        p.push(c);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::Invalid(format!(
                "refusing to restore {}: {} is a symbolic link, which could lead outside the destination {}; remove it or choose another destination; nothing was written",
                target.display(),
                p.display(),
                dest.display()
            )));
        }
    }
    Ok(())
}

fn snap_selects_one(snap: &Snapshot, opts: &RestoreOptions) -> bool {
    snap.manifest
        .files
        .iter()
        .filter(|f| {
            opts.path
                .as_deref()
                .is_none_or(|p| path_matches(&f.path, p))
        })
        .count()
        == 1
}

/// The longest file name Linux file systems take, in bytes.
const NAME_MAX: usize = 255;

/// The temporary file beside `name`: `.NAME.snapback-PID.tmp`, with NAME
/// cut so that the whole fits NAME_MAX (a legal 255-byte name plus the
/// prefix and suffix did not, and the restore failed).
fn temp_name(name: &std::ffi::OsStr, pid: u32) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let suffix = format!(".snapback-{pid}.tmp");
    let keep = NAME_MAX - 1 - suffix.len();
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(NAME_MAX);
    out.push(b'.');
    out.extend_from_slice(&bytes[..bytes.len().min(keep)]);
    out.extend_from_slice(suffix.as_bytes());
    std::ffi::OsString::from_vec(out)
}

impl Repository {
    /// Restores the files of a snapshot under `dest`.
    pub fn restore(
        &self,
        snap: &Snapshot,
        dest: &Path,
        opts: &RestoreOptions,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let items = plan(snap, dest, opts)?;
        // A prune must not delete packs while they are being read; a
        // read-only repository is read without a lock (one warning).
        let lock = self.read_lock("restore", opts.lock_wait, opts.no_lock)?;
        if !opts.force {
            let existing: Vec<String> = items
                .iter()
                .filter(|i| i.dest.exists())
                .map(|i| i.dest.display().to_string())
                .collect();
            if !existing.is_empty() {
                return Err(Error::Invalid(format!(
                    "refusing to overwrite existing file(s) without --force: {}; nothing was written",
                    existing.join(", ")
                )));
            }
        }
        progress.set_total(items.iter().map(|i| i.file.size).sum());
        let mut report = RestoreReport {
            lock: lock.state,
            ..Default::default()
        };
        for item in &items {
            progress.set_message(&item.file.path);
            self.restore_file(&item.file, &item.dest, opts.force, progress)?;
            report.files += 1;
            report.bytes += item.file.size;
        }
        Ok(report)
    }

    /// Restores one file to exactly `dest`, verified, atomically.
    pub fn restore_file(
        &self,
        file: &FileEntry,
        dest: &Path,
        force: bool,
        progress: &dyn Progress,
    ) -> Result<()> {
        if dest.exists() && !force {
            return Err(Error::Invalid(format!(
                "{} exists; use --force to overwrite it",
                dest.display()
            )));
        }
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(dir, "cannot create the destination directory", e))?;
        let name = dest.file_name().unwrap_or(std::ffi::OsStr::new("file"));
        let tmp = dir.join(temp_name(name, std::process::id()));
        let r = self.write_verified(file, &tmp, progress).and_then(|()| {
            if file.kind == FileKind::Sqlite {
                // A stale WAL or journal beside the new file would be applied
                // to it by SQLite: remove them with the file they belonged to.
                for suffix in ["-wal", "-shm", "-journal"] {
                    if name.len() + suffix.len() > NAME_MAX {
                        // Such a name cannot exist, so neither can the file.
                        continue;
                    }
                    let mut side = dest.as_os_str().to_os_string();
                    side.push(suffix);
                    let side = PathBuf::from(side);
                    match std::fs::remove_file(&side) {
                        Ok(()) => tracing::warn!(path = %side.display(), "removed the old SQLite side file of the overwritten database"),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io(&side, "cannot remove the old side file", e)),
                    }
                }
            }
            std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, "cannot move the restored file into place", e))?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, "cannot fsync", e))
        });
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?;
        tracing::info!(path = %file.path, dest = %dest.display(), bytes = file.size, "file restored");
        Ok(())
    }

    fn write_verified(&self, file: &FileEntry, tmp: &Path, progress: &dyn Progress) -> Result<()> {
        let index = self.index()?;
        let chunks = self.chunk_list(&index, file)?;
        let sum = checksum_of(&chunks);
        if sum.to_hex() != file.db_checksum {
            return Err(Error::corrupt(
                format!("chunk list of {}", file.path),
                "its checksum does not match the manifest's; refusing to restore",
            ));
        }
        let out = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .map_err(|e| Error::io(tmp, "cannot create the temporary file", e))?;
        out.set_len(file.size)
            .map_err(|e| Error::io(tmp, "cannot size the file", e))?;

        // Where each chunk goes, grouped by pack, so that neighbouring blobs
        // are fetched with one range read.
        let mut offsets: HashMap<Id, Vec<u64>> = HashMap::new();
        let mut off = 0u64;
        for c in &chunks {
            offsets.entry(c.id).or_default().push(off);
            off += c.len as u64;
        }
        let mut by_pack: HashMap<Id, Vec<(Id, crate::index::BlobLocation)>> = HashMap::new();
        for id in offsets.keys() {
            let loc = index.get(id).ok_or_else(|| {
                Error::corrupt(
                    format!("chunk {} of {}", id.short(), file.path),
                    "is not in any index; the data is missing",
                )
            })?;
            by_pack.entry(loc.pack).or_default().push((*id, *loc));
        }
        let packs: Vec<_> = by_pack.into_iter().collect();
        packs
            .par_iter()
            .try_for_each(|(pack, blobs)| -> Result<()> {
                let mut blobs = blobs.clone();
                blobs.sort_by_key(|(_, l)| l.offset);
                let key = pack_key(pack);
                let mut i = 0;
                while i < blobs.len() {
                    // Coalesce blobs that are close together, up to 16 MiB a read.
                    let start = blobs[i].1.offset as u64;
                    let mut end = start + blobs[i].1.stored_len as u64;
                    let mut j = i + 1;
                    while j < blobs.len() {
                        let l = &blobs[j].1;
                        if (l.offset as u64) > end + (256 << 10)
                            || (l.offset as u64 + l.stored_len as u64) - start > (16 << 20)
                        {
                            break;
                        }
                        end = end.max(l.offset as u64 + l.stored_len as u64);
                        j += 1;
                    }
                    let range = self.store().get_range(&key, start, end - start)?;
                    for (id, l) in &blobs[i..j] {
                        let a = (l.offset as u64 - start) as usize;
                        let raw = open_blob(
                            self.codec(),
                            id,
                            &range[a..a + l.stored_len as usize],
                            l.raw_len,
                            &key,
                        )?;
                        let zero = raw.iter().all(|&b| b == 0);
                        for &o in offsets.get(id).into_iter().flatten() {
                            // The file was sized with set_len, so zeros are holes already.
                            if !zero {
                                out.write_all_at(&raw, o)
                                    .map_err(|e| Error::io(tmp, "write failed", e))?;
                            }
                            progress.inc(raw.len() as u64);
                        }
                    }
                    i = j;
                }
                Ok(())
            })?;
        out.sync_all()
            .map_err(|e| Error::io(tmp, "fsync failed", e))?;

        // Read back what is on disk and prove it is the captured content:
        // by the whole-file SHA-256 where the manifest has one, else chunk
        // by chunk against the chunk list (whose checksum was proven above).
        let mut f = File::open(tmp).map_err(|e| Error::io(tmp, "cannot reopen", e))?;
        match &file.sha256 {
            Some(want) => {
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f
                        .read(&mut buf)
                        .map_err(|e| Error::io(tmp, "read-back failed", e))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                let got = Id(h.finalize().into());
                if got != *want {
                    return Err(Error::Verification(format!(
                        "restored content of {} hashes to {}, but the snapshot recorded {}; nothing was put in place",
                        file.path,
                        got.short(),
                        want.short()
                    )));
                }
            }
            None => read_back_chunks(self.codec(), &mut f, &chunks, tmp, &file.path)?,
        }
        let perm = std::fs::Permissions::from_mode(file.mode & 0o7777);
        std::fs::set_permissions(tmp, perm)
            .map_err(|e| Error::io(tmp, "cannot set permissions", e))?;
        if let Some(m) = file
            .mtime
            .as_deref()
            .and_then(|t| crate::time::parse_rfc3339(t).ok())
        {
            let _ = out.set_modified(m.into());
        }
        Ok(())
    }
}

/// Reads `f` from the start and proves that it is exactly `chunks`: every
/// chunk's content hashes to its id, and nothing follows the last one.
fn read_back_chunks(
    codec: &crate::pack::BlobCodec,
    f: &mut File,
    chunks: &[crate::chunklist::ChunkRef],
    tmp: &Path,
    path: &str,
) -> Result<()> {
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let mut buf = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        buf.resize(c.len as usize, 0);
        r.read_exact(&mut buf)
            .map_err(|e| Error::io(tmp, "read-back failed", e))?;
        if codec.blob_id(&buf) != c.id {
            return Err(Error::Verification(format!(
                "restored content of {path} differs from the snapshot at chunk {i} (it does not hash to {}); nothing was put in place",
                c.id.short()
            )));
        }
    }
    let mut rest = [0u8; 1];
    if r.read(&mut rest)
        .map_err(|e| Error::io(tmp, "read-back failed", e))?
        != 0
    {
        return Err(Error::Verification(format!(
            "restored file of {path} is longer than the snapshot's content; nothing was put in place"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_fit_name_max_for_the_longest_legal_names() {
        use std::os::unix::ffi::OsStrExt;
        let long = "é".repeat(127) + "x"; // 255 bytes
        assert_eq!(long.len(), NAME_MAX);
        for name in [long.as_str(), "app.db", ""] {
            let t = temp_name(std::ffi::OsStr::new(name), u32::MAX);
            assert!(t.as_bytes().len() <= NAME_MAX, "{t:?}");
            assert!(t.as_bytes().starts_with(b"."), "{t:?}");
            assert!(t.as_bytes().ends_with(b".tmp"), "{t:?}");
        }
        let short = temp_name(std::ffi::OsStr::new("app.db"), 7);
        assert_eq!(short, std::ffi::OsStr::new(".app.db.snapback-7.tmp"));
    }

    #[test]
    fn path_matching() {
        assert!(path_matches("/a/b.db", "/a/b.db"));
        assert!(path_matches("/a/b.db", "/a"));
        assert!(path_matches("/a/b.db", "/a/"));
        assert!(!path_matches("/ab/c", "/a"));
        assert!(!path_matches("/a/b.db", "/a/b"));
    }
}
