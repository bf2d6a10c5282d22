//! Copying one store into another, table by table, for `migrate` (sled to etcd).

use super::Store;
use super::tables::TableId;
use crate::error::{Error, Result};

/// Writes per batch: etcd takes at most 128 operations in one transaction.
const BATCH: usize = 100;

impl Store {
    /// Copies every entry of every table into `to`, which must be empty, and returns how many.
    /// The meta table (with the audit head) goes last, so a copy cut short leaves a target
    /// that `serve` refuses as uninitialized rather than a log without its head.
    pub fn copy_into(&self, to: &Store) -> Result<u64> {
        if to.is_initialized()? {
            return Err(Error::DataDir(
                "the target database already holds a broker's state; migrate only into an empty one (pick another --etcd-prefix)".into(),
            ));
        }
        let mut order: Vec<TableId> = TableId::ALL
            .iter()
            .copied()
            .filter(|t| *t != TableId::Meta)
            .collect();
        order.push(TableId::Meta);
        let mut copied = 0;
        for t in order {
            let mut batch = Vec::with_capacity(BATCH);
            for kv in self
                .engine
                .range(t, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)
            {
                let (k, v) = kv?;
                batch.push((k, Some(v)));
                if batch.len() == BATCH {
                    copied += batch.len() as u64;
                    to.engine.write(t, std::mem::take(&mut batch))?;
                }
            }
            copied += batch.len() as u64;
            if !batch.is_empty() {
                to.engine.write(t, batch)?;
            }
        }
        Ok(copied)
    }
}
