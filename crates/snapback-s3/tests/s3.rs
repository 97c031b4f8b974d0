//! The S3 store against a real S3 server (s3s-fs) on 127.0.0.1.

mod support;

use snapback_storage::{conformance, ErrorKind, PutOutcome, Store};
use support::*;

#[test]
fn s3_store_passes_conformance() {
    let s = store("conformance");
    conformance::run_all(&s);
}
