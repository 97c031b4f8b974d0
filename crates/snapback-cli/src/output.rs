//! Logging, progress bars and JSON output.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use snapback_core::Progress;
use tracing::level_filters::LevelFilter;

use crate::cli::{Global, LogFormat};

pub fn init_logging(g: &Global) {
    let level = if g.quiet {
        LevelFilter::ERROR
    } else {
        match g.verbose {
            0 => LevelFilter::WARN,
            1 => LevelFilter::INFO,
            _ => LevelFilter::DEBUG,
        }
    };
    let b = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match g.log_format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
}

/// A progress bar on stderr when it is a terminal; nothing otherwise (cron).
pub struct Bar(Option<ProgressBar>);

impl Bar {
    pub fn new(g: &Global) -> Bar {
        if g.quiet || g.json || !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {wide_msg} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            pb.set_style(style);
        }
        Bar(Some(pb))
    }

    pub fn finish(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        if let Some(pb) = &self.0 {
            pb.set_length(bytes);
        }
    }
    fn inc(&self, bytes: u64) {
        if let Some(pb) = &self.0 {
            pb.inc(bytes);
        }
    }
    fn set_message(&self, msg: &str) {
        if let Some(pb) = &self.0 {
            pb.set_message(msg.to_string());
        }
    }
}

pub fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Says which snapshot a selector chose, on stderr, unless quiet.
pub fn chose(g: &Global, snap: &snapback_core::Snapshot) {
    if !g.quiet {
        eprintln!(
            "using snapshot {} taken {}",
            snap.id.short(),
            snapback_core::time::format_rfc3339(snap.time)
        );
    }
}

pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
