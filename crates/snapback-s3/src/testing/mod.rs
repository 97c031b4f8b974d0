//! Test helpers, behind the `fault-proxy` feature.

pub mod fault_proxy;
