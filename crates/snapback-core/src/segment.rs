//! Timeline segments (format 2, feature "timeline"): the points of
//! continuous capture, as an object format. What a segment means, and how
//! it is committed and read, is in `timeline`; this module is its encoding
//! and the replay of its points over a base chunk list.
//!
//! A segment is `"SNBSEG\x01\x00"` followed by one zstd frame of
//! (little-endian):
//! ```text
//! path_len u16, path (UTF-8), base manifest id [32], page_size u32,
//! point_count u32, then per point:
//!   time i64 (ns since the epoch), page_count u64, db_checksum u128,
//!   change_count u32, then change_count x (page index u64, blob id [32])
//! ```
//! A point's changes are the pages written since the previous point (the
//! first point: since the base manifest), by page index as in the chunk
//! list (page number - 1), ascending.

use std::collections::HashMap;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::chunklist::ChunkRef;
use crate::error::{Error, Result};
use crate::id::{DbChecksum, Id};
use crate::index::Reader;

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"SNBSEG\x01\x00";

/// The most a segment may decompress to (a bound against a planted bomb;
/// a segment of a 1 GiB database that changed by 1/8 is about 1.3 MiB).
const MAX_SEGMENT_BYTES: usize = 1 << 30;

/// One point in time of a database: its image is the base's chunk list
/// with the changes of every point up to this one applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// When the point was captured (its read transaction began): the image
    /// holds every transaction committed before it. Nanosecond precision.
    pub time: OffsetDateTime,
    /// The database's size in pages at this point.
    pub page_count: u64,
    /// The checksum of the image (see `DbChecksum`), which the replayed
    /// chunk list must give.
    pub db_checksum: DbChecksum,
    /// (page index as in the chunk list, data blob) of every page written
    /// since the previous point, ascending by index.
    pub changes: Vec<(u64, Id)>,
}

/// A batch of points of one database, over one base manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The database's path, as in the base manifest's file entry.
    pub path: String,
    /// The manifest whose file `path` the first point starts from.
    pub base: Id,
    pub page_size: u32,
    /// Oldest first, strictly increasing in time.
    pub points: Vec<Point>,
}

impl Segment {
    /// Checks what a segment must be on its own: a path, points in strict
    /// time order, changes ascending and inside each point's page count.
    pub fn validate(&self, place: &str) -> Result<()> {
        let bad = |why: String| Err(Error::corrupt(place, why));
        if !self.path.starts_with('/') || self.path.len() > u16::MAX as usize {
            return bad(format!(
                "the path {:?} is not an absolute path of at most {} bytes",
                self.path,
                u16::MAX
            ));
        }
        if !self.page_size.is_power_of_two() || !(512..=65536).contains(&self.page_size) {
            return bad(format!(
                "page size {} is not a SQLite page size",
                self.page_size
            ));
        }
        if self.points.is_empty() {
            return bad("it holds no point".into());
        }
        for (k, p) in self.points.iter().enumerate() {
            if k > 0 && p.time <= self.points[k - 1].time {
                return bad(format!(
                    "point {k} ({}) is not after point {} ({}): points must be in strictly increasing time order",
                    crate::time::format_rfc3339_nanos(p.time),
                    k - 1,
                    crate::time::format_rfc3339_nanos(self.points[k - 1].time)
                ));
            }
            if time_nanos(p.time).is_none() {
                return bad(format!("point {k}'s time is out of range"));
            }
            if p.page_count == 0 {
                return bad(format!("point {k} has a page count of 0"));
            }
            for (j, (i, _)) in p.changes.iter().enumerate() {
                if *i >= p.page_count {
                    return bad(format!(
                        "point {k} changes page index {i}, past its page count {}",
                        p.page_count
                    ));
                }
                if j > 0 && *i <= p.changes[j - 1].0 {
                    return bad(format!(
                        "point {k}'s changes are not in strictly ascending page order (index {i})"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The stored form (before sealing in an encrypted repository).
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.validate("timeline segment")
            .map_err(|e| Error::internal(format!("cannot encode a timeline segment: {e}")))?;
        let mut raw = Vec::new();
        raw.extend_from_slice(&(self.path.len() as u16).to_le_bytes());
        raw.extend_from_slice(self.path.as_bytes());
        raw.extend_from_slice(&self.base.0);
        raw.extend_from_slice(&self.page_size.to_le_bytes());
        raw.extend_from_slice(&count_u32(self.points.len(), "points")?.to_le_bytes());
        for p in &self.points {
            let ns = time_nanos(p.time)
                .ok_or_else(|| Error::internal("a point's time is out of range"))?;
            raw.extend_from_slice(&ns.to_le_bytes());
            raw.extend_from_slice(&p.page_count.to_le_bytes());
            raw.extend_from_slice(&p.db_checksum.0.to_le_bytes());
            raw.extend_from_slice(&count_u32(p.changes.len(), "changes")?.to_le_bytes());
            for (i, id) in &p.changes {
                raw.extend_from_slice(&i.to_le_bytes());
                raw.extend_from_slice(&id.0);
            }
        }
        let z = zstd::bulk::compress(&raw, 3)
            .map_err(|e| Error::internal(format!("cannot compress a timeline segment: {e}")))?;
        let mut out = Vec::with_capacity(8 + z.len());
        out.extend_from_slice(SEGMENT_MAGIC);
        out.extend_from_slice(&z);
        Ok(out)
    }

    /// Decodes and validates a stored segment; `place` names it in errors.
    pub fn decode(bytes: &[u8], place: &str) -> Result<Segment> {
        if bytes.len() >= 8 && &bytes[..6] == b"SNBSEG" && bytes[6] > SEGMENT_MAGIC[6] {
            return Err(Error::UnsupportedVersion {
                found: bytes[6] as u32,
                supported: SEGMENT_MAGIC[6] as u32,
            });
        }
        if bytes.len() < 8 || &bytes[..8] != SEGMENT_MAGIC {
            return Err(Error::corrupt(
                place,
                "not a snapback timeline segment (bad magic)",
            ));
        }
        let raw = zstd::bulk::decompress(&bytes[8..], MAX_SEGMENT_BYTES)
            .map_err(|e| Error::corrupt(place, format!("does not decompress: {e}")))?;
        let mut r = Reader::new(&raw, place);
        let plen = r.u16()? as usize;
        let path = std::str::from_utf8(r.bytes(plen)?)
            .map_err(|_| Error::corrupt(place, "the path is not UTF-8"))?
            .to_string();
        let base = Id(r.arr()?);
        let page_size = r.u32()?;
        let n = r.u32()? as usize;
        // A point takes at least 36 bytes: refuse a count the bytes cannot hold.
        if n.saturating_mul(36) > r.remaining() {
            return Err(Error::corrupt(
                place,
                "point count exceeds the segment size",
            ));
        }
        let mut points = Vec::with_capacity(n);
        for _ in 0..n {
            let ns = r.u64()? as i64;
            let time = OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
                .map_err(|e| Error::corrupt(place, format!("a point's time is invalid: {e}")))?;
            let page_count = r.u64()?;
            let db_checksum = DbChecksum(r.u128()?);
            let m = r.u32()? as usize;
            if m.saturating_mul(40) > r.remaining() {
                return Err(Error::corrupt(
                    place,
                    "change count exceeds the segment size",
                ));
            }
            let mut changes = Vec::with_capacity(m);
            for _ in 0..m {
                let i = r.u64()?;
                changes.push((i, Id(r.arr()?)));
            }
            points.push(Point {
                time,
                page_count,
                db_checksum,
                changes,
            });
        }
        if r.remaining() != 0 {
            return Err(Error::corrupt(place, "trailing bytes after the last point"));
        }
        let seg = Segment {
            path,
            base,
            page_size,
            points,
        };
        seg.validate(place)?;
        Ok(seg)
    }

    /// How many page entries restoring point `k` replays.
    pub fn changes_up_to(&self, k: usize) -> usize {
        self.points
            .iter()
            .take(k + 1)
            .map(|p| p.changes.len())
            .sum()
    }
}

fn count_u32(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::internal(format!("a timeline segment with {n} {what}")))
}

fn time_nanos(t: OffsetDateTime) -> Option<i64> {
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

/// The chunk list at point `k` of `points`: `base` (the base manifest's
/// list of the database) with each point's changes applied in order, each
/// point first cut or extended to its page count (every page past the
/// previous count must come from its changes). Every point on the way must
/// give its `db_checksum`; a mismatch is damage at `place`, never a wrong
/// image.
pub(crate) fn replay(
    mut list: Vec<ChunkRef>,
    page_size: u32,
    points: &[Point],
    k: usize,
    place: &str,
) -> Result<Vec<ChunkRef>> {
    let ps = page_size as u64;
    let mut sum = DbChecksum::default();
    for (i, c) in list.iter().enumerate() {
        sum.add(i as u64 * ps, &c.id);
    }
    for (n, p) in points.iter().enumerate().take(k + 1) {
        apply_point(&mut list, page_size, p, n, place, |i, old, new| {
            if let Some(o) = old {
                sum.remove(i as u64 * ps, &o.id);
            }
            if let Some(c) = new {
                sum.add(i as u64 * ps, &c.id);
            }
        })?;
        if sum != p.db_checksum {
            return Err(Error::corrupt(
                place,
                format!(
                    "the chunk list replayed to point {n} gives the checksum {}, but the point records {}",
                    sum.to_hex(),
                    p.db_checksum.to_hex()
                ),
            ));
        }
    }
    Ok(list)
}

/// Applies point `p` (number `n` of its segment) to `list`, the chunk list
/// at the point before it: cut or extended to its page count (every page
/// past the previous count must come from its changes), then its changes
/// written. `changed(index, old, new)` is told of every entry that is
/// removed, added or rewritten (`None`: past the end of the list), so a
/// caller keeps a checksum, or the set of entries to prove later. Refused
/// as damage at `place` when the point is inconsistent; its checksum is
/// the caller's to check.
pub(crate) fn apply_point(
    list: &mut Vec<ChunkRef>,
    page_size: u32,
    p: &Point,
    n: usize,
    place: &str,
    mut changed: impl FnMut(usize, Option<ChunkRef>, Option<ChunkRef>),
) -> Result<()> {
    let count = usize::try_from(p.page_count)
        .map_err(|_| Error::corrupt(place, format!("point {n}'s page count is too large")))?;
    let before = list.len();
    // Every page past the previous count comes from the changes: a
    // count beyond that is corrupt (refused before allocating for it).
    if count > before.saturating_add(p.changes.len()) {
        return Err(Error::corrupt(
            place,
            format!(
                "point {n} has {count} pages, more than the {before} before it and its {} changes",
                p.changes.len()
            ),
        ));
    }
    // Checked before anything is changed, so a refused point leaves
    // `list` as it was.
    // Changes are unique and ascending (`validate`), so counting the
    // ones past the previous count tells whether they cover it all.
    let grown = count.saturating_sub(before);
    let mut covered = 0usize;
    for (i, _) in &p.changes {
        let i = *i as usize;
        if i >= count {
            return Err(Error::corrupt(
                place,
                format!("point {n} changes page index {i}, past its page count {count}"),
            ));
        }
        if i >= before {
            covered += 1;
        }
    }
    if covered != grown {
        return Err(Error::corrupt(
            place,
            format!("point {n} leaves pages past the previous page count undefined"),
        ));
    }
    for (i, c) in list.iter().enumerate().skip(count) {
        changed(i, Some(*c), None);
    }
    list.truncate(count);
    list.resize(
        count,
        ChunkRef {
            id: Id([0; 32]),
            len: 0,
        },
    );
    for (i, id) in &p.changes {
        let i = *i as usize;
        let new = ChunkRef {
            id: *id,
            len: page_size,
        };
        let old = (i < before).then_some(list[i]);
        changed(i, old, Some(new));
        list[i] = new;
    }
    Ok(())
}

/// Every point that another segment holds too (same path, base, time and
/// checksum: the same image), mapped to the copy that stands for it: the
/// one in the segment with the fewest points (then the lowest id). A
/// thinning interrupted after committing a segment's replacement leaves
/// such copies; listings and retention count each point once.
pub(crate) fn shadowed(segments: &[(Id, Arc<Segment>)]) -> HashMap<(Id, usize), (Id, usize)> {
    // (path, base, time, checksum) of every point, with where it is.
    let keyed = segments.iter().flat_map(|(id, seg)| {
        seg.points.iter().enumerate().map(move |(k, p)| {
            let key = (
                seg.path.as_str(),
                seg.base,
                p.time.unix_timestamp_nanos(),
                p.db_checksum.0,
            );
            (key, (seg.points.len(), *id, k))
        })
    });
    let mut owner: HashMap<_, (usize, Id, usize)> = HashMap::new();
    for (key, cand) in keyed.clone() {
        let o = owner.entry(key).or_insert(cand);
        if (cand.0, cand.1) < (o.0, o.1) {
            *o = cand;
        }
    }
    keyed
        .filter_map(|(key, (_, id, k))| {
            let (_, oid, ok) = owner[&key];
            ((oid, ok) != (id, k)).then_some(((id, k), (oid, ok)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(s as i128 * 1_000_000_000 + 123_456_789)
            .expect("time")
    }

    fn r(n: u8) -> ChunkRef {
        ChunkRef {
            id: Id([n; 32]),
            len: 4096,
        }
    }

    fn sum_of(list: &[ChunkRef]) -> DbChecksum {
        let mut s = DbChecksum::default();
        for (i, c) in list.iter().enumerate() {
            s.add(i as u64 * 4096, &c.id);
        }
        s
    }

    /// A base of 4 pages, a point that changes page 1 and grows to 5, one
    /// that shrinks to 3.
    fn sample() -> (Vec<ChunkRef>, Segment) {
        let base: Vec<_> = (1..=4).map(r).collect();
        let mut p1 = base.clone();
        p1[1] = r(20);
        p1.push(r(21));
        let mut p2 = p1.clone();
        p2.truncate(3);
        p2[0] = r(30);
        let seg = Segment {
            path: "/srv/app.db".into(),
            base: Id::of(b"base"),
            page_size: 4096,
            points: vec![
                Point {
                    time: t(100),
                    page_count: 5,
                    db_checksum: sum_of(&p1),
                    changes: vec![(1, r(20).id), (4, r(21).id)],
                },
                Point {
                    time: t(101),
                    page_count: 3,
                    db_checksum: sum_of(&p2),
                    changes: vec![(0, r(30).id)],
                },
            ],
        };
        (base, seg)
    }

    #[test]
    fn segments_round_trip_through_their_encoding() {
        let (_, seg) = sample();
        let bytes = seg.encode().expect("encode");
        assert_eq!(&bytes[..8], SEGMENT_MAGIC);
        assert_eq!(Segment::decode(&bytes, "s").expect("decode"), seg);
        assert_eq!(
            seg.points[0].time.nanosecond(),
            123_456_789,
            "nanoseconds kept"
        );
    }

    #[test]
    fn replay_gives_each_points_image_and_checks_its_checksum() {
        let (base, seg) = sample();
        let one = replay(base.clone(), 4096, &seg.points, 0, "s").expect("point 0");
        assert_eq!(one, vec![r(1), r(20), r(3), r(4), r(21)]);
        let two = replay(base.clone(), 4096, &seg.points, 1, "s").expect("point 1");
        assert_eq!(two, vec![r(30), r(20), r(3)]);
        let mut bad = seg.clone();
        bad.points[1].db_checksum.0 ^= 1;
        let e = replay(base.clone(), 4096, &bad.points, 1, "s").expect_err("checksum");
        assert!(e.to_string().contains("gives the checksum"), "{e}");
        let mut gap = seg.clone();
        gap.points[0].changes.pop();
        let e = replay(base, 4096, &gap.points, 0, "s").expect_err("gap");
        assert!(e.to_string().contains("undefined"), "{e}");
    }

    #[test]
    fn malformed_segments_are_refused_on_decode() {
        let (_, seg) = sample();
        let good = seg.encode().expect("encode");
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert!(Segment::decode(&flipped, "s").is_err(), "damaged frame");
        assert!(Segment::decode(&good[..good.len() - 3], "s").is_err());
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(Segment::decode(&magic, "s").is_err());
        let mut newer = good;
        newer[6] = 2;
        assert!(matches!(
            Segment::decode(&newer, "s"),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
        let mut order = seg.clone();
        order.points[1].time = order.points[0].time;
        assert!(order.encode().is_err(), "equal times");
        let mut desc = seg.clone();
        desc.points[0].changes.reverse();
        assert!(desc.encode().is_err(), "changes out of order");
        let mut past = seg;
        past.points[1].changes = vec![(3, Id([1; 32]))];
        assert!(past.encode().is_err(), "change past the page count");
    }
}
