//! The heartbeat of `snapshot`: an in-process HTTP call (no curl, so the
//! URL's token is on no command line), bounded in time, with its own exit
//! code when it fails after the snapshot is committed.

use std::time::{Duration, Instant};

use snapback_testkit::heartbeat::{dead_url, Endpoint, Mode};

use snapback_testkit::{stderr, Env};

/// `snapshot F --heartbeat-url URL`.
fn snapshot_pinging(env: &Env, f: &std::path::Path, url: &str) -> std::process::Output {
    env.run(&[
        "snapshot",
        f.to_str().expect("utf8"),
        "--heartbeat-url",
        url,
    ])
}

fn committed(env: &Env) -> usize {
    env.snapshots_json().len()
}

#[test]
fn heartbeat_is_sent_in_process_without_curl_on_path() {
    let env = Env::new();
    let hb = Endpoint::start(Mode::Answer(200));
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    let url = hb.url("/ping/tok-123?rid=7");
    // No PATH at all: a shell-out to curl could not run.
    let out = env
        .cmd(&[
            "snapshot",
            f.to_str().expect("utf8"),
            "--heartbeat-url",
            &url,
        ])
        .env("PATH", "")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let seen = hb.requests();
    assert_eq!(seen.len(), 1, "one call");
    assert!(
        seen[0].starts_with("GET /ping/tok-123?rid=7 HTTP/1.1\r\n"),
        "{:?}",
        seen[0]
    );
    assert!(seen[0].contains("\r\nHost: 127.0.0.1:"), "{:?}", seen[0]);
}

#[test]
fn failed_heartbeat_after_commit_exits_5_not_1() {
    let env = Env::new();
    let hb = Endpoint::start(Mode::Answer(500));
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    let url = hb.url("/ping/secret-token");
    let out = snapshot_pinging(&env, &f, &url);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("snapshot is committed") && err.contains("HTTP 500"),
        "{err}"
    );
    assert!(
        !err.contains("secret-token"),
        "the token is not printed: {err}"
    );
    assert_eq!(committed(&env), 1, "the snapshot is committed");
    assert_eq!(hb.hits(), 3, "a 5xx is retried, 3 calls in all");

    // A refused connection too: exit 5, not 1.
    let url = dead_url("/ping");
    let out = snapshot_pinging(&env, &f, &url);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(committed(&env), 2);
}

#[test]
fn hanging_heartbeat_server_is_abandoned_within_seconds() {
    let env = Env::new();
    let hb = Endpoint::start(Mode::Hang);
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    for url in [
        hb.url("/ping"),
        hb.base().replace("http://", "https://") + "/ping",
    ] {
        let t = Instant::now();
        let out = snapshot_pinging(&env, &f, &url);
        let took = t.elapsed();
        assert_eq!(out.status.code(), Some(5), "{url}: {}", stderr(&out));
        assert!(
            took < Duration::from_secs(8),
            "{url}: held the command for {took:?}"
        );
        assert!(
            stderr(&out).contains("no answer within 5 s"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(committed(&env), 2);
    assert!(hb.hits() > 0, "the server was reached");
}

#[test]
fn https_heartbeat_to_a_plain_http_server_fails_cleanly() {
    let env = Env::new();
    let hb = Endpoint::start(Mode::Answer(200));
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    let url = hb.base().replace("http://", "https://") + "/ping";
    let out = snapshot_pinging(&env, &f, &url);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert_eq!(err.lines().count(), 1, "one clean line: {err}");
    assert_eq!(committed(&env), 1);
}

#[test]
fn heartbeat_url_starting_with_dash_is_refused_before_any_snapshot() {
    let env = Env::new();
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    for url in ["-K/etc/passwd", "--config=/tmp/x", "ftp://h/p"] {
        let out = env.run(&[
            "snapshot",
            f.to_str().expect("utf8"),
            &format!("--heartbeat-url={url}"),
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(err.contains("--heartbeat-url"), "{err}");
    }
    assert!(stderr(&env.run(&["snapshot", "/x", "--heartbeat-url=-K"])).contains("starts with '-'"));
    assert_eq!(committed(&env), 0, "nothing was snapshotted");
}

#[test]
fn bad_heartbeat_url_in_config_does_not_stop_the_snapshot() {
    let env = Env::new();
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    let cfg = env.path("snapback.toml");
    std::fs::write(&cfg, "heartbeat_url = \"-o /tmp/evil\"\n").expect("write");
    let out = env.run(&[
        "--config",
        cfg.to_str().expect("utf8"),
        "snapshot",
        f.to_str().expect("utf8"),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("heartbeat_url in the config"), "{err}");
    assert_eq!(committed(&env), 1, "the snapshot was taken");
}
