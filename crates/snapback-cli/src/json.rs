//! The `--json` documents: one `Serialize` type per document, so that each
//! shape is written once, here, and matches docs/scripting.md.

use serde::Serialize;
use snapback_core::{
    Ahead, CheckRecord, Dating, FailedFile, FileKind, ForgetPlan, FoundLock, Id, KeyInfo,
    LastChecks, PrunePlan, PruneReport, RepairIndexPlan, RepairIndexReport, Snapshot,
    SnapshotReport, SqliteFacts,
};
use snapback_storage::RequestStats;

/// `init --json`.
#[derive(Serialize)]
pub struct Init {
    pub repository: String,
    pub repo_id: String,
    pub encrypted: bool,
    pub format_version: u32,
}

/// The store requests of a command (filled in by the S3 backend).
#[derive(Serialize)]
pub struct Requests {
    pub put: u64,
    pub get: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl From<RequestStats> for Requests {
    fn from(r: RequestStats) -> Requests {
        Requests {
            put: r.puts,
            get: r.gets,
            head: r.heads,
            list: r.lists,
            delete: r.deletes,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
        }
    }
}

/// One committed snapshot, as `snapshot --json` reports it.
#[derive(Serialize)]
pub struct Committed<'a> {
    pub id: Id,
    pub short_id: String,
    pub time: &'a str,
    pub paths: &'a [String],
    pub files: u64,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_added: u64,
    pub objects_written: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub duration_ms: u64,
    pub requests: Requests,
    /// Files the snapshot left out (exit 6); empty when it holds them all.
    pub failed: &'a [FailedFile],
}

impl<'a> Committed<'a> {
    pub fn new(r: &'a SnapshotReport, requests: RequestStats) -> Committed<'a> {
        let s = &r.manifest.stats;
        Committed {
            id: r.id,
            short_id: r.id.short(),
            time: &r.manifest.time,
            paths: &r.manifest.paths,
            files: s.files,
            bytes_read: s.bytes_read,
            bytes_new: s.bytes_new,
            bytes_added: s.bytes_added,
            // The manifest is written after the stats are taken.
            objects_written: s.objects_written + 1,
            chunks: s.chunks,
            new_chunks: s.new_chunks,
            duration_ms: s.duration_ms,
            requests: requests.into(),
            failed: &r.failed,
        }
    }
}

/// `snapshot --json` of the config's sources (one snapshot per source):
/// one document for them all.
#[derive(Serialize)]
pub struct SnapshotRun<'a> {
    pub snapshots: Vec<Committed<'a>>,
    pub failed: Vec<FailedSource>,
}

/// A source whose snapshot failed (nothing of it was committed).
#[derive(Serialize)]
pub struct FailedSource {
    pub paths: Vec<String>,
    pub error: ErrorObject,
}

/// An error: the `error` member of the object printed on stderr under
/// `--json`, and of a failed source in `snapshot --json`.
#[derive(Serialize)]
pub struct ErrorObject {
    pub kind: &'static str,
    pub message: String,
    pub causes: Vec<String>,
    pub exit_code: u8,
}

/// `{"error": {...}}`, on stderr.
#[derive(Serialize)]
pub struct ErrorDoc {
    pub error: ErrorObject,
}

/// One snapshot in `snapshots --json`.
#[derive(Serialize)]
pub struct Listed<'a> {
    /// A manifest's full id, or a point's `SEGMENT/INDEX`: what selects it.
    pub id: String,
    pub short_id: String,
    pub time: &'a str,
    pub future: bool,
    pub clock_ahead: Option<&'a Ahead>,
    pub written: Option<String>,
    pub host: &'a str,
    pub tags: &'a [String],
    pub paths: &'a [String],
    pub logical_size: u64,
    pub bytes_added: u64,
    pub files: Vec<ListedFile<'a>>,
    /// Only on a timeline point (`snapshots --points`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point: Option<ListedPoint>,
}

/// Where a listed point is, and what restoring it replays.
#[derive(Serialize)]
pub struct ListedPoint {
    pub segment: Id,
    pub index: usize,
    /// The manifest whose image the point's changes apply to.
    pub base: Id,
    /// Pages the point changed since the previous one.
    pub pages_changed: usize,
}

#[derive(Serialize)]
pub struct ListedFile<'a> {
    pub path: &'a str,
    pub kind: FileKind,
    pub size: u64,
    pub sha256: Option<Id>,
    pub db_checksum: &'a str,
    pub sqlite: &'a Option<SqliteFacts>,
}

impl<'a> Listed<'a> {
    /// `pages_changed`: for a point, how many pages it changed.
    pub fn new(s: &'a Snapshot, dating: &'a Dating, pages_changed: Option<usize>) -> Listed<'a> {
        let m = &s.manifest;
        let now = snapback_core::time::now();
        Listed {
            id: s.selector(),
            short_id: s.name(),
            time: &m.time,
            future: snapback_core::is_future(s.time, now),
            clock_ahead: dating.ahead(&s.id),
            written: s.written.map(snapback_core::time::format_rfc3339),
            host: &m.host,
            tags: &m.tags,
            paths: &m.paths,
            logical_size: m.logical_size(),
            bytes_added: m.stats.bytes_added,
            files: m
                .files
                .iter()
                .map(|f| ListedFile {
                    path: &f.path,
                    kind: f.kind,
                    size: f.size,
                    sha256: f.sha256,
                    db_checksum: &f.db_checksum,
                    sqlite: &f.sqlite,
                })
                .collect(),
            point: s.point.map(|p| ListedPoint {
                segment: p.segment,
                index: p.index,
                base: p.base,
                pages_changed: pages_changed.unwrap_or(0),
            }),
        }
    }
}

/// `restore --json`.
#[derive(Serialize)]
pub struct Restored {
    /// The full id of the snapshot restored, or the point's `SEGMENT/INDEX`.
    pub snapshot: String,
    pub files: u64,
    pub bytes: u64,
    pub lock: &'static str,
    /// With `--delta` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaRestored>,
}

/// The `delta` member of `restore --delta --json`.
#[derive(Serialize)]
pub struct DeltaRestored {
    pub dest_existed: bool,
    pub pages_compared: Option<u64>,
    pub pages_written: Option<u64>,
    pub chunks_compared: u64,
    pub chunks_written: u64,
    pub bytes_written: u64,
}

impl From<&snapback_core::DeltaReport> for DeltaRestored {
    fn from(d: &snapback_core::DeltaReport) -> Self {
        DeltaRestored {
            dest_existed: d.dest_existed,
            pages_compared: d.pages_compared,
            pages_written: d.pages_written,
            chunks_compared: d.chunks_compared,
            chunks_written: d.chunks_written,
            bytes_written: d.bytes_written,
        }
    }
}

/// `prune --json`, and the `prune` member of `forget --prune --json`.
#[derive(Serialize)]
pub struct Pruned<'a> {
    pub plan: &'a PrunePlan,
    pub report: &'a PruneReport,
    pub dry_run: bool,
}

/// `forget --json` (not a dry run): the plan applied, the number of
/// snapshots removed, and with `--prune` the prune's plan and report, in
/// one document.
#[derive(Serialize)]
pub struct Forgotten<'a> {
    #[serde(flatten)]
    pub plan: &'a ForgetPlan,
    pub removed: usize,
    /// With --keep-within-points: the points kept and dropped per segment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<&'a snapback_core::PointPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points_applied: Option<&'a snapback_core::PointsApplied>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<Pruned<'a>>,
}

/// `forget --dry-run --json`: the plan, and with --keep-within-points the
/// points' plan.
#[derive(Serialize)]
pub struct ForgetDryRun<'a> {
    #[serde(flatten)]
    pub plan: &'a ForgetPlan,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<&'a snapback_core::PointPlan>,
}

/// `repair-index --json`.
#[derive(Serialize)]
pub struct IndexRepaired<'a> {
    pub plan: &'a RepairIndexPlan,
    pub report: &'a RepairIndexReport,
    pub dry_run: bool,
}

/// `unlock --json`.
#[derive(Serialize)]
pub struct Unlocked<'a> {
    pub removed: &'a [FoundLock],
    pub remaining: usize,
}

/// `status --json`; `R` is a row of the status table.
#[derive(Serialize)]
pub struct Status<'a, R: Serialize> {
    pub ok: bool,
    pub sources: &'a [R],
    pub checks: &'a LastChecks,
    pub last_check: Option<&'a CheckRecord>,
}

/// `verify-live --json`.
#[derive(Serialize)]
pub struct VerifyLive<'a> {
    /// "ok" or "mismatch".
    pub result: &'static str,
    pub mismatch_count: u64,
    #[serde(flatten)]
    pub report: &'a snapback_core::VerifyLiveReport,
}

/// `key list --json`.
#[derive(Serialize)]
pub struct Keys<'a> {
    pub keys: Vec<Key<'a>>,
}

#[derive(Serialize)]
pub struct Key<'a> {
    pub id: Id,
    pub created: &'a str,
    pub host: &'a str,
    pub user: &'a str,
    pub kdf_memory_kib: u32,
    pub kdf_iterations: u32,
    pub current: bool,
    pub damaged: &'a Option<String>,
    pub foreign: &'a Option<String>,
}

impl<'a> From<&'a KeyInfo> for Key<'a> {
    fn from(k: &'a KeyInfo) -> Key<'a> {
        Key {
            id: k.id,
            created: &k.created,
            host: &k.host,
            user: &k.user,
            kdf_memory_kib: k.memory_kib,
            kdf_iterations: k.iterations,
            current: k.current,
            damaged: &k.damaged,
            foreign: &k.foreign,
        }
    }
}

/// `key add --json`.
#[derive(Serialize)]
pub struct KeyAdded {
    pub added: Id,
}

/// `key remove --json`.
#[derive(Serialize)]
pub struct KeyRemoved {
    pub removed: Id,
}

// The documents of diff, repair, audit and undo (docs/repair.md,
// docs/scripting.md). They were first built with `json!()`, and serde_json
// is built without `preserve_order`, so every object in them printed its
// keys sorted, at every depth; scripts parse them as they are. To keep them
// byte for byte: each struct below declares its fields in alphabetical
// order of their names, and a member that holds a library type is written
// through `sorted`, which sorts its keys at every depth as `json!()` did.
// (Documents printed straight from a library type, such as the dry run's
// plan, `undo` and `repair --abandon`, keep that type's field order.)

/// Writes `v` as a `serde_json::Value` writes it: each object's keys sorted.
fn sorted<T: Serialize, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    serde_json::to_value(v)
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

/// `diff --json`: a schema difference (one line).
#[derive(Serialize)]
pub struct DiffSchema<'a> {
    pub table: &'a str,
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub what: &'a str,
}

impl<'a> DiffSchema<'a> {
    pub fn new(d: &'a snapback_repair::SchemaDiff) -> Self {
        DiffSchema {
            table: &d.table,
            type_: "schema",
            what: &d.what,
        }
    }
}

/// `diff --json`: a table that was not compared (one line).
#[derive(Serialize)]
pub struct DiffSkipped<'a> {
    pub reason: &'a str,
    pub table: &'a str,
    #[serde(rename = "type")]
    pub type_: &'static str,
}

/// A table of the summary's `skipped` list.
#[derive(Serialize)]
pub struct SkippedTable<'a> {
    pub reason: &'a str,
    pub table: &'a str,
}

/// `diff --json`: one table's summary (one line, after its rows).
#[derive(Serialize)]
pub struct DiffTable<'a> {
    pub compared: Vec<&'a str>,
    #[serde(serialize_with = "sorted")]
    pub counts: &'a snapback_repair::DiffCounts,
    #[serde(serialize_with = "sorted")]
    pub key: &'a snapback_repair::Key,
    pub table: &'a str,
    #[serde(rename = "type")]
    pub type_: &'static str,
}

/// `diff --json`: the last line.
#[derive(Serialize)]
pub struct DiffSummary<'a> {
    #[serde(serialize_with = "sorted")]
    pub counts: &'a snapback_repair::DiffCounts,
    pub live: &'a std::path::Path,
    pub schema_differences: u64,
    /// The restore script written by `--emit-script`, if any.
    pub script: Option<&'a std::path::Path>,
    pub skipped: Vec<SkippedTable<'a>>,
    pub snapshot: Option<String>,
    pub snapshot_db: &'a Option<String>,
    /// What was read of a point opened in place (null for a file given
    /// with --snapshot-db).
    pub snapshot_read: Option<SnapshotRead>,
    pub tables: usize,
    #[serde(rename = "type")]
    pub type_: &'static str,
}

/// The pages of the snapshot's database that a diff read, of all its pages.
#[derive(Serialize)]
pub struct SnapshotRead {
    pub bytes: u64,
    pub pages: u64,
    pub pages_read: u64,
}

impl SnapshotRead {
    pub fn of(s: snapback_repair::ReadStats) -> SnapshotRead {
        SnapshotRead {
            bytes: s.bytes_fetched,
            pages: s.pages,
            pages_read: s.pages_read,
        }
    }
}

/// The plan file of `repair --plan-out`, read back by `--apply --plan`.
#[derive(Serialize)]
pub struct PlanFile<'a> {
    #[serde(serialize_with = "sorted")]
    pub changes: &'a snapback_repair::ChangeSet,
    #[serde(serialize_with = "sorted")]
    pub counts: Vec<&'a snapback_repair::TableCounts>,
    pub format: &'static str,
    pub live: &'a std::path::Path,
    pub script: &'a str,
    pub script_path: &'a std::path::Path,
    pub script_sha256: &'a str,
    pub source_snapshot: &'a Option<String>,
    pub version: u32,
}

impl<'a> PlanFile<'a> {
    /// The `format` member, which `--apply --plan` checks.
    pub const FORMAT: &'static str = "snapback-repair-plan";

    pub fn new(s: &'a snapback_repair::RepairSession) -> Self {
        PlanFile {
            changes: &s.plan.changes,
            counts: s.plan.tables.iter().map(|t| &t.counts).collect(),
            format: Self::FORMAT,
            live: &s.live,
            script: &s.script.text,
            script_path: &s.script.path,
            script_sha256: &s.script.sha256,
            source_snapshot: &s.plan.source_snapshot,
            version: 1,
        }
    }
}

/// `repair --apply --json` when there is nothing to change.
#[derive(Serialize)]
pub struct RepairNoop<'a> {
    pub message: &'static str,
    /// Always null: nothing was applied.
    pub outcome: Option<()>,
    #[serde(serialize_with = "sorted")]
    pub plan: &'a snapback_repair::Plan,
}

/// `repair --apply --json`: the plan and what applying it did.
#[derive(Serialize)]
pub struct RepairApplied<'a> {
    #[serde(serialize_with = "sorted")]
    pub outcome: &'a snapback_repair::Outcome,
    #[serde(serialize_with = "sorted")]
    pub plan: &'a snapback_repair::Plan,
}

/// `audit verify --json`.
#[derive(Serialize)]
pub struct AuditVerified<'a> {
    #[serde(serialize_with = "sorted")]
    pub broken: &'a Option<String>,
    pub entries: usize,
    pub ok: bool,
    #[serde(serialize_with = "sorted")]
    pub unclaimed: &'a [String],
}

/// One entry of `audit --json` (an array of them).
#[derive(Serialize)]
pub struct AuditListed<'a> {
    #[serde(serialize_with = "sorted")]
    pub entry: &'a snapback_repair::AuditEntry,
    pub key: &'a str,
    pub sha256: &'a str,
}

impl<'a> From<&'a snapback_repair::StoredEntry> for AuditListed<'a> {
    fn from(e: &'a snapback_repair::StoredEntry) -> Self {
        AuditListed {
            entry: &e.entry,
            key: &e.key,
            sha256: &e.hash,
        }
    }
}

/// A sample row of the dry run's terminal output (shortened there).
#[derive(Serialize)]
pub struct SampleRow<'a> {
    pub changes: Option<&'a serde_json::Value>,
    pub key: &'a serde_json::Value,
    pub live: Option<&'a serde_json::Value>,
    pub snapshot: Option<&'a serde_json::Value>,
}
