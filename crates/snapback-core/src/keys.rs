//! The key files of an encrypted repository: list, add, remove.

use crate::crypto::{key_info, make_key_file, open_key_file, KdfParams, KeyInfo, MasterKey};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::layout::{key_file_id_from_key, key_file_key, KEYS_PREFIX};
use crate::lock::LockKind;
use crate::object::put_verified;
use crate::repo::Repository;
use crate::selector::MIN_ID_PREFIX;

impl Repository {
    fn require_encrypted(&self) -> Result<&MasterKey> {
        self.master.as_deref().ok_or_else(|| {
            Error::Invalid(
                "this repository is not encrypted, so it has no keys (create an encrypted one with `snapback init --encrypt`)".into(),
            )
        })
    }

    /// The key files of an encrypted repository.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        self.require_encrypted()?;
        let mut out = Vec::new();
        for o in self.store.list(KEYS_PREFIX)? {
            let Some(id) = key_file_id_from_key(&o.key) else {
                continue;
            };
            // A damaged key file is listed (so that it can be removed), not
            // an error that hides the others.
            let info = self.store.get(&o.key).map_err(Error::from).and_then(|b| {
                key_info(
                    &b,
                    &o.key,
                    id,
                    Some(id) == self.key_id,
                    &self.config.repo_id,
                )
            });
            out.push(info.unwrap_or_else(|e| KeyInfo {
                id,
                created: String::new(),
                host: String::new(),
                user: String::new(),
                memory_kib: 0,
                iterations: 0,
                current: false,
                foreign: None,
                damaged: Some(e.to_string()),
            }));
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Adds a passphrase: a new key file sealing the same master key.
    pub fn add_key(&self, passphrase: &str, kdf: &KdfParams) -> Result<Id> {
        let master = self.require_encrypted()?;
        let kf = make_key_file(master, passphrase, kdf, &self.config.repo_id)?;
        let kid = Id::of(&kf);
        put_verified(self.store.as_ref(), &key_file_key(&kid), &kf)?;
        // Prove that the new key file opens with the passphrase before
        // reporting success.
        let back = self.store.get(&key_file_key(&kid))?;
        if open_key_file(&back, "new key", passphrase, &self.config.repo_id)?.is_none() {
            self.store.delete(&key_file_key(&kid))?;
            return Err(Error::Verification(
                "the new key file does not open with its passphrase; it was not kept".into(),
            ));
        }
        Ok(kid)
    }

    /// Removes a key file by id or unique prefix. The key that opened the
    /// repository and the last key are never removed.
    pub fn remove_key(&self, prefix: &str) -> Result<Id> {
        self.require_encrypted()?;
        // Under the exclusive lock from the start: two removals at once
        // (each opened with the key the other removes) must not both pass
        // the "not the last key" check.
        let _lock = self.lock(LockKind::Exclusive, "key remove", std::time::Duration::ZERO)?;
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.len() < MIN_ID_PREFIX {
            return Err(Error::Selector(format!(
                "key id prefix '{prefix}' is too short: give at least {MIN_ID_PREFIX} hex digits (see `snapback key list`)"
            )));
        }
        let keys = self.keys()?;
        let m: Vec<&KeyInfo> = keys
            .iter()
            .filter(|k| !prefix.is_empty() && k.id.to_hex().starts_with(&prefix))
            .collect();
        let k = match m.as_slice() {
            [k] => *k,
            [] => {
                return Err(Error::Selector(format!(
                    "no key id starts with '{prefix}'; list them with `snapback key list`"
                )))
            }
            _ => {
                return Err(Error::Selector(format!(
                    "key prefix '{prefix}' matches {} keys; give more digits",
                    m.len()
                )))
            }
        };
        if k.current {
            return Err(Error::Invalid(format!(
                "key {} is the one this command opened the repository with; open it with another passphrase to remove this key",
                k.id.short()
            )));
        }
        if keys.len() < 2 {
            return Err(Error::Invalid(
                "refusing to remove the last key: the repository could never be opened again"
                    .into(),
            ));
        }
        self.store.delete(&key_file_key(&k.id))?;
        Ok(k.id)
    }
}
