//! The heartbeat of `snapshot`: an in-process HTTP call (no curl, so the
//! URL's token is on no command line), bounded in time, with its own exit
//! code when it fails after the snapshot is committed.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{stderr, Env};

/// What the local server does with each request.
#[derive(Clone, Copy)]
enum Mode {
    /// Answers with this status.
    Answer(u16),
    /// Accepts the connection, reads, and never answers.
    Hang,
}

/// An HTTP server on 127.0.0.1; returns its base URL and the request heads
/// it received.
fn server(mode: Mode) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(vec![]));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        let mut held = vec![];
        for s in l.incoming().take(20) {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            s2.lock()
                .expect("lock")
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            match mode {
                Mode::Answer(code) => {
                    let _ = s.write_all(
                        format!(
                            "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK"
                        )
                        .as_bytes(),
                    );
                }
                // Kept open: the client must give up by itself.
                Mode::Hang => held.push(s),
            }
        }
    });
    (base, seen)
}

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
    let (base, seen) = server(Mode::Answer(200));
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    let url = format!("{base}/ping/tok-123?rid=7");
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
    let seen = seen.lock().expect("lock");
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
    let (base, seen) = server(Mode::Answer(500));
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    let url = format!("{base}/ping/secret-token");
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
    assert_eq!(
        seen.lock().expect("lock").len(),
        3,
        "a 5xx is retried, 3 calls in all"
    );

    // A refused connection too: exit 5, not 1.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/ping", dead.local_addr().expect("addr"));
    drop(dead);
    let out = snapshot_pinging(&env, &f, &url);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(committed(&env), 2);
}

#[test]
fn hanging_heartbeat_server_is_abandoned_within_seconds() {
    let env = Env::new();
    let (base, seen) = server(Mode::Hang);
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    for url in [
        format!("{base}/ping"),
        base.replace("http://", "https://") + "/ping",
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
    assert!(
        !seen.lock().expect("lock").is_empty(),
        "the server was reached"
    );
}

#[test]
fn https_heartbeat_to_a_plain_http_server_fails_cleanly() {
    let env = Env::new();
    let (base, _seen) = server(Mode::Answer(200));
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    let url = base.replace("http://", "https://") + "/ping";
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
