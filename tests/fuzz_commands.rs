//! No exec line crashes the broker: random bytes and random sequences of real command words,
//! from members and strangers alike, always get an answer, and the audit chain stays intact.

use std::sync::OnceLock;

use proptest::prelude::*;
use sshjit::broker::Broker;
use sshjit::datadir::{self, DataDir};
use sshjit::model::Timestamp;

const T0: i64 = 1_900_000_000;

/// (fingerprint, public key) for olga (owner), alice (viewer) and a stranger.
fn keys() -> &'static Vec<(String, String)> {
    static KEYS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    KEYS.get_or_init(|| {
        ["olga", "alice", "stranger"]
            .iter()
            .map(|n| {
                let k = sshjit::ca::generate_key(n).unwrap();
                let public = k.public_key().to_openssh().unwrap();
                (sshjit::ca::fingerprint(k.public_key().key_data()), public)
            })
            .collect()
    })
}

fn broker() -> (tempfile::TempDir, Broker) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let k = keys();
    let t0 = Timestamp::from_unix(T0);
    datadir::init(&dir, "olga", &k[0].1, "127.0.0.1:0", t0).unwrap();
    let b = datadir::open(&dir).unwrap().broker;
    for (who, line) in [
        (
            0,
            format!("member add alice --role viewer --key '{}'", k[1].1),
        ),
        (
            0,
            "host add web-01 --address 10.0.0.5 --login viewer=ro --login editor=deploy"
                .to_string(),
        ),
        (
            1,
            "request web-01 --role editor --for 1h --reason 'INC-1 seed request'".to_string(),
        ),
    ] {
        let out = b.run_line(&k[who].0, line.as_bytes(), b"", t0);
        assert_eq!(out.status, 0, "{line}: {out:?}");
    }
    (tmp, b)
}

const WORDS: &[&str] = &[
    "whoami",
    "ca-pubkey",
    "request",
    "status",
    "show",
    "cancel",
    "requests",
    "approve",
    "deny",
    "cert",
    "member",
    "host",
    "host-config",
    "audit",
    "add",
    "list",
    "remove",
    "log",
    "verify",
    "export",
    "help",
    "--json",
    "--role",
    "--for",
    "--reason",
    "--start",
    "--state",
    "--limit",
    "--key",
    "--address",
    "--port",
    "--tag",
    "--login",
    "--approvals",
    "--comment",
    "--dir",
    "--script",
    "--help",
    "web-01",
    "alice",
    "olga",
    "editor",
    "viewer",
    "admin",
    "owner",
    "1",
    "2",
    "0",
    "-1",
    "99999999999999999999",
    "1h",
    "5m",
    "25h",
    "'",
    "\"",
    "\\",
    "'INC-2 x y'",
    "editor=deploy",
    "viewer=ro",
    "/etc/ssh",
    "+30m",
    "2001-01-01T00:00:00Z",
    "ssh-ed25519",
    "AAAA",
    "\u{7}",
    "é",
    "",
];

fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        prop::collection::vec(prop::sample::select(WORDS), 0..10)
            .prop_map(|w| w.join(" ").into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn any_line_gets_an_answer_and_the_chain_holds(
        lines in prop::collection::vec((0usize..3, line(), 0u64..7200), 1..40)
    ) {
        let (_tmp, b) = broker();
        for (who, l, dt) in lines {
            let out = b.run_line(&keys()[who].0, &l, b"", Timestamp::from_unix(T0).plus(dt));
            // Every answer says something: output on success, an error otherwise.
            if out.status == 0 {
                prop_assert!(!out.stdout.is_empty() || l.is_empty(), "silent success for {:?}", String::from_utf8_lossy(&l));
            } else {
                prop_assert!(out.stderr.starts_with("error: ") || out.stderr.starts_with("{\"error\""), "{:?}", out);
            }
            if who == 2 {
                prop_assert!(out.status != 0 || out.stdout.contains("Usage") || out.stdout.contains("Commands"),
                    "a stranger's command ran: {:?}", String::from_utf8_lossy(&l));
            }
        }
        prop_assert!(b.store().verify_audit().unwrap().ok);
    }
}
