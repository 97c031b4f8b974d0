//! Test support: a real S3 server (s3s-fs) on 127.0.0.1, stores with unique
//! prefixes, and the fault-injecting proxy.
//!
//! The server: if `AWS_ENDPOINT_URL`, `SNAPBACK_TEST_S3_BUCKET` and the AWS
//! keys are set (after `eval "$(scripts/s3-server.sh start)"`), those are
//! used. Otherwise the tests start a server themselves with
//! `scripts/s3-server.sh start --watch-pid <this process>`, which ends with
//! the test process. If neither works the tests fail; they never skip.

#![allow(dead_code)]

#[path = "../../src/testing/fault_proxy.rs"]
pub mod fault_proxy;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use snapback_s3::{S3Config, S3Credentials, S3Store, Timeouts};
use snapback_storage::RetryPolicy;

#[derive(Debug, Clone)]
pub struct Server {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    pub region: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The S3 server of this test process.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        if let (Some(endpoint), Some(bucket), Some(ak), Some(sk)) = (
            env("AWS_ENDPOINT_URL"),
            env("SNAPBACK_TEST_S3_BUCKET"),
            env("AWS_ACCESS_KEY_ID"),
            env("AWS_SECRET_ACCESS_KEY"),
        ) {
            return Server {
                endpoint,
                access_key: ak,
                secret_key: sk,
                bucket,
                region: env("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
            };
        }
        start_server()
    })
}

fn start_server() -> Server {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3-server.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["start", "--watch-pid", &std::process::id().to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} start failed ({}):\n{}\n{}",
        script.display(),
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let var = |name: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("s3-server.sh printed no {name}:\n{stdout}"))
    };
    Server {
        endpoint: var("AWS_ENDPOINT_URL"),
        access_key: var("AWS_ACCESS_KEY_ID"),
        secret_key: var("AWS_SECRET_ACCESS_KEY"),
        bucket: var("SNAPBACK_TEST_S3_BUCKET"),
        region: var("AWS_REGION"),
    }
}

/// A prefix no other test (or test run) uses.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "tests/{name}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Test settings: quick retries, short timeouts.
pub fn config(name: &str) -> S3Config {
    let s = server();
    S3Config {
        bucket: s.bucket.clone(),
        prefix: unique_prefix(name),
        endpoint: Some(s.endpoint.clone()),
        path_style: true,
        region: Some(s.region.clone()),
        credentials: Some(S3Credentials {
            access_key_id: s.access_key.clone(),
            secret_access_key: s.secret_key.clone(),
            session_token: None,
        }),
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(10),
            attempt: Duration::from_secs(15),
            attempt_per_mib: Duration::from_secs(1),
            operation: Duration::from_secs(60),
        },
        retry: RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        ..Default::default()
    }
}

pub fn store(name: &str) -> S3Store {
    S3Store::open(config(name)).expect("open S3 store")
}

/// Deterministic bytes that differ at every offset and between seeds.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}
