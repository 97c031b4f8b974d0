//! Applying a planned repair: the pre-repair snapshot, the recorded run,
//! the batches, the SQL steps, the check that the selection now matches,
//! and the audit entry.

use std::collections::HashSet;

use rusqlite::Connection;
use snapback_core::Repository;

use super::record::{append_once, record_stopped, unfinished_entry};
use super::{begin_run, key_string, now, pre_repair_snapshot, Outcome, RepairSession, SAMPLE_ROWS};
use crate::apply::{apply_changes, finish_run, ApplyReport};
use crate::audit::{self, AuditEntry};
use crate::changes::{Op, TableCounts};
use crate::diff::{diff_table, DiffKind, Side};
use crate::error::{Error, Result};
use crate::report::row_json;
use crate::script::Action;
use crate::source::open_live_rw;

impl RepairSession {
    /// Applies the plan (or resumes the interrupted run). Needs the lock:
    /// plan with `lock = true`.
    pub fn apply(
        &self,
        repo: &Repository,
        mut progress: impl FnMut(&str),
    ) -> Result<Option<Outcome>> {
        if self.lock.is_none() {
            return Err(snapback_core::Error::internal(
                "RepairSession::apply needs the repair lock; plan with lock = true",
            )
            .into());
        }
        if self.is_noop() {
            return Ok(None);
        }
        let place = self.live.display().to_string();
        let mut conn = open_live_rw(&self.live, self.opts.busy_timeout)?;
        let (repair_id, pre, resumed) = match &self.plan.resume {
            Some(r) => {
                progress(&format!(
                    "resuming repair {} ({} of {} batches were committed)",
                    r.repair_id, r.batches_done, r.batches_total
                ));
                (r.repair_id.clone(), r.pre_repair_snapshot.clone(), true)
            }
            None => {
                progress("taking a pre-repair snapshot of the live database");
                let pre = pre_repair_snapshot(repo, &self.live, &self.opts)?;
                progress(&format!("pre-repair snapshot {pre}"));
                let id = begin_run(
                    &conn,
                    &place,
                    "repair",
                    self.script.sha256.clone(),
                    &self.plan.changes,
                    &pre,
                    self.plan.source_snapshot.clone(),
                )?;
                (id, Some(pre), false)
            }
        };
        let changes = &self.plan.changes;
        let stopped = |conn: &Connection, e: Error| {
            let steps: Vec<String> = self
                .script
                .script
                .sql
                .iter()
                .map(|q| q.statement.clone())
                .collect();
            let entry = AuditEntry {
                script_path: Some(self.script.path.display().to_string()),
                script: Some(self.script.text.clone()),
                script_sha256: Some(self.script.sha256.clone()),
                source_snapshot: self.plan.source_snapshot.clone(),
                source_db: self.plan.source_db.clone(),
                ..unfinished_entry(
                    "repair",
                    &repair_id,
                    &place,
                    pre.clone(),
                    Some(e.to_string()),
                )
            };
            record_stopped(repo, conn, &place, &repair_id, changes, &steps, entry, e)
        };
        let report = match apply_changes(
            &mut conn,
            &self.live,
            &repair_id,
            changes,
            &self.opts.apply,
            |n, total| {
                tracing::info!(batch = n, of = total, "batch committed");
            },
        ) {
            Ok(r) => r,
            Err(e) => return Err(stopped(&conn, e)),
        };
        progress(&format!(
            "applied {} row change(s) in {} batch(es){}",
            report.rows_changed,
            report.batches_applied,
            if report.batches_resumed > 0 {
                format!(
                    " ({} batch(es) had been committed before)",
                    report.batches_resumed
                )
            } else {
                String::new()
            }
        ));
        let sql_steps = match self.run_sql_steps(&mut conn, &repair_id) {
            Ok(s) => s,
            Err(e) => {
                let _ = conn.execute_batch("DETACH DATABASE snapshot");
                return Err(stopped(&conn, e));
            }
        };

        // Diff again: what the enabled actions cover should be gone.
        let (remaining, remaining_sample) = self.verify(&conn, &report)?;
        let applied = report.applied(changes);
        let counts = self.counts_after(&report);
        let entry = AuditEntry {
            seq: 0,
            prev: None,
            time: now(),
            user: audit::os_user(),
            host: audit::host(),
            kind: "repair".into(),
            repair_id: repair_id.clone(),
            undoes: None,
            live: place.clone(),
            script_path: Some(self.script.path.display().to_string()),
            script: Some(self.script.text.clone()),
            script_sha256: Some(self.script.sha256.clone()),
            source_snapshot: self.plan.source_snapshot.clone(),
            source_db: self
                .plan
                .source_db
                .clone()
                .or_else(|| Some(self.sdb.path.display().to_string())),
            pre_repair_snapshot: pre.clone(),
            counts: counts.clone(),
            changes: applied,
            conflicts: report.conflicts.iter().map(|c| c.2.clone()).collect(),
            sql_steps: sql_steps.clone(),
            remaining_differences: remaining,
            snapback_version: env!("CARGO_PKG_VERSION").into(),
            failed: None,
        };
        let stored = append_once(repo, entry)?;
        finish_run(&conn, &place, &repair_id, &stored.key)?;
        Ok(Some(Outcome {
            repair_id,
            resumed,
            pre_repair_snapshot: pre,
            rows_changed: report.rows_changed,
            batches_applied: report.batches_applied,
            batches_resumed: report.batches_resumed,
            counts,
            conflicts: report.conflicts.into_iter().map(|c| c.2).collect(),
            sql_steps,
            remaining_differences: remaining,
            remaining_sample,
            audit_key: stored.key,
        }))
    }

    fn counts_after(&self, report: &ApplyReport) -> Vec<TableCounts> {
        let mut out: Vec<TableCounts> = Vec::new();
        for (ti, t) in self.plan.changes.tables.iter().enumerate() {
            let mut c = self
                .plan
                .tables
                .iter()
                .find(|p| p.table == t.table)
                .map(|p| p.counts.clone())
                .unwrap_or_default();
            c.table = t.table.clone();
            // Counts of the stored change set (a resumed run may differ
            // from a fresh diff), minus the rows left alone.
            c.insert = 0;
            c.update = 0;
            c.delete = 0;
            for (ci, ch) in t.changes.iter().enumerate() {
                if report
                    .conflicts
                    .iter()
                    .any(|(a, b, _)| *a == ti && *b == ci)
                {
                    continue;
                }
                match ch.op {
                    Op::Insert => c.insert += 1,
                    Op::Update => c.update += 1,
                    Op::Delete => c.delete += 1,
                }
            }
            c.conflicts = report.conflicts.iter().filter(|(a, _, _)| *a == ti).count() as u64;
            out.push(c);
        }
        out
    }

    /// Differences left that an enabled action covers, minus guarded rows
    /// and rows left alone as conflicts.
    fn verify(
        &self,
        conn: &Connection,
        report: &ApplyReport,
    ) -> Result<(u64, Vec<serde_json::Value>)> {
        let sconn = self.sdb.open()?;
        let sside = Side {
            conn: &sconn,
            place: self.sdb.describe(),
        };
        let lside = Side {
            conn,
            place: self.live.display().to_string(),
        };
        let skip: HashSet<(String, String)> = report
            .conflicts
            .iter()
            .map(|(_, _, c)| (c.table.clone(), key_string(&c.key)))
            .collect();
        // A three-way repair restores only its planned rows: the other
        // differences from before were written since, and stay.
        let planned: Option<HashSet<(String, String)>> = self.plan.incident.as_ref().map(|_| {
            self.plan
                .changes
                .tables
                .iter()
                .flat_map(|t| {
                    t.changes
                        .iter()
                        .map(|c| (t.table.clone(), key_string(&c.key)))
                })
                .collect()
        });
        let mut remaining = 0u64;
        let mut sample = Vec::new();
        for (ts, pt) in self.script.script.tables.iter().zip(&self.tables) {
            diff_table(&sside, &lside, pt, |d| {
                let covered = match d.kind {
                    DiffKind::OnlyInSnapshot => ts.has(Action::InsertMissing),
                    DiffKind::OnlyInLive => ts.has(Action::DeleteExtra),
                    DiffKind::Changed => ts.has(Action::UpdateChanged),
                };
                let k = (pt.table.clone(), key_string(&d.key));
                if covered
                    && !d.guarded
                    && !skip.contains(&k)
                    && planned.as_ref().is_none_or(|p| p.contains(&k))
                {
                    remaining += 1;
                    if sample.len() < SAMPLE_ROWS {
                        sample.push(row_json(pt, &d));
                    }
                }
                Ok(())
            })?;
        }
        Ok((remaining, sample))
    }
}
