//! Rules, break-glass, review, escalation and bots, end to end: over real SSH with stock `ssh`
//! against the daemon (and a real sshd for a rule-approved login), and in process for the
//! concurrency of rule use caps.

mod util;

use std::time::Duration;

use serde_json::Value;
use sshjit::datadir::{self, DataDir};
use sshjit::model::Timestamp;
use util::{Broker, current_user, free_port};

const WHY: &str = "--reason 'INC-9 the database is down'";

/// Every audit event of `b`, in order.
fn events(b: &Broker) -> Vec<Value> {
    b.ssh(&b.owner, "audit export")
        .ok()
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
        .collect()
}

#[test]
fn a_rule_approves_a_dev_request_and_its_certificate_logs_in() {
    let b = Broker::start_new();
    let me = current_user();
    let alice = b.add_member("alice", "viewer");
    let adam = b.add_member("adam", "admin");
    let port = free_port();
    b.ssh(
        &b.owner,
        &format!("host add dev-01 --address 127.0.0.1 --port {port} --login viewer={me} --tag dev"),
    )
    .ok();
    b.ssh(
        &b.owner,
        "host add prod-01 --address 10.0.0.9 --login viewer=ro --tag prod --approvals 2",
    )
    .ok();
    let added = b
        .ssh(
            &b.owner,
            "rule add dev-short --tag dev --max-duration 2h --max-risk 50 --max-uses 10 --per 24h",
        )
        .ok()
        .stdout;
    assert!(added.contains("every host tagged dev"), "{added}");
    let sshd = b.host_sshd("dev-01", port);

    let (id, key, cert) = b.granted_cert_by_rule(
        &alice,
        "request dev-01 --role viewer --for 1h --reason 'INC-1 read the dev logs' --json",
        "dev-key",
    );
    let out = sshd.login(b.tmp.path(), &key.key, &me, "id -un");
    assert_eq!(out.stdout.trim(), me, "{out:?}\n{}", sshd.log());
    assert_eq!(
        cert["principals"],
        serde_json::json!([format!("{me}@dev-01")])
    );
    let req = b.json(&format!("show {id}"));
    assert_eq!(req["approved_by_rule"]["rule"], "dev-short", "{req}");
    assert!(req["approvals"].as_array().unwrap().is_empty());
    let approved = events(&b)
        .into_iter()
        .find(|e| e["type"] == "request_approved" && e["id"] == id)
        .unwrap();
    assert_eq!(approved["by"], "rule:dev-short");
    assert!(
        approved["matched"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "duration 1h <= 2h"),
        "{approved}"
    );
    assert_eq!(b.json("rule show dev-short")["uses_left"], 9);
    // The helper with --wait: approved at once, so the certificate comes straight away.
    let person = util::Person::new(&b, &alice);
    let out = person.helper(&[
        "--accept-new-broker-key",
        "request",
        "dev-01",
        "--role",
        "viewer",
        "--for",
        "30m",
        "--reason",
        "INC-1 read the dev logs again",
        "--wait",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("approved at once by rule dev-short")
            && out.stdout.contains("certificate for dev-01"),
        "{out:?}"
    );
    assert_eq!(b.json("rule show dev-short")["uses_left"], 8);
    // Longer than the rule allows, or on a host needing two people: waits for people.
    let long = b
        .ssh(
            &alice,
            "request dev-01 --role viewer --for 3h --reason 'INC-1 read the dev logs' --json",
        )
        .ok()
        .json();
    assert_eq!(long["state"], "pending");
    // An owner's rule on a dual-approval host still never approves it.
    b.ssh(&b.owner, "rule add prod-all --target prod-01").ok();
    let prod = b
        .ssh(
            &alice,
            "request prod-01 --role viewer --for 1h --reason 'INC-1 read the prod logs' --json",
        )
        .ok()
        .json();
    assert_eq!(
        (prod["state"].as_str(), prod["approvals_required"].as_u64()),
        (Some("pending"), Some(2))
    );
    // Only owners make rules.
    let out = b.ssh(&adam, "rule add mine --target dev-01 --json");
    assert_eq!(out.error_code(), "permission_denied", "{out:?}");
}

#[test]
fn break_glass_grants_at_once_and_waits_for_a_review() {
    let b = Broker::start_new();
    let ed = b.add_member("ed", "editor");
    let adam = b.add_member("adam", "admin");
    let alice = b.add_member("alice", "viewer");
    b.ssh(
        &b.owner,
        "host add db-01 --address 10.0.0.7 --login editor=dba --tag prod --approvals 2 --break-glass",
    )
    .ok();
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login editor=deploy",
    )
    .ok();
    let line = format!("request db-01 --role editor --for 30m {WHY} --break-glass --json");
    let r = b.ssh(&ed, &line).ok().json();
    assert_eq!(
        (r["state"].as_str(), r["break_glass"].as_bool()),
        (Some("approved"), Some(true)),
        "{r}"
    );
    assert_eq!(r["grant"]["status"], "active");
    assert!(r["approvals"].as_array().unwrap().is_empty());
    let id = r["id"].as_u64().unwrap();
    assert!(
        r["risk"]["factors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["factor"] == "break-glass")
    );
    let key = util::keygen(b.tmp.path(), "glass");
    let cert = b
        .ssh_stdin(&ed, &format!("cert {id} --json"), key.public.as_bytes())
        .ok()
        .json();
    assert_eq!(cert["principals"], serde_json::json!(["dba@db-01"]));
    assert!(
        events(&b)
            .iter()
            .any(|e| e["type"] == "break_glass" && e["id"] == id)
    );

    // It waits for review; the requester and non-approvers cannot give it.
    let waiting = b.json("requests --review");
    assert_eq!(waiting[0]["id"], id);
    let table = b.ssh(&adam, "requests --review").ok().stdout;
    assert!(table.contains("BREAK-GLASS, review due by"), "{table}");
    let out = b.ssh(
        &ed,
        &format!("review {id} --ok --comment 'it was me' --json"),
    );
    assert_eq!(out.error_code(), "permission_denied", "{out:?}");
    let own = b
        .ssh(
            &b.owner,
            &format!("request web-01 --role editor --for 30m {WHY} --json"),
        )
        .ok()
        .json();
    let out = b.ssh(
        &adam,
        &format!("review {} --ok --comment 'x' --json", own["id"]),
    );
    assert!(out.stderr.contains("is not a break-glass grant"), "{out:?}");
    let done = b
        .ssh(
            &adam,
            &format!(
                "review {id} --flag --comment 'INC-9 confirmed; follow up on the runbook' --json"
            ),
        )
        .ok()
        .json();
    assert_eq!(done["review"]["verdict"], "flagged");
    assert!(b.json("requests --review").as_array().unwrap().is_empty());
    let out = b.ssh(&adam, &format!("review {id} --ok --comment again --json"));
    assert!(out.stderr.contains("already reviewed"), "{out:?}");

    // Who may not break glass, and how not.
    for (who, line, code, says) in [
        (
            &alice,
            format!("request db-01 --role editor --for 30m {WHY} --break-glass"),
            "permission_denied",
            "base role is editor or higher",
        ),
        (
            &ed,
            format!("request web-01 --role editor --for 30m {WHY} --break-glass"),
            "permission_denied",
            "does not allow break-glass",
        ),
        (
            &ed,
            "request db-01 --role editor --for 30m --reason 'the database is down' --break-glass"
                .to_string(),
            "invalid_argument",
            "incident or ticket reference",
        ),
        (
            &ed,
            format!("request db-01 --role editor --for 2h {WHY} --break-glass"),
            "limit_reached",
            "break-glass lasts at most 1h",
        ),
    ] {
        let out = b.ssh(who, &format!("{line} --json"));
        assert_eq!(out.error_code(), code, "{line}: {out:?}");
        assert!(out.stderr.contains(says), "{line}: {out:?}");
    }
    assert_eq!(b.json("audit verify")["ok"], true);
}

/// Needs a minute to pass on the broker's clock: the review window and the escalation are set
/// to their shortest (60 s).
#[test]
fn an_overdue_review_blocks_break_glass_and_an_escalated_request_is_listed_first() {
    let b = Broker::start_with_config(&[("review_within_secs", "60")]);
    let ed = b.add_member("ed", "editor");
    let alice = b.add_member("alice", "viewer");
    let adam = b.add_member("adam", "admin");
    b.ssh(
        &b.owner,
        "host add db-01 --address 10.0.0.7 --login editor=dba --login viewer=ro --break-glass --escalate-after 1m",
    )
    .ok();
    let glass = b
        .ssh(
            &ed,
            &format!("request db-01 --role editor --for 30m {WHY} --break-glass --json"),
        )
        .ok()
        .json();
    let first = b
        .ssh(
            &alice,
            "request db-01 --role viewer --for 1h --reason 'INC-3 read the slow log' --json",
        )
        .ok()
        .json();
    let second = b
        .ssh(
            &ed,
            "request db-01 --role viewer --for 1h --reason 'INC-3 read the slow log too' --json",
        )
        .ok()
        .json();
    assert_eq!(first["escalated"], false);
    std::thread::sleep(Duration::from_secs(62));

    // The review is overdue: no more break-glass for ed until it is reviewed.
    let out = b.ssh(
        &ed,
        &format!("request db-01 --role editor --for 30m {WHY} --break-glass --json"),
    );
    assert_eq!(out.error_code(), "invalid_state", "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "review of your break-glass grant(s) {} is overdue",
            glass["id"]
        )),
        "{out:?}"
    );
    let review = b.ssh(&adam, "requests --review").ok().stdout;
    assert!(review.contains("review OVERDUE since"), "{review}");

    // Both pending requests escalated; escalated ones come first, ahead of decided ones.
    let list = b.json("requests");
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids[..2],
        [
            first["id"].as_u64().unwrap(),
            second["id"].as_u64().unwrap()
        ],
        "{list}"
    );
    assert_eq!(list[0]["escalated"], true);
    let table = b.ssh(&adam, "requests").ok().stdout;
    assert!(
        table.lines().nth(1).unwrap().contains("ESCALATED"),
        "{table}"
    );
    // Escalated still needs its approval.
    assert_eq!(list[0]["state"], "pending");

    // Reviewed late, the next break-glass goes through.
    let done = b
        .ssh(
            &adam,
            &format!(
                "review {} --ok --comment 'INC-9 was real' --json",
                glass["id"]
            ),
        )
        .ok()
        .json();
    assert_eq!(done["review"]["late"], true);
    b.ssh(
        &ed,
        &format!("request db-01 --role editor --for 30m {WHY} --break-glass"),
    )
    .ok();
}

#[test]
fn a_bot_is_decided_by_rules_alone() {
    let b = Broker::start_new();
    let bot_key = util::keygen(b.tmp.path(), "deployer");
    let added = b
        .ssh(
            &b.owner,
            &format!(
                "member add deployer --kind bot --role editor --key '{}' --json",
                bot_key.public
            ),
        )
        .ok()
        .json();
    assert_eq!(added["kind"], "bot");
    let out = b.ssh(
        &b.owner,
        &format!(
            "member add bossbot --kind bot --role admin --key '{}' --json",
            util::keygen(b.tmp.path(), "bb").public
        ),
    );
    assert!(out.stderr.contains("bots never approve"), "{out:?}");
    b.ssh(
        &b.owner,
        "host add q-01 --address 10.0.0.3 --login editor=deploy --tag queue",
    )
    .ok();
    b.ssh(
        &b.owner,
        "host add q-02 --address 10.0.0.4 --login editor=deploy --tag queue",
    )
    .ok();
    b.ssh(&b.owner, "fleet add queue --tag queue").ok();
    b.ssh(
        &b.owner,
        "command add restart-workers --fleet queue --run 'systemctl restart worker' --login deploy",
    )
    .ok();
    b.ssh(&b.owner, "rule add pipeline --command restart-workers --kind bot --max-duration 30m --max-uses 20 --per 1h").ok();

    let r = b
        .ssh(
            &bot_key,
            "request restart-workers --for 15m --reason 'DEPLOY-77 roll the workers' --json",
        )
        .ok()
        .json();
    assert_eq!(
        (r["state"].as_str(), r["requester_kind"].as_str()),
        (Some("approved"), Some("bot")),
        "{r}"
    );
    let id = r["id"].as_u64().unwrap();
    let key = util::keygen(b.tmp.path(), "bot-cert");
    let cert = b
        .ssh_stdin(
            &bot_key,
            &format!("cert {id} --json"),
            key.public.as_bytes(),
        )
        .ok()
        .json();
    assert_eq!(cert["key_id"], format!("sshjit:{id}:bot:deployer"));
    // No rule covers it: refused at once, with the reason; never left for a person.
    let out = b.ssh(
        &bot_key,
        "request queue --role editor --for 15m --reason 'DEPLOY-77 look around' --json",
    );
    assert_eq!(out.error_code(), "permission_denied", "{out:?}");
    assert!(
        out.stderr.contains(
            "decided by rules alone (rule pipeline: fleet queue is not among its targets or tags)"
        ),
        "{out:?}"
    );
    assert!(
        b.json("requests --state pending")
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Longer than bots get, and break-glass: refused.
    let out = b.ssh(
        &bot_key,
        "request restart-workers --for 2h --reason 'DEPLOY-77 x' --json",
    );
    assert!(out.stderr.contains("bots get at most 1h"), "{out:?}");
    // A bot approves nothing.
    let alice = b.add_member("alice", "viewer");
    let pending = b
        .ssh(
            &alice,
            "request q-01 --role editor --for 1h --reason 'INC-5 check the worker' --json",
        )
        .ok()
        .json();
    let out = b.ssh(&bot_key, &format!("approve {} --json", pending["id"]));
    assert_eq!(out.error_code(), "permission_denied", "{out:?}");
}

/// A rule capped at 5 uses, asked by 12 members at once: exactly 5 are approved by it.
#[test]
fn a_rule_cap_holds_under_concurrent_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let t0 = Timestamp::from_unix(1_900_000_000);
    let key = |n: &str| {
        let k = sshjit::ca::generate_key(n).unwrap();
        (
            k.public_key().to_openssh().unwrap(),
            sshjit::ca::fingerprint(k.public_key().key_data()),
        )
    };
    let olga = key("olga");
    datadir::init_on(
        &dir,
        "olga",
        &olga.0,
        "127.0.0.1:0",
        &util::test_store(),
        t0,
    )
    .unwrap();
    let broker = datadir::open(&dir).unwrap().broker;
    let run = |fp: &str, line: &str| broker.run_line(fp, line.as_bytes(), b"", t0);
    let members: Vec<(String, String)> = (0..12).map(|i| key(&format!("m{i}"))).collect();
    for (i, (public, _)) in members.iter().enumerate() {
        assert_eq!(
            run(
                &olga.1,
                &format!("member add m{i} --role viewer --key '{public}'")
            )
            .status,
            0
        );
    }
    assert_eq!(
        run(
            &olga.1,
            "host add dev-01 --address 10.0.0.1 --login viewer=ro --tag dev"
        )
        .status,
        0
    );
    assert_eq!(
        run(&olga.1, "rule add five --tag dev --max-uses 5 --per 24h").status,
        0
    );
    let states: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .map(|(_, fp)| {
                s.spawn(|| {
                    let out = run(fp, "request dev-01 --role viewer --for 1h --reason 'INC-2 look at the dev box' --json");
                    assert_eq!(out.status, 0, "{out:?}");
                    serde_json::from_str::<Value>(&out.stdout).unwrap()["state"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        states.iter().filter(|s| *s == "approved").count(),
        5,
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| *s == "pending").count(),
        7,
        "{states:?}"
    );
    let rule: Value = serde_json::from_str(&run(&olga.1, "rule show five --json").stdout).unwrap();
    assert_eq!(rule["uses_left"], 0);
    assert!(broker.store().verify_audit().unwrap().ok);
}

/// The risk factors of a request's answer that count recent denials.
fn denial_factors(answer: &Value) -> Vec<Value> {
    answer["risk"]["factors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["factor"].as_str().unwrap().contains("denial"))
        .cloned()
        .collect()
}

const ASK: &str =
    "request web-01 --role viewer --for 1h --reason 'INC-4 read the access log' --json";

/// alice (viewer) asks twice and adam (admin) denies both.
fn two_denials(b: &Broker) -> util::Identity {
    let alice = b.add_member("alice", "viewer");
    let adam = b.add_member("adam", "admin");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login viewer=ro",
    )
    .ok();
    assert_eq!(
        denial_factors(&b.ssh(&alice, ASK).ok().json()),
        Vec::<Value>::new()
    );
    // The first is still pending: cancelled, it is no denial.
    b.ssh(&alice, "cancel 1").ok();
    for _ in 0..2 {
        let r = b.ssh(&alice, ASK).ok().json();
        b.ssh(
            &adam,
            &format!("deny {} --reason 'not without a ticket'", r["id"]),
        )
        .ok();
    }
    alice
}

/// The risk score counts the requester's recent denials (read from the index, not the records).
#[test]
fn recent_denials_raise_the_risk() {
    let b = Broker::start_new();
    let alice = two_denials(&b);
    let next = b.ssh(&alice, ASK).ok().json();
    let denials = denial_factors(&next);
    assert_eq!(denials.len(), 1, "{next}");
    assert_eq!(denials[0]["factor"], "2 denial(s) in 30 days");
    assert_eq!(denials[0]["points"], 10);
}

/// A database from before the denials index gets it built when the broker starts, so the
/// count is what it was.
#[test]
fn a_database_from_before_the_denials_index_gets_it_built() {
    let mut b = Broker::start_new();
    let alice = two_denials(&b);
    b.stop();
    {
        let opened = datadir::open(&DataDir::new(b.data.clone())).unwrap();
        let store = opened.broker.store();
        let id = store.member(&"alice".parse().unwrap()).unwrap().unwrap().id;
        let since = Timestamp::from_unix(0);
        assert_eq!(store.denials_of(id, since, 200).unwrap(), 2);
        assert_eq!(store.denials_of(id, since, 1).unwrap(), 1);
        store.danger_forget_denials().unwrap();
        assert_eq!(store.denials_of(id, since, 200).unwrap(), 0);
    }
    b.spawn();
    let next = b.ssh(&alice, ASK).ok().json();
    let denials = denial_factors(&next);
    assert_eq!(denials.len(), 1, "{next}");
    assert_eq!(denials[0]["factor"], "2 denial(s) in 30 days");
}
