//! The sled engine behind the storage port: with `sled_redo.rs`, the only code that names sled.
//!
//! One sled tree per table. Changes commit into `sled_pending.rs`, one at a time; each flush
//! writes what committed since the last one as one atomic group (`sled_redo.rs`), then
//! flushes sled. The store's group commit shares that flush among concurrent changes.

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sled::Tree;

use super::engine::{Body, Engine, Scan};
use super::sled_pending::Pending;
use super::sled_redo;
use super::tables::TableId;
use crate::error::{Error, Result};

/// sled's page cache size.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// A sled database with one tree per table.
pub(super) struct SledEngine {
    db: sled::Db,
    /// The trees, indexed by [`TableId`].
    trees: Vec<Tree>,
    /// Committed changes not yet written to the trees.
    pending: Pending,
    /// Redo records of the group being written.
    redo: Tree,
    /// The number of the last group written.
    groups: AtomicU64,
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
            .collect::<Result<Vec<_>>>()?;
        let redo = db.open_tree(sled_redo::TREE).map_err(storage)?;
        let recovered = sled_redo::recover(&redo, &trees)?;
        if recovered > 0 {
            db.flush().map_err(storage)?;
            tracing::info!(
                groups = recovered,
                "finished writing changes that a crash interrupted"
            );
        }
        Ok(SledEngine {
            db,
            trees,
            pending: Pending::default(),
            redo,
            groups: AtomicU64::new(0),
        })
    }

    fn tree(&self, t: TableId) -> &Tree {
        // The trees were opened from TableId::ALL, one per table, in order.
        &self.trees[t as usize]
    }

    /// The value in sled itself.
    fn stored(&self, t: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(t).get(key).map_err(storage)?.map(|v| v.to_vec()))
    }

    /// Writes the changes committed so far to the trees, as one group: all or none, also
    /// after a crash.
    fn write_pending(&self) -> Result<()> {
        self.pending.write(|group| {
            let n = self.groups.fetch_add(1, Ordering::Relaxed) + 1;
            sled_redo::write(&self.redo, &self.trees, n, group).map_err(storage)
        })
    }
}

impl Engine for SledEngine {
    fn get(&self, t: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.pending.get(t, key) {
            Some(v) => Ok(v),
            None => self.stored(t, key),
        }
    }

    fn range(&self, t: TableId, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Scan<'_> {
        let base = || -> Scan<'_> {
            Box::new(
                self.tree(t)
                    .range::<Vec<u8>, _>((lo.clone(), hi.clone()))
                    .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(storage)),
            )
        };
        self.pending.over(t, &lo, &hi, base)
    }

    // Writes outside transactions first write what committed before them, so that they land
    // after it, as they came.

    fn write(&self, t: TableId, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        self.write_pending()?;
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
        self.write_pending()?;
        let swapped = self
            .tree(t)
            .compare_and_swap(key, old, new)
            .map_err(storage)?;
        Ok(swapped.is_ok())
    }

    fn clear(&self, t: TableId) -> Result<()> {
        self.write_pending()?;
        self.tree(t).clear().map_err(storage)
    }

    fn transact(&self, body: Body<'_>) -> Result<()> {
        self.pending.transact(body, &|t, key| self.stored(t, key))
    }

    fn flush(&self) -> Result<()> {
        self.write_pending()?;
        self.db.flush().map_err(storage)?;
        Ok(())
    }
}

impl Drop for SledEngine {
    fn drop(&mut self) {
        // Whatever committed reaches the disk, as it would have at the next flush.
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "could not write the last changes on closing the database");
        }
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
