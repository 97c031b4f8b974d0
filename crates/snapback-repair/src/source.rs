//! Where the two sides of a diff come from.
//!
//! The snapshot side is a database that is never written: either a point
//! of the repository opened in place through the snapback VFS
//! (`snapback_vfs::PointDb`: only the pages a query touches are read, each
//! verified), or a file given directly, such as a database inside a
//! mounted snapshot, opened with `immutable=1`, which is the one way a
//! WAL-mode image on a read-only mount opens at all (SQLITE-NOTES 2).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use snapback_core::{FileEntry, FileKind, Id, Repository, Selector, Snapshot};
use snapback_vfs::{PointDb, ReadStats};

use crate::error::{Error, Result};

/// A `file:` URI for `path` with query `params`, percent-encoding every byte
/// that could be read as URI syntax.
pub fn sqlite_uri(path: &Path, params: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut s = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if !params.is_empty() {
        s.push('?');
        s.push_str(params);
    }
    s
}

/// The snapshot side of a diff.
pub struct SnapshotDb {
    /// The database file given, or, for a point, the database's path in
    /// the snapshot.
    pub path: PathBuf,
    /// The snapshot it came from, when it came from the repository.
    pub snapshot: Option<Snapshot>,
    /// The database's path inside the snapshot.
    pub db_path: Option<String>,
    point: Option<PointDb>,
}

impl SnapshotDb {
    /// Opens `file` of `snap` (a snapshot or a timeline point) in place:
    /// nothing is read until a query reads it, and then only its pages.
    pub fn in_place(repo: &Repository, snap: &Snapshot, file: &FileEntry) -> Result<SnapshotDb> {
        if file.kind != FileKind::Sqlite {
            return Err(Error::Input(format!(
                "{} in snapshot {} is not a SQLite database",
                file.path,
                snap.describe()
            )));
        }
        tracing::info!(snapshot = %snap.id.short(), path = %file.path, bytes = file.size, "opening the snapshot's database in place");
        let point = PointDb::open(Arc::new(repo.share()), snap, file)?;
        Ok(SnapshotDb {
            path: PathBuf::from(&file.path),
            snapshot: Some(snap.clone()),
            db_path: Some(file.path.clone()),
            point: Some(point),
        })
    }

    /// A database file given directly (for example inside a mounted
    /// snapshot). It is opened immutable, never written.
    pub fn from_file(path: &Path) -> Result<SnapshotDb> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(path, "cannot use this file as the snapshot side", e))?;
        if !meta.is_file() {
            return Err(Error::Input(format!(
                "{}: not a database file",
                path.display()
            )));
        }
        Ok(SnapshotDb {
            path: path.to_path_buf(),
            snapshot: None,
            db_path: None,
            point: None,
        })
    }

    /// "snapshot abcd1234 (…) /var/lib/app.db" or the file path.
    pub fn describe(&self) -> String {
        match (&self.snapshot, &self.db_path) {
            (Some(s), Some(p)) => format!("snapshot {} {p}", s.describe()),
            _ => self.path.display().to_string(),
        }
    }

    pub fn snapshot_id(&self) -> Option<Id> {
        self.snapshot.as_ref().map(|s| s.id)
    }

    /// The point, when the snapshot side is one (None for a file).
    pub fn point(&self) -> Option<&PointDb> {
        self.point.as_ref()
    }

    /// What reading the point cost so far (None for a file).
    pub fn read_stats(&self) -> Option<ReadStats> {
        self.point.as_ref().map(PointDb::stats)
    }

    /// The URI that opens or ATTACHes it read-only.
    pub fn uri(&self) -> String {
        match &self.point {
            Some(p) => p.uri(),
            None => sqlite_uri(&self.path, "mode=ro&immutable=1"),
        }
    }

    /// Opens it read-only (a point: through the VFS; a file: immutable).
    pub fn open(&self) -> Result<Connection> {
        let place = self.describe();
        let conn = match &self.point {
            Some(p) => p.connect(),
            None => Connection::open_with_flags(
                sqlite_uri(&self.path, "immutable=1"),
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_URI
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ),
        }
        .map_err(|e| Error::sqlite(&place, "cannot open the snapshot's database", e))?;
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .map_err(|e| Error::sqlite(&place, "is not a readable SQLite database", e))?;
        Ok(conn)
    }
}

/// Absolute path of a live database, with symlinks resolved (snapshots
/// record canonical paths). Errors when it does not exist.
pub fn live_path(path: &Path) -> Result<PathBuf> {
    let p = std::fs::canonicalize(path).map_err(|e| {
        Error::io(
            path,
            "the live database does not exist or cannot be reached (nothing was written)",
            e,
        )
    })?;
    if p.is_dir() {
        return Err(Error::Input(format!(
            "{}: is a directory, not a database file; give the live database file itself (for example {}/app.db); nothing was read or written",
            path.display(),
            path.display()
        )));
    }
    Ok(p)
}

/// Finds the snapshot for `selector` and the database file in it: `path`
/// when given, else the file at the live database's own path, else the only
/// SQLite database in the snapshot. Snapshots tagged with one of
/// `skip_tags` are not considered.
pub fn resolve_snapshot(
    repo: &Repository,
    selector: &str,
    path: Option<&str>,
    live: &Path,
    skip_tags: &[&str],
) -> Result<(Snapshot, FileEntry)> {
    let sel: Selector = selector.parse()?;
    let live_str = live.to_string_lossy().into_owned();
    let all = repo.snapshots()?;
    let skipped = |s: &Snapshot| {
        s.manifest
            .tags
            .iter()
            .any(|t| skip_tags.contains(&t.as_str()))
    };
    let want = path.map(str::to_string).or_else(|| {
        all.iter()
            .any(|s| s.file(&live_str).is_some())
            .then(|| live_str.clone())
    });
    let snap = match &want {
        Some(p) => repo.resolve_for_path(&sel, Some(p), skip_tags).map_err(|e| {
            Error::Input(format!("{e} (looking only at snapshots that hold {p})"))
        })?,
        None => repo.resolve(&sel, |s| !skipped(s) && sqlite_files(s).len() == 1).map_err(|e| {
            Error::Input(format!(
                "{e} (no snapshot holds {live_str}, so only snapshots holding exactly one SQLite database were considered; name the database with --path)"
            ))
        })?,
    };
    let file = match &want {
        Some(p) => snap.file(p).cloned(),
        None => sqlite_files(&snap).first().map(|f| (*f).clone()),
    }
    .ok_or_else(|| {
        Error::Input(format!(
            "snapshot {} holds no database to compare; its SQLite databases: {}",
            snap.describe(),
            sqlite_files(&snap)
                .iter()
                .map(|f| f.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if file.kind != FileKind::Sqlite {
        return Err(Error::Input(format!(
            "{} in snapshot {} was captured as a plain file, not as a SQLite database",
            file.path,
            snap.describe()
        )));
    }
    Ok((snap, file))
}

fn sqlite_files(s: &Snapshot) -> Vec<&FileEntry> {
    s.manifest
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Sqlite)
        .collect()
}

/// Opens the live database read-only, for a diff.
pub fn open_live_readonly(path: &Path, busy: Duration) -> Result<Connection> {
    let place = path.display().to_string();
    let conn = Connection::open_with_flags(
        sqlite_uri(path, "mode=ro"),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite(&place, "cannot open the live database read-only", e))?;
    conn.busy_timeout(busy)
        .map_err(|e| Error::sqlite(&place, "cannot set a busy timeout", e))?;
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| Error::sqlite(&place, "is not a readable SQLite database", e))?;
    Ok(conn)
}

/// Opens the live database for writing; never creates it. A database that
/// SQLite can only open read-only is an error, raised before any write.
pub fn open_live_rw(path: &Path, busy: Duration) -> Result<Connection> {
    let place = path.display().to_string();
    if !path.is_file() {
        return Err(Error::Input(format!(
            "the live database {place} does not exist; nothing was written"
        )));
    }
    let conn = Connection::open_with_flags(
        sqlite_uri(path, ""),
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite(&place, "cannot open the live database for writing", e))?;
    conn.busy_timeout(busy)
        .map_err(|e| Error::sqlite(&place, "cannot set a busy timeout", e))?;
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| Error::sqlite(&place, "is not a readable SQLite database", e))?;
    let ro = conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(|e| Error::sqlite(&place, "cannot check write access", e))?;
    if ro {
        return Err(Error::Input(format!(
            "the live database {place} is read-only for this user (check its permissions and those of its directory, which SQLite needs for its journal); nothing was written"
        )));
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_escape_syntax() {
        assert_eq!(
            sqlite_uri(Path::new("/a b/c?d#e%.db"), "immutable=1"),
            "file:/a%20b/c%3Fd%23e%25.db?immutable=1"
        );
    }
}
