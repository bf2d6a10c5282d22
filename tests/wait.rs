//! `wait`: the broker answers a waiting client as soon as its request is decided (no polling),
//! when it expires, when the timeout passes, and at shutdown; it shows only what the caller may
//! see.

mod util;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use util::{Broker, Identity, wait_timeout};

const REQUEST: &str = "request web-01 --role viewer --for 1h --reason 'INC-7 read the logs' --json";

fn team(settings: &[(&str, &str)]) -> (Broker, Identity, Identity, u64) {
    let b = Broker::start_with_config(settings);
    let adam = b.add_member("adam", "admin");
    let alice = b.add_member("alice", "viewer");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login viewer=ro",
    )
    .ok();
    let id = b.ssh(&alice, REQUEST).ok().json()["id"].as_u64().unwrap();
    (b, adam, alice, id)
}

/// Starts `wait` as `who` in the background.
fn start_wait(b: &Broker, who: &Identity, line: &str) -> Child {
    let mut c = b.ssh_cmd(who);
    c.arg(line)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// Waits for `child` and returns its JSON answer.
fn answer(mut child: Child, limit: Duration) -> serde_json::Value {
    let st = wait_timeout(&mut child, limit).expect("wait did not answer in time");
    let out = child.wait_with_output().unwrap();
    assert!(st.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_waiting_client_hears_of_the_approval_at_once() {
    let (b, adam, alice, id) = team(&[]);
    let waiting = start_wait(&b, &alice, &format!("wait {id} --json"));
    // Let it connect and start waiting, then approve.
    std::thread::sleep(Duration::from_millis(500));
    b.ssh(&adam, &format!("approve {id}")).ok();
    let approved_at = Instant::now();
    let mut child = waiting;
    let st = wait_timeout(&mut child, Duration::from_secs(5)).expect("no answer");
    let heard_after = approved_at.elapsed();
    let out = child.wait_with_output().unwrap();
    assert!(st.success(), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["state"], "approved");
    assert_eq!(r["grant"]["status"], "active");
    // Polling every 2 s would take a second on average; this is the commit waking it.
    assert!(heard_after < Duration::from_secs(1), "{heard_after:?}");
}

#[test]
fn wait_ends_at_its_timeout_and_at_expiry() {
    let (b, _adam, alice, id) = team(&[("pending_ttl_secs", "3")]);
    let t = Instant::now();
    let r = answer(
        start_wait(&b, &alice, &format!("wait {id} --timeout 1s --json")),
        Duration::from_secs(10),
    );
    assert_eq!(r["state"], "pending");
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    // Expiry is a change too, with no commit behind it.
    let r = answer(
        start_wait(&b, &alice, &format!("wait {id} --timeout 1m --json")),
        Duration::from_secs(10),
    );
    assert_eq!(r["state"], "expired");
}

#[test]
fn wait_shows_only_what_the_caller_may_see_and_checks_its_words() {
    let (b, _adam, _alice, id) = team(&[]);
    let mallory = b.add_member("mallory", "viewer");
    let out = b.ssh(&mallory, &format!("wait {id} --json"));
    assert_eq!(out.error_code(), "not_found", "{out:?}");
    let out = b.ssh(&b.owner, &format!("wait {id} --timeout 1h --json"));
    assert_eq!(out.error_code(), "invalid_argument", "{out:?}");
    let out = b.ssh(&b.owner, &format!("wait {id} --while sleeping --json"));
    assert_eq!(out.error_code(), "invalid_argument", "{out:?}");
    // Waiting out a state the request is not in answers at once.
    let t = Instant::now();
    let r = b
        .ssh(&b.owner, &format!("wait {id} --while approved --json"))
        .ok()
        .json();
    assert_eq!(r["state"], "pending");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn shutdown_answers_waiting_clients_at_once() {
    let (mut b, _adam, alice, id) = team(&[]);
    let waiting = start_wait(&b, &alice, &format!("wait {id} --json"));
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let status = b.stop();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let r = answer(waiting, Duration::from_secs(5));
    assert_eq!(r["state"], "pending");
}
