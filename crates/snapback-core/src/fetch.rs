//! Range reads of packs: planned (the blobs wanted, grouped by pack,
//! neighbours coalesced into one read), run in parallel on threads of
//! their own, or fetched ahead of their use (`ReadAhead`, for a restore
//! on a store that asks for it: `Tuning::read_ahead`, the S3 store).
//!
//! A full restore fills its windows in file order, each from the range
//! reads of its own chunks. On a local disk a window's reads cost CPU and
//! are done on every core as the window is filled. On S3 each read waits
//! on the server and one stream is slower than several, so reads issued
//! window by window keep few GETs in flight (one or two, for a database
//! that compresses well: its window is a few reads). `ReadAhead` takes
//! every window's reads, planned before the first is filled, and fetches
//! them in that order on threads of its own, each as soon as it is
//! claimed, while the reads fetched and not yet taken stay within a
//! budget of bytes; the windows then `take` them as they are filled.
//!
//! Nothing is checked here: a read is handed over exactly as the store
//! returned it (its bytes, or its error), and whoever takes it opens and
//! verifies every blob in it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

use snapback_storage::{Store, StoreError};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{BlobLocation, MasterIndex};
use crate::layout::pack_key;

/// The longest range read of one pack: neighbouring blobs are fetched
/// together up to this many bytes. Small enough that a window's blobs
/// (about a third of it, compressed) make enough reads to keep every
/// core busy opening them. A store that reads ahead (S3) has its own,
/// larger reads (`Tuning::read_ahead_range`).
pub(crate) const MAX_RANGE: u64 = 1 << 20;

/// Blobs this close together are fetched in one read, with what lies
/// between.
const MAX_GAP: u64 = 256 << 10;

/// One range read of a pack and the blobs it holds, each with what its
/// reader needs to know of it (`T`: nothing, or the blob's place).
pub(crate) struct RangeRead<T> {
    pub key: String,
    pub start: u64,
    pub end: u64,
    pub blobs: Vec<(Id, BlobLocation, T)>,
}

/// The range reads that fetch `wants`: grouped by pack, neighbours
/// (at most `MAX_GAP` apart) coalesced into reads of at most `max_range`
/// bytes (`MAX_RANGE`, or the store's `read_ahead_range`), pack by pack,
/// front to back (the order the packs were written in).
pub(crate) fn plan_reads<T>(
    index: &MasterIndex,
    wants: impl IntoIterator<Item = (Id, T)>,
    place: &str,
    max_range: u64,
) -> Result<Vec<RangeRead<T>>> {
    let mut by_pack: HashMap<Id, Vec<(Id, BlobLocation, T)>> = HashMap::new();
    for (id, t) in wants {
        let loc = index.get(&id).ok_or_else(|| missing_chunk(&id, place))?;
        by_pack.entry(loc.pack).or_default().push((id, loc, t));
    }
    let mut reads: Vec<RangeRead<T>> = Vec::new();
    for (pack, mut blobs) in by_pack {
        blobs.sort_by_key(|(_, l, _)| l.offset);
        let key = pack_key(&pack);
        let mut blobs = blobs.into_iter().peekable();
        while let Some(first) = blobs.next() {
            let start = first.1.offset as u64;
            let mut end = start + first.1.stored_len as u64;
            let mut group = vec![first];
            while let Some(next) = blobs.peek() {
                let l = &next.1;
                let (o, e) = (l.offset as u64, l.offset as u64 + l.stored_len as u64);
                if o > end + MAX_GAP || e - start > max_range {
                    break;
                }
                end = end.max(e);
                group.extend(blobs.next());
            }
            reads.push(RangeRead {
                key: key.clone(),
                start,
                end,
                blobs: group,
            });
        }
    }
    reads.sort_by(|a, b| a.key.cmp(&b.key).then(a.start.cmp(&b.start)));
    Ok(reads)
}

pub(crate) fn missing_chunk(id: &Id, place: &str) -> Error {
    Error::corrupt(
        format!("chunk {} of {place}", id.short()),
        "is not in any index; the data is missing (run `snapback check`)",
    )
}

/// Runs `f` on every job, `width` at a time, on threads of their own (a
/// range read waits on the store, not on a core); the first error stops
/// the rest.
pub(crate) fn run_parallel<T: Sync>(
    jobs: &[T],
    width: usize,
    f: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let width = width.clamp(1, jobs.len().max(1));
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..width)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        if let Err(e) = f(job) {
                            stop.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let mut first = Ok(());
        for w in workers {
            let r = w
                .join()
                .map_err(|_| Error::internal("a reader thread of the repository panicked"))
                .and_then(|r| r);
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// The longest range read worth making of `store`: its own when it reads
/// ahead (`Tuning::read_ahead_range`), else `MAX_RANGE`.
pub(crate) fn range_limit(store: &dyn Store) -> u64 {
    let t = store.tuning();
    if t.read_ahead > 0 {
        t.read_ahead_range
    } else {
        MAX_RANGE
    }
}

/// One planned read: the object and the range of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Range {
    pub key: String,
    pub start: u64,
    pub len: u64,
}

enum Slot {
    /// Not fetched yet (or being fetched).
    Pending,
    /// Fetched, not yet taken.
    Done(std::result::Result<Vec<u8>, StoreError>),
    /// Handed to a window.
    Taken,
}

struct State {
    slots: Vec<Slot>,
    /// The next read a fetcher claims.
    next: usize,
    /// A window waits, or has waited, for a read before this one.
    wanted_to: usize,
    /// Bytes of the reads claimed (being fetched or fetched) and not taken.
    held: u64,
    /// For each planned range, its reads not yet taken, in plan order (a
    /// range may be planned twice, by two windows).
    by_range: HashMap<Range, VecDeque<usize>>,
    stop: bool,
}

pub(crate) struct ReadAhead<'s> {
    store: &'s dyn Store,
    reads: Vec<Range>,
    budget: u64,
    state: Mutex<State>,
    changed: Condvar,
}

impl<'s> ReadAhead<'s> {
    /// `reads` in the order they will be taken (about: windows filled at
    /// once take theirs in any order).
    pub fn new(store: &'s dyn Store, reads: Vec<Range>, budget: u64) -> ReadAhead<'s> {
        let mut by_range: HashMap<Range, VecDeque<usize>> = HashMap::new();
        for (i, r) in reads.iter().enumerate() {
            by_range.entry(r.clone()).or_default().push_back(i);
        }
        ReadAhead {
            store,
            budget,
            state: Mutex::new(State {
                slots: reads.iter().map(|_| Slot::Pending).collect(),
                next: 0,
                wanted_to: 0,
                held: 0,
                by_range,
                stop: false,
            }),
            changed: Condvar::new(),
            reads,
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| crate::repo::poisoned())
    }

    /// One fetcher: claims the next read, fetches it, and so on until every
    /// read is claimed or `stop` is called. A read waits while the bytes
    /// held would pass the budget, unless a window waits for it or for a
    /// later one (so a window never waits on a read that no one fetches,
    /// whatever the order the windows take them in).
    pub fn fetch(&self) -> Result<()> {
        loop {
            let i = {
                let mut st = self.lock()?;
                loop {
                    if st.stop || st.next >= self.reads.len() {
                        return Ok(());
                    }
                    let len = self.reads[st.next].len;
                    if st.next < st.wanted_to || st.held + len <= self.budget {
                        break;
                    }
                    st = self.changed.wait(st).map_err(|_| crate::repo::poisoned())?;
                }
                let i = st.next;
                st.next += 1;
                st.held += self.reads[i].len;
                i
            };
            let r = &self.reads[i];
            let got = self.store.get_range(&r.key, r.start, r.len);
            let mut st = self.lock()?;
            st.slots[i] = Slot::Done(got);
            self.changed.notify_all();
        }
    }

    /// The bytes of `len` bytes of `key` at `start`, once fetched (or the
    /// store's error for them). A range that was not planned, or whose
    /// planned reads were all taken, is read from the store now.
    pub fn take(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        let want = Range {
            key: key.to_string(),
            start,
            len,
        };
        let mut st = self.lock()?;
        let Some(i) = st.by_range.get_mut(&want).and_then(|q| q.pop_front()) else {
            drop(st);
            return Ok(self.store.get_range(key, start, len)?);
        };
        if i >= st.wanted_to {
            st.wanted_to = i + 1;
            self.changed.notify_all();
        }
        loop {
            if let Slot::Done(_) = st.slots[i] {
                break;
            }
            if st.stop {
                return Err(Error::internal(
                    "the restore's read-ahead stopped before a read it had planned",
                ));
            }
            st = self.changed.wait(st).map_err(|_| crate::repo::poisoned())?;
        }
        let Slot::Done(got) = std::mem::replace(&mut st.slots[i], Slot::Taken) else {
            return Err(Error::internal("a read-ahead slot changed under its lock"));
        };
        st.held -= len;
        self.changed.notify_all();
        drop(st);
        Ok(got?)
    }

    /// Makes the fetchers stop claiming reads (each finishes the one it
    /// has) and every waiting `take` return an error.
    pub fn stop(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.stop = true;
        }
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapback_storage::LocalStore;

    fn store_with(objects: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LocalStore::open(dir.path()).expect("store");
        for (k, v) in objects {
            store.put_if_absent(k, v).expect("put");
        }
        (dir, store)
    }

    fn range(key: &str, start: u64, len: u64) -> Range {
        Range {
            key: key.into(),
            start,
            len,
        }
    }

    #[test]
    fn every_planned_read_is_handed_over_with_its_bytes_whatever_the_budget() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (_d, store) = store_with(&[("data/aa/p1", data.clone())]);
        let reads: Vec<Range> = (0..50)
            .map(|i| range("data/aa/p1", i * 2000, 2000))
            .collect();
        // Taken in plan order, as windows take them, and backwards, under
        // a budget below one read (each goes only once a window waits for
        // it or a later one), of a few reads, and of all of them.
        let reversed: Vec<&Range> = reads.iter().rev().collect();
        let in_order: Vec<&Range> = reads.iter().collect();
        let cases = [
            (1, &in_order),
            (1, &reversed),
            (5000, &in_order),
            (1 << 20, &reversed),
        ];
        for (budget, order) in cases {
            let ahead = ReadAhead::new(&store, reads.clone(), budget);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| ahead.fetch().expect("fetch"));
                }
                for r in order.iter() {
                    let got = ahead.take(&r.key, r.start, r.len).expect("take");
                    let (a, b) = (r.start as usize, (r.start + r.len) as usize);
                    assert_eq!(got, data[a..b], "budget {budget}, read at {}", r.start);
                }
            });
        }
    }

    #[test]
    fn a_failed_read_is_the_error_of_the_window_that_takes_it() {
        let (_d, store) = store_with(&[("data/aa/p1", vec![1u8; 1000])]);
        let reads = vec![
            range("data/aa/p1", 0, 500),
            range("data/aa/p2", 0, 10),
            range("data/aa/p1", 500, 500),
        ];
        let ahead = ReadAhead::new(&store, reads, 1 << 20);
        std::thread::scope(|s| {
            s.spawn(|| ahead.fetch().expect("fetch"));
            assert_eq!(
                ahead.take("data/aa/p1", 0, 500).expect("first"),
                vec![1u8; 500]
            );
            let e = ahead.take("data/aa/p2", 0, 10).expect_err("missing pack");
            assert!(e.to_string().contains("data/aa/p2"), "{e}");
            assert_eq!(
                ahead.take("data/aa/p1", 500, 500).expect("last"),
                vec![1u8; 500]
            );
        });
    }

    #[test]
    fn an_unplanned_range_is_read_from_the_store_and_stop_releases_waiters() {
        let (_d, store) = store_with(&[("data/aa/p1", (0..=255u8).collect())]);
        let ahead = ReadAhead::new(&store, vec![range("data/aa/p1", 0, 10)], 1 << 20);
        assert_eq!(
            ahead.take("data/aa/p1", 10, 3).expect("unplanned"),
            vec![10, 11, 12]
        );
        // No fetcher runs: a take of the planned read waits until stop.
        std::thread::scope(|s| {
            let waiter = s.spawn(|| ahead.take("data/aa/p1", 0, 10));
            std::thread::sleep(std::time::Duration::from_millis(50));
            ahead.stop();
            let r = waiter.join().expect("join");
            assert!(r.is_err(), "a stopped read-ahead hands over no bytes");
        });
    }
}
