//! mount, umount.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use snapback_mount::{MountOptions, View};

use crate::cli::{absolute, Global};
use crate::exit;
use crate::repo_url::{open_repo, parse, RepoUrl};

#[derive(Debug, Args)]
pub struct MountArgs {
    /// With SNAP (an id or unique prefix, 'latest', or '@TIME'): that
    /// snapshot at the root. Without: every snapshot, under snapshots/,
    /// by-path/ and latest.
    #[arg(value_name = "[SNAP] MOUNTPOINT", num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    /// With SNAP: choose among snapshots holding this file or directory.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// In-memory chunk cache size (e.g. 256M, 1G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub memory_cache_size: u64,
    /// Keep fetched chunks in this directory too, re-verified when read
    /// (default: `[cache] dir` of snapback.toml, if set).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Size limit of the disk cache, e.g. 10G (default: `[cache] size` of
    /// snapback.toml, else 1G).
    #[arg(long, value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// How long one read may take before it fails with EIO (a duration,
    /// or seconds).
    #[arg(long, value_name = "DURATION", default_value = "30", value_parser = crate::duration::parse_seconds_or_duration)]
    pub read_timeout: Duration,
    /// How long between looks for new snapshots, on directory access (a
    /// duration, or seconds).
    #[arg(long, value_name = "DURATION", default_value = "5", value_parser = crate::duration::parse_seconds_or_duration)]
    pub refresh_interval: Duration,
    /// Largest read-ahead window for sequential reads (0 disables it).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub readahead: u64,
    /// Read up to this many bytes of a pack at once to bring the chunks
    /// that follow a needed one along (fewer requests, more bytes): on every
    /// read for S3 repositories (default 512K), on scans for local ones
    /// (default 64K); 0 reads one chunk per request.
    #[arg(long, value_parser = parse_size)]
    pub fetch_window: Option<u64>,
    /// Threads fetching chunks from the repository.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub fetch_threads: u16,
    /// Threads answering file system requests.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub request_threads: u16,
    /// Let other users use the mount (non-root needs user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Run in the background once mounted (for systemd, use Type=notify
    /// without --daemon instead; see docs/systemd/snapback-mount.service).
    #[arg(long)]
    pub daemon: bool,
    /// Append the mount's log to this file (created 0600) instead of
    /// stderr. With --daemon, the log goes here, else to the journal when
    /// run by systemd, else nowhere once the mount is running.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Accepted as on every reading command; the mount takes no repository
    /// lock (it works from a read-only repository).
    #[arg(long)]
    pub no_lock: bool,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Where a snapback file system is mounted.
    pub mountpoint: PathBuf,
    /// Detach now even if files are open (they are released when closed).
    #[arg(long, short = 'z')]
    pub lazy: bool,
}

/// "256M" → 268435456. Suffixes K, M, G, T (powers of 1024), optional "iB"/"B".
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size; write it like 4096, 512K, 256M or 2G"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn positive(name: &str, v: Duration) -> anyhow::Result<Duration> {
    if v.is_zero() || v.as_secs() >= 10_000_000 {
        return Err(crate::Usage(format!(
            "--{name} must be more than 0 and less than 10000000s, not {v:?}"
        ))
        .into());
    }
    Ok(v)
}

pub fn mount(g: &Global, cfg: &crate::config::Config, a: MountArgs) -> anyhow::Result<u8> {
    if a.daemon {
        return daemonize(g, a.log_file.as_deref());
    }
    if let Some(f) = &a.log_file {
        crate::output::log_to_file(f)?;
    }
    let (snap, mountpoint) = match a.args.as_slice() {
        [m] => (None, m.clone()),
        [s, m] => (Some(s.clone()), m.clone()),
        _ => bail!("give MOUNTPOINT, or SNAP MOUNTPOINT"),
    };
    let mountpoint = absolute(std::path::Path::new(&mountpoint));
    let url = g.repo.as_deref().map(parse).transpose()?;
    let repo_dir = match &url {
        Some(RepoUrl::Local(p)) => Some(absolute(p)),
        _ => None,
    };
    let s3 = matches!(url, Some(RepoUrl::S3 { .. }));
    let fetch_window = a
        .fetch_window
        .unwrap_or(if s3 { 512 << 10 } else { 64 << 10 });
    // Refuse a bad mount point before touching the repository.
    snapback_mount::check_mountpoint(&mountpoint, repo_dir.as_deref())?;
    // Mounting over files hides them until the unmount: allowed (as mount(8)
    // does), but never in silence.
    if std::fs::read_dir(&mountpoint).is_ok_and(|mut d| d.next().is_some()) {
        eprintln!(
            "warning: {} is not empty: its files are hidden while the snapshots are mounted over them (they come back after `snapback umount`)",
            mountpoint.display()
        );
    }
    let repo = open_repo(g)?;
    let view = match snap {
        None => View::All,
        Some(sel) => {
            let path = a.path.as_ref().map(|p| {
                crate::config::canonical_path(p)
                    .to_string_lossy()
                    .into_owned()
            });
            View::One(crate::cmd_basic::resolve(g, &repo, &sel, path.as_deref())?)
        }
    };
    let mut opts = MountOptions::new(mountpoint.clone(), view);
    opts.repo_dir = repo_dir;
    opts.allow_other = a.allow_other;
    opts.request_threads = a.request_threads.into();
    opts.vfs.mem_cache_bytes = a.memory_cache_size;
    let cache_size = match (a.cache_size, cfg.cache.size.as_deref()) {
        (Some(n), _) => n,
        (None, Some(s)) => {
            parse_size(s).map_err(|e| anyhow::anyhow!("[cache] size in the config file: {e}"))?
        }
        (None, None) => 1 << 30,
    };
    let cache_dir = a.cache_dir.or_else(|| cfg.cache.dir.clone());
    opts.vfs.disk_cache = cache_dir.map(|d| (absolute(&d), cache_size));
    opts.vfs.read_timeout = positive("read-timeout", a.read_timeout)?;
    opts.vfs.refresh_ttl = positive("refresh-interval", a.refresh_interval)?;
    opts.vfs.readahead_max = a.readahead;
    opts.vfs.readahead_initial = opts.vfs.readahead_initial.min(a.readahead);
    opts.vfs.fetch_threads = a.fetch_threads.into();
    opts.vfs.fetch_window = fetch_window;
    // Over S3 a request costs far more than its bytes: bring neighbours
    // along on every read. Locally only on scans.
    opts.vfs.fetch_window_always = s3;
    if !g.quiet && !g.json {
        eprintln!(
            "mounting at {} (Ctrl-C or `snapback umount {}` to unmount)",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    snapback_mount::run(Arc::new(repo), opts)
        .with_context(|| format!("the mount at {} failed", mountpoint.display()))?;
    Ok(exit::OK)
}

/// Runs this same command without --daemon as a child in its own process
/// group, and returns once the child reports READY=1 over a private
/// notification socket (the same sd_notify protocol systemd uses).
/// Whether stderr is the systemd journal (`JOURNAL_STREAM` names its
/// device and inode).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(js) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = js.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

/// The socket the background mount says READY=1 on: in a fresh private
/// directory (0700, a random name, created by tempfile), so no other local
/// user can guess its name, create it first or send to it. (It was
/// /tmp/snapback-mount-PID.sock.)
fn ready_socket() -> anyhow::Result<(
    tempfile::TempDir,
    std::path::PathBuf,
    std::os::unix::net::UnixDatagram,
)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("snapback-mount-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .context("cannot create a private temporary directory for the mount's readiness socket (check TMPDIR)")?;
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok((dir, path, sock))
}

/// Where the log of the background mount goes, and the child's stderr.
/// Its stderr must outlive this process: a pipe to us breaks when we exit.
/// With `--log-file` the log goes there and stderr (a pipe to us) carries
/// only errors before it is ready; under systemd the child writes to the
/// journal directly; otherwise its log reaches us until it is ready and is
/// dropped after that (the writer ignores the broken pipe).
fn daemonize(g: &Global, log_file: Option<&std::path::Path>) -> anyhow::Result<u8> {
    let journal = log_file.is_none() && stderr_is_journal();
    let exe = std::env::current_exe().context("cannot find the snapback executable")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--daemon")
        .collect();
    // Kept until this function returns (the directory is removed then).
    let (_sock_dir, sock_path, sock) = ready_socket()?;
    // The child has no terminal: a passphrase that would be asked for is
    // asked for here and handed over in its environment (readable only by
    // this user), never on its command line.
    let mut pass_env = None;
    if !crate::password::given(g) && crate::repo_url::is_encrypted(g)? {
        pass_env = Some(crate::password::current(g)?);
    }
    let mut child = {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(exe);
        if let Some(p) = &pass_env {
            cmd.env(crate::password::ENV, p.as_str());
        }
        cmd.args(&args)
            .env("NOTIFY_SOCKET", &sock_path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if journal {
                Stdio::inherit()
            } else {
                Stdio::piped()
            })
            .process_group(0)
            .spawn()
            .context("cannot start the background mount")?
    };
    let stderr = Arc::new(std::sync::Mutex::new(Vec::new()));
    if let Some(mut e) = child.stderr.take() {
        let buf = stderr.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = e.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut b) = buf.lock() {
                    if b.len() < 1 << 16 {
                        b.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut msg = [0u8; 4096];
    let result = loop {
        if let Ok(n) = sock.recv(&mut msg) {
            if String::from_utf8_lossy(&msg[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break Ok(());
            }
        }
        if let Some(status) = child.try_wait()? {
            std::thread::sleep(Duration::from_millis(100));
            let err = stderr
                .lock()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let err = if journal {
                "(its messages are in the journal)".to_string()
            } else {
                err.trim_end().to_string()
            };
            break Err(anyhow::anyhow!(
                "the background mount exited ({status}) before it was ready:\n{err}"
            ));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the background mount (pid {}) did not become ready within 120 s",
                child.id()
            ));
        }
    };
    let _ = std::fs::remove_file(&sock_path);
    result?;
    if !g.quiet {
        let log = match log_file {
            Some(f) => format!("its log goes to {}", f.display()),
            None if journal => "its log goes to the journal".to_string(),
            None => "no log is kept (give --log-file FILE for one)".to_string(),
        };
        eprintln!(
            "mounted in the background (pid {}); {log}; unmount with `snapback umount MOUNTPOINT`",
            child.id()
        );
    }
    Ok(exit::OK)
}

pub fn umount(g: &Global, a: UmountArgs) -> anyhow::Result<u8> {
    let mp = absolute(&a.mountpoint);
    snapback_mount::unmount(&mp, a.lazy)?;
    if !g.quiet && !g.json {
        eprintln!("unmounted {}", mp.display());
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}

#[cfg(test)]
mod ready_socket_tests {
    #[test]
    fn mount_readiness_socket_is_in_a_private_directory() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let (dir, path, sock) = super::ready_socket().expect("socket");
        let meta = std::fs::metadata(dir.path()).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700, "private");
        assert_eq!(meta.uid(), nix_uid(), "owned by this user");
        assert!(path.starts_with(dir.path()));
        let name = dir.path().to_string_lossy().into_owned();
        assert!(
            !name.contains(&std::process::id().to_string()),
            "not named after the pid: {name}"
        );
        let (other, _, _) = super::ready_socket().expect("socket");
        assert_ne!(other.path(), dir.path(), "a new directory each time");
        // It works: a datagram sent to it arrives.
        let tx = std::os::unix::net::UnixDatagram::unbound().expect("unbound");
        tx.send_to(b"READY=1", &path).expect("send");
        let mut buf = [0u8; 16];
        let n = sock.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let gone = dir.path().to_path_buf();
        drop(dir);
        assert!(!gone.exists(), "removed when done");
    }

    fn nix_uid() -> u32 {
        use std::os::unix::fs::MetadataExt;
        // The uid of a file this process just created.
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        f.as_file().metadata().expect("stat").uid()
    }
}
