//! A fault-injecting HTTP/1.1 proxy for tests, std only.
//!
//! It listens on 127.0.0.1, forwards each request to an upstream S3 server
//! (plain HTTP), and, for requests that match a [`Rule`], injects a
//! [`Fault`]: an error status, a delay, a trickled, truncated, shortened or
//! altered body, a connection reset in the middle of an upload, a response
//! dropped after the server acted, or a 200 for an upload it never forwarded.
//!
//! The proxy leaves the `Host` header alone, so SigV4 signatures made for
//! the proxy's address still verify upstream. Every socket has read and
//! write timeouts, and every thread ends when its client goes away or the
//! proxy is dropped, so a test can never hang on it.
//!
//! ```no_run
//! # use snapback_s3::testing::fault_proxy::{FaultProxy, Fault, Match};
//! let proxy = FaultProxy::start("127.0.0.1:9000").expect("proxy");
//! proxy.inject(Match::method("PUT"), Fault::status(503, "SlowDown"), 2);
//! // point the store's endpoint at proxy.endpoint() ...
//! ```
//!
//! It also counts: [`FaultProxy::counts`] gives the requests seen by kind
//! ([`request_kind`]: PUT, POST, GET, LIST, HEAD, DELETE), and
//! [`FaultProxy::log_to`] writes one JSON line per answered request (time,
//! method, target, status, bytes each way), which is how the benchmarks
//! count what a tool asks of S3 (`snapback-devtools s3-proxy`).
//!
//! Used by `crates/snapback-s3/tests` and, through the `fault-proxy`
//! feature, by end-to-end tests elsewhere.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest a socket read or write may block.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a trickled body may take before the proxy gives up on it.
const TRICKLE_LIMIT: Duration = Duration::from_secs(60);
/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 << 10;

/// What the proxy does to a matching request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an S3 XML error body, without forwarding.
    Status { status: u16, code: String },
    /// Forward, then wait this long before answering.
    Delay(Duration),
    /// Forward, then send the response body `chunk` bytes at a time, one
    /// chunk every `every`.
    Trickle { chunk: usize, every: Duration },
    /// Read this many bytes of the request body, then close the connection
    /// (the kernel resets it: unread data is pending). Nothing is forwarded.
    ResetRequestBody { after: usize },
    /// Forward; answer with the full `Content-Length` but only `keep` body
    /// bytes, then close the connection.
    TruncateBody { keep: usize },
    /// Forward; answer with a well-formed but shorter body: `keep` bytes and
    /// a matching `Content-Length` (a lying server).
    ShortenBody { keep: usize },
    /// Forward; flip one bit of the response body at offset `at`.
    FlipResponseByte { at: usize },
    /// Forward (the server acts: stores, deletes), then close the
    /// connection without answering.
    DropResponse,
    /// Answer `200 OK` with an empty body without forwarding: a PUT that
    /// "succeeded" but stored nothing.
    LieOk,
}

impl Fault {
    pub fn status(status: u16, code: &str) -> Fault {
        Fault::Status {
            status,
            code: code.to_string(),
        }
    }
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// HTTP method, e.g. `PUT`; `None` for any.
    pub method: Option<String>,
    /// A substring of the request target (path and query), e.g.
    /// `partNumber=` for UploadPart or `uploadId=` for multipart calls.
    pub target_contains: Option<String>,
    /// A substring that must not be in the target, e.g. `uploadId=` to keep
    /// multipart calls out of a `PUT` rule.
    pub target_lacks: Option<String>,
    /// A header the request must carry, e.g. `if-none-match`.
    pub has_header: Option<String>,
}

impl Match {
    pub fn any() -> Match {
        Match::default()
    }

    pub fn method(method: &str) -> Match {
        Match {
            method: Some(method.to_string()),
            ..Match::default()
        }
    }

    pub fn containing(mut self, s: &str) -> Match {
        self.target_contains = Some(s.to_string());
        self
    }

    pub fn lacking(mut self, s: &str) -> Match {
        self.target_lacks = Some(s.to_string());
        self
    }

    pub fn with_header(mut self, name: &str) -> Match {
        self.has_header = Some(name.to_string());
        self
    }

    fn matches(&self, method: &str, target: &str, headers: &[(String, String)]) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self
                .has_header
                .as_deref()
                .is_none_or(|h| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(h)))
            && self
                .target_contains
                .as_deref()
                .is_none_or(|s| target.contains(s))
            && self
                .target_lacks
                .as_deref()
                .is_none_or(|s| !target.contains(s))
    }
}

/// A fault, the requests it applies to, and how many more times it fires
/// (`None`: every time).
#[derive(Debug, Clone)]
pub struct Rule {
    pub when: Match,
    pub fault: Fault,
    pub times: Option<u32>,
}

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

/// The kind of an S3 request, from its method and path-style target
/// (`/bucket/key?query`, as the local server is addressed): `LIST` for a GET
/// of the bucket itself (ListObjects, ListObjectsV2, ListMultipartUploads) or
/// with a `list-type=` query; `GET`, `PUT` (objects and parts, copies
/// included), `POST` (multipart create and complete, DeleteObjects),
/// `HEAD`, `DELETE`; any other method as itself.
pub fn request_kind<'a>(method: &'a str, target: &str) -> &'a str {
    let path = target.split('?').next().unwrap_or("");
    let bucket_only = !path.trim_matches('/').contains('/');
    let query = target.split_once('?').map_or("", |(_, q)| q);
    match method {
        "GET" if bucket_only || query.contains("list-type=") => "LIST",
        other => other,
    }
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    log: Mutex<Option<Box<dyn Write + Send>>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The proxy. Dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 in front of `upstream`
    /// (`host:port`, or an `http://host:port` URL).
    pub fn start(upstream: &str) -> io::Result<FaultProxy> {
        let hostport = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream = hostport
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no upstream address"))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let sh = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || accept_loop(listener, upstream, sh))?;
        Ok(FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address to use as the S3 endpoint: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a rule that fires `times` times, then lets requests through.
    pub fn inject(&self, when: Match, fault: Fault, times: u32) {
        self.add_rule(Rule {
            when,
            fault,
            times: Some(times),
        });
    }

    /// Adds a rule that fires on every matching request.
    pub fn inject_always(&self, when: Match, fault: Fault) {
        self.add_rule(Rule {
            when,
            fault,
            times: None,
        });
    }

    pub fn add_rule(&self, rule: Rule) {
        lock(&self.shared.rules).push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// How many requests with this method were seen.
    pub fn count(&self, method: &str) -> usize {
        lock(&self.shared.seen)
            .iter()
            .filter(|s| s.method == method)
            .count()
    }

    /// How many times a fault was applied.
    pub fn faults_fired(&self) -> usize {
        lock(&self.shared.seen)
            .iter()
            .filter(|s| s.fault.is_some())
            .count()
    }

    /// The requests seen so far by kind ([`request_kind`]).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for s in lock(&self.shared.seen).iter() {
            *counts
                .entry(request_kind(&s.method, &s.target).to_string())
                .or_insert(0) += 1;
        }
        counts
    }

    /// From now on, writes one JSON line per answered request to `out`,
    /// flushed, once the server has answered and before the answer goes to
    /// the client (a client that has its answer finds its line): `{"t": unix seconds,
    /// "ms": time in the proxy, "kind", "method", "target", "status",
    /// "sent": request body bytes, "received": response body bytes,
    /// "fault": true if a fault was applied}`.
    pub fn log_to(&self, out: Box<dyn Write + Send>) {
        *lock(&self.shared.log) = Some(out);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                let sh = Arc::clone(&shared);
                let spawned = std::thread::Builder::new()
                    .name("fault-proxy-conn".into())
                    .spawn(move || {
                        let _ = serve(conn, upstream, &sh);
                    });
                if spawned.is_err() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A parsed request or response head.
struct Head {
    /// The first line, without CRLF.
    line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<usize> {
        self.get("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    fn is_chunked(&self) -> bool {
        self.get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// The head as bytes, leaving out `drop` headers and adding `extra`.
    fn encode(&self, drop: &[&str], extra: &[(&str, String)]) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.line);
        for (n, v) in &self.headers {
            if !drop.iter().any(|d| n.eq_ignore_ascii_case(d)) {
                out.push_str(&format!("{n}: {v}\r\n"));
            }
        }
        for (n, v) in extra {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// Reads a head; `None` on a clean end of stream before any byte.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    let mut total = 0;
    // Skip blank lines between messages.
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            return Ok(None);
        }
        total += n;
        if !line.trim().is_empty() {
            break;
        }
    }
    let first = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        total += n;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in head"));
        }
        if total > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head {
        line: first,
        headers,
    }))
}

/// Reads a chunked body; returns the decoded bytes.
fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size_part = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_part, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, up to a blank line.
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        line.clear();
        r.read_line(&mut line)?;
    }
}

fn error_response(status: u16, code: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        412 => "Precondition Failed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by fault proxy</Message><RequestId>fault-proxy</RequestId></Error>"
    );
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n\
         x-amz-request-id: fault-proxy\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The fault of the first rule that matches this request (each rule's
/// count taken down), with the request recorded as seen.
fn take_fault(shared: &Shared, method: &str, target: &str, head: &Head) -> Option<Fault> {
    let fault = {
        let mut rules = lock(&shared.rules);
        let mut hit = None;
        for rule in rules.iter_mut() {
            if rule.times != Some(0) && rule.when.matches(method, target, &head.headers) {
                if let Some(t) = rule.times.as_mut() {
                    *t -= 1;
                }
                hit = Some(rule.fault.clone());
                break;
            }
        }
        hit
    };
    lock(&shared.seen).push(Seen {
        method: method.to_string(),
        target: target.to_string(),
        fault: fault.clone(),
    });
    fault
}

/// What `serve` does after `response_fault`.
enum After {
    /// Send the (possibly changed) response.
    Send,
    /// The response was sent; read the next request.
    NextRequest,
    /// The connection is closed.
    Close,
}

/// The faults that act on the upstream's response: delay, flip, shorten,
/// truncate or trickle it, or drop the connection.
fn response_fault(
    writer: &mut TcpStream,
    shared: &Shared,
    fault: Option<&Fault>,
    resp_head: &Head,
    resp_body: &mut Vec<u8>,
    no_body: bool,
) -> io::Result<After> {
    let framing = ["content-length", "transfer-encoding", "connection"];
    match fault {
        Some(Fault::DropResponse) => {
            let _ = writer.shutdown(Shutdown::Both);
            return Ok(After::Close);
        }
        Some(Fault::Delay(d)) => {
            sleep_unless_stopped(*d, shared);
        }
        Some(Fault::FlipResponseByte { at }) => {
            if let Some(b) = resp_body.get_mut(*at) {
                *b ^= 0x01;
            }
        }
        Some(Fault::TruncateBody { keep }) if !no_body => {
            let full = resp_body.len();
            writer.write_all(&resp_head.encode(
                &framing,
                &[
                    ("Content-Length", full.to_string()),
                    ("Connection", "close".into()),
                ],
            ))?;
            writer.write_all(&resp_body[..(*keep).min(full)])?;
            writer.flush()?;
            let _ = writer.shutdown(Shutdown::Both);
            return Ok(After::Close);
        }
        Some(Fault::ShortenBody { keep }) if !no_body => {
            resp_body.truncate(*keep);
        }
        Some(Fault::Trickle { chunk, every }) if !no_body => {
            writer.write_all(
                &resp_head.encode(&framing, &[("Content-Length", resp_body.len().to_string())]),
            )?;
            let started = Instant::now();
            for piece in resp_body.chunks((*chunk).max(1)) {
                if shared.stop.load(Ordering::SeqCst) || started.elapsed() > TRICKLE_LIMIT {
                    let _ = writer.shutdown(Shutdown::Both);
                    return Ok(After::Close);
                }
                writer.write_all(piece)?;
                writer.flush()?;
                std::thread::sleep(*every);
            }
            return Ok(After::NextRequest);
        }
        _ => {}
    }
    Ok(After::Send)
}

/// Serves one client connection, request after request.
fn serve(client: TcpStream, upstream: SocketAddr, shared: &Shared) -> io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    client.set_nodelay(true)?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut writer = client;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let mut parts = head.line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();

        let fault = take_fault(shared, &method, &target, &head);

        let started = Instant::now();
        let body_len = head.content_length().unwrap_or(0);
        // A client that asks whether to send its body (Go's S3 SDK does for
        // large uploads) would otherwise wait its timeout (1 s) per upload.
        if head
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && !matches!(&fault, Some(Fault::Status { .. }))
        {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            writer.flush()?;
        }
        if let Some(Fault::ResetRequestBody { after }) = &fault {
            let mut buf = vec![0u8; (*after).min(body_len)];
            let _ = reader.read_exact(&mut buf);
            // Closing with unread data pending makes the kernel send RST.
            let _ = writer.shutdown(Shutdown::Both);
            return Ok(());
        }
        let body = if head.is_chunked() {
            read_chunked(&mut reader)?
        } else {
            let mut b = vec![0u8; body_len];
            reader.read_exact(&mut b)?;
            b
        };

        match &fault {
            Some(Fault::Status { status, code }) => {
                log_answer(
                    shared,
                    &method,
                    &target,
                    *status,
                    body.len(),
                    0,
                    true,
                    started,
                );
                writer.write_all(&error_response(*status, code))?;
                continue;
            }
            Some(Fault::LieOk) => {
                writer.write_all(
                    b"HTTP/1.1 200 OK\r\nETag: \"00000000000000000000000000000000\"\r\n\
                      x-amz-request-id: fault-proxy\r\nContent-Length: 0\r\n\r\n",
                )?;
                continue;
            }
            _ => {}
        }

        // Forward on a fresh upstream connection.
        let (resp_head, mut resp_body) = forward(upstream, &head, &body, &method)?;
        let no_body = method == "HEAD"
            || resp_head
                .line
                .split_whitespace()
                .nth(1)
                .is_some_and(|s| s == "204" || s == "304");
        match response_fault(
            &mut writer,
            shared,
            fault.as_ref(),
            &resp_head,
            &mut resp_body,
            no_body,
        )? {
            After::Send => {}
            After::NextRequest => continue,
            After::Close => return Ok(()),
        }
        let framing = ["content-length", "transfer-encoding", "connection"];
        let status = resp_head
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        log_answer(
            shared,
            &method,
            &target,
            status,
            body.len(),
            resp_body.len(),
            fault.is_some(),
            started,
        );
        if no_body {
            writer.write_all(&resp_head.encode(&["connection"], &[]))?;
        } else {
            writer.write_all(
                &resp_head.encode(&framing, &[("Content-Length", resp_body.len().to_string())]),
            )?;
            writer.write_all(&resp_body)?;
        }
        writer.flush()?;
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One line of the request log, if [`FaultProxy::log_to`] set one.
#[allow(clippy::too_many_arguments)]
fn log_answer(
    shared: &Shared,
    method: &str,
    target: &str,
    status: u16,
    sent: usize,
    received: usize,
    fault: bool,
    started: Instant,
) {
    let mut log = lock(&shared.log);
    let Some(out) = log.as_mut() else {
        return;
    };
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let line = format!(
        "{{\"t\":{t:.6},\"ms\":{:.3},\"kind\":{},\"method\":{},\"target\":{},\"status\":{status},\"sent\":{sent},\"received\":{received},\"fault\":{fault}}}\n",
        started.elapsed().as_secs_f64() * 1000.0,
        json_str(request_kind(method, target)),
        json_str(method),
        json_str(target),
    );
    // A log that cannot be written is dropped; the proxy goes on proxying.
    if out
        .write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        *log = None;
    }
}

fn sleep_unless_stopped(d: Duration, shared: &Shared) {
    let end = Instant::now() + d;
    while Instant::now() < end && !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10).min(end - Instant::now()));
    }
}

/// Sends one request upstream and reads the whole final response.
fn forward(
    upstream: SocketAddr,
    head: &Head,
    body: &[u8],
    method: &str,
) -> io::Result<(Head, Vec<u8>)> {
    let up = TcpStream::connect_timeout(&upstream, IO_TIMEOUT)?;
    up.set_read_timeout(Some(IO_TIMEOUT))?;
    up.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut up_w = up.try_clone()?;
    // The body is forwarded decoded, so the framing headers are rewritten;
    // neither is covered by the SigV4 signature.
    let req_head = head.encode(
        &["content-length", "transfer-encoding", "connection"],
        &[
            ("Content-Length", body.len().to_string()),
            ("Connection", "close".into()),
        ],
    );
    up_w.write_all(&req_head)?;
    up_w.write_all(body)?;
    up_w.flush()?;
    let mut r = BufReader::new(up);
    loop {
        let resp = read_head(&mut r)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed without answering",
            )
        })?;
        let status: u16 = resp
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) {
            continue; // 100 Continue and friends: the client doesn't need them
        }
        let body = if method == "HEAD" || status == 204 || status == 304 {
            Vec::new()
        } else if resp.is_chunked() {
            read_chunked(&mut r)?
        } else if let Some(n) = resp.content_length() {
            let mut b = vec![0u8; n];
            r.read_exact(&mut b)?;
            b
        } else {
            let mut b = Vec::new();
            r.read_to_end(&mut b)?;
            b
        };
        return Ok((resp, body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_by_method_target_and_header() {
        let m = Match::method("PUT").lacking("uploadId=");
        assert!(m.matches("PUT", "/b/k", &[]));
        assert!(!m.matches("PUT", "/b/k?partNumber=1&uploadId=x", &[]));
        assert!(!m.matches("GET", "/b/k", &[]));
        assert!(Match::any()
            .containing("partNumber=")
            .matches("PUT", "/b/k?partNumber=2", &[]));
        let h = Match::method("PUT").with_header("If-None-Match");
        assert!(h.matches("PUT", "/b/k", &[("if-none-match".into(), "*".into())]));
        assert!(!h.matches("PUT", "/b/k", &[]));
    }

    #[test]
    fn request_kinds_of_path_style_targets() {
        assert_eq!(request_kind("GET", "/b?list-type=2&prefix=x%2F"), "LIST");
        assert_eq!(request_kind("GET", "/b/?uploads"), "LIST");
        assert_eq!(request_kind("GET", "/b"), "LIST");
        assert_eq!(request_kind("GET", "/b/data/ab/cd"), "GET");
        assert_eq!(request_kind("GET", "/b/k?partNumber=1"), "GET");
        assert_eq!(request_kind("PUT", "/b/k?partNumber=2&uploadId=u"), "PUT");
        assert_eq!(request_kind("POST", "/b?delete"), "POST");
        assert_eq!(request_kind("HEAD", "/b/k"), "HEAD");
        assert_eq!(request_kind("DELETE", "/b/k"), "DELETE");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn chunked_bodies_decode() {
        let raw = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nx-trailer: y\r\n\r\n";
        let body = read_chunked(&mut BufReader::new(&raw[..])).expect("decode");
        assert_eq!(body, b"Wikipedia");
    }
}
