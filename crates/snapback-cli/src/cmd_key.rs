//! `snapback key list|add|remove`: the passphrases of an encrypted
//! repository. Each is a key file under `keys/` that seals the same master
//! key, so adding or removing one never rewrites data.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use snapback_core::KdfParams;

use crate::cli::Global;
use crate::exit;
use crate::output::print_json;
use crate::password;
use crate::repo_url::open_repo;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the keys (passphrases) of the repository.
    List,
    /// Add a passphrase (from --new-password-file, SNAPBACK_NEW_PASSWORD or a prompt).
    Add(KeyAddArgs),
    /// Remove a key by its id (or a unique prefix); never the one in use, never the last.
    Remove(KeyRemoveArgs),
}

#[derive(Debug, Args)]
pub struct KdfArgs {
    /// Memory of the passphrase KDF (argon2id), in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=1024))]
    pub kdf_memory: u32,
    /// Passes of the passphrase KDF (argon2id).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub kdf_iterations: u32,
}

impl KdfArgs {
    pub fn params(&self) -> KdfParams {
        KdfParams {
            memory_kib: self.kdf_memory * 1024,
            iterations: self.kdf_iterations,
            parallelism: 1,
        }
    }
}

#[derive(Debug, Args)]
pub struct KeyAddArgs {
    /// File whose first line is the new passphrase.
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

#[derive(Debug, Args)]
pub struct KeyRemoveArgs {
    /// The key id, or a unique prefix of it (see `snapback key list`).
    pub id: String,
}

/// Key files are not authenticated beyond their sealed master key: their
/// text fields are printed without control characters (no terminal escapes).
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

pub fn run(g: &Global, c: KeyCommand) -> anyhow::Result<u8> {
    let repo = open_repo(g)?;
    match c {
        KeyCommand::List => {
            let keys = repo.keys()?;
            if g.json {
                print_json(&crate::json::Keys {
                    keys: keys.iter().map(Into::into).collect(),
                })?;
            } else {
                println!("{:<2}{:<10}{:<32}{:<20}USER", "", "ID", "CREATED", "HOST");
                for k in &keys {
                    if let Some(why) = &k.damaged {
                        println!("{:<2}{:<10}DAMAGED: {}", "", k.id.short(), printable(why));
                        continue;
                    }
                    println!(
                        "{:<2}{:<10}{:<32}{:<20}{}",
                        if k.current { "*" } else { "" },
                        k.id.short(),
                        printable(&k.created),
                        printable(&k.host),
                        printable(&k.user)
                    );
                    if let Some(other) = &k.foreign {
                        println!(
                            "{:<12}foreign: belongs to another repository ({}); it cannot open this one. Remove it with `snapback key remove {}`",
                            "",
                            printable(other),
                            k.id.short()
                        );
                    }
                }
            }
        }
        KeyCommand::Add(a) => {
            let pass = password::choose(
                a.new_password_file.as_deref(),
                password::NEW_ENV,
                "--new-password-file",
            )?;
            let id = repo.add_key(&pass, &a.kdf.params())?;
            if g.json {
                print_json(&crate::json::KeyAdded { added: id })?;
            } else if !g.quiet {
                println!("added key {}", id.short());
            }
        }
        KeyCommand::Remove(a) => {
            let id = repo.remove_key(&a.id)?;
            if g.json {
                print_json(&crate::json::KeyRemoved { removed: id })?;
            } else if !g.quiet {
                println!("removed key {}", id.short());
            }
        }
    }
    Ok(exit::OK)
}
