//! The conventions operators expect of a command-line tool: completions, a
//! man page, a `--version` that says what was built, where the config is
//! found, `--password-command`, SNAPBACK_LOG / RUST_LOG, NO_COLOR.

use std::process::Command;

use crate::util::{bin, stderr, stdout};

/// The binary in an empty directory, with none of the caller's config,
/// passphrase or log variables.
fn bare(dir: &std::path::Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(dir)
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .env("HOME", dir.join("home"));
    for k in crate::util::ISOLATED_VARS {
        c.env_remove(k);
    }
    c
}

#[test]
fn completions_scripts_for_bash_zsh_and_fish_name_the_subcommands() {
    let d = tempfile::tempdir().expect("tempdir");
    for (shell, marker) in [
        ("bash", "complete -F _snapback"),
        ("zsh", "#compdef snapback"),
        ("fish", "complete -c snapback"),
    ] {
        let out = bare(d.path())
            .args(["completions", shell])
            .output()
            .expect("run");
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let s = stdout(&out);
        assert!(s.contains(marker), "{shell} script lacks {marker:?}");
        for sub in ["snapshot", "restore", "repair-index", "completions"] {
            assert!(s.contains(sub), "{shell} script lacks {sub}");
        }
    }
    // The bash script is valid bash and registers the completion.
    let script = d.path().join("snapback.bash");
    let out = bare(d.path())
        .args(["completions", "bash"])
        .output()
        .expect("run");
    std::fs::write(&script, &out.stdout).expect("write");
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p snapback",
            script.display()
        ))
        .output()
        .expect("bash");
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(stdout(&check).contains("_snapback"), "{}", stdout(&check));
    // An unknown shell is bad usage.
    let out = bare(d.path())
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn man_page_is_roff_for_section_1_with_the_subcommands() {
    let d = tempfile::tempdir().expect("tempdir");
    let out = bare(d.path()).arg("man").output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    assert!(s.contains(".TH snapback 1"), "{}", &s[..s.len().min(400)]);
    assert!(s.contains(".SH SUBCOMMANDS"), "no SUBCOMMANDS section");
    assert!(s.contains("snapback\\-restore"), "restore not listed");
    assert!(s.contains("SNAPBACK_REPO"), "environment not documented");
}

#[test]
fn version_names_the_commit_the_format_and_the_bundled_sqlite() {
    let d = tempfile::tempdir().expect("tempdir");
    let out = bare(d.path()).arg("--version").output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    let line = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key:?} line in {s:?}"))
            .trim()
            .to_string()
    };
    assert!(
        s.starts_with(&format!("snapback {}\n", env!("CARGO_PKG_VERSION"))),
        "{s}"
    );
    assert_eq!(
        line("repository format:"),
        snapback_core::FORMAT_VERSION.to_string()
    );
    assert_eq!(
        line("SQLite:"),
        format!("{} (bundled)", rusqlite::version())
    );
    let commit = line("commit:");
    let in_checkout = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if in_checkout {
        // A real commit of this repository (not necessarily HEAD: the
        // binary may predate the last commit).
        assert!(
            commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{commit}"
        );
        let known = Command::new("git")
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("git");
        assert!(known.success(), "{commit} is not a commit of this checkout");
    } else {
        assert_eq!(commit, "unknown");
    }
    // -V stays the one-line version, as clap's convention has it.
    let out = bare(d.path()).arg("-V").output().expect("run");
    assert_eq!(
        stdout(&out),
        format!("snapback {}\n", env!("CARGO_PKG_VERSION"))
    );
}
