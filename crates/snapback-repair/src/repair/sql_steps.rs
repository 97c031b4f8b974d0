//! A script's SQL steps: checked when the repair is planned (valid SQL,
//! no write to the attached snapshot), run after the row changes, each in
//! its own journaled transaction.

use std::time::Duration;

use rusqlite::{params, Connection};

use super::{now, RepairSession};
use crate::apply::JOURNAL_TABLE;
use crate::audit::SqlStepRecord;
use crate::error::{is_busy, Error, Result};
use crate::script::LoadedScript;
use crate::source::SnapshotDb;

impl RepairSession {
    pub(super) fn run_sql_steps(
        &self,
        conn: &mut Connection,
        repair_id: &str,
    ) -> Result<Vec<SqlStepRecord>> {
        let place = self.live.display().to_string();
        let steps = &self.script.script.sql;
        if steps.is_empty() {
            return Ok(vec![]);
        }
        attach_snapshot(conn, &place, &self.sdb)?;
        let mut out = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            let ti = 1_000_000 + i as i64;
            let done: Option<i64> = conn
                .query_row(
                    &format!("SELECT applied FROM {JOURNAL_TABLE} WHERE repair_id = ?1 AND table_index = ?2"),
                    params![repair_id, ti],
                    |r| r.get(0),
                )
                .ok();
            if let Some(n) = done {
                out.push(SqlStepRecord {
                    statement: s.statement.clone(),
                    rows_changed: n as u64,
                });
                continue;
            }
            let start = std::time::Instant::now();
            let n = loop {
                let r = (|| -> rusqlite::Result<u64> {
                    let tx =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let n = tx.execute(&s.statement, [])? as u64;
                    tx.execute(
                        &format!("INSERT INTO {JOURNAL_TABLE}(repair_id, table_index, batch, applied, conflicts, committed_at) VALUES(?1, ?2, 0, ?3, '[]', ?4)"),
                        params![repair_id, ti, n as i64, now()],
                    )?;
                    tx.commit()?;
                    Ok(n)
                })();
                match r {
                    Ok(n) => break n,
                    Err(e) if is_busy(&e) && start.elapsed() < self.opts.apply.max_wait => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    Err(e) => {
                        return Err(Error::sqlite(
                            &place,
                            format!("SQL step {} failed and was rolled back (the row changes and SQL steps before it are committed and recorded)", i + 1),
                            e,
                        ))
                    }
                }
            };
            out.push(SqlStepRecord {
                statement: s.statement.clone(),
                rows_changed: n,
            });
        }
        conn.execute_batch("DETACH DATABASE snapshot")
            .map_err(|e| Error::sqlite(&place, "cannot detach the snapshot", e))?;
        Ok(out)
    }
}

pub(super) fn check_sql_steps(
    conn: &Connection,
    place: &str,
    sdb: &SnapshotDb,
    script: &LoadedScript,
) -> Result<()> {
    if script.script.sql.is_empty() {
        return Ok(());
    }
    attach_snapshot(conn, place, sdb)?;
    let mut err = None;
    for (i, s) in script.script.sql.iter().enumerate() {
        match writes_snapshot(conn, &s.statement) {
            Err(e) => {
                err = Some(Error::Input(format!(
                    "SQL step {} ({:?}) is not valid SQL here: {e}; nothing was written",
                    i + 1,
                    s.statement
                )));
                break;
            }
            Ok(true) => {
                err = Some(Error::Input(format!(
                    "SQL step {} ({:?}) writes to the schema `snapshot`, the snapshot's database, which is attached read-only: it would fail at --apply. Write to the live database's tables (schema `main`, e.g. `UPDATE main.t SET ... FROM snapshot.t`); nothing was written",
                    i + 1,
                    s.statement
                )));
                break;
            }
            Ok(false) => {}
        }
    }
    conn.execute_batch("DETACH DATABASE snapshot")
        .map_err(|e| Error::sqlite(place, "cannot detach the snapshot", e))?;
    err.map_or(Ok(()), Err)
}

/// Whether `statement` (one statement; trailing ones are an error) would
/// open a write transaction on the attached schema `snapshot`: its
/// bytecode has a `Transaction` on that database with the write flag, or an
/// `OpenWrite` cursor on it.
fn writes_snapshot(conn: &Connection, statement: &str) -> rusqlite::Result<bool> {
    let idx: i64 = conn.query_row(
        "SELECT seq FROM pragma_database_list WHERE name = 'snapshot'",
        [],
        |r| r.get(0),
    )?;
    let mut st = conn.prepare(&format!("EXPLAIN {statement}"))?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (op, p1, p2, p3) = row?;
        if (op == "Transaction" && p1 == idx && p2 != 0) || (op == "OpenWrite" && p3 == idx) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn attach_snapshot(conn: &Connection, place: &str, sdb: &SnapshotDb) -> Result<()> {
    conn.execute("ATTACH DATABASE ?1 AS snapshot", params![sdb.uri()])
        .map(|_| ())
        .map_err(|e| {
            Error::sqlite(
                place,
                "cannot attach the snapshot's database as `snapshot`",
                e,
            )
        })
}
