//! Restoring files from a snapshot.
//!
//! Plan, then apply: the plan maps every selected file to its destination
//! and is checked whole (no destination may exist without `force`) before a
//! byte is written. Each file is written to a temporary file beside its
//! destination, window by window in file order: the blobs of a window are
//! range-read from their packs in parallel, each decompressed into its
//! place in the window and verified there against its id (on the reader
//! threads), and while one window is written the next is fetched (on a
//! store that asks for it, S3, every window's reads are planned first and
//! fetched ahead of the windows: `fetch::ReadAhead`). The
//! hashes of what was written, folded at their offsets, prove the file
//! against the manifest's checksum with no read-back (the whole-file
//! SHA-256 would prove nothing more and is not recomputed); it is fsync'd,
//! and only then renamed into place. A full restore writes the whole
//! aligned blocks of each window with direct writes (`O_DIRECT`, from the
//! verified window itself) where the file system takes them, so the file's
//! bytes are not copied into the page cache on their way to the disk.
//!
//! `--delta` (`restore_delta`, `write_delta`) writes into an existing DEST
//! instead: it reads DEST once (`scan_dest`: pieces of about 1 MiB, which
//! one thread per core reads and hashes in turn, each chunk's range at the
//! snapshot's offsets), then fetches and writes only the chunks that
//! differ, and proves the result the same way: the chunks kept by their
//! hashes, the chunks written by their verified blobs, folded at their
//! offsets into the manifest's checksum. Only the chunks to write must be
//! in the index, and only they are looked up.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::chunklist::ChunkRef;
use crate::error::{Error, Result};
use crate::fetch::{
    missing_chunk, plan_reads, run_parallel, Range, RangeRead, ReadAhead, MAX_RANGE,
};
use crate::id::{DbChecksum, Id};
use crate::index::MasterIndex;
use crate::manifest::{FileEntry, FileKind};
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
    /// Restore one file into an existing copy of it, writing only the
    /// chunks that differ (`--delta`; see `Repository::restore_delta`).
    pub delta: bool,
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
    /// What a `--delta` restore compared and wrote.
    pub delta: Option<DeltaReport>,
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
        if opts.delta {
            delta_dest_ok(dest)?;
        }
        let items = plan(snap, dest, opts)?;
        if opts.delta && items.len() != 1 {
            return Err(Error::Invalid(format!(
                "--delta restores one file into an existing copy of it, but snapshot {} holds {} files{}: choose one with --path; nothing was written",
                snap.describe(),
                items.len(),
                opts.path.as_deref().map(|p| format!(" under {p}")).unwrap_or_default()
            )));
        }
        // A prune must not delete packs while they are being read; a
        // read-only repository is read without a lock (one warning).
        let lock = self.read_lock("restore", opts.lock_wait, opts.no_lock)?;
        if !opts.force && !opts.delta {
            let existing: Vec<String> = items
                .iter()
                .filter(|i| i.dest.exists())
                .map(|i| i.dest.display().to_string())
                .collect();
            if !existing.is_empty() {
                return Err(Error::Invalid(format!(
                    "refusing to overwrite existing file(s) without --force: {}; nothing was written (--delta rewrites only what differs)",
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
            if opts.delta {
                report.delta = Some(self.restore_delta(&item.file, &item.dest, progress)?);
            } else {
                self.restore_file(&item.file, &item.dest, opts.force, progress)?;
            }
            report.files += 1;
            report.bytes += item.file.size;
        }
        Ok(report)
    }

    /// Restores one file to exactly `dest`, verified, atomically: written
    /// to a temporary file beside it, proven while written, fsync'd, then
    /// renamed into place.
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
        self.restore_new(file, dest, progress).map(|_| ())
    }

    /// `restore_file` without the existence check.
    fn restore_new(
        &self,
        file: &FileEntry,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<WriteStats> {
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(dir, "cannot create the destination directory", e))?;
        let name = dest.file_name().unwrap_or(std::ffi::OsStr::new("file"));
        let tmp = dir.join(temp_name(name, std::process::id()));
        let r = (|| -> Result<WriteStats> {
            let out = OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| Error::io(&tmp, "cannot create the temporary file", e))?;
            let index = self.index()?;
            let chunks = self.proven_chunks(&index, file)?;
            let direct = open_direct(&tmp);
            let stats = self.write_image(
                &index,
                file,
                &chunks,
                Target {
                    out: &out,
                    direct: direct.as_ref(),
                    at: &tmp,
                },
                progress,
            )?;
            set_metadata(&out, file, &tmp)?;
            if file.kind == FileKind::Sqlite {
                // A stale WAL or journal beside the new file would be applied
                // to it by SQLite: remove them with the file they belonged to.
                remove_sqlite_side_files(dest)?;
            }
            std::fs::rename(&tmp, dest)
                .map_err(|e| Error::io(dest, "cannot move the restored file into place", e))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(dir, "cannot fsync", e))?;
            Ok(stats)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        let stats = r?;
        tracing::info!(path = %file.path, dest = %dest.display(), bytes = file.size, "file restored");
        Ok(stats)
    }

    /// `restore --delta`: makes the existing file `dest` the snapshot's
    /// content of `file` in place, reading it once and writing only the
    /// chunks that differ, then extending or truncating it; proven while
    /// it runs (see `write_image`) and fsync'd before it returns. A `dest`
    /// that does not exist is restored whole. Refused, with nothing
    /// changed, for a directory, a file that is not a regular file, and a
    /// SQLite database with another page size. Interrupted, `dest` is
    /// partly restored; running it again finishes it.
    pub fn restore_delta(
        &self,
        file: &FileEntry,
        dest: &Path,
        progress: &dyn Progress,
    ) -> Result<DeltaReport> {
        let unit = match (&file.sqlite, file.kind) {
            (Some(s), FileKind::Sqlite) => Some(s.page_size as u64),
            _ => None,
        };
        let meta = match std::fs::metadata(dest) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(dest = %dest.display(), "--delta: the destination does not exist; restoring it whole");
                let s = self.restore_new(file, dest, progress)?;
                return Ok(DeltaReport::new(s, unit, false));
            }
            Err(e) => return Err(Error::io(dest, "cannot read the destination", e)),
        };
        if meta.is_dir() {
            return Err(delta_dir_error(dest));
        }
        if !meta.is_file() {
            return Err(Error::Invalid(format!(
                "{} is not a regular file; --delta restores into an existing copy of the file; nothing was written",
                dest.display()
            )));
        }
        let out = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dest)
            .map_err(|e| Error::io(dest, "cannot open the destination for writing", e))?;
        if let (Some(want), Some(have)) = (unit, sqlite_page_size(&out, dest)?) {
            if want != have {
                return Err(Error::Invalid(format!(
                    "{} is a SQLite database with {have}-byte pages, but the snapshot's {} has {want}-byte pages: it is not a copy of that database, and --delta would rewrite all of it; nothing was written. To replace it whole, restore without --delta and with --force (the old file is replaced atomically), or choose another destination",
                    dest.display(),
                    file.path
                )));
            }
        }
        let index = self.index()?;
        let chunks = self.proven_chunks(&index, file)?;
        let began = std::cell::Cell::new(false);
        let prepare = || {
            began.set(true);
            if file.kind == FileKind::Sqlite {
                // Before the first write: a stale WAL or journal must never
                // be applied to restored pages.
                remove_sqlite_side_files(dest)?;
            }
            Ok(())
        };
        let stats = self
            .write_delta(
                &index,
                file,
                &chunks,
                (&out, dest, meta.len()),
                &prepare,
                progress,
            )
            .and_then(|s| set_metadata(&out, file, dest).map(|()| s))
            .map_err(|e| match began.get() {
                true => Error::PartlyRestored {
                    dest: dest.to_path_buf(),
                    cause: Box::new(e),
                },
                false => e,
            })?;
        tracing::info!(path = %file.path, dest = %dest.display(), written = stats.bytes_written, "file restored by delta");
        Ok(DeltaReport::new(stats, unit, true))
    }

    /// A file's chunk list, proven against the manifest: its `db_checksum`
    /// must be the list's, and its chunks must add up to the file's size.
    /// Every restore (full, `--delta`, in place) starts from this.
    pub fn proven_chunks(&self, index: &MasterIndex, file: &FileEntry) -> Result<Vec<ChunkRef>> {
        let chunks = self.chunk_list(index, file)?;
        if checksum_of(&chunks).to_hex() != file.db_checksum {
            return Err(Error::corrupt(
                format!("chunk list of {}", file.path),
                "its checksum does not match the manifest's; refusing to restore",
            ));
        }
        let total: u64 = chunks.iter().map(|c| c.len as u64).sum();
        if total != file.size {
            return Err(Error::corrupt(
                format!("chunk list of {}", file.path),
                format!(
                    "chunks add up to {total} bytes, the file has {}; refusing to restore",
                    file.size
                ),
            ));
        }
        Ok(chunks)
    }

    /// Fetches the blobs `ids` (each once, whatever the order): grouped by
    /// pack, neighbours coalesced into one range read, up to
    /// `Tuning::read_parallelism` reads at once. Every blob is opened and
    /// checked against its id before `sink` sees it; the first error stops
    /// the fetch and is returned.
    pub fn fetch_blobs(
        &self,
        index: &MasterIndex,
        ids: &[Id],
        place: &str,
        sink: &(dyn Fn(&Id, &[u8]) -> Result<()> + Sync),
    ) -> Result<()> {
        let reads = plan_reads(index, ids.iter().map(|id| (*id, ())), place, MAX_RANGE)?;
        run_parallel(&reads, self.store().tuning().read_parallelism, |r| {
            let range = self.store().get_range(&r.key, r.start, r.end - r.start)?;
            for (id, l, ()) in &r.blobs {
                let a = (l.offset as u64 - r.start) as usize;
                let raw =
                    self.open_located(index, id, l, &range[a..a + l.stored_len as usize], &r.key)?;
                sink(id, &raw)?;
            }
            Ok(())
        })
    }

    /// Fetches blobs straight into their places: each `(id, place)` is
    /// opened into `place` (whose length must be the blob's) and checked
    /// against its id where it lies, with the reads planned and run as in
    /// `fetch_blobs`, or taken from `ahead` (which fetched them, planned
    /// the same way by `window_reads`). Decompression and hashing run on
    /// the reader threads, so on every core of a local store.
    fn fetch_into(
        &self,
        index: &MasterIndex,
        wants: Vec<(Id, &mut [u8])>,
        place: &str,
        ahead: Option<&ReadAhead<'_>>,
    ) -> Result<()> {
        let (max_range, width) = match ahead {
            Some(_) => (self.store().tuning().read_ahead_range, cores()),
            None => (MAX_RANGE, self.store().tuning().read_parallelism),
        };
        let reads: Vec<std::sync::Mutex<RangeRead<&mut [u8]>>> =
            plan_reads(index, wants, place, max_range)?
                .into_iter()
                .map(std::sync::Mutex::new)
                .collect();
        run_parallel(&reads, width, |r| {
            let mut r = r.lock().map_err(|_| crate::repo::poisoned())?;
            let r = &mut *r;
            let range = match ahead {
                Some(a) => a.take(&r.key, r.start, r.end - r.start)?,
                None => self.store().get_range(&r.key, r.start, r.end - r.start)?,
            };
            for (id, l, out) in r.blobs.iter_mut() {
                if l.raw_len as usize != out.len() {
                    return Err(Error::corrupt(
                        format!("chunk {} of {place}", id.short()),
                        format!(
                            "is {} bytes in the index, the chunk list says {}",
                            l.raw_len,
                            out.len()
                        ),
                    ));
                }
                let a = (l.offset as u64 - r.start) as usize;
                let stored = range.get(a..a + l.stored_len as usize).ok_or_else(|| {
                    Error::corrupt(&r.key, "the range read is shorter than asked")
                })?;
                self.open_located_into(index, id, l, stored, out, &r.key)?;
            }
            Ok(())
        })
    }

    /// Writes the snapshot's content of `file` (`chunks`, proven by
    /// `proven_chunks`) into the new, empty file `out` (at `at`) window by
    /// window, and proves what it wrote: every chunk that lands in the
    /// file was hashed on the way (a fetched blob against its id, a zero
    /// chunk by construction), and those hashes folded at their offsets
    /// give the manifest's `db_checksum`. Fsyncs before it returns; an
    /// error means the content of `out` is not proven.
    fn write_image(
        &self,
        index: &MasterIndex,
        file: &FileEntry,
        chunks: &[ChunkRef],
        target: Target<'_>,
        progress: &dyn Progress,
    ) -> Result<WriteStats> {
        let Target { out, direct, at } = target;
        let zero_ids = zero_ids(self.codec(), chunks);
        let is_zero = |c: &ChunkRef| zero_ids.get(&c.len) == Some(&c.id);
        // Every chunk that may have to be fetched is indexed, before a byte
        // of `out` changes (looked up on every core: one lookup in a large
        // table per chunk, each a cache miss, took a quarter of a second
        // for a 1 GiB file on one core).
        let place = format!("chunk list of {}", file.path);
        if let Some(c) = first_unindexed(index, chunks, &is_zero) {
            return Err(missing_chunk(&c.id, &place));
        }
        if file.size > 0 {
            reserve(out, 0, file.size, at)?;
            out.set_len(file.size)
                .map_err(|e| Error::io(at, "cannot size the file", e))?;
        }
        // On a store that asks for it (S3), every window's range reads are
        // planned now and fetched ahead of the windows, `read_parallelism`
        // at a time (see read_ahead.rs).
        let store = self.store();
        let tuning = store.tuning();
        let ahead = if tuning.read_ahead > 0 {
            let reads = window_reads(index, chunks, &is_zero, &place, tuning.read_ahead_range)?;
            Some(ReadAhead::new(store, reads, tuning.read_ahead))
        } else {
            None
        };
        let fill = |buf: Vec<u8>,
                    part: &[ChunkRef],
                    start: u64,
                    sum: &mut DbChecksum,
                    stats: &mut WriteStats| {
            let w = (file, part, start);
            self.fill_window(buf, index, w, &is_zero, ahead.as_ref(), sum, stats)
        };
        let (sum, stats) = std::thread::scope(|s| {
            if let Some(a) = &ahead {
                for _ in 0..tuning.read_parallelism.max(1) {
                    s.spawn(|| a.fetch());
                }
            }
            let r = run_windows(chunks, (out, direct, at), progress, &fill);
            // Every read the windows needed was taken; on an error the
            // fetchers stop after the reads they have.
            if let Some(a) = &ahead {
                a.stop();
            }
            r
        })?;
        out.sync_all()
            .map_err(|e| Error::io(at, "fsync failed", e))?;
        proven_sum(&sum, file, at)?;
        Ok(stats)
    }

    /// `--delta`'s `write_image`: reads DEST once (`scan_dest`, on every
    /// core), then fetches and writes only the chunks that differ, and
    /// proves the result as `write_image` does: every chunk that stays was
    /// hashed where it lies, every chunk written was verified against its
    /// id, and their terms folded at their offsets give the manifest's
    /// `db_checksum`. Nothing is written before every chunk to fetch is
    /// known to be indexed (and the space for a longer file reserved);
    /// `prepare` runs then. `fdatasync`s before it returns (the data and
    /// the size; the mode and time are set after it anyway).
    fn write_delta(
        &self,
        index: &MasterIndex,
        file: &FileEntry,
        chunks: &[ChunkRef],
        (out, at, old_len): (&File, &Path, u64),
        prepare: &dyn Fn() -> Result<()>,
        progress: &dyn Progress,
    ) -> Result<WriteStats> {
        let zero_ids = zero_ids(self.codec(), chunks);
        let is_zero = |c: &ChunkRef| zero_ids.get(&c.len) == Some(&c.id);
        let scan = scan_dest(self.codec(), out, at, chunks, old_len, &is_zero, progress)?;
        let place = format!("chunk list of {}", file.path);
        for n in scan.need.iter().filter(|n| n.fetch) {
            if index.get(&chunks[n.k].id).is_none() {
                return Err(missing_chunk(&chunks[n.k].id, &place));
            }
        }
        if file.size > old_len {
            reserve(out, old_len, file.size, at)?;
        }
        let mut stats = WriteStats {
            compared_chunks: scan.compared_chunks,
            compared_bytes: scan.compared_bytes,
            ..Default::default()
        };
        let mut sum = scan.sum;
        if !scan.need.is_empty() || file.size != old_len {
            prepare()?;
        }
        if file.size > old_len {
            out.set_len(file.size)
                .map_err(|e| Error::io(at, "cannot size the file", e))?;
        }
        // The chunks to write, in batches of at most a window's bytes:
        // each batch's blobs fetched straight into their places (verified
        // there), each blob once, then written in runs of neighbours.
        let mut i = 0;
        while i < scan.need.len() {
            let mut j = i;
            let mut len = 0usize;
            while j < scan.need.len()
                && (j == i || len + chunks[scan.need[j].k].len as usize <= WINDOW as usize)
            {
                len += chunks[scan.need[j].k].len as usize;
                j += 1;
            }
            let batch = &scan.need[i..j];
            let mut buf = vec![0u8; len];
            let mut first: HashMap<Id, usize> = HashMap::new();
            let mut copies: Vec<(usize, usize)> = Vec::new();
            {
                let mut wants: Vec<(Id, &mut [u8])> = Vec::new();
                let mut rest = &mut buf[..];
                for (b, n) in batch.iter().enumerate() {
                    let c = &chunks[n.k];
                    let (here, tail) = std::mem::take(&mut rest).split_at_mut(c.len as usize);
                    rest = tail;
                    if !n.fetch {
                        continue; // zeros, as allocated
                    }
                    match first.entry(c.id) {
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(b);
                            wants.push((c.id, here));
                        }
                        std::collections::hash_map::Entry::Occupied(f) => {
                            copies.push((b, *f.get()))
                        }
                    }
                }
                if !wants.is_empty() {
                    self.fetch_into(index, wants, &place, None)?;
                }
            }
            let mut offs = Vec::with_capacity(batch.len());
            let mut o = 0usize;
            for n in batch {
                offs.push(o);
                o += chunks[n.k].len as usize;
            }
            let refs: Vec<ChunkRef> = batch.iter().map(|n| chunks[n.k]).collect();
            copy_duplicates(&mut buf, &copies, &refs, &offs, &place)?;
            // Every chunk of the batch is now verified where it lies (a
            // fetched blob against its id, zeros by construction): fold
            // each at its offset and write the runs of neighbours.
            let mut b = 0;
            while b < batch.len() {
                let mut e = b + 1;
                while e < batch.len() && batch[e].k == batch[e - 1].k + 1 {
                    e += 1;
                }
                for n in &batch[b..e] {
                    sum.add(n.offset, &chunks[n.k].id);
                }
                let end = offs[e - 1] + chunks[batch[e - 1].k].len as usize;
                out.write_all_at(&buf[offs[b]..end], batch[b].offset)
                    .map_err(|e| Error::io(at, "write failed", e))?;
                stats.written_chunks += (e - b) as u64;
                stats.bytes_written += (end - offs[b]) as u64;
                b = e;
            }
            i = j;
        }
        if old_len > file.size {
            out.set_len(file.size)
                .map_err(|e| Error::io(at, "cannot truncate the file", e))?;
        }
        out.sync_data()
            .map_err(|e| Error::io(at, "fsync failed", e))?;
        proven_sum(&sum, file, at)?;
        Ok(stats)
    }

    /// One window of `write_image`: its final bytes, the runs of them to
    /// write, and every chunk's verified hash folded into `sum`.
    #[allow(clippy::too_many_arguments)]
    fn fill_window(
        &self,
        mut buf: Vec<u8>,
        index: &MasterIndex,
        (file, chunks, start): (&FileEntry, &[ChunkRef], u64),
        is_zero: &(dyn Fn(&ChunkRef) -> bool + Sync),
        ahead: Option<&ReadAhead<'_>>,
        sum: &mut DbChecksum,
        stats: &mut WriteStats,
    ) -> Result<Window> {
        let len: u64 = chunks.iter().map(|c| c.len as u64).sum();
        // The window's bytes start `lead` bytes into `buf`, where their
        // address is `start` modulo DIRECT_ALIGN: every whole aligned block
        // of a run is then aligned both in memory and in the file, as a
        // direct write needs. A recycled buffer is not cleared: every byte
        // of it that is written or hashed below is fetched first.
        let len = len as usize;
        if buf.capacity() < len + DIRECT_ALIGN {
            buf = Vec::with_capacity(len.max(WINDOW as usize) + DIRECT_ALIGN);
        }
        let lead = (start as usize)
            .wrapping_sub(buf.as_ptr() as usize)
            .rem_euclid(DIRECT_ALIGN);
        buf.resize(lead + len, 0);
        let whole = &mut buf;
        let buf = &mut whole[lead..];
        let mut offs = Vec::with_capacity(chunks.len());
        let mut o = 0usize;
        for c in chunks {
            offs.push(o);
            o += c.len as usize;
        }
        // What each chunk needs: None = nothing (a zero chunk: the new file
        // is zeros there), Some(true) = to fetch and write.
        let need: Vec<Option<bool>> = chunks
            .iter()
            .map(|c| if is_zero(c) { None } else { Some(true) })
            .collect();
        // Fetch the rest, each blob once, straight into its first place
        // (decompressed and hashed there, on the reader threads), then
        // copied into the others.
        let mut first: HashMap<Id, usize> = HashMap::new();
        let mut copies: Vec<(usize, usize)> = Vec::new();
        for (k, n) in need.iter().enumerate() {
            if *n == Some(true) {
                match first.entry(chunks[k].id) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(k);
                    }
                    std::collections::hash_map::Entry::Occupied(f) => copies.push((k, *f.get())),
                }
            }
        }
        let place = format!("chunk list of {}", file.path);
        if !first.is_empty() {
            let mut places: Vec<Option<&mut [u8]>> = Vec::with_capacity(chunks.len());
            let mut rest = &mut *buf;
            for c in chunks {
                let (here, tail) = rest.split_at_mut(c.len as usize);
                places.push(Some(here));
                rest = tail;
            }
            let wants: Vec<(Id, &mut [u8])> = first
                .iter()
                .filter_map(|(id, &k)| places[k].take().map(|p| (*id, p)))
                .collect();
            if wants.len() != first.len() {
                return Err(Error::internal(format!(
                    "the restore of {} planned a chunk's place twice; nothing is proven",
                    file.path
                )));
            }
            self.fetch_into(index, wants, &place, ahead)?;
        }
        copy_duplicates(buf, &copies, chunks, &offs, &place)?;
        // Every chunk is now verified where it lies: a fetched blob against
        // its id, a zero chunk by construction. Fold them at their
        // offsets, and note the runs to write (the fetched chunks).
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for ((c, &o), n) in chunks.iter().zip(&offs).zip(&need) {
            sum.add(start + o as u64, &c.id);
            if n.is_some() {
                let e = o + c.len as usize;
                stats.written_chunks += 1;
                stats.bytes_written += c.len as u64;
                match runs.last_mut() {
                    Some(r) if r.1 == o => r.1 = e,
                    _ => runs.push((o, e)),
                }
            }
        }
        Ok(Window {
            start,
            lead,
            buf: std::mem::take(whole),
            runs,
        })
    }
}

/// The first chunk of `chunks` (not a zero chunk) that `index` lacks,
/// looked up in one share of the list per core.
fn first_unindexed<'a>(
    index: &MasterIndex,
    chunks: &'a [ChunkRef],
    is_zero: &(dyn Fn(&ChunkRef) -> bool + Sync),
) -> Option<&'a ChunkRef> {
    let per = chunks.len().div_ceil(cores()).max(1);
    std::thread::scope(|s| {
        let shares: Vec<_> = chunks
            .chunks(per)
            .map(|share| {
                s.spawn(move || share.iter().find(|c| !is_zero(c) && !index.contains(&c.id)))
            })
            .collect();
        shares
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .find_map(|c| c)
    })
}

/// The windows of a chunk list: `(first chunk, end, file offset)` of
/// each, about `WINDOW` bytes of whole chunks, in file order.
fn window_bounds(chunks: &[ChunkRef]) -> Vec<(usize, usize, u64)> {
    let mut bounds: Vec<(usize, usize, u64)> = Vec::new();
    let (mut i, mut start) = (0usize, 0u64);
    while i < chunks.len() {
        let mut j = i;
        let mut len = 0u64;
        while j < chunks.len() && (j == i || len + chunks[j].len as u64 <= WINDOW) {
            len += chunks[j].len as u64;
            j += 1;
        }
        bounds.push((i, j, start));
        i = j;
        start += len;
    }
    bounds
}

/// Every range read of a full restore, window by window in file order,
/// each window's planned as `fill_window` plans them (its chunks' blobs,
/// each once, zero chunks left out, through `plan_reads`), for
/// `ReadAhead` to fetch before the windows need them.
fn window_reads(
    index: &MasterIndex,
    chunks: &[ChunkRef],
    is_zero: &(dyn Fn(&ChunkRef) -> bool + Sync),
    place: &str,
    max_range: u64,
) -> Result<Vec<Range>> {
    let mut out = Vec::new();
    for (i, j, _) in window_bounds(chunks) {
        let mut seen = std::collections::HashSet::new();
        let ids = chunks[i..j]
            .iter()
            .filter(|c| !is_zero(c) && seen.insert(c.id))
            .map(|c| (c.id, ()));
        for r in plan_reads(index, ids, place, max_range)? {
            out.push(Range {
                len: r.end - r.start,
                key: r.key,
                start: r.start,
            });
        }
    }
    Ok(out)
}

/// The cores of this machine (threads that decompress and hash).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |w| w.get())
}

/// How many windows are filled at once: while one waits on its range
/// reads (or its reads wait on the store), another plans, copies and
/// folds its own, so that no core idles at the end of a window and, on a
/// network store, the next window's GETs are in flight while one window's
/// last ones finish.
const FILLERS: usize = 2;

/// How `run_windows` fills one window: given a buffer to reuse, the
/// window's chunks and its file offset, it returns the window and folds
/// its chunks' terms and counts into the sum and stats it is given.
type FillWindow<'a> = dyn Fn(Vec<u8>, &[ChunkRef], u64, &mut DbChecksum, &mut WriteStats) -> Result<Window>
    + Sync
    + 'a;

/// Runs a restore's windows: the chunk list cut into windows of about
/// `WINDOW` bytes (whole chunks), each filled by `fill` (its final bytes,
/// verified, and the runs to write; its terms folded into the sum it is
/// given) on one of `FILLERS` threads, in file order but several at once,
/// and written by one writer thread as each is ready (windows are
/// disjoint, so their order of writing does not matter). Buffers come
/// back from the writer to the fillers: at most `FILLERS + 2` are ever
/// allocated (one per filler, one queued, one being written). Returns the
/// folded checksum of every window and what they wrote; the first error
/// stops the rest (the writer's first, as it is the one a user must see).
fn run_windows(
    chunks: &[ChunkRef],
    (out, direct, at): (&File, Option<&File>, &Path),
    progress: &dyn Progress,
    fill: &FillWindow<'_>,
) -> Result<(DbChecksum, WriteStats)> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc::{channel, sync_channel};
    let bounds = window_bounds(chunks);
    let (tx, rx) = sync_channel::<Window>(1);
    let (back_tx, back_rx) = channel::<Vec<u8>>();
    let back_rx = std::sync::Mutex::new(back_rx);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (bounds, back_rx, next, stop) = (&bounds, &back_rx, &next, &stop);
    std::thread::scope(|s| -> Result<(DbChecksum, WriteStats)> {
        let writer = s.spawn(move || -> Result<()> {
            let mut direct = direct;
            for w in rx {
                let bytes = &w.buf[w.lead..];
                for &(a, b) in &w.runs {
                    write_run(out, &mut direct, &bytes[a..b], w.start + a as u64, at)?;
                }
                progress.inc(bytes.len() as u64);
                let _ = back_tx.send(w.buf);
            }
            Ok(())
        });
        let fillers: Vec<_> = (0..FILLERS.min(bounds.len()).max(1))
            .map(|_| {
                let tx = tx.clone();
                s.spawn(move || -> Result<(DbChecksum, WriteStats)> {
                    let mut sum = DbChecksum::default();
                    let mut stats = WriteStats::default();
                    while !stop.load(Ordering::Relaxed) {
                        let Some(&(i, j, start)) = bounds.get(next.fetch_add(1, Ordering::Relaxed))
                        else {
                            break;
                        };
                        let buf = back_rx
                            .lock()
                            .ok()
                            .and_then(|r| r.try_recv().ok())
                            .unwrap_or_default();
                        let w = fill(buf, &chunks[i..j], start, &mut sum, &mut stats)
                            .inspect_err(|_| stop.store(true, Ordering::Relaxed))?;
                        if tx.send(w).is_err() {
                            // The writer stopped: its error is returned below.
                            break;
                        }
                    }
                    Ok((sum, stats))
                })
            })
            .collect();
        drop(tx);
        let mut sum = DbChecksum::default();
        let mut stats = WriteStats::default();
        let mut filled = Ok(());
        for f in fillers {
            match f.join() {
                Ok(Ok((s, st))) => {
                    sum.0 = sum.0.wrapping_add(s.0);
                    stats.add(&st);
                }
                Ok(Err(e)) => {
                    if filled.is_ok() {
                        filled = Err(e);
                    }
                }
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        let written = writer
            .join()
            .map_err(|_| Error::internal("the restore's writer thread panicked"));
        written??;
        filled?;
        Ok((sum, stats))
    })
}

/// Bytes of file content handled per step of a restore (read from DEST,
/// fetched, written, hashed): memory stays a few windows, whatever the size
/// of the file.
const WINDOW: u64 = 16 << 20;
/// The new file a full restore writes: its handle, the same file opened
/// for direct writes, and its path (for messages).
#[derive(Clone, Copy)]
struct Target<'a> {
    out: &'a File,
    /// The same file opened for direct writes (`O_DIRECT`), where the
    /// file system takes them: the bulk of a full restore bypasses the
    /// page cache (see `write_run`).
    direct: Option<&'a File>,
    at: &'a Path,
}

/// What `write_image` compared and wrote.
#[derive(Debug, Clone, Copy, Default)]
struct WriteStats {
    compared_chunks: u64,
    compared_bytes: u64,
    written_chunks: u64,
    bytes_written: u64,
}

impl WriteStats {
    fn add(&mut self, o: &WriteStats) {
        self.compared_chunks += o.compared_chunks;
        self.compared_bytes += o.compared_bytes;
        self.written_chunks += o.written_chunks;
        self.bytes_written += o.bytes_written;
    }
}

/// What a `--delta` restore compared and wrote. Pages are counted for a
/// database (its chunks are whole pages), chunks for every file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaReport {
    /// Whether DEST existed (else it was restored whole).
    pub dest_existed: bool,
    pub chunks_compared: u64,
    pub chunks_written: u64,
    pub pages_compared: Option<u64>,
    pub pages_written: Option<u64>,
    pub bytes_written: u64,
}

impl DeltaReport {
    fn new(s: WriteStats, page_size: Option<u64>, dest_existed: bool) -> DeltaReport {
        DeltaReport {
            dest_existed,
            chunks_compared: s.compared_chunks,
            chunks_written: s.written_chunks,
            pages_compared: page_size.map(|p| s.compared_bytes / p),
            pages_written: page_size.map(|p| s.bytes_written.div_ceil(p)),
            bytes_written: s.bytes_written,
        }
    }
}

/// `--delta` writes into one existing file: a directory is refused.
fn delta_dest_ok(dest: &Path) -> Result<()> {
    if dest.is_dir() || dest.to_string_lossy().ends_with('/') {
        return Err(delta_dir_error(dest));
    }
    Ok(())
}

fn delta_dir_error(dest: &Path) -> Error {
    Error::Invalid(format!(
        "{} is a directory; --delta restores into an existing copy of one file: give that file's path (or restore without --delta to restore under the directory); nothing was written",
        dest.display()
    ))
}

/// The page size of the SQLite database `f`, or `None` when it does not
/// start with a SQLite header (too short, damaged, another kind of file).
fn sqlite_page_size(f: &File, at: &Path) -> Result<Option<u64>> {
    let mut h = [0u8; 18];
    match f.read_exact_at(&mut h, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io(at, "cannot read the destination", e)),
    }
    if &h[..16] != b"SQLite format 3\0" {
        return Ok(None);
    }
    Ok(match u16::from_be_bytes([h[16], h[17]]) {
        1 => Some(65536),
        n if n >= 512 && n.is_power_of_two() => Some(n as u64),
        _ => None,
    })
}

/// One window's final bytes, from file offset `start` (at `buf[lead..]`),
/// and the byte runs of it to write (offsets into `buf[lead..]`).
struct Window {
    start: u64,
    lead: usize,
    buf: Vec<u8>,
    runs: Vec<(usize, usize)>,
}

/// Bytes of DEST that a thread of `scan_dest` reads and hashes at a time:
/// small enough to stay in the core's cache from the read to the hash.
const SCAN_PIECE: u64 = 1 << 20;

/// A chunk `scan_dest` found to differ: its place in the chunk list, its
/// offset, and whether it is fetched (else it is zeros).
#[derive(Debug, Clone, Copy)]
struct Need {
    k: usize,
    offset: u64,
    fetch: bool,
}

/// What `scan_dest` found.
struct Scan {
    /// The chunks to write, in file order.
    need: Vec<Need>,
    /// The terms of every chunk found right, folded at their offsets.
    sum: DbChecksum,
    compared_chunks: u64,
    compared_bytes: u64,
}

/// Reads DEST's first `old_len` bytes once and judges every chunk of the
/// list against them, on every core: DEST is cut at chunk boundaries into
/// pieces of about `SCAN_PIECE` bytes, which threads of their own take in
/// turn, each reading a piece into one buffer it keeps and hashing the
/// chunks in it. A chunk is right when its bytes in DEST hash to its id,
/// or when it lies past DEST's end and is all zeros (the file is extended
/// with zeros); every other chunk is to be written.
fn scan_dest(
    codec: &crate::pack::BlobCodec,
    out: &File,
    at: &Path,
    chunks: &[ChunkRef],
    old_len: u64,
    is_zero: &(dyn Fn(&ChunkRef) -> bool + Sync),
    progress: &dyn Progress,
) -> Result<Scan> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    // Reading ahead of the threads helps a DEST that is not cached.
    let _ = rustix::fs::fadvise(out, 0, None, rustix::fs::Advice::Sequential);
    // The pieces: (first chunk, its offset).
    let mut pieces: Vec<(usize, u64)> = Vec::new();
    let mut off = 0u64;
    let mut piece_end = 0u64;
    for (k, c) in chunks.iter().enumerate() {
        if k == 0 || off >= piece_end {
            pieces.push((k, off));
            piece_end = off + SCAN_PIECE;
        }
        off += c.len as u64;
    }
    pieces.push((chunks.len(), off));
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let width = std::thread::available_parallelism()
        .map_or(2, |w| w.get())
        .clamp(1, pieces.len().max(1));
    let work = || -> Result<Scan> {
        let mut mine = Scan {
            need: Vec::new(),
            sum: DbChecksum::default(),
            compared_chunks: 0,
            compared_bytes: 0,
        };
        let mut buf: Vec<u8> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let p = next.fetch_add(1, Ordering::Relaxed);
            let (Some(&(k0, a)), Some(&(k1, b))) = (pieces.get(p), pieces.get(p + 1)) else {
                break;
            };
            let have = old_len.clamp(a, b);
            buf.resize((have - a) as usize, 0);
            if have > a {
                out.read_exact_at(&mut buf, a)
                    .map_err(|e| Error::io(at, "cannot read the destination", e))?;
            }
            let mut o = a;
            for (k, c) in chunks[k0..k1].iter().enumerate() {
                let e = o + c.len as u64;
                let right = if e <= have {
                    mine.compared_chunks += 1;
                    mine.compared_bytes += c.len as u64;
                    codec.blob_id(&buf[(o - a) as usize..(e - a) as usize]) == c.id
                } else {
                    // Past DEST's old end: the file is extended with zeros.
                    o >= old_len && is_zero(c)
                };
                if right {
                    mine.sum.add(o, &c.id);
                } else {
                    mine.need.push(Need {
                        k: k0 + k,
                        offset: o,
                        fetch: !is_zero(c),
                    });
                }
                o = e;
            }
            progress.inc(b - a);
        }
        Ok(mine)
    };
    let parts: Vec<Result<Scan>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..width)
            .map(|_| {
                s.spawn(|| {
                    let r = work();
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::internal("a thread reading the destination panicked"))
                })
            })
            .collect()
    });
    let mut all = Scan {
        need: Vec::new(),
        sum: DbChecksum::default(),
        compared_chunks: 0,
        compared_bytes: 0,
    };
    for p in parts {
        let p = p?;
        all.need.extend(p.need);
        all.sum.0 = all.sum.0.wrapping_add(p.sum.0);
        all.compared_chunks += p.compared_chunks;
        all.compared_bytes += p.compared_bytes;
    }
    all.need.sort_unstable_by_key(|n| n.k);
    Ok(all)
}

/// The id of a chunk of zeros, for each length of chunk in `chunks`.
fn zero_ids(codec: &crate::pack::BlobCodec, chunks: &[ChunkRef]) -> HashMap<u32, Id> {
    let mut ids: HashMap<u32, Id> = HashMap::new();
    for c in chunks {
        ids.entry(c.len)
            .or_insert_with(|| codec.blob_id(&vec![0u8; c.len as usize]));
    }
    ids
}

/// The proof of a restored file: the terms of its chunks, each verified
/// where it lies and folded at its offset, are the manifest's checksum.
fn proven_sum(sum: &DbChecksum, file: &FileEntry, at: &Path) -> Result<()> {
    if sum.to_hex() != file.db_checksum {
        return Err(Error::Verification(format!(
            "the chunks written to {} do not add up to the snapshot's checksum of {}",
            at.display(),
            file.path
        )));
    }
    Ok(())
}

/// Copies each blob fetched once into the other places of its id in `buf`:
/// `copies` are (place, first place) pairs of `chunks`, chunk k at
/// `offs[k]`.
fn copy_duplicates(
    buf: &mut [u8],
    copies: &[(usize, usize)],
    chunks: &[ChunkRef],
    offs: &[usize],
    place: &str,
) -> Result<()> {
    for &(k, k0) in copies {
        let (c, c0) = (&chunks[k], &chunks[k0]);
        if c.len != c0.len {
            return Err(Error::corrupt(
                place,
                format!(
                    "chunk {} is listed with {} and with {} bytes",
                    c.id.short(),
                    c0.len,
                    c.len
                ),
            ));
        }
        buf.copy_within(offs[k0]..offs[k0] + c0.len as usize, offs[k]);
    }
    Ok(())
}

/// The alignment of memory, file offset and length that direct writes
/// need: the page size, which covers disks of 512- and 4096-byte blocks.
const DIRECT_ALIGN: usize = 4096;

/// `at` opened for direct writes (`O_DIRECT`), or `None` where the file
/// system refuses them (the restore then writes through the page cache).
fn open_direct(at: &Path) -> Option<File> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(at)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::debug!(path = %at.display(), error = %e, "no direct writes here; writing through the page cache");
            None
        }
    }
}

/// Writes `bytes` at file offset `at_off` of `out`. With `direct`, the
/// whole aligned blocks of the run go through it, past the page cache:
/// a restore writes every byte once and reads none back, so copying them
/// into the page cache (and reclaiming memory for it) was most of its
/// time; the unaligned ends go through `out`. A direct write the file
/// system refuses (EINVAL: another alignment) is written through `out`
/// instead, and no more direct writes are tried. The bytes written are
/// the same verified bytes either way.
fn write_run(
    out: &File,
    direct: &mut Option<&File>,
    bytes: &[u8],
    at_off: u64,
    at: &Path,
) -> Result<()> {
    let buffered = |b: &[u8], o: u64| {
        out.write_all_at(b, o)
            .map_err(|e| Error::io(at, "write failed", e))
    };
    let align = DIRECT_ALIGN as u64;
    let end = at_off + bytes.len() as u64;
    let (a, b) = (at_off.next_multiple_of(align), end / align * align);
    let Some(d) = direct.filter(|_| b > a) else {
        return buffered(bytes, at_off);
    };
    let (head, rest) = bytes.split_at((a - at_off) as usize);
    let (mid, tail) = rest.split_at((b - a) as usize);
    if !(mid.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
        return buffered(bytes, at_off);
    }
    buffered(head, at_off)?;
    match d.write_all_at(mid, a) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!(path = %at.display(), error = %e, "direct write refused; writing through the page cache");
            *direct = None;
            buffered(mid, a)?;
        }
        Err(e) => return Err(Error::io(at, "write failed", e)),
    }
    buffered(tail, b)
}

/// Reserves the blocks from `from` to `to` without changing the file
/// (its size included), so that a full disk fails here, before anything is
/// written, and the file is laid out in one piece. Where the file system
/// cannot reserve space, nothing is reserved.
fn reserve(out: &File, from: u64, to: u64, at: &Path) -> Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    match fallocate(out, FallocateFlags::KEEP_SIZE, from, to - from) {
        Err(e) if e == rustix::io::Errno::NOSPC => Err(Error::io(
            at,
            format!(
                "not enough space for the restored file ({} more bytes are needed); free some space or restore elsewhere; nothing was written",
                to - from
            ),
            std::io::Error::from(e),
        )),
        _ => Ok(()),
    }
}

/// Removes the `-wal`, `-shm` and `-journal` files beside the database
/// `dest`: SQLite would apply a stale WAL or journal to the restored file.
/// Every restore of a database (full, `--delta`, in place) shares it.
pub fn remove_sqlite_side_files(dest: &Path) -> Result<()> {
    let name_len = dest.file_name().map_or(0, |n| n.len());
    for suffix in ["-wal", "-shm", "-journal"] {
        if name_len + suffix.len() > NAME_MAX {
            // Such a name cannot exist, so neither can the file.
            continue;
        }
        let mut side = dest.as_os_str().to_os_string();
        side.push(suffix);
        let side = PathBuf::from(side);
        match std::fs::remove_file(&side) {
            Ok(()) => {
                tracing::warn!(path = %side.display(), "removed the old SQLite side file of the overwritten database")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&side, "cannot remove the old side file", e)),
        }
    }
    Ok(())
}

/// Sets the mode and modification time the snapshot recorded for `file`.
fn set_metadata(out: &File, file: &FileEntry, at: &Path) -> Result<()> {
    let perm = std::fs::Permissions::from_mode(file.mode & 0o7777);
    out.set_permissions(perm)
        .map_err(|e| Error::io(at, "cannot set permissions", e))?;
    if let Some(m) = file
        .mtime
        .as_deref()
        .and_then(|t| crate::time::parse_rfc3339(t).ok())
    {
        let _ = out.set_modified(m.into());
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
    fn write_run_lands_every_byte_whatever_the_alignment() {
        let dir = tempfile::tempdir().expect("tmp");
        let at = dir.path().join("f.bin");
        let out = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&at)
            .expect("create");
        let size = 64usize << 10;
        out.set_len(size as u64).expect("size");
        let direct = open_direct(&at);
        let src: Vec<u8> = (0..size + 2 * DIRECT_ALIGN)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let mut want = vec![0u8; size];
        // (file offset, length, memory off the file's alignment): whole
        // aligned blocks, a run with unaligned ends, one shorter than a
        // block, one inside a block, and memory that cannot go direct.
        for (o, n, skew) in [
            (0usize, 8192usize, false),
            (8192 + 100, 12000, false),
            (24576, 100, false),
            (30000, 50, false),
            (36864, 16384, true),
            (size - 5000, 5000, false),
        ] {
            let lead = o.wrapping_sub(src.as_ptr() as usize) % DIRECT_ALIGN + usize::from(skew);
            let bytes = &src[lead..lead + n];
            let mut d = direct.as_ref();
            write_run(&out, &mut d, bytes, o as u64, &at).expect("write");
            want[o..o + n].copy_from_slice(bytes);
        }
        drop(out);
        assert!(std::fs::read(&at).expect("read") == want, "bytes differ");
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
