//! The watcher's local spool: every point `snapback watch` takes is
//! appended here, fsync'd, before it counts as **spooled**; it leaves the
//! spool once the segment holding it is committed and verified in the
//! repository (**durable**). A watcher killed while the repository is
//! unreachable loses no spooled point: the next one uploads them first
//! (docs/watch.md, "The spool").
//!
//! One directory per (repository id, database path):
//! `<state root>/spool/<repo id>/<sha256 of the path>/`, holding a `lock`
//! (an `flock` held by the watcher for as long as it runs) and at most one
//! batch file, `points.spool`: the points taken since the last upload,
//! which all go into one segment over one base manifest. The file is
//!
//! ```text
//! magic "SNBSPOOL", version u32 = 1, then frames:
//!   len u32, sha256(len)[..4], body (len bytes), sha256(body) [32]
//! the first frame's body: kind 0, base manifest id [32], page_size u32,
//!   path_len u16, path
//! every later frame's body (one point): kind 1, time i64 (ns), page_count
//!   u64, db_checksum u128, pages_read u64, state_len u32, capture state
//!   (JSON), change_count u32, then per change: page index u64, blob id
//!   [32], has_page u8, and the page (page_size bytes) when has_page is 1
//! ```
//!
//! A point's changes are as in a segment: the first point's since the base
//! manifest (a page changed by an earlier, already committed point has no
//! content here: its blob is in the repository), the later ones' since the
//! point before. So a batch file is exactly the segment its upload commits,
//! plus the pages the repository does not have yet.
//!
//! Each frame is written with one `write` and `fdatasync`'d (the file and
//! its directory are fsync'd when the file is created) before the point
//! counts as spooled. A file that ends inside a frame (a watcher killed
//! mid-write) has its last, incomplete frame dropped: that point never
//! counted as spooled. A complete frame whose checksums do not hold is
//! damage, wherever it is: loading fails and says what to do, nothing is
//! read past it and nothing is dropped silently.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::capture_state::CaptureState;
use crate::error::{Error, Result};
use crate::id::{DbChecksum, Id};
use crate::segment::Point;

const MAGIC: &[u8; 8] = b"SNBSPOOL";
const VERSION: u32 = 1;
const FILE_HEAD: usize = 12;
/// A frame's length and its check.
const FRAME_HEAD: usize = 8;
const FRAME_TAIL: usize = 32;
const BATCH_FILE: &str = "points.spool";
const LOCK_FILE: &str = "lock";

/// The spool directory of one database into one repository.
pub fn dir(state_root: &Path, repo_id: &str, db_path: &str) -> PathBuf {
    let name = hex::encode(Sha256::digest(db_path.as_bytes()));
    state_root.join("spool").join(repo_id).join(name)
}

/// What every point of a batch is taken over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHead {
    pub base: Id,
    pub page_size: u32,
    pub path: String,
}

/// A point as the spool keeps it (and as the watcher keeps it pending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolPoint {
    pub point: Point,
    /// For each of `point.changes`, in order, its page when the repository
    /// may not have it yet (`None`: committed earlier).
    pub pages: Vec<Option<Vec<u8>>>,
    /// Pages read by its capture.
    pub pages_read: u64,
    /// The capture state after it (saved once it is durable).
    pub state: CaptureState,
}

/// A batch read back from the spool.
#[derive(Debug, Clone)]
pub struct Batch {
    pub head: BatchHead,
    pub points: Vec<SpoolPoint>,
    /// Bytes of an incomplete last frame that were dropped (0: none).
    pub torn_bytes: u64,
}

/// What [`Spool::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Written and fsync'd: the point is spooled.
    Spooled,
    /// Not written: the spool would hold `needed` bytes, past the bound.
    Full { needed: u64 },
}

/// One database's spool, locked for this process.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    _lock: File,
    file: Option<File>,
    bytes: u64,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::io(path, what, e)
}

impl Spool {
    /// Opens (creating) the spool directory and takes its lock; a second
    /// watcher of the same database into the same repository is refused.
    pub fn open(dir: &Path) -> Result<Spool> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io(dir, "cannot create the watcher's spool directory", e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, "cannot open the spool lock", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked(format!(
                    "another snapback watch spools this database into this repository (it holds {}); stop it first",
                    lock_path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io(&lock_path, "cannot lock the spool", e))
            }
        }
        let path = dir.join(BATCH_FILE);
        let bytes = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&path, "cannot read the spool", e)),
        };
        Ok(Spool {
            dir: dir.to_path_buf(),
            _lock: lock,
            file: None,
            bytes,
        })
    }

    /// The batch file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(BATCH_FILE)
    }

    /// Bytes the spool holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The spooled batch, if there is one. An incomplete last frame is cut
    /// off (the file is truncated to the frames before it, fsync'd); a
    /// damaged frame is an error naming the file and the frame.
    pub fn load(&mut self) -> Result<Option<Batch>> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, "cannot read the spool", e)),
        };
        let (batch, good) = decode(&bytes, &path)?;
        if good < bytes.len() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io(&path, "cannot open the spool", e))?;
            f.set_len(good as u64)
                .and_then(|()| f.sync_all())
                .map_err(|e| {
                    io(
                        &path,
                        "cannot cut the incomplete last record of the spool",
                        e,
                    )
                })?;
        }
        let Some(mut batch) = batch else {
            // Not even one point: nothing was ever spooled in it.
            self.clear()?;
            return Ok(None);
        };
        batch.torn_bytes = (bytes.len() - good) as u64;
        if batch.points.is_empty() {
            self.clear()?;
            return Ok(None);
        }
        self.bytes = good as u64;
        Ok(Some(batch))
    }

    /// Appends one point (starting the batch file with `head` when there
    /// is none), fsync'd before it returns `Spooled`; refuses it, writing
    /// nothing, when the spool would then hold more than `max` bytes.
    pub fn append(&mut self, head: &BatchHead, p: &SpoolPoint, max: u64) -> Result<Appended> {
        let path = self.path();
        let fresh = self.bytes == 0;
        let mut out = Vec::new();
        if fresh {
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&VERSION.to_le_bytes());
            frame(&mut out, &encode_head(head)?)?;
        }
        frame(&mut out, &encode_point(p, head.page_size)?)?;
        let needed = self.bytes + out.len() as u64;
        if needed > max {
            return Ok(Appended::Full { needed });
        }
        if fresh {
            self.file = None;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map_err(|e| io(&path, "cannot create the spool", e))?;
            f.write_all(&out)
                .and_then(|()| f.sync_all())
                .and_then(|()| sync_dir(&self.dir))
                .map_err(|e| io(&path, "cannot write the spool", e))?;
            self.file = Some(f);
        } else {
            if self.file.is_none() {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io(&path, "cannot open the spool", e))?;
                f.seek(SeekFrom::Start(self.bytes))
                    .map_err(|e| io(&path, "cannot open the spool", e))?;
                self.file = Some(f);
            }
            let f = self
                .file
                .as_mut()
                .ok_or_else(|| Error::internal("the spool file is not open"))?;
            f.write_all(&out)
                .and_then(|()| f.sync_data())
                .map_err(|e| io(&path, "cannot write the spool", e))?;
        }
        self.bytes = needed;
        Ok(Appended::Spooled)
    }

    /// Removes the batch (its points are durable), durably.
    pub fn clear(&mut self) -> Result<()> {
        self.file = None;
        let path = self.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io(
                    &path,
                    "cannot remove the uploaded points from the spool",
                    e,
                ))
            }
        }
        sync_dir(&self.dir).map_err(|e| io(&self.dir, "cannot sync the spool directory", e))?;
        self.bytes = 0;
        Ok(())
    }

    /// Moves the batch aside (its points cannot be uploaded), next to the
    /// spool, and returns where it went.
    pub fn set_aside(&mut self) -> Result<PathBuf> {
        self.file = None;
        let ns = OffsetDateTime::now_utc().unix_timestamp_nanos();
        let to = self.dir.join(format!("unusable-{ns}.spool"));
        std::fs::rename(self.path(), &to)
            .and_then(|()| sync_dir(&self.dir))
            .map_err(|e| io(&self.path(), "cannot move the spool aside", e))?;
        self.bytes = 0;
        Ok(to)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn len_check(len: u32) -> [u8; 4] {
    let d = Sha256::digest(len.to_le_bytes());
    [d[0], d[1], d[2], d[3]]
}

fn frame(out: &mut Vec<u8>, body: &[u8]) -> Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| Error::internal(format!("a spool record of {} bytes", body.len())))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&len_check(len));
    out.extend_from_slice(body);
    out.extend_from_slice(&Sha256::digest(body));
    Ok(())
}

fn encode_head(h: &BatchHead) -> Result<Vec<u8>> {
    let plen = u16::try_from(h.path.len())
        .map_err(|_| Error::internal("a database path longer than 65535 bytes"))?;
    let mut b = vec![0u8];
    b.extend_from_slice(&h.base.0);
    b.extend_from_slice(&h.page_size.to_le_bytes());
    b.extend_from_slice(&plen.to_le_bytes());
    b.extend_from_slice(h.path.as_bytes());
    Ok(b)
}

fn encode_point(p: &SpoolPoint, page_size: u32) -> Result<Vec<u8>> {
    if p.pages.len() != p.point.changes.len() {
        return Err(Error::internal(
            "a spooled point's pages do not match its changes",
        ));
    }
    let ns = i64::try_from(p.point.time.unix_timestamp_nanos())
        .map_err(|_| Error::internal("a point's time is out of range"))?;
    let state = serde_json::to_vec(&p.state)
        .map_err(|e| Error::internal(format!("cannot encode the capture state: {e}")))?;
    let mut b = vec![1u8];
    b.extend_from_slice(&ns.to_le_bytes());
    b.extend_from_slice(&p.point.page_count.to_le_bytes());
    b.extend_from_slice(&p.point.db_checksum.0.to_le_bytes());
    b.extend_from_slice(&p.pages_read.to_le_bytes());
    b.extend_from_slice(&(state.len() as u32).to_le_bytes());
    b.extend_from_slice(&state);
    b.extend_from_slice(&(p.point.changes.len() as u32).to_le_bytes());
    for ((i, id), page) in p.point.changes.iter().zip(&p.pages) {
        b.extend_from_slice(&i.to_le_bytes());
        b.extend_from_slice(&id.0);
        match page {
            Some(raw) if raw.len() == page_size as usize => {
                b.push(1);
                b.extend_from_slice(raw);
            }
            Some(_) => return Err(Error::internal("a spooled page is not one page long")),
            None => b.push(0),
        }
    }
    Ok(b)
}

/// The batch in `bytes` (`None` when not even its head frame is whole)
/// and the length of its whole frames.
fn decode(bytes: &[u8], path: &Path) -> Result<(Option<Batch>, usize)> {
    let damaged = |at: usize, why: &str| {
        Error::corrupt(
            path.display().to_string(),
            format!("the watcher's spool is damaged at byte {at}: {why}. Its points cannot be trusted, so the watcher does not start: move the file aside (the points in it that are not in the repository are then lost; `snapback snapshots --points` lists those that are) and start it again"),
        )
    };
    if bytes.len() < FILE_HEAD {
        return Ok((None, 0));
    }
    if &bytes[..8] != MAGIC {
        return Err(damaged(0, "it does not begin with the spool magic"));
    }
    let v = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if v != VERSION {
        return Err(damaged(
            8,
            &format!("version {v}, this snapback writes {VERSION}"),
        ));
    }
    let mut at = FILE_HEAD;
    let mut head: Option<BatchHead> = None;
    let mut points = Vec::new();
    let mut n = 0usize;
    loop {
        let rest = &bytes[at..];
        if rest.len() < FRAME_HEAD {
            break; // empty, or a torn frame head
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if rest[4..8] != len_check(len) {
            return Err(damaged(at, &format!("record {n}'s length is damaged")));
        }
        let len = len as usize;
        if rest.len() < FRAME_HEAD + len + FRAME_TAIL {
            break; // torn: the file ends inside this frame
        }
        let body = &rest[FRAME_HEAD..FRAME_HEAD + len];
        let sum = &rest[FRAME_HEAD + len..FRAME_HEAD + len + FRAME_TAIL];
        if Sha256::digest(body).as_slice() != sum {
            return Err(damaged(
                at,
                &format!("record {n}'s checksum does not match"),
            ));
        }
        match &head {
            None => {
                head = Some(
                    decode_head(body)
                        .ok_or_else(|| damaged(at, "its first record is not a batch head"))?,
                )
            }
            Some(h) => points.push(
                decode_point(body, h.page_size)
                    .ok_or_else(|| damaged(at, &format!("record {n} is not a point")))?,
            ),
        }
        at += FRAME_HEAD + len + FRAME_TAIL;
        n += 1;
    }
    let Some(head) = head else {
        return Ok((None, FILE_HEAD));
    };
    Ok((
        Some(Batch {
            head,
            points,
            torn_bytes: 0,
        }),
        at,
    ))
}

struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn arr<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.arr::<1>()?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.arr()?))
    }
}

fn decode_head(body: &[u8]) -> Option<BatchHead> {
    let mut c = Cur(body);
    if c.u8()? != 0 {
        return None;
    }
    let base = Id(c.arr()?);
    let page_size = c.u32()?;
    let plen = c.u16()? as usize;
    let path = std::str::from_utf8(c.take(plen)?).ok()?.to_string();
    c.0.is_empty().then_some(BatchHead {
        base,
        page_size,
        path,
    })
}

fn decode_point(body: &[u8], page_size: u32) -> Option<SpoolPoint> {
    let mut c = Cur(body);
    if c.u8()? != 1 {
        return None;
    }
    let ns = c.u64()? as i64;
    let time = OffsetDateTime::from_unix_timestamp_nanos(ns as i128).ok()?;
    let page_count = c.u64()?;
    let db_checksum = DbChecksum(u128::from_le_bytes(c.arr()?));
    let pages_read = c.u64()?;
    let slen = c.u32()? as usize;
    let state: CaptureState = serde_json::from_slice(c.take(slen)?).ok()?;
    let m = c.u32()? as usize;
    if m > c.0.len() / 41 {
        return None;
    }
    let mut changes = Vec::with_capacity(m);
    let mut pages = Vec::with_capacity(m);
    for _ in 0..m {
        let i = c.u64()?;
        changes.push((i, Id(c.arr()?)));
        pages.push(match c.u8()? {
            0 => None,
            1 => Some(c.take(page_size as usize)?.to_vec()),
            _ => return None,
        });
    }
    c.0.is_empty().then_some(SpoolPoint {
        point: Point {
            time,
            page_count,
            db_checksum,
            changes,
        },
        pages,
        pages_read,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The capture state's test sample, with this spool's 512-byte pages.
    fn state() -> CaptureState {
        CaptureState {
            page_size: 512,
            ..crate::capture_state::tests::sample()
        }
    }

    fn head() -> BatchHead {
        BatchHead {
            base: Id([9; 32]),
            page_size: 512,
            path: "/x.db".into(),
        }
    }

    fn point(k: u8) -> SpoolPoint {
        SpoolPoint {
            point: Point {
                time: OffsetDateTime::from_unix_timestamp_nanos(
                    1_700_000_000_000_000_000 + k as i128,
                )
                .expect("time"),
                page_count: 10,
                db_checksum: DbChecksum(k as u128),
                changes: vec![(1, Id([k; 32])), (4, Id([k + 1; 32]))],
            },
            pages: vec![Some(vec![k; 512]), None],
            pages_read: 3,
            state: state(),
        }
    }

    fn spool_with(n: u8) -> (tempfile::TempDir, Spool) {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = Spool::open(&d.path().join("sp")).expect("open");
        for k in 0..n {
            assert_eq!(
                s.append(&head(), &point(k), u64::MAX).expect("append"),
                Appended::Spooled
            );
        }
        (d, s)
    }

    #[test]
    fn spooled_points_load_back_in_order_after_a_restart() {
        let (d, s) = spool_with(3);
        let bytes = s.bytes();
        assert_eq!(bytes, std::fs::metadata(s.path()).expect("meta").len());
        drop(s);
        let mut s = Spool::open(&d.path().join("sp")).expect("reopen");
        let b = s.load().expect("load").expect("a batch");
        assert_eq!(b.head, head());
        assert_eq!(b.points, vec![point(0), point(1), point(2)]);
        assert_eq!(b.torn_bytes, 0);
        // Appends continue the same batch; clearing empties it.
        s.append(&head(), &point(3), u64::MAX).expect("append");
        assert_eq!(s.load().expect("load").expect("batch").points.len(), 4);
        s.clear().expect("clear");
        assert!(!s.path().exists());
        assert!(s.load().expect("load").is_none());
    }

    #[test]
    fn a_torn_last_spool_record_is_dropped_and_never_read_as_a_point() {
        let (d, s) = spool_with(3);
        let path = s.path();
        drop(s);
        let full = std::fs::read(&path).expect("read");
        // Every cut inside the last record leaves the first two points.
        let two = {
            let (_d2, s2) = spool_with(2);
            s2.bytes() as usize
        };
        for cut in [two + 1, two + 7, two + 8, full.len() - 33, full.len() - 1] {
            std::fs::write(&path, &full[..cut]).expect("cut");
            let mut s = Spool::open(&d.path().join("sp")).expect("open");
            let b = s.load().expect("a torn tail is no error").expect("batch");
            assert_eq!(b.points, vec![point(0), point(1)], "cut at {cut}");
            assert_eq!(b.torn_bytes, (cut - two) as u64);
            assert_eq!(std::fs::metadata(&path).expect("meta").len(), two as u64);
        }
        // A file cut inside its first point holds no point at all.
        std::fs::write(&path, &full[..30]).expect("cut");
        let mut s = Spool::open(&d.path().join("sp")).expect("open");
        assert!(s.load().expect("load").is_none());
        assert!(!path.exists());
    }

    #[test]
    fn a_damaged_spool_record_before_the_last_fails_loudly() {
        let (d, s) = spool_with(3);
        let path = s.path();
        drop(s);
        let full = std::fs::read(&path).expect("read");
        let one = {
            let (_d2, s2) = spool_with(1);
            s2.bytes() as usize
        };
        // A byte of the second point's page, and of its length.
        for at in [one + 200, one + 1] {
            let mut bad = full.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).expect("write");
            let mut s = Spool::open(&d.path().join("sp")).expect("open");
            let e = s.load().expect_err("damage");
            assert!(e.to_string().contains("spool is damaged"), "{e}");
            assert!(e.to_string().contains("move the file aside"), "{e}");
            assert_eq!(std::fs::read(&path).expect("read"), bad, "nothing cut");
        }
    }

    #[test]
    fn a_full_spool_refuses_the_point_and_keeps_what_it_holds() {
        let (_d, mut s) = spool_with(2);
        let before = std::fs::read(s.path()).expect("read");
        let r = s
            .append(&head(), &point(2), s.bytes() + 10)
            .expect("append");
        assert!(matches!(r, Appended::Full { needed } if needed > s.bytes() + 10));
        assert_eq!(std::fs::read(s.path()).expect("read"), before);
        assert_eq!(s.load().expect("load").expect("batch").points.len(), 2);
    }

    #[test]
    fn one_watcher_at_a_time_holds_a_spool() {
        let (d, s) = spool_with(0);
        let e = Spool::open(&d.path().join("sp")).expect_err("locked");
        assert!(matches!(e, Error::Locked(_)), "{e}");
        drop(s);
        Spool::open(&d.path().join("sp")).expect("free again");
    }
}
