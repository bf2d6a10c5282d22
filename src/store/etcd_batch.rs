//! Group commit for the etcd engine: the changes that arrive while one etcd transaction is in
//! flight run next, one after another over what the earlier ones wrote, and commit together as
//! one etcd transaction. So a broker pays one etcd round trip (and one quorum write) for a
//! batch of changes instead of one each, as sled's group commit shares one flush.
//!
//! Each change's body runs under the pipeline's lock against a view that layers, in order: its
//! own writes, the batch's writes, what the batch read, a cache of values this broker read or
//! wrote (each with the revision it had), and etcd. The batch commits only if nothing it read
//! from outside itself has changed since (mod revision compares); on a conflict the keys it
//! read are cached anew from the answer and every change of the batch runs again. A stale cache therefore costs a retry,
//! never a wrong commit. Changes from other brokers reach the cache through the watch.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::engine::{Body, TxEngine, TxError, TxResult};
use super::etcd_client::{Etcd, Fail, Txn, Versioned, Watched};
use super::tables::TableId;
use crate::error::{Error, Result};

/// A put (`Some`) or delete (`None`) of one key.
type Write = (Vec<u8>, Option<Vec<u8>>);

/// A batch stops taking changes once it reads or writes this many distinct keys.
const BATCH_KEYS: usize = 96;
/// The most compares, and the most writes, in one etcd transaction (etcd's default limit).
const OP_LIMIT: usize = 128;
/// Most bytes (keys and values) put into the cache before it starts again.
const CACHE_BYTES: usize = 32 << 20;
/// How often a change runs again after conflicts before giving up.
const MAX_TRIES: u32 = 200;

#[derive(Default)]
struct Batch {
    /// Keys read from outside the batch, with what they held then.
    reads: HashMap<Vec<u8>, Versioned>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    members: usize,
}

/// How a batch ended.
#[derive(Clone)]
enum Outcome {
    Committed,
    Conflict,
    /// etcd could not commit (no quorum) or not confirm.
    Failed(String),
    /// etcd refused the transaction itself.
    Refused(String),
}

#[derive(Default)]
struct State {
    /// The batch being gathered, and its number.
    batch: Batch,
    batch_no: u64,
    /// Whether a batch's etcd transaction is in flight (bodies wait meanwhile).
    committing: bool,
    /// Outcomes of ended batches by number, with how many members have yet to read them.
    ended: HashMap<u64, (Outcome, usize)>,
    /// Changes waiting to run their bodies: the leader gathers until none is left.
    waiting: usize,
    cache: HashMap<Vec<u8>, Versioned>,
    /// Bytes put into the cache since it was last emptied (an upper bound of what it holds).
    cache_bytes: usize,
    /// Whether the watch is following the store (else the cache is not used).
    live: bool,
    /// The revision the watch has applied to the cache.
    seen: i64,
}

impl State {
    /// Caches `value` of `key` as read (or written) at store revision `as_of`, unless the watch
    /// has passed it: then a later change may have been evicted before this insert.
    fn remember(&mut self, key: Vec<u8>, value: Versioned, as_of: i64) {
        if self.seen <= as_of {
            self.cache_insert(key, value);
        }
    }

    fn cache_insert(&mut self, key: Vec<u8>, value: Versioned) {
        if self.live {
            self.cache_bytes += key.len() + value.1.as_ref().map_or(0, Vec::len);
            if self.cache_bytes >= CACHE_BYTES {
                self.cache.clear();
                self.cache_bytes = 0;
            }
            self.cache.insert(key, value);
        }
    }
}

/// The commit pipeline of one broker.
#[derive(Default)]
pub(super) struct Pipeline {
    state: Mutex<State>,
    changed: Condvar,
}

impl Pipeline {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(st).unwrap_or_else(|p| p.into_inner())
    }

    /// Applies what the watch saw: a changed key's new value replaces an older one in the
    /// cache, so what other brokers write is read here without asking etcd. A key cached as
    /// absent leaves instead: that read may be newer than the change, and the two cannot be
    /// ordered.
    pub(super) fn watched(&self, w: Watched) {
        let mut st = self.lock();
        match w {
            Watched::Started(at) => {
                st.cache.clear();
                st.live = true;
                st.seen = at;
            }
            Watched::Changed(changes, through) => {
                for (k, (at, value)) in changes {
                    match (st.cache.get(&k), value) {
                        (Some((r, Some(_))), _) if *r >= at => {}
                        (Some((_, None)), _) | (_, None) => {
                            st.cache.remove(&k);
                        }
                        (_, Some(v)) => st.cache_insert(k, (at, Some(v))),
                    }
                }
                st.seen = st.seen.max(through);
            }
            Watched::Lost => {
                st.cache.clear();
                st.live = false;
            }
        }
    }

    /// A key as cached, while the watch keeps the cache current.
    pub(super) fn cached(&self, key: &[u8]) -> Option<Versioned> {
        let st = self.lock();
        st.cache.get(key).cloned()
    }

    /// Caches a key read outside a transaction at store revision `as_of`.
    pub(super) fn remember(&self, key: &[u8], value: Versioned, as_of: i64) {
        self.lock().remember(key.to_vec(), value, as_of);
    }

    /// Forgets `key` (before writing it outside the pipeline).
    pub(super) fn evict(&self, key: &[u8]) {
        self.lock().cache.remove(key);
    }

    /// Forgets everything cached (after writes outside the pipeline).
    pub(super) fn evict_all(&self) {
        self.lock().cache.clear();
    }

    /// Runs `body` as part of a batch and returns once the batch committed (or failed).
    /// `full` makes a table key into an etcd key; `applied` tells whether writes whose answer
    /// was lost landed.
    pub(super) fn transact(
        &self,
        etcd: &Etcd,
        full: &dyn Fn(TableId, &[u8]) -> Vec<u8>,
        applied: &dyn Fn(&[Write]) -> Result<bool>,
        body: Body<'_>,
    ) -> Result<()> {
        let mut fresh_retry = false;
        for _ in 0..MAX_TRIES {
            let mut st = self.lock();
            st.waiting += 1;
            while st.committing || st.batch.reads.len().max(st.batch.writes.len()) >= BATCH_KEYS {
                st = self.wait(st);
            }
            st.waiting -= 1;
            let tx = View {
                etcd,
                full,
                st: RefCell::new(&mut *st),
                mine: RefCell::default(),
                read: RefCell::default(),
                cached: RefCell::default(),
            };
            let ran = body(&tx);
            let (mine, read, cached) = (
                tx.mine.into_inner(),
                tx.read.into_inner(),
                tx.cached.into_inner(),
            );
            let retry_later = match ran {
                Ok(()) => {
                    let b = &st.batch;
                    // One etcd transaction takes at most 128 compares and 128 writes: a change
                    // that would overflow this batch runs again in the next.
                    b.members > 0
                        && (b.reads.len() + read.len() > OP_LIMIT
                            || b.writes.len() + mine.len() > OP_LIMIT)
                }
                Err(TxError::Conflict) => continue,
                Err(TxError::Abort(e)) => {
                    // A refusal read from the cache may rest on a value another broker just
                    // changed: decide it once more from etcd before saying no.
                    if cached.is_empty() || fresh_retry {
                        return Err(e);
                    }
                    fresh_retry = true;
                    for k in &cached {
                        st.cache.remove(k);
                    }
                    // Keys it read from the batch stay as the batch read them until it ends.
                    if st.batch.members > 0 {
                        let n = st.batch_no;
                        while st.batch_no == n {
                            st = self.wait(st);
                        }
                    }
                    continue;
                }
            };
            if retry_later {
                let n = st.batch_no;
                while st.batch_no == n {
                    st = self.wait(st);
                }
                continue;
            }
            for (k, v) in read {
                st.batch.reads.entry(k).or_insert(v);
            }
            st.batch.writes.extend(mine);
            st.batch.members += 1;
            let my_batch = st.batch_no;
            let outcome = if st.batch.members == 1 {
                self.lead(st, etcd, applied)
            } else {
                loop {
                    if let Some((o, left)) = st.ended.get_mut(&my_batch) {
                        let o = o.clone();
                        *left -= 1;
                        if *left == 0 {
                            st.ended.remove(&my_batch);
                        }
                        break o;
                    }
                    st = self.wait(st);
                }
            };
            match outcome {
                Outcome::Committed => return Ok(()),
                Outcome::Conflict => continue,
                Outcome::Failed(m) => return Err(Error::StoreUnavailable(m)),
                Outcome::Refused(m) => return Err(Error::Storage(m)),
            }
        }
        Err(Error::StoreUnavailable(
            "the change kept conflicting with concurrent ones and was not applied; try again"
                .into(),
        ))
    }

    /// Gathers the changes waiting to run, then commits the batch as one etcd transaction.
    fn lead<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        etcd: &Etcd,
        applied: &dyn Fn(&[Write]) -> Result<bool>,
    ) -> Outcome {
        while st.waiting > 0 && st.batch.reads.len().max(st.batch.writes.len()) < BATCH_KEYS {
            drop(st);
            std::thread::yield_now();
            st = self.lock();
        }
        st.committing = true;
        let batch = std::mem::take(&mut st.batch);
        let number = st.batch_no;
        st.batch_no += 1;
        drop(st);

        let ops: Vec<_> = batch.writes.into_iter().collect();
        let read: Vec<(&[u8], i64)> = batch
            .reads
            .iter()
            .map(|(k, (revision, _))| (k.as_slice(), *revision))
            .collect();
        let result = if ops.is_empty() {
            Ok(Txn::Committed(0))
        } else {
            etcd.txn_or_read(&read, &ops)
        };
        let mut st;
        let outcome = match result {
            Ok(Txn::Committed(revision)) => {
                st = self.lock();
                if revision > 0 {
                    for (k, v) in ops {
                        let at = if v.is_some() { revision } else { 0 };
                        st.remember(k, (at, v), revision);
                    }
                }
                Outcome::Committed
            }
            Ok(Txn::Changed(now, as_of)) => {
                // Another broker got there first: what it changed is in the answer, so the
                // batch runs again at once on what the keys hold now. The keys it only wrote
                // stay cached as the watch keeps them: the winner may have written them too.
                st = self.lock();
                for (k, v) in now {
                    st.cache.remove(&k);
                    st.remember(k, v, as_of);
                }
                Outcome::Conflict
            }
            Err(f) => {
                let outcome = match f {
                    Fail::Unavailable(m) => match applied(&ops) {
                        Ok(true) => Outcome::Committed,
                        _ => Outcome::Failed(format!(
                            "{m}; the change was not confirmed (if etcd regains its quorum at once it may still apply: check before repeating it)"
                        )),
                    },
                    Fail::Refused(m) => Outcome::Refused(format!("etcd refused a change: {m}")),
                };
                st = self.lock();
                // What the batch read or wrote may be stale or unknown now.
                for k in batch.reads.keys().chain(ops.iter().map(|(k, _)| k)) {
                    st.cache.remove(k);
                }
                outcome
            }
        };
        if batch.members > 1 {
            st.ended
                .insert(number, (outcome.clone(), batch.members - 1));
        }
        st.committing = false;
        drop(st);
        self.changed.notify_all();
        outcome
    }
}

/// A change's view while its body runs (under the pipeline's lock).
struct View<'a, 's> {
    etcd: &'a Etcd,
    full: &'a dyn Fn(TableId, &[u8]) -> Vec<u8>,
    st: RefCell<&'s mut State>,
    /// This change's own writes and the keys it read from outside the batch, which join the
    /// batch only if its body succeeds.
    mine: RefCell<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    read: RefCell<HashMap<Vec<u8>, Versioned>>,
    /// Keys this change read from the cache.
    cached: RefCell<Vec<Vec<u8>>>,
}

impl TxEngine for View<'_, '_> {
    fn get(&self, t: TableId, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        let k = (self.full)(t, key);
        if let Some(v) = self.mine.borrow().get(&k) {
            return Ok(v.clone());
        }
        let mut st = self.st.borrow_mut();
        if let Some(v) = st.batch.writes.get(&k) {
            return Ok(v.clone());
        }
        if let Some((_, v)) = st.batch.reads.get(&k) {
            return Ok(v.clone());
        }
        if let Some((_, v)) = self.read.borrow().get(&k) {
            return Ok(v.clone());
        }
        let found = match st.cache.get(&k) {
            Some(hit) => {
                self.cached.borrow_mut().push(k.clone());
                hit.clone()
            }
            None => {
                let (kvs, _, as_of) = self
                    .etcd
                    .range(&k, None, 0, false, 0, false)
                    .map_err(|f| TxError::Abort(f.into_error()))?;
                let found = kvs
                    .into_iter()
                    .next()
                    .map_or((0, None), |kv| (kv.mod_revision, Some(kv.value)));
                st.remember(k.clone(), found.clone(), as_of);
                found
            }
        };
        let value = found.1.clone();
        self.read.borrow_mut().insert(k, found);
        Ok(value)
    }

    fn insert(&self, t: TableId, key: &[u8], value: &[u8]) -> TxResult<()> {
        let k = (self.full)(t, key);
        self.mine.borrow_mut().insert(k, Some(value.to_vec()));
        Ok(())
    }

    fn remove(&self, t: TableId, key: &[u8]) -> TxResult<()> {
        let k = (self.full)(t, key);
        self.mine.borrow_mut().insert(k, None);
        Ok(())
    }
}
