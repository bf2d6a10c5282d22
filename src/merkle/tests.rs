//! The Merkle module's tests: hashing, roots and proofs against published vectors and ct-merkle.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;

fn h(hex: &str) -> Hash {
    hex::decode(hex).unwrap().try_into().unwrap()
}

fn hs(hexes: &[&str]) -> Vec<Hash> {
    hexes.iter().map(|hex| h(hex)).collect()
}

/// Reads nodes from a tree, failing the test on any node outside `size` leaves, and counts reads.
struct Bounded<'a> {
    tree: &'a MemTree,
    size: u64,
    reads: Cell<u64>,
}

impl<'a> Bounded<'a> {
    fn new(tree: &'a MemTree, size: u64) -> Self {
        assert!(size <= tree.size());
        Bounded {
            tree,
            size,
            reads: Cell::new(0),
        }
    }
}

impl Nodes for Bounded<'_> {
    type Error = std::convert::Infallible;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        assert!(
            (index + 1) << level <= self.size,
            "node ({level}, {index}) is outside a tree of {} leaves",
            self.size
        );
        self.reads.set(self.reads.get() + 1);
        self.tree.node(level, index)
    }
}

/// RFC 6962 section 2.1 written out as it reads, over a list of leaf hashes (`D[n]` with
/// `MTH({d}) = leaf hash`). Subtree roots of at least `memo_min` leaves are remembered.
struct Reference<'a> {
    leaves: &'a [Hash],
    memo: HashMap<(usize, usize), Hash>,
    memo_min: usize,
}

impl<'a> Reference<'a> {
    fn new(leaves: &'a [Hash], memo_min: usize) -> Self {
        Reference {
            leaves,
            memo: HashMap::new(),
            memo_min,
        }
    }

    /// The largest power of two smaller than n.
    fn k(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// MTH(D[lo:hi]).
    fn mth(&mut self, lo: usize, hi: usize) -> Hash {
        let n = hi - lo;
        match n {
            0 => return empty_root(),
            1 => return self.leaves[lo],
            _ => {}
        }
        if let Some(hash) = self.memo.get(&(lo, hi)) {
            return *hash;
        }
        let k = Self::k(n);
        let hash = node_hash(&self.mth(lo, lo + k), &self.mth(lo + k, hi));
        if n >= self.memo_min {
            self.memo.insert((lo, hi), hash);
        }
        hash
    }

    /// PATH(m, D[lo:hi]).
    fn path(&mut self, m: usize, lo: usize, hi: usize) -> Vec<Hash> {
        let n = hi - lo;
        if n == 1 {
            return Vec::new();
        }
        let k = Self::k(n);
        if m < k {
            let mut path = self.path(m, lo, lo + k);
            path.push(self.mth(lo + k, hi));
            path
        } else {
            let mut path = self.path(m - k, lo + k, hi);
            path.push(self.mth(lo, lo + k));
            path
        }
    }

    /// PROOF(m, D[0:n]), empty for m == 0.
    fn proof(&mut self, m: usize, n: usize) -> Vec<Hash> {
        if m == 0 {
            return Vec::new();
        }
        self.subproof(m, 0, n, true)
    }

    /// SUBPROOF(m, D[lo:hi], b).
    fn subproof(&mut self, m: usize, lo: usize, hi: usize, b: bool) -> Vec<Hash> {
        let n = hi - lo;
        if m == n {
            return if b {
                Vec::new()
            } else {
                vec![self.mth(lo, hi)]
            };
        }
        let k = Self::k(n);
        if m <= k {
            let mut proof = self.subproof(m, lo, lo + k, b);
            proof.push(self.mth(lo + k, hi));
            proof
        } else {
            let mut proof = self.subproof(m - k, lo + k, hi, false);
            proof.push(self.mth(lo, lo + k));
            proof
        }
    }
}

fn mem_tree(leaves: &[Hash]) -> MemTree {
    let mut tree = MemTree::new();
    for leaf in leaves {
        tree.push(*leaf);
    }
    tree
}

fn numbered_leaves(n: u64) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

/// A proptest configuration of `n` cases, without a regressions file.
fn cases(n: u32) -> Config {
    Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    }
}

const MILLION: u64 = 1_000_000;

/// A million numbered leaves and their tree, built once for the tests that need them.
fn million() -> &'static (Vec<Hash>, MemTree) {
    static MILLION_TREE: OnceLock<(Vec<Hash>, MemTree)> = OnceLock::new();
    MILLION_TREE.get_or_init(|| {
        let leaves = numbered_leaves(MILLION);
        let tree = mem_tree(&leaves);
        (leaves, tree)
    })
}

fn flipped(proof: &[Hash], i: usize) -> Vec<Hash> {
    let mut proof = proof.to_vec();
    proof[i][0] ^= 8;
    proof
}

fn with(proof: &[Hash], front: Option<Hash>, back: Option<Hash>) -> Vec<Hash> {
    front
        .into_iter()
        .chain(proof.iter().copied())
        .chain(back)
        .collect()
}

/// Every cheap way of spoiling a good inclusion proof is refused. (Not every other size: the proof
/// for `size` may also fit `size + 1`, say, when the path has the same shape; the size is bound
/// through the root, which a checkpoint signs together with it.)
fn assert_inclusion_refusals(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) {
    let other = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    let refuse = |leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash, what: &str| {
        assert!(
            !verify_inclusion(leaf, index, size, proof, root),
            "{what}: index {index}, size {size}"
        );
    };
    for i in 0..proof.len() {
        refuse(leaf, index, size, &flipped(proof, i), root, "flipped hash");
    }
    if let Some((_, rest)) = proof.split_first() {
        refuse(leaf, index, size, rest, root, "first hash missing");
        refuse(
            leaf,
            index,
            size,
            &proof[..proof.len() - 1],
            root,
            "last hash missing",
        );
    }
    refuse(
        leaf,
        index,
        size,
        &with(proof, None, Some(*root)),
        root,
        "extra last",
    );
    refuse(
        leaf,
        index,
        size,
        &with(proof, Some(other), None),
        root,
        "extra first",
    );
    if index ^ 1 < size {
        refuse(leaf, index ^ 1, size, proof, root, "sibling index");
    }
    refuse(leaf, size, size, proof, root, "index == size");
    refuse(leaf, index + size, size, proof, root, "index > size");
    refuse(leaf, u64::MAX, size, proof, root, "index u64::MAX");
    refuse(&other, index, size, proof, root, "wrong leaf");
    refuse(leaf, index, size, proof, &other, "wrong root");
    refuse(leaf, index, size, proof, &empty_root(), "empty root");
    refuse(leaf, index, size * 2, proof, root, "size * 2");
    refuse(leaf, index, size / 2, proof, root, "size / 2");
    refuse(leaf, index, 0, proof, root, "size 0");
}

/// Every cheap way of spoiling a good, non-empty consistency proof is refused.
fn assert_consistency_refusals(old: u64, new: u64, old_root: &Hash, new_root: &Hash, p: &[Hash]) {
    let other = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    let refuse = |old: u64, new: u64, old_root: &Hash, new_root: &Hash, p: &[Hash], what: &str| {
        assert!(
            !verify_consistency(old, new, old_root, new_root, p),
            "{what}: old {old}, new {new}"
        );
    };
    assert!(!p.is_empty());
    for i in 0..p.len() {
        refuse(old, new, old_root, new_root, &flipped(p, i), "flipped hash");
    }
    refuse(old, new, old_root, new_root, &p[1..], "first hash missing");
    refuse(
        old,
        new,
        old_root,
        new_root,
        &p[..p.len() - 1],
        "last hash missing",
    );
    refuse(old, new, old_root, new_root, &[], "empty proof");
    for extra in [other, *old_root, *new_root, p[0]] {
        let back = with(p, None, Some(extra));
        refuse(old, new, old_root, new_root, &back, "extra last");
        let front = with(p, Some(extra), None);
        refuse(old, new, old_root, new_root, &front, "extra first");
    }
    refuse(old, new, &other, new_root, p, "wrong old root");
    refuse(old, new, old_root, &other, p, "wrong new root");
    refuse(old, new, new_root, old_root, p, "swapped roots");
    refuse(new, old, old_root, new_root, p, "old > new");
    refuse(new, old, new_root, old_root, p, "old > new, roots swapped");
    refuse(0, new, old_root, new_root, p, "old 0 with a proof");
    refuse(old, old, old_root, old_root, p, "old == new with a proof");
    refuse(old - 1, new, old_root, new_root, p, "old - 1");
    refuse(old + 1, new, old_root, new_root, p, "old + 1");
    refuse(old ^ 2, new, old_root, new_root, p, "old ^ 2");
    refuse(old, new * 2, old_root, new_root, p, "new * 2");
    refuse(old, new / 2, old_root, new_root, p, "new / 2");
}

// ---------------------------------------------------------------------------------------------
// Known answers. The leaves, roots, node hashes and compact ranges are the RFC 6962 test data of
// github.com/transparency-dev/merkle, testonly/constants.go; the inclusion and consistency proofs
// (and the probes that spoil them) are from proof/verify_test.go in the same repository (the
// data certificate-transparency and trillian published before it).

const KAT_LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// Roots by size, 0 to 8.
const KAT_ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// Every node of the 8-leaf tree, by level.
const KAT_NODES: [&[&str]; 4] = [
    &[
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    &[
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    &[
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
];

/// The compact ranges (frontiers) by size, 0 to 8, as (level, index) into KAT_NODES.
const KAT_FRONTIERS: [&[(usize, usize)]; 9] = [
    &[],
    &[(0, 0)],
    &[(1, 0)],
    &[(1, 0), (0, 2)],
    &[(2, 0)],
    &[(2, 0), (0, 4)],
    &[(2, 0), (1, 2)],
    &[(2, 0), (1, 2), (0, 6)],
    &[(3, 0)],
];

/// (index, size, proof); the source numbers leaves from 1, these from 0.
const KAT_INCLUSION: [(u64, u64, &[&str]); 5] = [
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// (old, new, proof).
const KAT_CONSISTENCY: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn kat_tree() -> MemTree {
    let leaves: Vec<Hash> = KAT_LEAVES
        .iter()
        .map(|hex| leaf_hash(&hex::decode(hex).unwrap()))
        .collect();
    mem_tree(&leaves)
}

#[test]
fn known_hashes() {
    assert_eq!(empty_root(), h(KAT_ROOTS[0]));
    assert_eq!(leaf_hash(b""), h(KAT_NODES[0][0]));
    assert_eq!(
        node_hash(&h(KAT_NODES[0][0]), &h(KAT_NODES[0][1])),
        h(KAT_NODES[1][0])
    );
    let tree = kat_tree();
    for (level, nodes) in KAT_NODES.iter().enumerate() {
        assert_eq!(tree.levels[level], hs(nodes), "level {level}");
    }
    assert_eq!(tree.levels.len(), 4);
}

#[test]
fn known_roots_and_frontiers() {
    let tree = kat_tree();
    let mut frontier = Frontier::new();
    for size in 0..=8u64 {
        if size > 0 {
            frontier.push(tree.levels[0][size as usize - 1], |_, _, _| {});
        }
        let expected: Vec<Hash> = KAT_FRONTIERS[size as usize]
            .iter()
            .map(|&(level, index)| h(KAT_NODES[level][index]))
            .collect();
        assert_eq!(frontier.size(), size);
        assert_eq!(frontier.hashes(), expected.as_slice(), "size {size}");
        let root = h(KAT_ROOTS[size as usize]);
        assert_eq!(frontier.root(), root, "size {size}");
        assert_eq!(root_at(&Bounded::new(&tree, size), size).unwrap(), root);
    }
}

#[test]
fn known_inclusion_proofs() {
    let tree = kat_tree();
    for (index, size, proof) in KAT_INCLUSION {
        let expected = hs(proof);
        let nodes = Bounded::new(&tree, size);
        assert_eq!(inclusion_proof(&nodes, index, size).unwrap(), expected);
        let leaf = tree.levels[0][index as usize];
        let root = h(KAT_ROOTS[size as usize]);
        assert!(verify_inclusion(&leaf, index, size, &expected, &root));
        assert_inclusion_refusals(&leaf, index, size, &expected, &root);
        // The probes of the source: wrong index, wrong size.
        for (i, s) in [
            (index.wrapping_sub(1), size),
            (index + 1, size),
            (index ^ 2, size),
            (index, size * 2),
            (index, size / 2),
        ] {
            assert!(!verify_inclusion(&leaf, i, s, &expected, &root), "{i} {s}");
        }
    }
}

#[test]
fn known_consistency_proofs() {
    let tree = kat_tree();
    for (old, new, proof) in KAT_CONSISTENCY {
        let expected = hs(proof);
        let nodes = Bounded::new(&tree, new);
        assert_eq!(consistency_proof(&nodes, old, new).unwrap(), expected);
        let old_root = h(KAT_ROOTS[old as usize]);
        let new_root = h(KAT_ROOTS[new as usize]);
        assert!(verify_consistency(
            old, new, &old_root, &new_root, &expected
        ));
        if expected.is_empty() {
            continue;
        }
        assert_consistency_refusals(old, new, &old_root, &new_root, &expected);
        // The probes of the source: wrong old size, wrong new size.
        for (o, n) in [
            (old - 1, new),
            (old + 1, new),
            (old ^ 2, new),
            (old, new * 2),
            (old, new / 2),
        ] {
            assert!(
                !verify_consistency(o, n, &old_root, &new_root, &expected),
                "{o} {n}"
            );
        }
    }
}

#[test]
fn consistency_edge_cases() {
    // The edge cases of proof/verify_test.go's TestVerifyConsistency, with 32-byte stand-ins for
    // its "don't care" roots.
    let (r1, r2) = ([1; 32], [2; 32]);
    let e = empty_root();
    type Case<'a> = (u64, u64, Hash, Hash, &'a [Hash], bool);
    let cases: [Case; 13] = [
        (0, 0, r1, r2, &[], false),
        (1, 1, r1, r2, &[], false),
        (0, 0, r1, r1, &[], true),
        (0, 1, r1, r2, &[], true),
        (1, 1, r2, r2, &[], true),
        (1, 0, r1, r2, &[], false),
        (2, 1, r1, r2, &[], false),
        (1, 2, r1, r2, &[], false),
        (0, 0, e, r2, &[], false),
        (1, 1, e, r2, &[], false),
        (0, 0, e, e, &[e], false),
        (0, 1, e, e, &[e], false),
        (1, 1, e, e, &[e], false),
    ];
    for (old, new, old_root, new_root, proof, ok) in cases {
        assert_eq!(
            verify_consistency(old, new, &old_root, &new_root, proof),
            ok,
            "{old} {new}"
        );
    }
    assert!(!verify_consistency(u64::MAX, 0, &e, &e, &[]));
    assert!(!verify_consistency(1, u64::MAX, &e, &e, &[e; 70]));
    assert!(!verify_consistency(3, u64::MAX, &e, &e, &[e; 70]));
}

#[test]
fn inclusion_edge_cases() {
    // TestVerifyInclusion's probes: nothing verifies in a tree too small for the index.
    let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    let e = empty_root();
    for (index, size) in [(0, 0), (1, 0), (2, 1), (1, 1), (u64::MAX, u64::MAX)] {
        assert!(!verify_inclusion(&some, index, size, &[], &e));
        assert!(!verify_inclusion(&some, index, size, &[], &some));
    }
    // A one-entry tree: the proof is empty and the root is the leaf hash.
    let leaf = leaf_hash(b"data");
    assert!(verify_inclusion(&leaf, 0, 1, &[], &leaf));
    assert!(!verify_inclusion(&leaf, 0, 1, &[], &e));
    assert!(!verify_inclusion(&leaf, 0, 1, &[leaf], &leaf));
    assert!(!verify_inclusion(&leaf, 0, u64::MAX, &[leaf; 70], &leaf));
    assert!(!verify_inclusion(
        &leaf,
        u64::MAX - 1,
        u64::MAX,
        &[leaf; 64],
        &leaf
    ));
    // Out-of-range requests give empty proofs rather than panicking.
    let tree = kat_tree();
    assert_eq!(inclusion_proof(&tree, 8, 8).unwrap(), Vec::<Hash>::new());
    assert_eq!(consistency_proof(&tree, 8, 3).unwrap(), Vec::<Hash>::new());
    assert_eq!(consistency_proof(&tree, 0, 8).unwrap(), Vec::<Hash>::new());
}

// ---------------------------------------------------------------------------------------------
// Against the reference recursion.

#[test]
fn exhaustive_up_to_300() {
    const N: u64 = 300;
    let leaves = numbered_leaves(N);
    let tree = mem_tree(&leaves);
    let mut reference = Reference::new(&leaves, 1);
    let mut frontier = Frontier::new();
    for size in 1..=N {
        frontier.push(leaves[size as usize - 1], |_, _, _| {});
        let nodes = Bounded::new(&tree, size);
        let root = reference.mth(0, size as usize);
        assert_eq!(frontier.root(), root, "size {size}");
        assert_eq!(root_at(&nodes, size).unwrap(), root, "size {size}");
        for index in 0..size {
            let proof = inclusion_proof(&nodes, index, size).unwrap();
            let expected = reference.path(index as usize, 0, size as usize);
            assert_eq!(proof, expected, "index {index}, size {size}");
            let leaf = &leaves[index as usize];
            assert!(verify_inclusion(leaf, index, size, &proof, &root));
        }
        for old in 0..=size {
            let proof = consistency_proof(&nodes, old, size).unwrap();
            let expected = reference.proof(old as usize, size as usize);
            assert_eq!(proof, expected, "old {old}, new {size}");
            let old_root = reference.mth(0, old as usize);
            assert!(verify_consistency(old, size, &old_root, &root, &proof));
        }
    }
}

#[test]
fn refusals_up_to_100() {
    const N: u64 = 100;
    let leaves = numbered_leaves(N);
    let tree = mem_tree(&leaves);
    let roots: Vec<Hash> = (0..=N).map(|size| root_at(&tree, size).unwrap()).collect();
    for size in 1..=N {
        let root = &roots[size as usize];
        for index in 0..size {
            let proof = inclusion_proof(&tree, index, size).unwrap();
            let leaf = &leaves[index as usize];
            assert_inclusion_refusals(leaf, index, size, &proof, root);
            for other in [1, size - 1, size + 1, N] {
                if other != size && other <= N {
                    let other_root = &roots[other as usize];
                    assert!(!verify_inclusion(leaf, index, size, &proof, other_root));
                }
            }
        }
        for old in 1..size {
            let proof = consistency_proof(&tree, old, size).unwrap();
            let old_root = &roots[old as usize];
            assert_consistency_refusals(old, size, old_root, root, &proof);
            let before = &roots[old as usize - 1];
            assert!(!verify_consistency(old, size, before, root, &proof));
            let after = &roots[size as usize - 1];
            assert!(!verify_consistency(old, size, old_root, after, &proof));
        }
    }
}

#[test]
fn random_sizes_up_to_a_million() {
    let (leaves, tree) = million();
    let reference = RefCell::new(Reference::new(leaves, 64));
    let mut runner = TestRunner::new(cases(16));
    let strategy = (1..=MILLION, any::<u64>(), any::<u64>());
    let outcome = runner.run(&strategy, |(size, a, b)| {
        let (index, old) = (a % size, b % (size + 1));
        let mut reference = reference.borrow_mut();
        let nodes = Bounded::new(tree, size);
        let root = reference.mth(0, size as usize);
        prop_assert_eq!(root_at(&nodes, size).unwrap(), root);

        let proof = inclusion_proof(&nodes, index, size).unwrap();
        prop_assert_eq!(&proof, &reference.path(index as usize, 0, size as usize));
        let leaf = &leaves[index as usize];
        prop_assert!(verify_inclusion(leaf, index, size, &proof, &root));
        assert_inclusion_refusals(leaf, index, size, &proof, &root);

        let proof = consistency_proof(&nodes, old, size).unwrap();
        prop_assert_eq!(&proof, &reference.proof(old as usize, size as usize));
        let old_root = reference.mth(0, old as usize);
        prop_assert!(verify_consistency(old, size, &old_root, &root, &proof));
        if !proof.is_empty() {
            assert_consistency_refusals(old, size, &old_root, &root, &proof);
        }
        Ok(())
    });
    outcome.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Against ct-merkle, an independent implementation.

fn ct_hash(hash: &Hash) -> ct_merkle::digest::Output<Sha256> {
    (*hash).into()
}

#[test]
fn agrees_with_ct_merkle() {
    use ct_merkle::mem_backed_tree::MemoryBackedTree;
    use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};

    let mut runner = TestRunner::new(cases(8));
    let strategy = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..600);
    let outcome = runner.run(&strategy, |entries| {
        let mut theirs = MemoryBackedTree::<Sha256, Vec<u8>>::new();
        let mut ours = MemTree::new();
        let mut frontier = Frontier::new();
        let mut roots = vec![empty_root()];
        for entry in &entries {
            theirs.push(entry.clone());
            ours.push(leaf_hash(entry));
            frontier.push(leaf_hash(entry), |_, _, _| {});
            let (root, their_root) = (frontier.root(), theirs.root());
            prop_assert_eq!(their_root.as_bytes().as_slice(), root.as_slice());
            roots.push(root);
        }
        let size = ours.size();
        let root = RootHash::<Sha256>::new(ct_hash(&roots[size as usize]), size);
        for (index, entry) in entries.iter().enumerate() {
            let proof = inclusion_proof(&ours, index as u64, size).unwrap();
            let expected = theirs.prove_inclusion(index);
            prop_assert_eq!(expected.as_bytes(), proof.concat());
            let proof = InclusionProof::<Sha256>::from_bytes(proof.concat());
            prop_assert!(root.verify_inclusion(entry, index as u64, &proof).is_ok());
        }
        for old in 1..size {
            let proof = consistency_proof(&ours, old, size).unwrap();
            let additions = (size - old) as usize;
            let expected = theirs.prove_consistency(additions);
            prop_assert_eq!(expected.as_bytes(), proof.concat());
            let proof = ConsistencyProof::<Sha256>::try_from_bytes(proof.concat()).unwrap();
            let old_root = RootHash::<Sha256>::new(ct_hash(&roots[old as usize]), old);
            prop_assert!(root.verify_consistency(&old_root, &proof).is_ok());
        }
        Ok(())
    });
    outcome.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Frontier.

#[test]
fn frontier_reports_completed_nodes() {
    const N: u64 = 1100;
    let leaves = numbered_leaves(N);
    let tree = mem_tree(&leaves);
    let mut frontier = Frontier::new();
    let mut reported: Vec<Vec<Hash>> = vec![Vec::new(); tree.levels.len()];
    for (i, leaf) in leaves.iter().enumerate() {
        let mut events = Vec::new();
        frontier.push(*leaf, |level, index, hash| {
            events.push((level, index, *hash))
        });
        let size = i as u64 + 1;
        // The levels completed are exactly those of the trailing zero bits of the new size.
        let levels: Vec<u8> = events.iter().map(|&(level, _, _)| level).collect();
        let expected: Vec<u8> = (1..=size.trailing_zeros() as u8).collect();
        assert_eq!(levels, expected, "size {size}");
        for (level, index, hash) in events {
            assert_eq!(index, (size >> level) - 1);
            let level = usize::from(level);
            assert_eq!(
                reported[level].len() as u64,
                index,
                "reported in order, once"
            );
            reported[level].push(hash);
        }
        // The frontier is the perfect subtrees of the set bits of the size, largest first.
        let expected: Vec<Hash> = (0..64u32)
            .rev()
            .filter(|bit| size >> bit & 1 == 1)
            .map(|bit| tree.levels[bit as usize][((size >> bit) - 1) as usize])
            .collect();
        assert_eq!(frontier.hashes(), expected.as_slice());
        let rebuilt = Frontier::from_parts(size, expected).unwrap();
        assert_eq!(rebuilt, frontier);
    }
    assert!(reported[0].is_empty());
    assert_eq!(reported[1..], tree.levels[1..]);
}

#[test]
fn frontier_from_parts() {
    let x = [7; 32];
    assert_eq!(Frontier::from_parts(0, vec![]), Some(Frontier::new()));
    assert_eq!(Frontier::from_parts(0, vec![x]), None);
    assert_eq!(Frontier::from_parts(1, vec![]), None);
    assert_eq!(Frontier::from_parts(5, vec![x]), None);
    assert_eq!(Frontier::from_parts(5, vec![x; 3]), None);
    assert!(Frontier::from_parts(5, vec![x; 2]).is_some());
    assert_eq!(Frontier::from_parts(u64::MAX, vec![x; 63]), None);
    assert!(Frontier::from_parts(u64::MAX, vec![x; 64]).is_some());

    // A frontier picked up from its parts goes on as if it had been pushed all along.
    let leaves = numbered_leaves(13);
    let mut whole = Frontier::new();
    for leaf in &leaves[..6] {
        whole.push(*leaf, |_, _, _| {});
    }
    let mut resumed = Frontier::from_parts(6, whole.hashes().to_vec()).unwrap();
    for leaf in &leaves[6..] {
        whole.push(*leaf, |_, _, _| {});
        resumed.push(*leaf, |_, _, _| {});
    }
    assert_eq!(resumed, whole);
    assert_eq!(resumed.root(), root_at(&mem_tree(&leaves), 13).unwrap());
}

#[test]
fn frontier_at_the_top_of_u64() {
    let x = [7; 32];
    // 2^63 - 1 leaves: the next one completes one node on each level up to 63.
    let mut frontier = Frontier::from_parts((1 << 63) - 1, vec![x; 63]).unwrap();
    let mut events = Vec::new();
    frontier.push(x, |level, index, _| events.push((level, index)));
    let expected: Vec<(u8, u64)> = (1..=63)
        .map(|level| (level, (1 << (63 - level)) - 1))
        .collect();
    assert_eq!(events, expected);
    assert_eq!(frontier.size(), 1 << 63);
    assert_eq!(frontier.hashes().len(), 1);
    assert_eq!(frontier.root(), frontier.hashes()[0]);

    // u64::MAX leaves is as far as it goes.
    let mut full = Frontier::from_parts(u64::MAX - 1, vec![x; 63]).unwrap();
    full.push(x, |_, _, _| panic!("nothing completes"));
    assert_eq!(full.size(), u64::MAX);
    let before = full.clone();
    full.push(x, |_, _, _| panic!("nothing completes"));
    assert_eq!(full, before);
}

#[test]
fn mem_tree_basics() {
    let mut tree = MemTree::new();
    assert_eq!(tree.size(), 0);
    assert_eq!(root_at(&tree, 0).unwrap(), empty_root());
    tree.push([1; 32]);
    tree.push([2; 32]);
    tree.push([3; 32]);
    assert_eq!(tree.size(), 3);
    assert_eq!(tree.node(1, 0).unwrap(), node_hash(&[1; 32], &[2; 32]));
    assert_eq!(tree.node(0, 2).unwrap(), [3; 32]);
    // Nodes it does not hold read as zeros.
    assert_eq!(tree.node(1, 1).unwrap(), [0; 32]);
    assert_eq!(tree.node(9, 0).unwrap(), [0; 32]);
    assert_eq!(tree.node(0, u64::MAX).unwrap(), [0; 32]);
}

// ---------------------------------------------------------------------------------------------
// Cost.

/// A store that takes about a microsecond per node, as a database read might.
struct Slow<'a>(&'a MemTree);

impl Nodes for Slow<'_> {
    type Error = std::convert::Infallible;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        let start = Instant::now();
        while start.elapsed().as_nanos() < 1_000 {
            std::hint::spin_loop();
        }
        self.0.node(level, index)
    }
}

#[test]
fn proofs_read_few_nodes() {
    let (_, tree) = million();
    let size = MILLION;
    let bits = u64::from(64 - (size - 1).leading_zeros()); // ceil(log2(size)) = 20
    let nodes = Bounded::new(tree, size);
    let reads = |prove: &dyn Fn(&Bounded) -> Vec<Hash>| {
        nodes.reads.set(0);
        prove(&nodes);
        nodes.reads.get()
    };

    let mut inclusion_max = 0;
    let indices = (0..size)
        .step_by(9_973)
        .chain([1, 524_287, 524_288, size - 2, size - 1]);
    for index in indices {
        let count = reads(&|nodes| inclusion_proof(nodes, index, size).unwrap());
        inclusion_max = inclusion_max.max(count);
    }
    let mut consistency_max = 0;
    let olds = (1..size)
        .step_by(9_973)
        .chain([2, 3, 524_288, 524_289, size - 1]);
    for old in olds {
        let count = reads(&|nodes| consistency_proof(nodes, old, size).unwrap());
        consistency_max = consistency_max.max(count);
    }
    let root = reads(&|nodes| vec![root_at(nodes, size).unwrap()]);
    println!(
        "node reads at {size} leaves: inclusion <= {inclusion_max}, \
         consistency <= {consistency_max}, root {root}"
    );
    assert!(inclusion_max <= 2 * bits, "{inclusion_max}");
    assert!(consistency_max <= 2 * bits, "{consistency_max}");
    assert_eq!(root, u64::from(size.count_ones()));

    let slow = Slow(tree);
    let start = Instant::now();
    inclusion_proof(&slow, 123_457, size).unwrap();
    let inclusion_time = start.elapsed();
    let start = Instant::now();
    consistency_proof(&slow, 777_777, size).unwrap();
    let consistency_time = start.elapsed();
    println!(
        "with 1 µs per node read: inclusion {inclusion_time:?}, consistency {consistency_time:?}"
    );
}
