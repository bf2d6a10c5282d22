//! Property tests: random sequences of requests (to hosts, a fleet and a fleet command),
//! decisions, certificate calls and host changes at random times, run through the real broker
//! (sled in a temp dir, real signing), never break the product's access rules.

mod util;

use std::collections::HashMap;
use std::sync::OnceLock;

use proptest::prelude::*;
use russh::keys::ssh_key::Certificate;
use serde_json::Value;
use sshjit::audit::AuditEvent;
use sshjit::broker::Broker;
use sshjit::datadir::{self, DataDir};
use sshjit::model::{Role, Timestamp};
use sshjit::notify::Subject;
use sshjit::notify::schedule::fire_due;

const PEOPLE: [&str; 6] = ["olga", "adam", "ed", "alice", "vic", "bot"];
const ROLES: [&str; 6] = ["owner", "admin", "editor", "viewer", "viewer", "editor"];
/// `bot` is a bot: its requests are decided by rules alone.
const BOT: usize = 5;
/// The capped rule on web-01 and its cap: once per hour.
const CAPPED: &str = "webview";
const CAP: usize = 1;
const T0: i64 = 1_900_000_000;

/// One identity key per person and one subject key, made once for all cases.
fn keys() -> &'static HashMap<&'static str, (String, String)> {
    static KEYS: OnceLock<HashMap<&'static str, (String, String)>> = OnceLock::new();
    KEYS.get_or_init(|| {
        PEOPLE
            .iter()
            .chain(["subject"].iter())
            .map(|p| {
                let k = sshjit::ca::generate_key(p).unwrap();
                let public = k.public_key().to_openssh().unwrap();
                (
                    *p,
                    (sshjit::ca::fingerprint(k.public_key().key_data()), public),
                )
            })
            .collect()
    })
}

/// What requests name: two hosts, a fleet (tag `web`) and a fleet command on it.
const TARGETS: [&str; 4] = ["web-01", "db-01", "webs", "restart"];
/// The fleet command's line and login.
const RUN: &str = "systemctl restart worker";
const RUN_LOGIN: &str = "ops";

/// Each host's login per role, as added (hosts never change; removal is final).
fn logins_of(host: &str) -> Option<(&'static str, Option<&'static str>)> {
    match host {
        "web-01" => Some(("ro", Some("deploy"))),
        "db-01" => Some(("ro", Some("dba"))),
        "web-02" => Some(("ro2", None)),
        h if h.starts_with("web-") => Some(("ro", Some("deploy"))),
        _ => None,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Request {
        who: usize,
        host: usize,
        role: &'static str,
        mins: u64,
        start_in: Option<u64>,
        break_glass: bool,
    },
    Review {
        who: usize,
        id: u64,
    },
    /// Several viewers ask for web-01 at once: the capped rule's cap is tested.
    Burst {
        n: usize,
    },
    Approve {
        who: usize,
        id: u64,
    },
    Deny {
        who: usize,
        id: u64,
    },
    Cancel {
        who: usize,
        id: u64,
    },
    /// `who: None` is the request's own requester.
    Cert {
        who: Option<usize>,
        id: u64,
    },
    Wait {
        secs: u64,
    },
    /// A new host tagged `web` joins the fleet.
    AddWebHost,
    /// `web-02` is removed.
    RemoveWebHost,
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0..PEOPLE.len();
    let id = any::<u64>();
    prop_oneof![
        1 => Just(Op::AddWebHost),
        1 => Just(Op::RemoveWebHost),
        5 => (who.clone(), 0..TARGETS.len(), prop::sample::select(vec!["viewer", "editor", "viewer", "editor", "admin", "owner", "none", "none"]),
              prop::sample::select(vec![1u64, 5, 30, 120, 1440, 1500]), prop::option::weighted(0.2, 0u64..7200), prop::bool::weighted(0.2))
            .prop_map(|(who, host, role, mins, start_in, break_glass)| Op::Request { who, host, role, mins, start_in, break_glass }),
        4 => (prop::sample::select(vec![0usize, 1, 0, 1, 2, 3, 4, 5]), id).prop_map(|(who, id)| Op::Approve { who, id }),
        2 => (prop::sample::select(vec![0usize, 1, 2]), id).prop_map(|(who, id)| Op::Review { who, id }),
        1 => (2usize..5).prop_map(|n| Op::Burst { n }),
        1 => (who.clone(), id).prop_map(|(who, id)| Op::Deny { who, id }),
        1 => (who.clone(), id).prop_map(|(who, id)| Op::Cancel { who, id }),
        4 => (prop::option::weighted(0.3, who), id).prop_map(|(who, id)| Op::Cert { who, id }),
        2 => prop_oneof![0u64..600, 0u64..5400].prop_map(|secs| Op::Wait { secs }),
    ]
}

fn setup() -> (tempfile::TempDir, Broker) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let k = keys();
    let t0 = Timestamp::from_unix(T0);
    datadir::init_on(
        &dir,
        "olga",
        &k["olga"].1,
        "127.0.0.1:0",
        &util::test_store(),
        t0,
    )
    .unwrap();
    let broker = datadir::open(&dir).unwrap().broker;
    let run = |line: String| {
        assert_eq!(
            broker
                .run_line(&k["olga"].0, line.as_bytes(), b"", t0)
                .status,
            0,
            "{line}"
        )
    };
    for (i, (p, r)) in PEOPLE.iter().zip(ROLES).enumerate().skip(1) {
        let kind = if i == BOT { "bot" } else { "human" };
        run(format!(
            "member add {p} --role {r} --kind {kind} --key '{}'",
            k[p].1
        ));
    }
    run("host add db-01 --address 10.0.0.2 --login viewer=ro --login editor=dba --tag prod --approvals 2".into());
    run("host add web-01 --address 10.0.0.1 --login viewer=ro --login editor=deploy --tag web --break-glass".into());
    run("host add web-02 --address 10.0.0.3 --login viewer=ro2 --tag web".into());
    run("fleet add webs --tag web".into());
    run(format!(
        "command add restart --fleet webs --run '{RUN}' --login {RUN_LOGIN}"
    ));
    run(format!(
        "rule add {CAPPED} --target web-01 --max-duration 2h --max-uses {CAP} --per 1h"
    ));
    // db-01 needs two approvals: this rule must never approve it.
    run("rule add db-any --target db-01 --role editor".into());
    run("rule add pipeline --command restart --kind bot --max-uses 2 --per 1h".into());
    (tmp, broker)
}

fn json(
    broker: &Broker,
    who: &str,
    line: &str,
    stdin: &[u8],
    now: Timestamp,
) -> Result<Value, String> {
    let out = broker.run_line(
        &keys()[who].0,
        format!("{line} --json").as_bytes(),
        stdin,
        now,
    );
    if out.status == 0 {
        Ok(serde_json::from_str(&out.stdout).unwrap())
    } else {
        Err(out.stderr)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_every_rule(ops in prop::collection::vec(op(), 1..60)) {
        let (_tmp, broker) = setup();
        // Every change leaves its notifications, as with an endpoint configured.
        broker.store().set_outbox(true);
        let outbox_from = broker.store().audit_len().unwrap();
        let mut now = Timestamp::from_unix(T0);
        let mut created = 0u64;
        let mut added = 2u32;
        let mut glass_ids: Vec<u64> = Vec::new();
        let mut issued = 0u64;
        for op in ops {
            // Ids pick among the requests made so far.
            let pick = |id: u64| if created == 0 { 1 } else { id % created + 1 };
            match op {
                Op::Wait { secs } => {
                    now = now.plus(secs);
                    // What fell due meanwhile is recorded, as the scheduler does each second.
                    fire_due(broker.store(), now).unwrap();
                }
                Op::AddWebHost => {
                    added += 1;
                    let line = format!("host add web-{added:02} --address 10.0.1.{added} --login viewer=ro --login editor=deploy --tag web");
                    prop_assert!(json(&broker, "olga", &line, b"", now).is_ok());
                }
                Op::RemoveWebHost => {
                    let _ = json(&broker, "olga", "host remove web-02", b"", now);
                }
                Op::Burst { n } => {
                    for who in [3usize, 4, 2, 1].into_iter().take(n) {
                        let line = "request web-01 --role viewer --for 30m --reason 'INC-1 property burst'";
                        if json(&broker, PEOPLE[who], line, b"", now).is_ok() {
                            created += 1;
                        }
                    }
                }
                Op::Review { who, id } => {
                    // Mostly break-glass grants, which are the ones to review.
                    let id = if glass_ids.is_empty() || id % 4 == 0 { pick(id) } else { glass_ids[id as usize % glass_ids.len()] };
                    let before = json(&broker, "olga", &format!("show {id}"), b"", now).ok();
                    let r = json(&broker, PEOPLE[who], &format!("review {id} --ok --comment 'INC-1 checked'"), b"", now);
                    if let (Ok(_), Some(b)) = (&r, before) {
                        prop_assert_eq!(&b["break_glass"], true, "reviewed a normal request");
                        prop_assert_ne!(b["requester"].as_str(), Some(PEOPLE[who]), "self-review");
                        prop_assert!(b["review"].is_null(), "reviewed twice");
                    }
                }
                Op::Request { who, host, role, mins, start_in, break_glass } => {
                    let start = start_in.map(|s| format!(" --start +{s}s")).unwrap_or_default();
                    let role_flag = if role == "none" { String::new() } else { format!(" --role {role}") };
                    let glass = if break_glass { " --break-glass" } else { "" };
                    let line = format!("request {}{role_flag} --for {mins}m --reason 'INC-1 property test'{start}{glass}", TARGETS[host]);
                    let r = json(&broker, PEOPLE[who], &line, b"", now);
                    if r.is_ok() { created += 1; }
                    if let Ok(v) = &r {
                        // Rule 17: no rule where two approvals are needed; a bot only by a rule.
                        if !v["approved_by_rule"].is_null() {
                            prop_assert!(v["approvals_required"].as_u64().unwrap() < 2, "a rule approved {v}");
                        }
                        if who == BOT {
                            prop_assert!(v["state"] == "approved" && !v["approved_by_rule"].is_null(), "a bot's request left for people: {v}");
                        }
                        // Rule 18: break-glass is capped, granted now, and owes a review.
                        if break_glass {
                            prop_assert!(mins <= 60 && ROLES[who] != "viewer" && who != BOT, "break-glass allowed: {v}");
                            prop_assert_eq!(&v["state"], "approved");
                            prop_assert!(v["review"].is_null() && !v["review_due"].is_null());
                            glass_ids.push(v["id"].as_u64().unwrap());
                        }
                    }
                    if role == "admin" || role == "owner" {
                        prop_assert!(r.is_err(), "granted a request for {role}");
                    }
                    // A fleet command takes no role; hosts and fleets need one.
                    if (TARGETS[host] == "restart") != (role == "none") {
                        prop_assert!(r.is_err(), "accepted {line}");
                    }
                    if !(5..=1440).contains(&mins) {
                        prop_assert!(r.is_err(), "accepted a duration of {mins}m");
                    }
                }
                Op::Approve { who, id } => {
                    let id = pick(id);
                    let before = json(&broker, "olga", &format!("show {id}"), b"", now).ok();
                    let r = json(&broker, PEOPLE[who], &format!("approve {id}"), b"", now);
                    if let (Ok(_), Some(b)) = (&r, before) {
                        prop_assert_ne!(b["requester"].as_str(), Some(PEOPLE[who]), "self-approval");
                        prop_assert!(["owner", "admin"].contains(&ROLES[who]), "approved by {}", ROLES[who]);
                        prop_assert_eq!(&b["state"], "pending");
                    }
                }
                Op::Deny { who, id } => {
                    let id = pick(id);
                    let _ = json(&broker, PEOPLE[who], &format!("deny {id} --reason 'not now'"), b"", now);
                }
                Op::Cancel { who, id } => {
                    let id = pick(id);
                    let _ = json(&broker, PEOPLE[who], &format!("cancel {id}"), b"", now);
                }
                Op::Cert { who, id } => {
                    let id = pick(id);
                    let who = match who {
                        Some(w) => w,
                        None => match json(&broker, "olga", &format!("show {id}"), b"", now) {
                            Ok(r) => PEOPLE.iter().position(|p| r["requester"] == *p).unwrap(),
                            Err(_) => 0,
                        },
                    };
                    let subject = keys()["subject"].1.as_bytes();
                    let r = json(&broker, PEOPLE[who], &format!("cert {id}"), subject, now);
                    if let Ok(c) = r {
                        issued += 1;
                        let req = json(&broker, "olga", &format!("show {id}"), b"", now).unwrap();
                        let g = &req["grant"];
                        prop_assert_eq!(req["requester"].as_str(), Some(PEOPLE[who]), "certificate for someone else");
                        prop_assert_eq!(&c["valid_after"], &g["start"]);
                        prop_assert_eq!(&c["valid_before"], &g["end"]);
                        let start = Timestamp::parse_rfc3339(g["start"].as_str().unwrap()).unwrap();
                        let end = Timestamp::parse_rfc3339(g["end"].as_str().unwrap()).unwrap();
                        prop_assert!(start <= now && now < end, "issued outside its window");
                        let cert = Certificate::from_openssh(c["certificate"].as_str().unwrap()).unwrap();
                        prop_assert_eq!(cert.valid_after() as i64, start.unix());
                        prop_assert_eq!(cert.valid_before() as i64, end.unix());
                        let kind = if who == BOT { "bot:" } else { "" };
                        prop_assert_eq!(cert.key_id(), format!("sshjit:{id}:{kind}{}", PEOPLE[who]));
                        // Rule 16: every principal names a host of the grant with that host's
                        // login; a command's certificate carries its command and nothing else.
                        let in_grant: Vec<String> = g["hosts"].as_array().unwrap().iter()
                            .map(|h| format!("{}@{}", h["login"].as_str().unwrap(), h["name"].as_str().unwrap()))
                            .collect();
                        prop_assert!(!cert.valid_principals().is_empty());
                        for p in cert.valid_principals() {
                            prop_assert!(in_grant.contains(p), "{p} is not in the grant {in_grant:?}");
                            let (login, host) = p.split_once('@').unwrap();
                            let (viewer, editor) = logins_of(host).unwrap();
                            match g["effective_role"].as_str() {
                                None => prop_assert_eq!(login, RUN_LOGIN),
                                Some("viewer") => prop_assert_eq!(login, viewer),
                                Some("editor") => prop_assert_eq!(Some(login), editor),
                                Some(other) => prop_assert!(false, "granted {other}"),
                            }
                        }
                        let exts: Vec<&String> = cert.extensions().keys().collect();
                        let forced = cert.critical_options().get("force-command");
                        match g["effective_role"].as_str() {
                            None => {
                                prop_assert_eq!(forced.map(String::as_str), Some(RUN));
                                prop_assert!(exts.is_empty(), "a command certificate has {exts:?}");
                                prop_assert_eq!(req["kind"].as_str(), Some("command"));
                            }
                            Some(role) => {
                                prop_assert!(forced.is_none());
                                let want = if role == "editor" { 2 } else { 1 };
                                prop_assert_eq!(exts.len(), want, "{:?}", exts);
                            }
                        }
                    }
                }
            }
        }
        // Every certificate handed out is in the audit log, and nothing else is.
        let export = broker.run_line(&keys()["olga"].0, b"audit export", b"", now).stdout;
        let audited = export.lines().filter(|l| l.contains("\"type\":\"certificate_issued\"")).count() as u64;
        prop_assert_eq!(audited, issued);
        // Whole-history checks.
        let all = json(&broker, "olga", "requests --limit 1000", b"", now).unwrap();
        for r in all.as_array().unwrap() {
            let approvers: Vec<&str> = r["approvals"].as_array().unwrap().iter().map(|a| a["by"].as_str().unwrap()).collect();
            prop_assert!(!approvers.contains(&r["requester"].as_str().unwrap()), "self-approval in {r}");
            let mut distinct = approvers.clone();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), approvers.len());
            match r["kind"].as_str() {
                Some("command") => prop_assert!(r["role"].is_null()),
                _ => prop_assert!(["viewer", "editor"].contains(&r["role"].as_str().unwrap())),
            }
            if r["state"] == "approved" {
                let by_people = distinct.len() as u64 >= r["approvals_required"].as_u64().unwrap();
                prop_assert!(by_people || !r["approved_by_rule"].is_null() || r["break_glass"] == true, "under-approved: {r}");
                let g = &r["grant"];
                let start = Timestamp::parse_rfc3339(g["start"].as_str().unwrap()).unwrap();
                let end = Timestamp::parse_rfc3339(g["end"].as_str().unwrap()).unwrap();
                prop_assert_eq!(start.until(end) as u64, r["duration_secs"].as_u64().unwrap());
            }
        }
        // Rule uses never exceed their cap in any period; bots are never approved by people;
        // break-glass grants never had approvers.
        let mut used: Vec<i64> = Vec::new();
        for r in all.as_array().unwrap() {
            if r["approved_by_rule"]["rule"] == CAPPED {
                used.push(Timestamp::parse_rfc3339(r["approved_by_rule"]["at"].as_str().unwrap()).unwrap().unix());
            }
            if r["requester_kind"] == "bot" || r["break_glass"] == true {
                prop_assert!(r["approvals"].as_array().unwrap().is_empty(), "approved by people: {r}");
            }
            if r["break_glass"] == true {
                prop_assert!(r["review"].is_null() || r["review"]["by"] != r["requester"], "{r}");
            }
        }
        used.sort();
        for w in used.windows(CAP + 1) {
            prop_assert!(w[CAP] - w[0] >= 3600, "{} uses of {CAPPED} within an hour: {used:?}", CAP + 1);
        }
        // A notification exists for exactly the audit entries that notify (rule 19), and
        // each thing fell due at most once.
        let mut seen_due = std::collections::BTreeSet::new();
        for line in json_lines(&broker, "audit export", now) {
            let seq = line["seq"].as_u64().unwrap();
            if seq <= outbox_from {
                continue;
            }
            let event: AuditEvent = serde_json::from_value(line["event"].clone()).unwrap();
            let notice = broker.store().notice(seq).unwrap();
            let notifies = match sshjit::notify::event_of(&event) {
                None => false,
                Some((_, Subject::Member { role: Some(r), .. })) => r >= Role::Admin,
                Some((_, Subject::Member { name, role: None })) => {
                    broker.store().member(&name.parse().unwrap()).unwrap().is_some_and(|m| m.role >= Role::Admin)
                }
                Some(_) => true,
            };
            prop_assert_eq!(notice.is_some(), notifies, "entry {}: {:?}", seq, event);
            if let Some(n) = notice {
                prop_assert_eq!(&n.change, &event);
            }
            if let AuditEvent::Due { id, what } = event {
                prop_assert!(seen_due.insert((id, what)), "{:?} fell due twice for {}", what, id);
            }
        }
        prop_assert!(broker.store().verify_audit().unwrap().ok);
    }
}

/// A command's JSON-lines answer (`audit export`).
fn json_lines(broker: &Broker, line: &str, now: Timestamp) -> Vec<Value> {
    let out = broker.run_line(&keys()["olga"].0, line.as_bytes(), b"", now);
    assert_eq!(out.status, 0, "{out:?}");
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
