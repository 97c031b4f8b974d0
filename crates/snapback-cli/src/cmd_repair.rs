//! diff, repair, audit, undo: the CLI over snapback-repair.
//! Documented in docs/repair.md and docs/restore-scripts.md.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use snapback_repair::{
    compare_table_sets, diff_table, live_path, open_live_readonly, prepare_table, resolve_snapshot,
    row_human, row_json, sql_for, DiffCounts, Side, SnapshotDb, TableSelection,
};

use crate::cli::{absolute, Global};
use crate::exit;
use crate::output::chose;
use crate::repo_url::open_repo;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// SNAP LIVE_DB: a snapshot selector (id or unique prefix, 'latest',
    /// '@TIME') and the live database. With --snapshot-db, only LIVE_DB.
    #[arg(value_name = "SNAP LIVE_DB", num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    /// Compare against this database file instead of a snapshot in the
    /// repository (e.g. a database inside a mounted snapshot).
    #[arg(long, value_name = "FILE")]
    pub snapshot_db: Option<PathBuf>,
    /// Only this table (repeatable). Default: every table.
    #[arg(long = "table", value_name = "T")]
    pub tables: Vec<String>,
    /// Only rows matching this SQL expression, on both sides.
    #[arg(long = "where", value_name = "SQL")]
    pub where_: Option<String>,
    /// Pair rows by these columns instead of the table's key (repeatable).
    #[arg(long = "key", value_name = "COL")]
    pub key: Vec<String>,
    /// Compare only these columns.
    #[arg(long, value_name = "C,...", value_delimiter = ',')]
    pub columns: Option<Vec<String>>,
    /// The database's path inside the snapshot (default: LIVE_DB's own
    /// absolute path, or the snapshot's only database).
    #[arg(long, value_name = "P")]
    pub path: Option<String>,
    /// Print SQL statements that turn the live data into the snapshot's
    /// (for the selection), like sqldiff.
    #[arg(long)]
    pub sql: bool,
    /// How long to wait for a writer's lock on the live database.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub busy_timeout: u64,
}

pub fn diff(g: &Global, a: DiffArgs) -> anyhow::Result<u8> {
    let (snap_sel, live_arg) = match (&a.snapshot_db, a.args.as_slice()) {
        (Some(_), [live]) => (None, live.clone()),
        (None, [snap, live]) => (Some(snap.clone()), live.clone()),
        (Some(_), _) => bail!("with --snapshot-db, give only LIVE_DB"),
        (None, _) => bail!("give SNAP and LIVE_DB (or --snapshot-db FILE and LIVE_DB)"),
    };
    if a.sql && g.json {
        bail!("--sql and --json are two different outputs; choose one");
    }
    if a.tables.is_empty() && (!a.key.is_empty() || a.columns.is_some()) {
        bail!("--key and --columns need --table: they name columns of one table");
    }
    let live = live_path(&absolute(std::path::Path::new(&live_arg)))?;
    let busy = Duration::from_secs(a.busy_timeout);
    let sdb = match (&a.snapshot_db, snap_sel) {
        (Some(f), _) => SnapshotDb::from_file(&absolute(f))?,
        (None, Some(sel)) => {
            let repo = open_repo(g)?;
            let (snap, file) = resolve_snapshot(&repo, &sel, a.path.as_deref(), &live)?;
            chose(g, &snap);
            SnapshotDb::materialize(&repo, &snap, &file)
                .context("cannot materialize the snapshot's database")?
        }
        (None, None) => bail!("no snapshot given"),
    };
    let sconn = sdb.open()?;
    let lconn = open_live_readonly(&live, busy)?;
    let sside = Side {
        conn: &sconn,
        place: sdb.describe(),
    };
    let lside = Side {
        conn: &lconn,
        place: live.display().to_string(),
    };

    let (tables, table_diffs) = if a.tables.is_empty() {
        compare_table_sets(&sside, &lside)?
    } else {
        (a.tables.clone(), vec![])
    };
    let mut prepared = Vec::new();
    for t in &tables {
        let sel = TableSelection {
            table: t.clone(),
            key: (!a.key.is_empty()).then(|| a.key.clone()),
            columns: a.columns.clone(),
            where_snapshot: a.where_.clone(),
            where_live: a.where_.clone(),
            guard: None,
        };
        prepared.push(prepare_table(&sside, &lside, &sel)?);
    }

    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut total = DiffCounts::default();
    let mut schema_count = table_diffs.len() as u64;
    for d in &table_diffs {
        if g.json {
            writeln!(
                out,
                "{}",
                json!({"type": "schema", "table": d.table, "what": d.what})
            )?;
        } else if a.sql {
            writeln!(out, "-- schema: table {}: {}", d.table, d.what)?;
        } else {
            writeln!(out, "schema: table {}: {}", d.table, d.what)?;
        }
    }
    for t in &prepared {
        if !g.json && !a.sql {
            writeln!(
                out,
                "table {}: rows paired by {}; comparing {}",
                t.table,
                t.key.describe(),
                t.compare_columns().collect::<Vec<_>>().join(", ")
            )?;
        }
        for d in &t.schema_diffs {
            schema_count += 1;
            if g.json {
                writeln!(
                    out,
                    "{}",
                    json!({"type": "schema", "table": d.table, "what": d.what})
                )?;
            } else if a.sql {
                writeln!(out, "-- schema: table {}: {}", d.table, d.what)?;
            } else {
                writeln!(out, "  schema: {}", d.what)?;
            }
        }
        let counts = diff_table(&sside, &lside, t, |d| {
            let r = if g.json {
                writeln!(out, "{}", row_json(t, &d))
            } else if a.sql {
                writeln!(out, "{}", sql_for(t, &d))
            } else {
                writeln!(out, "  {}", row_human(t, &d))
            };
            r.map_err(|e| snapback_repair::Error::io("<stdout>", "cannot write the output", e))
        })?;
        if g.json {
            writeln!(
                out,
                "{}",
                json!({"type": "table", "table": t.table, "key": t.key, "compared": t.compare_columns().collect::<Vec<_>>(), "counts": counts})
            )?;
        } else if !a.sql {
            writeln!(
                out,
                "  {} changed, {} only in snapshot, {} only in live, {} identical",
                counts.changed, counts.only_in_snapshot, counts.only_in_live, counts.identical
            )?;
        }
        total.changed += counts.changed;
        total.only_in_snapshot += counts.only_in_snapshot;
        total.only_in_live += counts.only_in_live;
        total.identical += counts.identical;
    }
    if g.json {
        writeln!(
            out,
            "{}",
            json!({"type": "summary", "snapshot": sdb.snapshot_id().map(|i| i.to_hex()), "snapshot_db": sdb.db_path, "live": live, "tables": prepared.len(), "schema_differences": schema_count, "counts": total})
        )?;
    }
    out.flush()?;
    drop(out);
    if !g.json && !a.sql && !g.quiet {
        eprintln!(
            "{} table(s): {} row difference(s), {} schema difference(s)",
            prepared.len(),
            total.differences(),
            schema_count
        );
    }
    Ok(if total.differences() + schema_count > 0 {
        exit::PROBLEMS
    } else {
        exit::OK
    })
}
