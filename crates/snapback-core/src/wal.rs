//! Reading SQLite's `-wal` file and the wal-index header in its `-shm` file.
//!
//! Both are documented file formats (sqlite.org/fileformat2.html, "WAL
//! format"; sqlite.org/walformat.html, "WAL-index format"). This module only
//! reads them, never writes, and says nothing about which frames a read
//! transaction sees: `delta` combines what it reads here with a read
//! transaction and decides whether the result can be trusted.
//!
//! A WAL is a 32-byte header followed by frames of a 24-byte header and one
//! page. A frame is valid only while its salts equal the header's and the
//! checksum chain (seeded by the header's checksum, run over every frame's
//! first 8 header bytes and its page) holds up to it. A WAL restart rewrites
//! the header with new salts and overwrites frames from the start; the file
//! is not shortened, so stale frames stay behind the valid ones.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const WAL_HEADER: u64 = 32;
pub const FRAME_HEADER: u64 = 24;

/// The two salts, as the raw 8 bytes the WAL header and every frame carry.
pub type Salts = [u8; 8];

/// A checksum pair of the chain.
pub type Cksum = [u32; 2];

/// The WAL header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalHeader {
    /// Checksums are computed over big-endian words (magic 0x377f0683)
    /// rather than little-endian ones (0x377f0682).
    pub big_endian: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salts: Salts,
    /// The header's own checksum: the seed of the frame chain.
    pub cksum: Cksum,
}

/// A valid frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// 1-based position in the WAL.
    pub index: u32,
    pub pgno: u32,
    /// For a commit frame, the database size in pages after the commit;
    /// 0 for the other frames of a transaction.
    pub commit_size: u32,
    /// The chain's checksum up to and including this frame.
    pub cksum: Cksum,
}

impl Frame {
    pub fn is_commit(&self) -> bool {
        self.commit_size != 0
    }
}

pub fn wal_path(db: &Path) -> PathBuf {
    side(db, "-wal")
}

pub fn shm_path(db: &Path) -> PathBuf {
    side(db, "-shm")
}

fn side(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(suffix);
    s.into()
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// SQLite's WAL checksum (`walChecksumBytes`) over `data` (a multiple of 8
/// bytes), continuing from `s`.
fn checksum(big_endian: bool, data: &[u8], mut s: Cksum) -> Cksum {
    for w in data.chunks_exact(8) {
        let (a, b) = if big_endian {
            (be32(&w[..4]), be32(&w[4..]))
        } else {
            (
                u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
                u32::from_le_bytes([w[4], w[5], w[6], w[7]]),
            )
        };
        s[0] = s[0].wrapping_add(a).wrapping_add(s[1]);
        s[1] = s[1].wrapping_add(b).wrapping_add(s[0]);
    }
    s
}

/// Reads as much of `buf` as the file holds from `offset`; returns the
/// number of bytes read (short at the end of the file).
fn read_at(f: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The WAL header, or `None` when the file is shorter than a header, has
/// another magic, or its header checksum does not hold (a WAL being
/// created, or not a WAL).
pub fn read_header(f: &File) -> std::io::Result<Option<WalHeader>> {
    let mut h = [0u8; WAL_HEADER as usize];
    if read_at(f, 0, &mut h)? < h.len() {
        return Ok(None);
    }
    let magic = be32(&h[0..4]);
    if magic & !1 != 0x377f_0682 {
        return Ok(None);
    }
    let big_endian = magic & 1 == 1;
    let page_size = be32(&h[8..12]);
    let page_size = if page_size == 1 { 65536 } else { page_size };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Ok(None);
    }
    let cksum = [be32(&h[24..28]), be32(&h[28..32])];
    if checksum(big_endian, &h[..24], [0, 0]) != cksum {
        return Ok(None);
    }
    let mut salts = [0u8; 8];
    salts.copy_from_slice(&h[16..24]);
    Ok(Some(WalHeader {
        big_endian,
        page_size,
        checkpoint_seq: be32(&h[12..16]),
        salts,
        cksum,
    }))
}

pub fn frame_offset(page_size: u32, index: u32) -> u64 {
    WAL_HEADER + (index as u64 - 1) * (FRAME_HEADER + page_size as u64)
}

/// The header of frame `index` as stored (its salts and its stored
/// checksum), without checking the chain. `None` past the end of the file.
pub fn stored_frame(
    f: &File,
    hdr: &WalHeader,
    index: u32,
) -> std::io::Result<Option<(Frame, Salts)>> {
    let mut h = [0u8; FRAME_HEADER as usize];
    let off = frame_offset(hdr.page_size, index);
    if read_at(f, off, &mut h)? < h.len() {
        return Ok(None);
    }
    // The whole frame must be in the file.
    let len = f.metadata()?.len();
    if len < off + FRAME_HEADER + hdr.page_size as u64 {
        return Ok(None);
    }
    let mut salts = [0u8; 8];
    salts.copy_from_slice(&h[8..16]);
    Ok(Some((
        Frame {
            index,
            pgno: be32(&h[0..4]),
            commit_size: be32(&h[4..8]),
            cksum: [be32(&h[16..20]), be32(&h[20..24])],
        },
        salts,
    )))
}

/// Every valid frame after frame `after` (0: from the start), following the
/// checksum chain from `seed` (the checksum of frame `after`, or the
/// header's for 0), up to the first frame that is invalid or incomplete.
/// Reads each frame once, sequentially.
pub fn walk(f: &File, hdr: &WalHeader, after: u32, seed: Cksum) -> std::io::Result<Vec<Frame>> {
    let ps = hdr.page_size as usize;
    let frame_len = FRAME_HEADER as usize + ps;
    let mut r = BufReader::with_capacity(1 << 20, f);
    r.seek(SeekFrom::Start(frame_offset(hdr.page_size, after + 1)))?;
    let mut buf = vec![0u8; frame_len];
    let mut out = Vec::new();
    let mut s = seed;
    let mut index = after;
    loop {
        let mut n = 0;
        while n < frame_len {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n < frame_len {
            break;
        }
        let pgno = be32(&buf[0..4]);
        if pgno == 0 || buf[8..16] != hdr.salts {
            break;
        }
        let c = checksum(hdr.big_endian, &buf[..8], s);
        let c = checksum(hdr.big_endian, &buf[FRAME_HEADER as usize..], c);
        if c != [be32(&buf[16..20]), be32(&buf[20..24])] {
            break;
        }
        s = c;
        index += 1;
        out.push(Frame {
            index,
            pgno,
            commit_size: be32(&buf[4..8]),
            cksum: c,
        });
    }
    Ok(out)
}

/// The wal-index header of the `-shm` file: the last committed frame
/// (`mx_frame`) and the salts the wal-index holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHeader {
    pub mx_frame: u32,
    pub page_size: u32,
    pub salts: Salts,
}

/// The `-shm` files this process opened, by device and inode, kept open
/// until it exits. SQLite holds its WAL locks as POSIX locks on the `-shm`
/// file, and closing *any* descriptor of a file drops every POSIX lock the
/// process holds on it: a `-shm` opened and closed here while a connection
/// of this process (a capture's read transaction, a repair's writer) uses
/// the database would silently release that connection's locks.
static SHM_FILES: std::sync::Mutex<Vec<OpenShm>> = std::sync::Mutex::new(Vec::new());

/// An open `-shm` file and its (device, inode).
type OpenShm = ((u64, u64), std::sync::Arc<File>);

fn shm_file(db: &Path) -> std::io::Result<Option<std::sync::Arc<File>>> {
    use std::os::unix::fs::MetadataExt;
    let p = shm_path(db);
    let m = match std::fs::metadata(&p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let key = (m.dev(), m.ino());
    let mut open = SHM_FILES
        .lock()
        .map_err(|_| std::io::Error::other("shm table poisoned"))?;
    if let Some((_, f)) = open.iter().find(|(k, _)| *k == key) {
        return Ok(Some(f.clone()));
    }
    let f = match File::open(&p) {
        Ok(f) => std::sync::Arc::new(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Replaced between the stat and the open: do not keep it under the
    // old key (it stays open all the same).
    let m2 = f.metadata()?;
    if (m2.dev(), m2.ino()) == key {
        open.push((key, f.clone()));
    } else {
        open.push(((m2.dev(), m2.ino()), f.clone()));
    }
    Ok(Some(f))
}

/// The wal-index's checkpoint counters (`nBackfill` and
/// `nBackfillAttempted`, native byte order, at offsets 96 and 128 of the
/// `-shm` file): a checkpoint that copies frames into the database file
/// moves them. `None` when there is no `-shm` file or it is too short.
pub fn read_backfill(db: &Path) -> std::io::Result<Option<[u32; 2]>> {
    let Some(f) = shm_file(db)? else {
        return Ok(None);
    };
    let mut b = [0u8; 36];
    if read_at(&f, 96, &mut b)? < b.len() {
        return Ok(None);
    }
    let ne = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    Ok(Some([ne(0), ne(32)]))
}

/// Reads the wal-index header: its two copies must be equal and its
/// checksum (native byte order) valid; a writer may be updating it, so a
/// torn read is retried a few times. `None` when there is no `-shm` file or
/// no stable, valid header.
pub fn read_index_header(db: &Path) -> std::io::Result<Option<IndexHeader>> {
    let Some(f) = shm_file(db)? else {
        return Ok(None);
    };
    for _ in 0..100 {
        let mut h = [0u8; 96];
        if read_at(&f, 0, &mut h)? < h.len() {
            return Ok(None);
        }
        let (a, b) = h.split_at(48);
        let ne = |o: usize| u32::from_ne_bytes([a[o], a[o + 1], a[o + 2], a[o + 3]]);
        let valid = a == b
            && ne(0) == 3_007_000
            && a[12] == 1
            && checksum(cfg!(target_endian = "big"), &a[..40], [0, 0]) == [ne(40), ne(44)];
        if valid {
            let ps = u16::from_ne_bytes([a[14], a[15]]) as u32;
            let mut salts = [0u8; 8];
            salts.copy_from_slice(&a[32..40]);
            return Ok(Some(IndexHeader {
                mx_frame: ne(16),
                page_size: if ps == 1 { 65536 } else { ps },
                salts,
            }));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_db(dir: &Path) -> (PathBuf, rusqlite::Connection) {
        let p = dir.join("w.db");
        let c = rusqlite::Connection::open(&p).expect("open");
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(3000));",
        )
        .expect("setup");
        (p, c)
    }

    #[test]
    fn frames_and_index_header_agree_with_what_sqlite_wrote() {
        let d = tempfile::tempdir().expect("tmp");
        let (p, c) = wal_db(d.path());
        for _ in 0..5 {
            c.execute("INSERT INTO t VALUES (randomblob(5000))", [])
                .expect("insert");
        }
        let f = File::open(wal_path(&p)).expect("wal");
        let h = read_header(&f).expect("read").expect("a valid header");
        assert_eq!(h.page_size, 4096);
        let frames = walk(&f, &h, 0, h.cksum).expect("walk");
        let ix = read_index_header(&p)
            .expect("shm")
            .expect("a valid index header");
        assert_eq!(ix.salts, h.salts, "the wal-index holds the WAL's salts");
        let last_commit = frames
            .iter()
            .rev()
            .find(|f| f.is_commit())
            .expect("a commit");
        assert_eq!(
            last_commit.index, ix.mx_frame,
            "mxFrame is the last commit frame"
        );
        let page_count: u32 = c
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("count");
        assert_eq!(last_commit.commit_size, page_count);
        // The chain can be resumed from any frame with its checksum.
        let mid = frames[frames.len() / 2];
        let rest = walk(&f, &h, mid.index, mid.cksum).expect("walk");
        assert_eq!(rest, frames[frames.len() / 2 + 1..].to_vec());
        let (stored, salts) = stored_frame(&f, &h, mid.index)
            .expect("read")
            .expect("in the file");
        assert_eq!((stored, salts), (mid, h.salts));
        // A wrong seed breaks the chain at once.
        assert!(walk(&f, &h, mid.index, [1, 2]).expect("walk").is_empty());
    }

    #[test]
    fn a_restart_changes_the_salts_and_invalidates_the_old_frames() {
        let d = tempfile::tempdir().expect("tmp");
        let (p, c) = wal_db(d.path());
        let f = File::open(wal_path(&p)).expect("wal");
        let before = read_header(&f).expect("read").expect("header");
        let old = walk(&f, &before, 0, before.cksum).expect("walk");
        assert!(!old.is_empty());
        c.execute_batch("PRAGMA wal_checkpoint(PASSIVE); INSERT INTO t VALUES (1);")
            .expect("restart");
        let after = read_header(&f).expect("read").expect("header");
        assert_ne!(after.salts, before.salts, "a restart draws new salts");
        let new = walk(&f, &after, 0, after.cksum).expect("walk");
        assert!(
            !new.is_empty() && new.len() < old.len(),
            "{} new frames",
            new.len()
        );
        // The stale frames behind the new one carry the old salts.
        let (_, salts) = stored_frame(&f, &after, old.len() as u32)
            .expect("read")
            .expect("still in the file");
        assert_eq!(salts, before.salts);
    }
}
