//! Running a mount: checks, the FUSE session, signals, the systemd
//! watchdog, and unmounting.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapback_core::Repository;

use crate::error::MountError;
use crate::fuse::SnapbackFs;
use crate::notify::{notify, watchdog_interval};
use crate::vfs::{Vfs, VfsOptions, View, STATUS_NAME};

/// Everything a mount needs besides the repository.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    pub view: View,
    pub vfs: VfsOptions,
    /// Threads answering FUSE requests.
    pub request_threads: usize,
    /// Let other users see the mount (needs `user_allow_other` in
    /// /etc/fuse.conf unless root).
    pub allow_other: bool,
    /// The repository's directory, for a local repository: a mount point
    /// inside it (or around it) is refused.
    pub repo_dir: Option<PathBuf>,
    /// How long the health check's read through the mount may take.
    pub health_timeout: Duration,
    /// After an unmount on a signal, how long to wait for open files to be
    /// closed before the FUSE connection is aborted.
    pub unmount_grace: Duration,
}

impl MountOptions {
    pub fn new(mountpoint: PathBuf, view: View) -> MountOptions {
        // The owner shown for every entry: whoever runs the mount (the owner
        // of /proc/self is this process's effective user).
        let (uid, gid) = std::fs::metadata("/proc/self")
            .map(|m| (m.uid(), m.gid()))
            .unwrap_or((0, 0));
        MountOptions {
            mountpoint,
            view,
            vfs: VfsOptions {
                uid,
                gid,
                ..VfsOptions::default()
            },
            request_threads: 16,
            allow_other: false,
            repo_dir: None,
            health_timeout: Duration::from_secs(10),
            unmount_grace: Duration::from_secs(5),
        }
    }
}

/// Checks a mount point: an existing directory, not already a mount point,
/// not inside the repository and not containing it. Returns its canonical
/// path.
pub fn check_mountpoint(mountpoint: &Path, repo_dir: Option<&Path>) -> Result<PathBuf, MountError> {
    let bad = |reason: String| MountError::BadMountpoint {
        mountpoint: mountpoint.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(mountpoint)
        .map_err(|e| MountError::io(mountpoint, "cannot use as a mount point", e))?;
    if !meta.is_dir() {
        return Err(bad("it is not a directory".into()));
    }
    let mp = std::fs::canonicalize(mountpoint)
        .map_err(|e| MountError::io(mountpoint, "cannot resolve the mount point", e))?;
    if let Some(repo) = repo_dir {
        let repo = std::fs::canonicalize(repo)
            .map_err(|e| MountError::io(repo, "cannot resolve the repository path", e))?;
        if mp.starts_with(&repo) {
            return Err(bad(format!(
                "it is inside the repository {}; the mount would read from itself. Choose a directory outside the repository.",
                repo.display()
            )));
        }
        if repo.starts_with(&mp) {
            return Err(bad(format!(
                "the repository {} is inside it; the mount would hide the repository from snapback itself. Choose another directory.",
                repo.display()
            )));
        }
    }
    if is_mount_point(&mp) {
        return Err(bad(
            "something is already mounted there; unmount it first (`snapback umount`)".into(),
        ));
    }
    Ok(mp)
}

/// Whether `/proc/self/mountinfo` lists `path` as a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts a snapback mount with `fusermount3 -u` (`-z`: lazily, even with
/// files still open), falling back to `umount`.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<(), MountError> {
    if !is_mount_point(mountpoint) {
        return Err(MountError::Unmount {
            mountpoint: mountpoint.to_path_buf(),
            message: "nothing is mounted there".into(),
        });
    }
    let mut errors: Vec<String> = Vec::new();
    // Each tool names itself ("fusermount3: failed to unmount …"): keep one
    // name per message, not "fusermount3: fusermount3: …".
    let mut note = |tool: &str, text: String| {
        let text = text.trim();
        let text = text.strip_prefix(&format!("{tool}: ")).unwrap_or(text);
        errors.push(format!("{tool}: {text}"));
    };
    let mut fm = Command::new("fusermount3");
    fm.arg("-u");
    if lazy {
        fm.arg("-z");
    }
    fm.arg("--").arg(mountpoint);
    match fm.output() {
        Ok(o) if o.status.success() => return Ok(()),
        Ok(o) => note(
            "fusermount3",
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Err(e) => note("fusermount3", e.to_string()),
    }
    let mut um = Command::new("umount");
    if lazy {
        um.arg("-l");
    }
    um.arg("--").arg(mountpoint);
    match um.output() {
        Ok(o) if o.status.success() => return Ok(()),
        Ok(o) => note("umount", String::from_utf8_lossy(&o.stderr).into_owned()),
        Err(e) => note("umount", e.to_string()),
    }
    let busy = errors.iter().any(|e| e.contains("busy"));
    Err(MountError::Unmount {
        mountpoint: mountpoint.to_path_buf(),
        message: format!(
            "{}{}",
            errors.join("; "),
            if busy && !lazy {
                " (files are still open there: close them, or use --lazy to detach now)"
            } else {
                ""
            }
        ),
    })
}

/// Reads `path` on another thread, waiting at most `timeout`. A read stuck
/// in the kernel leaves its thread behind; `busy` keeps it to one such.
fn probe_read(path: &Path, timeout: Duration, busy: &Arc<AtomicBool>) -> Result<(), String> {
    if busy.swap(true, Ordering::AcqRel) {
        return Err("the previous health read has not returned".into());
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let p = path.to_path_buf();
    let b = busy.clone();
    let spawned = std::thread::Builder::new()
        .name("snapback-health-read".into())
        .spawn(move || {
            let r = std::fs::read(&p);
            b.store(false, Ordering::Release);
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        busy.store(false, Ordering::Release);
        return Err(format!("cannot start the health read: {e}"));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(b)) if !b.is_empty() => Ok(()),
        Ok(Ok(_)) => Err(format!("{} read back empty", path.display())),
        Ok(Err(e)) => Err(format!("{}: {e}", path.display())),
        Err(_) => Err(format!(
            "reading {} took longer than {:?}",
            path.display(),
            timeout
        )),
    }
}

/// The FUSE connection number of a mount (the minor of its device), for
/// /sys/fs/fuse/connections/<n>/abort.
fn fuse_connection(mountpoint: &Path, timeout: Duration) -> Option<u64> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let p = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .spawn(move || {
            let _ = tx.send(std::fs::metadata(&p).map(|m| m.dev()));
        })
        .ok()?;
    let dev = rx.recv_timeout(timeout).ok()?.ok()?;
    Some(((dev >> 12) & 0xffff_ff00) | (dev & 0xff))
}

/// Mounts and serves until SIGINT or SIGTERM (which unmount) or until the
/// file system is unmounted from outside (`snapback umount`).
pub fn run(repo: Arc<Repository>, opts: MountOptions) -> Result<(), MountError> {
    let mountpoint = check_mountpoint(&opts.mountpoint, opts.repo_dir.as_deref())?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| MountError::io(&mountpoint, "cannot install signal handlers", e))?;
    let vfs = Vfs::new(repo, opts.view.clone(), opts.vfs.clone()).map_err(|e| {
        MountError::io(
            &mountpoint,
            "cannot read the repository",
            std::io::Error::other(e.to_string()),
        )
    })?;
    let vfs = Arc::new(vfs);
    let fs = SnapbackFs::new(vfs.clone(), opts.request_threads);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("snapback".into()),
        fuser::MountOption::Subtype("snapback".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoAtime,
        fuser::MountOption::DefaultPermissions,
    ];
    if opts.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    let session = fuser::spawn_mount(fs, &mountpoint, &config).map_err(|e| MountError::Mount {
        mountpoint: mountpoint.clone(),
        cause: e,
    })?;
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    let conn = fuse_connection(&mountpoint, opts.health_timeout);
    notify(&format!(
        "READY=1\nSTATUS=serving {} at {}",
        vfs.status_summary(),
        mountpoint.display()
    ));

    let stop = Arc::new(AtomicBool::new(false));
    if let Some(interval) = watchdog_interval() {
        let stop = stop.clone();
        let probe = mountpoint.join(STATUS_NAME);
        let timeout = opts.health_timeout.min(interval / 2);
        std::thread::Builder::new()
            .name("snapback-health".into())
            .spawn(move || health_loop(&probe, interval / 3, timeout, &stop))
            .map_err(|e| MountError::io(&mountpoint, "cannot start the health thread", e))?;
    }

    let mut signalled = None;
    while !session.guard.is_finished() {
        if let Some(sig) = signals.pending().next() {
            signalled = Some(sig);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Release);
    let Some(sig) = signalled else {
        tracing::info!(mountpoint = %mountpoint.display(), "unmounted from outside; exiting");
        leave(session);
        return Ok(());
    };
    notify("STOPPING=1");
    tracing::info!(signal = sig, mountpoint = %mountpoint.display(), "unmounting");
    if is_mount_point(&mountpoint) {
        if let Err(e) = unmount(&mountpoint, false) {
            tracing::info!(error = %e, "busy; unmounting lazily");
            if let Err(e) = unmount(&mountpoint, true) {
                // Unmounted meanwhile by someone else is fine.
                if is_mount_point(&mountpoint) {
                    return Err(e);
                }
            }
        }
    }
    let until = Instant::now() + opts.unmount_grace;
    while !session.guard.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !session.guard.is_finished() {
        // Files were still open on the detached mount. Abort the connection
        // so their readers get an error instead of keeping us alive.
        if let Some(n) = conn {
            let p = format!("/sys/fs/fuse/connections/{n}/abort");
            match std::fs::write(&p, b"1") {
                Ok(()) => tracing::info!(connection = n, "aborted the FUSE connection"),
                Err(e) => tracing::warn!(error = %e, path = %p, "cannot abort the FUSE connection"),
            }
        }
        let until = Instant::now() + Duration::from_secs(2);
        while !session.guard.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    leave(session);
    Ok(())
}

/// Lets go of the session without dropping fuser's mount handle. That
/// drop unmounts the mount point *by its path* whenever the connection
/// still looks mounted, which it does for a while after an unmount; by
/// then a new mount may sit at the same path (`snapback umount` and an
/// immediate `snapback mount`), and it would be unmounted. The file system
/// is already unmounted here, and the process exit closes /dev/fuse, which
/// ends whatever is left of the session.
fn leave(session: fuser::BackgroundSession) {
    std::mem::forget(session);
}

fn health_loop(probe: &Path, every: Duration, timeout: Duration, stop: &AtomicBool) {
    let busy = Arc::new(AtomicBool::new(false));
    let mut healthy = true;
    while !stop.load(Ordering::Acquire) {
        match probe_read(probe, timeout, &busy) {
            Ok(()) => {
                if !healthy {
                    tracing::info!("health read through the mount succeeds again");
                }
                healthy = true;
                notify("WATCHDOG=1");
            }
            Err(e) => {
                healthy = false;
                tracing::warn!(error = %e, "health read through the mount failed; not sending WATCHDOG=1");
            }
        }
        let until = Instant::now() + every;
        while Instant::now() < until && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(100).min(every));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmounting_what_is_not_mounted_says_so_once_without_suggesting_lazy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = unmount(dir.path(), false)
            .expect_err("not mounted")
            .to_string();
        assert!(e.contains("nothing is mounted there"), "{e}");
        assert!(!e.contains("--lazy"), "{e}");
        assert_eq!(e.matches("cannot unmount").count(), 1, "{e}");
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/mnt/with\\040space"), "/mnt/with space");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/trailing\\"), "/trailing\\");
    }

    #[test]
    fn mount_point_inside_or_around_the_repository_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let inside = repo.join("data");
        std::fs::create_dir_all(&inside).expect("mkdir");
        let e = check_mountpoint(&inside, Some(&repo)).expect_err("inside");
        assert!(e.to_string().contains("inside the repository"), "{e}");
        let e = check_mountpoint(dir.path(), Some(&repo)).expect_err("around");
        assert!(e.to_string().contains("is inside it"), "{e}");
        let e = check_mountpoint(&repo, Some(&repo)).expect_err("same");
        assert!(e.to_string().contains("inside the repository"), "{e}");
        let other = dir.path().join("mnt");
        std::fs::create_dir(&other).expect("mkdir");
        assert!(check_mountpoint(&other, Some(&repo)).is_ok());
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        assert!(check_mountpoint(&file, None).is_err(), "not a directory");
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(&other));
    }
}
