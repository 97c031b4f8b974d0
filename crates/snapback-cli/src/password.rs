//! Passphrases of encrypted repositories. They come from `--password-file`
//! (or SNAPBACK_PASSWORD_FILE), `--password-command` (or
//! SNAPBACK_PASSWORD_COMMAND), SNAPBACK_PASSWORD, or a prompt on the
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
    g.password_file.is_some() || g.password_command.is_some() || std::env::var_os(ENV).is_some()
}

/// Splits a `--password-command` into words as a POSIX shell would:
/// blanks separate words, '…' is literal, "…" allows \" \\ \$ \`, and a
/// backslash outside quotes takes the next character as it is. Nothing is
/// expanded ($VAR, globs, pipes): the words are run as they are.
fn split_command(cmd: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut w = String::new();
    let mut in_word = false;
    let mut chars = cmd.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut w));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => bail!("--password-command: a ' is not closed"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => bail!("--password-command: a \" is not closed"),
                        },
                        Some(c) => w.push(c),
                        None => bail!("--password-command: a \" is not closed"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => w.push(c),
                    None => bail!("--password-command ends with a lone backslash"),
                }
            }
            c => {
                in_word = true;
                w.push(c);
            }
        }
    }
    if in_word {
        words.push(w);
    }
    Ok(words)
}

/// Runs `--password-command`: its first line of stdout is the passphrase.
/// Its stdin and stderr are ours (it may ask on the terminal); its output
/// is never shown, and only the program's name appears in errors (its
/// arguments may be secret).
pub fn from_command(cmd: &str) -> anyhow::Result<Passphrase> {
    use std::io::Read;
    let words = split_command(cmd)?;
    let Some((prog, args)) = words.split_first() else {
        bail!("--password-command (or SNAPBACK_PASSWORD_COMMAND) is empty: give the command that prints the passphrase");
    };
    let mut child = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run the password command {prog}"))?;
    let mut out = Zeroizing::new(Vec::new());
    let read = match child.stdout.take() {
        Some(s) => s.take(64 * 1024).read_to_end(&mut out).map(|_| ()),
        None => Ok(()),
    };
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for the password command {prog}"))?;
    if !status.success() {
        bail!("the password command {prog} failed ({status}); no passphrase was read");
    }
    read.with_context(|| format!("cannot read the output of the password command {prog}"))?;
    let text = Zeroizing::new(String::from_utf8(out.to_vec()).map_err(|_| {
        anyhow::anyhow!("the password command {prog} printed something that is not UTF-8")
    })?);
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!(
            "the password command {prog} printed no passphrase (its first line of output is empty)"
        );
    }
    Ok(Zeroizing::new(line.to_string()))
}

/// The passphrase from --password-file or --password-command, if given
/// (both is an error).
fn from_file_or_command(
    file: Option<&Path>,
    command: Option<&str>,
) -> anyhow::Result<Option<Passphrase>> {
    match (file, command) {
        (Some(_), Some(_)) => Err(anyhow::Error::new(crate::Usage(
            "give either --password-file (SNAPBACK_PASSWORD_FILE) or --password-command (SNAPBACK_PASSWORD_COMMAND), not both".into(),
        ))),
        (Some(p), None) => read_file(p).map(Some),
        (None, Some(c)) => from_command(c).map(Some),
        (None, None) => Ok(None),
    }
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
    if let Some(p) =
        from_file_or_command(g.password_file.as_deref(), g.password_command.as_deref())?
    {
        return Ok(p);
    }
    if let Some(p) = from_env(ENV)? {
        return Ok(p);
    }
    prompt(
        "passphrase for the repository: ",
        &format!("the repository is encrypted and there is no terminal to ask for its passphrase: set {ENV} or give --password-file FILE or --password-command CMD"),
    )
}

/// A passphrase being chosen (init --encrypt, key add): from the given
/// file or variable, or asked twice on the terminal.
pub fn choose(file: Option<&Path>, env: &str, flag: &str) -> anyhow::Result<Passphrase> {
    not_blank(choose_any(file, env, flag)?)
}

/// The passphrase of a repository being created (`init --encrypt`): from
/// --password-file or --password-command, else as `choose`.
pub fn choose_initial(g: &Global) -> anyhow::Result<Passphrase> {
    match from_file_or_command(g.password_file.as_deref(), g.password_command.as_deref())? {
        Some(p) => not_blank(p),
        None => choose(None, ENV, "--password-file"),
    }
}

fn not_blank(p: Passphrase) -> anyhow::Result<Passphrase> {
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

#[cfg(test)]
mod tests {
    use super::split_command;

    #[test]
    fn password_command_is_split_as_a_shell_would_without_expanding() {
        let w =
            split_command(r#"pass show 'backups/snap back' "a \"b\" $HOME" c\ d"#).expect("split");
        assert_eq!(
            w,
            ["pass", "show", "backups/snap back", "a \"b\" $HOME", "c d"]
        );
        assert_eq!(split_command("  ").expect("blank"), Vec::<String>::new());
        assert_eq!(split_command("''").expect("empty word"), [""]);
        for bad in ["echo 'x", "echo \"x", "echo \\"] {
            assert!(split_command(bad).is_err(), "{bad}");
        }
    }
}
