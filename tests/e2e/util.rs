//! The old home of the e2e helpers, kept so that tests written against it
//! still build: everything here is the test kit's (crates/snapback-testkit).
//! New tests use `snapback_testkit` directly.

#![allow(unused_imports)]

pub use snapback_testkit::{
    bin, flip_byte_in_largest_pack, hostname, init_encrypted, integrity, random_bytes, stderr,
    stdout, Env, CHEAP_KDF, ISOLATED_VARS, PASSWORD_VARS,
};
