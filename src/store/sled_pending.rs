//! Changes committed on sled but not yet written to it: each flush writes them as one group
//! (`sled_redo.rs`), and every read sees them meanwhile.
//!
//! Writing each change to sled as it committed cost a sled transaction per change, and a
//! sled transaction seals and writes its log buffer twice (before and after the marker that
//! makes it atomic), each a `pwrite` and a `sync_file_range` on sled's I/O threads: most of
//! what a durable change cost. One group per flush shares that, as the flush itself is
//! shared. Nothing changes for a reader: a committed change is visible at once, and
//! acknowledged only after the flush that wrote it.
//!
//! Changes run one at a time, each on top of every change before it, so they never conflict.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use super::engine::{Body, Entry, Scan, TxEngine, TxError, TxResult};
use super::tables::TableId;
use crate::error::{Error, Result};

thread_local! {
    /// Whether this thread is running a change (tests check that it reads only its view).
    static IN_CHANGE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Reads a key's value from sled itself.
pub(super) type Stored<'a> = &'a dyn Fn(TableId, &[u8]) -> Result<Option<Vec<u8>>>;

/// Writes (`Some`) and deletes (`None`) by table and key, in key order.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Writes(BTreeMap<TableId, BTreeMap<Vec<u8>, Option<Vec<u8>>>>);

impl Writes {
    pub(super) fn get(&self, t: TableId, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.0.get(&t)?.get(key)
    }

    pub(super) fn insert(&mut self, t: TableId, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.0.entry(t).or_default().insert(key, value);
    }

    /// Lays `newer` over these writes.
    fn extend(&mut self, newer: Writes) {
        for (t, writes) in newer.0 {
            self.0.entry(t).or_default().extend(writes);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every write, by table and then key.
    pub(super) fn iter(&self) -> impl Iterator<Item = (TableId, &[u8], &Option<Vec<u8>>)> {
        self.0
            .iter()
            .flat_map(|(t, w)| w.iter().map(|(k, v)| (*t, k.as_slice(), v)))
    }

    /// The writes to table `t` with keys in the range.
    fn range<'a>(
        &'a self,
        t: TableId,
        lo: &'a Bound<Vec<u8>>,
        hi: &'a Bound<Vec<u8>>,
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> {
        // BTreeMap::range panics on a range that ends before it starts; such a range is empty.
        let empty = match (lo, hi) {
            (Bound::Included(l), Bound::Included(h)) => l > h,
            (Bound::Included(l) | Bound::Excluded(l), Bound::Included(h) | Bound::Excluded(h)) => {
                l >= h
            }
            _ => false,
        };
        self.0
            .get(&t)
            .filter(|_| !empty)
            .into_iter()
            .flat_map(move |w| w.range::<Vec<u8>, _>((lo.as_ref(), hi.as_ref())))
    }
}

#[derive(Default)]
struct Layers {
    /// Committed since the last group was taken.
    open: Writes,
    /// The group being written to sled.
    writing: Arc<Writes>,
}

impl Layers {
    fn get(&self, t: TableId, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.open.get(t, key).or_else(|| self.writing.get(t, key))
    }
}

/// The committed changes not yet in sled.
#[derive(Default)]
pub(super) struct Pending {
    /// Held only for a moment at a time (a look-up, a scan's copy, taking or adding a group),
    /// never while a change runs: readers and the flusher do not wait for a change's work.
    layers: Mutex<Layers>,
    /// Held while a change runs, so changes run one at a time.
    changes: Mutex<()>,
    /// Held while a group is taken and written, so groups reach sled in order.
    writer: Mutex<()>,
}

impl Pending {
    fn layers(&self) -> MutexGuard<'_, Layers> {
        self.layers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Layers> {
        // A change reads through its view, which sees its own writes; a read around it would
        // not.
        debug_assert!(
            !IN_CHANGE.with(std::cell::Cell::get),
            "a change read the store outside its transaction"
        );
        self.layers()
    }

    /// Runs `body` as one change on top of every change before it (`read` reads sled); its
    /// writes join the open group.
    ///
    /// Only this change adds to the layers while it runs; the flusher only moves them on to
    /// sled (a group leaves the layers once sled holds it). So a key that is not in the
    /// layers when the change looks is in sled as its latest committed value, and no other
    /// change can commit a newer one before this change ends: reading the layers and then
    /// sled, each for a moment, is consistent. (Bookkeeping written outside transactions,
    /// `SledEngine::write` and the like, can land meanwhile, as it always could between a
    /// change's reads; no change relies on reading such a key twice.)
    pub(super) fn transact(&self, body: Body<'_>, read: Stored<'_>) -> Result<()> {
        let _one = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        IN_CHANGE.with(|c| c.set(true));
        let view = View {
            pending: self,
            read,
            mine: RefCell::default(),
        };
        let result = body(&view);
        IN_CHANGE.with(|c| c.set(false));
        match result {
            Ok(()) => {}
            Err(TxError::Abort(e)) => return Err(e),
            Err(TxError::Conflict) => {
                return Err(Error::Internal(
                    "a change conflicted although changes run one at a time".into(),
                ));
            }
        }
        let mine = view.mine.into_inner();
        self.lock().open.extend(mine);
        Ok(())
    }

    /// Writes everything committed so far to sled with `write`, as one group.
    pub(super) fn write(&self, write: impl FnOnce(&Writes) -> Result<()>) -> Result<()> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let group = {
            let mut layers = self.lock();
            if layers.open.is_empty() {
                return Ok(());
            }
            let group = Arc::new(std::mem::take(&mut layers.open));
            layers.writing = group.clone();
            group
        };
        let result = write(&group);
        let mut layers = self.lock();
        layers.writing = Arc::default();
        if result.is_err() {
            // Not written: back under what committed since, so reads keep seeing it and the
            // next flush writes it whole. (The failed flush already stops acknowledgements.)
            if let Ok(mut failed) = Arc::try_unwrap(group) {
                failed.extend(std::mem::take(&mut layers.open));
                layers.open = failed;
            }
        }
        result
    }

    /// A key's value if a change not yet in sled wrote it (`Some(None)`: deleted).
    pub(super) fn get(&self, t: TableId, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.lock().get(t, key).cloned()
    }

    /// sled's entries in the range (a scan `base` starts) with the changes not yet in sled
    /// laid over them. The changes are read first: one that moves into sled meanwhile is then
    /// in both, never in neither.
    pub(super) fn over<'a>(
        &self,
        t: TableId,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        base: impl FnOnce() -> Scan<'a>,
    ) -> Scan<'a> {
        let layers = self.lock();
        if layers.open.is_empty() && layers.writing.is_empty() {
            drop(layers);
            return base();
        }
        // The open group wins over the one being written: it is newer.
        let mut over: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for writes in [&*layers.writing, &layers.open] {
            for (k, v) in writes.range(t, lo, hi) {
                over.insert(k.clone(), v.clone());
            }
        }
        drop(layers);
        if over.is_empty() {
            return base();
        }
        Box::new(Merged {
            base: base(),
            over: over.into_iter().collect(),
            front: None,
            back: None,
            spent: false,
        })
    }
}

/// One change's view: its own writes, then the groups not yet in sled, then sled.
struct View<'a> {
    pending: &'a Pending,
    read: Stored<'a>,
    mine: RefCell<Writes>,
}

impl TxEngine for View<'_> {
    fn get(&self, t: TableId, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        if let Some(v) = self.mine.borrow().get(t, key) {
            return Ok(v.clone());
        }
        let layered = self.pending.layers().get(t, key).cloned();
        match layered {
            Some(v) => Ok(v),
            None => Ok((self.read)(t, key)?),
        }
    }

    fn insert(&self, t: TableId, key: &[u8], value: &[u8]) -> TxResult<()> {
        self.mine
            .borrow_mut()
            .insert(t, key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn remove(&self, t: TableId, key: &[u8]) -> TxResult<()> {
        self.mine.borrow_mut().insert(t, key.to_vec(), None);
        Ok(())
    }
}

/// A scan of sled merged with newer writes over the same range (deletes hide entries), from
/// either end.
struct Merged<'a> {
    base: Scan<'a>,
    over: VecDeque<(Vec<u8>, Option<Vec<u8>>)>,
    /// An entry taken from the front (back) of `base` and not yet yielded.
    front: Option<Result<Entry>>,
    back: Option<Result<Entry>>,
    /// `base` has ended.
    spent: bool,
}

impl Merged<'_> {
    /// The next entry from one end: `forward` picks the end and the order.
    fn step(&mut self, forward: bool) -> Option<Result<Entry>> {
        loop {
            let (peeked, other) = if forward {
                (&mut self.front, &mut self.back)
            } else {
                (&mut self.back, &mut self.front)
            };
            if peeked.is_none() && !self.spent {
                let next = if forward {
                    self.base.next()
                } else {
                    self.base.next_back()
                };
                // The base is spent (and is not asked again: sled's scans do not stay
                // ended): what the other end took is the last of it.
                self.spent = next.is_none();
                *peeked = next;
            }
            if peeked.is_none() {
                *peeked = other.take();
            }
            let newer = if forward {
                self.over.front()
            } else {
                self.over.back()
            };
            let order = match (&*peeked, newer) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(Ok(_)), None) => return peeked.take(),
                (None, Some(_)) => Ordering::Greater,
                (Some(Ok((k, _))), Some((o, _))) => {
                    let order = k.cmp(o);
                    if forward { order } else { order.reverse() }
                }
            };
            match order {
                Ordering::Less => return peeked.take(),
                Ordering::Equal => *peeked = None,
                Ordering::Greater => {}
            }
            let (k, v) = if forward {
                self.over.pop_front()?
            } else {
                self.over.pop_back()?
            };
            if let Some(v) = v {
                return Some(Ok((k, v)));
            }
        }
    }
}

impl Iterator for Merged<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        self.step(true)
    }
}

impl DoubleEndedIterator for Merged<'_> {
    fn next_back(&mut self) -> Option<Result<Entry>> {
        self.step(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(entries: &[(&str, &str)]) -> Scan<'static> {
        let v: Vec<Result<Entry>> = entries
            .iter()
            .map(|(k, v)| Ok((k.as_bytes().to_vec(), v.as_bytes().to_vec())))
            .collect();
        Box::new(v.into_iter())
    }

    fn merged(base: &[(&str, &str)], over: &[(&str, Option<&str>)]) -> Merged<'static> {
        Merged {
            base: scan(base),
            over: over
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
                .collect(),
            front: None,
            back: None,
            spent: false,
        }
    }

    fn text(e: Option<Result<Entry>>) -> Option<String> {
        e.map(|e| {
            let (k, v) = e.unwrap();
            format!(
                "{}={}",
                String::from_utf8(k).unwrap(),
                String::from_utf8(v).unwrap()
            )
        })
    }

    const BASE: &[(&str, &str)] = &[("a", "1"), ("c", "1"), ("e", "1"), ("g", "1")];
    const OVER: &[(&str, Option<&str>)] = &[
        ("b", Some("2")),
        ("c", Some("2")),
        ("e", None),
        ("h", Some("2")),
    ];
    const WANT: &[&str] = &["a=1", "b=2", "c=2", "g=1", "h=2"];

    /// Writes the pending group (successfully) and returns its keys, in the order written.
    fn write_keys(pending: &Pending) -> Vec<Vec<u8>> {
        let mut written = Vec::new();
        pending
            .write(|g| {
                written = g.iter().map(|(_, k, _)| k.to_vec()).collect();
                Ok(())
            })
            .unwrap();
        written
    }

    #[test]
    fn newer_writes_replace_add_and_hide_entries_from_either_end() {
        let forward: Vec<_> = std::iter::from_fn({
            let mut m = merged(BASE, OVER);
            move || text(m.next())
        })
        .collect();
        assert_eq!(forward, WANT);
        let backward: Vec<_> = std::iter::from_fn({
            let mut m = merged(BASE, OVER);
            move || text(m.next_back())
        })
        .collect();
        let mut want = WANT.to_vec();
        want.reverse();
        assert_eq!(backward, want);
    }

    #[test]
    fn both_ends_meet_without_losing_or_repeating_an_entry() {
        // Every way of alternating between the ends yields each entry once, in order.
        for pattern in 0u32..32 {
            let mut m = merged(BASE, OVER);
            let (mut front, mut back) = (Vec::new(), Vec::new());
            for i in 0.. {
                let e = if pattern >> (i % 5) & 1 == 0 {
                    text(m.next()).map(|e| front.push(e))
                } else {
                    text(m.next_back()).map(|e| back.push(e))
                };
                if e.is_none() {
                    break;
                }
            }
            back.reverse();
            front.extend(back);
            assert_eq!(front, WANT, "pattern {pattern:05b}");
        }
    }

    #[test]
    fn a_change_reads_its_own_writes_then_earlier_changes_then_sled() {
        let pending = Pending::default();
        let sled = |_: TableId, k: &[u8]| Ok((k == b"s").then(|| b"sled".to_vec()));
        let t = TableId::ALL[0];
        pending
            .transact(&|tx| tx.insert(t, b"k", b"first"), &sled)
            .unwrap();
        let seen = RefCell::new(Vec::new());
        pending
            .transact(
                &|tx| {
                    let mut seen = seen.borrow_mut();
                    seen.push(tx.get(t, b"k")?);
                    seen.push(tx.get(t, b"s")?);
                    tx.remove(t, b"s")?;
                    seen.push(tx.get(t, b"s")?);
                    Ok(())
                },
                &sled,
            )
            .unwrap();
        assert_eq!(
            seen.into_inner(),
            [Some(b"first".to_vec()), Some(b"sled".to_vec()), None]
        );
        // A change that stops leaves nothing behind.
        let stopped = pending.transact(
            &|tx| {
                tx.insert(t, b"x", b"1")?;
                Err(TxError::Abort(Error::Internal("no".into())))
            },
            &sled,
        );
        assert!(matches!(stopped, Err(Error::Internal(_))));
        assert_eq!(pending.get(t, b"x"), None);
        // A group is written whole, in key order, and then read from sled.
        let written = write_keys(&pending);
        assert_eq!(written, [b"k".to_vec(), b"s".to_vec()]);
        assert_eq!(pending.get(t, b"k"), None);
    }

    #[test]
    fn a_scan_sees_only_its_own_table_and_range() {
        let pending = Pending::default();
        let (a, b) = (TableId::ALL[0], TableId::ALL[1]);
        let sled = |_: TableId, _: &[u8]| Ok(None);
        pending
            .transact(
                &|tx| {
                    for k in [&b"1"[..], b"2", b"3"] {
                        tx.insert(a, k, b"a")?;
                        tx.insert(b, k, b"b")?;
                    }
                    Ok(())
                },
                &sled,
            )
            .unwrap();
        let keys = |lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>| -> Vec<String> {
            pending
                .over(a, &lo, &hi, || scan(&[]))
                .map(|e| {
                    let (k, v) = e.unwrap();
                    assert_eq!(v, b"a");
                    String::from_utf8(k).unwrap()
                })
                .collect()
        };
        assert_eq!(keys(Bound::Unbounded, Bound::Unbounded), ["1", "2", "3"]);
        let (two, three) = (b"2".to_vec(), b"3".to_vec());
        assert_eq!(
            keys(Bound::Included(two.clone()), Bound::Excluded(three.clone())),
            ["2"]
        );
        assert_eq!(
            keys(Bound::Excluded(two.clone()), Bound::Included(three.clone())),
            ["3"]
        );
        // Ranges that end where or before they start are empty, as in sled.
        let none: [&str; 0] = [];
        assert_eq!(
            keys(Bound::Excluded(two.clone()), Bound::Excluded(two.clone())),
            none
        );
        assert_eq!(
            keys(Bound::Included(three.clone()), Bound::Excluded(two.clone())),
            none
        );
        assert_eq!(keys(Bound::Included(three), Bound::Included(two)), none);
    }

    #[test]
    fn a_group_that_could_not_be_written_stays_readable_and_is_written_whole_next_time() {
        let pending = Pending::default();
        let sled = |_: TableId, _: &[u8]| Ok(None);
        let t = TableId::ALL[0];
        pending
            .transact(&|tx| tx.insert(t, b"a", b"1"), &sled)
            .unwrap();
        let failed = pending.write(|_| Err(Error::Storage("disk full".into())));
        assert!(matches!(failed, Err(Error::Storage(_))));
        assert_eq!(pending.get(t, b"a"), Some(Some(b"1".to_vec())));
        pending
            .transact(&|tx| tx.insert(t, b"b", b"2"), &sled)
            .unwrap();
        let written = write_keys(&pending);
        assert_eq!(written, [b"a".to_vec(), b"b".to_vec()]);
    }
}
