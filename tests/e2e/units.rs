//! The shipped systemd units pass `systemd-analyze verify`, and the example
//! config file parses.

use std::path::Path;
use std::process::Command;

use snapback_testkit::{bin, stderr, Env};

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/systemd");
    let dir = tempfile::tempdir().expect("tmp");
    let mut units = vec![];
    for e in std::fs::read_dir(&src).expect("docs/systemd") {
        let p = e.expect("entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        if !(name.ends_with(".service") || name.ends_with(".timer")) {
            continue;
        }
        // Point the units at the binary under test.
        let text = std::fs::read_to_string(&p)
            .expect("read")
            .replace("/usr/local/bin/snapback", bin().to_str().expect("utf8"));
        let dest = dir.path().join(&name);
        std::fs::write(&dest, text).expect("write");
        units.push(dest);
    }
    assert!(
        units.len() >= 6,
        "snapshot, check and forget services and timers: {units:?}"
    );
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&units)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("systemd-analyze is installed by scripts/test.sh");
    let text = stderr(&out);
    // Complaints about units outside ours (the host's own) are not ours to fix.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("snapback")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {text}"
    );
}

#[test]
fn example_config_parses() {
    let env = Env::bare();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/snapback.toml.example");
    let out = Command::new(bin())
        .args([
            "--config",
            example.to_str().expect("utf8"),
            "--repo",
            env.repo().to_str().expect("utf8"),
            "snapshots",
        ])
        .output()
        .expect("run");
    let err = stderr(&out);
    assert!(
        !err.contains("invalid config"),
        "the example config parses: {err}"
    );
    assert!(
        err.contains("repository"),
        "it fails only because the repository does not exist: {err}"
    );
}
