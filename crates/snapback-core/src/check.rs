//! Verifying a repository.
//!
//! The structural check proves that every blob a manifest references is
//! indexed and that its pack exists with the indexed size. With `read_data`
//! every pack is read whole: its name is checked against its content, its
//! header parsed, and every blob decompressed (with its dictionary) and
//! hashed. Every dictionary (`dicts/`) is read and verified against its name
//! either way, and every blob whose dictionary is missing or damaged is a
//! problem of that dictionary. Each problem names the object and every
//! snapshot and file it affects.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::chunklist;
use crate::dict::Dict;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{decode_index, MasterIndex};
use crate::layout::{
    check_key, check_kind_of_key, dict_id_from_key, dict_key, pack_id_from_key, pack_key,
    CHECK_PREFIX, DATA_PREFIX, DICT_PREFIX, INDEX_PREFIX, SNAPSHOT_PREFIX, TIMELINE_PREFIX,
};
use crate::manifest::{FileEntry, Manifest};
use crate::pack::{open_blob, parse_header, parse_prefix};
use crate::repo::Repository;
use crate::segment::Segment;
use crate::Progress;
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub read_data: bool,
    pub lock_wait: std::time::Duration,
    /// Take no repository lock (`--no-lock`; see `Repository::read_lock`).
    pub no_lock: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Affected {
    pub snapshot: String,
    pub time: String,
    pub file: String,
}

/// Oldest first by full-precision time (snapshots of one second in the
/// order they were taken, not by id), then by id and file.
impl Ord for Affected {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        let t = |a: &Affected| crate::time::parse_rfc3339(&a.time).ok();
        t(self)
            .cmp(&t(o))
            .then_with(|| self.snapshot.cmp(&o.snapshot))
            .then_with(|| self.file.cmp(&o.file))
            .then_with(|| self.time.cmp(&o.time))
    }
}

impl PartialOrd for Affected {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The damaged or missing object.
    pub object: String,
    pub problem: String,
    /// Snapshots and files that cannot be restored exactly because of it.
    pub affects: Vec<Affected>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: u64,
    pub files: u64,
    pub packs: u64,
    pub blobs_checked: u64,
    pub bytes_read: u64,
    /// Packs that no index references (left by an interrupted snapshot); not
    /// an error, `prune` removes them.
    pub unindexed_packs: u64,
    /// Zstd dictionaries read and verified (`dicts/`).
    pub dictionaries: u64,
    /// Timeline segments checked, and the points they hold.
    pub segments: u64,
    pub points: u64,
    pub problems: Vec<Problem>,
    /// Snapshots whose time is ahead of this host's clock, of the store's
    /// clock when it wrote them, or of a snapshot written after them (see
    /// `Dating`): not damage, but a clock to fix.
    pub clock_ahead: Vec<ClockAhead>,
    /// Whether the check held a lock (see `Repository::read_lock`).
    pub lock: crate::lock::LockState,
}

/// A snapshot whose time is not trusted, for `check`.
#[derive(Debug, Clone, Serialize)]
pub struct ClockAhead {
    pub snapshot: String,
    pub time: String,
    pub host: String,
    /// Where `latest`, retention and `status` place it.
    pub trusted_time: String,
    pub why: crate::dating::Ahead,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Default)]
struct Problems {
    map: BTreeMap<String, (String, BTreeSet<Affected>)>,
}

impl Problems {
    fn add(&mut self, object: String, problem: String) {
        self.map.entry(object).or_insert((problem, BTreeSet::new()));
    }
    fn affect(&mut self, object: &str, problem: impl FnOnce() -> String, a: Affected) {
        self.map
            .entry(object.to_string())
            .or_insert_with(|| (problem(), BTreeSet::new()))
            .1
            .insert(a);
    }
}

/// The outcome of a check, kept in the repository for `status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CheckRecord {
    pub time: String,
    pub read_data: bool,
    pub ok: bool,
    pub problems: usize,
    pub snapshots: u64,
}

/// How many records of each kind of check are kept.
const CHECK_RECORDS_KEPT: usize = 100;

/// The newest record of each kind of check. A structural check never
/// stands in for a `--read-data` one (it cannot see a flipped bit), so each
/// kind keeps its own state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LastChecks {
    pub structure: Option<CheckRecord>,
    pub read_data: Option<CheckRecord>,
}

impl LastChecks {
    /// The newer of the two, whatever its kind.
    pub fn newest(&self) -> Option<&CheckRecord> {
        match (&self.structure, &self.read_data) {
            (Some(a), Some(b)) => Some(if b.time > a.time { b } else { a }),
            (a, b) => a.as_ref().or(b.as_ref()),
        }
    }

    /// True when the newest check of either kind found problems.
    pub fn failed(&self) -> bool {
        [&self.structure, &self.read_data]
            .iter()
            .any(|c| c.as_ref().is_some_and(|c| !c.ok))
    }
}

/// Chunk-list blobs read during a check, by id (or why they could not be).
type ListCache = HashMap<Id, std::result::Result<Vec<u8>, String>>;

impl Repository {
    /// Stores the outcome of a check under `checks/<time>-<kind>`, and keeps
    /// the newest records of each kind (so that hourly structural checks
    /// never push a weekly read-data failure out).
    pub fn record_check(&self, report: &CheckReport, read_data: bool) -> Result<()> {
        let now = crate::time::now();
        let rec = CheckRecord {
            time: crate::time::format_rfc3339(now),
            read_data,
            ok: report.ok(),
            problems: report.problems.len(),
            snapshots: report.snapshots,
        };
        let bytes = serde_json::to_vec(&rec)
            .map_err(|e| Error::internal(format!("cannot encode the check record: {e}")))?;
        let key = check_key(now.unix_timestamp_nanos(), read_data);
        crate::object::put_verified(self.store().as_ref(), &key, &bytes)?;
        let mut keys: Vec<String> = self
            .store()
            .list(CHECK_PREFIX)?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| check_kind_of_key(k) == Some(read_data))
            .collect();
        keys.sort();
        let excess = keys.len().saturating_sub(CHECK_RECORDS_KEPT);
        for k in &keys[..excess] {
            self.store().delete(k)?;
        }
        Ok(())
    }

    /// The newest check record, of either kind, if any.
    pub fn last_check(&self) -> Result<Option<CheckRecord>> {
        Ok(self.last_checks()?.newest().cloned())
    }

    /// The newest record of each kind of check.
    pub fn last_checks(&self) -> Result<LastChecks> {
        let mut keys: Vec<String> = self
            .store()
            .list(CHECK_PREFIX)?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        let mut out = LastChecks::default();
        for k in keys.iter().rev() {
            if out.structure.is_some() && out.read_data.is_some() {
                break;
            }
            let have = |rd: bool| {
                if rd {
                    out.read_data.is_some()
                } else {
                    out.structure.is_some()
                }
            };
            if check_kind_of_key(k).is_some_and(have) {
                continue;
            }
            let b = match self.store().get(k) {
                Ok(b) => b,
                // Trimmed by a concurrent check between list and read.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let rec: CheckRecord =
                serde_json::from_slice(&b).map_err(|e| Error::corrupt(k.clone(), e.to_string()))?;
            let slot = if rec.read_data {
                &mut out.read_data
            } else {
                &mut out.structure
            };
            if slot.is_none() {
                *slot = Some(rec);
            }
        }
        Ok(out)
    }

    pub fn check(&self, opts: &CheckOptions, progress: &dyn Progress) -> Result<CheckReport> {
        let lock = self.read_lock("check", opts.lock_wait, opts.no_lock)?;
        let mut report = CheckReport {
            lock: lock.state,
            ..Default::default()
        };
        let mut probs = Problems::default();
        let pack_sizes = self.check_pack_names(&mut probs)?;
        report.packs = pack_sizes.len() as u64;
        let index = self.check_indexes(&pack_sizes, &mut probs)?;
        report.unindexed_packs = pack_sizes
            .keys()
            .filter(|p| !index.packs().contains_key(p))
            .count() as u64;

        // Dictionaries: every one read and verified; one that an index
        // entry names and that is not there is a problem too.
        let dicts = self.check_dicts(&index, &mut probs, &mut report)?;

        // With --read-data: every pack, whole.
        let mut bad_blobs: HashMap<Id, String> = HashMap::new();
        if opts.read_data {
            self.read_every_pack(
                &pack_sizes,
                &index,
                &dicts,
                progress,
                &mut probs,
                &mut bad_blobs,
                &mut report,
            );
        }

        // Every manifest and everything it references.
        let mut missing_packs: HashSet<Id> = HashSet::new();
        for (p, s) in index.packs() {
            if pack_sizes.get(p) != Some(s) {
                missing_packs.insert(*p);
            }
        }
        let refs = (&missing_packs, &bad_blobs, &dicts);
        let manifests = self.check_manifests(&index, refs, &mut probs, &mut report)?;
        self.check_segments(&manifests, &index, refs, &mut probs, &mut report)?;
        report.problems = probs
            .map
            .into_iter()
            .map(|(object, (problem, affects))| Problem {
                object,
                problem,
                affects: affects.into_iter().collect(),
            })
            .collect();
        report.clock_ahead = self.clock_ahead()?;
        Ok(report)
    }

    /// The packs that exist (id -> size); an object under data/ that is not
    /// named like a pack is a problem.
    fn check_pack_names(&self, probs: &mut Problems) -> Result<HashMap<Id, u64>> {
        let mut pack_sizes: HashMap<Id, u64> = HashMap::new();
        for o in self.store().list(DATA_PREFIX)? {
            match pack_id_from_key(&o.key) {
                Some(id) => {
                    pack_sizes.insert(id, o.size);
                }
                None => probs.add(
                    o.key.clone(),
                    "an object under data/ that is not named like a pack".into(),
                ),
            }
        }
        Ok(pack_sizes)
    }

    /// Every index object, read fresh (not the cached one), each on its own
    /// so that one damaged index is reported without hiding the others; a
    /// pack an index lists that is missing or of another size is a problem.
    fn check_indexes(
        &self,
        pack_sizes: &HashMap<Id, u64>,
        probs: &mut Problems,
    ) -> Result<MasterIndex> {
        let store = self.store();
        let mut index = MasterIndex::default();
        for o in store.list(INDEX_PREFIX)? {
            let r = store.get(&o.key).map_err(Error::from).and_then(|b| {
                if Id::of(&b).to_hex() != o.key[INDEX_PREFIX.len()..] {
                    return Err(Error::corrupt(&o.key, "content does not hash to its name"));
                }
                decode_index(&b, &o.key)
            });
            match r {
                Ok(packs) => {
                    for p in &packs {
                        match pack_sizes.get(&p.id) {
                            None => probs.add(
                                pack_key(&p.id),
                                "pack is missing (an index lists it)".into(),
                            ),
                            Some(&s) if s != p.size => probs.add(
                                pack_key(&p.id),
                                format!("pack is {s} bytes, its index says {}", p.size),
                            ),
                            _ => {}
                        }
                        index.insert_pack(p);
                    }
                }
                Err(e) => probs.add(
                    o.key.clone(),
                    format!("unreadable index: {e} (run `snapback repair-index`)"),
                ),
            }
        }
        Ok(index)
    }

    /// `--read-data`: every pack read whole, in id order, and verified
    /// blob by blob; the blobs found damaged go to `bad_blobs`.
    #[allow(clippy::too_many_arguments)]
    fn read_every_pack(
        &self,
        pack_sizes: &HashMap<Id, u64>,
        index: &MasterIndex,
        dicts: &Dicts,
        progress: &dyn Progress,
        probs: &mut Problems,
        bad_blobs: &mut HashMap<Id, String>,
        report: &mut CheckReport,
    ) {
        progress.set_total(pack_sizes.values().sum());
        let mut ids: Vec<_> = pack_sizes.keys().copied().collect();
        ids.sort();
        for id in ids {
            let key = pack_key(&id);
            match self.store().get(&key) {
                Ok(bytes) => {
                    report.bytes_read += bytes.len() as u64;
                    progress.inc(bytes.len() as u64);
                    self.verify_pack_bytes(&id, &bytes, index, dicts, probs, bad_blobs, report);
                }
                Err(e) => probs.add(key, format!("cannot read pack: {e}")),
            }
        }
    }

    /// Every manifest and everything it references: each file's chunk
    /// list (its blobs, decoded, matching the file's size and checksum)
    /// and every chunk it names. Returns the readable manifests by id.
    fn check_manifests(
        &self,
        index: &MasterIndex,
        refs: (&HashSet<Id>, &HashMap<Id, String>, &Dicts),
        probs: &mut Problems,
        report: &mut CheckReport,
    ) -> Result<HashMap<Id, Manifest>> {
        let store = self.store();
        let mut list_cache: ListCache = HashMap::new();
        let mut manifests: HashMap<Id, Manifest> = HashMap::new();
        for o in store.list(SNAPSHOT_PREFIX)? {
            let r = store.get(&o.key).map_err(Error::from).and_then(|b| {
                if Id::of(&b).to_hex() != o.key[SNAPSHOT_PREFIX.len()..] {
                    return Err(Error::corrupt(&o.key, "content does not hash to its name"));
                }
                Manifest::parse(&b, &o.key)
            });
            let m = match r {
                Ok(m) => m,
                Err(e) => {
                    // The manifest is the only record of its files, so the
                    // affected snapshot is named and its files cannot be.
                    probs.affect(
                        &o.key,
                        || format!("unreadable manifest: {e}; this snapshot cannot be restored"),
                        Affected {
                            snapshot: o.key[SNAPSHOT_PREFIX.len()..].chars().take(8).collect(),
                            time: "unknown".into(),
                            file: "(every file of the snapshot: its manifest is unreadable)".into(),
                        },
                    );
                    continue;
                }
            };
            report.snapshots += 1;
            if let Some(id) = crate::layout::snapshot_id_from_key(&o.key) {
                manifests.insert(id, m.clone());
            }
            let short = o.key[SNAPSHOT_PREFIX.len()..]
                .chars()
                .take(8)
                .collect::<String>();
            for f in &m.files {
                report.files += 1;
                let aff = || Affected {
                    snapshot: short.clone(),
                    time: m.time.clone(),
                    file: f.path.clone(),
                };
                self.check_file(f, &o.key, &aff, index, refs, &mut list_cache, probs, report);
            }
        }
        Ok(manifests)
    }

    /// One file of the manifest `key`: its chunk list's blobs readable,
    /// the list decoding to the file's size and checksum, and every chunk
    /// it names present and (after `--read-data`) intact.
    #[allow(clippy::too_many_arguments)]
    fn check_file(
        &self,
        f: &FileEntry,
        key: &str,
        aff: &dyn Fn() -> Affected,
        index: &MasterIndex,
        (missing_packs, bad_blobs, dicts): (&HashSet<Id>, &HashMap<Id, String>, &Dicts),
        list_cache: &mut ListCache,
        probs: &mut Problems,
        report: &mut CheckReport,
    ) {
        // The chunk list.
        let mut lists_ok = true;
        for lid in f.chunks.blob_ids() {
            if let Some(why) = blob_problem(lid, index, missing_packs, bad_blobs, dicts) {
                probs.affect(&format!("blob {lid}"), || why.clone(), aff());
                lists_ok = false;
                continue;
            }
            let r = list_cache
                .entry(*lid)
                .or_insert_with(|| self.read_blob(index, lid).map_err(|e| e.to_string()));
            if let Err(e) = r {
                probs.affect(&format!("blob {lid}"), || e.clone(), aff());
                lists_ok = false;
            }
        }
        if !lists_ok {
            return;
        }
        let place = format!("chunk list of {}", f.path);
        let decoded = (|| -> Result<Vec<chunklist::ChunkRef>> {
            let mut base = Vec::new();
            for p in &f.chunks.base {
                if let Some(Ok(b)) = list_cache.get(p) {
                    base.extend(chunklist::decode_part(b, &place)?);
                }
            }
            let patch = match f.chunks.patch.as_ref().and_then(|p| list_cache.get(p)) {
                Some(Ok(b)) => chunklist::decode_patch(b, &place)?,
                _ => vec![],
            };
            chunklist::apply_patch(base, &patch, f.chunks.count, &place)
        })();
        let chunks = match decoded {
            Ok(c) => c,
            Err(e) => {
                probs.affect(
                    &format!("chunk list of {} in {}", f.path, key),
                    || e.to_string(),
                    aff(),
                );
                return;
            }
        };
        if chunks.iter().map(|c| c.len as u64).sum::<u64>() != f.size
            || crate::snapshot::checksum_of(&chunks).to_hex() != f.db_checksum
        {
            probs.affect(
                &format!("chunk list of {} in {}", f.path, key),
                || "does not match the file's size and checksum".into(),
                aff(),
            );
        }
        let mut seen = HashSet::new();
        for c in &chunks {
            if !seen.insert(c.id) {
                continue;
            }
            report.blobs_checked += 1;
            if let Some(why) = blob_problem(&c.id, index, missing_packs, bad_blobs, dicts) {
                let obj = problem_object(&c.id, index, dicts);
                probs.affect(&obj, || why, aff());
            }
        }
    }

    /// Snapshots whose time is ahead of a clock (the listing skips damaged
    /// manifests, which `check_manifests` reports).
    fn clock_ahead(&self) -> Result<Vec<ClockAhead>> {
        let snaps = self.snapshots()?;
        let dating = crate::dating::Dating::of(&snaps);
        let now = crate::time::now();
        Ok(snaps
            .iter()
            .filter_map(|s| {
                dating.ahead_at(s, now).map(|why| ClockAhead {
                    snapshot: s.id.to_hex(),
                    time: s.manifest.time.clone(),
                    host: s.manifest.host.clone(),
                    trusted_time: crate::time::format_rfc3339(dating.trusted(s)),
                    why,
                })
            })
            .collect())
    }

    /// Every timeline segment: readable (named by its content, decodes),
    /// its base manifest present and holding its database, every page it
    /// names indexed in a pack that exists (and, after `--read-data`,
    /// intact), and every point replaying to its checksum. Each problem
    /// names the points it affects.
    fn check_segments(
        &self,
        manifests: &HashMap<Id, Manifest>,
        index: &MasterIndex,
        (missing_packs, bad_blobs, dicts): (&HashSet<Id>, &HashMap<Id, String>, &Dicts),
        probs: &mut Problems,
        report: &mut CheckReport,
    ) -> Result<()> {
        if !self.config().allows_partial_reads() {
            return Ok(());
        }
        for o in self.store().list(TIMELINE_PREFIX)? {
            let short: String = o.key[TIMELINE_PREFIX.len()..].chars().take(8).collect();
            let r = self.store().get(&o.key).map_err(Error::from).and_then(|b| {
                if Id::of(&b).to_hex() != o.key[TIMELINE_PREFIX.len()..] {
                    return Err(Error::corrupt(&o.key, "content does not hash to its name"));
                }
                Segment::decode(&b, &o.key)
            });
            let seg = match r {
                Ok(s) => s,
                Err(e) => {
                    probs.affect(
                        &o.key,
                        || {
                            format!(
                                "unreadable timeline segment: {e}; its points cannot be restored"
                            )
                        },
                        Affected {
                            snapshot: format!("{short}/*"),
                            time: "unknown".into(),
                            file: "(every point of the segment: it is unreadable)".into(),
                        },
                    );
                    continue;
                }
            };
            report.segments += 1;
            report.points += seg.points.len() as u64;
            let aff = |k: usize| Affected {
                snapshot: format!("{short}/{k}"),
                time: crate::time::format_rfc3339(seg.points[k].time),
                file: seg.path.clone(),
            };
            let all = |probs: &mut Problems, why: String| {
                for k in 0..seg.points.len() {
                    probs.affect(&o.key, || why.clone(), aff(k));
                }
            };
            let Some(base) = manifests.get(&seg.base) else {
                all(
                    probs,
                    format!(
                        "its base snapshot {} is missing or unreadable; its points cannot be restored",
                        seg.base.short()
                    ),
                );
                continue;
            };
            let Some(file) = base.files.iter().find(|f| f.path == seg.path) else {
                all(
                    probs,
                    format!(
                        "its base snapshot {} does not hold {}",
                        seg.base.short(),
                        seg.path
                    ),
                );
                continue;
            };
            // Point k needs its own pages and those of every point before it.
            let mut first_bad: Option<usize> = None;
            let mut seen = HashSet::new();
            for (k, p) in seg.points.iter().enumerate() {
                for (_, id) in &p.changes {
                    if !seen.insert(*id) {
                        continue;
                    }
                    report.blobs_checked += 1;
                    if let Some(why) = blob_problem(id, index, missing_packs, bad_blobs, dicts) {
                        let obj = problem_object(id, index, dicts);
                        for later in k..seg.points.len() {
                            probs.affect(&obj, || why.clone(), aff(later));
                        }
                        first_bad = Some(first_bad.map_or(k, |f| f.min(k)));
                    }
                }
            }
            if first_bad == Some(0) {
                continue;
            }
            // Replay the points that have all their pages (the base's own
            // chunk list is checked with its manifest).
            let upto = first_bad.map_or(seg.points.len(), |k| k) - 1;
            let replayed = self.chunk_list(index, file).and_then(|list| {
                crate::segment::replay(list, seg.page_size, &seg.points, upto, &o.key)
            });
            if let Err(e) = replayed {
                all(probs, format!("its points do not replay: {e}"));
            }
        }
        Ok(())
    }

    /// Reads every dictionary under `dicts/` (verified against its name,
    /// loaded by zstd) and notes every one an index entry names that is
    /// not there.
    fn check_dicts(
        &self,
        index: &MasterIndex,
        probs: &mut Problems,
        report: &mut CheckReport,
    ) -> Result<Dicts> {
        let mut out = Dicts::default();
        for o in self.store().list(DICT_PREFIX)? {
            let Some(id) = dict_id_from_key(&o.key) else {
                probs.add(
                    o.key.clone(),
                    "an object under dicts/ that is not named like a dictionary".into(),
                );
                continue;
            };
            report.dictionaries += 1;
            let r = crate::object::get_named(self.store().as_ref(), &o.key, DICT_PREFIX)
                .and_then(|b| Dict::parse(b, self.config().compression_level, &o.key));
            match r {
                Ok(d) => {
                    out.ok.insert(id, Arc::new(d));
                }
                Err(e) => {
                    out.bad
                        .insert(id, format!("dictionary {} is damaged: {e}", id.short()));
                }
            }
        }
        for d in index.dicts() {
            if !out.ok.contains_key(d) && !out.bad.contains_key(d) {
                out.bad.insert(
                    *d,
                    format!(
                        "dictionary {} is missing (indexed blobs were compressed with it)",
                        d.short()
                    ),
                );
            }
        }
        for (id, why) in &out.bad {
            probs.add(dict_key(id), why.clone());
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn verify_pack_bytes(
        &self,
        id: &Id,
        bytes: &[u8],
        index: &MasterIndex,
        dicts: &Dicts,
        probs: &mut Problems,
        bad: &mut HashMap<Id, String>,
        report: &mut CheckReport,
    ) {
        let key = pack_key(id);
        let name_ok = Id::of(bytes) == *id;
        if !name_ok {
            probs.add(
                key.clone(),
                "pack content does not hash to its name (bit rot or tampering)".into(),
            );
        }
        // Find exactly which blobs are damaged: by the header if it parses,
        // else by the index's view of the pack.
        let from_header = parse_prefix(self.codec(), bytes, &key).ok().and_then(|p| {
            let h = p.hlen as usize;
            (bytes.len() >= 12 + h)
                .then(|| {
                    parse_header(
                        self.codec(),
                        &p,
                        &bytes[12..12 + h],
                        bytes.len() as u64,
                        &key,
                    )
                    .ok()
                })
                .flatten()
        });
        let entries: Vec<_> = match from_header {
            Some(e) => e
                .into_iter()
                .map(|e| (e.id, e.offset, e.stored_len, e.raw_len, e.dict))
                .collect(),
            None => {
                probs.add(key.clone(), "pack header is unreadable".into());
                index
                    .blobs()
                    .filter(|(_, l)| l.pack == *id)
                    .map(|(b, l)| (*b, l.offset, l.stored_len, l.raw_len, index.dict_of(&l)))
                    .collect()
            }
        };
        for (bid, off, len, raw, dict) in entries {
            report.blobs_checked += 1;
            let end = off as usize + len as usize;
            let d = match &dict {
                Some(d) => match dicts.ok.get(d) {
                    Some(d) => Some(d.clone()),
                    None => {
                        let why = dicts
                            .bad
                            .get(d)
                            .cloned()
                            .unwrap_or_else(|| format!("dictionary {} is missing", d.short()));
                        bad.insert(bid, format!("blob in {key} cannot be read: {why}"));
                        continue;
                    }
                },
                None => None,
            };
            let r = if end <= bytes.len() {
                open_blob(
                    self.codec(),
                    &bid,
                    &bytes[off as usize..end],
                    raw,
                    &key,
                    d.as_deref(),
                )
                .map(|_| ())
            } else {
                Err(Error::corrupt(&key, "blob extends past the end"))
            };
            if let Err(e) = r {
                bad.insert(bid, format!("damaged blob in {key}: {e}"));
            }
        }
        if !name_ok && bad.values().all(|v| !v.contains(&key)) {
            // The damage is outside every blob (header padding): the pack
            // is still usable, but it is reported above.
        }
    }
}

/// The dictionaries a check found: read and verified, or not usable (and
/// why).
#[derive(Default)]
struct Dicts {
    ok: HashMap<Id, Arc<Dict>>,
    bad: HashMap<Id, String>,
}

impl Dicts {
    /// The unusable dictionary a blob's location names, if any.
    fn bad_of(&self, index: &MasterIndex, id: &Id) -> Option<(Id, &String)> {
        let d = index.get(id).and_then(|l| index.dict_of(&l))?;
        self.bad.get(&d).map(|why| (d, why))
    }
}

fn blob_problem(
    id: &Id,
    index: &MasterIndex,
    missing: &HashSet<Id>,
    bad: &HashMap<Id, String>,
    dicts: &Dicts,
) -> Option<String> {
    match index.get(id) {
        None => Some(format!(
            "blob {} is not in any index (its data is missing)",
            id.short()
        )),
        Some(l) if missing.contains(&l.pack) => Some(format!(
            "pack {} is missing or has the wrong size",
            l.pack.short()
        )),
        Some(_) => match dicts.bad_of(index, id) {
            Some((_, why)) => Some(format!(
                "{why}; the blobs compressed with it cannot be read"
            )),
            None => bad.get(id).cloned(),
        },
    }
}

/// The object a blob's problem is reported on: its dictionary when that is
/// what is wrong, else its pack, else the blob.
fn problem_object(id: &Id, index: &MasterIndex, dicts: &Dicts) -> String {
    if let Some((d, _)) = dicts.bad_of(index, id) {
        return dict_key(&d);
    }
    match index.get(id) {
        Some(l) => pack_key(&l.pack),
        None => format!("blob {id}"),
    }
}

#[cfg(test)]
mod affected_order_tests {
    use super::Affected;

    #[test]
    fn affected_snapshots_of_one_second_are_listed_by_full_time_not_by_id() {
        let a = |snapshot: &str, time: &str| Affected {
            snapshot: snapshot.into(),
            time: time.into(),
            file: "/db".into(),
        };
        let mut v = [
            a("00000000", "2026-03-01T10:00:00.9Z"),
            a("ffffffff", "2026-03-01T10:00:00Z"),
            a("88888888", "2026-03-01T10:00:00.1Z"),
        ];
        v.sort();
        let ids: Vec<&str> = v.iter().map(|x| x.snapshot.as_str()).collect();
        assert_eq!(ids, vec!["ffffffff", "88888888", "00000000"]);
    }
}
