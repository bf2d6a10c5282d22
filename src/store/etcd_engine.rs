//! The etcd engine behind the storage port, for several brokers sharing one team's state.
//!
//! Keys are `PREFIX TABLE/KEY`. A transaction's body reads through etcd, remembering each key's
//! revision, and buffers its writes; it commits as one etcd transaction that holds only if none
//! of what it read has changed since (compare on mod revisions), and runs again otherwise. So
//! two brokers can never both append audit entry n, nor hand out the same serial: both read the
//! head, and only the first commit holds. A commit is durable in etcd (a quorum has it) when it
//! returns, so there is nothing to flush.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::backend::EtcdConfig;
use super::engine::{Body, Engine, Entry, OnChange, Scan, TxEngine, TxError, TxResult};
use super::etcd_client::{Etcd, Fail, Kv, holds, unchanged_since};
use super::tables::TableId;
use crate::error::{Error, Result};

/// Entries fetched per page of a scan.
const PAGE: usize = 256;
/// Most puts or deletes in one etcd transaction (etcd's default limit is 128).
const MAX_OPS: usize = 100;
/// How often a change is tried against concurrent ones before giving up.
const MAX_TRIES: u32 = 200;
/// After a read finds no quorum, reads are served by the nearest member for this long.
const DEGRADED_MS: u64 = 5_000;

/// A key space in an etcd cluster.
pub(super) struct EtcdEngine {
    etcd: Arc<Etcd>,
    prefix: Vec<u8>,
    /// Until when (unix ms) reads go to the nearest member without asking the leader.
    degraded_until: AtomicU64,
    /// Stops the watch thread.
    stopped: Arc<AtomicBool>,
}

impl EtcdEngine {
    pub(super) fn connect(cfg: &EtcdConfig) -> Result<EtcdEngine> {
        let engine = EtcdEngine {
            etcd: Arc::new(Etcd::connect(cfg)?),
            prefix: cfg.prefix.as_bytes().to_vec(),
            degraded_until: AtomicU64::new(0),
            stopped: Arc::new(AtomicBool::new(false)),
        };
        // Fail at start, with the reason, when no member answers.
        engine.read(&engine.prefix, None, 1, false, 0)?;
        Ok(engine)
    }

    fn full(&self, t: TableId, key: &[u8]) -> Vec<u8> {
        let mut k = self.table_start(t);
        k.extend_from_slice(key);
        k
    }

    fn table_start(&self, t: TableId) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(t.name().as_bytes());
        k.push(b'/');
        k
    }

    fn table_end(&self, t: TableId) -> Vec<u8> {
        let mut k = self.table_start(t);
        if let Some(last) = k.last_mut() {
            *last = b'/' + 1;
        }
        k
    }

    /// A range read: linearizable while the cluster has a quorum, else (for a while) from the
    /// nearest member, which may be a little behind: reads keep working without a quorum.
    fn read(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        descend: bool,
        revision: i64,
    ) -> Result<(Vec<Kv>, bool, i64)> {
        let now = now_ms();
        if now >= self.degraded_until.load(Ordering::Relaxed) {
            match self.etcd.range(key, end, limit, descend, revision, false) {
                Err(Fail::Unavailable(m)) => {
                    tracing::warn!(error = %m, "etcd gave no consistent read (no quorum?); reading from the nearest member for a while");
                    self.degraded_until
                        .store(now + DEGRADED_MS, Ordering::Relaxed);
                }
                other => return other.map_err(Fail::into_error),
            }
        }
        self.etcd
            .range(key, end, limit, descend, revision, true)
            .map_err(Fail::into_error)
    }

    fn get_kv(&self, full: &[u8]) -> Result<Option<Kv>> {
        Ok(self.read(full, None, 0, false, 0)?.0.into_iter().next())
    }

    /// After a commit whose answer was lost: whether it applied (every put holds our value at
    /// one revision, every delete is gone). The puts include the audit head, which is unique.
    fn applied(&self, ops: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<bool> {
        let mut revision = None;
        for (k, v) in ops {
            let found = self
                .etcd
                .range(k, None, 0, false, 0, false)
                .map_err(Fail::into_error)?
                .0
                .into_iter()
                .next();
            match (v, found) {
                (None, None) => {}
                (Some(v), Some(kv)) if kv.value == *v => {
                    if *revision.get_or_insert(kv.mod_revision) != kv.mod_revision {
                        return Ok(false);
                    }
                }
                _ => return Ok(false),
            }
        }
        Ok(revision.is_some())
    }
}

impl Engine for EtcdEngine {
    fn get(&self, t: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_kv(&self.full(t, key))?.map(|kv| kv.value))
    }

    fn range(&self, t: TableId, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Scan<'_> {
        let after = |k: &[u8]| {
            let mut k = self.full(t, k);
            k.push(0);
            k
        };
        let lo = match lo {
            Bound::Included(k) => self.full(t, &k),
            Bound::Excluded(k) => after(&k),
            Bound::Unbounded => self.table_start(t),
        };
        let hi = match hi {
            Bound::Included(k) => after(&k),
            Bound::Excluded(k) => self.full(t, &k),
            Bound::Unbounded => self.table_end(t),
        };
        Box::new(EtcdScan {
            engine: self,
            skip: self.table_start(t).len(),
            lo,
            hi,
            front: VecDeque::new(),
            back: VecDeque::new(),
            revision: 0,
        })
    }

    fn write(&self, t: TableId, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        let ops: Vec<_> = ops
            .into_iter()
            .map(|(k, v)| (self.full(t, &k), v))
            .collect();
        for chunk in ops.chunks(MAX_OPS) {
            self.etcd.txn(Vec::new(), chunk).map_err(Fail::into_error)?;
        }
        Ok(())
    }

    fn compare_and_swap(
        &self,
        t: TableId,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool> {
        let full = self.full(t, key);
        self.etcd
            .txn(vec![holds(&full, old)], &[(full.clone(), new)])
            .map_err(Fail::into_error)
    }

    fn clear(&self, t: TableId) -> Result<()> {
        self.etcd
            .delete_range(&self.table_start(t), &self.table_end(t))
            .map_err(Fail::into_error)
    }

    fn transact(&self, body: Body<'_>) -> Result<()> {
        for attempt in 0..MAX_TRIES {
            let tx = EtcdTx {
                engine: self,
                reads: RefCell::default(),
                writes: RefCell::default(),
            };
            match body(&tx) {
                Ok(()) => {}
                Err(TxError::Conflict) => continue,
                Err(TxError::Abort(e)) => return Err(e),
            }
            let ops: Vec<_> = tx.writes.into_inner().into_iter().collect();
            if ops.is_empty() {
                return Ok(());
            }
            let compare = tx
                .reads
                .into_inner()
                .into_iter()
                .map(|(k, (revision, _))| unchanged_since(&k, revision))
                .collect();
            match self.etcd.txn(compare, &ops) {
                Ok(true) => return Ok(()),
                Ok(false) => backoff(attempt),
                Err(Fail::Unavailable(m)) => {
                    return match self.applied(&ops) {
                        Ok(true) => Ok(()),
                        _ => Err(Error::StoreUnavailable(format!(
                            "{m}; the change was not confirmed (if etcd regains its quorum at once it may still apply: check before repeating it)"
                        ))),
                    };
                }
                Err(f) => return Err(f.into_error()),
            }
        }
        Err(Error::StoreUnavailable(
            "the change kept conflicting with concurrent ones and was not applied; try again"
                .into(),
        ))
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn watch(&self, changed: OnChange) -> Result<()> {
        let (key, end) = (self.prefix.clone(), super::engine::prefix_end(&self.prefix));
        let end = end.unwrap_or_else(|| vec![0]);
        let revision = self.read(&key, None, 1, false, 0)?.2;
        let prefix = self.prefix.clone();
        let stopped = self.stopped.clone();
        let etcd = self.etcd.clone();
        std::thread::Builder::new()
            .name("sshjit-etcd-watch".into())
            .spawn(move || {
                let seen = |k: &[u8]| {
                    let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                        return;
                    };
                    for t in TableId::ALL {
                        let name = t.name().as_bytes();
                        if let Some(key) =
                            rest.strip_prefix(name).and_then(|r| r.strip_prefix(b"/"))
                        {
                            changed(*t, key);
                            return;
                        }
                    }
                };
                etcd.watch(key, end, revision, || stopped.load(Ordering::Relaxed), seen);
            })
            .map_err(Error::io("cannot start the etcd watch thread"))?;
        Ok(())
    }
}

impl Drop for EtcdEngine {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

/// Waits a little, longer the more a change has conflicted, so that contenders spread out.
fn backoff(attempt: u32) {
    if attempt >= 2 {
        let most = 1 + u64::from(attempt.min(10)) * 2;
        std::thread::sleep(Duration::from_millis(rand::random_range(0..most)));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A key's value as a transaction read it, with the revision of its last change (0: absent).
type Read = (i64, Option<Vec<u8>>);

/// One try of a transaction: what it read and what it will write.
struct EtcdTx<'a> {
    engine: &'a EtcdEngine,
    reads: RefCell<HashMap<Vec<u8>, Read>>,
    writes: RefCell<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl TxEngine for EtcdTx<'_> {
    fn get(&self, t: TableId, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        let full = self.engine.full(t, key);
        if let Some(v) = self.writes.borrow().get(&full) {
            return Ok(v.clone());
        }
        if let Some((_, v)) = self.reads.borrow().get(&full) {
            return Ok(v.clone());
        }
        let kv = self.engine.get_kv(&full)?;
        let (revision, value) = kv.map_or((0, None), |kv| (kv.mod_revision, Some(kv.value)));
        self.reads
            .borrow_mut()
            .insert(full, (revision, value.clone()));
        Ok(value)
    }

    fn insert(&self, t: TableId, key: &[u8], value: &[u8]) -> TxResult<()> {
        let full = self.engine.full(t, key);
        self.writes.borrow_mut().insert(full, Some(value.to_vec()));
        Ok(())
    }

    fn remove(&self, t: TableId, key: &[u8]) -> TxResult<()> {
        let full = self.engine.full(t, key);
        self.writes.borrow_mut().insert(full, None);
        Ok(())
    }
}

/// A scan read page by page from either end, all pages at the revision of the first, so it
/// sees one moment of the database. `[lo, hi)` is what neither end has fetched yet.
struct EtcdScan<'a> {
    engine: &'a EtcdEngine,
    /// Length of the table's key prefix, cut from every key yielded.
    skip: usize,
    lo: Vec<u8>,
    hi: Vec<u8>,
    front: VecDeque<Entry>,
    back: VecDeque<Entry>,
    revision: i64,
}

impl EtcdScan<'_> {
    /// Fetches the next page from the front (or the back) of what is left.
    fn fetch(&mut self, from_back: bool) -> Result<()> {
        if self.lo >= self.hi {
            return Ok(());
        }
        let (kvs, more, revision) =
            self.engine
                .read(&self.lo, Some(&self.hi), PAGE, from_back, self.revision)?;
        if self.revision == 0 {
            self.revision = revision;
        }
        let last = kvs.last().map(|kv| kv.key.clone());
        let page = kvs
            .into_iter()
            .map(|kv| (kv.key[self.skip.min(kv.key.len())..].to_vec(), kv.value));
        match (more, last) {
            (true, Some(last)) if from_back => self.hi = last,
            (true, Some(mut last)) => {
                last.push(0);
                self.lo = last;
            }
            _ => self.lo = self.hi.clone(),
        }
        if from_back {
            self.back.extend(page);
        } else {
            self.front.extend(page);
        }
        Ok(())
    }
}

impl Iterator for EtcdScan<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.front.is_empty()
            && let Err(e) = self.fetch(false)
        {
            self.lo = self.hi.clone();
            return Some(Err(e));
        }
        self.front
            .pop_front()
            .or_else(|| self.back.pop_back())
            .map(Ok)
    }
}

impl DoubleEndedIterator for EtcdScan<'_> {
    fn next_back(&mut self) -> Option<Result<Entry>> {
        if self.back.is_empty()
            && let Err(e) = self.fetch(true)
        {
            self.lo = self.hi.clone();
            return Some(Err(e));
        }
        self.back
            .pop_front()
            .or_else(|| self.front.pop_back())
            .map(Ok)
    }
}
