//! The whole tool against a real S3 server (s3s-fs on 127.0.0.1, started by
//! scripts/s3-server.sh), with and without injected faults. The incident
//! this project started from is a job that reported a failed upload as a
//! success: here a proxy lies, drops, resets and truncates, and every
//! snapshot either commits with all of its data present or fails loudly.

use std::process::{Command, Output};
use std::time::Duration;

use snapback_s3::testing::fault_proxy::{Fault, FaultProxy, Match};

use snapback_testkit::db::{
    checkpointed_image, count, insert_blobs, make_db, update_blob, wal_writer,
};
use snapback_testkit::s3::server;
use snapback_testkit::{bin, init_encrypted, integrity, stderr, stdout};

/// A repository under a fresh prefix of the test bucket.
pub struct S3Repo {
    dir: tempfile::TempDir,
    url: String,
    /// Environment variables for every command (the passphrase of an
    /// encrypted repository).
    vars: Vec<(String, String)>,
}

impl S3Repo {
    pub(crate) fn new() -> S3Repo {
        S3Repo::init(&["init"], vec![])
    }

    /// An encrypted repository whose passphrase is `pass` (given to every
    /// command in SNAPBACK_PASSWORD), with the cheapest KDF setting.
    pub fn encrypted(pass: &str) -> S3Repo {
        S3Repo::init(
            &init_encrypted(),
            vec![("SNAPBACK_PASSWORD".into(), pass.into())],
        )
    }

    fn init(args: &[&str], vars: Vec<(String, String)>) -> S3Repo {
        let dir = tempfile::tempdir().expect("tmp");
        let name = dir
            .path()
            .file_name()
            .expect("name")
            .to_string_lossy()
            .replace('.', "");
        let r = S3Repo {
            url: format!("s3://{}/e2e-{name}", server().bucket),
            dir,
            vars,
        };
        let out = r.run(args, None);
        assert!(out.status.success(), "init on S3: {}", stderr(&out));
        r
    }

    pub fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs snapback against the server, or through `proxy`.
    pub fn run(&self, args: &[&str], proxy: Option<&FaultProxy>) -> Output {
        self.cmd(args, proxy).output().expect("run snapback")
    }

    /// The command of `run`, not started.
    pub fn cmd(&self, args: &[&str], proxy: Option<&FaultProxy>) -> Command {
        let s = server();
        let endpoint = proxy
            .map(|p| p.endpoint())
            .unwrap_or_else(|| s.endpoint.clone());
        let mut c = Command::new(bin());
        for (k, v) in s.vars().iter().chain(&self.vars) {
            c.env(k, v);
        }
        c.env("AWS_ENDPOINT_URL", &endpoint)
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env_remove("SNAPBACK_REPO")
            .args([
                "--repo",
                &self.url,
                "--s3-endpoint",
                &endpoint,
                "--s3-path-style",
            ])
            .args(args);
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        assert!(out.status.success(), "snapback {args:?}: {}", stderr(&out));
        stdout(&out)
    }
}

#[test]
fn s3_snapshot_restore_check_and_request_costs() {
    let r = S3Repo::new();
    let db = r.path("app.db");
    make_db(&db, 4000);
    let db_s = db.to_str().expect("utf8");
    let full: serde_json::Value =
        serde_json::from_str(&r.ok(&["--json", "snapshot", db_s])).expect("json");
    assert!(
        full["requests"]["put"].as_u64().expect("puts") >= 3,
        "{full}"
    );
    // One changed row: a handful of requests, not one per page.
    let c = rusqlite::Connection::open(&db).expect("open");
    c.execute("UPDATE t SET v = 'changed' WHERE id = 17", [])
        .expect("update");
    drop(c);
    let inc: serde_json::Value =
        serde_json::from_str(&r.ok(&["--json", "snapshot", db_s])).expect("json");
    let req = &inc["requests"];
    let total: u64 = ["put", "get", "head", "list", "delete"]
        .iter()
        .map(|k| req[*k].as_u64().expect("n"))
        .sum();
    assert!(
        req["put"].as_u64().expect("puts") <= 5,
        "an incremental snapshot writes few objects: {inc}"
    );
    assert!(
        total <= 40,
        "an incremental snapshot costs a handful of requests: {inc}"
    );
    assert!(inc["bytes_added"].as_u64().expect("n") < 64 * 1024, "{inc}");

    let dest = r.path("restored.db");
    r.ok(&["restore", "latest", dest.to_str().expect("utf8")]);
    assert_eq!(integrity(&dest), "ok");
    assert_eq!(count(&dest, "t"), 4000);
    let c = rusqlite::Connection::open(&dest).expect("open");
    let v: String = c
        .query_row("SELECT v FROM t WHERE id = 17", [], |r| r.get(0))
        .expect("row");
    assert_eq!(v, "changed");
    let out = r.run(&["check", "--read-data"], None);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r.ok(&["--json", "snapshots"]))
            .expect("json")
            .as_array()
            .expect("arr")
            .len(),
        2
    );
}

#[test]
fn lying_server_is_detected_before_commit() {
    let r = S3Repo::new();
    let db = r.path("app.db");
    make_db(&db, 3000);
    let proxy = FaultProxy::start(&server().endpoint).expect("proxy");
    // The incident: the server says 200 to the pack upload but stores nothing.
    proxy.inject_always(Match::method("PUT").containing("/data/"), Fault::LieOk);
    let out = r.run(&["snapshot", db.to_str().expect("utf8")], Some(&proxy));
    assert!(
        !out.status.success(),
        "a lied-about upload must fail the snapshot: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("nothing was committed"), "{err}");
    assert!(proxy.faults_fired() >= 1);
    assert!(stdout(&out).trim().is_empty(), "no snapshot id is printed");
    // Nothing references the missing pack: the repository checks clean.
    let list: serde_json::Value =
        serde_json::from_str(&r.ok(&["--json", "snapshots"])).expect("json");
    assert!(
        list.as_array().expect("arr").is_empty(),
        "no manifest was written: {list}"
    );
    let out = r.run(&["check", "--read-data"], None);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn transient_faults_still_commit_all_data() {
    let r = S3Repo::new();
    let db = r.path("app.db");
    make_db(&db, 3000);
    let proxy = FaultProxy::start(&server().endpoint).expect("proxy");
    proxy.inject(
        Match::method("PUT").containing("/data/"),
        Fault::status(503, "SlowDown"),
        2,
    );
    proxy.inject(
        Match::method("PUT").containing("/index/"),
        Fault::DropResponse,
        1,
    );
    proxy.inject(
        Match::method("PUT").containing("/snapshots/"),
        Fault::status(500, "InternalError"),
        1,
    );
    proxy.inject(
        Match::method("HEAD"),
        Fault::Delay(Duration::from_millis(300)),
        2,
    );
    proxy.inject(Match::method("GET"), Fault::status(503, "SlowDown"), 1);
    let out = r.run(&["snapshot", db.to_str().expect("utf8")], Some(&proxy));
    assert!(
        out.status.success(),
        "retryable faults end in a commit: {}",
        stderr(&out)
    );
    assert!(
        proxy.faults_fired() >= 5,
        "the faults fired: {}",
        proxy.faults_fired()
    );
    let out = r.run(&["check", "--read-data"], None);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let dest = r.path("restored.db");
    r.ok(&["restore", "latest", dest.to_str().expect("utf8")]);
    assert_eq!(count(&dest, "t"), 3000);
}

#[test]
fn reset_uploads_and_damaged_reads_never_commit_or_restore_wrong_bytes() {
    let r = S3Repo::new();
    let db = r.path("app.db");
    make_db(&db, 3000);
    let proxy = FaultProxy::start(&server().endpoint).expect("proxy");
    proxy.inject(
        Match::method("PUT").containing("/data/"),
        Fault::ResetRequestBody { after: 1000 },
        1,
    );
    let out = r.run(&["snapshot", db.to_str().expect("utf8")], Some(&proxy));
    assert!(
        out.status.success(),
        "a reset upload is retried: {}",
        stderr(&out)
    );
    proxy.clear();

    for fault in [
        Fault::TruncateBody { keep: 100 },
        Fault::FlipResponseByte { at: 5000 },
    ] {
        proxy.clear();
        proxy.inject_always(Match::method("GET").containing("/data/"), fault);
        let dest = r.path("wrong.db");
        let out = r.run(
            &["restore", "latest", dest.to_str().expect("utf8")],
            Some(&proxy),
        );
        assert!(
            !out.status.success(),
            "damaged reads fail the restore: {}",
            stderr(&out)
        );
        assert!(!dest.exists(), "no file is written from damaged data");
    }
    proxy.clear();
    let dest = r.path("right.db");
    let out = r.run(
        &["restore", "latest", dest.to_str().expect("utf8")],
        Some(&proxy),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(integrity(&dest), "ok");
    assert_eq!(count(&dest, "t"), 3000);
}

/// A full restore over S3 reads its packs ahead of the windows it fills,
/// 16 range GETs of up to 4 MiB at a time. When some of those GETs fail
/// (503, 500, a body cut short), the restore of a database of several
/// packs and windows still ends byte-identical to the snapshot; when they
/// keep failing, or come back altered, it fails with an error that names
/// the pack, and leaves no file, not even its temporary one.
#[test]
fn restore_over_s3_with_failing_range_gets_is_byte_identical_or_fails_clearly() {
    let r = S3Repo::new();
    let db = r.path("app.db");
    let db_s = db.to_str().expect("utf8");
    let w = wal_writer(&db);
    // About 40 MiB of random rows: three packs, three windows.
    insert_blobs(&w, 2400, 16 << 10);
    checkpointed_image(&w, &db);
    r.ok(&["snapshot", db_s]);
    // A second snapshot whose changed pages lie in a pack of their own,
    // read by every window beside the first snapshot's packs.
    for id in (1..2400).step_by(97) {
        update_blob(&w, id, 16 << 10);
    }
    let want = checkpointed_image(&w, &db);
    r.ok(&["snapshot", db_s]);

    let proxy = FaultProxy::start(&server().endpoint).expect("proxy");
    let ranged = || {
        Match::method("GET")
            .containing("/data/")
            .with_header("range")
    };
    proxy.inject(ranged(), Fault::status(503, "SlowDown"), 3);
    proxy.inject(ranged(), Fault::status(500, "InternalError"), 2);
    proxy.inject(ranged(), Fault::TruncateBody { keep: 1000 }, 2);
    let dest = r.path("restored.db");
    let out = r.run(
        &["restore", "latest", dest.to_str().expect("utf8")],
        Some(&proxy),
    );
    assert!(
        out.status.success(),
        "retried GETs end in a restore: {}",
        stderr(&out)
    );
    assert_eq!(proxy.faults_fired(), 7, "every injected fault fired");
    assert!(
        std::fs::read(&dest).expect("restored") == want,
        "the restored file is the snapshot's, byte for byte"
    );

    let leftovers = |name: &str| -> Vec<String> {
        std::fs::read_dir(r.path(""))
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(name))
            .collect()
    };
    for (fault, says) in [
        (Fault::status(503, "SlowDown"), "gave up"),
        (Fault::FlipResponseByte { at: 5000 }, "data/"),
    ] {
        proxy.clear();
        proxy.inject_always(ranged(), fault);
        let dest = r.path("failed.db");
        let out = r.run(
            &["restore", "latest", dest.to_str().expect("utf8")],
            Some(&proxy),
        );
        let err = stderr(&out);
        assert!(!out.status.success(), "failing GETs fail the restore");
        assert!(
            err.contains(says) && err.contains("data/"),
            "the error names the pack: {err}"
        );
        assert_eq!(
            leftovers("failed.db"),
            Vec::<String>::new(),
            "nothing is left: {err}"
        );
    }
}

/// Runs snapback against the test server with `url`, the server's variables
/// minus `remove`, plus `add`.
fn run_s3(
    url: &str,
    endpoint: &str,
    remove: &[&str],
    add: &[(&str, &str)],
    args: &[&str],
) -> Output {
    let s = server();
    let mut c = Command::new(bin());
    for (k, v) in &s.vars() {
        if !remove.contains(&k.as_str()) {
            c.env(k, v);
        }
    }
    for k in remove {
        c.env_remove(k);
    }
    c.envs(add.iter().copied())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env_remove("SNAPBACK_REPO")
        .args(["--repo", url, "--s3-endpoint", endpoint, "--s3-path-style"])
        .args(args);
    c.output().expect("run snapback")
}

/// No raw SDK dump (Debug forms of the error structs) in a message.
fn assert_clean(err: &str) {
    for dump in ["DispatchFailure {", "Some(", "ConnectorError {", "source: "] {
        assert!(!err.contains(dump), "raw SDK dump ({dump}): {err}");
    }
}

#[test]
fn s3_missing_bucket_missing_credentials_and_dead_endpoint_give_clean_errors() {
    let s = server();
    let tmp = tempfile::tempdir().expect("tmp");
    // A missing bucket: `init` would not help, so it is not suggested.
    let out = run_s3(
        "s3://no-such-bucket-e2e/p",
        &s.endpoint,
        &[],
        &[],
        &["snapshots"],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(!err.contains("Create one with `snapback init`"), "{err}");
    assert!(
        err.contains("no-such-bucket-e2e") && err.contains("create the bucket"),
        "{err}"
    );
    assert_clean(&err);

    // No credentials anywhere: said so, at once, not retried.
    let home = tmp.path().to_str().expect("utf8");
    let t = std::time::Instant::now();
    let url = format!("s3://{}/nocreds", s.bucket);
    let out = run_s3(
        &url,
        &s.endpoint,
        &[
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
        ],
        &[("HOME", home), ("AWS_EC2_METADATA_DISABLED", "true")],
        &["snapshots"],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("no AWS credentials found"), "{err}");
    assert!(
        !err.contains("retrying") && !err.contains("failed to reach"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "not retried: {:?}",
        t.elapsed()
    );

    // A dead endpoint: retried (it may come back), then one clean error.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let out = run_s3(&url, &endpoint, &[], &[], &["snapshots"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    let last = err
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect::<Vec<_>>();
    assert_eq!(last.len(), 1, "{err}");
    assert_clean(&err);
}

/// A `snapback mount` over S3 through a proxy, with systemd's notification
/// socket and watchdog; dropping it unmounts and ends the process.
struct NotifiedMount {
    child: std::process::Child,
    mp: std::path::PathBuf,
    sock: std::os::unix::net::UnixDatagram,
}

impl NotifiedMount {
    fn start(r: &S3Repo, proxy: &FaultProxy, watchdog: Duration, extra: &[&str]) -> NotifiedMount {
        let mp = r.path("mnt");
        std::fs::create_dir_all(&mp).expect("mkdir");
        let sock_path = r.path("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut args = vec!["-q", "mount"];
        args.extend_from_slice(extra);
        let mp_s = mp.to_string_lossy().into_owned();
        args.push(&mp_s);
        let child = r
            .cmd(&args, Some(proxy))
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mount");
        let mut m = NotifiedMount { child, mp, sock };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !m.recv().iter().any(|l| l.starts_with("READY=1")) {
            assert!(
                std::time::Instant::now() < deadline,
                "no READY=1 within 30 s"
            );
            if let Ok(Some(st)) = m.child.try_wait() {
                panic!("the mount exited ({st}) before it was ready");
            }
        }
        m
    }

    /// The notifications of the next 200 ms, one entry per line.
    fn recv(&mut self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_string)
                .collect(),
            Err(_) => vec![],
        }
    }
}

impl Drop for NotifiedMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z", "-q", "--"])
            .arg(&self.mp)
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watchdog_pings_and_listings_go_on_while_s3_is_frozen() {
    let r = S3Repo::new();
    let db = r.path("app.db");
    make_db(&db, 500);
    r.ok(&["-q", "snapshot", db.to_str().expect("utf8")]);
    let proxy = FaultProxy::start(&server().endpoint).expect("proxy");
    // A health read every second (WatchdogSec=3), a list refresh due at
    // every access after one second.
    let mut m = NotifiedMount::start(
        &r,
        &proxy,
        Duration::from_secs(3),
        &["--refresh-interval", "1"],
    );
    let ls = |m: &NotifiedMount| {
        let t = std::time::Instant::now();
        let n = std::fs::read_dir(&m.mp).expect("ls").count();
        (n, t.elapsed())
    };
    let (before, _) = ls(&m);
    // S3 freezes: every request is held for 25 s before it is answered.
    proxy.inject_always(Match::any(), Fault::Delay(Duration::from_secs(25)));
    let frozen = std::time::Instant::now();
    let mut pings = 0;
    let mut slowest = Duration::ZERO;
    while frozen.elapsed() < Duration::from_secs(8) {
        pings += m.recv().iter().filter(|l| *l == "WATCHDOG=1").count();
        let (n, took) = ls(&m);
        assert_eq!(n, before, "the previous list is served");
        slowest = slowest.max(took);
    }
    proxy.clear();
    assert!(
        slowest < Duration::from_secs(2),
        "ls answered while the refresh waits for S3; the slowest took {slowest:?}"
    );
    assert!(
        pings >= 4,
        "the mount is healthy while S3 is frozen: {pings} WATCHDOG=1 in 8 s (one a second expected)"
    );
    assert!(!proxy.seen().is_empty(), "the refresh did go to S3");
}

/// A read-only key (AccessDenied on every write): restore and check go on
/// without a lock, with one warning; a snapshot fails clearly.
#[test]
fn s3_read_only_key_restores_and_checks_without_a_lock() {
    let r = S3Repo::new();
    let db = r.path("app.db");
    make_db(&db, 1000);
    let db_s = db.to_str().expect("utf8");
    r.ok(&["snapshot", db_s]);
    let proxy = FaultProxy::start(&server().endpoint).expect("proxy");
    for m in ["PUT", "POST", "DELETE"] {
        proxy.inject_always(Match::method(m), Fault::status(403, "AccessDenied"));
    }
    let dest = r.path("restored.db");
    let out = r.run(
        &["restore", "latest", dest.to_str().expect("utf8")],
        Some(&proxy),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "restore with a read-only key: {err}");
    assert_eq!(
        err.matches("cannot be written").count(),
        1,
        "one warning: {err}"
    );
    assert!(err.contains("without a lock"), "{err}");
    assert_eq!(count(&dest, "t"), 1000);
    assert_eq!(integrity(&dest), "ok");
    let out = r.run(&["--json", "check"], Some(&proxy));
    assert!(
        out.status.success(),
        "check with a read-only key: {}",
        stderr(&out)
    );
    let rep: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(rep["lock"], "read_only", "{rep}");
    let out = r.run(&["check", "--no-lock"], Some(&proxy));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("cannot be written"),
        "{}",
        stderr(&out)
    );

    let out = r.run(&["snapshot", db_s], Some(&proxy));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot be written") && err.contains("nothing was committed"),
        "{err}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&r.ok(&["--json", "snapshots"])).expect("json");
    assert_eq!(
        list.as_array().expect("arr").len(),
        1,
        "no snapshot was added"
    );
}
