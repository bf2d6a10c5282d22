//! Several brokers of one team on a real three-member etcd cluster: both serve concurrently
//! without forking the audit log or repeating a serial, losing a broker or an etcd member loses
//! nothing acknowledged, losing a quorum refuses changes cleanly, and a sled broker migrates.

mod util;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::keys::ssh_key::Certificate;
use serde_json::Value;
use util::etcd::EtcdCluster;
use util::{Broker, Identity, keygen};

/// A team: two brokers on one cluster, an admin who approves and some editors.
struct Team {
    cluster: EtcdCluster,
    brokers: Vec<Broker>,
    adam: Identity,
    editors: Vec<Identity>,
}

fn team(editors: usize) -> Team {
    let cluster = EtcdCluster::start(3);
    let mut a = Broker::start_on_etcd(&cluster.endpoints());
    // Load runs many requests per member: lift the per-member rates (kept by each broker).
    a.stop();
    let cfg = a.data.join("config.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "burst = 10\nper_minute = 2",
            "burst = 1000\nper_minute = 1000",
        )
        .replace(
            "burst = 20\nper_minute = 10",
            "burst = 1000\nper_minute = 1000",
        );
    std::fs::write(&cfg, text).unwrap();
    a.spawn();
    let b = a.replica();
    let adam = a.add_member("adam", "admin");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login viewer=ro --login editor=deploy",
    )
    .ok();
    let editors = (0..editors)
        .map(|i| [&a, &b][i % 2].add_member(&format!("ed{i}"), "editor"))
        .collect();
    Team {
        cluster,
        brokers: vec![a, b],
        adam,
        editors,
    }
}

/// What one acknowledged cycle left: the request id and the certificate's serial.
type Acked = (u64, u64);

/// request on `r`, approve on `p`, cert on `c`; the first refusal ends it with its text.
fn cycle(
    [r, p, c]: [&Broker; 3],
    who: &Identity,
    adam: &Identity,
    key: &Identity,
) -> Result<Acked, String> {
    let step = |b: &Broker, me: &Identity, line: &str, stdin: &[u8]| {
        let out = b.ssh_stdin(me, line, stdin);
        if out.code == 0 {
            Ok(out.json())
        } else {
            Err(format!("{line}: {}", out.stderr.trim()))
        }
    };
    let id = step(
        r,
        who,
        "request web-01 --role editor --for 30m --reason 'INC-42 deploy fix' --json",
        b"",
    )?["id"]
        .as_u64()
        .unwrap();
    step(p, adam, &format!("approve {id} --json"), b"")?;
    let cert = step(c, who, &format!("cert {id} --json"), key.public.as_bytes())?;
    Ok((id, serial(&cert)))
}

fn serial(cert: &Value) -> u64 {
    Certificate::from_openssh(cert["certificate"].as_str().unwrap())
        .unwrap()
        .serial()
}

/// `audit verify --json` as seen through broker `b`.
fn verified(b: &Broker) -> Value {
    let v = b.ssh(&b.owner, "audit verify --json").ok().json();
    assert_eq!(v["ok"], true, "the chain does not verify: {v}");
    v
}

/// Every acknowledged request is approved, through `b`, and no serial repeats.
fn all_present(b: &Broker, acked: &[Acked]) {
    let serials: HashSet<u64> = acked.iter().map(|a| a.1).collect();
    assert_eq!(
        serials.len(),
        acked.len(),
        "a serial was issued twice: {acked:?}"
    );
    for (id, _) in acked {
        let r = b.ssh(&b.owner, &format!("show {id} --json")).ok().json();
        assert_eq!(r["state"], "approved", "request {id}: {r}");
    }
}

#[test]
fn two_brokers_serve_one_team_concurrently() {
    let t = team(6);
    let acked = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for (i, ed) in t.editors.iter().enumerate() {
            let (t, acked) = (&t, &acked);
            s.spawn(move || {
                for n in 0..4 {
                    // Each step of a cycle goes to a broker of its own.
                    let pick = |k: usize| &t.brokers[(i + n + k) % 2];
                    let key = keygen(t.brokers[0].tmp.path(), &format!("k{i}-{n}"));
                    let done = cycle([pick(0), pick(1), pick(0)], ed, &t.adam, &key)
                        .unwrap_or_else(|e| panic!("{e}"));
                    acked.lock().unwrap().push(done);
                }
            });
        }
    });
    let acked = acked.into_inner().unwrap();
    assert_eq!(acked.len(), 24);
    let ids: HashSet<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(ids.len(), 24, "a request id was given twice: {acked:?}");
    for b in &t.brokers {
        all_present(b, &acked);
    }
    // One chain: both brokers see the same head, and it holds every change.
    let (va, vb) = (verified(&t.brokers[0]), verified(&t.brokers[1]));
    assert_eq!((&va["entries"], &va["head"]), (&vb["entries"], &vb["head"]));
    assert!(va["entries"].as_u64().unwrap() >= 3 * 24);

    // `wait` on one broker wakes when the other commits the decision.
    let (a, b) = (&t.brokers[0], &t.brokers[1]);
    let id = a
        .ssh(
            &t.editors[0],
            "request web-01 --role viewer --for 10m --reason 'INC-43 look' --json",
        )
        .ok()
        .json()["id"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| b.ssh(&t.editors[0], &format!("wait {id} --timeout 60s --json")));
        std::thread::sleep(Duration::from_millis(700));
        a.ssh(&t.adam, &format!("approve {id}")).ok();
        let seen = waiter.join().unwrap().ok().json();
        assert_eq!(seen["state"], "approved", "{seen}");
    });
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "wait did not wake"
    );

    // Clients see one host key whichever broker answers.
    let scan = |b: &Broker| {
        let out = std::process::Command::new(util::require("ssh-keyscan"))
            .args([
                "-t",
                "ed25519",
                "-p",
                &b.addr.port().to_string(),
                "127.0.0.1",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string()
    };
    let key = scan(a);
    assert!(key.len() > 40, "no host key from {}", a.addr);
    assert_eq!(key, scan(b));
}

#[test]
fn losing_a_broker_or_an_etcd_member_loses_nothing_acknowledged() {
    let mut t = team(4);
    let acked = Mutex::new(Vec::new());
    let after_kills = Mutex::new(0usize);
    let stop = AtomicBool::new(false);
    let a_dead = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let t = &t;
        for (i, ed) in t.editors.iter().enumerate() {
            let (acked, after_kills, stop, a_dead) = (&acked, &after_kills, &stop, &a_dead);
            s.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let killed = a_dead.load(Ordering::SeqCst);
                    let key = keygen(t.brokers[1].tmp.path(), &format!("l{i}-{n}"));
                    // Clients of a dead broker fail over to the other (as behind a balancer).
                    let b = &t.brokers[if killed { 1 } else { (i + n) % 2 }];
                    if let Ok(done) = cycle([b, b, b], ed, &t.adam, &key) {
                        acked.lock().unwrap().push(done);
                        if killed {
                            *after_kills.lock().unwrap() += 1;
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        // SIGKILL one broker under load, then one etcd member (through their pids: the load
        // threads hold the team).
        a_dead.store(true, Ordering::SeqCst);
        kill_broker(&t.brokers[0]);
        std::thread::sleep(Duration::from_secs(3));
        kill_member(&t.cluster, 0);
        std::thread::sleep(Duration::from_secs(4));
        stop.store(true, Ordering::SeqCst);
    });
    let acked = acked.into_inner().unwrap();
    let after = after_kills.into_inner().unwrap();
    assert!(
        after >= 2,
        "the surviving broker served only {after} cycles after the kills"
    );
    let b = &t.brokers[1];
    all_present(b, &acked);
    let before = verified(b);

    // Two of three members down: no quorum. Changes are refused with a clear error; reads work.
    t.cluster.kill(0);
    t.cluster.kill(1);
    let refused = b.ssh(
        &t.editors[0],
        "request web-01 --role viewer --for 10m --reason 'INC-44 no quorum' --json",
    );
    assert_ne!(
        refused.code, 0,
        "a change committed without a quorum: {refused:?}"
    );
    assert_eq!(refused.error_code(), "unavailable", "{refused:?}");
    assert!(refused.stderr.contains("quorum"), "{}", refused.stderr);
    let hosts = b.ssh(&t.editors[0], "host list").ok();
    assert!(hosts.stdout.contains("web-01"), "{hosts:?}");
    let r = b
        .ssh(&b.owner, &format!("show {} --json", acked[0].0))
        .ok()
        .json();
    assert_eq!(r["state"], "approved");

    // Restore them: work resumes on both brokers, on one unbroken chain.
    t.cluster.restart(0);
    t.cluster.restart(1);
    let mut tail = Vec::new();
    let key = keygen(b.tmp.path(), "after-quorum");
    tail.push(retry(|| cycle([b, b, b], &t.editors[1], &t.adam, &key)));
    t.brokers[0].spawn();
    let (a, b) = (&t.brokers[0], &t.brokers[1]);
    let key = keygen(b.tmp.path(), "after-restart");
    tail.push(cycle([a, b, a], &t.editors[2], &t.adam, &key).unwrap());
    let mut all = acked.clone();
    all.extend(tail);
    all_present(a, &all);
    let (va, vb) = (verified(a), verified(b));
    assert_eq!((&va["entries"], &va["head"]), (&vb["entries"], &vb["head"]));
    assert!(va["entries"].as_u64() > before["entries"].as_u64());
}

#[test]
fn a_broker_restarts_while_another_appends() {
    let mut t = team(3);
    let Team {
        brokers,
        editors,
        adam,
        ..
    } = &mut t;
    let (restarting, serving) = brokers.split_at_mut(1);
    let (a, b) = (&mut restarting[0], &serving[0]);
    let acked = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for (i, ed) in editors.iter().enumerate() {
            let (acked, stop, adam) = (&acked, &stop, &*adam);
            s.spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let key = keygen(b.tmp.path(), &format!("r{i}-{n}"));
                    let done = cycle([b, b, b], ed, adam, &key).unwrap();
                    acked.lock().unwrap().push(done);
                }
            });
        }
        // Each start checks the tree's tiles against the head while `b` moves both: an
        // append meanwhile is no damage, and the start goes on without rebuilding. (The load
        // stops even if a start fails, so that the failure is reported.)
        let restarts = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..12 {
                std::thread::sleep(Duration::from_millis(200));
                a.stop();
                a.spawn();
            }
        }));
        stop.store(true, Ordering::SeqCst);
        if let Err(panic) = restarts {
            std::panic::resume_unwind(panic);
        }
    });
    let log = a.log();
    assert!(!log.contains("stored the audit log's Merkle tree"), "{log}");
    let acked = acked.into_inner().unwrap();
    assert!(
        acked.len() >= 4,
        "only {} cycles under the restarts",
        acked.len()
    );
    all_present(a, &acked);
    let (va, vb) = (verified(a), verified(b));
    assert_eq!(va["entries"], vb["entries"]);
}

/// On a fresh broker: an editor, an admin and a host, and one acknowledged cycle.
fn first_cycle(b: &Broker) -> (Identity, Identity, Acked) {
    let ed = b.add_member("ed", "editor");
    let adam = b.add_member("adam", "admin");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login editor=deploy",
    )
    .ok();
    let key = keygen(b.tmp.path(), "k1");
    let done = cycle([b, b, b], &ed, &adam, &key).unwrap();
    (ed, adam, done)
}

/// Runs `f` until it succeeds (the cluster may still be electing a leader), for 30 s at most.
fn retry<T>(f: impl Fn() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > Duration::from_secs(30) => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

fn kill_broker(b: &Broker) {
    util::signal_pid(b.pid(), "KILL");
}

fn kill_member(c: &EtcdCluster, i: usize) {
    util::signal_pid(c.pid(i), "KILL");
}

#[test]
fn a_team_cannot_be_forked_by_a_second_init_or_another_ca() {
    let cluster = EtcdCluster::start(3);
    let a = Broker::start_on_etcd(&cluster.endpoints());
    let prefix = config_value(&a, "prefix");
    // A second `init` on the same prefix is refused, and leaves no data dir behind.
    let tmp = tempfile::tempdir().unwrap();
    let other = keygen(tmp.path(), "mallory");
    let out = std::process::Command::new(util::bin())
        .args([
            "init",
            "--owner",
            "mallory",
            "--owner-key",
            &other.public,
            "--data-dir",
        ])
        .arg(tmp.path().join("d"))
        .args([
            "--store",
            "etcd",
            "--etcd-endpoints",
            &cluster.endpoints(),
            "--etcd-prefix",
            &prefix,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds a broker's state"), "{err}");
    assert!(!tmp.path().join("d").exists());

    // A broker with the team's config but another CA key refuses to serve.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&a.data)
        .arg(&data)
        .status();
    assert!(st.unwrap().success());
    let stranger = tmp.path().join("stranger");
    std::process::Command::new(util::require("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    std::fs::copy(&stranger, data.join("ca_key")).unwrap();
    let out = std::process::Command::new(util::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not the one the database was made with"),
        "{err}"
    );
    verified(&a);
}

fn config_value(b: &Broker, key: &str) -> String {
    let text = std::fs::read_to_string(b.data.join("config.toml")).unwrap();
    let cfg: toml::Value = toml::from_str(&text).unwrap();
    cfg["store"][key].as_str().unwrap().to_string()
}

#[test]
fn a_sled_broker_migrates_into_etcd_with_its_chain() {
    let cluster = EtcdCluster::start(3);
    let mut b = Broker::start_new();
    let (ed, adam, done) = first_cycle(&b);
    let before = verified(&b);

    // A running broker holds its database: refused, nothing copied.
    let migrate = |data: &std::path::Path, prefix: &str| {
        std::process::Command::new(util::bin())
            .args(["migrate", "--from-data-dir"])
            .arg(data)
            .args(["--to-etcd", &cluster.endpoints(), "--etcd-prefix", prefix])
            .output()
            .unwrap()
    };
    let prefix = util::fresh_prefix();
    let out = migrate(&b.data, &prefix);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a running broker"));

    b.stop();
    let out = migrate(&b.data, &prefix);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("entries verify in etcd"), "{said}");
    assert_eq!(config_value(&b, "prefix"), prefix);

    // Into a prefix that holds a team already: refused.
    let other = Broker::start_new();
    let mut other = other;
    other.stop();
    let out = migrate(&other.data, &prefix);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a broker's state"));

    // The migrated broker serves from etcd: its state and chain came along, and it goes on.
    b.spawn();
    all_present(&b, &[done]);
    let after = verified(&b);
    assert_eq!(
        (&after["entries"], &after["head"]),
        (&before["entries"], &before["head"])
    );
    let key = keygen(b.tmp.path(), "k2");
    all_present(&b, &[done, cycle([&b, &b, &b], &ed, &adam, &key).unwrap()]);
    verified(&b);
}

/// Runs openssl with `args` in `dir`, or fails saying how to install it.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let st = std::process::Command::new(util::require("openssl"))
        .current_dir(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl {args:?} failed");
}

/// A CA and a certificate it signs for `name` (SAN 127.0.0.1, usages `eku`), as PEM files.
fn issue(dir: &std::path::Path, name: &str, eku: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={eku}\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

#[test]
fn a_broker_reaches_etcd_over_tls_with_its_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sshjit-test-ca",
        ],
    );
    // etcd's JSON gateway connects to its own gRPC port with the server certificate, so that
    // certificate also serves as a client one.
    issue(d, "server", "serverAuth,clientAuth");
    issue(d, "broker", "clientAuth");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, peer) = (free(), free());
    let url = format!("https://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(d.join("etcd.log")).unwrap();
    let mut etcd = std::process::Command::new(util::etcd::etcd_bin())
        .current_dir(d)
        .args([
            "--name",
            "tls",
            "--data-dir",
            "data",
            "--listen-client-urls",
            &url,
        ])
        .args([
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer_url,
        ])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("tls={peer_url}")])
        .args(["--cert-file", "server.pem", "--key-file", "server.key"])
        .args(["--client-cert-auth", "--trusted-ca-file", "ca.pem"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "etcd over TLS did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let home = tempfile::tempdir().unwrap();
    let owner = keygen(home.path(), "olga");
    let data = home.path().join("data");
    let path = |f: &str| d.join(f).display().to_string();
    let init = |tls: &[&str]| {
        std::process::Command::new(util::bin())
            .args([
                "init",
                "--owner",
                "olga",
                "--owner-key",
                &owner.public,
                "--data-dir",
            ])
            .arg(&data)
            .args(["--store", "etcd", "--etcd-endpoints", &url])
            .args(tls)
            .output()
            .unwrap()
    };
    // Without the CA the broker does not trust etcd; without its certificate etcd does not
    // trust the broker. Both refused, with nothing left behind.
    for tls in [vec![], vec!["--etcd-ca-file".to_string(), path("ca.pem")]] {
        let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
        let out = init(&tls);
        assert!(!out.status.success(), "init with {tls:?} reached etcd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("database is unavailable"), "{stderr}");
        assert!(!data.exists(), "a failed init left {}", data.display());
    }
    let (ca, cert, key) = (path("ca.pem"), path("broker.pem"), path("broker.key"));
    let mut out = init(&[
        "--etcd-ca-file",
        &ca,
        "--etcd-cert-file",
        &cert,
        "--etcd-key-file",
        &key,
    ]);
    // etcd may still be electing itself leader a moment after it listens.
    let start = Instant::now();
    while !out.status.success() && start.elapsed() < Duration::from_secs(20) {
        let _ = std::fs::remove_dir_all(&data);
        std::thread::sleep(Duration::from_millis(300));
        out = init(&[
            "--etcd-ca-file",
            &ca,
            "--etcd-cert-file",
            &cert,
            "--etcd-key-file",
            &key,
        ]);
    }
    assert!(out.status.success(), "{out:?}");
    let config = std::fs::read_to_string(data.join("config.toml")).unwrap();
    assert!(
        config.contains("ca_file") && config.contains("key_file"),
        "{config}"
    );

    let b = Broker::start_from(home, data, owner);
    let (_, _, done) = first_cycle(&b);
    all_present(&b, &[done]);
    verified(&b);
    let _ = etcd.kill();
    let _ = etcd.wait();
}
