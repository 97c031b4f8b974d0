//! Passphrases of encrypted repositories. They come from `--password-file`
//! (or SNAPBACK_PASSWORD_FILE), SNAPBACK_PASSWORD, or a prompt on the
//! terminal; never from a command-line argument, and they are never
//! printed or logged.

use std::path::Path;

use anyhow::{bail, Context};
use snapback_core::Passphrase;
use zeroize::Zeroizing;

use crate::cli::Global;

pub const ENV: &str = "SNAPBACK_PASSWORD";
pub const NEW_ENV: &str = "SNAPBACK_NEW_PASSWORD";

/// Reads a passphrase file: its first line, without the line ending.
pub fn read_file(path: &Path) -> anyhow::Result<Passphrase> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
    if !meta.is_file() || meta.len() > 64 * 1024 {
        bail!(
            "the passphrase file {} is not a regular file of at most 64 KiB",
            path.display()
        );
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the passphrase file {}", path.display()))?,
    );
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!("the passphrase file {} is empty", path.display());
    }
    Ok(Zeroizing::new(line.to_string()))
}

fn from_env(name: &str) -> anyhow::Result<Option<Passphrase>> {
    match std::env::var(name) {
        Ok(v) => {
            let v = Zeroizing::new(v);
            // As from a file: one trailing line ending is not part of it.
            let t = v
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&v);
            if t.is_empty() {
                bail!("{name} is set but empty");
            }
            Ok(Some(Zeroizing::new(t.to_string())))
        }
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{name} is not valid UTF-8"),
    }
}

/// True when a passphrase can be had without asking.
pub fn given(g: &Global) -> bool {
    g.password_file.is_some() || std::env::var_os(ENV).is_some()
}

fn prompt(text: &str, hint: &str) -> anyhow::Result<Passphrase> {
    let p = rpassword::prompt_password(text)
        .map(Zeroizing::new)
        .map_err(|_| anyhow::anyhow!("{hint}"))?;
    if p.is_empty() {
        bail!("the passphrase is empty");
    }
    Ok(p)
}

/// The passphrase that opens the repository.
pub fn current(g: &Global) -> anyhow::Result<Passphrase> {
    if let Some(p) = &g.password_file {
        return read_file(p);
    }
    if let Some(p) = from_env(ENV)? {
        return Ok(p);
    }
    prompt(
        "passphrase for the repository: ",
        &format!("the repository is encrypted and there is no terminal to ask for its passphrase: set {ENV} or give --password-file FILE"),
    )
}

/// A passphrase being chosen (init --encrypt, key add): from the given
/// file or variable, or asked twice on the terminal.
pub fn choose(file: Option<&Path>, env: &str, flag: &str) -> anyhow::Result<Passphrase> {
    let p = choose_any(file, env, flag)?;
    // Spaces only (a blank line of a file, a variable set to " "): almost
    // always a mistake, and a passphrase nobody could guess wrong.
    if p.trim().is_empty() {
        bail!("the new passphrase is only whitespace: choose a real one (a long random one for unattended jobs); nothing was changed");
    }
    Ok(p)
}

fn choose_any(file: Option<&Path>, env: &str, flag: &str) -> anyhow::Result<Passphrase> {
    if let Some(p) = file {
        return read_file(p);
    }
    if let Some(p) = from_env(env)? {
        return Ok(p);
    }
    let hint = format!(
        "a new passphrase is needed and there is no terminal to ask for it: set {env} or give {flag} FILE"
    );
    let a = prompt("new passphrase: ", &hint)?;
    let b = prompt("the same passphrase again: ", &hint)?;
    if *a != *b {
        bail!("the two passphrases differ; nothing was changed");
    }
    Ok(a)
}
