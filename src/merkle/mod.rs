//! The RFC 6962 Merkle tree the audit log is committed to, so that a checkpoint (a size and a
//! root) can be proved to contain an entry, or to extend an earlier checkpoint, in a few hashes.
//!
//! Everything here is pure: hashing (RFC 9162 section 2.1), the [`Frontier`] a writer keeps to
//! extend the tree one leaf at a time, proofs built from a [`Nodes`] store, and their
//! verification. A tree of `n` leaves is `MTH(D[0:n])`: the leaf hash of a single entry, or, for
//! more, the node hash of the largest perfect subtree on the left and of the rest on the right.
//!
//! Nodes are named by `(level, index)`: the perfect subtree of `2^level` leaves covering
//! `[index << level, (index + 1) << level)`. Level 0 holds the leaf hashes. Every subtree that
//! proofs need starts at a multiple of its own size rounded up to a power of two, so it is made
//! of the perfect subtrees given by the set bits of its size; a proof reads O(log n) nodes.

use sha2::{Digest, Sha256};

#[cfg(test)]
mod tests;

/// A SHA-256 hash: a leaf, a node, or a root.
pub type Hash = [u8; 32];

/// SHA-256(0x00 || entry)
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(entry);
    hasher.finalize().into()
}

/// SHA-256(0x01 || left || right)
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The compact range of a tree: the roots of the perfect subtrees that make up a tree of `size`
/// leaves, left to right (largest first), one per set bit of `size`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// None unless hashes.len() == size.count_ones().
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Option<Frontier> {
        (hashes.len() == size.count_ones() as usize).then_some(Frontier { size, hashes })
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect subtree roots, largest (leftmost) first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends a leaf hash (leaf index = old size). Calls `completed(level, index, &hash)` for
    /// every perfect subtree node of level >= 1 that this append completes, lowest level first,
    /// where the node at `level`, `index` covers leaves [index << level, (index + 1) << level).
    ///
    /// A tree holds at most `u64::MAX` leaves; a push beyond that changes nothing.
    pub fn push(&mut self, leaf: Hash, mut completed: impl FnMut(u8, u64, &Hash)) {
        let Some(new_size) = self.size.checked_add(1) else {
            return;
        };
        // Each trailing one bit of the old size is a perfect subtree of that level which the new
        // leaf's subtree, once grown to the same level, completes into one twice as big.
        let mut hash = leaf;
        for level in 0..self.size.trailing_ones() {
            let Some(left) = self.hashes.pop() else {
                // from_parts and push keep one hash per set bit, so this cannot happen.
                break;
            };
            hash = node_hash(&left, &hash);
            let level = level + 1;
            completed(level as u8, self.size >> level, &hash);
        }
        self.hashes.push(hash);
        self.size = new_size;
    }

    /// The root of the whole tree (empty_root() for size 0).
    pub fn root(&self) -> Hash {
        let mut subtrees = self.hashes.iter().rev();
        let Some(last) = subtrees.next() else {
            return empty_root();
        };
        subtrees.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// Where proofs read the tree from: `node(level, index)` is the root of the perfect subtree at
/// that level and index (level 0: the leaf hash of entry `index`). Only called for nodes whose
/// subtree lies entirely inside the tree size being proved.
pub trait Nodes {
    type Error;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// The largest power of two smaller than `n`, for `n >= 2`: where RFC 6962 splits `D[n]`.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The level of the perfect subtree of `size` leaves (a power of two).
fn level_of(size: u64) -> u8 {
    size.trailing_zeros() as u8
}

/// The root of the perfect subtree of `size` leaves (a power of two) starting at leaf `start`.
fn perfect<N: Nodes>(nodes: &N, start: u64, size: u64) -> Result<Hash, N::Error> {
    let level = level_of(size);
    nodes.node(level, start >> level)
}

/// `MTH(D[start:start + len])` for `len >= 1` and `start` a multiple of `len` rounded up to a power
/// of two: the perfect subtrees of the set bits of `len`, largest first, folded from the right.
fn range_root<N: Nodes>(nodes: &N, start: u64, len: u64) -> Result<Hash, N::Error> {
    let mut root: Option<Hash> = None;
    for level in (0..64u32).filter(|level| len >> level & 1 == 1) {
        // The subtrees of the higher bits of `len` come first.
        let offset = len & !(u64::MAX >> (63 - level));
        let hash = nodes.node(level as u8, (start + offset) >> level)?;
        root = Some(match root {
            None => hash,
            Some(right) => node_hash(&hash, &right),
        });
    }
    Ok(root.unwrap_or_else(empty_root))
}

/// `MTH(D[0:size])`. size may be 0.
pub fn root_at<N: Nodes>(nodes: &N, size: u64) -> Result<Hash, N::Error> {
    range_root(nodes, 0, size)
}

/// `PATH(index, D[0:size])` (RFC 6962 2.1.1), leaf-to-root order. Caller guarantees index < size.
///
/// Walks down from the root: at each split, the sibling of the side holding `index` joins the
/// proof. Empty when index >= size.
pub fn inclusion_proof<N: Nodes>(nodes: &N, index: u64, size: u64) -> Result<Vec<Hash>, N::Error> {
    let mut proof = Vec::new();
    if index >= size {
        return Ok(proof);
    }
    // The subtree D[start:start + n] holding the leaf, and the leaf's index `m` in it.
    let (mut start, mut n, mut m) = (0, size, index);
    while n > 1 {
        let k = split(n);
        if m < k {
            proof.push(range_root(nodes, start + k, n - k)?);
            n = k;
        } else {
            proof.push(perfect(nodes, start, k)?);
            start += k;
            n -= k;
            m -= k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// `PROOF(old, D[0:new])` (RFC 6962 2.1.2). Caller guarantees old <= new. Empty when old == 0 or
/// old == new.
///
/// Walks down `SUBPROOF(m, D[start:start + n], b)` from the root; also empty when old > new.
pub fn consistency_proof<N: Nodes>(nodes: &N, old: u64, new: u64) -> Result<Vec<Hash>, N::Error> {
    let mut proof = Vec::new();
    if old == 0 || old >= new {
        return Ok(proof);
    }
    // `whole` is SUBPROOF's `b`: whether D[start:start + n] is still the old tree's own prefix,
    // in which case the verifier already holds its root (the old root) and it is left out.
    let (mut start, mut n, mut m, mut whole) = (0, new, old, true);
    while m < n {
        let k = split(n);
        if m <= k {
            proof.push(range_root(nodes, start + k, n - k)?);
            n = k;
        } else {
            proof.push(perfect(nodes, start, k)?);
            start += k;
            n -= k;
            m -= k;
            whole = false;
        }
    }
    // Here m == n == a power of two: D[start:start + n] is a perfect subtree of the old tree.
    if !whole {
        proof.push(perfect(nodes, start, n)?);
    }
    proof.reverse();
    Ok(proof)
}

/// Shifts `fn_` and `sn` right together until `fn_` is odd or zero (RFC 9162's inner loops).
fn skip_right_edge(fn_: &mut u64, sn: &mut u64) {
    while *fn_ & 1 == 0 && *fn_ != 0 {
        *fn_ >>= 1;
        *sn >>= 1;
    }
}

/// RFC 9162 2.1.3.2. False (never panics) on any malformed input (index >= size, wrong length...).
///
/// As in the RFC, `size` is bound only through `root`: a proof can also fit a different size whose
/// path has the same shape, so take the size and the root together, from one checkpoint.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            skip_right_edge(&mut fn_, &mut sn);
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// RFC 9162 2.1.4.2, with these edge cases: old == new -> proof must be empty and roots equal;
/// old == 0 -> proof must be empty (anything is consistent with the empty tree); old > new -> false.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    // When the old tree is a perfect subtree it is the proof's implied first element.
    let (first, rest) = if old.is_power_of_two() {
        (old_root, proof)
    } else {
        match proof.split_first() {
            Some(split) => split,
            None => return false,
        }
    };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            skip_right_edge(&mut fn_, &mut sn);
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == *old_root && sr == *new_root
}

/// A whole tree in memory (every level), built by pushing leaves: for offline checks and tests.
#[derive(Debug, Clone, Default)]
pub struct MemTree {
    /// `levels[l][i]` is node `(l, i)`; only complete nodes are kept.
    levels: Vec<Vec<Hash>>,
}

impl MemTree {
    /// The empty tree.
    pub fn new() -> MemTree {
        MemTree::default()
    }

    /// Appends a leaf hash, and every node it completes.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        for level in 0.. {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            let nodes = &mut self.levels[level];
            nodes.push(hash);
            match nodes.as_slice() {
                [.., left, right] if nodes.len().is_multiple_of(2) => hash = node_hash(left, right),
                _ => break,
            }
        }
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }
}

impl Nodes for MemTree {
    type Error = std::convert::Infallible;

    /// A node the tree does not hold (beyond `size()`) reads as 32 zero bytes.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        let node = usize::try_from(index)
            .ok()
            .and_then(|index| self.levels.get(usize::from(level))?.get(index));
        Ok(node.copied().unwrap_or([0; 32]))
    }
}
