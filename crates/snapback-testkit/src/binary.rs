//! Where the `snapback` binary and the workspace are.

use std::path::{Path, PathBuf};

/// The workspace root (where `scripts/` and `fixtures/` are).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("{} has no workspace root", env!("CARGO_MANIFEST_DIR")))
}

/// The `snapback` binary of this build, in this order:
/// 1. `SNAPBACK_BIN`, to test another build;
/// 2. `CARGO_BIN_EXE_snapback`, where cargo provides it;
/// 3. next to the test executable: cargo puts test executables in
///    `<target>/<profile>/deps/` and binaries one level up, for any target
///    directory (`CARGO_TARGET_DIR`, `--target-dir`), profile and target
///    triple.
///
/// Fails clearly when the binary is not built (build it first with
/// `cargo build --workspace --bins`; scripts/test.sh does).
pub fn bin() -> PathBuf {
    let p = locate(
        std::env::var_os("SNAPBACK_BIN").map(PathBuf::from),
        std::env::var_os("CARGO_BIN_EXE_snapback").map(PathBuf::from),
        std::env::current_exe().ok(),
    );
    assert!(
        p.is_file(),
        "the snapback binary is missing at {}: build it first with \
         `cargo build --workspace --bins` (scripts/test.sh does), or set SNAPBACK_BIN",
        p.display()
    );
    p
}

/// The choice [`bin`] makes, from its three inputs.
fn locate(
    explicit: Option<PathBuf>,
    from_cargo: Option<PathBuf>,
    test_exe: Option<PathBuf>,
) -> PathBuf {
    if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return p;
    }
    if let Some(p) = from_cargo.filter(|p| !p.as_os_str().is_empty()) {
        return p;
    }
    let exe = test_exe.unwrap_or_else(|| panic!("cannot tell where this test executable is"));
    let dir = exe
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent directory", exe.display()));
    // <profile>/deps/<test>; a test run from <profile>/ itself (examples,
    // benches moved by hand) has the binaries beside it.
    let profile = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    profile.join(format!("snapback{}", std::env::consts::EXE_SUFFIX))
}

/// The loadable SQLite extension of this build (`libsnapback_vfs.so`,
/// built with the workspace: `cargo build --workspace`), found as [`bin`]
/// finds the binary: `SNAPBACK_VFS_LIB`, else beside the test executable
/// (`<target>/<profile>/` or its `deps/`).
pub fn vfs_extension() -> PathBuf {
    let name = "libsnapback_vfs.so";
    let candidates: Vec<PathBuf> = match std::env::var_os("SNAPBACK_VFS_LIB") {
        Some(p) => vec![PathBuf::from(p)],
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .map(|deps| {
                let mut v = vec![];
                if let Some(profile) = deps.parent() {
                    v.push(profile.join(name));
                }
                v.push(deps.join(name));
                v
            })
            .unwrap_or_default(),
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the SQLite extension {name} is missing (looked at {candidates:?}): build it first with `cargo build --workspace` (scripts/test.sh does), or set SNAPBACK_VFS_LIB"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_is_found_beside_the_deps_dir_of_any_target_dir_and_profile() {
        for (exe, want) in [
            ("/t/debug/deps/e2e-0123", "/t/debug/snapback"),
            ("/x/y/release/deps/tests-9", "/x/y/release/snapback"),
            (
                "/t/x86_64-unknown-linux-gnu/debug/deps/mount-1",
                "/t/x86_64-unknown-linux-gnu/debug/snapback",
            ),
            ("/t/debug/examples-run", "/t/debug/snapback"),
        ] {
            assert_eq!(
                locate(None, None, Some(exe.into())),
                PathBuf::from(want),
                "{exe}"
            );
        }
    }

    #[test]
    fn snapback_bin_overrides_cargo_and_cargo_overrides_the_guess() {
        let exe = Some(PathBuf::from("/t/debug/deps/e2e-1"));
        assert_eq!(
            locate(
                Some("/a/snapback".into()),
                Some("/b/snapback".into()),
                exe.clone()
            ),
            PathBuf::from("/a/snapback")
        );
        assert_eq!(
            locate(Some("".into()), Some("/b/snapback".into()), exe.clone()),
            PathBuf::from("/b/snapback")
        );
        assert_eq!(locate(None, None, exe), PathBuf::from("/t/debug/snapback"));
    }
}
