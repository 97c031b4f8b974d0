//! Development tools for demos, drills and benchmarks: generate a realistic
//! application database from a seed, write to it continuously, apply a
//! measured change, check a database, and count the requests a tool makes
//! to the local S3 server. Not part of the product.
//!
//! ```text
//! snapback-devtools gen DB --size-mib N [--seed S] [--rollback] [--page-size P]
//! snapback-devtools write DB --seconds N
//! snapback-devtools update DB --fraction F [--seed S]
//! snapback-devtools check DB
//! snapback-devtools s3-proxy UPSTREAM_URL --log FILE
//! ```
//!
//! `s3-proxy` starts the test kit's S3 proxy (`snapback_s3::testing::
//! fault_proxy`, no faults) on a free port of 127.0.0.1 in front of
//! UPSTREAM_URL, prints its endpoint (`http://127.0.0.1:PORT`) on a line of
//! its own, appends one JSON line per answered request to FILE (time, kind,
//! method, target, status, bytes each way), and runs until its standard
//! input closes.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, TransactionBehavior};

/// xorshift64*: deterministic from a seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn word(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
}

const SCHEMA: &str = "
CREATE TABLE sites(id INTEGER PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL);
CREATE TABLE deploys(
  id INTEGER PRIMARY KEY,
  site_id INTEGER NOT NULL REFERENCES sites(id),
  version TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  metadata TEXT NOT NULL,
  log TEXT NOT NULL
);
CREATE INDEX deploys_site ON deploys(site_id);
CREATE INDEX deploys_created ON deploys(created_at);
CREATE INDEX deploys_status ON deploys(status, updated_at);
CREATE TABLE events(
  id INTEGER PRIMARY KEY,
  deploy_id INTEGER NOT NULL,
  kind TEXT NOT NULL,
  payload TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE INDEX events_deploy ON events(deploy_id);
CREATE INDEX events_created ON events(created_at);
";

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn parse<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match arg_value(args, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid value for {name}: {v}")),
    }
}

fn gen(db: &str, args: &[String]) -> Result<()> {
    let size_mib: u64 = parse(args, "--size-mib", 64)?;
    let seed: u64 = parse(args, "--seed", 1)?;
    let page_size: u32 = parse(args, "--page-size", 4096)?;
    if std::path::Path::new(db).exists() {
        bail!("{db} exists; remove it first");
    }
    let mut c = Connection::open(db)?;
    c.execute_batch(&format!("PRAGMA page_size={page_size};"))?;
    let mode = if args.iter().any(|a| a == "--rollback") {
        "DELETE"
    } else {
        "WAL"
    };
    c.query_row(&format!("PRAGMA journal_mode={mode}"), [], |_| Ok(()))?;
    c.execute_batch(SCHEMA)?;
    let mut rng = Rng::new(seed);
    let target = size_mib << 20;
    let tx = c.transaction()?;
    for i in 1..=500 {
        tx.execute(
            "INSERT INTO sites(id, name, region) VALUES (?1, ?2, ?3)",
            params![i, rng.word(12), rng.word(6)],
        )?;
    }
    tx.commit()?;
    let mut t: i64 = 1_700_000_000;
    let mut deploy_id: i64 = 0;
    loop {
        let tx = c.transaction()?;
        for _ in 0..2000 {
            deploy_id += 1;
            t += 1 + rng.below(30) as i64;
            let site = 1 + rng.below(500) as i64;
            let metadata = format!(
                "{{\"commit\":\"{}\",\"branch\":\"{}\",\"author\":\"{}\",\"build_ms\":{}}}",
                rng.word(40),
                rng.word(8),
                rng.word(10),
                rng.below(600_000)
            );
            let log_len = 200 + rng.below(600) as usize;
            let log = rng.word(log_len);
            tx.execute(
                "INSERT INTO deploys(id, site_id, version, status, created_at, updated_at, metadata, log) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
                params![deploy_id, site, format!("v{}.{}.{}", rng.below(5), rng.below(50), rng.below(200)), ["ok", "failed", "rolled_back"][rng.below(3) as usize], t, metadata, log],
            )?;
            for _ in 0..2 {
                let detail_len = 40 + rng.below(80) as usize;
                let payload = format!(
                    "{{\"step\":\"{}\",\"detail\":\"{}\"}}",
                    rng.word(6),
                    rng.word(detail_len)
                );
                tx.execute(
                    "INSERT INTO events(deploy_id, kind, payload, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![deploy_id, ["build", "upload", "activate"][rng.below(3) as usize], payload, t],
                )?;
            }
        }
        tx.commit()?;
        let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let pages = pages.max(0) as u64;
        if pages * page_size as u64 >= target {
            break;
        }
    }
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .ok();
    println!(
        "{db}: {deploy_id} deploys, {} MiB, {mode} mode",
        std::fs::metadata(db)?.len() >> 20
    );
    Ok(())
}

/// Updates `fraction` of the deploys rows, like an application would: each
/// update rewrites the status, appends to the log and inserts two events.
fn update(db: &str, args: &[String]) -> Result<()> {
    let fraction: f64 = parse(args, "--fraction", 0.001)?;
    let seed: u64 = parse(args, "--seed", 2)?;
    let mut c = Connection::open(db)?;
    c.busy_timeout(Duration::from_secs(30))?;
    let n: i64 = c.query_row("SELECT max(id) FROM deploys", [], |r| r.get(0))?;
    let count = ((n as f64) * fraction).round().max(1.0) as i64;
    let mut rng = Rng::new(seed);
    let tx = c.transaction()?;
    for _ in 0..count {
        let id = 1 + rng.below(n as u64) as i64;
        tx.execute(
            "UPDATE deploys SET status = 'redeployed', updated_at = updated_at + 1, log = log || ?2 WHERE id = ?1",
            params![id, rng.word(40)],
        )?;
        for _ in 0..2 {
            tx.execute(
                "INSERT INTO events(deploy_id, kind, payload, created_at) VALUES (?1, 'update', ?2, 1800000000)",
                params![id, rng.word(60)],
            )?;
        }
    }
    tx.commit()?;
    println!("{db}: updated {count} of {n} deploys");
    Ok(())
}

/// Writes continuously for `--seconds`: small transactions of updates and
/// inserts, as an application server would.
fn write(db: &str, args: &[String]) -> Result<()> {
    let seconds: u64 = parse(args, "--seconds", 10)?;
    let mut c = Connection::open(db)?;
    c.busy_timeout(Duration::from_secs(30))?;
    let n: i64 = c.query_row("SELECT max(id) FROM deploys", [], |r| r.get(0))?;
    let mut rng = Rng::new(Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut commits = 0u64;
    while Instant::now() < end {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = 1 + rng.below(n as u64) as i64;
        tx.execute(
            "UPDATE deploys SET updated_at = updated_at + 1 WHERE id = ?1",
            params![id],
        )?;
        tx.execute(
            "INSERT INTO events(deploy_id, kind, payload, created_at) VALUES (?1, 'live', ?2, 1800000000)",
            params![id, rng.word(80)],
        )?;
        tx.commit()?;
        commits += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    println!("{db}: {commits} transactions committed in {seconds} s");
    Ok(())
}

fn check(db: &str) -> Result<()> {
    let c = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    let deploys: i64 = c.query_row("SELECT count(*) FROM deploys", [], |r| r.get(0))?;
    let events: i64 = c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    println!("{db}: integrity_check={ok} deploys={deploys} events={events} journal_mode={mode}");
    if ok != "ok" {
        bail!("{db} fails its integrity check");
    }
    Ok(())
}

/// The counting proxy of the benchmarks (see the module comment).
fn s3_proxy(upstream: &str, args: &[String]) -> Result<()> {
    use std::io::{Read, Write};
    let log = arg_value(args, "--log").context("s3-proxy needs --log FILE")?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {log}"))?;
    let proxy = snapback_s3::testing::fault_proxy::FaultProxy::start(upstream)
        .with_context(|| format!("starting a proxy in front of {upstream}"))?;
    proxy.log_to(Box::new(std::io::BufWriter::new(file)));
    let mut out = std::io::stdout();
    writeln!(out, "{}", proxy.endpoint())?;
    out.flush()?;
    // Runs until standard input closes (the harness holds a pipe).
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin();
    while stdin.read(&mut sink)? > 0 {}
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(cmd), Some(db)) = (args.first(), args.get(1)) else {
        bail!("usage: snapback-devtools gen|write|update|check DB [options] | s3-proxy UPSTREAM --log FILE");
    };
    let rest = &args[2..];
    match cmd.as_str() {
        "gen" => gen(db, rest),
        "write" => write(db, rest),
        "update" => update(db, rest),
        "check" => check(db),
        "s3-proxy" => s3_proxy(db, rest),
        other => bail!("unknown command {other}; use gen, write, update, check or s3-proxy"),
    }
    .with_context(|| format!("{cmd} {db}"))
}
