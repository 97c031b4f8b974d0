//! Helpers for the end-to-end tests: the real binary, temporary
//! repositories, and SQLite fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `snapback` binary built by `cargo build` (scripts/test.sh builds it
/// before the tests run).
pub fn bin() -> PathBuf {
    if let Ok(p) = std::env::var("SNAPBACK_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let p = target.join("debug").join("snapback");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p snapback-cli` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A scratch directory with a repository in it.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Environment variables set for every command (e.g. the passphrase of
    /// an encrypted repository). Passphrase variables of the test process
    /// itself are never passed on.
    pub vars: Vec<(String, String)>,
}

/// The variables that carry a passphrase to `snapback`.
pub const PASSWORD_VARS: [&str; 4] = [
    "SNAPBACK_PASSWORD",
    "SNAPBACK_PASSWORD_FILE",
    "SNAPBACK_NEW_PASSWORD",
    "SNAPBACK_PASSWORD_COMMAND",
];

/// Variables of the test process that would change what `snapback` does
/// (which config it reads, where a passphrase comes from, what it logs):
/// never passed on. A test sets what it needs in `Env::vars`.
pub const ISOLATED_VARS: [&str; 8] = [
    "SNAPBACK_PASSWORD",
    "SNAPBACK_PASSWORD_FILE",
    "SNAPBACK_NEW_PASSWORD",
    "SNAPBACK_PASSWORD_COMMAND",
    "SNAPBACK_CONFIG",
    "SNAPBACK_LOG",
    "RUST_LOG",
    "NO_COLOR",
];

/// The cheapest setting of the passphrase KDF, to keep the tests fast.
pub const CHEAP_KDF: [&str; 4] = ["--kdf-memory", "8", "--kdf-iterations", "1"];

/// `init` of an encrypted repository, with the cheapest KDF.
pub fn init_encrypted() -> Vec<&'static str> {
    [&["init", "--encrypt"][..], &CHEAP_KDF].concat()
}

impl Env {
    pub fn new() -> Env {
        let e = Env::bare();
        let out = e.run(&["init"]);
        assert!(out.status.success(), "init failed: {}", stderr(&out));
        e
    }

    /// A scratch directory without a repository.
    pub fn bare() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
            vars: vec![],
        }
    }

    /// A scratch directory with an encrypted repository whose passphrase
    /// is `pass` (given to every command in SNAPBACK_PASSWORD). The KDF is
    /// at its cheapest setting, to keep the tests fast.
    pub fn encrypted(pass: &str) -> Env {
        let mut e = Env::bare();
        e.vars.push(("SNAPBACK_PASSWORD".into(), pass.into()));
        e.ok(&init_encrypted());
        e
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--repo")
            .arg(self.repo())
            .args(args)
            .env_remove("SNAPBACK_REPO")
            // No config of the user running the tests (~/.config/snapback).
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"));
        for k in ISOLATED_VARS {
            c.env_remove(k);
        }
        c.envs(self.vars.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run snapback")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "snapback {args:?} failed ({:?}): {}",
            out.status,
            stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "snapback {args:?} should fail but succeeded: {}",
            stdout(&out)
        );
        stderr(&out)
    }

    pub fn snapshot(&self, path: &Path) -> String {
        self.ok(&["snapshot", path.to_str().expect("utf8")])
            .trim()
            .to_string()
    }

    pub fn snapshots_json(&self) -> Vec<serde_json::Value> {
        let s = self.ok(&["--json", "snapshots"]);
        serde_json::from_str::<serde_json::Value>(&s)
            .expect("json")
            .as_array()
            .expect("array")
            .clone()
    }
}

/// `len` pseudo-random bytes (xorshift64, reproducible from `seed`), which
/// neither compress nor deduplicate.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn integrity(path: &Path) -> String {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open");
    c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .expect("integrity_check")
}

/// Flips one byte in the middle of the largest pack of a local repository;
/// returns the pack's path.
pub fn flip_byte_in_largest_pack(repo: &Path) -> PathBuf {
    let mut packs = vec![];
    for d in std::fs::read_dir(repo.join("data")).expect("data dir") {
        for f in std::fs::read_dir(d.expect("ent").path()).expect("pack dir") {
            let p = f.expect("ent").path();
            let len = std::fs::metadata(&p).expect("stat").len();
            packs.push((len, p));
        }
    }
    packs.sort();
    let (len, p) = packs.pop().expect("a pack");
    let mut b = std::fs::read(&p).expect("read");
    let i = (len as usize) * 2 / 3;
    b[i] ^= 0x55;
    std::fs::write(&p, b).expect("write");
    p
}

/// This host's name as `hostname` prints it, trimmed (what snapback writes
/// into the locks it takes here).
pub fn hostname() -> String {
    let out = Command::new("hostname").output().expect("hostname");
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}
