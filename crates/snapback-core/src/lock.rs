//! Repository locks.
//!
//! A lock is an object `locks/<nanos>-<random>` holding JSON: its kind, host,
//! pid, time and command. Snapshot, watch, repair and check take a
//! **shared** lock; prune and forget take an **exclusive** one. To acquire, a process writes its lock
//! object and then lists the others: if any conflicting lock that is not
//! stale exists, it removes its own and tries again after a random delay,
//! until its wait runs out. Both sides write before they look, so two
//! conflicting processes can never both proceed.
//!
//! A held lock is refreshed every `REFRESH` by writing a new lock object and
//! removing the old one. Whether a lock is **stale** (its process is gone):
//! - taken on this host (same host name, since this host's last boot): its
//!   pid decides, whatever the lock's age. A live process keeps its lock even
//!   when it has not refreshed it for hours: a stopped (Ctrl-Z, SIGSTOP),
//!   paused or frozen process resumes and goes on writing. A dead pid, or a
//!   lock written before this host booted (the pid is someone else's now),
//!   is stale at once;
//! - taken on another host: when its time is older than `STALE_AFTER` (its
//!   process stopped refreshing it). Clocks and pauses on other hosts cannot
//!   be seen from here, so prune does not rest on this alone: it keeps young
//!   packs (see prune.rs), and a snapshot checks its packs before it commits.

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use snapback_storage::Store;

use crate::error::{Error, Result};
use crate::layout::{lock_key, LOCK_PREFIX};
use crate::object::{put_verified, random_hex};
use crate::repo::Repository;

// The lock-age policy, in one place. A holder rewrites its lock every
// `REFRESH`; a lock of another host counts as stale once it is older than
// `STALE_AFTER`, i.e. after about seven refreshes in a row were missed (a
// slow store, a loaded host and a clock a few minutes off all fit inside
// it, so a live holder is not taken for dead). Not configurable: both sides
// of a repository must agree on it, and nothing has needed another value.
// Locks of this host are judged by their pid, not by age (module docs).

/// A lock of another host older than this is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);
/// How often a held lock is rewritten.
const REFRESH: Duration = Duration::from_secs(2 * 60);
// A holder must get several refreshes in before its lock could look stale.
const _: () = assert!(REFRESH.as_secs() * 4 <= STALE_AFTER.as_secs());

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockInfo {
    pub kind: LockKind,
    pub host: String,
    pub pid: u32,
    pub time: String,
    pub command: String,
}

/// A lock found in the repository.
#[derive(Debug, Clone, Serialize)]
pub struct FoundLock {
    pub key: String,
    pub info: Option<LockInfo>,
    pub stale: bool,
}

impl std::fmt::Display for LockKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockKind::Shared => "shared",
            LockKind::Exclusive => "exclusive",
        })
    }
}

impl FoundLock {
    /// "exclusive lock held by prune (pid 7 on host) since 2026-…Z", for
    /// people: the kind in words, everything else as stored.
    pub fn describe(&self) -> String {
        match &self.info {
            Some(i) => format!(
                "{} lock held by {} (pid {} on {}) since {}",
                i.kind, i.command, i.pid, i.host, i.time
            ),
            None => format!("unreadable lock object {}", self.key),
        }
    }
}

pub(crate) fn this_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    // Linux: a live process has a /proc entry (zombies included, which is
    // the conservative answer).
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// When this host booted (Linux: `btime` in /proc/stat).
fn boot_time() -> Option<time::OffsetDateTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    time::OffsetDateTime::from_unix_timestamp(secs).ok()
}

pub fn is_stale(info: &LockInfo, now: time::OffsetDateTime) -> bool {
    let written = crate::time::parse_rfc3339(&info.time);
    let stale_after = time::Duration::try_from(STALE_AFTER).unwrap_or(time::Duration::MAX);
    if info.host == this_host() {
        if !pid_alive(info.pid) {
            return true;
        }
        // A live pid holds its lock, however old, unless the lock is from
        // before this host's last boot: its process died with that boot and
        // the pid was given to another one since. (The slack keeps a writer
        // whose clock is somewhat behind, or a host that just booted, from
        // looking like that.)
        return match (written, boot_time()) {
            (Ok(t), Some(boot)) => t + stale_after < boot,
            _ => false,
        };
    }
    written.map(|t| (now - t) > stale_after).unwrap_or(true)
}

/// How a reading command is protected against a concurrent prune.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockState {
    /// It holds a shared lock.
    #[default]
    Held,
    /// `--no-lock`: no lock was written and none was looked at.
    Skipped,
    /// The repository cannot be written: no lock was written (a warning
    /// said so); a prune's lock seen at the start was waited for.
    ReadOnly,
}

impl LockState {
    /// As in `--json`: "held", "skipped" (`--no-lock`), "read_only".
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::Held => "held",
            LockState::Skipped => "skipped",
            LockState::ReadOnly => "read_only",
        }
    }
}

/// The lock of a reading command: held, or (see [`LockState`]) not.
#[derive(Debug)]
pub struct ReadLock {
    _held: Option<RepoLock>,
    pub state: LockState,
}

/// A held lock; released when dropped.
pub struct RepoLock {
    store: Arc<dyn Store>,
    key: Arc<Mutex<String>>,
    stop: Option<Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RepoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoLock").field("key", &self.key).finish()
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        if let Ok(k) = self.key.lock() {
            if let Err(e) = self.store.delete(&k) {
                tracing::warn!(lock = %k, error = %e, "could not remove the lock; `snapback unlock` removes it once it is stale");
            }
        }
    }
}

fn write_lock(store: &dyn Store, info: &LockInfo) -> Result<String> {
    let key = lock_key(crate::time::now().unix_timestamp_nanos(), &random_hex(6)?);
    let bytes = serde_json::to_vec(info)
        .map_err(|e| Error::internal(format!("cannot encode a lock: {e}")))?;
    put_verified(store, &key, &bytes)?;
    Ok(key)
}

impl Repository {
    /// Every lock in the repository.
    pub fn locks(&self) -> Result<Vec<FoundLock>> {
        let now = crate::time::now();
        let mut out = Vec::new();
        for o in self.store().list(LOCK_PREFIX)? {
            let info = match self.store().get(&o.key) {
                Ok(b) => serde_json::from_slice::<LockInfo>(&b).ok(),
                Err(e) if e.is_not_found() => continue,
                // A lock that does not authenticate (encrypted repository)
                // is treated like one that does not parse: unusable, stale.
                Err(e) if e.kind() == snapback_storage::ErrorKind::Corrupt => {
                    tracing::warn!(key = %o.key, error = %e, "unreadable lock object; treating it as stale");
                    None
                }
                Err(e) => return Err(e.into()),
            };
            let stale = info.as_ref().is_none_or(|i| is_stale(i, now));
            out.push(FoundLock {
                key: o.key,
                info,
                stale,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Takes a lock, waiting up to `wait` for conflicting locks to go. For
    /// commands that write: a repository that cannot be written (read-only
    /// file system, no write permission, a read-only S3 key) is refused with
    /// [`Error::ReadOnlyRepository`] before anything is done.
    pub fn lock(&self, kind: LockKind, command: &str, wait: Duration) -> Result<RepoLock> {
        match self.acquire(kind, command, wait, false)? {
            (Some(lock), _) => Ok(lock),
            (None, _) => Err(Error::internal(format!(
                "{command}: no lock was taken; nothing was done"
            ))),
        }
    }

    /// The lock of a command that only reads (restore, check): a shared
    /// lock, so that no prune deletes data while it is read. With `no_lock`
    /// (`--no-lock`) none is written and none is looked at. Where the lock
    /// cannot be written because the repository is read-only (EROFS,
    /// EACCES/EPERM, S3 AccessDenied), the command goes on without one,
    /// after waiting as usual for a prune's lock that it can see, and one
    /// warning says so.
    pub fn read_lock(&self, command: &str, wait: Duration, no_lock: bool) -> Result<ReadLock> {
        if no_lock {
            tracing::info!(command, "--no-lock: no repository lock is taken");
            return Ok(ReadLock {
                _held: None,
                state: LockState::Skipped,
            });
        }
        let (held, refused) = self.acquire(LockKind::Shared, command, wait, true)?;
        if let Some(e) = refused {
            tracing::warn!(
                "the repository {} cannot be written ({e}), so `{command}` goes on without a lock: a prune run at the same time, from where the repository can be written, could delete data while it is read (`{command}` would then fail or report missing data, never give wrong data). --no-lock skips the attempt",
                self.store().location()
            );
        }
        Ok(ReadLock {
            state: if held.is_some() {
                LockState::Held
            } else {
                LockState::ReadOnly
            },
            _held: held,
        })
    }

    /// The lock loop. With `read_only_ok`, a lock that cannot be written
    /// because the store refuses writes is not an error: the loop goes on
    /// looking (without writing) for conflicting locks, and returns no lock
    /// and the refusal.
    fn acquire(
        &self,
        kind: LockKind,
        command: &str,
        wait: Duration,
        read_only_ok: bool,
    ) -> Result<(Option<RepoLock>, Option<snapback_storage::StoreError>)> {
        let store = self.store().clone();
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        let mut refused: Option<snapback_storage::StoreError> = None;
        loop {
            let info = LockInfo {
                kind,
                host: this_host(),
                pid: std::process::id(),
                time: crate::time::format_rfc3339(crate::time::now()),
                command: command.to_string(),
            };
            let mine = if refused.is_some() {
                None
            } else {
                match write_lock(store.as_ref(), &info) {
                    Ok(k) => Some(k),
                    Err(Error::Store(e)) if e.kind().refuses_writes() => {
                        if !read_only_ok {
                            return Err(Error::ReadOnlyRepository {
                                location: store.location(),
                                command: command.to_string(),
                                cause: e,
                            });
                        }
                        refused = Some(e);
                        None
                    }
                    Err(e) => return Err(e),
                }
            };
            let conflicts: Vec<FoundLock> = self
                .locks()?
                .into_iter()
                .filter(|l| Some(&l.key) != mine.as_ref() && !l.stale)
                .filter(|l| {
                    kind == LockKind::Exclusive
                        || l.info
                            .as_ref()
                            .is_none_or(|i| i.kind == LockKind::Exclusive)
                })
                .collect();
            if conflicts.is_empty() {
                return Ok(match mine {
                    Some(mine) => {
                        tracing::debug!(lock = %mine, ?kind, "lock acquired");
                        (Some(self.hold(mine, info)), None)
                    }
                    None => (None, refused),
                });
            }
            if let Some(mine) = &mine {
                store.delete(mine)?;
            }
            if started.elapsed() >= wait {
                return Err(Error::Locked(format!(
                    "the repository is locked: {}. Waited {} s. Wait for it to finish; if that process is gone, `snapback unlock` removes stale locks (and `snapback unlock --force` any lock){}.",
                    conflicts.iter().map(FoundLock::describe).collect::<Vec<_>>().join("; "),
                    wait.as_secs(),
                    if refused.is_some() {
                        "; on a repository that cannot be written, --no-lock reads it anyway"
                    } else {
                        ""
                    }
                )));
            }
            let jitter = Duration::from_millis(
                random_hex(2)
                    .ok()
                    .and_then(|h| u64::from_str_radix(&h, 16).ok())
                    .unwrap_or(0)
                    % 100,
            );
            std::thread::sleep(
                (delay + jitter)
                    .min(wait.saturating_sub(started.elapsed()))
                    .max(Duration::from_millis(10)),
            );
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn hold(&self, key: String, info: LockInfo) -> RepoLock {
        let store = self.store().clone();
        let key = Arc::new(Mutex::new(key));
        let (tx, rx) = channel::<()>();
        let (s2, k2) = (store.clone(), key.clone());
        let refresher = std::thread::spawn(move || loop {
            match rx.recv_timeout(REFRESH) {
                Err(RecvTimeoutError::Timeout) => {
                    let mut fresh = info.clone();
                    fresh.time = crate::time::format_rfc3339(crate::time::now());
                    match write_lock(s2.as_ref(), &fresh) {
                        Ok(new_key) => {
                            if let Ok(mut k) = k2.lock() {
                                let old = std::mem::replace(&mut *k, new_key);
                                let _ = s2.delete(&old);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not refresh the repository lock")
                        }
                    }
                }
                _ => return,
            }
        });
        RepoLock {
            store,
            key,
            stop: Some(tx),
            refresher: Some(refresher),
        }
    }

    /// Removes stale locks, or every lock with `force`. Returns the removed.
    pub fn unlock(&self, force: bool) -> Result<Vec<FoundLock>> {
        let mut removed = Vec::new();
        for l in self.locks()? {
            if force || l.stale {
                self.store().delete(&l.key)?;
                tracing::info!(lock = %l.key, stale = l.stale, "lock removed");
                removed.push(l);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::InitOptions;
    use snapback_storage::LocalStore;

    fn repo() -> (tempfile::TempDir, Repository) {
        let d = tempfile::tempdir().expect("tmp");
        let s: Arc<dyn Store> = Arc::new(LocalStore::create(d.path().join("r")).expect("store"));
        (
            d,
            Repository::init(s, &InitOptions::default()).expect("init"),
        )
    }

    #[test]
    fn shared_locks_coexist_and_exclusive_waits() {
        let (_d, r) = repo();
        let a = r
            .lock(LockKind::Shared, "snapshot", Duration::from_secs(1))
            .expect("a");
        let b = r
            .lock(LockKind::Shared, "snapshot", Duration::from_secs(1))
            .expect("b");
        let e = r
            .lock(LockKind::Exclusive, "prune", Duration::from_millis(300))
            .expect_err("blocked");
        assert!(
            e.to_string().contains("locked") && e.to_string().contains("snapshot"),
            "{e}"
        );
        drop(a);
        drop(b);
        let x = r
            .lock(LockKind::Exclusive, "prune", Duration::from_secs(1))
            .expect("now free");
        assert!(r
            .lock(LockKind::Shared, "snapshot", Duration::from_millis(200))
            .is_err());
        drop(x);
        assert!(
            r.locks().expect("locks").is_empty(),
            "dropping releases every lock"
        );
    }

    #[test]
    fn dead_pid_on_this_host_is_stale_and_unlock_removes_only_stale() {
        let (_d, r) = repo();
        let dead = LockInfo {
            kind: LockKind::Exclusive,
            host: this_host(),
            pid: 999_999_999,
            time: crate::time::format_rfc3339(crate::time::now()),
            command: "prune".into(),
        };
        write_lock(r.store().as_ref(), &dead).expect("write");
        let live = r
            .lock(LockKind::Shared, "snapshot", Duration::from_secs(1))
            .expect("a stale exclusive lock does not block");
        let removed = r.unlock(false).expect("unlock");
        assert_eq!(removed.len(), 1, "only the stale lock is removed");
        assert_eq!(r.locks().expect("locks").len(), 1);
        drop(live);
        let old = LockInfo {
            time: "2020-01-01T00:00:00Z".into(),
            host: "elsewhere".into(),
            pid: 1,
            ..dead
        };
        assert!(is_stale(&old, crate::time::now()), "an old lock is stale");
    }

    #[test]
    fn live_pid_on_this_host_is_never_stale_however_old() {
        let now = crate::time::now();
        // As old as it can be on this host: written when it booted.
        let boot = boot_time().expect("/proc/stat has btime");
        let mine = LockInfo {
            kind: LockKind::Shared,
            host: this_host(),
            pid: std::process::id(),
            time: crate::time::format_rfc3339(boot),
            command: "snapshot".into(),
        };
        assert!(
            !is_stale(&mine, now),
            "a stopped snapshot on this host keeps its lock"
        );
        assert!(
            !is_stale(&mine, now + time::Duration::days(2)),
            "a prune whose clock is ahead does not make it stale"
        );
        let before_boot = LockInfo {
            time: "2000-01-01T00:00:00Z".into(),
            ..mine.clone()
        };
        assert!(
            is_stale(&before_boot, now),
            "a lock from before this host booted belongs to a process that is gone"
        );
        // Written longer than the stale age ago (not at boot: a machine
        // that just booted, as CI's does, has a boot time younger than it).
        let stale_after = time::Duration::try_from(STALE_AFTER).expect("stale age fits");
        let elsewhere = LockInfo {
            host: format!("{}-other", this_host()),
            time: crate::time::format_rfc3339(now - stale_after - time::Duration::minutes(1)),
            ..mine
        };
        assert!(
            is_stale(&elsewhere, now),
            "another host's lock goes stale by age"
        );
    }
}
