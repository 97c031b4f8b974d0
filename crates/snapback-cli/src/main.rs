//! The `snapback` binary: argument parsing, output, exit codes. All the work
//! happens in the library crates.

mod cli;
mod cmd_basic;
mod cmd_key;
mod cmd_meta;
mod cmd_mount;
mod cmd_ops;
mod cmd_reliability;
mod cmd_repair;
mod config;
mod heartbeat;
mod output;
mod password;
mod repo_url;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes, documented in docs/scripting.md.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The command failed; nothing was reported as done that was not done.
    pub const FAILURE: u8 = 1;
    /// Bad usage (unknown flag, missing argument).
    pub const USAGE: u8 = 2;
    /// `check` found damage, or `status` found a stale source.
    pub const PROBLEMS: u8 = 3;
    /// The command ran, but part of what it was asked could not be done
    /// (`diff`: a table could not be compared); the parts are named on
    /// stderr and in `--json`.
    pub const INCOMPLETE: u8 = 4;
    /// `snapshot`: every snapshot is committed, but the heartbeat call failed.
    pub const HEARTBEAT_FAILED: u8 = 5;
    /// `snapshot`: committed, but without some files that could not be
    /// snapshotted (each named on stderr and in `--json` `failed`).
    pub const PARTIAL: u8 = 6;
}

/// Bad usage found after parsing (a value clap cannot check): exit 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn main() -> ExitCode {
    // `snapback … | head` closes stdout early: end quietly, as other Unix
    // tools do, instead of reporting a panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
    // clap would say "a value is required for '--password-file'", naming
    // a flag the user never gave.
    if std::env::var_os("SNAPBACK_PASSWORD_FILE").is_some_and(|v| v.is_empty()) {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "error: SNAPBACK_PASSWORD_FILE is set but empty: set it to the file holding the passphrase, or unset it (`unset SNAPBACK_PASSWORD_FILE`)"
        );
        return ExitCode::from(exit::USAGE);
    }
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    output::init_logging(&cli.global);
    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Not eprintln!: it panics when stderr is gone (a background
            // mount whose launcher has exited), and the exit code matters
            // more than the message.
            use std::io::Write;
            let mut err = std::io::stderr().lock();
            let lines = output::error_lines(&e);
            for (i, line) in lines.iter().enumerate() {
                let _ = if i == 0 {
                    writeln!(err, "error: {line}")
                } else {
                    writeln!(err, "  caused by: {line}")
                };
            }
            ExitCode::from(if e.chain().any(|c| c.is::<Usage>()) {
                exit::USAGE
            } else {
                exit::FAILURE
            })
        }
    }
}
