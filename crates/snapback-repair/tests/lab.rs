//! A small lab for value-exactness tests: a repository, a live database, a
//! snapshot of it, restore scripts, and an exact dump of a table (REALs by
//! their bits, text and blobs by their bytes, with the storage class).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use crate::util::{snapback, Out};
pub use snapback_testkit::Rng;

pub const LIMIT: Duration = Duration::from_secs(120);

/// One stored value, compared exactly: a REAL by its bits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exact {
    Null,
    Integer(i64),
    Real(u64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Exact {
    pub fn of(v: ValueRef<'_>) -> Exact {
        match v {
            ValueRef::Null => Exact::Null,
            ValueRef::Integer(i) => Exact::Integer(i),
            ValueRef::Real(r) => Exact::Real(r.to_bits()),
            ValueRef::Text(t) => Exact::Text(t.to_vec()),
            ValueRef::Blob(b) => Exact::Blob(b.to_vec()),
        }
    }
}

/// Every row of `table` (all columns, `rowid` first), in rowid order.
pub fn dump(db: &Path, table: &str) -> Vec<Vec<Exact>> {
    let c = Connection::open(db).expect("open");
    let mut st = c
        .prepare(&format!("SELECT rowid, * FROM \"{table}\" ORDER BY rowid"))
        .expect("prepare");
    let n = st.column_count();
    st.query_map([], |r| {
        (0..n)
            .map(|i| r.get_ref(i).map(Exact::of))
            .collect::<rusqlite::Result<Vec<_>>>()
    })
    .expect("query")
    .collect::<rusqlite::Result<_>>()
    .expect("rows")
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub live: PathBuf,
}

pub fn ok(o: &Out) {
    assert_eq!(o.code, 0, "{o:?}");
}

impl Lab {
    /// A repository and a live database made by `setup`.
    pub fn new(setup: impl FnOnce(&Connection)) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let live = dir.path().join("live.db");
        let c = Connection::open(&live).expect("open live");
        setup(&c);
        drop(c);
        let lab = Lab { dir, repo, live };
        ok(&lab.run(&["init"], &[]));
        lab
    }

    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        snapback(&self.repo, args, env, LIMIT)
    }

    pub fn live_str(&self) -> &str {
        self.live.to_str().expect("utf8 path")
    }

    /// Snapshots the live database; returns the snapshot id.
    pub fn snapshot(&self) -> String {
        let o = self.run(&["snapshot", self.live_str()], &[]);
        ok(&o);
        o.stdout.trim().to_string()
    }

    pub fn exec(&self, sql: &str) {
        Connection::open(&self.live)
            .expect("open live")
            .execute_batch(sql)
            .expect(sql);
    }

    /// Writes a restore script for `snap` and the live database, with
    /// `body` ([[table]] and [[sql]] entries); returns its path.
    pub fn script(&self, name: &str, snap: &str, body: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                "snapshot = \"{snap}\"\nlive = \"{}\"\n{body}",
                self.live.display()
            ),
        )
        .expect("write script");
        p
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        let o = self.run(&["--json", "audit"], &[]);
        ok(&o);
        serde_json::from_str(&o.stdout).expect("audit json")
    }

    /// The repair id of the last audit entry.
    pub fn last_id(&self) -> String {
        self.audit()
            .last()
            .and_then(|e| e["entry"]["repair_id"].as_str().map(str::to_string))
            .expect("an audit entry")
    }
}
