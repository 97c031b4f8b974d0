//! All integration tests in one binary (see STYLE.md); helpers in util.rs
//! and lab.rs.
//! The end-to-end tests drive the `snapback` binary of this build, found by
//! the test kit (crates/snapback-testkit): build it first
//! (`cargo build --workspace --bins`; scripts/test.sh does).

mod audit;
mod bad_input;
mod diff;
mod diff_cli;
mod diff_pages;
mod diff_roundtrip;
mod e2e;
mod every_path;
mod forensics;
mod json_shapes;
mod lab;
mod repair;
mod util;
mod values;
mod wedge;
