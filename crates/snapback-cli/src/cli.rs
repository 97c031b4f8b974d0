use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::cmd_basic;

/// snapback: point-in-time recovery for SQLite databases.
///
/// Frequent, deduplicated, verified snapshots of live SQLite databases (and
/// plain files) into a local or S3 repository; restore, check, and more.
#[derive(Debug, Parser)]
#[command(
    name = "snapback",
    version,
    long_version = crate::cmd_meta::long_version(),
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Repository: a local path, file:///path, or s3://BUCKET/PREFIX.
    #[arg(long, global = true, env = "SNAPBACK_REPO")]
    pub repo: Option<String>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v: info, -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Print nothing on success: no results (snapshot ids, summaries,
    /// plans) unless --json or the command exists to print them (snapshots,
    /// status, diff, …); warnings and errors are still printed. For cron.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// S3-compatible endpoint URL (also AWS_ENDPOINT_URL).
    #[arg(long, global = true)]
    pub s3_endpoint: Option<String>,
    /// Use path-style S3 addressing (MinIO, Ceph, Garage and most local stores).
    #[arg(long, global = true)]
    pub s3_path_style: bool,
    /// File whose first line is the passphrase of an encrypted repository
    /// (else SNAPBACK_PASSWORD, else a prompt on the terminal).
    #[arg(long, global = true, env = "SNAPBACK_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Command that prints the passphrase on its first line of stdout (split
    /// into words as a shell would, quotes included, but run without a
    /// shell). Not with --password-file.
    #[arg(
        long,
        global = true,
        env = "SNAPBACK_PASSWORD_COMMAND",
        value_name = "CMD",
        conflicts_with = "password_file"
    )]
    pub password_command: Option<String>,
    /// Config file (else SNAPBACK_CONFIG, else the first that exists of
    /// ./snapback.toml, $XDG_CONFIG_HOME/snapback/snapback.toml and
    /// /etc/snapback/snapback.toml; `snapback config` says which).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new repository.
    Init(cmd_basic::InitArgs),
    /// Take a snapshot of files, directories and SQLite databases.
    Snapshot(cmd_basic::SnapshotArgs),
    /// Take a point of SQLite databases every tick they changed (a
    /// long-running process; systemd Type=notify).
    Watch(crate::cmd_watch::WatchArgs),
    /// List snapshots.
    Snapshots(cmd_basic::SnapshotsArgs),
    /// Restore files from a snapshot.
    Restore(cmd_basic::RestoreArgs),
    /// Verify the repository (structure; with --read-data, every byte).
    Check(cmd_basic::CheckArgs),
    /// Remove snapshots by a retention policy (per source path).
    Forget(crate::cmd_ops::ForgetArgs),
    /// Delete data no snapshot references; repack mostly-unused packs.
    Prune(crate::cmd_ops::PruneArgs),
    /// Remove stale repository locks (--force: any lock).
    Unlock(crate::cmd_ops::UnlockArgs),
    /// Let retention remove a pre-repair snapshot.
    Release(crate::cmd_ops::ReleaseArgs),
    /// Age of the newest snapshot per source and the last check, for monitoring.
    Status(crate::cmd_ops::StatusArgs),
    /// Mount snapshots as a read-only file system (FUSE).
    Mount(crate::cmd_mount::MountArgs),
    /// Unmount a snapback mount.
    Umount(crate::cmd_mount::UmountArgs),
    /// Compare rows of a snapshot's database with a live database.
    Diff(crate::cmd_repair::DiffArgs),
    /// Plan (dry run) or apply a restore script: repair selected rows.
    Repair(crate::cmd_repair::RepairArgs),
    /// List the audit log of repairs; `audit verify` checks its hash chain.
    Audit(crate::cmd_repair::AuditArgs),
    /// Revert a repair, by its id from `snapback audit`.
    Undo(crate::cmd_repair::UndoArgs),
    /// Every version of one record across every snapshot and point, to live.
    History(crate::cmd_forensics::HistoryArgs),
    /// Find, by bisection over points, when the rows matching SQL changed.
    When(crate::cmd_forensics::WhenArgs),
    /// Rebuild the index objects from the packs alone (after index damage).
    RepairIndex(crate::cmd_reliability::RepairIndexArgs),
    /// Compare a live database page by page with what the next WAL-delta
    /// capture of it would give (one read transaction, throttled).
    VerifyLive(crate::cmd_reliability::VerifyLiveArgs),
    /// Manage the passphrases of an encrypted repository.
    #[command(subcommand)]
    Key(crate::cmd_key::KeyCommand),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    Completions(crate::cmd_meta::CompletionsArgs),
    /// Print the man page (roff) on stdout.
    Man,
    /// Say which config file is used and how it was found.
    Config,
}

pub fn run(mut cli: Cli) -> anyhow::Result<u8> {
    // About snapback itself: no config, no repository.
    match cli.command {
        Command::Completions(a) => return crate::cmd_meta::completions(a),
        Command::Man => return crate::cmd_meta::man(),
        Command::Config => return crate::cmd_meta::config(&cli.global),
        _ => {}
    }
    let cfg = crate::config::load(cli.global.config.as_deref())?;
    if cli.global.repo.is_none() {
        cli.global.repo = cfg.repo.clone();
    }
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => cmd_basic::init(g, a),
        Command::Snapshot(a) => cmd_basic::snapshot(g, &cfg, a),
        Command::Watch(a) => crate::cmd_watch::watch(g, &cfg, a),
        Command::Snapshots(a) => cmd_basic::snapshots(g, a),
        Command::Restore(a) => cmd_basic::restore(g, a),
        Command::Check(a) => cmd_basic::check(g, a),
        Command::Forget(a) => crate::cmd_ops::forget(g, &cfg, a),
        Command::Prune(a) => crate::cmd_ops::prune(g, a),
        Command::Unlock(a) => crate::cmd_ops::unlock(g, a),
        Command::Release(a) => crate::cmd_ops::release(g, a),
        Command::Status(a) => crate::cmd_ops::status(g, &cfg, a),
        Command::Mount(a) => crate::cmd_mount::mount(g, &cfg, a),
        Command::Umount(a) => crate::cmd_mount::umount(g, a),
        Command::Diff(a) => crate::cmd_repair::diff(g, a),
        Command::Repair(a) => crate::cmd_repair::repair(g, a),
        Command::Audit(a) => crate::cmd_repair::audit(g, a),
        Command::Undo(a) => crate::cmd_repair::undo(g, a),
        Command::History(a) => crate::cmd_forensics::history_cmd(g, a),
        Command::When(a) => crate::cmd_forensics::when_cmd(g, a),
        Command::RepairIndex(a) => crate::cmd_reliability::repair_index(g, a),
        Command::VerifyLive(a) => crate::cmd_reliability::verify_live(g, a),
        Command::Key(c) => crate::cmd_key::run(g, c),
        Command::Completions(_) | Command::Man | Command::Config => Ok(crate::exit::OK),
    }
}

/// Paths given on the command line, made absolute without resolving links.
pub fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
