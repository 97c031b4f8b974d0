//! Test helpers: temp databases and both sides of a diff.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use snapback_repair::{
    diff_table, prepare_table, DiffCounts, PreparedTable, RowDiff, Side, TableSelection,
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

    pub fn diff(
        &self,
        sel: &TableSelection,
    ) -> snapback_repair::Result<(PreparedTable, Vec<RowDiff>, DiffCounts)> {
        let (s, l) = self.conns();
        diff_conns(&s, &l, sel)
    }
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

/// The workspace's debug `snapback` binary; fails clearly when missing.
pub fn snapback_bin() -> PathBuf {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    let bin = target.join("debug/snapback");
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p snapback-cli` (the project's test script does)",
        bin.display()
    );
    bin
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("workspace root")
        .to_path_buf()
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `snapback` with the repository `repo`, killing it after `limit`.
pub fn snapback(
    repo: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    limit: std::time::Duration,
) -> Out {
    let child = spawn_snapback(repo, args, env);
    wait_out(child, limit)
}

pub fn spawn_snapback(repo: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut c = std::process::Command::new(snapback_bin());
    c.arg("--repo").arg(repo).args(args);
    c.env_remove("SNAPBACK_REPO");
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn snapback")
}

pub fn wait_out(mut child: std::process::Child, limit: std::time::Duration) -> Out {
    use std::io::Read;
    let start = std::time::Instant::now();
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("snapback took longer than {limit:?}; killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: t1.join().expect("stdout thread"),
        stderr: t2.join().expect("stderr thread"),
    }
}
