//! WAL-delta capture: which pages a capture must read, given what the
//! previous capture of the same database knew.
//!
//! The previous capture left a `CaptureState`: the WAL salts and the last
//! commit frame its image is known to include. Every page written since is
//! in a frame after that one, in the same WAL generation (same salts), so
//! the frame headers say which pages to read. Their content is read through
//! the read transaction, like a full scan's; only the choice of pages comes
//! from the WAL file. Everything that could make that choice wrong is
//! checked, and any doubt is a reason to fall back to a full scan, which is
//! always right. The order (docs/format.md, "WAL-delta capture"):
//!
//! 1. `before`: the wal-index header (its `mxFrame` and salts) and the
//!    database file's identity, read before the read transaction begins, so
//!    the transaction sees at least the commits up to that `mxFrame`;
//! 2. the read transaction begins (the caller);
//! 3. `changed_pages`: the WAL header and the frames after the saved one,
//!    along the checksum chain; then the header again (a reader that found
//!    the WAL fully checkpointed does not pin it, so a writer may restart it
//!    meanwhile);
//! 4. the new position is the `mxFrame` read in step 1: a lower bound of
//!    what the transaction saw, so the next capture re-reads what came
//!    after it and never skips a frame.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::capture_state::CaptureState;
use crate::wal::{self, Cksum, IndexHeader, Salts, WalHeader};

/// What is read before the read transaction begins.
#[derive(Debug, Clone)]
pub struct Before {
    pub index: Option<IndexHeader>,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// The database file's mtime and ctime (ns), and the wal-index's
    /// checkpoint counters (see `capture_state::DbFile`).
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub backfill: Option<[u32; 2]>,
}

impl Before {
    /// What a capture state records of the database file.
    pub fn db_file(&self) -> crate::capture_state::DbFile {
        crate::capture_state::DbFile {
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            backfill: self.backfill,
        }
    }
}

/// Reads the wal-index header and the database file's identity. Never
/// opens the database file itself: closing a descriptor of a file drops
/// every POSIX lock this process holds on it, SQLite's included (see
/// `wal::read_index_header` for the `-shm` file).
pub fn before(db: &Path) -> Before {
    // The counters before the stat: a checkpoint that writes the file
    // after them moves the timestamps past what is recorded here, so it
    // is seen as a write by the next capture, and explained by counters
    // that moved since.
    let backfill = wal::read_backfill(db).ok().flatten();
    let meta = std::fs::metadata(db).ok();
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    Before {
        index: wal::read_index_header(db).ok().flatten(),
        dev: meta.as_ref().map(|m| m.dev()).unwrap_or(0),
        ino: meta.as_ref().map(|m| m.ino()).unwrap_or(0),
        size: meta.as_ref().map(|m| m.size()).unwrap_or(0),
        mtime_ns: meta.as_ref().map_or(0, |m| ns(m.mtime(), m.mtime_nsec())),
        ctime_ns: meta.as_ref().map_or(0, |m| ns(m.ctime(), m.ctime_nsec())),
        backfill,
    }
}

/// A WAL position that a captured image is known to include.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub salts: Salts,
    /// The last commit frame included (0: none of this generation).
    pub frame: u32,
    /// The chain checksum stored in that frame (zeros for frame 0).
    pub cksum: Cksum,
    /// The WAL header's checkpoint sequence number of that generation,
    /// when the WAL header was read.
    pub ckpt: Option<u32>,
}

/// The pages a delta capture must read.
#[derive(Debug, Clone)]
pub struct Changed {
    /// Sorted page numbers (1-based), each at most the page count. Page 1
    /// is always among them (its header is recorded in the manifest).
    pub pages: Vec<u64>,
    /// Entries `0..keep` of the base chunk list that may be reused where
    /// `pages` does not replace them; every page past `keep` is in `pages`.
    pub keep: u64,
    /// The position the new image is known to include, if it can be
    /// established.
    pub position: Option<Position>,
}

/// The page that holds byte offset 2^30, which SQLite never uses.
pub fn lock_byte_page(page_size: u32) -> u64 {
    (1u64 << 30) / page_size as u64 + 1
}

fn open_wal(db: &Path) -> Result<(File, WalHeader), String> {
    let f = File::open(wal::wal_path(db))
        .map_err(|e| format!("the -wal file cannot be opened ({e})"))?;
    let h = wal::read_header(&f)
        .map_err(|e| format!("the -wal file cannot be read ({e})"))?
        .ok_or("the -wal file has no valid header (the WAL was truncated or is being created)")?;
    Ok((f, h))
}

fn salts_unchanged(f: &File, h: &WalHeader) -> Result<(), String> {
    match wal::read_header(f) {
        Ok(Some(now)) if now.salts == h.salts => Ok(()),
        _ => Err(
            "the WAL restarted during the capture (its header changed while its frames were read)"
                .into(),
        ),
    }
}

/// True when the WAL generation of `hdr` follows the state's directly,
/// with only empty generations between: SQLite's restart adds 1 to the
/// first salt and to the checkpoint sequence number each time (`k` times in
/// all), and a restart that drops frames needs every frame copied into the
/// database, which a pin at mark 0 forbids (see `watch`). Trusted only for
/// a state of the same pinned session (the caller's `continuation`), whose
/// captured position was then the end of its generation.
///
/// A state at frame 0 of a WAL that had no header yet (a new WAL, whose
/// first writer picks random salts) is followed directly by the first
/// generation the WAL file has: checkpoint sequence number 0.
fn restarted_right_after(state: &CaptureState, saved: Salts, hdr: &WalHeader) -> bool {
    let Some(ckpt) = state.wal_ckpt else {
        return state.frame == 0 && hdr.checkpoint_seq == 0;
    };
    let k = hdr.checkpoint_seq.wrapping_sub(ckpt);
    let salt1 = |s: &Salts| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    (1..1 << 16).contains(&k) && salt1(&hdr.salts) == salt1(&saved).wrapping_add(k)
}

/// The pages written since the state's position, read inside the caller's
/// read transaction (`page_size`, `page_count` come from it), or why they
/// cannot be known.
pub fn changed_pages(
    db: &Path,
    before: &Before,
    wal_mode: bool,
    state: &CaptureState,
    page_size: u32,
    page_count: u64,
    continuation: bool,
) -> Result<Changed, String> {
    if !wal_mode {
        return Err(
            "the database is in rollback-journal mode (no WAL to read changes from)".into(),
        );
    }
    if (before.dev, before.ino) != (state.dev, state.ino) {
        return Err(
            "the database file was replaced since the previous capture (device or inode changed)"
                .into(),
        );
    }
    if state.page_size != page_size {
        return Err(format!(
            "the page size changed since the previous capture ({} -> {page_size})",
            state.page_size
        ));
    }
    if !before.size.is_multiple_of(page_size as u64) {
        return Err("the database file is not a whole number of pages".into());
    }
    let index = before
        .index
        .ok_or("the wal-index (-shm) header cannot be read")?;
    let (f, hdr) = open_wal(db)?;
    // An empty wal-index records no page size yet.
    let index_ps_ok = index.page_size == page_size || (index.mx_frame == 0 && index.page_size == 0);
    if hdr.page_size != page_size || !index_ps_ok {
        return Err("the WAL's page size is not the database's".into());
    }
    let saved = state
        .salts()
        .ok_or("the local capture state is damaged (bad salts)")?;
    if index.salts != hdr.salts {
        return Err(
            "the wal-index and the WAL header disagree (a WAL restart is in progress)".into(),
        );
    }
    // In WAL mode only a checkpoint writes the database file; it moves the
    // wal-index's checkpoint counters, or restarts the WAL (new salts,
    // refused below unless it follows the previous capture directly).
    // Pages written into the file any other way (a copy over it, a
    // restore into it, a tool writing the file) are in no frame.
    if let Some(was) = &state.db_file {
        let now = before.db_file();
        if now.written_since(was) && index.salts == saved && now.backfill == was.backfill {
            return Err("the database file was written since the previous capture (its size or timestamps changed) while the WAL shows no checkpoint since, the only way SQLite writes it in WAL mode: something outside SQLite wrote it, and what it wrote is in no WAL frame".into());
        }
    }
    // Where the frames since the previous capture begin: after its frame in
    // the same generation, or (a continuation) from the start of the
    // generation that directly followed it.
    let (from, seed) = if hdr.salts != saved {
        if !(continuation && restarted_right_after(state, saved, &hdr)) {
            return Err("the WAL restarted since the previous capture (its salts changed)".into());
        }
        (0, hdr.cksum)
    } else {
        if index.mx_frame < state.frame {
            return Err("the WAL holds fewer commits than at the previous capture".into());
        }
        let seed = if state.frame == 0 {
            hdr.cksum
        } else {
            match wal::stored_frame(&f, &hdr, state.frame) {
                Ok(Some((fr, salts)))
                    if salts == hdr.salts && fr.cksum == state.frame_cksum && fr.is_commit() =>
                {
                    state.frame_cksum
                }
                Ok(Some(_)) => return Err(
                    "the WAL frame at the previous capture's position no longer carries its checksum"
                        .into(),
                ),
                Ok(None) => {
                    return Err(
                        "the WAL is shorter than the previous capture's position (it was truncated)"
                            .into(),
                    )
                }
                Err(e) => return Err(format!("the -wal file cannot be read ({e})")),
            }
        };
        (state.frame, seed)
    };
    let mut frames = wal::walk(&f, &hdr, from, seed)
        .map_err(|e| format!("the -wal file cannot be read ({e})"))?;
    salts_unchanged(&f, &hdr)?;
    // Only committed frames count; a transaction being written is not in
    // any reader's view.
    let last_commit = frames.iter().rposition(|fr| fr.is_commit());
    frames.truncate(last_commit.map_or(0, |i| i + 1));
    let end = frames.last().map_or(from, |fr| fr.index);
    if end < index.mx_frame {
        return Err("the WAL's valid frames end before the wal-index's last commit".into());
    }
    let mut pages = BTreeSet::new();
    let mut cut = state.page_count;
    for fr in &frames {
        pages.insert(fr.pgno as u64);
        if fr.is_commit() {
            cut = cut.min(fr.commit_size as u64);
        }
    }
    let keep = cut.min(page_count);
    let lock_page = lock_byte_page(page_size);
    for p in keep + 1..=page_count {
        if !pages.contains(&p) {
            if p == lock_page {
                pages.insert(p);
            } else {
                return Err(format!(
                    "page {p} of the grown database is in no WAL frame since the previous capture"
                ));
            }
        }
    }
    pages.insert(1);
    let pages: Vec<u64> = pages.into_iter().filter(|&p| p <= page_count).collect();
    let position = if index.mx_frame == from {
        Some(Position {
            salts: hdr.salts,
            frame: from,
            cksum: if from == 0 { [0, 0] } else { state.frame_cksum },
            ckpt: Some(hdr.checkpoint_seq),
        })
    } else {
        frames
            .iter()
            .find(|fr| fr.index == index.mx_frame && fr.is_commit())
            .map(|fr| Position {
                salts: hdr.salts,
                frame: fr.index,
                cksum: fr.cksum,
                ckpt: Some(hdr.checkpoint_seq),
            })
    };
    Ok(Changed {
        pages,
        keep,
        position,
    })
}

/// The position a full scan's image is known to include: the wal-index's
/// `mxFrame` read before the read transaction began, if the WAL agrees.
pub fn position_of_full_scan(
    db: &Path,
    before: &Before,
    wal_mode: bool,
    page_size: u32,
) -> Option<Position> {
    if !wal_mode {
        return None;
    }
    let index = before.index?;
    if index.page_size != page_size && !(index.mx_frame == 0 && index.page_size == 0) {
        return None;
    }
    let start = Position {
        salts: index.salts,
        frame: 0,
        cksum: [0, 0],
        ckpt: None,
    };
    let Ok((f, hdr)) = open_wal(db) else {
        // No WAL header yet (a new or truncated WAL): the next writer
        // starts a generation with the wal-index's salts, or with new
        // random ones, which the next capture sees as a restart.
        return (index.mx_frame == 0).then_some(start);
    };
    if hdr.salts != index.salts {
        // A restart whose first frame is not written yet.
        return (index.mx_frame == 0).then_some(start);
    }
    let pos = if index.mx_frame == 0 {
        Position {
            ckpt: Some(hdr.checkpoint_seq),
            ..start
        }
    } else {
        match wal::stored_frame(&f, &hdr, index.mx_frame) {
            Ok(Some((fr, salts))) if salts == hdr.salts && fr.is_commit() => Position {
                salts,
                frame: fr.index,
                cksum: fr.cksum,
                ckpt: Some(hdr.checkpoint_seq),
            },
            _ => return None,
        }
    };
    salts_unchanged(&f, &hdr).ok()?;
    Some(pos)
}

#[cfg(test)]
mod tests {
    //! The WAL-delta capture and a full scan of the same read transaction
    //! must give the same chunk list, whatever the writers did in between.
    use super::*;
    use crate::chunklist::ChunkRef;
    use crate::id::Id;
    use crate::snapshot::{checksum_of, delta_image};
    use crate::sqlite::Capture;
    use std::time::Duration;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn full_list(cap: &Capture) -> Vec<ChunkRef> {
        let mut out = Vec::new();
        let ps = cap.page_size as usize;
        cap.read_pages(256, |buf| {
            out.extend(buf.chunks(ps).map(|p| ChunkRef {
                id: Id::of(p),
                len: ps as u32,
            }));
            Ok(())
        })
        .expect("full scan");
        out
    }

    fn state_of(before: &Before, pos: Position, page_size: u32, list: &[ChunkRef]) -> CaptureState {
        CaptureState {
            version: crate::capture_state::new_state_version(),
            repo_id: "ab".into(),
            path: "/db".into(),
            host: "h".into(),
            pid: 1,
            dev: before.dev,
            ino: before.ino,
            page_size,
            wal_salts: hex::encode(pos.salts),
            frame: pos.frame,
            frame_cksum: pos.cksum,
            manifest: Id([0; 32]),
            page_count: list.len() as u64,
            db_checksum: checksum_of(list).to_hex(),
            session: None,
            wal_ckpt: pos.ckpt,
            point: None,
            db_file: Some(before.db_file()),
        }
    }

    /// One capture the way `snapshot` takes it, with both a delta (when the
    /// state allows one) and a full scan in the same read transaction.
    /// Returns the full list, the delta's outcome, and the next state.
    type Prior = (CaptureState, Vec<ChunkRef>);
    type Both = (
        Vec<ChunkRef>,
        Option<Result<Vec<ChunkRef>, String>>,
        Option<Prior>,
    );

    fn capture_both(db: &Path, prior: Option<&Prior>) -> Both {
        let b = before(db);
        let cap = Capture::begin(db, Duration::from_secs(10)).expect("begin");
        let mut delta_pos = None;
        let delta = prior.map(|(state, base)| {
            let c = changed_pages(db, &b, true, state, cap.page_size, cap.page_count, false)?;
            let old = crate::id::DbChecksum::from_hex(&state.db_checksum).expect("hex");
            let (list, sum) =
                delta_image(&cap, &c, base.clone(), old, Id::of).expect("read listed")?;
            assert_eq!(
                sum,
                checksum_of(&list),
                "the updated checksum is the list's"
            );
            delta_pos = Some(c.position);
            Ok(list)
        });
        let full = full_list(&cap);
        let pos = match (&delta, delta_pos) {
            (Some(Ok(_)), Some(p)) => p,
            _ => position_of_full_scan(db, &b, true, cap.page_size),
        };
        let next = pos.map(|p| (state_of(&b, p, cap.page_size, &full), full.clone()));
        cap.finish().expect("finish");
        (full, delta, next)
    }

    fn writer(db: &Path) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(db).expect("open");
        c.busy_timeout(Duration::from_secs(10)).expect("busy");
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=300;")
            .expect("wal");
        c
    }

    fn step(c: &rusqlite::Connection, rng: &mut Rng) -> &'static str {
        match rng.below(24) {
            0..=5 => {
                let n = 1 + rng.below(40);
                for _ in 0..n {
                    c.execute(
                        "INSERT INTO t(v) VALUES (randomblob(?1))",
                        [50 + rng.below(3000) as i64],
                    )
                    .expect("insert");
                }
                "grow"
            }
            6..=9 => {
                c.execute(
                    "UPDATE t SET v = randomblob(length(v)) WHERE id % ?1 = 0",
                    [5 + rng.below(60) as i64],
                )
                .expect("update");
                "update"
            }
            10 => {
                c.execute("DELETE FROM t WHERE id % ?1 = 0", [1 + rng.below(3) as i64])
                    .expect("delete");
                "delete"
            }
            11 => {
                // Shrinks the file: every page rewritten, then truncated.
                c.execute_batch("VACUUM").expect("vacuum");
                "vacuum"
            }
            12 => {
                c.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
                    .expect("ckpt");
                "passive"
            }
            13 => {
                c.execute_batch("PRAGMA wal_checkpoint(RESTART)")
                    .expect("ckpt");
                "restart"
            }
            14 => {
                c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                    .expect("ckpt");
                "truncate"
            }
            _ => "nothing",
        }
    }

    #[test]
    fn wal_delta_and_full_scan_of_one_transaction_give_the_same_chunk_list() {
        let started = std::time::Instant::now();
        let mut deltas = 0;
        let mut reasons = std::collections::BTreeMap::<String, u32>::new();
        for seed in 1..=6u64 {
            let d = tempfile::tempdir().expect("tmp");
            let db = d.path().join("app.db");
            let c = writer(&db);
            c.execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); CREATE INDEX tv ON t(v);",
            )
            .expect("schema");
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut prior = None;
            for round in 0..40 {
                let mut ops = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    ops.push(step(&c, &mut rng));
                }
                let (full, delta, next) = capture_both(&db, prior.as_ref());
                match delta {
                    Some(Ok(list)) => {
                        deltas += 1;
                        assert!(
                            list == full,
                            "seed {seed} round {round} after {ops:?}: the delta's chunk list differs from the full scan's"
                        );
                    }
                    Some(Err(r)) => {
                        let key: String = r.chars().take(40).collect();
                        *reasons.entry(key).or_default() += 1;
                    }
                    None => {}
                }
                if next.is_some() {
                    prior = next;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "bounded in time"
            );
        }
        assert!(
            deltas >= 60,
            "only {deltas} deltas were taken; fallbacks: {reasons:?}"
        );
        assert!(
            reasons.keys().any(|r| r.contains("restarted")),
            "checkpoints restarted the WAL in some rounds: {reasons:?}"
        );
    }

    #[test]
    fn wal_delta_matches_a_full_scan_while_a_writer_commits_concurrently() {
        let d = tempfile::tempdir().expect("tmp");
        let db = d.path().join("app.db");
        let c = writer(&db);
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
            .expect("schema");
        drop(c);
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let steps = std::sync::Arc::new(AtomicU32::new(0));
        let w = {
            let db = db.clone();
            let stop = stop.clone();
            let steps = steps.clone();
            std::thread::spawn(move || {
                let c = writer(&db);
                let mut rng = Rng(77);
                while !stop.load(Ordering::Relaxed) && steps.load(Ordering::Relaxed) < 20_000 {
                    step(&c, &mut rng);
                    steps.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // Keep one connection open so that the WAL is not deleted between
        // captures, as an application would.
        let _keep = writer(&db);
        let mut prior = None;
        let mut deltas = 0;
        let started = std::time::Instant::now();
        while (deltas < 40 || steps.load(Ordering::Relaxed) < 400)
            && started.elapsed() < Duration::from_secs(60)
        {
            let (full, delta, next) = capture_both(&db, prior.as_ref());
            if let Some(Ok(list)) = delta {
                deltas += 1;
                assert!(
                    list == full,
                    "a delta under a concurrent writer differs from the full scan"
                );
            }
            if next.is_some() {
                prior = next;
            }
        }
        stop.store(true, Ordering::Relaxed);
        w.join().expect("writer");
        let commits = steps.load(Ordering::Relaxed);
        assert!(commits >= 100, "the writer ran ({commits} steps)");
        assert!(
            deltas >= 10,
            "only {deltas} deltas under a concurrent writer"
        );
    }

    #[test]
    fn a_saved_position_past_the_end_or_with_another_checksum_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let db = d.path().join("app.db");
        let c = writer(&db);
        c.execute_batch(
            "PRAGMA wal_autocheckpoint=0; CREATE TABLE t(v); INSERT INTO t VALUES (randomblob(9000));",
        )
        .expect("setup");
        let (_, _, next) = capture_both(&db, None);
        let (state, base) = next.expect("a position");
        assert!(state.frame > 0);
        c.execute("INSERT INTO t VALUES (1)", []).expect("insert");
        let b = before(&db);
        let cap = Capture::begin(&db, Duration::from_secs(5)).expect("begin");
        let ok = changed_pages(&db, &b, true, &state, cap.page_size, cap.page_count, false)
            .expect("delta");
        assert!(ok.pages.len() < base.len() + 1);
        let mut far = state.clone();
        far.frame += 50;
        let e = changed_pages(&db, &b, true, &far, cap.page_size, cap.page_count, false)
            .expect_err("past end");
        assert!(e.contains("fewer commits") || e.contains("shorter"), "{e}");
        let mut wrong = state.clone();
        wrong.frame_cksum[0] ^= 1;
        let e = changed_pages(&db, &b, true, &wrong, cap.page_size, cap.page_count, false)
            .expect_err("cksum");
        assert!(e.contains("no longer carries"), "{e}");
        let mut moved = state.clone();
        moved.ino ^= 1;
        let e = changed_pages(&db, &b, true, &moved, cap.page_size, cap.page_count, false)
            .expect_err("ino");
        assert!(e.contains("replaced"), "{e}");
        let mut ps = state.clone();
        ps.page_size = 1024;
        let e = changed_pages(&db, &b, true, &ps, cap.page_size, cap.page_count, false)
            .expect_err("ps");
        assert!(e.contains("page size"), "{e}");
        cap.finish().expect("finish");
    }

    /// The watcher's case: a pin held from before capture A, handed over to
    /// a pin that began at mark 0 (the WAL wholly checkpointed); the
    /// application's TRUNCATE checkpoints then restart the WAL, and the
    /// next capture continues from the new generation's first frame.
    #[test]
    fn a_pinned_session_continues_across_a_wal_restart_with_the_full_scans_chunk_list() {
        let d = tempfile::tempdir().expect("tmp");
        let db = d.path().join("app.db");
        let c = writer(&db);
        c.execute_batch(
            "PRAGMA wal_autocheckpoint=0; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
        )
        .expect("setup");
        for i in 0..50 {
            c.execute("INSERT INTO t(v) VALUES (randomblob(?1))", [100 + i * 37])
                .expect("insert");
        }
        let pin1 = crate::watch::Pin::begin(&db, Duration::from_secs(1))
            .expect("pin")
            .expect("wal");
        let (_, _, next) = capture_both(&db, None);
        let (mut state, base) = next.expect("a position");
        state.session = Some("s".into());
        assert!(state.wal_ckpt.is_some());
        c.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
            .expect("ckpt");
        let pin2 = crate::watch::Pin::begin(&db, Duration::from_secs(1))
            .expect("pin")
            .expect("wal");
        drop(pin1);
        c.busy_timeout(Duration::from_millis(100)).expect("busy");
        for _ in 0..2 {
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .expect("ckpt");
        }
        c.execute("UPDATE t SET v = randomblob(300) WHERE id % 7 = 0", [])
            .expect("update");
        c.execute("INSERT INTO t(v) VALUES (randomblob(20000))", [])
            .expect("grow");
        let now = crate::wal::read_index_header(&db)
            .expect("shm")
            .expect("hdr");
        assert_ne!(
            now.salts,
            state.salts().expect("salts"),
            "the WAL restarted"
        );
        let b = before(&db);
        let cap = Capture::begin(&db, Duration::from_secs(5)).expect("begin");
        let e = changed_pages(&db, &b, true, &state, cap.page_size, cap.page_count, false)
            .expect_err("no continuation outside a session");
        assert!(e.contains("restarted"), "{e}");
        let ch = changed_pages(&db, &b, true, &state, cap.page_size, cap.page_count, true)
            .expect("a continuation");
        let old = crate::id::DbChecksum::from_hex(&state.db_checksum).expect("hex");
        let (list, _) = delta_image(&cap, &ch, base, old, Id::of)
            .expect("read")
            .expect("apply");
        assert!(
            list == full_list(&cap),
            "the continued delta is the full scan"
        );
        assert!(
            ch.pages.len() < list.len(),
            "only the changed pages were read"
        );
        cap.finish().expect("finish");
        drop(pin2);
    }

    #[test]
    fn a_grown_page_in_no_frame_is_refused_unless_it_is_the_lock_byte_page() {
        assert_eq!(lock_byte_page(4096), 262_145);
        assert_eq!(lock_byte_page(65536), 16_385);
        let d = tempfile::tempdir().expect("tmp");
        let db = d.path().join("app.db");
        let c = writer(&db);
        c.execute_batch(
            "PRAGMA wal_autocheckpoint=0; CREATE TABLE t(v); INSERT INTO t VALUES (randomblob(9000));",
        )
        .expect("setup");
        let (_, _, next) = capture_both(&db, None);
        let (mut state, _) = next.expect("a position");
        // A state that claims a smaller base: the pages past it were
        // written before the saved position, so no frame after it has them.
        state.page_count = 1;
        c.execute("INSERT INTO t VALUES (1)", []).expect("insert");
        let b = before(&db);
        let cap = Capture::begin(&db, Duration::from_secs(5)).expect("begin");
        let e = changed_pages(&db, &b, true, &state, cap.page_size, cap.page_count, false)
            .expect_err("a page in no frame");
        assert!(e.contains("in no WAL frame"), "{e}");
        cap.finish().expect("finish");
    }
    /// In WAL mode SQLite writes the database file only by checkpointing:
    /// a delta goes on after a checkpoint (its counters moved), and a file
    /// written from outside SQLite since the previous capture, whose new
    /// pages are in no WAL frame, is no delta.
    #[test]
    fn a_database_file_written_outside_sqlite_is_no_delta_but_a_checkpoint_is() {
        let d = tempfile::tempdir().expect("tmp");
        let db = d.path().join("app.db");
        let c = writer(&db);
        c.execute_batch(
            "PRAGMA wal_autocheckpoint=0; CREATE TABLE t(v);
             INSERT INTO t VALUES (randomblob(9000)); INSERT INTO t VALUES (randomblob(9000));",
        )
        .expect("setup");
        let (_, _, next) = capture_both(&db, None);
        assert!(next.as_ref().is_some_and(|(s, _)| s.db_file.is_some()));
        c.execute("INSERT INTO t VALUES (1)", []).expect("insert");
        std::thread::sleep(Duration::from_millis(30));
        c.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
            .expect("checkpoint");
        let (full, delta, next) = capture_both(&db, next.as_ref());
        match delta {
            Some(Ok(list)) => assert_eq!(list, full, "the delta after a checkpoint"),
            other => panic!("a checkpoint is no reason to fall back: {other:?}"),
        }
        let (state, _) = next.expect("a position");
        crate::delta_snapshot_tests::write_outside_sqlite(&db, 2, 4096);
        let b = before(&db);
        let cap = Capture::begin(&db, Duration::from_secs(5)).expect("begin");
        let e = changed_pages(&db, &b, true, &state, cap.page_size, cap.page_count, false)
            .expect_err("written outside SQLite");
        assert!(e.contains("outside SQLite"), "{e}");
        // A state written before the file was recorded is not refused for it.
        let old = CaptureState {
            db_file: None,
            ..state
        };
        changed_pages(&db, &b, true, &old, cap.page_size, cap.page_count, false)
            .expect("an older state");
        cap.finish().expect("finish");
    }
}
