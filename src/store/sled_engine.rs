//! The sled engine behind the storage port: the only file that names sled.
//!
//! One sled tree per table; a transaction spans every tree, and sled runs its body again on a
//! conflict. Durability comes from `flush`, which the store's group commit shares among
//! concurrent changes.

use std::cell::RefCell;
use std::ops::Bound;
use std::path::Path;

use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::{Transactional, Tree};

use super::engine::{Body, Engine, Scan, TxEngine, TxError, TxResult};
use super::tables::TableId;
use crate::error::{Error, Result};

/// sled's page cache size.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// A sled database with one tree per table.
pub(super) struct SledEngine {
    db: sled::Db,
    /// The trees, indexed by [`TableId`].
    trees: Vec<Tree>,
}

impl SledEngine {
    /// Opens (or creates) the database in `dir`.
    pub(super) fn open(dir: &Path) -> Result<SledEngine> {
        let config = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // sled's page cache defaults to 1 GiB; the broker's working set is far smaller.
            .cache_capacity(CACHE_BYTES);
        // sled releases its file lock when its last background thread lets go, a moment after
        // the previous handle in this process is dropped: give that moment before refusing.
        let mut tries = 0;
        let db = loop {
            match config.open().map_err(|e| open_error(dir, e)) {
                Err(Error::DatabaseInUse(_)) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let trees = TableId::ALL
            .iter()
            .map(|t| db.open_tree(t.name()).map_err(storage))
            .collect::<Result<_>>()?;
        Ok(SledEngine { db, trees })
    }

    fn tree(&self, t: TableId) -> &Tree {
        // The trees were opened from TableId::ALL, one per table, in order.
        &self.trees[t as usize]
    }
}

impl Engine for SledEngine {
    fn get(&self, t: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(t).get(key).map_err(storage)?.map(|v| v.to_vec()))
    }

    fn range(&self, t: TableId, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Scan<'_> {
        Box::new(
            self.tree(t)
                .range::<Vec<u8>, _>((lo, hi))
                .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(storage)),
        )
    }

    fn write(&self, t: TableId, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (k, v) in ops {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree(t).apply_batch(batch).map_err(storage)
    }

    fn compare_and_swap(
        &self,
        t: TableId,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool> {
        let swapped = self
            .tree(t)
            .compare_and_swap(key, old, new)
            .map_err(storage)?;
        Ok(swapped.is_ok())
    }

    fn clear(&self, t: TableId) -> Result<()> {
        self.tree(t).clear().map_err(storage)
    }

    fn transact(&self, body: Body<'_>) -> Result<()> {
        // sled's transaction closure is `Fn`; the body's own state lives behind this cell.
        let failed = RefCell::new(None);
        let out = self
            .trees
            .as_slice()
            .transaction(|views| match body(&SledTx(views)) {
                Ok(()) => Ok(()),
                Err(TxError::Conflict) => Err(ConflictableTransactionError::Conflict),
                Err(TxError::Abort(e)) => {
                    *failed.borrow_mut() = Some(e);
                    Err(ConflictableTransactionError::Abort(()))
                }
            });
        match out {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(())) => Err(failed.into_inner().unwrap_or_else(|| {
                Error::Internal("a transaction stopped without a reason".into())
            })),
            Err(TransactionError::Storage(e)) => Err(storage(e)),
        }
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(storage)?;
        Ok(())
    }
}

/// A sled transaction's views, indexed by [`TableId`] like the trees.
struct SledTx<'a>(&'a [TransactionalTree]);

impl SledTx<'_> {
    fn view(&self, t: TableId) -> &TransactionalTree {
        // sled hands the views in the order of the trees the transaction spans.
        &self.0[t as usize]
    }
}

impl TxEngine for SledTx<'_> {
    fn get(&self, t: TableId, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        Ok(self.view(t).get(key).map_err(tx_error)?.map(|v| v.to_vec()))
    }

    fn insert(&self, t: TableId, key: &[u8], value: &[u8]) -> TxResult<()> {
        self.view(t).insert(key, value).map_err(tx_error)?;
        Ok(())
    }

    fn remove(&self, t: TableId, key: &[u8]) -> TxResult<()> {
        self.view(t).remove(key).map_err(tx_error)?;
        Ok(())
    }
}

fn tx_error(e: UnabortableTransactionError) -> TxError {
    match e {
        UnabortableTransactionError::Conflict => TxError::Conflict,
        UnabortableTransactionError::Storage(e) => TxError::Abort(storage(e)),
    }
}

fn storage(e: sled::Error) -> Error {
    Error::Storage(e.to_string())
}

fn open_error(dir: &Path, e: sled::Error) -> Error {
    let text = e.to_string();
    if text.contains("WouldBlock") || text.contains("could not acquire lock") {
        Error::DatabaseInUse(dir.to_path_buf())
    } else {
        Error::Storage(format!(
            "cannot open the database in {}: {text}",
            dir.display()
        ))
    }
}
