//! Tests of the audit log in the store: proofs against the tree in memory, building and
//! converting the tiles, and what `verify` names when a tile or the head is changed.

use super::*;
use crate::merkle::MemTree;

fn append(store: &Store, n: u64) {
    for i in 0..n {
        let at = Timestamp::from_unix(1_900_000_000 + i as i64);
        store
            .commit(at, "t", |_| Ok(((), vec![AuditEvent::NotifyTest {}])))
            .unwrap();
    }
}

/// A store in a temp dir (kept as long as the store is used) holding `n` entries.
fn with_entries(n: u64) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    append(&store, n);
    (dir, store)
}

fn in_memory(store: &Store) -> MemTree {
    let mut t = MemTree::new();
    for raw in store.audit_raw(0) {
        t.push(merkle::leaf_hash(&raw.unwrap()));
    }
    t
}

#[test]
fn stored_proofs_match_the_whole_tree_in_memory() {
    let (_dir, store) = with_entries(70);
    let m = in_memory(&store);
    for size in 1..=70u64 {
        let root = merkle::root_at(&m, size).unwrap();
        assert_eq!(store.audit_root(size).unwrap(), root, "size {size}");
        for seq in [1, size / 2 + 1, size] {
            let proof = store.audit_inclusion(seq, size).unwrap();
            assert_eq!(proof, merkle::inclusion_proof(&m, seq - 1, size).unwrap());
        }
        for old in [0, 1, size / 3, size] {
            let proof = store.audit_consistency(old, size).unwrap();
            assert_eq!(proof, merkle::consistency_proof(&m, old, size).unwrap());
        }
    }
    assert!(matches!(
        store.audit_root(71),
        Err(Error::BeyondLog {
            size: 70,
            asked: 71
        })
    ));
    assert!(matches!(
        store.audit_inclusion(0, 70),
        Err(Error::BeyondLog { asked: 0, .. })
    ));
    assert!(store.verify_audit().unwrap().ok);
}

#[test]
fn a_log_written_before_the_tree_gets_it_built_once() {
    let (_dir, store) = with_entries(37);
    let root = store.audit_root(37).unwrap();
    // The head and tree as a database from before the tree has them.
    let head = store.t.meta.get(HEAD).unwrap().unwrap();
    store.t.meta.insert(HEAD, &head[..40]).unwrap();
    store.t.tiles.clear().unwrap();
    assert!(matches!(
        store.commit(Timestamp::from_unix(0), "t", |_| Ok((
            (),
            vec![AuditEvent::NotifyTest {}]
        ))),
        Err(Error::Internal(_))
    ));
    assert!(store.verify_audit().unwrap().ok);
    store.build_tree().unwrap();
    assert_eq!(store.audit_root(37).unwrap(), root);
    append(&store, 5);
    assert_eq!(
        store.audit_root(42).unwrap(),
        merkle::root_at(&in_memory(&store), 42).unwrap()
    );
    assert!(store.verify_audit().unwrap().ok);
}

#[test]
fn a_tree_stored_node_by_node_is_put_in_tiles_once() {
    let (_dir, store) = with_entries(70);
    let m = in_memory(&store);
    // A database from before tiles: its nodes one per key (no longer read), no tiles.
    store.t.tiles.clear().unwrap();
    store
        .t
        .tree
        .insert(node_key(1, 0), &m.node(1, 0).unwrap()[..])
        .unwrap();
    // Offline, before a broker of this version has served it: the entries and the head are
    // checked, and the missing tiles are not taken for tampering.
    assert!(store.verify_audit().unwrap().ok);
    store.build_tree().unwrap();
    // 70 entries: level 1 has tiles 0-2, level 2 tiles 0-1 (17 nodes), level 6 one node.
    for size in [2, 17, 32, 45, 64, 70] {
        assert_eq!(
            store.audit_root(size).unwrap(),
            merkle::root_at(&m, size).unwrap()
        );
    }
    assert!(store.verify_audit().unwrap().ok);
    // Once is enough: another start leaves the tiles as they are.
    let tiles: Vec<_> = store.t.tiles.range::<&[u8]>(..).collect();
    store.build_tree().unwrap();
    let again: Vec<_> = store.t.tiles.range::<&[u8]>(..).collect();
    assert_eq!(format!("{tiles:?}"), format!("{again:?}"));
    // A build a crash cut short (the last tiles are written last): the next start builds
    // again.
    store.t.tiles.remove(tile_key(2, 16)).unwrap();
    store.build_tree().unwrap();
    let rebuilt: Vec<_> = store.t.tiles.range::<&[u8]>(..).collect();
    assert_eq!(format!("{tiles:?}"), format!("{rebuilt:?}"));
    append(&store, 3);
    assert_eq!(
        store.audit_root(73).unwrap(),
        merkle::root_at(&in_memory(&store), 73).unwrap()
    );
}

#[test]
fn a_tree_in_tiles_that_disagrees_with_the_head_is_refused() {
    let (_dir, store) = with_entries(9);
    store.t.tiles.clear().unwrap();
    // An entry changed under the head: its tree no longer gives the recorded frontier.
    let mut raw = store.audit_entry(3).unwrap().unwrap();
    let last = raw.len() - 2;
    raw[last] ^= 1;
    store.danger_put_audit_entry(3, Some(&raw)).unwrap();
    assert!(matches!(store.build_tree(), Err(Error::Storage(_))));
    // Nothing was written, so the next start refuses again instead of serving that tree.
    assert!(store.t.tiles.range::<&[u8]>(..).next().is_none());
    assert!(matches!(store.build_tree(), Err(Error::Storage(_))));
}

#[test]
fn a_changed_tree_node_or_frontier_is_named_by_verify() {
    let (_dir, store) = with_entries(40);
    // Level 1 holds 20 nodes: tiles 0 (nodes 0-15) and 1 (16-19).
    for (index, nodes) in [(0, 16), (18, 4)] {
        let tile = store.t.tiles.get(tile_key(1, index)).unwrap().unwrap();
        assert_eq!(tile.len(), 32 * nodes);
        let mut bad = tile.clone();
        bad[tile_offset(index)] ^= 1;
        store.t.tiles.insert(tile_key(1, index), bad).unwrap();
        let r = store.verify_audit().unwrap();
        assert!(!r.ok);
        assert!(
            r.problem
                .unwrap()
                .contains(&format!("level 1, index {index} "))
        );
        store.t.tiles.insert(tile_key(1, index), tile).unwrap();
        assert!(store.verify_audit().unwrap().ok);
    }
    // A tile cut short: verify names its first missing node, and appending refuses.
    let tile = store.t.tiles.get(tile_key(1, 16)).unwrap().unwrap();
    store.t.tiles.insert(tile_key(1, 16), &tile[..64]).unwrap();
    let r = store.verify_audit().unwrap();
    assert!(r.problem.unwrap().contains("level 1, index 18 "));
    append(&store, 1);
    assert!(matches!(
        store.commit(Timestamp::from_unix(0), "t", |_| Ok((
            (),
            vec![AuditEvent::NotifyTest {}]
        ))),
        Err(Error::Internal(_))
    ));
    store.t.tiles.insert(tile_key(1, 16), tile.clone()).unwrap();
    assert!(store.verify_audit().unwrap().ok);
    // A last tile that runs on past the head is named too.
    let mut longer = tile.clone();
    longer.extend_from_slice(&[7u8; 32]);
    store.t.tiles.insert(tile_key(1, 16), longer).unwrap();
    let r = store.verify_audit().unwrap();
    assert!(
        r.problem
            .unwrap()
            .contains("tiles do not end where the head says")
    );
    store.t.tiles.insert(tile_key(1, 16), tile).unwrap();
    assert!(store.verify_audit().unwrap().ok);
    let mut head = store.t.meta.get(HEAD).unwrap().unwrap().to_vec();
    let last = head.len() - 1;
    head[last] ^= 1;
    store.t.meta.insert(HEAD, head).unwrap();
    let r = store.verify_audit().unwrap();
    assert!(r.problem.unwrap().contains("recorded in the head"));
}
