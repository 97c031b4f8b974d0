//! Test helpers: temp databases and both sides of a diff.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use snapback_repair::{
    diff_table, diff_table_threaded, prepare_table, DiffCounts, PreparedTable, RowDiff, ScanSide,
    Side, TableSelection,
};

pub struct Pair {
    pub dir: tempfile::TempDir,
    pub snap: PathBuf,
    pub live: PathBuf,
}

impl Pair {
    /// Two databases with the same `schema`, then `snap_sql` and `live_sql`.
    pub fn new(schema: &str, snap_sql: &str, live_sql: &str) -> Pair {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = dir.path().join("snap.db");
        let live = dir.path().join("live.db");
        for (p, sql) in [(&snap, snap_sql), (&live, live_sql)] {
            let c = Connection::open(p).expect("open");
            c.execute_batch(schema).expect("schema");
            c.execute_batch(sql).expect("data");
        }
        Pair { dir, snap, live }
    }

    pub fn conns(&self) -> (Connection, Connection) {
        (
            Connection::open(&self.snap).expect("snap"),
            Connection::open(&self.live).expect("live"),
        )
    }

    /// The diff of the pair with both scans on this thread
    /// (`diff_table`), checked to be exactly what the same diff gives with
    /// each side scanned on a thread of its own (`diff_table_threaded`, as
    /// `snapback diff` runs it): the same rows, counts, or error.
    pub fn diff(
        &self,
        sel: &TableSelection,
    ) -> snapback_repair::Result<(PreparedTable, Vec<RowDiff>, DiffCounts)> {
        let (s, l) = self.conns();
        let one = diff_conns(&s, &l, sel);
        let (mut s, mut l) = self.conns();
        let two = diff_conns_threaded(&mut s, &mut l, sel);
        let shown = |r: &snapback_repair::Result<(PreparedTable, Vec<RowDiff>, DiffCounts)>| match r
        {
            Ok((_, rows, c)) => format!("{rows:?} {c:?}"),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(
            shown(&one),
            shown(&two),
            "the diff on one thread and on two threads differ"
        );
        one
    }
}

/// The diff with each side scanned on a thread of its own.
pub fn diff_conns_threaded(
    s: &mut Connection,
    l: &mut Connection,
    sel: &TableSelection,
) -> snapback_repair::Result<(PreparedTable, Vec<RowDiff>, DiffCounts)> {
    let mut ss = ScanSide {
        conn: s,
        place: "snap".into(),
    };
    let mut ls = ScanSide {
        conn: l,
        place: "live".into(),
    };
    let t = prepare_table(&ss.side(), &ls.side(), sel)?;
    let mut rows = Vec::new();
    let c = diff_table_threaded(&mut ss, &mut ls, &t, |d| {
        rows.push(d);
        Ok(())
    })?;
    Ok((t, rows, c))
}

pub fn diff_conns(
    s: &Connection,
    l: &Connection,
    sel: &TableSelection,
) -> snapback_repair::Result<(PreparedTable, Vec<RowDiff>, DiffCounts)> {
    let ss = Side {
        conn: s,
        place: "snap".into(),
    };
    let ls = Side {
        conn: l,
        place: "live".into(),
    };
    let t = prepare_table(&ss, &ls, sel)?;
    let mut rows = Vec::new();
    let c = diff_table(&ss, &ls, &t, |d| {
        rows.push(d);
        Ok(())
    })?;
    Ok((t, rows, c))
}

pub fn sel(table: &str) -> TableSelection {
    TableSelection {
        table: table.into(),
        ..Default::default()
    }
}

pub use snapback_testkit::{wait_out, workspace, Out};

/// Runs `snapback` with the repository `repo` and the variables `env`,
/// killing it after `limit`.
pub fn snapback(
    repo: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    limit: std::time::Duration,
) -> Out {
    wait_out(spawn_snapback(repo, args, env), limit)
}

/// Starts `snapback` with the repository `repo` and the variables `env`
/// (stdin closed, output piped).
pub fn spawn_snapback(
    repo: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> snapback_testkit::KillOnDrop {
    let mut c = snapback_testkit::command(repo);
    c.args(args).envs(env.iter().copied());
    snapback_testkit::spawn(c)
}
