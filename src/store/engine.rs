//! The storage port: the little the store needs from a database engine (keyed tables, ordered
//! scans, and transactions that retry on conflict), so that an engine is one file behind it.
//!
//! Nothing here names an engine. The tables are listed once in `tables.rs`; an engine sees them
//! only as [`TableId`]s. A transaction's body may run more than once (on a conflict the engine
//! rolls it back and runs it again), so it must only read and write through its [`TxEngine`].

use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use super::tables::TableId;
use crate::error::{Error, Result};

/// A key and its value, as scans yield them.
pub(super) type Entry = (Vec<u8>, Vec<u8>);

/// An ordered scan over one table, either way round.
pub(super) type Scan<'a> = Box<dyn DoubleEndedIterator<Item = Result<Entry>> + 'a>;

/// What a shared engine calls with each changed key (see [`Engine::watch`]).
pub(super) type OnChange = Box<dyn Fn(TableId, &[u8]) + Send + Sync>;

/// A transaction body: runs against the transaction's view; may run again after a conflict.
pub(super) type Body<'a> = &'a dyn Fn(&dyn TxEngine) -> TxResult<()>;

/// Why a transaction's body stopped: our own error (the transaction is abandoned), or a
/// conflict with a concurrent change (the engine runs the body again).
#[derive(Debug)]
pub enum TxError {
    Abort(Error),
    Conflict,
}

/// A result inside a transaction.
pub type TxResult<T> = std::result::Result<T, TxError>;

impl From<Error> for TxError {
    fn from(e: Error) -> Self {
        TxError::Abort(e)
    }
}

impl From<serde_json::Error> for TxError {
    fn from(e: serde_json::Error) -> Self {
        TxError::Abort(e.into())
    }
}

/// A database engine as the store uses it.
pub(super) trait Engine: Send + Sync {
    fn get(&self, t: TableId, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// The entries with keys in `(lo, hi)`, in key order.
    fn range(&self, t: TableId, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Scan<'_>;
    /// Writes (`Some`) and deletes (`None`) in one table, all or none, outside any transaction:
    /// bookkeeping that no audit entry records.
    fn write(&self, t: TableId, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()>;
    /// Sets `key` to `new` if it still holds `old`; false if it did not.
    fn compare_and_swap(
        &self,
        t: TableId,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool>;
    /// Deletes every entry of a table (only the attack tests' re-sealing does this).
    fn clear(&self, t: TableId) -> Result<()>;
    /// Runs `body` as one transaction over every table, retrying it on conflict.
    fn transact(&self, body: Body<'_>) -> Result<()>;
    /// Makes everything committed so far durable.
    fn flush(&self) -> Result<()>;
    /// Whether other processes (brokers) change this database too, and a commit is durable
    /// when `transact` returns.
    fn shared(&self) -> bool {
        false
    }
    /// Calls `changed` with each key that any writer changes from now on (shared engines).
    fn watch(&self, _changed: OnChange) -> Result<()> {
        Ok(())
    }
}

/// The view of one transaction.
pub(super) trait TxEngine {
    fn get(&self, t: TableId, key: &[u8]) -> TxResult<Option<Vec<u8>>>;
    fn insert(&self, t: TableId, key: &[u8], value: &[u8]) -> TxResult<()>;
    fn remove(&self, t: TableId, key: &[u8]) -> TxResult<()>;
}

/// One table of the store, outside transactions.
#[derive(Clone)]
pub(super) struct Table {
    id: TableId,
    engine: Arc<dyn Engine>,
}

impl Table {
    pub(super) fn new(id: TableId, engine: Arc<dyn Engine>) -> Table {
        Table { id, engine }
    }

    pub(super) fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.engine.get(self.id, key.as_ref())
    }

    pub(super) fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    pub(super) fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.apply(vec![(key.as_ref().to_vec(), Some(value.as_ref().to_vec()))])
    }

    pub(super) fn remove(&self, key: impl AsRef<[u8]>) -> Result<()> {
        self.apply(vec![(key.as_ref().to_vec(), None)])
    }

    /// Writes (`Some`) and deletes (`None`), all or none.
    pub(super) fn apply(&self, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        self.engine.write(self.id, ops)
    }

    pub(super) fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool> {
        self.engine.compare_and_swap(self.id, key, old, new)
    }

    pub(super) fn clear(&self) -> Result<()> {
        self.engine.clear(self.id)
    }

    pub(super) fn iter(&self) -> Scan<'_> {
        self.engine
            .range(self.id, Bound::Unbounded, Bound::Unbounded)
    }

    pub(super) fn range<K: AsRef<[u8]>>(&self, r: impl RangeBounds<K>) -> Scan<'_> {
        let own = |b: Bound<&K>| b.map(|k| k.as_ref().to_vec());
        self.engine
            .range(self.id, own(r.start_bound()), own(r.end_bound()))
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub(super) fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Scan<'_> {
        let prefix = prefix.as_ref().to_vec();
        let hi = prefix_end(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
        self.engine.range(self.id, Bound::Included(prefix), hi)
    }

    pub(super) fn first(&self) -> Result<Option<Entry>> {
        self.iter().next().transpose()
    }

    pub(super) fn last(&self) -> Result<Option<Entry>> {
        self.iter().next_back().transpose()
    }
}

/// The first key after every key that starts with `prefix` (none when it is all 0xff).
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// One table inside a transaction.
#[derive(Clone, Copy)]
pub(super) struct TxTable<'a> {
    id: TableId,
    tx: &'a dyn TxEngine,
}

impl<'a> TxTable<'a> {
    pub(super) fn new(id: TableId, tx: &'a dyn TxEngine) -> TxTable<'a> {
        TxTable { id, tx }
    }

    pub(super) fn get(&self, key: impl AsRef<[u8]>) -> TxResult<Option<Vec<u8>>> {
        self.tx.get(self.id, key.as_ref())
    }

    pub(super) fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> TxResult<()> {
        self.tx.insert(self.id, key.as_ref(), value.as_ref())
    }

    pub(super) fn remove(&self, key: impl AsRef<[u8]>) -> TxResult<()> {
        self.tx.remove(self.id, key.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_at_the_next_key_of_its_length() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
