//! All integration tests in one binary (see STYLE.md); helpers in util.rs.

mod diff;
mod util;
