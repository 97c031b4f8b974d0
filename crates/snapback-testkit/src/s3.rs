//! The local S3 server (s3s-fs on 127.0.0.1).
//!
//! If `SNAPBACK_TEST_S3_BUCKET` is set (after `eval "$(scripts/s3-server.sh
//! start)"`; scripts/test.sh does this), the server it names with
//! `AWS_ENDPOINT_URL` and the AWS keys is used. Otherwise the first test
//! that asks starts one with `scripts/s3-server.sh start --watch-pid <this
//! process>`, which stops with the test process. If neither works the test
//! fails; it never skips.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::workspace;

/// Where the server is and how to sign in.
#[derive(Debug, Clone)]
pub struct Server {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    pub region: String,
}

/// The variables that describe a server (what scripts/s3-server.sh prints).
pub const SERVER_VARS: [&str; 5] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "SNAPBACK_TEST_S3_BUCKET",
];

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The S3 server of this test process.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        if env("SNAPBACK_TEST_S3_BUCKET").is_some() {
            let get = |k: &str| {
                env(k)
                    .unwrap_or_else(|| panic!("{k} must be set along with SNAPBACK_TEST_S3_BUCKET"))
            };
            return Server {
                endpoint: get("AWS_ENDPOINT_URL"),
                access_key: get("AWS_ACCESS_KEY_ID"),
                secret_key: get("AWS_SECRET_ACCESS_KEY"),
                bucket: get("SNAPBACK_TEST_S3_BUCKET"),
                region: env("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
            };
        }
        start()
    })
}

fn start() -> Server {
    let script = workspace().join("scripts/s3-server.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["start", "--watch-pid", &std::process::id().to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cannot start the local S3 server: {} start failed ({}):\n{}\n{}",
        script.display(),
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let var = |name: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
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

impl Server {
    /// The environment that points `snapback` (or any AWS client) at this
    /// server: [`SERVER_VARS`], and no instance-metadata lookups.
    pub fn vars(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", &self.access_key),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_key),
            ("AWS_REGION", &self.region),
            ("AWS_ENDPOINT_URL", &self.endpoint),
            ("SNAPBACK_TEST_S3_BUCKET", &self.bucket),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .chain([("AWS_EC2_METADATA_DISABLED".into(), "true".into())])
        .collect()
    }

    /// An `s3://` repository URL under a prefix no other test uses.
    pub fn repo_url(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, unique_prefix(name))
    }
}

/// A prefix no other test (or test run) uses: `tests/NAME-PID-NANOS-N`.
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
