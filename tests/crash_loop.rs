//! Crash loop: a mixed load (requests, approvals, certificates, member adds) from several
//! stock-ssh clients while the broker is SIGKILLed at random moments and restarted on the same
//! data dir. The clients keep a ledger of what was acknowledged (exit status 0 and a JSON
//! answer); after every restart each acknowledged change is there and the chain verifies.
//!
//! `SSHJIT_CRASH_KILLS` (default 5) and `SSHJIT_CRASH_SEED` set the run; `scripts/crash-loop`
//! runs the long version and prints its figures.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{Broker, Identity, bin, keygen, require, run_with_stdin, ssh_opts};

/// Everything the clients were told succeeded.
#[derive(Default, Clone)]
struct Ledger {
    requests: BTreeSet<u64>,
    approved: BTreeSet<u64>,
    /// Serial -> request id.
    certs: BTreeMap<u64, u64>,
    members: BTreeSet<String>,
    /// Commands whose outcome is unknown (cut by a kill, or refused while the broker was down).
    unknown: u64,
}

impl Ledger {
    fn acknowledged(&self) -> usize {
        self.requests.len() + self.approved.len() + self.certs.len() + self.members.len()
    }
}

/// A small deterministic generator (xorshift), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What a worker needs to reach the broker, whichever port it is on now.
#[derive(Clone)]
struct Target {
    port: Arc<AtomicU16>,
    tmp: PathBuf,
}

impl Target {
    /// Runs `line` as `who`; the JSON answer if the broker acknowledged it.
    fn run(&self, who: &Identity, line: &str, stdin: &[u8]) -> Option<Value> {
        let mut c = Command::new(require("ssh"));
        c.args(ssh_opts(&self.tmp))
            .args(["-o", "ConnectTimeout=2", "-i"])
            .arg(&who.key)
            .args([
                "-p",
                &self.port.load(Ordering::SeqCst).to_string(),
                "127.0.0.1",
            ])
            .arg(format!("{line} --json"));
        let out = run_with_stdin(c, stdin);
        if out.code != 0 {
            return None;
        }
        serde_json::from_str(&out.stdout).ok()
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Lifts the per-member brakes: this test is about durability, not about limits.
fn lift_limits(b: &mut Broker) {
    b.stop();
    let cfg = b.data.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text: String = text
        .lines()
        .map(|l| match l.split_once(" = ") {
            Some(("burst", _)) => "burst = 1000000".to_string(),
            Some(("per_minute", _)) => "per_minute = 10000000".to_string(),
            Some(("max_pending_per_member", _)) => "max_pending_per_member = 1000".to_string(),
            Some(("max_certs_per_grant", _)) => "max_certs_per_grant = 1000000".to_string(),
            _ => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(&cfg, text).unwrap();
    b.spawn();
}

/// One worker: as `me`, request; as `approver`, approve; as `me`, certify a key; now and
/// then, as `owner`, add a member. Every acknowledged step goes in the ledger.
struct Worker {
    t: Target,
    me: Identity,
    approver: Identity,
    owner: Identity,
    subject: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    seed: u64,
    counter: Arc<AtomicU64>,
}

fn worker(w: Worker) {
    let Worker {
        t,
        me,
        approver,
        owner,
        subject,
        ledger,
        stop,
        seed,
        counter,
    } = w;
    let mut rng = Rng(seed | 1);
    let note = |f: &dyn Fn(&mut Ledger)| f(&mut ledger.lock().unwrap());
    let unknown = || note(&|l| l.unknown += 1);
    while !stop.load(Ordering::SeqCst) {
        let line = "request web-01 --role viewer --for 1h --reason 'CRASH-1 crash loop'";
        let Some(r) = t.run(&me, line, b"") else {
            unknown();
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let id = r["id"].as_u64().unwrap();
        note(&|l| {
            l.requests.insert(id);
        });
        if t.run(&approver, &format!("approve {id}"), b"").is_none() {
            unknown();
            continue;
        }
        note(&|l| {
            l.approved.insert(id);
        });
        match t.run(&me, &format!("cert {id}"), subject.as_bytes()) {
            Some(c) => {
                let serial = c["serial"].as_u64().unwrap();
                note(&|l| {
                    l.certs.insert(serial, id);
                });
            }
            None => unknown(),
        }
        if rng.below(4) == 0 {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let key = keygen(&t.tmp, &format!("m{n}"));
            let name = format!("m{n}");
            let line = format!("member add {name} --role viewer --key '{}'", key.public);
            match t.run(&owner, &line, b"") {
                Some(_) => note(&|l| {
                    l.members.insert(name.clone());
                }),
                None => unknown(),
            }
        }
    }
}

/// Checks that everything in `acked` is in the broker now, and that the chain verifies.
fn check(b: &Broker, acked: &Ledger) -> u64 {
    let requests = b.json("requests --limit 1000000");
    let by_id: BTreeMap<u64, &Value> = requests
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_u64().unwrap(), r))
        .collect();
    for id in &acked.requests {
        assert!(by_id.contains_key(id), "acknowledged request {id} was lost");
    }
    for id in &acked.approved {
        assert_eq!(
            by_id[id]["state"], "approved",
            "acknowledged approval of {id} was lost"
        );
    }
    let export = b.ssh(&b.owner, "audit export").ok().stdout;
    let issued: BTreeMap<u64, u64> = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"]["type"] == "certificate_issued")
        .map(|e| {
            (
                e["event"]["serial"].as_u64().unwrap(),
                e["event"]["id"].as_u64().unwrap(),
            )
        })
        .collect();
    for (serial, id) in &acked.certs {
        assert_eq!(
            issued.get(serial),
            Some(id),
            "acknowledged certificate serial {serial} was lost"
        );
    }
    let members: BTreeSet<String> = b
        .json("member list")
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    for m in &acked.members {
        assert!(members.contains(m), "acknowledged member {m} was lost");
    }
    let v = b.json("audit verify");
    assert_eq!(v["ok"], true, "chain broken after a kill: {v}");
    v["entries"].as_u64().unwrap()
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let kills = env_u64("SSHJIT_CRASH_KILLS", 5);
    let seed = env_u64("SSHJIT_CRASH_SEED", 0x5eed_0001 ^ std::process::id() as u64);
    eprintln!("crash loop: {kills} kills, seed {seed} (SSHJIT_CRASH_SEED={seed} replays it)");
    let started = Instant::now();
    let mut b = Broker::start_new();
    lift_limits(&mut b);
    let adam = b.add_member("adam", "admin");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login viewer=ro",
    )
    .ok();
    let subject = keygen(b.tmp.path(), "subject").public;
    let target = Target {
        port: Arc::new(AtomicU16::new(b.addr.port())),
        tmp: b.tmp.path().to_path_buf(),
    };
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let me = b.add_member(&format!("eng{i}"), "viewer");
            let w = Worker {
                t: target.clone(),
                me,
                approver: adam.clone(),
                owner: b.owner.clone(),
                subject: subject.clone(),
                ledger: ledger.clone(),
                stop: stop.clone(),
                seed: seed.wrapping_add(i),
                counter: counter.clone(),
            };
            std::thread::spawn(move || worker(w))
        })
        .collect();
    let mut rng = Rng(seed | 1);
    let mut before = 0;
    let mut entries = 0;
    for round in 1..=kills {
        // Let the load run, then kill in the middle of it.
        let deadline = Instant::now() + Duration::from_secs(20);
        let wait = Duration::from_millis(300 + rng.below(700));
        std::thread::sleep(wait);
        while ledger.lock().unwrap().acknowledged() <= before {
            assert!(Instant::now() < deadline, "the load made no progress");
            std::thread::sleep(Duration::from_millis(50));
        }
        b.kill();
        let acked = ledger.lock().unwrap().clone();
        before = acked.acknowledged();
        b.spawn();
        target.port.store(b.addr.port(), Ordering::SeqCst);
        entries = check(&b, &acked);
        eprintln!(
            "kill {round}: {} acknowledged so far, all present; chain of {entries} entries verifies",
            acked.acknowledged()
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let last = ledger.lock().unwrap().clone();
    b.stop();
    // Offline, too: the stopped database verifies.
    let out = Command::new(bin())
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(&b.data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        last.unknown > 0,
        "no command was cut by a kill: the kills did not land mid-load"
    );
    eprintln!(
        "crash loop done: {kills} kills in {:.1}s; acknowledged {} requests, {} approvals, {} certificates, {} members; {} outcomes unknown; final chain {entries}+ entries",
        started.elapsed().as_secs_f64(),
        last.requests.len(),
        last.approved.len(),
        last.certs.len(),
        last.members.len(),
        last.unknown,
    );
}
