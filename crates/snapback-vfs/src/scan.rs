//! Read-ahead along a b-tree being scanned.
//!
//! SQLite scans a table (or an index) leaf by leaf, in the order of the
//! child pointers of the interior pages above the leaves. Each leaf read
//! that misses the cache is a fetch from the repository, one at a time,
//! while the pages to come are known: they are the remaining children of
//! the interior page. So when SQLite reads two neighbouring children of the
//! same interior page one after the other, the page is being scanned, and
//! the children after them are fetched in the background, in a few range
//! reads; an interior page that is itself a child of a scanned page has all
//! its children fetched as soon as it is read. Only pages of the b-tree
//! being scanned are fetched (a diff of one table reads no other table's
//! pages), and point lookups, which read one child per interior page, fetch
//! nothing more than before.
//!
//! This only decides what to prefetch: every byte SQLite gets still comes
//! from the verified reader, and a page that does not parse as an interior
//! page is simply not followed.

use std::collections::{HashMap, HashSet, VecDeque};

/// How many interior pages are remembered (a scan needs its path from the
/// root: a few levels).
const PARENTS: usize = 16;
/// Scanned interior pages remembered, so that one is not prefetched twice.
const SCANNED: usize = 4096;

/// The child page numbers of a b-tree interior page (type 2, index, or 5,
/// table), left to right, the right-most pointer last; `None` for any other
/// page, or one whose header or cell pointers do not fit the page.
pub(crate) fn interior_children(page: &[u8], pgno: u32) -> Option<Vec<u32>> {
    let h = if pgno == 1 { 100 } else { 0 };
    let hdr = page.get(h..h + 12)?;
    if hdr[0] != 2 && hdr[0] != 5 {
        return None;
    }
    let cells = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
    let right = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    let ptrs = page.get(h + 12..h + 12 + 2 * cells)?;
    let mut out = Vec::with_capacity(cells + 1);
    for p in ptrs.chunks_exact(2) {
        let at = usize::from(u16::from_be_bytes([p[0], p[1]]));
        let c = page.get(at..at + 4)?;
        out.push(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    out.push(right);
    if out.contains(&0) {
        return None;
    }
    Some(out)
}

struct Parent {
    pgno: u32,
    children: Vec<u32>,
    /// Index of the child read last.
    last: Option<usize>,
}

/// What one open point has seen of the b-trees read from it.
#[derive(Default)]
pub(crate) struct ScanState {
    parents: VecDeque<Parent>,
    /// Child page → (its parent's page number, its index among the
    /// parent's children), for the remembered parents.
    child_of: HashMap<u32, (u32, usize)>,
    scanned: HashSet<u32>,
}

impl ScanState {
    /// Notes that page `pgno` (whose bytes are `page`) was read; returns
    /// the pages to fetch ahead.
    pub(crate) fn on_read(&mut self, pgno: u32, page: &[u8]) -> Vec<u32> {
        let mut ahead = Vec::new();
        let mut parent_scanned = false;
        if let Some(&(par, k)) = self.child_of.get(&pgno) {
            if let Some(p) = self.parents.iter_mut().find(|p| p.pgno == par) {
                let neighbour = p.last.is_some_and(|l| l + 1 == k || k + 1 == l);
                let forward = p.last.is_none_or(|l| l < k);
                p.last = Some(k);
                if neighbour && !self.scanned.contains(&par) {
                    if forward {
                        ahead.extend_from_slice(&p.children[k + 1..]);
                    } else {
                        ahead.extend_from_slice(&p.children[..k]);
                    }
                    self.mark_scanned(par);
                }
                parent_scanned = self.scanned.contains(&par);
            }
        }
        if let Some(children) = interior_children(page, pgno) {
            if parent_scanned && !self.scanned.contains(&pgno) {
                ahead.extend_from_slice(&children);
                self.mark_scanned(pgno);
            }
            self.remember(pgno, children);
        }
        ahead
    }

    fn mark_scanned(&mut self, pgno: u32) {
        if self.scanned.len() >= SCANNED {
            self.scanned.clear();
        }
        self.scanned.insert(pgno);
    }

    fn remember(&mut self, pgno: u32, children: Vec<u32>) {
        if self.parents.iter().any(|p| p.pgno == pgno) {
            return;
        }
        if self.parents.len() >= PARENTS {
            if let Some(old) = self.parents.pop_front() {
                for c in &old.children {
                    if self.child_of.get(c).is_some_and(|(p, _)| *p == old.pgno) {
                        self.child_of.remove(c);
                    }
                }
            }
        }
        for (i, c) in children.iter().enumerate() {
            self.child_of.insert(*c, (pgno, i));
        }
        self.parents.push_back(Parent {
            pgno,
            children,
            last: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table interior page (type 5) of `size` bytes with these children.
    fn interior(size: usize, children: &[u32]) -> Vec<u8> {
        let mut p = vec![0u8; size];
        p[0] = 5;
        let (cells, right) = children.split_at(children.len() - 1);
        p[3..5].copy_from_slice(&(cells.len() as u16).to_be_bytes());
        p[8..12].copy_from_slice(&right[0].to_be_bytes());
        let mut at = size;
        for (i, c) in cells.iter().enumerate() {
            at -= 8; // child pointer and a rowid varint, padded
            p[at..at + 4].copy_from_slice(&c.to_be_bytes());
            p[at + 4] = (i + 1) as u8;
            p[12 + 2 * i..14 + 2 * i].copy_from_slice(&(at as u16).to_be_bytes());
        }
        p
    }

    fn leaf(size: usize) -> Vec<u8> {
        let mut p = vec![0u8; size];
        p[0] = 13;
        p
    }

    #[test]
    fn interior_pages_parse_and_others_do_not() {
        let p = interior(4096, &[7, 9, 11, 20]);
        assert_eq!(interior_children(&p, 3), Some(vec![7, 9, 11, 20]));
        assert_eq!(interior_children(&leaf(4096), 3), None);
        let mut bad = p.clone();
        bad[3..5].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(
            interior_children(&bad, 3),
            None,
            "cell pointers past the page"
        );
    }

    #[test]
    fn scan_of_neighbouring_leaves_prefetches_the_rest_and_lookups_do_not() {
        let mut s = ScanState::default();
        let root = interior(4096, &[10, 11, 12, 13, 14]);
        assert!(s.on_read(2, &root).is_empty());
        // A point lookup: one child.
        assert!(s.on_read(12, &leaf(4096)).is_empty());
        // Another lookup far away: not a neighbour.
        assert!(s.on_read(10, &leaf(4096)).is_empty());
        // A scan: 10 then 11.
        assert_eq!(s.on_read(11, &leaf(4096)), vec![12, 13, 14]);
        // Once only.
        assert!(s.on_read(12, &leaf(4096)).is_empty());
    }

    #[test]
    fn interior_child_of_a_scanned_page_prefetches_all_its_children() {
        let mut s = ScanState::default();
        assert!(s.on_read(2, &interior(4096, &[3, 4, 5])).is_empty());
        assert!(s.on_read(3, &interior(4096, &[30, 31, 32])).is_empty());
        assert!(s.on_read(30, &leaf(4096)).is_empty());
        assert_eq!(s.on_read(31, &leaf(4096)), vec![32]);
        // 4 follows 3 under page 2: the root is scanned now, and so is 4.
        assert_eq!(s.on_read(4, &interior(4096, &[40, 41])), vec![5, 40, 41]);
    }
}
