//! The `snapback` binary: argument parsing, output, exit codes. All the work
//! happens in the library crates.

mod cli;
mod cmd_basic;
mod cmd_forensics;
mod cmd_inplace;
mod cmd_key;
mod cmd_meta;
mod cmd_mount;
mod cmd_ops;
mod cmd_reliability;
mod cmd_repair;
mod cmd_watch;
mod config;
mod duration;
mod heartbeat;
mod json;
mod output;
mod password;
mod repo_url;
mod status_watch;

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
    /// `watch`: points could not be kept: the local spool reached
    /// `--spool-max` (or cannot be written) while the repository could not
    /// be written. Every spooled point stays in the spool for the next start.
    pub const SPOOL_FULL: u8 = 7;
    /// No repository at the location given (restic's 10).
    pub const NO_REPOSITORY: u8 = 10;
    /// The repository (or the live database) is locked by someone else
    /// (restic's 11).
    pub const LOCKED: u8 = 11;
    /// The passphrase opens none of the repository's keys (restic's 12).
    pub const WRONG_PASSPHRASE: u8 = 12;
    /// stdout was closed early (`snapback … | head`), as a shell reports
    /// SIGPIPE.
    pub const CLOSED_PIPE: u8 = 141;

    /// The exit code of a failure of this kind.
    pub fn of(kind: snapback_core::Kind) -> u8 {
        use snapback_core::Kind;
        match kind {
            Kind::Usage => USAGE,
            Kind::NoRepository => NO_REPOSITORY,
            Kind::Locked => LOCKED,
            Kind::WrongPassphrase => WRONG_PASSPHRASE,
            Kind::BadInput | Kind::Damaged | Kind::Io | Kind::Internal => FAILURE,
        }
    }
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

/// A message, as anyhow context, that also says what kind of failure the
/// error it wraps is, when the CLI knows better than the cause: a bucket
/// that cannot be used where a repository was expected is no repository
/// (exit 10), not the store error it caused.
#[derive(Debug)]
pub struct Kinded(pub snapback_core::Kind, pub String);

impl std::fmt::Display for Kinded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Kinded {}

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
            std::process::exit(exit::CLOSED_PIPE.into());
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
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::from(exit::OK);
            }
            let _ = e.print();
            // clap could not parse the line, so `--json` is looked for by
            // hand: a script that asked for JSON gets its error object.
            let json = std::env::args()
                .take_while(|a| a != "--")
                .any(|a| a == "--json");
            if json {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or("");
                let message = first.strip_prefix("error: ").unwrap_or(first).to_string();
                output::print_error_json(json::ErrorObject {
                    kind: snapback_core::Kind::Usage.name(),
                    message,
                    causes: Vec::new(),
                    exit_code: exit::USAGE,
                });
            }
            return ExitCode::from(exit::USAGE);
        }
    };
    output::init_logging(&cli.global);
    let json = cli.global.json;
    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => ExitCode::from(output::report_error(&e, json)),
    }
}
