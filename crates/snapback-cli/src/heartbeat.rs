//! The heartbeat: one GET to a dead man's switch (healthchecks and the like)
//! after a committed snapshot.
//!
//! In-process, over `std::net::TcpStream` (and rustls for https, the TLS
//! stack the S3 backend already links): the URL carries the check's token,
//! so it must never be on a command line where `ps` shows it, and no child
//! process inherits the passphrase. The whole call, retries included, is
//! bounded by [`TOTAL`]: a hanging server never holds a snapshot job.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most time a heartbeat may take, every attempt included.
pub const TOTAL: Duration = Duration::from_secs(5);
/// Attempts while time is left (a refused connection or a 5xx is retried).
const ATTEMPTS: u32 = 3;
const PAUSE: Duration = Duration::from_millis(300);

/// A parsed heartbeat URL. Its Display never shows the path or query, which
/// hold the check's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query, as given (at least "/").
    path: String,
    /// `user:password` of the URL, sent as HTTP basic authentication.
    userinfo: Option<String>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}/…", self.host_for_header(), self.port)
    }
}

impl Target {
    /// Parses `http://HOST[:PORT][/PATH]` or `https://…`. The message of an
    /// error never repeats the URL (it may hold a token).
    pub fn parse(url: &str) -> Result<Target, String> {
        if url.starts_with('-') {
            return Err(
                "the heartbeat URL starts with '-': it is not a URL (an option given as the URL?); give http://… or https://…".into(),
            );
        }
        let (tls, rest) = if let Some(r) = strip_prefix_ci(url, "https://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(url, "http://") {
            (false, r)
        } else {
            return Err("the heartbeat URL must start with http:// or https://".into());
        };
        if url.chars().any(|c| c.is_control() || c == ' ') {
            return Err(
                "the heartbeat URL contains spaces or control characters: percent-encode them"
                    .into(),
            );
        }
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = path.split('#').next().unwrap_or("");
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or("the heartbeat URL has an unclosed '[' in its host")?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err("the heartbeat URL has no host".into());
        }
        let port = match port {
            None | Some("") => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("the heartbeat URL's port is not a number from 1 to 65535")?,
        };
        Ok(Target {
            tls,
            host,
            port,
            path,
            userinfo,
        })
    }

    fn host_for_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    fn request(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        let host = if self.port == default_port {
            self.host_for_header()
        } else {
            format!("{}:{}", self.host_for_header(), self.port)
        };
        let auth = self
            .userinfo
            .as_deref()
            .map(|u| format!("Authorization: Basic {}\r\n", base64(u.as_bytes())))
            .unwrap_or_default();
        format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: snapback/{}\r\nAccept: */*\r\n{auth}Connection: close\r\n\r\n",
            self.path,
            env!("CARGO_PKG_VERSION")
        )
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Why one attempt failed, and whether another may help.
struct Failure {
    msg: String,
    retry: bool,
}

/// Calls the heartbeat URL: success is an HTTP status below 400 (as curl
/// -f). Bounded by [`TOTAL`] in all, name resolution included.
pub fn send(target: &Target) -> Result<(), String> {
    let deadline = Instant::now() + TOTAL;
    let (tx, rx) = mpsc::channel();
    let t = target.clone();
    // A thread, so that even a name lookup that hangs cannot outlive the
    // deadline; if it does, it is left behind and dies with the process.
    std::thread::spawn(move || {
        let _ = tx.send(attempts(&t, deadline));
    });
    match rx.recv_timeout(TOTAL + Duration::from_millis(200)) {
        Ok(r) => r,
        Err(_) => Err(format!("{target}: no answer within {} s", TOTAL.as_secs())),
    }
}

fn attempts(t: &Target, deadline: Instant) -> Result<(), String> {
    let mut last = String::new();
    for n in 0..ATTEMPTS {
        if n > 0 {
            if Instant::now() + PAUSE >= deadline {
                break;
            }
            std::thread::sleep(PAUSE);
        }
        match once(t, deadline) {
            Ok(()) => return Ok(()),
            Err(f) => {
                tracing::debug!("heartbeat attempt {} failed: {}", n + 1, f.msg);
                last = f.msg;
                if !f.retry {
                    break;
                }
            }
        }
    }
    Err(last)
}

fn remaining(deadline: Instant) -> Result<Duration, Failure> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or(Failure {
            msg: format!("no answer within {} s", TOTAL.as_secs()),
            retry: false,
        })
}

fn once(t: &Target, deadline: Instant) -> Result<(), Failure> {
    let io = |what: &str, e: std::io::Error| {
        let timed_out = matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        );
        Failure {
            msg: if timed_out {
                format!("{what} {t}: no answer within {} s", TOTAL.as_secs())
            } else {
                format!("{what} {t}: {e}")
            },
            retry: !timed_out,
        }
    };
    let addrs: Vec<SocketAddr> = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| io("cannot resolve", e))?
        .collect();
    let mut stream = None;
    let mut err = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, remaining(deadline)?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => err = Some(e),
        }
    }
    let stream = match (stream, err) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(io("cannot connect to", e)),
        (None, None) => {
            return Err(Failure {
                msg: format!("cannot resolve {t}: no address"),
                retry: false,
            })
        }
    };
    let left = remaining(deadline)?;
    stream
        .set_read_timeout(Some(left))
        .and_then(|()| stream.set_write_timeout(Some(left)))
        .map_err(|e| io("cannot talk to", e))?;
    let status_line = if t.tls {
        let mut s = tls_stream(t, stream)?;
        exchange(&mut s, t, deadline)
    } else {
        let mut s = stream;
        exchange(&mut s, t, deadline)
    }
    .map_err(|e| io("no HTTP answer from", e))?;
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .ok_or_else(|| Failure {
            msg: format!("{t} did not answer HTTP"),
            retry: false,
        })?;
    match code {
        100..=399 => Ok(()),
        _ => Err(Failure {
            msg: format!("{t} answered HTTP {code}"),
            retry: code >= 500,
        }),
    }
}

/// Writes the request and reads the status line (the body is not needed).
fn exchange(s: &mut (impl Read + Write), t: &Target, deadline: Instant) -> std::io::Result<String> {
    s.write_all(t.request().as_bytes())?;
    s.flush()?;
    let mut line = Vec::new();
    let mut buf = [0u8; 512];
    while !line.windows(2).any(|w| w == b"\r\n") && line.len() < 8192 {
        if Instant::now() >= deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
    }
    let end = line
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(line.len());
    Ok(String::from_utf8_lossy(&line[..end]).into_owned())
}

fn tls_stream(
    t: &Target,
    tcp: TcpStream,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, Failure> {
    let fail = |msg: String| Failure { msg, retry: false };
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for c in found.certs {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(fail(
            "no CA certificates found on this system for https (install the ca-certificates package, or set SSL_CERT_FILE)".into(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(t.host.clone())
        .map_err(|e| fail(format!("{t}: not a valid TLS server name: {e}")))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| fail(format!("TLS setup for {t}: {e}")))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_url_parsing_keeps_path_and_query_and_hides_them() {
        let t = Target::parse("https://hc.example.com/ping/abc?rid=1#x").expect("parse");
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (true, "hc.example.com", 443, "/ping/abc?rid=1")
        );
        assert!(!t.to_string().contains("abc"));
        let t = Target::parse("http://u:p@[::1]:8080").expect("parse");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8080, "/")
        );
        assert!(t.request().contains("Host: [::1]:8080\r\n"));
        assert!(t.request().contains("Authorization: Basic dTpw\r\n"));
        for bad in [
            "-K/etc/passwd",
            "ftp://x/",
            "http://",
            "http://h:0/",
            "http://h:x/",
            "http://h/a b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn basic_auth_encoding_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
