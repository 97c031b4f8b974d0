//! Embeds the commit the binary is built from, for `snapback --version`:
//! SNAPBACK_BUILD_COMMIT if set (a packager building from a tarball),
//! else `git rev-parse --short HEAD`, else "unknown". A build without git,
//! or outside a checkout, never fails because of it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Cargo reruns this script when one of these changes: HEAD itself (a
/// checkout), the branch it points to (a commit), and packed-refs. Only
/// existing files are named: a missing one would rerun it on every build.
fn watch_git() {
    let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) else {
        return;
    };
    let git_dir = PathBuf::from(git_dir);
    let common = git(&["rev-parse", "--git-common-dir"])
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { git_dir.join(p) })
        .unwrap_or_else(|| git_dir.clone());
    let mut watched: Vec<PathBuf> = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git_dir.join(&r));
        watched.push(common.join(&r));
    }
    for p in watched.iter().filter(|p| Path::new(p).is_file()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SNAPBACK_BUILD_COMMIT");
    let commit = match std::env::var("SNAPBACK_BUILD_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            watch_git();
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    // Only what a commit id can contain reaches the binary.
    let commit: String = commit
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(64)
        .collect();
    let commit = if commit.is_empty() {
        "unknown".to_string()
    } else {
        commit
    };
    println!("cargo:rustc-env=SNAPBACK_COMMIT={commit}");
}
