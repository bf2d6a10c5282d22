//! Atomic groups on sled without sled's transactions: a redo record first, then the writes,
//! then the record's removal; on open, a whole record left behind is applied again.
//!
//! sled recovers its log as a prefix: after a crash, a write survives only if every write
//! before it did. So once a record's last part (its seal) survives, the whole record does;
//! and no write of the group, all made after the seal, can survive without it. A record
//! whose seal is missing was either never whole (nothing of its group was written) or
//! already applied (its removal began with the seal): it is dropped. sled's own multi-tree
//! transactions are not used: each seals and writes its log buffer twice, where a group here
//! costs one log write at its flush.

use sled::Tree;

use super::sled_pending::Writes;
use super::tables::TableId;
use crate::error::{Error, Result};

/// The tree that holds redo records; not a table of the store.
pub(super) const TREE: &str = "__redo";

/// A record's parts stay well below the size at which sled stores a value on its own.
const PART: usize = 16 * 1024;

/// The part number of a record's seal (its value: how many parts came before).
const SEAL: u32 = u32::MAX;

fn key(group: u64, part: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&part.to_be_bytes());
    k
}

/// Writes `writes` to `trees` as one group numbered `group`, all or nothing after a crash.
pub(super) fn write(
    redo: &Tree,
    trees: &[Tree],
    group: u64,
    writes: &Writes,
) -> std::result::Result<(), sled::Error> {
    let record = encode(writes);
    let parts: Vec<&[u8]> = record.chunks(PART).collect();
    for (i, part) in parts.iter().enumerate() {
        redo.insert(key(group, i as u32), *part)?;
    }
    redo.insert(key(group, SEAL), &(parts.len() as u32).to_be_bytes())?;
    apply(trees, writes)?;
    redo.remove(key(group, SEAL))?;
    for i in 0..parts.len() {
        redo.remove(key(group, i as u32))?;
    }
    Ok(())
}

/// Applies every sealed record left by a crash, then removes every record.
pub(super) fn recover(redo: &Tree, trees: &[Tree]) -> Result<usize> {
    let storage = |e: sled::Error| Error::Storage(e.to_string());
    let mut applied = 0;
    while let Some((k, _)) = redo.first().map_err(storage)? {
        let group = u64::from_be_bytes(k[..8].try_into().map_err(|_| corrupt())?);
        let lo = key(group, 0);
        let hi = key(group, SEAL);
        if let Some(seal) = redo.get(hi).map_err(storage)? {
            let n = u32::from_be_bytes(seal.as_ref().try_into().map_err(|_| corrupt())?);
            let mut record = Vec::new();
            for i in 0..n {
                let part = redo
                    .get(key(group, i))
                    .map_err(storage)?
                    .ok_or_else(corrupt)?;
                record.extend_from_slice(&part);
            }
            apply(trees, &decode(&record)?).map_err(storage)?;
            applied += 1;
        }
        let mut gone = sled::Batch::default();
        for kv in redo.range(lo..=hi) {
            gone.remove(kv.map_err(storage)?.0);
        }
        redo.apply_batch(gone).map_err(storage)?;
    }
    Ok(applied)
}

fn apply(trees: &[Tree], writes: &Writes) -> std::result::Result<(), sled::Error> {
    for (t, k, v) in writes.iter() {
        // The trees were opened from TableId::ALL, one per table, in order.
        let tree = &trees[t as usize];
        match v {
            Some(v) => tree.insert(k, v.as_slice())?,
            None => tree.remove(k)?,
        };
    }
    Ok(())
}

fn corrupt() -> Error {
    Error::Storage("a redo record in the database is damaged; restore from a backup".into())
}

/// table (1) · key length (4) · key · present (1) · [value length (4) · value], repeated.
fn encode(writes: &Writes) -> Vec<u8> {
    let size = writes
        .iter()
        .map(|(_, k, v)| 1 + 4 + k.len() + 1 + v.as_ref().map_or(0, |v| 4 + v.len()))
        .sum();
    let mut out = Vec::with_capacity(size);
    for (t, k, v) in writes.iter() {
        out.push(t as u8);
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        match v {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    debug_assert_eq!(
        out.len(),
        size,
        "the record's size is counted as it is written"
    );
    out
}

fn decode(mut b: &[u8]) -> Result<Writes> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        if b.len() < n {
            return Err(corrupt());
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn len(b: &mut &[u8]) -> Result<usize> {
        let n = take(b, 4)?;
        Ok(u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
    }
    let mut writes = Writes::default();
    while !b.is_empty() {
        let t = *TableId::ALL
            .get(usize::from(take(&mut b, 1)?[0]))
            .ok_or_else(corrupt)?;
        let n = len(&mut b)?;
        let k = take(&mut b, n)?.to_vec();
        let v = match take(&mut b, 1)?[0] {
            0 => None,
            1 => {
                let n = len(&mut b)?;
                Some(take(&mut b, n)?.to_vec())
            }
            _ => return Err(corrupt()),
        };
        writes.insert(t, k, v);
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> (sled::Db, Tree, Vec<Tree>) {
        let db = sled::Config::new().path(dir).open().unwrap();
        let redo = db.open_tree(TREE).unwrap();
        let trees = TableId::ALL
            .iter()
            .map(|t| db.open_tree(t.name()).unwrap())
            .collect();
        (db, redo, trees)
    }

    fn group() -> Writes {
        let (a, b) = (TableId::ALL[0], TableId::ALL[1]);
        let mut w = Writes::default();
        // Large enough to take several parts.
        w.insert(a, b"big".to_vec(), Some(vec![7; 3 * PART + 5]));
        w.insert(b, b"k".to_vec(), Some(b"v".to_vec()));
        w.insert(b, b"gone".to_vec(), None);
        w
    }

    #[test]
    fn a_record_survives_encoding() {
        assert_eq!(decode(&encode(&group())).unwrap(), group());
        let mut cut = encode(&group());
        cut.pop();
        assert!(matches!(decode(&cut), Err(Error::Storage(_))));
    }

    #[test]
    fn a_sealed_record_is_applied_on_open_and_an_unsealed_one_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, redo, trees) = open(dir.path());
        trees[1].insert(b"gone", &b"old"[..]).unwrap();
        // A crash after the seal, before any write of the group: applied on open.
        let record = encode(&group());
        let parts: Vec<&[u8]> = record.chunks(PART).collect();
        for (i, p) in parts.iter().enumerate() {
            redo.insert(key(1, i as u32), *p).unwrap();
        }
        redo.insert(key(1, SEAL), &(parts.len() as u32).to_be_bytes())
            .unwrap();
        // A crash while writing group 2's record: dropped.
        redo.insert(key(2, 0), &b"partial"[..]).unwrap();
        assert_eq!(recover(&redo, &trees).unwrap(), 1);
        assert!(redo.is_empty());
        assert_eq!(trees[0].get(b"big").unwrap().unwrap().len(), 3 * PART + 5);
        assert_eq!(&*trees[1].get(b"k").unwrap().unwrap(), b"v");
        assert_eq!(trees[1].get(b"gone").unwrap(), None);
        // A whole write leaves no record behind.
        write(&redo, &trees, 3, &group()).unwrap();
        assert!(redo.is_empty());
    }
}
