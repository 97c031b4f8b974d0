//! history and when: incident forensics over the points of a repository.
//! Documented in docs/forensics.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use snapback_repair::{history, live_path, when, HistoryQuery, WhenQuery};

use crate::cli::{absolute, Global};
use crate::exit;
use crate::repo_url::open_repo;

/// Where the points' database is, and how to read the live one.
#[derive(Debug, Args)]
pub struct PointsArgs {
    /// The database's path inside the snapshots (default: LIVE_DB's own
    /// absolute path).
    #[arg(long, value_name = "P")]
    pub path: Option<String>,
    /// How long to wait for a writer's lock on the live database.
    #[arg(long, value_name = "DURATION", default_value = "30", value_parser = crate::duration::parse_seconds_or_duration)]
    pub busy_timeout: Duration,
    /// Accepted as on every reading command; no repository lock is taken.
    #[arg(long)]
    pub no_lock: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The live database.
    #[arg(value_name = "LIVE_DB")]
    pub live: PathBuf,
    /// The record's table.
    #[arg(long, value_name = "T")]
    pub table: String,
    /// The record: COL=VALUE (repeat for a key of several columns). The
    /// value is compared as SQL compares a text parameter with the
    /// column (with its affinity: id=42 finds the integer 42).
    #[arg(long = "key", value_name = "COL=VALUE", required = true, value_parser = parse_key)]
    pub key: Vec<(String, String)>,
    #[command(flatten)]
    pub points: PointsArgs,
}

fn parse_key(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((c, v)) if !c.trim().is_empty() => Ok((c.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not COL=VALUE (for example --key id=42)")),
    }
}

pub fn history_cmd(g: &Global, a: HistoryArgs) -> anyhow::Result<u8> {
    let live = live_path(&absolute(&a.live))?;
    let repo = open_repo(g)?;
    let q = HistoryQuery {
        table: a.table.clone(),
        key: a.key.clone(),
        path: a.points.path.clone(),
        busy_timeout: a.points.busy_timeout,
    };
    let h = history(&repo, &live, &q).context("cannot list the record's history")?;
    if g.json {
        for v in &h.versions {
            println!("{}", v.json());
        }
        return Ok(exit::OK);
    }
    for v in &h.versions {
        let op = serde_json::to_value(v.op)
            .ok()
            .and_then(|o| o.as_str().map(str::to_string))
            .unwrap_or_default();
        let j = v.json();
        println!(
            "{:<9} {} .. {}  ({})  {}",
            op,
            j["from"].as_str().unwrap_or(""),
            j["to"].as_str().unwrap_or("now"),
            v.from_point,
            j["values"]
        );
    }
    if !g.quiet {
        eprintln!(
            "{} version(s); {} point(s) hold the database, the record was read at {} (the others changed none of the pages the read before them touched), then live",
            h.versions.len(),
            h.points,
            h.read
        );
    }
    Ok(exit::OK)
}

#[derive(Debug, Args)]
pub struct WhenArgs {
    /// The live database.
    #[arg(value_name = "LIVE_DB")]
    pub live: PathBuf,
    /// The table.
    #[arg(long, value_name = "T")]
    pub table: String,
    /// An SQL expression on the table's rows: the set of rows it matches
    /// is compared from point to point.
    #[arg(long = "where", value_name = "SQL")]
    pub where_: String,
    /// Look only between these two points (selectors: @TIME, an id, a
    /// point's SEGMENT/INDEX), both included. Default: every point, then
    /// the live database.
    #[arg(long, num_args = 2, value_names = ["@T1", "@T2"])]
    pub between: Option<Vec<String>>,
    #[command(flatten)]
    pub points: PointsArgs,
}

pub fn when_cmd(g: &Global, a: WhenArgs) -> anyhow::Result<u8> {
    let live = live_path(&absolute(&a.live))?;
    let repo = open_repo(g)?;
    let q = WhenQuery {
        table: a.table.clone(),
        where_sql: a.where_.clone(),
        between: a
            .between
            .as_ref()
            .and_then(|b| Some((b.first()?.clone(), b.get(1)?.clone()))),
        path: a.points.path.clone(),
        busy_timeout: a.points.busy_timeout,
    };
    let r = when(&repo, &live, &q).context("cannot find when the rows changed")?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(exit::OK);
    }
    if !r.found {
        println!(
            "the rows of {} where {} are the same at both ends of the {} point(s) looked at: {} ({}, {} row(s)) and {} ({})",
            a.table, a.where_, r.points, r.before.point, r.before.time, r.before.matching, r.after.point, r.after.time
        );
        return Ok(exit::OK);
    }
    println!(
        "the rows of {} where {} changed between {} ({}, {} row(s)) and {} ({}, {} row(s))",
        a.table,
        a.where_,
        r.before.point,
        r.before.time,
        r.before.matching,
        r.after.point,
        r.after.time,
        r.after.matching
    );
    for v in &r.removed {
        println!("  - {v}");
    }
    for v in &r.added {
        println!("  + {v}");
    }
    if !g.quiet {
        eprintln!("{} of {} point(s) read (bisection)", r.probes, r.points);
    }
    Ok(exit::OK)
}
