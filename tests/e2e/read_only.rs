//! Reading from a repository that cannot be written: a read-only mount
//! (EROFS, as a write-protected backup disk) and a repository this user may
//! not write (EACCES, as `chmod -R a-w repo`). Reading commands go on
//! without a lock (one warning), `--no-lock` skips the attempt, and writing
//! commands fail clearly, writing nothing.
//!
//! Root ignores file permissions, so the EACCES case runs the binary as
//! `nobody` (setpriv) when the tests run as root, and the EROFS case bind
//! mounts the repository read-only inside a private mount namespace
//! (`unshare -m`, or `unshare -rm` for a non-root user). Where neither can
//! be done, the tests fail and say why: they never pass without trying.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::rel_util::{make_db, objects, repair_script, rows};
use snapback_testkit::{hostname, stderr, stdout, Env};

/// The phrase of the one warning a reading command prints when it cannot
/// write its lock.
const WARNING: &str = "cannot be written";

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0
}

/// `cmd` (as `Env::cmd` built it: program, arguments, environment) run by
/// `sh -c SCRIPT` inside a private mount namespace in which `ro` is bind
/// mounted read-only onto itself. The script gets the command as "$@".
/// Two minutes at most.
pub(crate) fn in_read_only_namespace(ro: &Path, script: &str, cmd: &Command) -> Command {
    let mut c = Command::new("timeout");
    c.args(["120", "unshare"]);
    // A non-root user may mount in a user namespace of its own.
    c.arg(if running_as_root() { "-m" } else { "-rm" });
    c.args(["--propagation", "private", "sh", "-c"]);
    c.arg(format!(
        r#"set -e; R="$RO_DIR"; mount --bind "$R" "$R"; mount -o remount,bind,ro "$R"; {script}"#
    ));
    c.arg("sh").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.env("RO_DIR", ro);
    c
}

/// Fails, saying why, unless a read-only bind mount can be made here.
pub(crate) fn require_read_only_mounts(env: &Env) {
    let probe = env.path("probe");
    std::fs::create_dir_all(&probe).expect("mkdir");
    let mut touch = Command::new("touch");
    touch.arg(probe.join("written"));
    let out = in_read_only_namespace(&probe, r#"exec "$@""#, &touch)
        .output()
        .expect("run unshare (util-linux)");
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("Read-only file system"),
        "this test needs a read-only bind mount in a private mount namespace (`unshare -m` as root, `unshare -rm` with user namespaces): the probe gave {:?}: {err}",
        out.status
    );
}

/// Runs snapback on `env`'s repository, mounted read-only for this command.
fn ro(env: &Env, args: &[&str]) -> Output {
    in_read_only_namespace(&env.repo(), r#"exec "$@""#, &env.cmd(args))
        .output()
        .expect("run unshare")
}

fn ok(out: Output, what: &str) -> (String, String) {
    assert!(
        out.status.success(),
        "{what} should work from a read-only repository ({:?}): {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    (stdout(&out), stderr(&out))
}

/// Asserts that a writing command was refused (exit 1) with the message
/// that says the repository cannot be written.
fn refused(out: Output, what: &str) -> String {
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what} must fail on a read-only repository: {}{err}",
        stdout(&out)
    );
    assert!(
        err.contains(WARNING) && err.contains("nothing was"),
        "{what}: the error says that the repository cannot be written and nothing was done: {err}"
    );
    err
}

/// A directory with a WAL database and a plain file, snapshotted.
fn source(env: &Env) -> (PathBuf, PathBuf, PathBuf) {
    let src = env.path("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let db = src.join("app.db");
    make_db(&db, 500);
    let txt = src.join("notes.txt");
    std::fs::write(&txt, "plain file\n").expect("write");
    env.snapshot(&src);
    (src, db, txt)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn reading_commands_work_from_a_read_only_file_system() {
    let env = Env::new();
    require_read_only_mounts(&env);
    let (src, db, txt) = source(&env);
    let before = objects(&env.repo(), "");

    // snapshots
    let (list, _) = ok(ro(&env, &["snapshots"]), "snapshots");
    assert_eq!(list.lines().count(), 2, "a header and one snapshot: {list}");

    // restore: one warning, what it means, and the files exactly.
    let dest = env.path("restored/");
    let (_, err) = ok(ro(&env, &["restore", "latest", utf8(&dest)]), "restore");
    assert_eq!(err.matches(WARNING).count(), 1, "one warning: {err}");
    assert!(
        err.contains("Read-only file system")
            && err.contains("without a lock")
            && err.contains("prune"),
        "the warning says why and what it means: {err}"
    );
    let back = |d: &Path, p: &Path| d.join(p.strip_prefix("/").expect("absolute"));
    assert_eq!(rows(&back(&dest, &db)), rows(&db), "the database rows");
    assert_eq!(
        std::fs::read(back(&dest, &txt)).expect("read"),
        std::fs::read(&txt).expect("read")
    );

    // --json says how it ran; --no-lock takes no lock and warns of nothing.
    let (out, _) = ok(
        ro(
            &env,
            &["--json", "restore", "latest", utf8(&env.path("r2/"))],
        ),
        "restore --json",
    );
    assert_eq!(json(&out)["lock"], "read_only", "{out}");
    let (out, err) = ok(
        ro(
            &env,
            &[
                "--json",
                "restore",
                "--no-lock",
                "latest",
                utf8(&env.path("r3/")),
            ],
        ),
        "restore --no-lock",
    );
    assert_eq!(json(&out)["lock"], "skipped", "{out}");
    assert!(!err.contains(WARNING), "--no-lock: no warning: {err}");

    // check, structural and --read-data; no check record can be written,
    // and none is tried.
    for args in [
        &["check"][..],
        &["check", "--read-data"],
        &["check", "--no-lock"],
    ] {
        let (_, err) = ok(ro(&env, args), &format!("{args:?}"));
        assert!(err.contains("no problems"), "{args:?}: {err}");
        let warnings = if args.contains(&"--no-lock") { 0 } else { 1 };
        assert_eq!(err.matches(WARNING).count(), warnings, "{args:?}: {err}");
        assert!(!err.contains("could not record"), "{args:?}: {err}");
    }
    let (out, _) = ok(ro(&env, &["--json", "check"]), "check --json");
    assert_eq!(json(&out)["lock"], "read_only", "{out}");
    assert!(json(&out)["problems"]
        .as_array()
        .expect("problems")
        .is_empty());

    // diff (and --no-lock, accepted by every reading command)
    for extra in [&[][..], &["--no-lock"]] {
        let args = [&["diff"][..], extra, &["latest", utf8(&db)]].concat();
        let (_, err) = ok(ro(&env, &args), "diff");
        assert!(err.contains("0 row difference(s)"), "{err}");
    }
    ok(ro(&env, &["snapshots", "--no-lock"]), "snapshots --no-lock");

    // Writing commands fail clearly.
    refused(ro(&env, &["snapshot", utf8(&src)]), "snapshot");
    refused(ro(&env, &["forget", "--keep-last", "1"]), "forget");
    refused(ro(&env, &["prune"]), "prune");

    // A repair's dry run reads; its --apply takes a pre-repair snapshot
    // first, which is refused before the live database is touched.
    let snap = env.snapshots_json()[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let c = rusqlite::Connection::open(&db).expect("open");
    c.execute("UPDATE t SET v = 'damaged' WHERE id = 7", [])
        .expect("damage");
    drop(c);
    let damaged = rows(&db);
    let script = repair_script(&env, &snap, &db, "fix.toml");
    let (out, _) = ok(ro(&env, &["repair", utf8(&script)]), "repair (dry run)");
    assert!(out.contains("update 1"), "{out}");
    let out = ro(&env, &["repair", utf8(&script), "--apply", "--yes"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pre-repair snapshot")
            && err.contains(WARNING)
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(rows(&db), damaged, "the live database is untouched");

    assert_eq!(objects(&env.repo(), ""), before, "nothing was written");
}

#[test]
fn mount_serves_a_read_only_repository() {
    snapback_testkit::mount::require_fuse();
    let env = Env::new();
    require_read_only_mounts(&env);
    let (_src, _db, txt) = source(&env);
    let mp = env.path("mnt");
    std::fs::create_dir_all(&mp).expect("mkdir");
    let copy = env.path("copied.txt");
    // The mount lives in the namespace: mount, read, unmount, all there.
    let script = r#"
        "$@" &
        i=0
        while [ ! -e "$MP/latest" ]; do
            i=$((i+1)); if [ $i -gt 300 ]; then echo "the mount did not come up" >&2; kill $!; exit 1; fi
            sleep 0.05
        done
        cp "$MP/latest$FILE" "$COPY"
        fusermount3 -u "$MP"
        wait
    "#;
    let out = in_read_only_namespace(&env.repo(), script, &env.cmd(&["mount", utf8(&mp)]))
        .env("MP", &mp)
        .env("FILE", &txt)
        .env("COPY", &copy)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "mount from a read-only repository ({:?}): {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(&copy).expect("copied out of the mount"),
        std::fs::read(&txt).expect("read")
    );
}

/// Runs snapback on `env`'s repository as a user who may not write it:
/// `nobody` when the tests run as root (root ignores permissions), else the
/// user running the tests, after `chmod -R a-w`.
struct NoWrite<'a> {
    env: &'a Env,
    as_nobody: bool,
}

impl<'a> NoWrite<'a> {
    fn new(env: &'a Env) -> NoWrite<'a> {
        let as_nobody = running_as_root();
        let chmod = |mode: &str, p: &Path| {
            let st = Command::new("chmod")
                .args(["-R", mode])
                .arg(p)
                .status()
                .expect("chmod");
            assert!(st.success(), "chmod -R {mode} {}", p.display());
        };
        if as_nobody {
            let probe = Command::new("setpriv")
                .args([
                    "--reuid=nobody",
                    "--regid=nogroup",
                    "--clear-groups",
                    "true",
                ])
                .status();
            assert!(
                probe.is_ok_and(|s| s.success()),
                "this test runs snapback as `nobody` (root ignores chmod) and needs setpriv (util-linux) and the user nobody and group nogroup"
            );
            // nobody reads the repository and writes the destinations.
            let st = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(env.dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown");
            chmod("a+rX", env.dir.path());
        }
        chmod("a-w", &env.repo());
        NoWrite { env, as_nobody }
    }

    fn run(&self, args: &[&str]) -> Output {
        let c = self.env.cmd(args);
        let mut w = if self.as_nobody {
            let mut w = Command::new("setpriv");
            w.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
                .arg(c.get_program());
            w
        } else {
            Command::new(c.get_program())
        };
        w.args(c.get_args()).env("HOME", self.env.dir.path());
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => w.env(k, v),
                None => w.env_remove(k),
            };
        }
        w.output().expect("run snapback")
    }
}

impl Drop for NoWrite<'_> {
    fn drop(&mut self) {
        // So that the temporary directory can be removed.
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(self.env.repo())
            .status();
    }
}

#[test]
fn reading_commands_work_from_a_repository_this_user_cannot_write() {
    let env = Env::new();
    let (src, db, _txt) = source(&env);
    let before = objects(&env.repo(), "");
    let user = NoWrite::new(&env);

    let dest = env.path("restored/");
    let (_, err) = ok(user.run(&["restore", "latest", utf8(&dest)]), "restore");
    assert_eq!(err.matches(WARNING).count(), 1, "one warning: {err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(
        rows(&dest.join(db.strip_prefix("/").expect("abs"))),
        rows(&db)
    );
    let (_, err) = ok(user.run(&["check", "--read-data"]), "check --read-data");
    assert!(
        err.contains("no problems") && err.matches(WARNING).count() == 1,
        "{err}"
    );
    let (out, err) = ok(
        user.run(&["--json", "check", "--no-lock"]),
        "check --no-lock",
    );
    assert_eq!(json(&out)["lock"], "skipped", "{out}");
    assert!(!err.contains(WARNING), "{err}");
    ok(user.run(&["diff", "latest", utf8(&db)]), "diff");
    ok(user.run(&["snapshots"]), "snapshots");

    let err = refused(user.run(&["snapshot", utf8(&src)]), "snapshot");
    assert!(err.contains("Permission denied"), "{err}");
    refused(user.run(&["prune"]), "prune");
    drop(user);
    assert_eq!(objects(&env.repo(), ""), before, "nothing was written");
}

#[test]
fn a_prune_lock_on_a_read_only_repository_is_waited_for_and_no_lock_reads_anyway() {
    let env = Env::new();
    require_read_only_mounts(&env);
    let (_src, _db, _txt) = source(&env);
    // A live prune (this test process) holds the exclusive lock.
    let locks = env.repo().join("locks");
    std::fs::create_dir_all(&locks).expect("mkdir");
    std::fs::write(
        locks.join("00000000000000000001-prune"),
        format!(
            r#"{{"kind":"exclusive","host":"{}","pid":{},"time":"2099-01-01T00:00:00Z","command":"prune"}}"#,
            hostname(),
            std::process::id()
        ),
    )
    .expect("write lock");
    let out = ro(
        &env,
        &[
            "restore",
            "--lock-wait",
            "1",
            "latest",
            utf8(&env.path("a/")),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(11), "a held lock: {err}");
    assert!(
        err.contains("locked") && err.contains("prune") && err.contains("--no-lock"),
        "the error names the lock and the way out: {err}"
    );
    assert!(!env.path("a").exists(), "nothing was restored");
    let (_, err) = ok(
        ro(
            &env,
            &["restore", "--no-lock", "latest", utf8(&env.path("b/"))],
        ),
        "restore --no-lock",
    );
    assert!(!err.contains(WARNING), "{err}");
}
