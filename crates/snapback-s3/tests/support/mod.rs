//! Test support: a real S3 server (s3s-fs) on 127.0.0.1, stores with unique
//! prefixes, and the fault-injecting proxy.
//!
//! The server is the test kit's (`snapback_testkit::s3`): the one the
//! environment names, or one started for this test process.

#![allow(dead_code)]

#[path = "../../src/testing/fault_proxy.rs"]
pub mod fault_proxy;

use std::time::Duration;

use snapback_s3::{S3Config, S3Credentials, S3Store, Timeouts};
use snapback_storage::RetryPolicy;

pub use snapback_testkit::pattern;
pub use snapback_testkit::s3::{server, unique_prefix};

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
