//! Real FUSE mounts, each behind a guard that unmounts (lazily) and reaps
//! the mount process, whatever the test does. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Fails the test unless /dev/fuse and fusermount3 are there: the mount
/// tests mount for real, they never skip.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests mount for real"
    );
    let ok = Command::new("fusermount3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "fusermount3 is missing: apt-get install -y fuse3");
}

/// True when `p` is a mount point (it is listed in /proc/self/mountinfo).
pub fn is_mounted(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let want = p.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(want.as_ref()))
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A mount point, unmounted (`fusermount3 -u -z`) on drop, with its
/// foreground mount process, if any, reaped.
pub struct Mount {
    pub mp: PathBuf,
    pub child: Option<Child>,
}

impl Mount {
    /// Starts `cmd` (a `snapback mount … MP` in the foreground) and waits,
    /// up to 20 s, until `mp` is mounted. Fails the test, with the process's
    /// stderr, when it exits first.
    pub fn start(mut cmd: Command, mp: PathBuf) -> Mount {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn snapback mount");
        let mut m = Mount {
            mp,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&m.mp) {
            if let Some(c) = m.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = c.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    panic!("snapback mount exited ({status}) before mounting: {err}");
                }
            }
            assert!(Instant::now() < deadline, "not mounted within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    /// A guard for a mount made by someone else (`mount --daemon`): it only
    /// unmounts.
    pub fn guard(mp: PathBuf) -> Mount {
        Mount { mp, child: None }
    }

    /// A path inside the mount (`rel` may start with `/`).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mp.join(rel.trim_start_matches('/'))
    }

    /// The process id of the foreground mount process.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("a foreground mount")
    }

    /// Waits for the mount process to exit; None if it did not in time (or
    /// there is no process).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z", "-q", "--"])
            .arg(&self.mp)
            .stderr(Stdio::null())
            .status();
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            if let Some(c) = self.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone_and_the_root_is_a_mount_point() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("/plain"), "/plain");
        assert!(is_mounted(Path::new("/")));
        assert!(!is_mounted(Path::new("/surely/not/a/mount/point")));
    }
}
