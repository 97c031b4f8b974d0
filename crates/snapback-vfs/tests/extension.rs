//! The loadable extension (`libsnapback_vfs.so`) in the real Debian
//! `sqlite3` shell and in Python's sqlite3 module, on repositories made by
//! the real binary: it opens a point by URI and returns the point's exact
//! rows; a damaged pack is an I/O error, never other rows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use snapback_testkit::{db, run_bounded, vfs_extension, Env, Out};

const LIMIT: Duration = Duration::from_secs(60);

/// The extension's path without `.so`, as `.load` takes it.
fn ext() -> String {
    let p = vfs_extension();
    p.to_string_lossy().trim_end_matches(".so").to_string()
}

fn live_db(env: &Env) -> PathBuf {
    std::fs::canonicalize(env.dir.path())
        .expect("dir")
        .join("app.db")
}

fn uri(live: &Path, repo: &str, at: &str) -> String {
    format!("file:{}?vfs=snapback&repo={repo}&at={at}", live.display())
}

/// Runs `sql` in the sqlite3 shell on the point `uri`, after `.load`ing
/// the extension (the shell's stdin stays closed).
fn shell(uri: &str, sql: &str, vars: &[(String, String)]) -> Out {
    let mut c = Command::new("sqlite3");
    c.arg("-batch")
        .arg("-cmd")
        .arg(format!(".load {}", ext()))
        .arg("-cmd")
        .arg(format!(".open '{uri}'"))
        .arg(":memory:")
        .arg(sql)
        .env_remove("SNAPBACK_PASSWORD")
        .env_remove("SNAPBACK_PASSWORD_FILE")
        .envs(vars.iter().map(|(k, v)| (k, v)));
    run_bounded(c, LIMIT)
}

/// Debian's python3 (built with extension loading), else the one on PATH.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

const PY: &str = r#"
import json, sqlite3, sys
ext, uri = sys.argv[1], sys.argv[2]
loader = sqlite3.connect(":memory:")
loader.enable_load_extension(True)
loader.load_extension(ext)
try:
    db = sqlite3.connect(uri, uri=True)
    rows = db.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    print(json.dumps(rows))
except sqlite3.Error as e:
    print("error:", e, file=sys.stderr)
    sys.exit(3)
"#;

fn py(uri: &str, vars: &[(String, String)]) -> Out {
    let mut c = Command::new(python());
    c.arg("-c")
        .arg(PY)
        .arg(ext())
        .arg(uri)
        .env_remove("SNAPBACK_PASSWORD")
        .env_remove("SNAPBACK_PASSWORD_FILE")
        .envs(vars.iter().map(|(k, v)| (k, v)));
    run_bounded(c, LIMIT)
}

fn shell_rows(rows: &[(i64, String)]) -> String {
    rows.iter().map(|(i, v)| format!("{i}|{v}\n")).collect()
}

fn py_rows(out: &str) -> Vec<(i64, String)> {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not rows ({e}): {out}"))
}

/// A database with a snapshot of 40 rows, then changed live.
fn snapshotted(env: &Env) -> (PathBuf, String, Vec<(i64, String)>) {
    let live = live_db(env);
    db::make_db(&live, 40);
    let id = env.snapshot(&live);
    let rows = db::rows(&live);
    let c = rusqlite::Connection::open(&live).expect("live");
    c.execute_batch("UPDATE t SET v = 'live' WHERE id < 10; DELETE FROM t WHERE id > 30;")
        .expect("change live");
    (live, id, rows)
}

#[test]
fn extension_loads_in_the_sqlite3_shell_and_returns_the_points_exact_rows() {
    let env = Env::new();
    let (live, id, rows) = snapshotted(&env);
    let repo = env.repo().display().to_string();
    let o = shell(
        &uri(&live, &repo, &id),
        "SELECT id, v FROM t ORDER BY id;",
        &[],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, shell_rows(&rows));
    // A write is refused, read-only.
    let o = shell(&uri(&live, &repo, "latest"), "DELETE FROM t;", &[]);
    assert!(
        o.stderr.contains("attempt to write a readonly database"),
        "{o:?}"
    );
}

#[test]
fn extension_loads_in_python_sqlite3_and_opens_the_point_at_or_before_at() {
    let env = Env::new();
    let (live, _id, rows) = snapshotted(&env);
    std::thread::sleep(Duration::from_millis(1100));
    let between = snapback_core::time::format_rfc3339(time::OffsetDateTime::now_utc());
    std::thread::sleep(Duration::from_millis(1100));
    env.snapshot(&live);
    let later = db::rows(&live);
    assert_ne!(rows, later);
    let repo = env.repo().display().to_string();
    let o = py(&uri(&live, &repo, &between), &[]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(py_rows(&o.stdout), rows);
    let o = py(&uri(&live, &repo, "latest"), &[]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(py_rows(&o.stdout), later);
}

#[test]
fn extension_on_a_damaged_pack_gives_an_io_error_never_other_rows() {
    let env = Env::new();
    let live = live_db(&env);
    db::make_db(&live, 2000);
    let id = env.snapshot(&live);
    let rows = db::rows(&live);
    snapback_testkit::flip_byte_in_largest_pack(&env.repo());
    let repo = env.repo().display().to_string();
    let o = shell(
        &uri(&live, &repo, &id),
        "SELECT id, v FROM t ORDER BY id;",
        &[],
    );
    assert!(o.stderr.contains("disk I/O error"), "{o:?}");
    // What was printed before the damaged page is the point's own rows.
    let want = shell_rows(&rows);
    assert!(
        want.starts_with(&o.stdout) && o.stdout.len() < want.len(),
        "printed {} bytes, not a prefix of the point's rows",
        o.stdout.len()
    );
    let o = py(&uri(&live, &repo, &id), &[]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stderr.contains("disk I/O error"), "{o:?}");
}

#[test]
fn extension_opens_an_encrypted_repository_with_the_passphrase_from_the_environment() {
    let env = Env::encrypted("correct horse");
    let (live, id, rows) = snapshotted(&env);
    let repo = env.repo().display().to_string();
    let pass = vec![("SNAPBACK_PASSWORD".to_string(), "correct horse".to_string())];
    let o = py(&uri(&live, &repo, &id), &pass);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(py_rows(&o.stdout), rows);
    // Without it: the open fails and says what to set.
    let o = py(&uri(&live, &repo, &id), &[]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(
        o.stderr.contains("unable to open database") && o.stderr.contains("SNAPBACK_PASSWORD"),
        "{o:?}"
    );
    let wrong = vec![("SNAPBACK_PASSWORD".to_string(), "wrong".to_string())];
    let o = py(&uri(&live, &repo, &id), &wrong);
    assert_eq!(o.code, 3, "{o:?}");
}

#[test]
fn extension_opens_a_point_of_an_s3_repository() {
    let s3 = snapback_testkit::s3::server();
    let mut env = Env::bare();
    env.vars = s3.vars();
    let url = s3.repo_url("vfs-extension");
    let run = |args: &[&str]| {
        let mut c = Command::new(snapback_testkit::bin());
        c.arg("--repo").arg(&url).args(args);
        for k in snapback_testkit::ISOLATED_VARS {
            c.env_remove(k);
        }
        c.env("XDG_CONFIG_HOME", env.path("xdg"))
            .env("XDG_STATE_HOME", env.path("xdg-state"))
            .env("XDG_CACHE_HOME", env.path("xdg-cache"))
            .envs(env.vars.iter().map(|(k, v)| (k, v)));
        run_bounded(c, LIMIT)
    };
    let live = live_db(&env);
    db::make_db(&live, 25);
    assert_eq!(run(&["init"]).code, 0);
    let o = run(&["snapshot", live.to_str().expect("utf8")]);
    assert_eq!(o.code, 0, "{o:?}");
    let rows = db::rows(&live);
    let o = py(&uri(&live, &url, "latest"), &env.vars);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(py_rows(&o.stdout), rows);
}
