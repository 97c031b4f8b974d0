//! The conventions operators expect of a command-line tool: completions, a
//! man page, a `--version` that says what was built, where the config is
//! found, `--password-command`, SNAPBACK_LOG / RUST_LOG, NO_COLOR.

use std::process::Command;

use snapback_testkit::{bin, stderr, stdout};

/// The binary in an empty directory, with none of the caller's config,
/// passphrase or log variables.
fn bare(dir: &std::path::Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(dir)
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .env("HOME", dir.join("home"))
        .env_remove("SNAPBACK_REPO");
    for k in snapback_testkit::ISOLATED_VARS {
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

fn config_json(c: &mut Command) -> serde_json::Value {
    let out = c.args(["--json", "config"]).output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn config_is_searched_in_cwd_then_xdg_then_home_and_config_says_which() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path();
    let cwd_file = p.join("snapback.toml");
    let xdg_file = p.join("xdg/snapback/snapback.toml");
    let home_file = p.join("home/.config/snapback/snapback.toml");
    // Nothing anywhere: none found, and the places searched are listed.
    let v = config_json(&mut bare(p));
    if std::path::Path::new("/etc/snapback/snapback.toml").exists() {
        assert_eq!(v["found_by"], "system", "{v}");
    } else {
        assert_eq!(v["found"], false, "{v}");
        assert_eq!(v["path"], serde_json::Value::Null, "{v}");
        let searched: Vec<&str> = v["searched"]
            .as_array()
            .expect("searched")
            .iter()
            .map(|s| s.as_str().expect("str"))
            .collect();
        assert_eq!(
            searched,
            [
                cwd_file.to_str().expect("utf8"),
                xdg_file.to_str().expect("utf8"),
                "/etc/snapback/snapback.toml"
            ]
        );
        let out = bare(p).arg("config").output().expect("run");
        assert!(
            stdout(&out).starts_with("no config file"),
            "{}",
            stdout(&out)
        );
    }
    // ~/.config when XDG_CONFIG_HOME is not set.
    std::fs::create_dir_all(home_file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&home_file, "repo = \"/from/home\"\n").expect("write");
    let v = config_json(bare(p).env_remove("XDG_CONFIG_HOME"));
    assert_eq!(v["found_by"], "user", "{v}");
    assert_eq!(v["path"], home_file.to_str().expect("utf8"));
    assert_eq!(v["repo"], "/from/home");
    // XDG_CONFIG_HOME, when set, instead of ~/.config.
    std::fs::create_dir_all(xdg_file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&xdg_file, "repo = \"/from/xdg\"\n").expect("write");
    let v = config_json(&mut bare(p));
    assert_eq!(v["path"], xdg_file.to_str().expect("utf8"), "{v}");
    // ./snapback.toml before the user's config.
    std::fs::write(&cwd_file, "repo = \"/from/cwd\"\n").expect("write");
    let v = config_json(&mut bare(p));
    assert_eq!(v["found_by"], "current_dir", "{v}");
    assert_eq!(v["repo"], "/from/cwd");
    let out = bare(p).arg("config").output().expect("run");
    let text = stdout(&out);
    assert!(text.starts_with(cwd_file.to_str().expect("utf8")), "{text}");
    assert!(text.contains("found by: ./snapback.toml"), "{text}");
    // SNAPBACK_CONFIG before all of them, and --config before it.
    let named = p.join("named.toml");
    std::fs::write(&named, "repo = \"/from/env\"\n").expect("write");
    let v = config_json(bare(p).env("SNAPBACK_CONFIG", &named));
    assert_eq!(v["found_by"], "env", "{v}");
    assert_eq!(v["repo"], "/from/env");
    let v = config_json(
        bare(p)
            .env("SNAPBACK_CONFIG", &named)
            .arg("--config")
            .arg(&xdg_file),
    );
    assert_eq!(v["found_by"], "flag", "{v}");
    assert_eq!(v["repo"], "/from/xdg");
    // A named file must exist; an empty SNAPBACK_CONFIG is refused.
    let out = bare(p)
        .env("SNAPBACK_CONFIG", p.join("missing.toml"))
        .arg("config")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
    let out = bare(p)
        .env("SNAPBACK_CONFIG", "")
        .arg("config")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("SNAPBACK_CONFIG is set but empty"));
}

#[test]
fn config_found_in_xdg_config_home_gives_commands_their_repository() {
    let e = snapback_testkit::Env::new();
    let xdg = e.path("xdg");
    std::fs::create_dir_all(xdg.join("snapback")).expect("mkdir");
    std::fs::write(
        xdg.join("snapback/snapback.toml"),
        format!("repo = {:?}\n", e.repo().to_str().expect("utf8")),
    )
    .expect("write");
    let db = e.path("a.txt");
    std::fs::write(&db, b"hello").expect("write");
    let id = e.snapshot(&db);
    // No --repo, no SNAPBACK_REPO: the repository comes from the config.
    let out = bare(e.dir.path())
        .env("XDG_CONFIG_HOME", &xdg)
        .args(["--json", "snapshots"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let listed = v[0]["id"].as_str().expect("id");
    assert!(!id.is_empty() && listed.starts_with(&id), "{id} vs {v}");
    // An invalid config is an error naming the file, for every command.
    std::fs::write(xdg.join("snapback/snapback.toml"), "repository = 1\n").expect("write");
    let out = bare(e.dir.path())
        .env("XDG_CONFIG_HOME", &xdg)
        .arg("snapshots")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("xdg/snapback/snapback.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn password_command_first_line_opens_the_repository_and_failures_are_clear() {
    let pass = "correct horse 'battery' staple";
    let e = snapback_testkit::Env::bare();
    let secret = e.path("secret file.txt");
    std::fs::write(&secret, format!("{pass}\nsecond line is not used\n")).expect("write");
    let cmd_arg = format!("cat '{}'", secret.display());
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        let mut c = e.cmd(args);
        c.envs(vars.iter().copied());
        c.output().expect("run")
    };
    // init --encrypt takes it from the command too.
    let mut init = vec!["--password-command", cmd_arg.as_str()];
    init.extend(snapback_testkit::init_encrypted());
    let out = run(&init, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let f = e.path("a.txt");
    std::fs::write(&f, b"data").expect("write");
    let fs = f.to_str().expect("utf8");
    let out = run(
        &["-vv", "--password-command", &cmd_arg, "snapshot", fs],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("horse"), "passphrase logged");
    // The variable works as the flag; the passphrase itself opens the same.
    let out = run(&["snapshots"], &[("SNAPBACK_PASSWORD_COMMAND", &cmd_arg)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["snapshots"], &[("SNAPBACK_PASSWORD", pass)]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A wrong passphrase from the command is refused.
    let out = run(&["--password-command", "echo wrong", "snapshots"], &[]);
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
    // A failing command, one that prints nothing, and one that does not
    // exist: exit 1, saying so, naming only the program.
    for (cmd, says) in [
        ("false --secret-arg", "the password command false failed"),
        ("true --secret-arg", "printed no passphrase"),
        (
            "/nonexistent/pw --secret-arg",
            "cannot run the password command",
        ),
        ("echo 'unclosed", "is not closed"),
    ] {
        let out = run(&["--password-command", cmd, "snapshots"], &[]);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{cmd}: {}", stderr(&out));
        assert!(!stderr(&out).contains("--secret-arg"), "{}", stderr(&out));
    }
    // With --password-file as well: bad usage.
    let out = run(
        &[
            "--password-file",
            secret.to_str().expect("utf8"),
            "--password-command",
            &cmd_arg,
            "snapshots",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn snapback_log_and_rust_log_filter_the_log_and_flags_still_work() {
    let e = snapback_testkit::Env::new();
    let f = e.path("a.txt");
    std::fs::write(&f, b"data").expect("write");
    let fs = f.to_str().expect("utf8");
    let log = |args: &[&str], vars: &[(&str, &str)]| {
        let mut c = e.cmd(args);
        c.envs(vars.iter().copied());
        let out = c.output().expect("run");
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    assert!(!log(&["snapshot", fs], &[]).contains("INFO"));
    assert!(log(&["snapshot", fs], &[("SNAPBACK_LOG", "info")]).contains("INFO"));
    assert!(log(&["snapshot", fs], &[("RUST_LOG", "info")]).contains("INFO"));
    // SNAPBACK_LOG wins over RUST_LOG; -v raises it, -q lowers it.
    let both = [("SNAPBACK_LOG", "error"), ("RUST_LOG", "info")];
    assert!(!log(&["snapshot", fs], &both).contains("INFO"));
    assert!(log(&["-v", "snapshot", fs], &both).contains("INFO"));
    assert!(!log(&["-q", "snapshot", fs], &[("SNAPBACK_LOG", "info")]).contains("INFO"));
    // A target of another crate only: snapback's own info stays hidden.
    assert!(!log(&["snapshot", fs], &[("SNAPBACK_LOG", "hyper=debug")]).contains("INFO"));
    // A value that cannot be parsed is said and ignored.
    let s = log(&["snapshot", fs], &[("SNAPBACK_LOG", "=nonsense=")]);
    assert!(s.contains("SNAPBACK_LOG is ignored"), "{s}");
}

#[test]
fn no_color_turns_off_colours_on_a_terminal() {
    let e = snapback_testkit::Env::new();
    let f = e.path("a.txt");
    std::fs::write(&f, b"data").expect("write");
    // `script` gives the command a terminal, where colours would be used.
    let run = |no_color: bool| {
        let line = format!(
            "{} --repo {} -v snapshot {}",
            bin().display(),
            e.repo().display(),
            f.display()
        );
        let mut c = Command::new("script");
        c.args(["-qec", &line, "/dev/null"])
            .env("XDG_CONFIG_HOME", e.path("xdg"));
        for k in snapback_testkit::ISOLATED_VARS {
            c.env_remove(k);
        }
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let out = c.output().expect("script");
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let sgr = |s: &str| s.contains("\u{1b}[") && s.contains("INFO");
    let coloured = run(false);
    assert!(coloured.contains("INFO"), "{coloured:?}");
    assert!(
        sgr(&coloured) && coloured.contains("m"),
        "colours on a terminal: {coloured:?}"
    );
    let plain = run(true);
    assert!(plain.contains("INFO"), "{plain:?}");
    assert!(!plain.contains("\u{1b}[3"), "NO_COLOR: {plain:?}");
}
