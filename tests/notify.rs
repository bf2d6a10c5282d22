//! Notifications end to end: a real HTTP receiver gets each event signed as Standard Webhooks
//! say, the same id on every retry, Slack messages escaped, and nothing lost across a SIGKILL;
//! backoff, `Retry-After`, 410 and timeouts run in process with the clock as an argument.

mod util;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64ct::{Base64, Encoding};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use sshjit::broker::Broker as InProcess;
use sshjit::datadir::{self, DataDir};
use sshjit::model::Timestamp;
use sshjit::notify::deliver::EndpointRecord;
use sshjit::notify::schedule::fire_due;
use util::Broker;
use util::http::{Received, Receiver, Reply};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(20);

/// A `[[notify]]` table for `url`, with its secret file written under `dir`.
fn standard_table(dir: &Path, url: &str) -> String {
    let secret = util::secret_file(dir, "hook_secret", SECRET);
    format!(
        "\n[[notify]]\nname = \"ops\"\nurl = \"{url}\"\nformat = \"standard\"\nsecret_file = \"{}\"\n",
        secret.display()
    )
}

/// Checks a delivery's Standard Webhooks signature with the secret, independently of the broker.
fn assert_signed(r: &Received) {
    let id = r.header("webhook-id").expect("webhook-id");
    let ts = r.header("webhook-timestamp").expect("webhook-timestamp");
    let key = Base64::decode_vec(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let want = format!("v1,{}", Base64::encode_string(&mac.finalize().into_bytes()));
    assert_eq!(r.header("webhook-signature"), Some(want.as_str()), "{r:?}");
    assert!(ts.parse::<i64>().is_ok(), "{ts}");
}

/// Waits until the receiver has a delivery of `kind` about request `id`.
fn wait_for_event(rx: &Receiver, kind: &str, id: u64) -> Received {
    let start = std::time::Instant::now();
    loop {
        if let Some(r) = rx.received().into_iter().find(|r| {
            let v = r.json();
            v["type"] == kind && v["data"]["request"]["id"] == id
        }) {
            return r;
        }
        assert!(
            start.elapsed() < WAIT,
            "no {kind} for request {id}: {:?}",
            rx.received()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn approvers_hear_of_each_change_signed_and_slack_gets_escaped_commands() {
    let rx = Receiver::start();
    let slack = Receiver::start();
    let (url, slack_url) = (rx.url("/hook"), slack.url("/services/T0/B0/x"));
    let b = Broker::start_with_tables(&[], |dir| {
        format!(
            "{}\n[[notify]]\nurl = \"{slack_url}\"\nformat = \"slack\"\nevents = [\"request.created\", \"break_glass.used\"]\n",
            standard_table(dir, &url)
        )
    });
    let alice = b.add_member("alice", "editor");
    let adam = b.add_member("adam", "admin");
    // Adding an admin is an approver change.
    let changed = rx.wait_for(1, WAIT);
    assert_eq!(changed[0].json()["type"], "approver.changed");
    assert_eq!(changed[0].json()["data"]["change"]["name"], "adam");
    assert_signed(&changed[0]);
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.1 --login editor=deploy --break-glass",
    )
    .ok();

    let reason = "INC-7 <!channel> & <https://evil.example|click> the queue is stuck";
    let id = b
        .ssh(
            &alice,
            &format!("request web-01 --role editor --for 1h --reason '{reason}' --json"),
        )
        .ok()
        .json()["id"]
        .as_u64()
        .unwrap();
    let created = wait_for_event(&rx, "request.created", id);
    assert_signed(&created);
    let v = created.json();
    assert_eq!(v["data"]["request"]["requester"], "alice");
    assert_eq!(v["data"]["request"]["reason"], reason);
    let approvers: BTreeSet<&str> = v["data"]["approvers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(approvers, BTreeSet::from(["adam", "olga"]));
    assert_eq!(
        created.header("webhook-id"),
        Some(format!("msg_{}_{}", origin(&b), v["data"]["seq"]).as_str())
    );

    // Slack: the text and the blocks carry the request and the exact commands, escaped.
    let s = slack.wait_for(1, WAIT)[0].json();
    let all = s.to_string();
    assert!(
        s["text"]
            .as_str()
            .unwrap()
            .contains(&format!("request {id} by alice")),
        "{s}"
    );
    assert!(
        all.contains(&format!("sshjit-broker admin approve {id}")),
        "{all}"
    );
    assert!(
        all.contains(&format!("sshjit-broker admin deny {id}")),
        "{all}"
    );
    assert!(
        all.contains("&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;"),
        "{all}"
    );
    assert!(!all.contains("<!channel>"), "{all}");

    b.ssh(&adam, &format!("approve {id}")).ok();
    let approved = wait_for_event(&rx, "request.approved", id);
    assert_eq!(approved.json()["data"]["actor"], "adam");
    assert_eq!(approved.json()["data"]["request"]["state"], "approved");

    let other = b
        .ssh(
            &alice,
            "request web-01 --role editor --for 1h --reason 'INC-8 look at the queue' --json",
        )
        .ok()
        .json()["id"]
        .as_u64()
        .unwrap();
    b.ssh(&b.owner, &format!("deny {other} --reason 'not now'"))
        .ok();
    wait_for_event(&rx, "request.denied", other);

    let glass = b
        .ssh(
            &alice,
            "request web-01 --break-glass --role editor --for 30m --reason 'INC-9 outage' --json",
        )
        .ok()
        .json()["id"]
        .as_u64()
        .unwrap();
    wait_for_event(&rx, "break_glass.used", glass);
    // Each endpoint is delivered on its own thread: wait for this one's break-glass message.
    let deadline = std::time::Instant::now() + WAIT;
    let bg = loop {
        let found = slack
            .received()
            .iter()
            .map(Received::json)
            .find(|m| m["text"].as_str().unwrap().contains("BREAK-GLASS"));
        match found {
            Some(m) => break m,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            None => panic!("no slack break-glass message: {:?}", slack.received()),
        }
    };
    assert!(
        bg.to_string()
            .contains(&format!("sshjit-broker admin review {glass}")),
        "{bg}"
    );
    // The slack endpoint's filter kept the approval and the denial away from it.
    assert!(
        slack
            .received()
            .iter()
            .all(|r| !r.text().contains("approved by")),
        "{:?}",
        slack.received()
    );

    // Every delivery's id is unique to its notification, and each verified.
    let got = rx.received();
    let ids: BTreeSet<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(ids.len(), got.len(), "{got:?}");
    got.iter().for_each(assert_signed);

    // notify status and notify test, owners and admins only.
    let viewer = b.add_member("vera", "viewer");
    assert_eq!(
        b.ssh(&viewer, "notify status --json").error_code(),
        "permission_denied"
    );
    let before = rx.received().len();
    let t = b.ssh(&adam, "notify test --json").ok().json();
    assert_eq!(t["endpoints"], serde_json::json!(["ops", "127.0.0.1"]));
    let test = rx.wait_for(before + 1, WAIT);
    assert!(test.iter().any(|r| r.json()["type"] == "test"));
    let start = std::time::Instant::now();
    let status = loop {
        let s = b.ssh(&b.owner, "notify status --json").ok().json();
        if s[0]["pending"] == 0 && s[1]["pending"] == 0 || start.elapsed() > WAIT {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status[0]["name"], "ops");
    assert_eq!(
        status[0]["delivered"].as_u64(),
        Some(rx.received().len() as u64),
        "{status}"
    );
    assert_eq!(status[1]["format"], "slack");
    // Three requests created, one break-glass, and the test.
    assert_eq!(status[1]["delivered"], 5, "{status}");
    let text = b.ssh(&b.owner, "notify status").ok().stdout;
    assert!(text.contains("ENDPOINT") && text.contains("ops"), "{text}");
    assert!(
        !text.contains("/services/"),
        "a url (and its token) is never shown: {text}"
    );
}

/// This broker's origin in message ids, read back from a delivery's JSON-free parts.
fn origin(b: &Broker) -> String {
    let first = b.ssh(&b.owner, "audit export --limit 1").ok().stdout;
    let raw = first.lines().next().unwrap();
    use sha2::Digest;
    hex(&Sha256::digest(raw.as_bytes())[..6])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn without_endpoints_notify_says_how_to_add_one() {
    let b = Broker::start_new();
    let out = b.ssh(&b.owner, "notify status --json");
    assert_eq!(out.error_code(), "not_found");
    assert!(out.stderr.contains("[[notify]]"), "{out:?}");
}

#[test]
fn a_crash_loses_no_notification_and_invents_none() {
    // The receiver is down: it refuses every delivery with 503 until `up`. It keeps its port
    // (a closed one could be taken by another test meanwhile and take the deliveries), and
    // counts only the deliveries it accepted.
    let rx = Receiver::start();
    let url = rx.url("/hook");
    let up = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    {
        let (up, accepted) = (up.clone(), accepted.clone());
        rx.respond(move |r| {
            if !up.load(Ordering::SeqCst) {
                return Reply::status(503);
            }
            let v = r.json();
            if v["type"] == "request.created" {
                let id = v["data"]["request"]["id"].as_u64().unwrap();
                accepted.lock().unwrap().insert(id);
            }
            Reply::ok()
        });
    }
    let mut b = Broker::start_with_tables(&[], |dir| standard_table(dir, &url));
    let alice = b.add_member("alice", "editor");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.1 --login editor=deploy",
    )
    .ok();
    let mut made = BTreeSet::new();
    for i in 0..10 {
        let line = format!(
            "request web-01 --role editor --for 1h --reason 'INC-{i} look at the queue' --json"
        );
        let v = b.ssh(&alice, &line).ok().json();
        made.insert(v["id"].as_u64().unwrap());
        // Refused changes commit nothing, so they must notify nothing.
        let bad = b.ssh(
            &alice,
            "request nowhere --role editor --for 1h --reason 'INC-1 x y z' --json",
        );
        assert_eq!(bad.error_code(), "not_found");
        if i == 4 {
            b.ssh(&alice, &format!("cancel {}", v["id"])).ok();
        }
    }
    b.kill();
    up.store(true, Ordering::SeqCst);
    b.spawn();
    let start = std::time::Instant::now();
    let created = loop {
        let created = accepted.lock().unwrap().clone();
        if created.len() >= made.len() || start.elapsed() > Duration::from_secs(40) {
            break created;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(created, made, "{}", b.log());
    // Nothing else was announced: ten requests created, none refused, one cancel (which does
    // not notify), and the approver added before them (alice is an editor: no change).
    let kinds: BTreeSet<String> = rx
        .received()
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["request.created".to_string()]));
    for r in rx.received() {
        assert_signed(&r);
    }
}

/// An in-process broker over a data dir whose config.toml has `tables` appended.
fn in_process(tables: &str) -> (tempfile::TempDir, InProcess, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let key = sshjit::ca::generate_key("olga").unwrap();
    let public = key.public_key().to_openssh().unwrap();
    datadir::init(&dir, "olga", &public, "127.0.0.1:0", T0).unwrap();
    let cfg = dir.root.join("config.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&tables.replace("DIR", tmp.path().to_str().unwrap()));
    std::fs::write(&cfg, text).unwrap();
    util::secret_file(tmp.path(), "hook_secret", SECRET);
    let broker = datadir::open(&dir).unwrap().broker;
    (
        tmp,
        broker,
        sshjit::ca::fingerprint(key.public_key().key_data()),
    )
}

const T0: Timestamp = Timestamp::from_unix(1_800_000_000);

fn table(url: &str) -> String {
    format!("\n[[notify]]\nurl = \"{url}\"\nsecret_file = \"DIR/hook_secret\"\n")
}

fn run(b: &InProcess, fp: &str, line: &str, now: Timestamp) -> Value {
    let out = b.run_line(fp, format!("{line} --json").as_bytes(), b"", now);
    assert_eq!(out.status, 0, "{line}: {out:?}");
    serde_json::from_str(&out.stdout).unwrap()
}

/// Adds the editor alice and the host web-01 (with `options`); returns alice's fingerprint.
fn alice_and_web(b: &InProcess, owner: &str, options: &str) -> String {
    let alice = sshjit::ca::generate_key("alice").unwrap();
    let public = alice.public_key().to_openssh().unwrap();
    run(
        b,
        owner,
        &format!("member add alice --role editor --key '{public}'"),
        T0,
    );
    run(
        b,
        owner,
        &format!("host add web-01 --address 10.0.0.1 --login editor=deploy {options}"),
        T0,
    );
    sshjit::ca::fingerprint(alice.public_key().key_data())
}

/// Makes a request as the key `fp` at `now`; returns its id.
fn request(b: &InProcess, fp: &str, line: &str, now: Timestamp) -> u64 {
    run(b, fp, line, now)["id"].as_u64().unwrap()
}

/// One delivery pass at `now` over everything committed.
fn step(b: &InProcess, now: Timestamp) -> Option<Timestamp> {
    let durable = b.store().last_notice().unwrap();
    b.deliverer()
        .unwrap()
        .step(b.store(), durable, now)
        .unwrap()
}

fn record(b: &InProcess) -> EndpointRecord {
    let d = b.deliverer().unwrap();
    d.status(b.store()).unwrap().remove(0).1
}

#[test]
fn a_failed_delivery_is_retried_with_backoff_and_the_same_id() {
    let rx = Receiver::start();
    let (_tmp, b, fp) = in_process(&table(&rx.url("/")));
    rx.respond(|_| Reply::status(503).header("Retry-After", "120"));
    run(&b, &fp, "notify test", T0);
    // First attempt fails; the next is at the Retry-After, not the 5 s backoff.
    assert_eq!(step(&b, T0), Some(T0.plus(120)));
    assert_eq!(rx.received().len(), 1);
    assert_eq!(record(&b).counts.last_error.as_deref(), Some("HTTP 503"));
    // Not due yet: nothing is sent.
    assert_eq!(step(&b, T0.plus(119)), Some(T0.plus(120)));
    assert_eq!(rx.received().len(), 1);
    // Due: sent again with the same id, signed for its own attempt time; no Retry-After now,
    // so the backoff (10 s after a second failure) decides.
    rx.respond(|_| Reply::status(500));
    assert_eq!(step(&b, T0.plus(120)), Some(T0.plus(130)));
    rx.respond(|_| Reply::ok());
    assert_eq!(step(&b, T0.plus(130)), None);
    let got = rx.received();
    assert_eq!(got.len(), 3);
    let ids: BTreeSet<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "every retry carries the same webhook-id: {got:?}"
    );
    assert_eq!(
        got[0].header("webhook-timestamp"),
        Some(T0.unix().to_string().as_str())
    );
    assert_eq!(
        got[2].header("webhook-timestamp"),
        Some(T0.plus(130).unix().to_string().as_str())
    );
    got.iter().for_each(assert_signed);
    let rec = record(&b);
    assert_eq!((rec.counts.delivered, rec.counts.failed), (1, 0));
    // Delivered and done: a later pass sends nothing.
    step(&b, T0.plus(9999));
    assert_eq!(rx.received().len(), 3);
}

#[test]
fn retries_stop_after_a_day_and_count_as_failed() {
    let rx = Receiver::start();
    let (_tmp, b, fp) = in_process(&table(&rx.url("/")));
    rx.respond(|_| Reply::status(500));
    run(&b, &fp, "notify test", T0);
    let mut now = T0;
    let mut tries = 0;
    while let Some(next) = step(&b, now) {
        tries += 1;
        assert!(next > now && T0.until(next) <= 86_400, "{next}");
        now = next;
        assert!(tries < 100);
    }
    let rec = record(&b);
    assert_eq!((rec.counts.delivered, rec.counts.failed), (0, 1));
    assert_eq!(rx.received().len(), tries + 1);
    // 5 s doubling to an hour: about 30 attempts in a day.
    assert!(
        (25..=40).contains(&rx.received().len()),
        "{}",
        rx.received().len()
    );
}

#[test]
fn gone_disables_the_endpoint_and_status_says_so() {
    let rx = Receiver::start();
    let (_tmp, b, fp) = in_process(&table(&rx.url("/")));
    rx.respond(|_| Reply::status(410));
    run(&b, &fp, "notify test", T0);
    assert_eq!(step(&b, T0), None);
    run(&b, &fp, "notify test", T0.plus(10));
    step(&b, T0.plus(10));
    step(&b, T0.plus(100_000));
    assert_eq!(rx.received().len(), 1, "nothing is sent after a 410");
    let status = run(&b, &fp, "notify status", T0.plus(10));
    assert!(
        status[0]["disabled"].as_str().unwrap().contains("410"),
        "{status}"
    );
    assert_eq!(status[0]["pending"], 1, "{status}");
    let text = String::from_utf8(
        b.run_line(&fp, b"notify status", b"", T0)
            .stdout
            .into_bytes(),
    )
    .unwrap();
    assert!(text.contains("DISABLED"), "{text}");
}

#[test]
fn a_timeout_is_a_failure_to_retry() {
    let rx = Receiver::start();
    let (_tmp, b, fp) = in_process(&table(&rx.url("/")));
    rx.respond(|_| Reply::ok().after(Duration::from_secs(30)));
    run(&b, &fp, "notify test", T0);
    // The in-process deliverer has the daemon's 10 s attempt timeout; a short one here.
    let d = sshjit::notify::deliver::Deliverer::new(
        b.deliverer().unwrap().endpoints().to_vec(),
        b.store(),
        Duration::from_millis(300),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let next = d
        .step(b.store(), b.store().last_notice().unwrap(), T0)
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(next, Some(T0.plus(5)));
    let rec = d.status(b.store()).unwrap().remove(0).1;
    assert!(
        rec.counts
            .last_error
            .as_deref()
            .unwrap()
            .to_lowercase()
            .contains("timeout"),
        "{rec:?}"
    );
}

#[test]
fn expiry_escalation_and_window_end_fall_due_once() {
    let rx = Receiver::start();
    let (_tmp, b, fp) = in_process(&table(&rx.url("/")));
    let alice_fp = alice_and_web(&b, &fp, "--escalate-after 10m --break-glass");
    let waiting = request(
        &b,
        &alice_fp,
        "request web-01 --role editor --for 1h --reason 'INC-1 look at the queue'",
        T0,
    );
    let granted = request(
        &b,
        &alice_fp,
        "request web-01 --role editor --for 1h --reason 'INC-2 look at the queue'",
        T0,
    );
    run(&b, &fp, &format!("approve {granted}"), T0);
    let glass = request(
        &b,
        &alice_fp,
        "request web-01 --break-glass --role editor --for 30m --reason 'INC-3 outage'",
        T0,
    );

    let due = |now: Timestamp| fire_due(b.store(), now).unwrap();
    assert_eq!(due(T0.plus(599)), 0);
    assert_eq!(due(T0.plus(600)), 1, "escalation at 10 minutes");
    assert_eq!(due(T0.plus(600)), 0, "once");
    // The break-glass window (30 m) ends: review due; its ending notice came 10 m before.
    assert_eq!(due(T0.plus(1800)), 2);
    // The granted window (1 h from T0) is 10 minutes from its end; the pending one expires
    // after the pending TTL.
    assert_eq!(due(T0.plus(3000)), 1);
    let ttl = run(&b, &fp, &format!("show {waiting}"), T0)["pending_until"]
        .as_str()
        .unwrap()
        .to_string();
    let expires = Timestamp::parse_rfc3339(&ttl).unwrap();
    assert_eq!(due(expires), 1);
    // The review is overdue a day after the break-glass.
    assert_eq!(due(T0.plus(86_400)), 1);
    assert_eq!(due(T0.plus(10 * 86_400)), 0, "everything fell due once");

    step(&b, T0.plus(10 * 86_400));
    let kinds: Vec<(String, u64)> = rx
        .received()
        .iter()
        .map(|r| r.json())
        .filter(|v| v["data"]["change"]["type"] == "due")
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_string(),
                v["data"]["request"]["id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("request.escalated".to_string(), waiting),
            ("review.due".to_string(), glass),
            ("request.expired".to_string(), waiting),
            ("review.overdue".to_string(), glass),
        ],
        "grant.ending goes to the requester's own endpoint, not the team's"
    );
    // A decided request no longer falls due: approve before expiry, nothing expires.
    let late = request(
        &b,
        &alice_fp,
        "request web-01 --role editor --for 1h --reason 'INC-4 look at the queue'",
        T0.plus(20 * 86_400),
    );
    run(
        &b,
        &fp,
        &format!("deny {late} --reason no"),
        T0.plus(20 * 86_400),
    );
    assert_eq!(due(T0.plus(30 * 86_400)), 0);
}

#[test]
fn a_members_own_endpoint_hears_their_window_ending() {
    let rx = Receiver::start();
    let url = rx.url("/mine");
    let (_tmp, b, fp) = in_process(&format!(
        "\n[[notify]]\nurl = \"{url}\"\nsecret_file = \"DIR/hook_secret\"\nmember = \"alice\"\n"
    ));
    let alice_fp = alice_and_web(&b, &fp, "");
    let id = request(
        &b,
        &alice_fp,
        "request web-01 --role editor --for 1h --reason 'INC-2 look at the queue'",
        T0,
    );
    run(&b, &fp, &format!("approve {id}"), T0);
    fire_due(b.store(), T0.plus(3000)).unwrap();
    step(&b, T0.plus(3000));
    let kinds: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, vec!["request.approved", "grant.ending"]);
}

#[test]
fn bad_notify_config_stops_the_broker_with_what_to_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let data = util::init_data_dir(tmp.path(), &util::keygen(tmp.path(), "olga"));
    let base = std::fs::read_to_string(data.join("config.toml")).unwrap();
    let open_secret = tmp.path().join("open_secret");
    std::fs::write(&open_secret, SECRET).unwrap();
    let good_secret = util::secret_file(tmp.path(), "good", SECRET);
    let cases = [
        ("[[notify]]\nurl = \"http://x/\"\nformat = \"teams\"\n".to_string(), "unknown variant"),
        (format!("[[notify]]\nurl = \"http://x/\"\nsecret_file = \"{}\"\n", open_secret.display()), "chmod 600"),
        (format!("[[notify]]\nurl = \"http://x/\"\nsecret_file = \"{}/missing\"\n", tmp.path().display()), "cannot read"),
        (format!("[[notify]]\nurl = \"gopher://x/\"\nsecret_file = \"{}\"\n", good_secret.display()), "http:// or https://"),
        ("[justify]\nendpoint = \"file:///etc/passwd\"\nmodel = \"m\"\n".to_string(), "http:// or https://"),
        ("[justify]\nendpoint = \"http://127.0.0.1:11434/v1\"\nmodel = \"m\"\n".to_string(), "not a chat-completions URL"),
        ("[notify]\nurl = \"http://x/\"\nformat = \"slack\"\n".to_string(), "double brackets"),
        ("[[notify]]\nurl = \"http://x/a\"\nformat = \"slack\"\n[[notify]]\nurl = \"http://x/b\"\nformat = \"slack\"\n".to_string(), "already named x"),
        ("[justify]\nendpoint = \"http://x/v1/chat/completions\"\nmodel = \"m\"\ntimeout_ms = 0\n".to_string(), "timeout_ms"),
    ];
    for (table, want) in cases {
        std::fs::write(data.join("config.toml"), format!("{base}\n{table}")).unwrap();
        let out = std::process::Command::new(util::bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{table}: {err}"
        );
    }
    // A good config: check-config says what it picked up.
    let good = format!(
        "{base}\n[[notify]]\nname = \"ops\"\nurl = \"http://x/\"\nsecret_file = \"{}\"\n[justify]\nendpoint = \"http://x/v1/chat/completions\"\nmodel = \"m\"\n",
        good_secret.display()
    );
    std::fs::write(data.join("config.toml"), good).unwrap();
    let out = std::process::Command::new(util::bin())
        .args(["check-config", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("ok      [[notify]]: ops") && text.contains("ok      [justify]: model m"),
        "{text}"
    );
}

/// An endpoint that never answers delays neither the others nor a graceful stop.
#[test]
fn a_silent_endpoint_delays_neither_the_others_nor_a_stop() {
    let dead = Receiver::start();
    dead.respond(|_| Reply::ok().after(Duration::from_secs(120)));
    let good = Receiver::start();
    let (dead_url, good_url) = (dead.url("/hook"), good.url("/hook"));
    let mut b = Broker::start_with_tables(&[], |_| {
        format!(
            "\n[[notify]]\nname = \"dead\"\nurl = \"{dead_url}\"\nformat = \"slack\"\n\n[[notify]]\nname = \"good\"\nurl = \"{good_url}\"\nformat = \"slack\"\n"
        )
    });
    let alice = b.add_member("alice", "editor");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.1 --login editor=deploy",
    )
    .ok();
    for i in 0..3 {
        b.ssh(
            &alice,
            &format!("request web-01 --role editor --for 1h --reason 'INC-{i} queue stuck'"),
        )
        .ok();
    }
    let start = std::time::Instant::now();
    while good
        .received()
        .iter()
        .filter(|r| r.text().contains("request "))
        .count()
        < 3
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the healthy endpoint waited behind the silent one: {:?}",
            good.received()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopping = std::time::Instant::now();
    assert!(b.stop().success());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the stop waited {:?} for a delivery",
        stopping.elapsed()
    );
}
