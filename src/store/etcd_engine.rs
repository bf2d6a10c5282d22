//! The etcd engine behind the storage port, for several brokers sharing one team's state.
//!
//! Keys are `PREFIX TABLE/KEY`. Changes commit through the group commit in `etcd_batch.rs`:
//! one etcd transaction per batch, which holds only if nothing the batch read has changed since
//! (compare on mod revisions), and runs again otherwise. So two brokers can never both append
//! audit entry n, nor hand out the same serial: both read the head, and only the first commit
//! holds. A commit is durable in etcd (a quorum has it) when it returns: nothing to flush.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::backend::EtcdConfig;
use super::engine::{Body, Engine, Entry, OnChange, Scan};
use super::etcd_batch::Pipeline;
use super::etcd_client::{Etcd, Fail, Kv, Watched, holds};
use super::tables::TableId;
use crate::error::{Error, Result};

/// Entries fetched per page of a scan.
const PAGE: usize = 256;
/// Most puts or deletes in one etcd transaction (etcd's default limit is 128).
const MAX_OPS: usize = 100;
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
    /// Group commit, and the cache its changes read through.
    pipeline: Arc<Pipeline>,
    /// Whom the watch tells of changes (the store, once it has opened).
    on_change: Arc<OnceLock<OnChange>>,
}

impl EtcdEngine {
    pub(super) fn connect(cfg: &EtcdConfig) -> Result<EtcdEngine> {
        let engine = EtcdEngine {
            etcd: Arc::new(Etcd::connect(cfg)?),
            prefix: cfg.prefix.as_bytes().to_vec(),
            degraded_until: AtomicU64::new(0),
            stopped: Arc::new(AtomicBool::new(false)),
            pipeline: Arc::default(),
            on_change: Arc::default(),
        };
        // Fail at start, with the reason, when no member answers.
        let revision = engine.read(&engine.prefix, None, 1, false, 0)?.2;
        engine.follow(revision)?;
        Ok(engine)
    }

    /// Follows every change under the prefix from `revision` on: updates the cache, then
    /// tells the store.
    fn follow(&self, revision: i64) -> Result<()> {
        let key = self.prefix.clone();
        let end = super::engine::prefix_end(&key).unwrap_or_else(|| vec![0]);
        let (etcd, stopped) = (self.etcd.clone(), self.stopped.clone());
        let (pipeline, on_change) = (self.pipeline.clone(), self.on_change.clone());
        std::thread::Builder::new()
            .name("sshjit-etcd-watch".into())
            .spawn(move || {
                let tell = |k: &[u8]| {
                    let (Some(changed), Some(rest)) =
                        (on_change.get(), k.strip_prefix(key.as_slice()))
                    else {
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
                let seen = |w: Watched| {
                    // The cache first: whoever is woken must not read the old value from it.
                    let keys: Vec<Vec<u8>> = match &w {
                        Watched::Changed(changes, _) => {
                            changes.iter().map(|(k, _)| k.clone()).collect()
                        }
                        _ => Vec::new(),
                    };
                    pipeline.watched(w);
                    for k in &keys {
                        tell(k);
                    }
                };
                etcd.watch(
                    key.clone(),
                    end,
                    revision,
                    || stopped.load(Ordering::Relaxed),
                    seen,
                );
            })
            .map_err(Error::io("cannot start the etcd watch thread"))?;
        Ok(())
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
        // Served from the watch-fed cache when it has the key: current to within the watch's
        // delay. Changes never rest on these reads; they read inside their transaction.
        let full = self.full(t, key);
        if let Some((_, v)) = self.pipeline.cached(&full) {
            return Ok(v);
        }
        let (kvs, _, as_of) = self.read(&full, None, 0, false, 0)?;
        let found = kvs
            .into_iter()
            .next()
            .map_or((0, None), |kv| (kv.mod_revision, Some(kv.value)));
        self.pipeline.remember(&full, found.clone(), as_of);
        Ok(found.1)
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
        for (k, _) in &ops {
            self.pipeline.evict(k);
        }
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
        self.pipeline.evict(&full);
        let swapped = self
            .etcd
            .txn(vec![holds(&full, old)], &[(full.clone(), new)])
            .map_err(Fail::into_error)?;
        Ok(swapped.0)
    }

    fn clear(&self, t: TableId) -> Result<()> {
        self.pipeline.evict_all();
        self.etcd
            .delete_range(&self.table_start(t), &self.table_end(t))
            .map_err(Fail::into_error)
    }

    fn transact(&self, body: Body<'_>) -> Result<()> {
        self.pipeline.transact(
            &self.etcd,
            &|t, k| self.full(t, k),
            &|ops| self.applied(ops),
            body,
        )
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn watch(&self, changed: OnChange) -> Result<()> {
        self.on_change
            .set(changed)
            .map_err(|_| Error::Internal("the etcd engine was watched twice".into()))
    }
}

impl Drop for EtcdEngine {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
