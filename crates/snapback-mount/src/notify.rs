//! systemd notifications (sd_notify) over the `NOTIFY_SOCKET` datagram
//! socket, without libsystemd.
//!
//! `READY=1` is sent once the file system is mounted, `WATCHDOG=1` only
//! after a real read through the mount succeeded (see `daemon`), and
//! `STOPPING=1` when a signal asks us to stop. Without `NOTIFY_SOCKET`
//! (not run by systemd) every call does nothing.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification. Returns whether it was sent; failures are logged
/// at debug level only, because a missing listener must not stop a mount.
/// It never blocks: a listener that stops reading (its queue full) loses
/// the notification, and the caller goes on (a watchdog that then misses
/// its pings restarts us, which is what it is for).
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    send(&path, state)
}

/// Sends `state` to the socket `path` (`@name`: an abstract one) without
/// blocking; see `notify`.
fn send(path: &std::ffi::OsStr, state: &str) -> bool {
    let r = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        let bytes = path.as_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), path)?;
        }
        Ok(())
    })();
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, state, "sd_notify failed");
            false
        }
    }
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`), if it is meant
/// for this process (`WATCHDOG_PID`, when set, is our pid).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the environment, so that tests running in parallel
    // threads do not race on NOTIFY_SOCKET.
    #[test]
    fn notify_sends_datagrams_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&p).expect("bind");
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        std::env::set_var("NOTIFY_SOCKET", &p);
        assert!(notify("READY=1"));
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("snapback-test-{}", std::process::id());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let abs = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        abs.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
        assert!(notify("WATCHDOG=1"));
        let n = abs.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1");

        std::env::set_var("WATCHDOG_USEC", "3000000");
        std::env::remove_var("WATCHDOG_PID");
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(3)));
        std::env::set_var("WATCHDOG_PID", "1");
        assert_eq!(watchdog_interval(), None, "meant for another process");
        std::env::remove_var("WATCHDOG_PID");
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(!notify("READY=1"), "no socket, nothing sent");
    }

    #[test]
    fn a_listener_that_stops_reading_never_blocks_the_sender() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("notify.sock");
        // Bound, never read: its queue fills after some hundred datagrams
        // (net.unix.max_dgram_qlen), and a blocking send would then wait
        // for ever.
        let _listener = UnixDatagram::bind(&p).expect("bind");
        let (tx, rx) = std::sync::mpsc::channel();
        let path = p.clone().into_os_string();
        std::thread::spawn(move || {
            let sent = (0..5_000).filter(|_| send(&path, "WATCHDOG=1")).count();
            let _ = tx.send(sent);
        });
        let sent = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("5,000 notifications to a listener that does not read return within 30 s");
        assert!(sent > 0, "the first ones fit in the queue and are sent");
        assert!(
            sent < 5_000,
            "once the queue is full a notification is reported as not sent"
        );
    }
}
