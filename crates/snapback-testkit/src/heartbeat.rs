//! A heartbeat endpoint: an HTTP server on 127.0.0.1 that records every
//! request it gets and answers with a status, or never answers. It serves
//! a bounded number of connections, so a test can never hang on it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the endpoint does with each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers with this status.
    Answer(u16),
    /// Accepts the connection, reads the request, and never answers.
    Hang,
}

/// A running endpoint; it stops with the test process.
pub struct Endpoint {
    base: String,
    seen: Arc<Mutex<Vec<String>>>,
}

/// How many connections an endpoint serves before it stops.
const CONNECTIONS: usize = 20;

impl Endpoint {
    pub fn start(mode: Mode) -> Endpoint {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let base = format!("http://{}", l.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(vec![]));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            let mut held = vec![];
            for s in l.incoming().take(CONNECTIONS) {
                let Ok(mut s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                if let Ok(mut seen) = s2.lock() {
                    seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                match mode {
                    Mode::Answer(code) => {
                        let _ = s.write_all(
                            format!(
                                "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK"
                            )
                            .as_bytes(),
                        );
                    }
                    // Kept open: the client must give up by itself.
                    Mode::Hang => held.push(s),
                }
            }
        });
        Endpoint { base, seen }
    }

    /// An endpoint that answers 200 to every request.
    pub fn ok() -> Endpoint {
        Endpoint::start(Mode::Answer(200))
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `path` (which starts with `/`) on this endpoint.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The requests received so far (request line, headers and what of the
    /// body came in the first read).
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// How many requests came in so far.
    pub fn hits(&self) -> usize {
        self.requests().len()
    }
}

/// A URL on 127.0.0.1 where nothing listens (the port was just freed).
pub fn dead_url(path: &str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    format!("http://127.0.0.1:{port}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_records_each_request_and_answers_its_status() {
        let e = Endpoint::start(Mode::Answer(503));
        let mut s =
            std::net::TcpStream::connect(e.base().trim_start_matches("http://")).expect("connect");
        s.write_all(b"GET /ping/x HTTP/1.1\r\nHost: h\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert_eq!(e.hits(), 1);
        assert!(e.requests()[0].starts_with("GET /ping/x "));
    }
}
