//! The audit log in the store: entries, their hash chain and RFC 6962 Merkle tree, the head
//! record that ties both to the last entry, proofs, and verification.
//!
//! Architecture invariant: an entry, the tree nodes it completes and the new head are written
//! in the same transaction as the change the entry records. The head holds the last entry's
//! sequence number and hash and the tree's frontier at that size, so appending reads one record
//! and the root at any size is a few reads of stored nodes, never a rehash of the log.
//!
//! The nodes are stored in tiles: the nodes of one level with indexes [16t, 16t + 16) are one
//! value, grown as they complete. An entry then rewrites a value that is already there far more
//! often than it adds a key, and a table whose keys only grow splits its last node every few
//! inserts (most of what a stored node used to cost).

use super::{Store, Table, Tx, TxResult, u64_at};
use crate::audit::{self, AuditEvent, GENESIS, VerifyReport};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::merkle::{self, Frontier, Hash, Nodes};
use crate::model::Timestamp;

/// The key of the head record in `meta`.
pub(super) const HEAD: &[u8] = b"audit_head";
/// Entries per batch when the tree is built for a log written before it existed.
const BUILD_BATCH: u64 = 10_000;
/// Nodes per tile.
const TILE: u64 = 16;

/// Tiles to write: key and value.
type Tiles = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The head record: the last entry's sequence number and hash, and the tree's frontier at
/// that size (absent in a database written before the tree existed, until it is built).
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) hash: Hash,
    pub(super) frontier: Option<Frontier>,
}

impl Head {
    /// Stored as `seq || hash || frontier hashes`; a bare `seq || hash` predates the tree.
    pub(super) fn decode(v: Option<&[u8]>) -> Result<Head> {
        let corrupt = || Error::Internal("the audit head record is corrupt".into());
        let Some(v) = v else {
            return Ok(Head {
                seq: 0,
                hash: GENESIS,
                frontier: Some(Frontier::new()),
            });
        };
        if v.len() < 40 || (v.len() - 40) % 32 != 0 {
            return Err(corrupt());
        }
        let seq = u64_at(v, 0)?;
        let hash = to_hash(&v[8..40]).ok_or_else(corrupt)?;
        let hashes: Vec<Hash> = v[40..].chunks_exact(32).filter_map(to_hash).collect();
        let frontier = if hashes.is_empty() && seq > 0 {
            None
        } else {
            Some(Frontier::from_parts(seq, hashes).ok_or_else(corrupt)?)
        };
        Ok(Head {
            seq,
            hash,
            frontier,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let hashes = self.frontier.as_ref().map_or(&[][..], Frontier::hashes);
        let mut v = Vec::with_capacity(40 + 32 * hashes.len());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.hash);
        for h in hashes {
            v.extend_from_slice(h);
        }
        v
    }
}

fn to_hash(b: &[u8]) -> Option<Hash> {
    b.try_into().ok()
}

/// A tree node's key: its level, then its index, big-endian (one level is one key range).
fn node_key(level: u8, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The key of the tile that holds the node at `level`, `index`.
fn tile_key(level: u8, index: u64) -> [u8; 9] {
    node_key(level, index / TILE)
}

/// Where in its tile the node at `index` starts.
fn tile_offset(index: u64) -> usize {
    (index % TILE) as usize * 32
}

/// The node at `index` in its tile, if the tile holds it.
fn in_tile(tile: &[u8], index: u64) -> Option<Hash> {
    let at = tile_offset(index);
    tile.get(at..at + 32).and_then(to_hash)
}

/// Refuses a build whose entries do not come to the head's size.
fn same_size(entries: u64, head: u64) -> Result<()> {
    if entries == head {
        return Ok(());
    }
    Err(Error::Storage(format!(
        "the audit log holds {entries} entries but its head names entry {head}; check it with 'sshjit-broker audit verify --data-dir'"
    )))
}

fn incomplete(level: u8, index: u64) -> Error {
    Error::Internal(format!(
        "the audit log's Merkle tree does not end where the head says (level {level}, index {index}); check it with 'sshjit-broker audit verify --data-dir'"
    ))
}

impl Tx<'_> {
    /// Appends an audit entry, the tree nodes it completes and the new head; returns its
    /// sequence number.
    pub(super) fn append_audit(
        &self,
        now: Timestamp,
        actor: &str,
        event: &AuditEvent,
    ) -> TxResult<u64> {
        let head = Head::decode(self.t.meta.get(HEAD)?.as_deref())?;
        let mut frontier = head.frontier.ok_or_else(|| {
            Error::Internal("the audit log's Merkle tree is not built; restart the broker".into())
        })?;
        let seq = head.seq + 1;
        let (raw, hash) = audit::seal(seq, now, actor, event, &head.hash)?;
        let mut completed = Vec::new();
        frontier.push(merkle::leaf_hash(&raw), |level, index, node| {
            completed.push((level, index, *node));
        });
        for (level, index, node) in completed {
            let key = tile_key(level, index);
            let mut tile = self.t.tiles.get(key)?.unwrap_or_default();
            if tile.len() != tile_offset(index) {
                return Err(incomplete(level, index).into());
            }
            tile.extend_from_slice(&node);
            self.t.tiles.insert(key, tile)?;
        }
        self.t.audit.insert(&seq.to_be_bytes()[..], raw)?;
        let head = Head {
            seq,
            hash,
            frontier: Some(frontier),
        };
        self.t.meta.insert(HEAD, head.encode())?;
        Ok(seq)
    }

    /// The sequence number the next audit entry gets.
    pub(super) fn next_seq(&self) -> TxResult<u64> {
        let v = self.t.meta.get(HEAD)?;
        Ok(v.as_deref().map_or(Ok(0), |v| u64_at(v, 0))? + 1)
    }
}

/// The stored tree as proofs read it: level 0 is the hash of an entry, higher levels are
/// stored nodes.
struct Stored<'a> {
    audit: &'a Table,
    tiles: &'a Table,
}

impl Nodes for Stored<'_> {
    type Error = Error;

    fn node(&self, level: u8, index: u64) -> Result<Hash> {
        let missing = || {
            Error::Internal(format!(
                "the audit log's Merkle tree lacks the node at level {level}, index {index}"
            ))
        };
        if level == 0 {
            let raw = self
                .audit
                .get((index + 1).to_be_bytes())?
                .ok_or_else(missing)?;
            return Ok(merkle::leaf_hash(&raw));
        }
        let tile = self
            .tiles
            .get(tile_key(level, index))?
            .ok_or_else(missing)?;
        in_tile(&tile, index).ok_or_else(missing)
    }
}

impl Store {
    fn head(&self) -> Result<Head> {
        Head::decode(self.t.meta.get(HEAD)?.as_deref())
    }

    fn stored_tree(&self) -> Stored<'_> {
        Stored {
            audit: &self.t.audit,
            tiles: &self.t.tiles,
        }
    }

    /// The number of audit entries committed.
    pub fn audit_len(&self) -> Result<u64> {
        Ok(self.head()?.seq)
    }

    /// The number of audit entries a flush has made durable: the most a checkpoint may cover.
    pub fn durable_audit_len(&self) -> u64 {
        if self.engine.shared() {
            // A shared engine's commits are durable when they return, whichever broker made them.
            return self
                .audit_len()
                .unwrap_or_else(|_| self.flusher.durable_log());
        }
        self.flusher.durable_log()
    }

    /// One raw audit entry.
    pub fn audit_entry(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        self.t.audit.get(seq.to_be_bytes())
    }

    /// Raw audit entries from `from_seq` on, in order.
    pub fn audit_raw(&self, from_seq: u64) -> impl Iterator<Item = Result<Vec<u8>>> + '_ {
        self.t
            .audit
            .range(from_seq.to_be_bytes()..)
            .map(|kv| kv.map(|(_, v)| v))
    }

    /// Refuses a size beyond the committed log.
    fn within(&self, size: u64) -> Result<()> {
        let have = self.audit_len()?;
        if size > have {
            return Err(Error::BeyondLog {
                size: have,
                asked: size,
            });
        }
        Ok(())
    }

    /// The Merkle root of the first `size` entries.
    pub fn audit_root(&self, size: u64) -> Result<Hash> {
        self.within(size)?;
        merkle::root_at(&self.stored_tree(), size)
    }

    /// The inclusion proof of entry `seq` in the tree of the first `size` entries.
    pub fn audit_inclusion(&self, seq: u64, size: u64) -> Result<Vec<Hash>> {
        self.within(size)?;
        if seq == 0 || seq > size {
            return Err(Error::BeyondLog { size, asked: seq });
        }
        merkle::inclusion_proof(&self.stored_tree(), seq - 1, size)
    }

    /// The consistency proof from the tree of `old` entries to the tree of `new` entries.
    pub fn audit_consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        self.within(new)?;
        if old > new {
            return Err(Error::BeyondLog {
                size: new,
                asked: old,
            });
        }
        merkle::consistency_proof(&self.stored_tree(), old, new)
    }

    /// Recomputes the whole chain and tree and checks them against the head and the stored
    /// nodes.
    pub fn verify_audit(&self) -> Result<VerifyReport> {
        self.verify_audit_against(None)
    }

    /// [`Store::verify_audit`], and that the log still extends `checkpoint`.
    pub fn verify_audit_against(&self, checkpoint: Option<&Checkpoint>) -> Result<VerifyReport> {
        let mut v = audit::Verifier::default();
        if let Some(cp) = checkpoint {
            v.expect_checkpoint(cp.size, cp.root);
        }
        // A log from before the tree, or from before tiles (not yet served by this version),
        // has no tiles yet: only the entries are checked, against the head.
        let head = self.head()?;
        let built = head.frontier.is_some()
            && (head.seq < 2 || self.t.tiles.get(tile_key(1, 0))?.is_some());
        let mut bad_node = None;
        // The tile each level's nodes were last read from (tiles hold 16 nodes each).
        let mut tiles: std::collections::HashMap<u8, (u64, Vec<u8>)> = Default::default();
        // A live broker appends while the log is read: what was appended after the scan
        // passed is read too, until the head read after a scan names no later entry.
        let mut scanned = 0;
        let head = loop {
            let before = scanned;
            // The first pass reads from key 0, so an entry stored below seq 1 is checked too.
            let from = if before == 0 { 0 } else { scanned + 1 };
            for raw in self.audit_raw(from) {
                scanned += 1;
                v.push_with(&raw?, |level, index, hash| {
                    if bad_node.is_some() || !built {
                        return;
                    }
                    let read = || {
                        let tile = self.t.tiles.get(tile_key(level, index)).ok().flatten();
                        (index / TILE, tile.unwrap_or_default())
                    };
                    let cached = tiles.entry(level).or_insert_with(read);
                    // Another tile, or one that grew since it was read (a live broker).
                    if cached.0 != index / TILE || in_tile(&cached.1, index).is_none() {
                        *cached = read();
                    }
                    if in_tile(&cached.1, index) != Some(*hash) {
                        bad_node = Some((level, index));
                    }
                });
            }
            let head = self.head()?;
            // (Nothing new: the entries the head names are missing, which the check says.)
            if head.seq <= scanned || scanned == before {
                break head;
            }
        };
        v.expect_head(head.seq, &head.hash, head.frontier.as_ref());
        if let Some((level, index)) = bad_node {
            v.fail_tree(format!(
                "the stored Merkle tree node at level {level}, index {index} does not match the entries"
            ));
        } else if built && !self.tiles_end_at_head()? {
            v.fail_tree(
                "the stored Merkle tree's tiles do not end where the head says (a tile is cut short or runs on)".into(),
            );
        }
        Ok(v.finish())
    }

    /// Builds the Merkle tree's tiles before serving, when they do not end where the head
    /// says: for a log written before the tree existed (appending refuses until it is built),
    /// for one whose tree was stored node by node, before tiles, and after a build a crash cut
    /// short. A log with a recorded frontier is first checked against it, and nothing is
    /// written if it does not match. (The old node-by-node table is no longer read.)
    pub fn build_tree(&self) -> Result<()> {
        let before = self.t.meta.get(HEAD)?;
        let head = Head::decode(before.as_deref())?;
        // On a shared database another broker may append between the check's reads: there a
        // last tile need only reach where the head says.
        let whole = |size| {
            if self.engine.shared() {
                self.tiles_reach(size)
            } else {
                self.tiles_end_at(size)
            }
        };
        if head.frontier.is_some() && whole(head.seq)? {
            return Ok(());
        }
        if let Some(recorded) = &head.frontier {
            let frontier = self.tree_of_entries(&mut |_| Ok(()))?;
            same_size(frontier.size(), head.seq)?;
            if *recorded != frontier {
                return Err(Error::Storage(
                    "the audit log's entries do not give the Merkle tree its head records; check it with 'sshjit-broker audit verify --data-dir'".into(),
                ));
            }
            self.tree_of_entries(&mut |batch| self.t.tiles.apply(batch))?;
            self.engine.flush()?;
            tracing::info!(
                entries = head.seq,
                "stored the audit log's Merkle tree in tiles"
            );
            return Ok(());
        }
        let frontier = self.tree_of_entries(&mut |batch| self.t.tiles.apply(batch))?;
        same_size(frontier.size(), head.seq)?;
        let built = Head {
            frontier: Some(frontier),
            ..head
        };
        if !self
            .t
            .meta
            .compare_and_swap(HEAD, before.as_deref(), Some(built.encode()))?
        {
            return Err(Error::Internal(
                "the audit head changed while its tree was built".into(),
            ));
        }
        self.engine.flush()?;
        tracing::info!(entries = built.seq, "built the audit log's Merkle tree");
        Ok(())
    }

    /// The tree of every stored entry, its tiles handed to `write` in batches (each tile
    /// whole and once: a level's nodes come in order, so a tile left behind is full).
    fn tree_of_entries(&self, write: &mut dyn FnMut(Tiles) -> Result<()>) -> Result<Frontier> {
        let mut frontier = Frontier::new();
        let mut batch = Vec::new();
        // Each level's tile being filled: its number and its nodes so far.
        let mut open: std::collections::BTreeMap<u8, (u64, Vec<u8>)> = Default::default();
        for raw in self.audit_raw(0) {
            frontier.push(merkle::leaf_hash(&raw?), |level, index, node| {
                let tile = open.entry(level).or_insert((index / TILE, Vec::new()));
                if tile.0 != index / TILE {
                    let full = std::mem::take(&mut tile.1);
                    batch.push((tile_key(level, tile.0 * TILE).to_vec(), Some(full)));
                    tile.0 = index / TILE;
                }
                tile.1.extend_from_slice(node);
            });
            if frontier.size().is_multiple_of(BUILD_BATCH) {
                write(std::mem::take(&mut batch))?;
            }
        }
        for (level, (t, nodes)) in open {
            batch.push((tile_key(level, t * TILE).to_vec(), Some(nodes)));
        }
        write(batch)?;
        Ok(frontier)
    }

    /// [`Self::tiles_end_at`] the head's size, while a live broker may be appending: a
    /// mismatch counts only if the head did not move meanwhile.
    fn tiles_end_at_head(&self) -> Result<bool> {
        for _ in 0..8 {
            let size = self.head()?.seq;
            if self.tiles_end_at(size)? {
                return Ok(true);
            }
            if self.head()?.seq == size {
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// Whether each level's last tile holds exactly the nodes a tree of `size` entries has.
    fn tiles_end_at(&self, size: u64) -> Result<bool> {
        self.last_tiles(size, |len, end| len == end)
    }

    /// Whether each level's last tile holds at least the nodes a tree of `size` entries has:
    /// what a start on a shared database needs (a build cut short, refused or never made
    /// leaves a tile short or missing), and what holds while another broker appends, whose
    /// tiles may be read after its head moved on. A tile that runs on refuses the append
    /// that reaches it, and `verify` names it.
    fn tiles_reach(&self, size: u64) -> Result<bool> {
        self.last_tiles(size, |len, end| len >= end)
    }

    /// Whether `fits(length, end)` holds for each level's last tile of a tree of `size`
    /// entries, where `end` is where the tile's last node ends.
    fn last_tiles(&self, size: u64, fits: impl Fn(usize, usize) -> bool) -> Result<bool> {
        let mut level = 1u8;
        while level < 64 && size >> level > 0 {
            let last = (size >> level) - 1;
            let tile = self.t.tiles.get(tile_key(level, last))?;
            if !tile.is_some_and(|t| fits(t.len(), tile_offset(last) + 32)) {
                return Ok(false);
            }
            level += 1;
        }
        Ok(true)
    }

    /// Replaces the whole log with `entries`, re-sealed: chain, tree and head made consistent
    /// again. What someone holding the database could do; it exists for the attack tests.
    #[doc(hidden)]
    pub fn danger_reseal_log(&self, entries: &[audit::AuditEntry]) -> Result<()> {
        self.t.audit.clear()?;
        self.t.tiles.clear()?;
        self.t.meta.remove(HEAD)?;
        for e in entries {
            self.commit(e.at, &e.actor, |_| Ok(((), vec![e.event.clone()])))?;
        }
        self.engine.flush()
    }

    /// Overwrites one stored entry's bytes, leaving everything else as it is (tamper tests).
    #[doc(hidden)]
    pub fn danger_put_audit_entry(&self, seq: u64, raw: Option<&[u8]>) -> Result<()> {
        match raw {
            Some(raw) => self.t.audit.insert(seq.to_be_bytes(), raw),
            None => self.t.audit.remove(seq.to_be_bytes()),
        }
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
