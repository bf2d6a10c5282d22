//! Rule 15 in process, with `now` as an argument: one member cannot exhaust the broker. Pending
//! requests per member are capped, `request` and `cert` are rate-limited with a retry-after
//! hint, refusals do not count against the rate, and a grant's certificates are capped.

use serde_json::Value;
use sshjit::broker::Broker;
use sshjit::datadir::{self, DataDir};
use sshjit::model::Timestamp;

const T0: i64 = 1_900_000_000;

struct Team {
    _tmp: tempfile::TempDir,
    broker: Broker,
    /// Fingerprints of olga (owner), adam (admin) and alice (viewer).
    olga: String,
    adam: String,
    alice: String,
    subject: String,
}

fn key() -> (String, String) {
    let k = sshjit::ca::generate_key("k").unwrap();
    let public = k.public_key();
    (
        sshjit::ca::fingerprint(public.key_data()),
        public.to_openssh().unwrap(),
    )
}

fn team() -> Team {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let now = Timestamp::from_unix(T0);
    let (olga, olga_pub) = key();
    datadir::init(&dir, "olga", &olga_pub, "127.0.0.1:0", now).unwrap();
    let broker = datadir::open(&dir).unwrap().broker;
    let (adam, adam_pub) = key();
    let (alice, alice_pub) = key();
    let t = Team {
        _tmp: tmp,
        broker,
        olga,
        adam,
        alice,
        subject: key().1,
    };
    for line in [
        format!("member add adam --role admin --key '{adam_pub}'"),
        format!("member add alice --role viewer --key '{alice_pub}'"),
        "host add web-01 --address 10.0.0.1 --login viewer=ro".into(),
    ] {
        t.ok(&t.olga, &line, 0);
    }
    t
}

impl Team {
    fn run(&self, who: &str, line: &str, at: i64) -> Result<Value, Value> {
        let out = self.broker.run_line(
            who,
            format!("{line} --json").as_bytes(),
            self.subject.as_bytes(),
            Timestamp::from_unix(T0 + at),
        );
        if out.status == 0 {
            Ok(serde_json::from_str(&out.stdout).unwrap())
        } else {
            Err(serde_json::from_str::<Value>(&out.stderr).unwrap()["error"].clone())
        }
    }

    fn ok(&self, who: &str, line: &str, at: i64) -> Value {
        self.run(who, line, at)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn refused(&self, who: &str, line: &str, at: i64) -> Value {
        self.run(who, line, at)
            .err()
            .unwrap_or_else(|| panic!("{line} was not refused"))
    }

    fn request(&self, at: i64) -> Result<u64, Value> {
        self.run(
            &self.alice,
            "request web-01 --role viewer --for 1h --reason 'INC-1 read the logs'",
            at,
        )
        .map(|r| r["id"].as_u64().unwrap())
    }
}

#[test]
fn pending_requests_per_member_are_capped_and_the_error_names_them() {
    let t = team();
    let ids: Vec<u64> = (0..10).map(|_| t.request(0).unwrap()).collect();
    let e = t.request(60).unwrap_err();
    assert_eq!(e["code"], "limit_reached", "{e}");
    let msg = e["message"].as_str().unwrap();
    let listed = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        msg.contains(&format!("10 pending requests ({listed})")),
        "{msg}"
    );
    assert!(msg.contains("cancel"), "{msg}");
    // Deciding one frees a place; so does expiry.
    t.ok(&t.alice, &format!("cancel {}", ids[0]), 61);
    t.request(62).unwrap();
    assert_eq!(t.request(120).unwrap_err()["code"], "limit_reached");
    t.ok(&t.adam, &format!("approve {}", ids[1]), 121);
    t.request(150).unwrap();
    // An hour later (the pending TTL), the rest have expired and no longer count.
    t.request(3700).unwrap();
}

#[test]
fn request_is_rate_limited_with_a_retry_after_and_refusals_do_not_count() {
    let t = team();
    // Refused requests (an unknown host) are free.
    for _ in 0..15 {
        let e = t.refused(
            &t.alice,
            "request web-99 --role viewer --for 1h --reason 'INC-1 x y z'",
            0,
        );
        assert_eq!(e["code"], "not_found");
    }
    for _ in 0..10 {
        let id = t.request(0).unwrap();
        t.ok(&t.alice, &format!("cancel {id}"), 0);
    }
    let e = t.request(0).unwrap_err();
    assert_eq!(e["code"], "busy", "{e}");
    assert_eq!(e["retry_after_secs"], 30, "{e}");
    assert!(e["message"].as_str().unwrap().contains("try again in 30s"));
    // Other members are not slowed by alice.
    let other = t.run(
        &t.adam,
        "request web-01 --role viewer --for 1h --reason 'INC-1 x y z'",
        0,
    );
    assert!(other.is_ok(), "{other:?}");
    assert_eq!(t.request(29).unwrap_err()["code"], "busy");
    t.request(30).unwrap();
    assert_eq!(t.request(31).unwrap_err()["retry_after_secs"], 29);
}

#[test]
fn cert_is_rate_limited_and_each_grant_gets_a_limited_number() {
    let t = team();
    let a = t.request(0).unwrap();
    let b = t.request(0).unwrap();
    t.ok(&t.adam, &format!("approve {a}"), 1);
    t.ok(&t.adam, &format!("approve {b}"), 1);
    for _ in 0..15 {
        t.ok(&t.alice, &format!("cert {a}"), 2);
    }
    for _ in 0..5 {
        t.ok(&t.alice, &format!("cert {b}"), 2);
    }
    let e = t.refused(&t.alice, &format!("cert {b}"), 2);
    assert_eq!(e["code"], "busy", "{e}");
    assert_eq!(e["retry_after_secs"], 6, "{e}");
    for i in 0..5 {
        t.ok(&t.alice, &format!("cert {a}"), 8 + 6 * i);
    }
    let e = t.refused(&t.alice, &format!("cert {a}"), 600);
    assert_eq!(e["code"], "limit_reached", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&format!("request {a} has had 20 certificates")),
        "{e}"
    );
    // The count is the grant's: the other grant still issues.
    let shown = t.ok(&t.olga, &format!("show {a}"), 600);
    assert_eq!(shown["grant"]["certificates"], 20);
    assert_eq!(shown["certificates"].as_array().unwrap().len(), 20);
    t.ok(&t.alice, &format!("cert {b}"), 600);
    assert!(t.broker.store().verify_audit().unwrap().ok);
}

#[test]
fn own_key_changes_are_rate_limited_and_keys_are_capped() {
    let t = team();
    let add = |at: i64| {
        let line = format!("member key-add alice --key '{}'", key().1);
        t.run(&t.alice, &line, at)
    };
    for _ in 0..10 {
        add(0).unwrap();
    }
    let e = add(0).unwrap_err();
    assert_eq!(e["code"], "busy", "{e}");
    assert_eq!(e["retry_after_secs"], 30, "{e}");
    // Refusals are free: an unknown fingerprint does not use the rate up.
    for at in [30, 60, 90, 120, 150] {
        let e = t.refused(
            &t.alice,
            "member key-remove alice --fingerprint SHA256:nope",
            at,
        );
        assert_eq!(e["code"], "not_found");
        add(at).unwrap();
    }
    // 16 keys now: one more is refused whatever the rate.
    let e = add(3600).unwrap_err();
    assert_eq!(e["code"], "invalid_state", "{e}");
    assert!(e["message"].as_str().unwrap().contains("16 keys"), "{e}");
    let me = t.ok(&t.alice, "whoami", 3600);
    assert_eq!(me["key_fingerprints"].as_array().unwrap().len(), 16);
}
