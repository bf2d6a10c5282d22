//! The helper `sshjit` and `sshjit-broker admin` end to end, with real OpenSSH:
//! request --wait, approve --yes, login, `sshjit ssh`, plain ssh via ssh-config, ssh-agent,
//! broker host key pinning, and the local files.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::{Broker, Identity, Person, Sshd, free_port, helper_bin, require, ssh_opts};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Starts `sshjit request web-01 ... --wait` for `who` and returns once the broker has it.
fn start_waiting(b: &Broker, who: &Person, role: &str, dur: &str, reason: &str) -> Child {
    let child = who
        .cmd(helper_bin())
        .args([
            "--accept-new-broker-key",
            "request",
            "web-01",
            "--role",
            role,
            "--for",
            dur,
        ])
        .args(["--reason", reason, "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while b
        .json("requests --state pending")
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the request never arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// A real ssh-agent in the foreground on `sock`; returns once it listens.
fn start_agent(sock: &Path) -> Child {
    let agent = Command::new(require("ssh-agent"))
        .arg("-D")
        .arg("-a")
        .arg(sock)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ssh-agent did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

/// A broker with alice (viewer) and adam (admin), and host web-01 backed by a real sshd.
fn setup() -> (Broker, Identity, Sshd, String) {
    let b = Broker::start_new();
    let me = util::current_user();
    let alice = b.add_member("alice", "viewer");
    let port = free_port();
    b.ssh(&b.owner, &format!("host add web-01 --address 127.0.0.1 --port {port} --login editor={me} --login viewer=sshjit-ro")).ok();
    let sshd = b.host_sshd("web-01", port);
    (b, alice, sshd, me)
}

#[test]
fn request_wait_approve_login_and_ssh() {
    let (b, alice_id, sshd, me) = setup();
    let alice = Person::new(&b, &alice_id);
    let olga = Person::new(&b, &b.owner);

    // 1. alice asks and waits in the background.
    let waiting = start_waiting(
        &b,
        &alice,
        "editor",
        "1h",
        "INC-77 restart the stuck worker",
    );

    // 2. olga reviews and approves with --yes.
    let table = olga.admin(&["--accept-new-broker-key", "requests"]).ok();
    assert!(
        table.stdout.contains("alice")
            && table.stdout.contains("web-01")
            && table.stdout.contains("0/1"),
        "{table:?}"
    );
    let approved = olga.admin(&["approve", "1", "--yes"]).ok();
    assert!(
        approved.stdout.contains("request 1 approved"),
        "{approved:?}"
    );
    assert!(
        approved
            .stderr
            .contains(&format!("hosts          1 ({me}@web-01)")),
        "the approver was not shown the grant: {approved:?}"
    );

    // 3. alice's helper fetches the certificate.
    let out = waiting.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("needs 1 approval(s) from: olga"),
        "{stdout}"
    );
    assert!(
        stdout.contains("certificate for web-01 (serial")
            && stdout.contains(&format!("logins       {me}@web-01")),
        "{stdout}"
    );
    let dir = alice.certs_dir().join("web-01");
    for f in ["1", "1.pub", "1-cert.pub", "1.json"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&alice.certs_dir()), 0o700);

    // 4. sshjit ssh logs in to the real sshd as the granted login.
    let opts = ssh_opts(alice.home.path());
    let mut args = vec!["ssh", "web-01", "--"];
    args.extend(opts.iter().map(String::as_str));
    args.extend(["id", "-un"]);
    let ssh = alice.helper(&args);
    assert_eq!(ssh.code, 0, "{ssh:?}\n{}", sshd.log());
    assert_eq!(ssh.stdout.trim(), me);

    // 5. plain ssh through the ssh-config block.
    let block = alice.helper(&["ssh-config"]).ok().stdout;
    assert!(
        block.contains("Host web-01") && block.contains("CertificateFile"),
        "{block}"
    );
    let cfg = alice.home.path().join("ssh_config");
    std::fs::write(&cfg, &block).unwrap();
    let mut plain = Command::new(require("ssh"));
    plain
        .arg("-F")
        .arg(&cfg)
        .args(&opts[2..])
        .args(["web-01", "id", "-un"]);
    let plain = util::run_with_stdin(plain, b"");
    assert_eq!(plain.code, 0, "{plain:?}\n{}", sshd.log());
    assert_eq!(plain.stdout.trim(), me);

    // status and certs show the grant with time left.
    let status = alice.helper(&["status"]).ok().stdout;
    assert!(
        status.contains("active") && status.contains("left as"),
        "{status}"
    );
    let certs = alice.helper(&["certs"]).ok().stdout;
    assert!(certs.contains("web-01") && certs.contains(&me), "{certs}");

    // Expired files go at the next helper command. (The stored window is moved into the past
    // to stand in for an hour passing.)
    let meta = dir.join("1.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    v["valid_before"] = serde_json::json!("2001-01-01T00:00:00Z");
    std::fs::write(&meta, v.to_string()).unwrap();
    alice.helper(&["certs"]).ok();
    assert!(
        !dir.join("1").exists() && !dir.join("1-cert.pub").exists(),
        "expired key left behind"
    );
}

#[test]
fn login_adds_the_certificate_to_a_real_agent_for_the_time_left() {
    let (b, alice_id, _sshd, _me) = setup();
    let alice = Person::new(&b, &alice_id);
    let adam = b.add_member("adam", "admin");
    let id = b
        .ssh(
            &alice_id,
            "request web-01 --role viewer --for 30m --reason 'INC-5 read logs' --json",
        )
        .ok()
        .json()["id"]
        .as_u64()
        .unwrap();
    b.ssh(&adam, &format!("approve {id}")).ok();

    // A real ssh-agent, and a PATH shim that records what ssh-add is asked before running it.
    let sock = alice.home.path().join("agent.sock");
    let mut agent = start_agent(&sock);
    let shim = alice.home.path().join("bin");
    std::fs::create_dir(&shim).unwrap();
    let log = alice.home.path().join("ssh-add.args");
    std::fs::write(
        shim.join("ssh-add"),
        format!(
            "#!/bin/sh\necho \"$@\" > {}\nexec {} \"$@\"\n",
            log.display(),
            require("ssh-add").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(shim.join("ssh-add"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap());

    let mut c = alice.cmd(helper_bin());
    c.env("SSH_AUTH_SOCK", &sock).env("PATH", &path).args([
        "--accept-new-broker-key",
        "--json",
        "login",
        &id.to_string(),
    ]);
    let login = util::run_with_stdin(c, b"").ok();
    let cert: serde_json::Value = login.json();

    let mut list = Command::new(require("ssh-add"));
    list.env("SSH_AUTH_SOCK", &sock).arg("-l");
    let listed = util::run_with_stdin(list, b"").ok().stdout;
    assert!(
        listed.contains("ED25519-CERT"),
        "agent does not hold the certificate: {listed}"
    );

    let args = std::fs::read_to_string(&log).unwrap();
    let secs: i64 = args
        .split_whitespace()
        .skip_while(|w| *w != "-t")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let end =
        sshjit::model::Timestamp::parse_rfc3339(cert["valid_before"].as_str().unwrap()).unwrap();
    let left = sshjit::model::Timestamp::now().until(end);
    assert!(
        (secs - left).abs() <= 5 && secs > 1700,
        "lifetime {secs}s, but {left}s are left in the window"
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn broker_host_keys_are_pinned_like_openssh() {
    let b = Broker::start_new();
    let alice_id = b.add_member("alice", "viewer");
    let alice = Person::new(&b, &alice_id);

    // No terminal and no --accept-new-broker-key: refused, nothing pinned.
    let first = alice.helper(&["status"]);
    assert_ne!(first.code, 0);
    assert!(
        first.stderr.contains("first contact with the broker")
            && first.stderr.contains("--accept-new-broker-key"),
        "{first:?}"
    );
    let known = alice.home.path().join(".config/sshjit/known_brokers");
    assert!(!known.exists());

    // Accepted once, then remembered.
    alice.helper(&["--accept-new-broker-key", "status"]).ok();
    alice.helper(&["status"]).ok();

    // A changed key is refused loudly, even with --accept-new-broker-key.
    let text = std::fs::read_to_string(&known).unwrap();
    let other = sshjit::ca::generate_key("x")
        .unwrap()
        .public_key()
        .to_openssh()
        .unwrap();
    let (who, _) = text.trim().split_once(' ').unwrap();
    std::fs::write(&known, format!("{who} {other}\n")).unwrap();
    let changed = alice.helper(&["--accept-new-broker-key", "status"]);
    assert_ne!(changed.code, 0);
    assert!(
        changed.stderr.contains("HOST KEY HAS CHANGED"),
        "{changed:?}"
    );

    // A configured fingerprint pins without asking.
    std::fs::remove_file(&known).unwrap();
    let host_key = std::fs::read_to_string(b.data.join("host_key")).unwrap();
    let key = russh::keys::PrivateKey::from_openssh(host_key.trim()).unwrap();
    let fingerprint = sshjit::ca::fingerprint(key.public_key().key_data());
    let cfg_dir = alice.home.path().join(".config/sshjit");
    std::fs::write(
        cfg_dir.join("config.toml"),
        format!("broker_fingerprint = \"{fingerprint}\"\n"),
    )
    .unwrap();
    alice.helper(&["status"]).ok();
    std::fs::remove_file(&known).unwrap();
    std::fs::write(
        cfg_dir.join("config.toml"),
        "broker_fingerprint = \"SHA256:wrong\"\n",
    )
    .unwrap();
    let wrong = alice.helper(&["status"]);
    assert!(
        wrong.stderr.contains("configured broker_fingerprint"),
        "{wrong:?}"
    );
}

#[test]
fn admin_approve_refuses_without_a_terminal_or_yes() {
    let (b, alice_id, _sshd, _) = setup();
    let olga = Person::new(&b, &b.owner);
    b.ssh(
        &alice_id,
        "request web-01 --role viewer --for 30m --reason 'INC-5 read logs'",
    )
    .ok();
    let out = olga.admin(&["--accept-new-broker-key", "approve", "1"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("rerun with --yes"), "{out:?}");
    assert_eq!(b.json("show 1")["state"], "pending");
    // Pass-through commands print the broker's own output, and --json its JSON.
    let hosts = olga.admin(&["host", "list", "--json"]).ok().json();
    assert_eq!(hosts[0]["name"], "web-01");
    // Help is the broker's help, whatever the command.
    for cmd in ["approve", "requests", "deny"] {
        let help = olga.admin(&[cmd, "--help"]).ok();
        assert!(help.stdout.contains("Usage:"), "{cmd}: {help:?}");
    }
    // --state in its = form overrides the pending default.
    let denied = olga.admin(&["requests", "--state=denied", "--json"]).ok();
    assert_eq!(denied.json().as_array().unwrap().len(), 0, "{denied:?}");
    // The id is found after --comment's value, and an approval of your own request is
    // refused by the broker before anything is asked.
    b.add_member("adam", "admin");
    b.ssh(
        &b.owner,
        "request web-01 --role viewer --for 30m --reason 'INC-6 read logs'",
    )
    .ok();
    let own = olga.admin(&["approve", "--comment", "x", "2"]);
    assert_ne!(own.code, 0);
    assert!(
        own.stderr.contains("cannot approve your own request 2"),
        "{own:?}"
    );
    assert!(!own.stderr.contains("--yes"), "{own:?}");
}

#[test]
fn ssh_fetches_an_unfetched_grant_or_names_the_request_to_make() {
    let (b, alice_id, sshd, me) = setup();
    let alice = Person::new(&b, &alice_id);
    let opts = ssh_opts(alice.home.path());
    let ssh_args = |extra: &[&'static str]| {
        let mut a: Vec<String> = vec![
            "--accept-new-broker-key".into(),
            "ssh".into(),
            "web-01".into(),
            "--".into(),
        ];
        a.extend(opts.iter().cloned());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let none = alice.helper(
        &ssh_args(&["true"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_ne!(none.code, 0);
    assert!(
        none.stderr.contains("you have no current grant for web-01")
            && none.stderr.contains("sshjit request web-01"),
        "{none:?}"
    );

    // Approved but never fetched: `sshjit ssh` fetches it, then connects.
    b.ssh(
        &alice_id,
        "request web-01 --role editor --for 20m --reason 'INC-6 check disk'",
    )
    .ok();
    b.ssh(&b.owner, "approve 1").ok();
    let ok = alice.helper(
        &ssh_args(&["id", "-un"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(ok.code, 0, "{ok:?}\n{}", sshd.log());
    assert_eq!(ok.stdout.trim(), me);
    assert!(alice.certs_dir().join("web-01/1-cert.pub").exists());

    // A stored certificate serves with no broker settings at all: `ssh` is local.
    let mut c = alice.cmd(helper_bin());
    c.env_remove("SSHJIT_BROKER")
        .env_remove("SSHJIT_IDENTITY")
        .args(ssh_args(&["id", "-un"]).iter().skip(1));
    let offline = util::run_with_stdin(c, b"");
    assert_eq!(offline.code, 0, "{offline:?}");
    assert_eq!(offline.stdout.trim(), me);

    // A certificate from another CA (the broker was replaced) is not offered: the helper
    // says so and fetches one from this broker's CA for the current grant.
    let meta = alice.certs_dir().join("web-01/1.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["ca_fingerprint"] = "SHA256:an-old-ca".into();
    std::fs::write(&meta, v.to_string()).unwrap();
    let again = alice.helper(
        &ssh_args(&["id", "-un"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again.stderr.contains("was signed by CA SHA256:an-old-ca")
            && again.stderr.contains("it was replaced"),
        "{again:?}"
    );
    let fresh: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    assert_ne!(fresh["ca_fingerprint"], "SHA256:an-old-ca");

    // The habits of tsh: ls, whoami, logout.
    let ls = alice.helper(&["ls"]).ok();
    assert!(
        ls.stdout.contains("web-01") && ls.stdout.contains("sshjit-ro"),
        "{ls:?}"
    );
    let who = alice.helper(&["whoami", "--json"]).ok().json();
    assert_eq!(who["name"], "alice");
    let out = alice.helper(&["logout", "1"]).ok();
    assert!(
        out.stdout
            .contains("removed the key and certificate for web-01"),
        "{out:?}"
    );
    assert!(!alice.certs_dir().join("web-01/1-cert.pub").exists());
    let out = alice.helper(&["logout", "1"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("no stored certificate for request 1"),
        "{out:?}"
    );
    alice.helper(&["logout", "--all"]).ok();
}

#[test]
fn ctrl_c_while_waiting_leaves_the_request_pending_and_cancel_withdraws_it() {
    let (b, alice_id, _sshd, _) = setup();
    let alice = Person::new(&b, &alice_id);
    let mut waiting = start_waiting(&b, &alice, "viewer", "15m", "INC-8 look at the queue");
    // Give the helper time to print the request and start waiting (and listening for Ctrl-C).
    std::thread::sleep(Duration::from_millis(1000));
    util::signal(&waiting, "INT");
    let status = util::wait_timeout(&mut waiting, Duration::from_secs(10))
        .expect("the helper ignored Ctrl-C");
    let out = waiting.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("request 1 is still pending") && stderr.contains("sshjit login 1"),
        "{stderr}"
    );
    assert_eq!(b.json("show 1")["state"], "pending");

    alice.helper(&["cancel", "1"]).ok();
    assert_eq!(b.json("show 1")["state"], "cancelled");
    let again = alice.helper(&["cancel", "1", "--json"]);
    assert_ne!(again.code, 0);
    assert_eq!(again.error_code(), "invalid_state");
}

#[test]
fn an_identity_held_only_in_ssh_agent_works() {
    let b = Broker::start_new();
    let alice_id = b.add_member("alice", "viewer");
    let alice = Person::new(&b, &alice_id);
    let sock = alice.home.path().join("agent.sock");
    let mut agent = start_agent(&sock);
    let mut add = Command::new(require("ssh-add"));
    add.env("SSH_AUTH_SOCK", &sock).arg("-q").arg(&alice_id.key);
    util::run_with_stdin(add, b"").ok();
    let mut c = alice.cmd(helper_bin());
    c.env("SSH_AUTH_SOCK", &sock)
        .env("SSHJIT_IDENTITY", "agent")
        .args(["--accept-new-broker-key", "status", "--json"]);
    let out = util::run_with_stdin(c, b"").ok();
    assert_eq!(out.json(), serde_json::json!([]));
    // A key the broker does not know is refused with advice.
    let mut c = alice.cmd(helper_bin());
    c.env("SSH_AUTH_SOCK", &sock)
        .env("SSHJIT_IDENTITY", "agent:SHA256:nope")
        .arg("status");
    let refused = util::run_with_stdin(c, b"");
    assert!(
        refused
            .stderr
            .contains("ssh-agent holds no key SHA256:nope"),
        "{refused:?}"
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn the_config_file_gives_request_a_default_role_and_duration() {
    let b = Broker::start_new();
    let alice_id = b.add_member("alice", "viewer");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login viewer=ro",
    )
    .ok();
    let alice = Person::new(&b, &alice_id);
    let cfg = alice.home.path().join(".config/sshjit");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.toml"),
        "role = \"viewer\"\nduration = \"45m\"\n",
    )
    .unwrap();
    let r = alice
        .helper(&[
            "--accept-new-broker-key",
            "--json",
            "request",
            "web-01",
            "--reason",
            "INC-8 read the logs",
        ])
        .ok()
        .json();
    assert_eq!(
        (r["role"].as_str(), r["duration_secs"].as_u64()),
        (Some("viewer"), Some(2700))
    );
    // The command line still wins.
    let r = alice
        .helper(&[
            "--json",
            "request",
            "web-01",
            "--for",
            "1h",
            "--reason",
            "INC-8 more logs",
        ])
        .ok()
        .json();
    assert_eq!(r["duration_secs"], 3600);
    // The default role is for hosts and fleets: a fleet command takes none.
    b.ssh(
        &b.owner,
        "command add uptime --host web-01 --run uptime --login ro",
    )
    .ok();
    let r = alice
        .helper(&["--json", "request", "uptime", "--reason", "INC-8 is it up"])
        .ok()
        .json();
    assert_eq!(
        (r["kind"].as_str(), r["role"].is_null()),
        (Some("command"), true),
        "{r}"
    );
    // An unknown key in the file is an error that names the file.
    std::fs::write(cfg.join("config.toml"), "rol = \"viewer\"\n").unwrap();
    let out = alice.helper(&["request", "web-01", "--reason", "x"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("config.toml is invalid"), "{out:?}");
}
