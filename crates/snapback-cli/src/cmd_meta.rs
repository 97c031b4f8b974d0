//! Commands about snapback itself: `completions`, `man`, `config`, and the
//! long `--version`. None of them opens a repository.

use std::io::Write;
use std::sync::OnceLock;

use clap::{Args, CommandFactory};

use crate::cli::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// What `snapback --version` prints after the name: the version, the commit
/// it was built from, the repository format it writes and reads, and the
/// SQLite it bundles.
pub fn long_version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        format!(
            "{}\ncommit: {}\nrepository format: {}\nSQLite: {} (bundled)",
            env!("CARGO_PKG_VERSION"),
            env!("SNAPBACK_COMMIT"),
            snapback_core::FORMAT_VERSION,
            rusqlite::version()
        )
    })
}

/// Writes a whole document on stdout. A reader that went away (`| head`)
/// ends the command with 141, as for any other Unix tool.
fn emit(bytes: &[u8]) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(crate::exit::OK),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(141),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// `snapback completions SHELL`: the completion script on stdout.
pub fn completions(a: CompletionsArgs) -> anyhow::Result<u8> {
    use clap_complete::Shell as S;
    let shell = match a.shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
    };
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "snapback", &mut buf);
    emit(&buf)
}

/// `snapback man`: the man page (roff, section 1) on stdout.
pub fn man() -> anyhow::Result<u8> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .map_err(|e| anyhow::Error::new(e).context("cannot render the man page"))?;
    emit(&buf)
}
