//! The S3 store against a real S3 server (s3s-fs) on 127.0.0.1, directly and
//! through the fault-injecting proxy.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use snapback_s3::{S3Config, S3Store};
use snapback_storage::{conformance, ErrorKind, PutOutcome, RequestStats, Store};
use support::fault_proxy::{Fault, FaultProxy, Match};
use support::*;

#[test]
fn s3_store_passes_conformance() {
    let s = store("conformance");
    conformance::run_all(&s);
}

#[test]
fn request_counters_count_each_request_and_byte() {
    let s = store("counters");
    assert_eq!(s.request_stats(), RequestStats::default());
    let data = pattern(1000, 1);
    assert_eq!(
        s.put_if_absent("a/b", &data).expect("put"),
        PutOutcome::Created
    );
    assert_eq!(s.get("a/b").expect("get"), data);
    assert_eq!(s.get_range("a/b", 100, 10).expect("range"), &data[100..110]);
    assert_eq!(s.stat("a/b").expect("stat"), Some(1000));
    assert_eq!(s.list("a/").expect("list").len(), 1);
    s.delete("a/b").expect("delete");
    assert_eq!(
        s.request_stats(),
        RequestStats {
            puts: 1,
            gets: 2,
            heads: 1,
            lists: 1,
            deletes: 1,
            bytes_sent: 1000,
            bytes_received: 1010,
        }
    );
}

fn multipart_config(name: &str) -> S3Config {
    S3Config {
        multipart_threshold: 8 << 20,
        part_size: 5 << 20,
        ..config(name)
    }
}

#[test]
fn multipart_upload_round_trips() {
    let s = S3Store::open(multipart_config("multipart")).expect("open");
    let data = pattern(23 << 20, 7); // 5 parts: 4 × 5 MiB + 3 MiB
    assert_eq!(
        s.put_if_absent("pack/big", &data).expect("multipart put"),
        PutOutcome::Created
    );
    let st = s.request_stats();
    // HEAD before, CreateMultipartUpload, 5 × UploadPart, Complete, HEAD after.
    assert_eq!((st.puts, st.heads), (7, 2), "{st:?}");
    assert_eq!(st.bytes_sent, data.len() as u64);
    assert_eq!(s.stat("pack/big").expect("stat"), Some(data.len() as u64));
    assert!(s.get("pack/big").expect("get") == data, "whole object");
    let off = (5 << 20) - 100; // across the first part boundary
    assert!(s.get_range("pack/big", off as u64, 300).expect("range") == data[off..off + 300]);
    // A second multipart put of the same key is refused after one HEAD,
    // without uploading anything.
    let before = s.request_stats();
    assert_eq!(
        s.put_if_absent("pack/big", &pattern(23 << 20, 8))
            .expect("second put"),
        PutOutcome::AlreadyExists
    );
    let after = s.request_stats();
    assert_eq!(
        (after.puts, after.heads, after.bytes_sent),
        (before.puts, before.heads + 1, before.bytes_sent)
    );
    assert!(s.get("pack/big").expect("get") == data, "never replaced");
}

#[test]
fn many_threads_share_one_store() {
    let s = Arc::new(store("threads"));
    let handles: Vec<_> = (0..8u32)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 0..10u32 {
                    let key = format!("t{t}/o{i}");
                    let data = pattern(10_000 + i as usize, t * 100 + i);
                    assert_eq!(
                        s.put_if_absent(&key, &data).expect("put"),
                        PutOutcome::Created
                    );
                    assert_eq!(s.get(&key).expect("get"), data);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker thread");
    }
    assert_eq!(s.list("").expect("list").len(), 80);
    let st = s.request_stats();
    assert_eq!((st.puts, st.gets, st.lists), (80, 80, 1));
}

// ---- faults, through the proxy ----

/// A store that talks to the server through a fresh fault proxy.
fn proxied(name: &str, tweak: impl FnOnce(&mut S3Config)) -> (FaultProxy, S3Store) {
    let proxy = FaultProxy::start(&server().endpoint).expect("start fault proxy");
    let mut cfg = config(name);
    cfg.endpoint = Some(proxy.endpoint());
    tweak(&mut cfg);
    let store = S3Store::open(cfg).expect("open");
    (proxy, store)
}

fn short_attempts(cfg: &mut S3Config) {
    cfg.timeouts.attempt = Duration::from_secs(1);
    cfg.timeouts.attempt_per_mib = Duration::ZERO;
}

#[test]
fn get_after_500s_succeeds_with_the_right_bytes() {
    let (proxy, s) = proxied("get500", |_| {});
    let data = pattern(50_000, 2);
    s.put_if_absent("k", &data).expect("put");
    proxy.inject(Match::method("GET"), Fault::status(500, "InternalError"), 2);
    assert_eq!(s.get("k").expect("get after two 500s"), data);
    assert_eq!(proxy.count("GET"), 3);
    assert_eq!(s.request_stats().gets, 3);
}

#[test]
fn put_after_503_slowdown_succeeds() {
    let (proxy, s) = proxied("put503", |_| {});
    proxy.inject(Match::method("PUT"), Fault::status(503, "SlowDown"), 2);
    let data = pattern(20_000, 3);
    assert_eq!(
        s.put_if_absent("k", &data).expect("put"),
        PutOutcome::Created
    );
    assert_eq!(proxy.count("PUT"), 3);
    assert_eq!(s.get("k").expect("get"), data);
}

#[test]
fn persistent_503_ends_in_a_transient_error_that_says_so() {
    let (proxy, s) = proxied("always503", |_| {});
    s.put_if_absent("k", b"x").expect("put");
    proxy.inject_always(
        Match::method("GET"),
        Fault::status(503, "ServiceUnavailable"),
    );
    let e = s.get("k").expect_err("never succeeds");
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("503") && msg.contains("gave up after 5 attempts"),
        "{msg}"
    );
    assert_eq!(proxy.count("GET"), 5);
}

#[test]
fn forbidden_is_permission_denied_and_not_retried() {
    let (proxy, s) = proxied("forbidden", |_| {});
    proxy.inject_always(Match::method("GET"), Fault::status(403, "AccessDenied"));
    let e = s.get("k").expect_err("forbidden");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("credentials"), "guidance: {e}");
    assert_eq!(proxy.count("GET"), 1);
}

#[test]
fn slow_response_within_the_attempt_timeout_succeeds() {
    let (proxy, s) = proxied("delay-ok", |_| {});
    s.put_if_absent("k", b"hello").expect("put");
    proxy.inject(
        Match::method("GET"),
        Fault::Delay(Duration::from_millis(300)),
        1,
    );
    assert_eq!(s.get("k").expect("get"), b"hello");
    assert_eq!(proxy.count("GET"), 1);
}

#[test]
fn response_slower_than_the_attempt_timeout_is_retried() {
    let (proxy, s) = proxied("delay-retry", short_attempts);
    s.put_if_absent("k", b"hello").expect("put");
    proxy.inject(
        Match::method("GET"),
        Fault::Delay(Duration::from_secs(5)),
        1,
    );
    let t = Instant::now();
    assert_eq!(s.get("k").expect("get"), b"hello");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the stalled attempt was cut off: {:?}",
        t.elapsed()
    );
    assert_eq!(proxy.count("GET"), 2);
}

#[test]
fn trickling_server_cannot_stall_a_read() {
    let (proxy, s) = proxied("trickle", |c| {
        short_attempts(c);
        c.retry.attempts = 3;
    });
    let data = pattern(64 << 10, 4);
    s.put_if_absent("k", &data).expect("put");
    // 1 KiB every 100 ms: 6.4 s for the body, far above the 1 s attempt limit.
    let trickle = Fault::Trickle {
        chunk: 1024,
        every: Duration::from_millis(100),
    };
    proxy.inject(Match::method("GET"), trickle.clone(), 1);
    assert_eq!(s.get("k").expect("get after one trickle"), data);
    proxy.inject_always(Match::method("GET"), trickle);
    let t = Instant::now();
    let e = s.get("k").expect_err("always trickling");
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("did not complete"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
}

#[test]
fn connection_reset_during_put_body_is_retried() {
    let (proxy, s) = proxied("reset", |_| {});
    let data = pattern(512 << 10, 5);
    proxy.inject(
        Match::method("PUT"),
        Fault::ResetRequestBody { after: 64 << 10 },
        1,
    );
    assert_eq!(
        s.put_if_absent("k", &data).expect("put"),
        PutOutcome::Created
    );
    assert_eq!(proxy.count("PUT"), 2);
    assert_eq!(s.get("k").expect("get"), data);
}

#[test]
fn truncated_body_is_retried_and_never_returned() {
    let (proxy, s) = proxied("truncate", |c| c.retry.attempts = 3);
    let data = pattern(100_000, 6);
    s.put_if_absent("k", &data).expect("put");
    proxy.inject(
        Match::method("GET"),
        Fault::TruncateBody { keep: 50_000 },
        1,
    );
    assert_eq!(s.get("k").expect("get"), data);
    assert_eq!(proxy.count("GET"), 2);
    proxy.inject_always(Match::method("GET"), Fault::TruncateBody { keep: 50_000 });
    let e = s.get("k").expect_err("always truncated");
    assert!(e.kind().is_retryable(), "{e}");
    let e = s
        .get_range("k", 1000, 90_000)
        .expect_err("always truncated");
    assert!(e.kind().is_retryable(), "{e}");
}

#[test]
fn short_but_well_formed_range_body_is_corrupt() {
    let (proxy, s) = proxied("shorten", |c| c.retry.attempts = 3);
    let data = pattern(100_000, 7);
    s.put_if_absent("k", &data).expect("put");
    proxy.inject(Match::method("GET"), Fault::ShortenBody { keep: 900 }, 1);
    assert_eq!(
        s.get_range("k", 5000, 1000).expect("range"),
        &data[5000..6000]
    );
    proxy.inject_always(Match::method("GET"), Fault::ShortenBody { keep: 900 });
    let e = s.get_range("k", 5000, 1000).expect_err("always short");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("received 900"), "{e}");
    assert_eq!(proxy.count("GET"), 1 + 1 + 3);
}

#[test]
fn altered_body_fails_the_sha256_check() {
    let (proxy, s) = proxied("flip", |c| c.retry.attempts = 3);
    let data = pattern(30_000, 8);
    s.put_if_absent("k", &data).expect("put");
    proxy.inject(
        Match::method("GET"),
        Fault::FlipResponseByte { at: 1234 },
        1,
    );
    assert_eq!(s.get("k").expect("get"), data);
    assert_eq!(proxy.count("GET"), 2, "the altered body was refused");
    proxy.inject_always(Match::method("GET"), Fault::FlipResponseByte { at: 1234 });
    let e = s.get("k").expect_err("always altered");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("SHA-256"), "{e}");
}

#[test]
fn put_whose_response_was_lost_is_recognized_as_ours() {
    let (proxy, s) = proxied("dropped", |_| {});
    let data = pattern(40_000, 9);
    proxy.inject(Match::method("PUT"), Fault::DropResponse, 1);
    assert_eq!(
        s.put_if_absent("k", &data).expect("put"),
        PutOutcome::Created,
        "the retry finds the object the first attempt stored, with our SHA-256"
    );
    assert_eq!(proxy.count("PUT"), 2);
    assert_eq!(s.get("k").expect("get"), data);
    // Someone else's object under the key stays AlreadyExists.
    proxy.inject(Match::method("PUT"), Fault::DropResponse, 1);
    assert_eq!(
        s.put_if_absent("k", b"other").expect("put"),
        PutOutcome::AlreadyExists
    );
    assert_eq!(s.get("k").expect("get"), data);
}

#[test]
fn lying_put_is_detectable_by_stat() {
    let (proxy, s) = proxied("lie", |_| {});
    proxy.inject(Match::method("PUT"), Fault::LieOk, 1);
    // Without checksum confirmation the store cannot tell...
    assert_eq!(
        s.put_if_absent("k", b"data").expect("put"),
        PutOutcome::Created
    );
    // ...but the object is not there.
    assert_eq!(s.stat("k").expect("stat"), None);
    assert_eq!(proxy.count("PUT"), 1);
}

#[test]
fn lying_put_is_caught_when_checksum_echo_is_required() {
    let (proxy, s) = proxied("lie-echo", |c| c.require_checksum_echo = true);
    proxy.inject(Match::method("PUT"), Fault::LieOk, 1);
    assert_eq!(
        s.put_if_absent("k", b"data").expect("put"),
        PutOutcome::Created
    );
    assert_eq!(proxy.count("PUT"), 2, "the unconfirmed PUT was retried");
    assert_eq!(s.stat("k").expect("stat"), Some(4));
    proxy.inject_always(Match::method("PUT"), Fault::LieOk);
    let e = s.put_if_absent("k2", b"data").expect_err("never confirmed");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert_eq!(s.stat("k2").expect("stat"), None);
}

#[test]
fn store_without_conditional_writes_falls_back_to_head_then_put() {
    let (proxy, s) = proxied("no-cond", |_| {});
    proxy.inject_always(
        Match::method("PUT").with_header("if-none-match"),
        Fault::status(501, "NotImplemented"),
    );
    assert_eq!(
        s.put_if_absent("a", b"one").expect("put"),
        PutOutcome::Created
    );
    assert_eq!(
        s.put_if_absent("a", b"two").expect("put"),
        PutOutcome::AlreadyExists
    );
    assert_eq!(s.get("a").expect("get"), b"one");
    assert_eq!(
        proxy.faults_fired(),
        1,
        "one 501, then no more conditional PUTs"
    );
    assert_eq!(proxy.count("HEAD"), 2);
}

#[test]
fn multipart_part_failures_are_retried() {
    let (proxy, s) = proxied("mp-retry", |c| {
        c.multipart_threshold = 8 << 20;
        c.part_size = 5 << 20;
    });
    let data = pattern(12 << 20, 10);
    proxy.inject(
        Match::method("PUT").containing("partNumber="),
        Fault::status(500, "InternalError"),
        2,
    );
    proxy.inject(
        Match::method("PUT").containing("partNumber="),
        Fault::ResetRequestBody { after: 1 << 20 },
        1,
    );
    assert_eq!(
        s.put_if_absent("big", &data).expect("put"),
        PutOutcome::Created
    );
    assert!(s.get("big").expect("get") == data);
    let parts = proxy
        .seen()
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains("partNumber="))
        .count();
    assert_eq!(parts, 3 + 3, "3 parts, 3 failed attempts");
}

#[test]
fn failed_multipart_upload_is_aborted() {
    let (proxy, s) = proxied("mp-abort", |c| {
        c.multipart_threshold = 8 << 20;
        c.part_size = 5 << 20;
        c.retry.attempts = 2;
    });
    proxy.inject_always(
        Match::method("PUT").containing("partNumber=2"),
        Fault::status(500, "InternalError"),
    );
    let e = s
        .put_if_absent("big", &pattern(12 << 20, 11))
        .expect_err("part 2 never goes through");
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(
        proxy
            .seen()
            .iter()
            .any(|r| r.method == "DELETE" && r.target.contains("uploadId=")),
        "AbortMultipartUpload was sent: {:?}",
        proxy.seen()
    );
    assert_eq!(s.stat("big").expect("stat"), None);
}

#[test]
fn multipart_complete_whose_response_was_lost_succeeds() {
    let (proxy, s) = proxied("mp-drop", |c| {
        c.multipart_threshold = 8 << 20;
        c.part_size = 5 << 20;
    });
    let data = pattern(11 << 20, 12);
    proxy.inject(
        Match::method("POST").containing("uploadId="),
        Fault::DropResponse,
        1,
    );
    assert_eq!(
        s.put_if_absent("big", &data).expect("put"),
        PutOutcome::Created
    );
    assert!(s.get("big").expect("get") == data);
}

#[test]
fn unreachable_server_is_a_transient_error_within_the_time_limit() {
    // A port with nothing listening: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut cfg = config("unreachable");
    cfg.endpoint = Some(format!("http://127.0.0.1:{port}"));
    cfg.retry.attempts = 3;
    let s = S3Store::open(cfg).expect("open");
    let t = Instant::now();
    let e = s.get("k").expect_err("nothing listens");
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("gave up after 3 attempts"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn large_bodies_get_time_in_proportion_to_their_size() {
    let (proxy, s) = proxied("scaled-timeout", |c| {
        c.timeouts.attempt = Duration::from_secs(1);
        c.timeouts.attempt_per_mib = Duration::from_secs(3);
    });
    let data = pattern(1 << 20, 13);
    s.put_if_absent("k", &data).expect("put");
    // 16 × 64 KiB, one every 100 ms: 1.6 s, above the 1 s base limit but
    // within 1 s + 3 s per MiB.
    proxy.inject(
        Match::method("GET"),
        Fault::Trickle {
            chunk: 64 << 10,
            every: Duration::from_millis(100),
        },
        2,
    );
    assert_eq!(s.get("k").expect("slow whole get"), data);
    assert_eq!(s.get_range("k", 0, 1 << 20).expect("slow range get"), data);
    assert_eq!(proxy.count("GET"), 2, "neither read was cut off");
}

#[test]
fn missing_bucket_is_reported_as_such() {
    let mut cfg = config("nobucket");
    cfg.bucket = "no-such-bucket-here".into();
    let s = S3Store::open(cfg).expect("open");
    let e = s.check_bucket().expect_err("no bucket");
    assert!(e.to_string().contains("does not exist"), "{e}");
    // s3s-fs answers a GET in a missing bucket with NoSuchKey (AWS says
    // NoSuchBucket) and even stores a PUT there, so only HEAD bucket can
    // be checked against it.
    store("bucket-ok")
        .check_bucket()
        .expect("the test bucket exists");
}

#[test]
fn without_conditional_writes_a_lost_put_response_is_still_recognized() {
    let (proxy, s) = proxied("no-cond-drop", |_| {});
    proxy.inject_always(
        Match::method("PUT").with_header("if-none-match"),
        Fault::status(501, "NotImplemented"),
    );
    assert_eq!(
        s.put_if_absent("a", b"one").expect("put"),
        PutOutcome::Created
    );
    proxy.inject(Match::method("PUT"), Fault::DropResponse, 1);
    let data = pattern(10_000, 14);
    assert_eq!(
        s.put_if_absent("b", &data).expect("put"),
        PutOutcome::Created,
        "HEAD on the retry finds our SHA-256"
    );
    assert_eq!(s.get("b").expect("get"), data);
}

#[test]
fn multipart_completion_without_conditional_support_completes_plainly() {
    let (proxy, s) = proxied("mp-no-cond", |c| {
        c.multipart_threshold = 8 << 20;
        c.part_size = 5 << 20;
    });
    proxy.inject_always(
        Match::method("POST")
            .containing("uploadId=")
            .with_header("if-none-match"),
        Fault::status(501, "NotImplemented"),
    );
    let data = pattern(9 << 20, 15);
    assert_eq!(
        s.put_if_absent("big", &data).expect("put"),
        PutOutcome::Created
    );
    assert_eq!(proxy.faults_fired(), 1);
    assert!(s.get("big").expect("get") == data);
}

// ---- the proxy as a request counter (the benchmarks use it) ----

/// A log sink the test can read back.
#[derive(Clone, Default)]
struct SharedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn proxy_counts_requests_by_kind_and_logs_each_answer() {
    let (proxy, s) = proxied("counting", |_| {});
    let log = SharedLog::default();
    proxy.log_to(Box::new(log.clone()));
    let data = pattern(30_000, 7);
    s.put_if_absent("a", &data).expect("put a");
    s.put_if_absent("b", b"bee").expect("put b");
    assert_eq!(s.get("a").expect("get"), data);
    assert_eq!(s.stat("b").expect("stat"), Some(3));
    assert_eq!(s.list("").expect("list").len(), 2);
    s.delete("b").expect("delete");

    let st = s.request_stats();
    let counts = proxy.counts();
    let n = |k: &str| counts.get(k).copied().unwrap_or(0) as u64;
    assert_eq!(
        (n("PUT"), n("GET"), n("HEAD"), n("LIST"), n("DELETE")),
        (st.puts, st.gets, st.heads, st.lists, st.deletes),
        "proxy {counts:?} against the store's own {st:?}"
    );
    assert!(
        n("PUT") >= 2 && n("LIST") >= 1 && n("DELETE") >= 1,
        "{counts:?}"
    );

    let text = String::from_utf8(log.0.lock().expect("log").clone()).expect("utf-8 log");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        proxy.seen().len(),
        "one line per answered request:\n{text}"
    );
    let put_a = lines
        .iter()
        .find(|l| l.contains("\"kind\":\"PUT\"") && l.contains("/a?"))
        .unwrap_or_else(|| panic!("no PUT of a in\n{text}"));
    assert!(put_a.contains("\"status\":200"), "{put_a}");
    assert!(
        put_a.contains(&format!("\"sent\":{}", data.len())),
        "{put_a}"
    );
    let get_a = lines
        .iter()
        .find(|l| l.contains("\"kind\":\"GET\""))
        .unwrap_or_else(|| panic!("no GET in\n{text}"));
    assert!(
        get_a.contains(&format!("\"received\":{}", data.len())),
        "{get_a}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("{\"t\":") && l.ends_with('}')),
        "{text}"
    );
}
