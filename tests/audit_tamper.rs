//! Tampering with the audit log: any change, deletion, insertion or reordering is caught at the
//! right sequence number, both in exported chains (property test) and inside the sled database.

use std::process::Command;

use proptest::prelude::*;
use sshjit::audit::{AuditEvent, GENESIS, Verifier, seal};
use sshjit::datadir::{self, DataDir};
use sshjit::model::Timestamp;

fn chain(n: usize) -> Vec<Vec<u8>> {
    let mut prev = GENESIS;
    (1..=n as u64)
        .map(|seq| {
            let event = AuditEvent::RequestDenied {
                id: seq,
                by: format!("m{}", seq % 3),
                reason: format!("r{seq}"),
            };
            let (raw, h) = seal(
                seq,
                Timestamp::from_unix(1_800_000_000 + seq as i64),
                "olga",
                &event,
                &prev,
            )
            .unwrap();
            prev = h;
            raw
        })
        .collect()
}

fn first_bad(entries: &[Vec<u8>]) -> Option<u64> {
    let mut v = Verifier::default();
    entries.iter().for_each(|e| v.push(e));
    v.finish().first_bad_seq
}

#[derive(Debug, Clone)]
enum Tamper {
    /// Change one character of entry k's JSON (keeping it JSON where possible).
    Change {
        k: usize,
        at: usize,
    },
    Delete {
        k: usize,
    },
    /// Insert a copy of entry j before entry k.
    Insert {
        k: usize,
        j: usize,
    },
    Swap {
        k: usize,
    },
}

fn tamper() -> impl Strategy<Value = (usize, Tamper)> {
    (3usize..30).prop_flat_map(|n| {
        let change = (0..n, any::<usize>()).prop_map(|(k, at)| Tamper::Change { k, at });
        let delete = (0..n - 1).prop_map(|k| Tamper::Delete { k });
        let insert = (0..n, 0..n)
            .prop_filter("a copy of itself is caught one later", |(k, j)| k != j)
            .prop_map(|(k, j)| Tamper::Insert { k, j });
        let swap = (0..n - 1).prop_map(|k| Tamper::Swap { k });
        (Just(n), prop_oneof![change, delete, insert, swap])
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_tampering_is_caught_at_the_right_entry((n, t) in tamper()) {
        let mut c = chain(n);
        prop_assert_eq!(first_bad(&c), None);
        let k = match t {
            Tamper::Change { k, at } => {
                let s = String::from_utf8(c[k].clone()).unwrap();
                // Flip a character inside a value: a letter or digit somewhere in the entry.
                let spots: Vec<usize> = s.char_indices().filter(|(_, ch)| ch.is_ascii_alphanumeric()).map(|(i, _)| i).collect();
                let i = spots[at % spots.len()];
                let mut b = s.into_bytes();
                b[i] = if b[i] == b'1' { b'2' } else if b[i].is_ascii_digit() { b'1' } else if b[i] == b'a' { b'b' } else { b'a' };
                c[k] = b;
                k
            }
            Tamper::Delete { k } => { c.remove(k); k }
            Tamper::Insert { k, j } => { let e = c[j].clone(); c.insert(k, e); k }
            Tamper::Swap { k } => { c.swap(k, k + 1); k }
        };
        prop_assert_eq!(first_bad(&c), Some(k as u64 + 1));
    }
}

/// Tampering inside sled itself, found online-style and by the offline CLI.
#[test]
fn tampering_with_the_database_is_named_by_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let key = sshjit::ca::generate_key("o")
        .unwrap()
        .public_key()
        .to_openssh()
        .unwrap();
    let t0 = Timestamp::from_unix(1_900_000_000);
    datadir::init(&dir, "olga", &key, "127.0.0.1:0", t0).unwrap();
    let fp = sshjit::ca::fingerprint(sshjit::ca::parse_public_key(&key).unwrap().key_data());
    {
        let opened = datadir::open(&dir).unwrap();
        for i in 0..6 {
            let line = format!("host add h{i} --address 10.0.0.{i} --login viewer=ro");
            assert_eq!(
                opened.broker.run_line(&fp, line.as_bytes(), b"", t0).status,
                0
            );
        }
        let store = opened.broker.store();
        assert!(store.verify_audit().unwrap().ok);
        assert_eq!(store.audit_len().unwrap(), 8);
        // Rewrite entry 4's address in place.
        let raw = store.audit_entry(4).unwrap().unwrap();
        let forged = String::from_utf8(raw.clone())
            .unwrap()
            .replace("10.0.0.1", "10.6.6.6");
        assert_ne!(forged.as_bytes(), &raw[..]);
        store
            .danger_put_audit_entry(4, Some(forged.as_bytes()))
            .unwrap();
        let r = store.verify_audit().unwrap();
        assert_eq!((r.ok, r.first_bad_seq, r.entries), (false, Some(4), 3));
        // Put it back, then drop the tail: the recorded head catches it.
        store.danger_put_audit_entry(4, Some(&raw)).unwrap();
        assert!(store.verify_audit().unwrap().ok);
        store.danger_put_audit_entry(8, None).unwrap();
        assert_eq!(store.verify_audit().unwrap().first_bad_seq, Some(8));
        store.danger_put_audit_entry(6, None).unwrap();
        assert_eq!(store.verify_audit().unwrap().first_bad_seq, Some(6));
        store.flush().unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sshjit-broker"))
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(&dir.root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_seq"], 6);
}
