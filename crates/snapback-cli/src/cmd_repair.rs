//! diff, repair, audit, undo: the CLI over snapback-repair.
//! Documented in docs/repair.md and docs/restore-scripts.md.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use snapback_repair::{audit_verify, ApplyOptions, LoadedScript, RepairOptions, RepairSession};
use snapback_repair::{
    check_pairing, compare_table_sets, compare_virtual_tables, diff_table_by_pages, live_path,
    open_live_readonly, prepare_table, resolve_snapshot, row_human, row_json, sql_for,
    virtual_table_comparable, DiffCounts, ScanSide, Side, SnapshotDb, TableSelection,
};
use snapback_repair::{emit_script, EmitScript, EmitSource, EmitTable};

use crate::cli::{absolute, Global};
use crate::exit;
use crate::json as doc;
use crate::output::{chose, HeldOutput};
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
    #[arg(long, value_name = "DURATION", default_value = "30", value_parser = crate::duration::parse_seconds_or_duration)]
    pub busy_timeout: Duration,
    /// Accepted as on every reading command; `diff` takes no repository
    /// lock (it works from a read-only repository).
    #[arg(long)]
    pub no_lock: bool,
    /// Also write a restore script for exactly this selection (the
    /// snapshot, tables, key, columns and --where diffed) to FILE, ready
    /// for `snapback repair FILE` (a dry run). An existing FILE is refused
    /// unless --overwrite.
    #[arg(long, value_name = "FILE")]
    pub emit_script: Option<PathBuf>,
    /// With --emit-script: replace FILE if it exists.
    #[arg(long, requires = "emit_script")]
    pub overwrite: bool,
}

/// Bad usage found after parsing: exit 2 (see docs/scripting.md).
fn usage(msg: &str) -> anyhow::Error {
    crate::Usage(msg.to_string()).into()
}

pub fn diff(g: &Global, a: DiffArgs) -> anyhow::Result<u8> {
    let (snap_sel, live_arg) = diff_operands(g, &a)?;
    let emit_to = a.emit_script.as_ref().map(|f| absolute(f));
    if let Some(f) = &emit_to {
        if !a.overwrite && std::fs::symlink_metadata(f).is_ok() {
            bail!(
                "{} exists; nothing was read or written. Give --overwrite to replace it, or choose another file for --emit-script",
                f.display()
            );
        }
    }
    let live = live_path(&absolute(std::path::Path::new(&live_arg)))?;
    let (sdb, emit_source) = open_diff_snapshot(g, &a, snap_sel, &live, emit_to.is_some())?;
    let mut sconn = sdb.open()?;
    let mut lconn = open_live_readonly(&live, a.busy_timeout)?;
    // Each side is scanned by its own connection on a thread of its own
    // (diff_table_threaded); everything else reads them on this thread.
    let mut sside = ScanSide {
        conn: &mut sconn,
        place: sdb.describe(),
    };
    let mut lside = ScanSide {
        conn: &mut lconn,
        place: live.display().to_string(),
    };
    let mut plan = plan_diff(&a, &sside.side(), &lside.side())?;

    // Held back until every table is compared: a diff that fails half-way
    // (a page of the snapshot that cannot be verified) prints no rows.
    let mut out = HeldOutput::new();
    let mut total = DiffCounts::default();
    let mut schema_count = plan.table_diffs.len() as u64;
    for d in &plan.table_diffs {
        if g.json {
            writeln!(out, "{}", serde_json::to_string(&doc::DiffSchema::new(d))?)?;
        } else if a.sql {
            writeln!(out, "-- schema: table {}: {}", d.table, d.what)?;
        } else {
            writeln!(out, "schema: table {}: {}", d.table, d.what)?;
        }
    }
    for (t, reason) in &plan.skipped {
        report_skip(g, &a, &mut out, t, reason)?;
    }
    let mut compared = 0usize;
    let mut emitted: Vec<EmitTable> = Vec::new();
    for t in &plan.prepared {
        // One read transaction per table: the pairing check and the diff
        // read the same data.
        lside
            .conn
            .execute_batch("BEGIN")
            .context("cannot start a read transaction on the live database")?;
        let result = diff_one(
            g,
            &a,
            &mut out,
            (&mut sside, &mut lside),
            sdb.point().map(|p| p.file()),
            t,
            &mut schema_count,
        );
        let _ = lside.conn.execute_batch("COMMIT");
        match result {
            Ok(counts) => {
                compared += 1;
                if !plan.virtual_compared.contains(&t.table) {
                    emitted.push(EmitTable {
                        name: t.table.clone(),
                        key: (!a.key.is_empty()).then(|| a.key.clone()),
                        columns: a.columns.clone(),
                        where_both: a.where_.clone(),
                        only_in_live: counts.only_in_live,
                    });
                }
                total.changed += counts.changed;
                total.only_in_snapshot += counts.only_in_snapshot;
                total.only_in_live += counts.only_in_live;
                total.identical += counts.identical;
            }
            Err(DiffOneError::Pairing(reason)) => {
                report_skip(g, &a, &mut out, &t.table, &reason)?;
                plan.skipped.push((t.table.clone(), reason));
            }
            Err(DiffOneError::Fatal(e)) => return Err(e),
        }
    }
    let skipped = &plan.skipped;
    if g.json {
        let summary = doc::DiffSummary {
            counts: &total,
            live: &live,
            schema_differences: schema_count,
            skipped: skipped
                .iter()
                .map(|(table, reason)| doc::SkippedTable { reason, table })
                .collect(),
            snapshot: sdb.snapshot_id().map(|i| i.to_hex()),
            snapshot_db: &sdb.db_path,
            snapshot_read: sdb.read_stats().map(doc::SnapshotRead::of),
            script: emit_to.as_deref(),
            tables: compared,
            type_: "summary",
        };
        writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    }
    if let Some(f) = &emit_to {
        let script = EmitScript {
            command: command_line(),
            file: f.clone(),
            source: emit_source,
            live: live.clone(),
            path: a.path.clone().or_else(|| sdb.db_path.clone()),
            tables: emitted,
            left_out: left_out(&plan.virtual_compared, skipped),
        };
        write_emitted_script(g, &a, f, &script)?;
    }
    out.release(&mut std::io::stdout().lock())?;
    if !g.json && !a.sql && !g.quiet {
        eprintln!(
            "{} table(s): {} row difference(s), {} schema difference(s){}{}",
            compared,
            total.differences(),
            schema_count,
            match sdb.read_stats() {
                Some(r) => format!(
                    "; read {} of the {} pages of the snapshot's database",
                    r.pages_read, r.pages
                ),
                None => String::new(),
            },
            if skipped.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} table(s) NOT compared (see the warnings above)",
                    skipped.len()
                )
            }
        );
    }
    Ok(if !skipped.is_empty() {
        exit::INCOMPLETE
    } else if total.differences() + schema_count > 0 {
        exit::PROBLEMS
    } else {
        exit::OK
    })
}

/// The snapshot selector (none with --snapshot-db) and the live database
/// of `diff`'s arguments, and the checks of its flags that parsing
/// cannot make.
fn diff_operands(g: &Global, a: &DiffArgs) -> anyhow::Result<(Option<String>, String)> {
    let (snap_sel, live_arg) = match (&a.snapshot_db, a.args.as_slice()) {
        (Some(_), [live]) => (None, live.clone()),
        (None, [snap, live]) => (Some(snap.clone()), live.clone()),
        (Some(_), _) => return Err(usage("with --snapshot-db, give only LIVE_DB")),
        (None, _) => {
            return Err(usage(
                "give SNAP and LIVE_DB (or --snapshot-db FILE and LIVE_DB); SNAP is a snapshot id, 'latest' or @TIME",
            ))
        }
    };
    if a.sql && g.json {
        return Err(usage(
            "--sql and --json are two different outputs; choose one",
        ));
    }
    if a.tables.is_empty() && (!a.key.is_empty() || a.columns.is_some()) {
        return Err(usage(
            "--key and --columns need --table: they name columns of one table",
        ));
    }
    Ok((snap_sel, live_arg))
}

/// The snapshot side of a diff (a snapshot's database read in place, or
/// the --snapshot-db file) and what an emitted script names as its source.
fn open_diff_snapshot(
    g: &Global,
    a: &DiffArgs,
    snap_sel: Option<String>,
    live: &std::path::Path,
    emitting: bool,
) -> anyhow::Result<(SnapshotDb, EmitSource)> {
    Ok(match (&a.snapshot_db, snap_sel) {
        (Some(f), _) => {
            let f = absolute(f);
            (SnapshotDb::from_file(&f)?, EmitSource::File(f))
        }
        (None, Some(sel)) => {
            let repo = open_repo(g)?;
            let (snap, file) = resolve_snapshot(&repo, &sel, a.path.as_deref(), live, &[])?;
            chose(g, &snap);
            if emitting
                && snap
                    .manifest
                    .tags
                    .iter()
                    .any(|t| t == snapback_repair::PRE_REPAIR_TAG)
            {
                bail!(
                    "snapshot {} is a pre-repair snapshot, which a restore script never takes as its source (it holds the damage a repair removed; to go back to it, `snapback undo` the repair); nothing was written. Diff against a snapshot from before the incident",
                    snap.describe()
                );
            }
            let sdb = SnapshotDb::in_place(&repo, &snap, &file)
                .context("cannot open the snapshot's database")?;
            (sdb, EmitSource::Snapshot(snap.selector()))
        }
        (None, None) => bail!("no snapshot given"),
    })
}

/// What a diff compares, decided before anything is printed.
struct DiffPlan {
    /// The schema differences between the two table sets.
    table_diffs: Vec<snapback_repair::SchemaDiff>,
    /// Tables that could not be compared, and why. One bad table does not
    /// stop the others; it makes the exit code INCOMPLETE.
    skipped: Vec<(String, String)>,
    /// Virtual tables compared here, which a restore script cannot repair.
    virtual_compared: Vec<String>,
    /// The tables to diff, prepared.
    prepared: Vec<snapback_repair::PreparedTable>,
}

/// The tables to compare (every table, or the --table ones) and their
/// preparation; a table the operator named with a bad key, column or
/// predicate is an error before any output.
fn plan_diff(a: &DiffArgs, sside: &Side<'_>, lside: &Side<'_>) -> anyhow::Result<DiffPlan> {
    let whole = a.tables.is_empty();
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut virtual_compared: Vec<String> = Vec::new();
    let (tables, table_diffs) = if whole {
        let (mut tables, mut diffs) = compare_table_sets(sside, lside)?;
        // Virtual tables: FTS and R*Tree rows are compared through their
        // own SELECT; the others are reported, never silently passed over.
        let (vtabs, vdiffs) = compare_virtual_tables(sside, lside)?;
        diffs.extend(vdiffs);
        for vt in vtabs {
            match virtual_table_comparable(&vt) {
                Ok(()) => {
                    virtual_compared.push(vt.name.clone());
                    tables.push(vt.name)
                }
                Err(why) => skipped.push((vt.name, why)),
            }
        }
        tables.sort();
        (tables, diffs)
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
        match prepare_table(sside, lside, &sel) {
            Ok(p) => prepared.push(p),
            // A table the operator named, with a bad key, column or
            // predicate: bad input, stop before any output.
            Err(e) if !whole && !matches!(e, snapback_repair::Error::NoKey(_)) => {
                return Err(e.into())
            }
            Err(e) => skipped.push((t.clone(), e.to_string())),
        }
    }
    Ok(DiffPlan {
        table_diffs,
        skipped,
        virtual_compared,
        prepared,
    })
}

/// A table not compared: a warning on stderr, and a line of the output
/// under --json or --sql.
fn report_skip(
    g: &Global,
    a: &DiffArgs,
    out: &mut impl Write,
    table: &str,
    reason: &str,
) -> anyhow::Result<()> {
    eprintln!("warning: table {table} was not compared: {reason}");
    if g.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&doc::DiffSkipped {
                reason,
                table,
                type_: "skipped"
            })?
        )?;
    } else if a.sql {
        writeln!(out, "-- skipped: table {table}: not compared")?;
    }
    Ok(())
}

/// The tables an emitted script leaves out, and why: the virtual tables
/// compared, then the tables not compared.
fn left_out(virtual_compared: &[String], skipped: &[(String, String)]) -> Vec<(String, String)> {
    let mut left_out: Vec<(String, String)> = virtual_compared
        .iter()
        .map(|t| {
            (
                t.clone(),
                "a virtual table: the diff compares its rows, but repair writes ordinary tables only (repair the table its content comes from)".to_string(),
            )
        })
        .collect();
    left_out.extend(
        skipped
            .iter()
            .map(|(t, r)| (t.clone(), format!("it was not compared: {r}"))),
    );
    left_out
}

/// Writes `diff --emit-script`'s restore script to `f`, and says so.
fn write_emitted_script(
    g: &Global,
    a: &DiffArgs,
    f: &std::path::Path,
    script: &EmitScript,
) -> anyhow::Result<()> {
    let text = emit_script(script);
    write_new_file(f, text.as_bytes(), a.overwrite)?;
    if !g.quiet {
        eprintln!(
            "restore script written to {}: review it, then `snapback repair {}` (a dry run)",
            f.display(),
            f.display()
        );
    }
    Ok(())
}

/// This process's command line, each argument quoted when a shell would
/// need it, for the header of an emitted script.
fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| if i == 0 { "snapback".to_string() } else { a })
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=@:,+%".contains(&b))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes `bytes` to `path`: a new file (refused when one exists, also one
/// created since the check at the start), or with `overwrite`, replacing
/// it atomically (a temporary file beside it, renamed over it).
fn write_new_file(path: &std::path::Path, bytes: &[u8], overwrite: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if overwrite {
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
        tmp.persist(path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        return Ok(());
    }
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists (created while the diff ran); the script was not written. Give --overwrite to replace it, or choose another file",
            path.display()
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot create {}", path.display())))
        }
    };
    let r = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = r {
        let _ = std::fs::remove_file(path);
        return Err(anyhow::Error::new(e).context(format!("cannot write {}", path.display())));
    }
    Ok(())
}

enum DiffOneError {
    /// The key does not pair rows soundly on a side: nothing was printed
    /// for the table.
    Pairing(String),
    Fatal(anyhow::Error),
}

/// Diffs one table into `out`, after proving its pairing sound (so that
/// nothing is printed for a table whose key turns out to be unusable).
fn diff_one(
    g: &Global,
    a: &DiffArgs,
    out: &mut impl Write,
    (sside, lside): (&mut ScanSide<'_>, &mut ScanSide<'_>),
    point: Option<&snapback_repair::PointFile>,
    t: &snapback_repair::PreparedTable,
    schema_count: &mut u64,
) -> Result<DiffCounts, DiffOneError> {
    let fatal = |e: std::io::Error| DiffOneError::Fatal(e.into());
    match check_pairing(&sside.side(), &lside.side(), t) {
        Ok(()) => {}
        Err(e @ snapback_repair::Error::NoKey(_)) => {
            return Err(DiffOneError::Pairing(e.to_string()))
        }
        Err(e) => return Err(DiffOneError::Fatal(e.into())),
    }
    if !g.json && !a.sql {
        writeln!(
            out,
            "table {}: rows paired by {}; comparing {}",
            t.table,
            t.key.describe(),
            t.compare_columns().collect::<Vec<_>>().join(", ")
        )
        .map_err(fatal)?;
    }
    for d in &t.schema_diffs {
        *schema_count += 1;
        let r = if g.json {
            writeln!(
                out,
                "{}",
                serde_json::to_string(&doc::DiffSchema::new(d))
                    .map_err(|e| DiffOneError::Fatal(e.into()))?
            )
        } else if a.sql {
            writeln!(out, "-- schema: table {}: {}", d.table, d.what)
        } else {
            writeln!(out, "  schema: {}", d.what)
        };
        r.map_err(fatal)?;
    }
    // By page hash where it can be proven sound (the reason at -v when
    // not): only the rows of the leaves that differ are read.
    let (counts, _) = diff_table_by_pages(point, sside, lside, t, |d| {
        let r = if g.json {
            writeln!(out, "{}", row_json(t, &d))
        } else if a.sql {
            writeln!(out, "{}", sql_for(t, &d))
        } else {
            writeln!(out, "  {}", row_human(t, &d))
        };
        r.map_err(|e| snapback_repair::Error::io("<stdout>", "cannot write the output", e))
    })
    .map_err(|e| DiffOneError::Fatal(e.into()))?;
    let r = if g.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&doc::DiffTable {
                compared: t.compare_columns().collect(),
                counts: &counts,
                key: &t.key,
                table: &t.table,
                type_: "table",
            })
            .map_err(|e| DiffOneError::Fatal(e.into()))?
        )
    } else if !a.sql {
        writeln!(
            out,
            "  {} changed, {} only in snapshot, {} only in live, {} identical",
            counts.changed, counts.only_in_snapshot, counts.only_in_live, counts.identical
        )
    } else {
        Ok(())
    };
    r.map_err(fatal)?;
    Ok(counts)
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The restore script (TOML; see docs/restore-scripts.md).
    #[arg(required_unless_present_any = ["abandon", "plan"])]
    pub script: Option<PathBuf>,
    /// Close the unfinished (killed or failed) repair or undo RUN without
    /// finishing it: its committed changes stay and are recorded in the
    /// audit log (kind `abandon`; `snapback undo RUN` reverts them), and
    /// other scripts can run again. The live database comes from SCRIPT,
    /// --live, or RUN's audit entry.
    #[arg(long, value_name = "RUN", conflicts_with = "apply")]
    pub abandon: Option<String>,
    /// Dry run: also write the plan (the script's text and the exact change
    /// set) to FILE, for review and for `--apply --plan FILE`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["apply", "plan"])]
    pub plan_out: Option<PathBuf>,
    /// With --apply: apply exactly the change set of this reviewed plan
    /// (from --plan-out); refused when a row it changes moved since.
    #[arg(long, value_name = "FILE", requires = "apply")]
    pub plan: Option<PathBuf>,
    /// With --abandon: the live database the run is recorded in.
    #[arg(long, value_name = "DB", requires = "abandon")]
    pub live: Option<PathBuf>,
    /// Make the changes. Without it, only the plan is printed (dry run).
    #[arg(long)]
    pub apply: bool,
    /// Do not ask for confirmation (needed with --apply without a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Wait this long for another repair of the same database to finish
    /// (default: fail at once).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = crate::duration::parse_seconds_or_duration)]
    pub lock_wait: Duration,
    /// Give up when the live database stays busy this long (the repair can
    /// be resumed by running it again).
    #[arg(long, value_name = "DURATION", default_value = "300", value_parser = crate::duration::parse_seconds_or_duration)]
    pub max_wait: Duration,
}

fn batch_delay() -> Duration {
    std::env::var("SNAPBACK_REPAIR_BATCH_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::ZERO)
}

fn repair_options(lock_wait: Duration, max_wait: Duration, keep_all_rows: bool) -> RepairOptions {
    RepairOptions {
        apply: ApplyOptions {
            max_wait,
            force: false,
            batch_delay: batch_delay(),
            exit_after_batches: std::env::var("SNAPBACK_REPAIR_EXIT_AFTER_BATCHES")
                .ok()
                .and_then(|v| v.parse().ok()),
        },
        lock_wait,
        keep_all_rows,
        // The pre-repair snapshot uses the capture state as `snapshot`
        // does: a WAL delta when it can, not a full scan.
        state_dir: crate::repo_url::capture_state_root(),
        ..Default::default()
    }
}

/// Asks on the terminal; without one, `--yes` is required.
/// `what` names the command for the message without a terminal, e.g.
/// "repair --apply" or "undo".
pub(crate) fn confirm(yes: bool, what: &str, question: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        bail!("{what} changes the live database: there is no terminal to confirm on, so add --yes; nothing was written");
    }
    eprint!("{question} Type 'yes' to go on: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != "yes" {
        bail!("not confirmed; nothing was written");
    }
    Ok(())
}

/// Longest text (in bytes) or blob (in hex digits) shown in the dry run's
/// sample rows; `--json` prints values whole.
const SAMPLE_TEXT: usize = 80;

/// Shortens long strings in a sample row: text to its first `max` bytes
/// (on a character boundary), a `{"blob": hex}` to its first `max` hex
/// digits, each with the full length in bytes, e.g. `"abc…" (878000 bytes)`.
fn truncate_json(v: serde_json::Value, max: usize) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        J::String(s) if s.len() > max => {
            let mut cut = max;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            J::String(format!("{}… ({} bytes)", &s[..cut], s.len()))
        }
        J::Object(m) if m.len() == 1 && m.contains_key("blob") => {
            let hex = m["blob"].as_str().unwrap_or_default();
            if hex.len() > max {
                let cut = max & !1;
                let short = format!("{}… ({} bytes)", &hex[..cut], hex.len() / 2);
                J::Object(serde_json::Map::from_iter([(
                    "blob".to_string(),
                    J::String(short),
                )]))
            } else {
                J::Object(m)
            }
        }
        J::Object(m) => J::Object(
            m.into_iter()
                .map(|(k, v)| (k, truncate_json(v, max)))
                .collect(),
        ),
        J::Array(a) => J::Array(a.into_iter().map(|v| truncate_json(v, max)).collect()),
        other => other,
    }
}

fn print_plan(s: &RepairSession) {
    let p = &s.plan;
    println!(
        "restore script {} (sha256 {})",
        p.script,
        &p.script_sha256[..16]
    );
    if let Some(d) = &p.description {
        println!("  {d}");
    }
    println!("  live:   {}", p.live.display());
    println!("  source: {}", p.source);
    if let Some(i) = &p.incident {
        println!(
            "  incident: between {} (before) and {} (after): restoring only the rows it changed that nobody changed since",
            i.before, i.after
        );
    }
    if let Some(r) = &p.resume {
        println!(
            "  RESUME: repair {} started {} was interrupted after {} of {} batches; --apply finishes its stored plan",
            r.repair_id, r.started_at, r.batches_done, r.batches_total
        );
    }
    for t in &p.tables {
        let actions: Vec<String> = t
            .actions
            .iter()
            .map(|a| {
                serde_json::to_value(a)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect();
        println!(
            "  table {}: rows paired by {}; comparing {}; actions {}{}",
            t.table,
            t.key.describe(),
            t.compared.join(", "),
            actions.join(", "),
            t.guard
                .as_deref()
                .map(|g| format!("; guard: {g}"))
                .unwrap_or_default()
        );
        for d in &t.schema_diffs {
            println!("    schema: {}", d.what);
        }
        let c = &t.counts;
        println!(
            "    update {}, insert {}, delete {}, guard-skipped {}, not selected {}",
            c.update, c.insert, c.delete, c.guard_skipped, c.not_selected
        );
        if let Some(i) = &t.incident {
            println!(
                "    incident: changed {} row(s); {} unchanged since (restored by the actions above); {} CONFLICT(S), changed by the incident and since, never overwritten; {} other row(s) changed since, left alone",
                i.changed_by_incident,
                i.unchanged_since,
                i.conflicts.len(),
                i.changed_since_only
            );
            for k in &i.conflicts {
                println!(
                    "      conflict key {}: {} (before {}, after {}, live {})",
                    truncate_json(k.key.clone(), SAMPLE_TEXT),
                    k.reason,
                    truncate_json(k.before.clone(), SAMPLE_TEXT),
                    truncate_json(k.after.clone(), SAMPLE_TEXT),
                    truncate_json(k.live.clone(), SAMPLE_TEXT)
                );
            }
        }
        if c.blocked > 0 {
            println!(
                "    BLOCKED {}: a UNIQUE index of the live database refuses these planned changes; --apply leaves them alone and reports them:",
                c.blocked
            );
            for b in t.blocked.iter().take(snapback_repair::SAMPLE_ROWS) {
                println!(
                    "      {:?} key {}: {}",
                    b.op,
                    truncate_json(
                        serde_json::to_value(&b.key).unwrap_or_default(),
                        SAMPLE_TEXT
                    ),
                    b.reason
                );
            }
        }
        for r in t.rows.iter().take(snapback_repair::SAMPLE_ROWS) {
            let row = serde_json::to_value(doc::SampleRow {
                changes: r.get("changes"),
                key: &r["key"],
                live: r.get("live"),
                snapshot: r.get("snapshot"),
            })
            .unwrap_or_default();
            println!(
                "    {:<12} {}",
                r["action"].as_str().unwrap_or(""),
                truncate_json(row, SAMPLE_TEXT)
            );
        }
        let shown = t.rows.len().min(snapback_repair::SAMPLE_ROWS) as u64;
        let total = c.update + c.insert + c.delete + c.guard_skipped + c.not_selected;
        if total > shown {
            println!(
                "    ... {} more row difference(s) (--json lists all)",
                total - shown
            );
        }
    }
    for (i, q) in p.sql_steps.iter().enumerate() {
        println!("  sql step {}: {q}", i + 1);
    }
}

fn abandon(g: &Global, a: &RepairArgs, run: &str) -> anyhow::Result<u8> {
    let repo = open_repo(g)?;
    let live = match (&a.script, &a.live) {
        (_, Some(l)) => absolute(l),
        (Some(s), None) => LoadedScript::load(&absolute(s))?.script.live,
        (None, None) => PathBuf::from(
            snapback_repair::find_entry(&repo, run)
                .context("give the live database with --live DB (the run has no audit entry to take it from)")?
                .entry
                .live,
        ),
    };
    let opts = repair_options(a.lock_wait, a.max_wait, false);
    let o = snapback_repair::abandon(&repo, &live, run, &opts)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&o)?);
    } else {
        println!(
            "{} {} abandoned: the {} row change(s) it committed stay in {}",
            o.kind,
            o.repair_id,
            o.rows_kept,
            live.display()
        );
        println!("  audit entry: {}", o.audit_key);
        if o.rows_kept > 0 {
            println!("  to revert them: snapback undo {}", o.repair_id);
        }
    }
    Ok(exit::OK)
}

pub fn repair(g: &Global, a: RepairArgs) -> anyhow::Result<u8> {
    if let Some(run) = &a.abandon {
        return abandon(g, &a, run);
    }
    let reviewed = a.plan.as_deref().map(read_plan_file).transpose()?;
    let script = repair_script(&a, reviewed.as_ref())?;
    let repo = if script.script.snapshot.is_some() || a.apply {
        Some(open_repo(g)?)
    } else {
        g.repo.as_ref().map(|_| open_repo(g)).transpose()?
    };
    let opts = repair_options(a.lock_wait, a.max_wait, g.json);
    let mut session = RepairSession::plan(repo.as_ref(), script, opts, a.apply)?;
    if let Some(v) = &reviewed {
        pin_reviewed_plan(g, &mut session, v)?;
    }
    if let Some(f) = &a.plan_out {
        let v = doc::PlanFile::new(&session);
        std::fs::write(absolute(f), serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("cannot write the plan {}", f.display()))?;
        if !g.quiet {
            eprintln!(
                "plan written to {}: apply exactly it with `snapback repair --apply --plan {}`",
                f.display(),
                f.display()
            );
        }
    }
    if g.json && !a.apply {
        println!("{}", serde_json::to_string_pretty(&session.plan)?);
        return Ok(exit::OK);
    }
    if !g.json {
        print_plan(&session);
    }
    if !a.apply {
        if !g.quiet {
            eprintln!("dry run: nothing was changed; run again with --apply to make these changes");
        }
        return Ok(exit::OK);
    }
    if session.is_noop() {
        if g.json {
            println!(
                "{}",
                serde_json::to_string(&doc::RepairNoop {
                    message: "nothing to repair",
                    outcome: None,
                    plan: &session.plan,
                })?
            );
        } else if !g.quiet {
            eprintln!("nothing to repair: the selection already matches the snapshot");
        }
        return Ok(exit::OK);
    }
    let n = session.plan.changes.len();
    confirm(
        a.yes,
        "repair --apply",
        &format!("Apply {n} row change(s) to {}?", session.live.display()),
    )?;
    let repo = repo.context("a repository is needed for --apply")?;
    let quiet = g.quiet || g.json;
    let outcome = session.apply(&repo, |m| {
        if !quiet {
            eprintln!("{m}");
        }
    })?;
    let Some(o) = outcome else {
        return Ok(exit::OK);
    };
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&doc::RepairApplied {
                outcome: &o,
                plan: &session.plan,
            })?
        );
    } else {
        print_applied(&o)?;
    }
    Ok(if o.remaining_differences == 0 {
        exit::OK
    } else {
        exit::PROBLEMS
    })
}

/// The reviewed plan `--plan FILE` names (written by --plan-out).
fn read_plan_file(f: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(absolute(f))
        .with_context(|| format!("cannot read the plan {}", f.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a plan written by --plan-out", f.display()))?;
    if v["format"] != doc::PlanFile::FORMAT {
        bail!("{} is not a plan written by --plan-out", f.display());
    }
    Ok(v)
}

/// The restore script to run: the one in the reviewed plan (checked
/// against SCRIPT when given too), else SCRIPT.
fn repair_script(
    a: &RepairArgs,
    reviewed: Option<&serde_json::Value>,
) -> anyhow::Result<LoadedScript> {
    Ok(match (&a.script, reviewed) {
        (_, Some(v)) => {
            let text = v["script"]
                .as_str()
                .context("the plan holds no script text")?;
            let path = PathBuf::from(v["script_path"].as_str().unwrap_or("plan"));
            let s = LoadedScript::parse(&path, text.to_string())?;
            if let Some(p) = &a.script {
                let given = LoadedScript::load(&absolute(p))?;
                if given.sha256 != s.sha256 {
                    bail!("the plan was made from another version of {} (sha256 {} in the plan, {} now); nothing was written", p.display(), &s.sha256[..16], &given.sha256[..16]);
                }
            }
            s
        }
        (Some(p), None) => LoadedScript::load(&absolute(p))?,
        (None, None) => bail!("give the restore script SCRIPT"),
    })
}

/// Pins the session to the reviewed plan's change set, with a note for
/// each table whose fresh dry run differs from the plan's counts.
fn pin_reviewed_plan(
    g: &Global,
    session: &mut RepairSession,
    v: &serde_json::Value,
) -> anyhow::Result<()> {
    let fresh: Vec<snapback_repair::TableCounts> = session
        .plan
        .tables
        .iter()
        .map(|t| t.counts.clone())
        .collect();
    let changes: snapback_repair::ChangeSet = serde_json::from_value(v["changes"].clone())
        .context("the plan's change set is unreadable")?;
    session.pin(changes)?;
    let planned: Vec<snapback_repair::TableCounts> =
        serde_json::from_value(v["counts"].clone()).unwrap_or_default();
    for (f, p) in fresh.iter().zip(&planned) {
        if (f.insert, f.update, f.delete) != (p.insert, p.update, p.delete) && !g.quiet {
            eprintln!(
                "note: table {}: the live database now differs from the reviewed plan (a new dry run would insert {}, update {}, delete {}; the plan: insert {}, update {}, delete {}); applying exactly the plan",
                f.table, f.insert, f.update, f.delete, p.insert, p.update, p.delete
            );
        }
    }
    Ok(())
}

/// The outcome of `repair --apply`, for people.
fn print_applied(o: &snapback_repair::Outcome) -> anyhow::Result<()> {
    println!(
        "repair {} applied: {} row(s) changed",
        o.repair_id, o.rows_changed
    );
    if let Some(p) = &o.pre_repair_snapshot {
        println!("  pre-repair snapshot: {p}");
    }
    for c in &o.counts {
        println!(
            "  table {}: updated {}, inserted {}, deleted {}, guard-skipped {}, conflicts {}",
            c.table, c.update, c.insert, c.delete, c.guard_skipped, c.conflicts
        );
    }
    for c in o.conflicts.iter().take(20) {
        println!(
            "  left alone: {} key {}: {}",
            c.table,
            serde_json::to_string(&c.key)?,
            c.reason
        );
    }
    for s in &o.sql_steps {
        println!(
            "  sql step changed {} row(s): {}",
            s.rows_changed, s.statement
        );
    }
    if o.remaining_differences == 0 {
        println!("  verified: the selection now matches the snapshot (0 remaining differences, guard skips and conflicts aside)");
    } else {
        println!(
            "  NOT VERIFIED: {} difference(s) remain in the selection:",
            o.remaining_differences
        );
        for r in &o.remaining_sample {
            println!("    {r}");
        }
    }
    println!("  audit entry: {}", o.audit_key);
    Ok(())
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub cmd: Option<AuditCmd>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain; names the first broken link (exit code 3).
    Verify,
}

pub fn audit(g: &Global, a: AuditArgs) -> anyhow::Result<u8> {
    let repo = open_repo(g)?;
    let report = audit_verify(repo.store().as_ref())?;
    if let Some(AuditCmd::Verify) = a.cmd {
        if g.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&doc::AuditVerified {
                    broken: &report.broken,
                    entries: report.entries.len(),
                    ok: report.broken.is_none(),
                    unclaimed: &report.unclaimed,
                })?
            );
        } else {
            for u in &report.unclaimed {
                eprintln!("note: {u} is an unclaimed entry (left by an interrupted append); it is not part of the log");
            }
            match &report.broken {
                None => println!(
                    "audit log OK: {} entries, chain intact",
                    report.entries.len()
                ),
                Some(b) => println!(
                    "audit log BROKEN after {} good entries: {b}",
                    report.entries.len()
                ),
            }
        }
        return Ok(if report.broken.is_none() {
            exit::OK
        } else {
            exit::PROBLEMS
        });
    }
    if g.json {
        let v: Vec<doc::AuditListed> = report.entries.iter().map(Into::into).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{:<5} {:<21} {:<7} {:<17} {:<20} {:>8} {:>8} {:>8}  live",
            "seq", "time", "kind", "id", "user@host", "updated", "inserted", "deleted"
        );
        for e in &report.entries {
            let x = &e.entry;
            let sum =
                |f: fn(&snapback_repair::TableCounts) -> u64| x.counts.iter().map(f).sum::<u64>();
            let note = format!(
                "{}{}{}",
                x.undoes
                    .as_deref()
                    .map(|u| format!(" (undoes {u})"))
                    .unwrap_or_default(),
                if x.sql_steps.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (sql steps changed {} row(s))",
                        x.sql_steps.iter().map(|q| q.rows_changed).sum::<u64>()
                    )
                },
                if x.failed.is_some() {
                    " FAILED (see --json audit)"
                } else {
                    ""
                }
            );
            println!(
                "{:<5} {:<21} {:<7} {:<17} {:<20} {:>8} {:>8} {:>8}  {}{}",
                x.seq,
                x.time.get(..19).unwrap_or(&x.time),
                x.kind,
                x.repair_id,
                format!("{}@{}", x.user, x.host),
                sum(|c| c.update),
                sum(|c| c.insert),
                sum(|c| c.delete),
                x.live,
                note
            );
        }
    }
    if let Some(b) = &report.broken {
        eprintln!("warning: the audit chain is broken: {b}; run `snapback audit verify`");
        return Ok(exit::PROBLEMS);
    }
    Ok(exit::OK)
}

#[derive(Debug, Args)]
pub struct UndoArgs {
    /// The repair to revert: its id (or a unique prefix), from `snapback audit`.
    pub repair_id: String,
    /// Revert rows even if they changed since the repair.
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation (needed without a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Wait this long for another repair of the same database to finish
    /// (default: fail at once).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = crate::duration::parse_seconds_or_duration)]
    pub lock_wait: Duration,
    /// Give up when the live database stays busy this long.
    #[arg(long, value_name = "DURATION", default_value = "300", value_parser = crate::duration::parse_seconds_or_duration)]
    pub max_wait: Duration,
}

pub fn undo(g: &Global, a: UndoArgs) -> anyhow::Result<u8> {
    let repo = open_repo(g)?;
    let target = snapback_repair::find_entry(&repo, &a.repair_id)?;
    confirm(
        a.yes,
        "undo",
        &format!(
            "Revert {} row change(s) of repair {} in {}?",
            target.entry.changes.len(),
            target.entry.repair_id,
            target.entry.live
        ),
    )?;
    let mut opts = repair_options(a.lock_wait, a.max_wait, false);
    opts.apply.force = a.force;
    let quiet = g.quiet || g.json;
    let o = snapback_repair::undo(&repo, &target.entry.repair_id, a.force, &opts, |m| {
        if !quiet {
            eprintln!("{m}");
        }
    })?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&o)?);
    } else {
        println!(
            "undo {} reverted repair {}: {} row(s) changed",
            o.repair_id, o.undoes, o.rows_changed
        );
        if let Some(p) = &o.pre_repair_snapshot {
            println!("  pre-repair snapshot: {p}");
        }
        for c in &o.conflicts {
            println!(
                "  left alone: {} key {}: {}",
                c.table,
                serde_json::to_string(&c.key)?,
                c.reason
            );
        }
        println!("  audit entry: {}", o.audit_key);
    }
    Ok(if o.conflicts.is_empty() {
        exit::OK
    } else {
        exit::PROBLEMS
    })
}
