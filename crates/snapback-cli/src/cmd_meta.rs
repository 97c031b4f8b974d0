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

/// `snapback config`: which config file is used and how it was found (or
/// that there is none, and where it was looked for). The file is read and
/// checked: a config that would stop other commands fails here too.
pub fn config(g: &crate::cli::Global) -> anyhow::Result<u8> {
    let located = crate::config::locate(g.config.as_deref())?;
    let cfg = match &located.found {
        Some((path, by)) => Some(crate::config::load_file(path, *by)?),
        None => None,
    };
    if g.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            found: bool,
            path: Option<&'a std::path::Path>,
            found_by: Option<crate::config::FoundBy>,
            searched: &'a [std::path::PathBuf],
            repo: Option<&'a str>,
            sources: usize,
        }
        let out = Out {
            found: located.found.is_some(),
            path: located.found.as_ref().map(|(p, _)| p.as_path()),
            found_by: located.found.as_ref().map(|(_, b)| *b),
            searched: &located.searched,
            repo: cfg.as_ref().and_then(|c| c.repo.as_deref()),
            sources: cfg.as_ref().map_or(0, |c| c.sources.len()),
        };
        let mut s = serde_json::to_string_pretty(&out)?;
        s.push('\n');
        return emit(s.as_bytes());
    }
    let text = match (&located.found, &cfg) {
        (Some((path, by)), Some(c)) => format!(
            "{}\n  found by: {}\n  repo: {}\n  sources: {}\n",
            path.display(),
            by.describe(),
            c.repo.as_deref().unwrap_or("(not set)"),
            c.sources.len()
        ),
        _ => {
            let mut t = String::from("no config file: none of these exists:\n");
            for p in &located.searched {
                t.push_str(&format!("  {}\n", p.display()));
            }
            t
        }
    };
    emit(text.as_bytes())
}
