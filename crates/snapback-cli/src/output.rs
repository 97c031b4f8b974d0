//! Logging, progress bars and JSON output.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use snapback_core::{Kind, Progress};
use tracing::level_filters::LevelFilter;

use crate::cli::{Global, LogFormat};

pub fn init_logging(g: &Global) {
    // -q silences results and progress, never warnings: cron mails what is
    // printed, and a warning is worth a mail.
    let level = if g.quiet {
        LevelFilter::WARN
    } else {
        match g.verbose {
            0 => LevelFilter::WARN,
            1 => LevelFilter::INFO,
            _ => LevelFilter::DEBUG,
        }
    };
    // Never `log_internal_errors`: when a log write fails (a background
    // mount whose launcher, reading its stderr, has exited), tracing-
    // subscriber would report it with `eprintln!`, which panics on the same
    // broken pipe and took the whole mount down.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = log_filter(g, level);
    let b = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_writer(LogWriter::make)
        .log_internal_errors(false)
        .with_target(false);
    let _ = match g.log_format {
        LogFormat::Json => b
            .json()
            .flatten_event(true)
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Text => b
            .with_ansi(std::io::stderr().is_terminal() && !no_color())
            .finish()
            .with(filter)
            .try_init(),
    };
}

/// NO_COLOR (https://no-color.org): set and not empty turns colours off.
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// The log filter: SNAPBACK_LOG, else RUST_LOG (`debug`,
/// `snapback_s3=debug,warn`, …: targets and levels), else the level of
/// -v/-q. -v raises the default level of the variable's filter, -q lowers
/// it to warnings; targets it names keep their level. A value that cannot
/// be parsed is ignored, with a warning.
fn log_filter(g: &Global, level: LevelFilter) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::Targets;
    let from_env = ["SNAPBACK_LOG", "RUST_LOG"].into_iter().find_map(|k| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (k, v))
    });
    let Some((name, value)) = from_env else {
        return Targets::new().with_default(level);
    };
    match value.trim().parse::<Targets>() {
        Ok(t) => {
            let default = t.default_level().unwrap_or(LevelFilter::WARN);
            let default = if g.quiet {
                LevelFilter::WARN
            } else if g.verbose > 0 {
                default.max(level)
            } else {
                default
            };
            t.with_default(default)
        }
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "warning: {name} is ignored: {e} (write a level such as debug, or targets such as snapback_s3=debug,warn)"
            );
            Targets::new().with_default(level)
        }
    }
}

/// Where log lines go: the file of `log_to_file` once it is set, else
/// stderr. A failed write is dropped: a log that cannot be written must
/// never stop the work it describes.
static LOG_FILE: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

struct LogWriter;

impl LogWriter {
    fn make() -> LogWriter {
        LogWriter
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = match LOG_FILE.get() {
            Some(f) => match f.lock() {
                Ok(mut f) => f.write_all(buf),
                Err(_) => Ok(()),
            },
            None => std::io::stderr().write_all(buf),
        };
        // Dropped on error (see above); tell the caller it was taken.
        drop(r);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the log to `path` from now on (appended; created readable and
/// writable by this user only, since log lines name files and snapshots).
pub fn log_to_file(path: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot open the log file {}; give a writable path to --log-file",
                path.display()
            )
        })?;
    // Set once per process (one mount per process).
    let _ = LOG_FILE.set(Mutex::new(f));
    Ok(())
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

/// Output held back until the command has finished: up to
/// [`HeldOutput::MEMORY`] bytes in memory, the rest in an unnamed temporary
/// file (gone with the process), so memory stays bounded however long the
/// output. [`HeldOutput::release`] writes it all to stdout; dropping it
/// instead prints nothing. A command that fails half-way (a damaged pack in
/// the repository, an I/O error) therefore leaves no partial result on
/// stdout for a script to take as complete.
pub struct HeldOutput {
    memory: Vec<u8>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl HeldOutput {
    const MEMORY: usize = 4 << 20;

    pub fn new() -> HeldOutput {
        HeldOutput {
            memory: Vec::new(),
            file: None,
        }
    }

    /// Writes everything held to `to`, in order, and flushes it.
    pub fn release(self, to: &mut impl Write) -> std::io::Result<()> {
        to.write_all(&self.memory)?;
        if let Some(f) = self.file {
            let mut f = f.into_inner().map_err(|e| e.into_error())?;
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(0))?;
            std::io::copy(&mut f, to)?;
        }
        to.flush()
    }
}

impl Default for HeldOutput {
    fn default() -> Self {
        HeldOutput::new()
    }
}

impl Write for HeldOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.file.is_none() && self.memory.len() + buf.len() <= Self::MEMORY {
            self.memory.extend_from_slice(buf);
            return Ok(buf.len());
        }
        let f = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(std::io::BufWriter::with_capacity(
                1 << 16,
                tempfile::tempfile()?,
            )),
        };
        f.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

pub fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Says which snapshot a selector chose, on stderr, unless quiet.
pub fn chose(g: &Global, snap: &snapback_core::Snapshot) {
    if !g.quiet {
        eprintln!(
            "using {} {} taken {}",
            if snap.point.is_some() {
                "point"
            } else {
                "snapshot"
            },
            snap.name(),
            snapback_core::time::format_rfc3339(snap.time)
        );
    }
}

/// The messages of an error and its causes, outermost first. Each cause is
/// said once because no library error both prints its source in its
/// message and returns it as `source()` (see snapback-core's error module).
pub fn error_lines(e: &anyhow::Error) -> Vec<String> {
    e.chain().map(|c| c.to_string()).collect()
}

/// What kind of failure an error is: the kind of the outermost typed error
/// in its chain (a usage error anywhere wins, then a kind the CLI gave
/// with [`crate::Kinded`]). Errors the CLI raises itself
/// (a config it cannot use, a passphrase file that is not a file, …) are
/// bad input.
pub fn error_kind(e: &anyhow::Error) -> Kind {
    if e.chain().any(|c| c.is::<crate::Usage>()) {
        return Kind::Usage;
    }
    if let Some(k) = e.downcast_ref::<crate::Kinded>() {
        return k.0;
    }
    for c in e.chain() {
        if let Some(x) = c.downcast_ref::<snapback_core::Error>() {
            return x.kind();
        }
        if let Some(x) = c.downcast_ref::<snapback_repair::Error>() {
            return x.kind();
        }
        if let Some(x) = c.downcast_ref::<snapback_mount::MountError>() {
            return x.kind();
        }
        if let Some(x) = c.downcast_ref::<snapback_storage::StoreError>() {
            return Kind::of_store(x);
        }
        if let Some(x) = c.downcast_ref::<rusqlite::Error>() {
            return Kind::of_sqlite(x);
        }
        if c.is::<std::io::Error>() {
            return Kind::Io;
        }
        if c.is::<serde_json::Error>() {
            return Kind::Internal;
        }
    }
    Kind::BadInput
}

/// An error under `--json`, on stderr (one line): `{"error": {"kind",
/// "message", "causes", "exit_code"}}` (docs/scripting.md).
pub fn print_error_json(error: crate::json::ErrorObject) {
    if let Ok(line) = serde_json::to_string(&crate::json::ErrorDoc { error }) {
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// The JSON error object of an error.
pub fn error_object(e: &anyhow::Error) -> crate::json::ErrorObject {
    let kind = error_kind(e);
    let mut causes = error_lines(e);
    let message = if causes.is_empty() {
        String::new()
    } else {
        causes.remove(0)
    };
    crate::json::ErrorObject {
        kind: kind.name(),
        message,
        causes,
        exit_code: crate::exit::of(kind),
    }
}

/// Prints a failed command's error on stderr (`error: …`, then one
/// `caused by: …` line per cause; under `--json` also the JSON error
/// object) and returns its exit code.
pub fn report_error(e: &anyhow::Error, json: bool) -> u8 {
    // Not eprintln!: it panics when stderr is gone (a background mount
    // whose launcher has exited), and the exit code matters more than the
    // message.
    {
        let mut err = std::io::stderr().lock();
        for (i, line) in error_lines(e).iter().enumerate() {
            let _ = if i == 0 {
                writeln!(err, "error: {line}")
            } else {
                writeln!(err, "  caused by: {line}")
            };
        }
    }
    if json {
        print_error_json(error_object(e));
    }
    crate::exit::of(error_kind(e))
}

pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

#[cfg(test)]
mod tests {
    use snapback_core::Kind;

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let e = anyhow::Error::new(snapback_core::Error::io("/x", "cannot read", io))
            .context("snapshot failed");
        let lines = super::error_lines(&e);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines.join(": ").matches(&text).count(), 1, "{lines:?}");
    }

    #[test]
    fn error_kind_is_that_of_the_outermost_typed_error() {
        let e = anyhow::Error::new(snapback_core::Error::Locked("held".into())).context("snapshot");
        assert_eq!(super::error_kind(&e), Kind::Locked);
        let e = anyhow::Error::new(snapback_repair::Error::Core(
            snapback_core::Error::WrongPassphrase("no".into()),
        ));
        assert_eq!(super::error_kind(&e), Kind::WrongPassphrase);
        let e = anyhow::Error::new(crate::Usage("bad".into())).context("x");
        assert_eq!(super::error_kind(&e), Kind::Usage);
        assert_eq!(super::error_kind(&anyhow::anyhow!("plain")), Kind::BadInput);
        assert_eq!(crate::exit::of(Kind::NoRepository), 10);
        assert_eq!(crate::exit::of(Kind::Locked), 11);
        assert_eq!(crate::exit::of(Kind::WrongPassphrase), 12);
    }
}

#[cfg(test)]
mod held_output_tests {
    use super::HeldOutput;
    use std::io::Write;

    #[test]
    fn held_output_releases_every_byte_in_order_also_past_the_memory_part() {
        let mut held = HeldOutput::new();
        let line: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut expected = Vec::new();
        // 5,000 writes of 1,000 bytes: past the 4 MiB held in memory.
        for i in 0..5000u32 {
            let mut l = i.to_le_bytes().to_vec();
            l.extend_from_slice(&line);
            held.write_all(&l).expect("write");
            expected.extend_from_slice(&l);
        }
        assert!(held.file.is_some(), "the tail went to the temporary file");
        let mut out = Vec::new();
        held.release(&mut out).expect("release");
        assert_eq!(out.len(), expected.len());
        assert!(out == expected, "released bytes differ from those written");
    }
}
