//! Fleets and fleet commands end to end with real OpenSSH: three sshd hosts, each set up only
//! from `host-config`; a fleet certificate that opens exactly the fleet's hosts; and a fleet
//! command whose certificate runs only its command, through `sshjit run` and plain ssh.

mod util;

use std::process::Command;

use sshjit::datadir::{self, DataDir};
use sshjit::model::Timestamp;
use util::{
    Broker, CertInfo, Person, current_user, free_port, inspect_cert, keygen, require,
    run_with_stdin, ssh_opts,
};

#[test]
fn fleets_and_fleet_commands_on_three_real_hosts() {
    let b = Broker::start_new();
    let me = current_user();
    let adam = b.add_member("adam", "admin");
    let alice_id = b.add_member("alice", "viewer");
    let alice = Person::new(&b, &alice_id);
    let ports = [free_port(), free_port(), free_port()];
    for (name, port, tag) in [
        ("web-01", ports[0], "web"),
        ("web-02", ports[1], "web"),
        ("db-01", ports[2], "db"),
    ] {
        b.ssh(
            &b.owner,
            &format!(
                "host add {name} --address 127.0.0.1 --port {port} --login viewer={me} --tag {tag}"
            ),
        )
        .ok();
    }
    b.ssh(&b.owner, "fleet add web --tag web").ok();
    let fleet = b.json("fleet show web");
    assert_eq!(fleet["hosts"], serde_json::json!(["web-01", "web-02"]));
    b.ssh(
        &b.owner,
        &format!(
            "command add restart-web --fleet web --run 'echo forced on port ${{SSH_CONNECTION##* }}' --login {me}"
        ),
    )
    .ok();
    let web01 = b.host_sshd("web-01", ports[0]);
    let web02 = b.host_sshd("web-02", ports[1]);
    let db01 = b.host_sshd("db-01", ports[2]);
    let tmp = b.tmp.path();

    // A fleet command: the approver sees the scope, the helper runs it on both web hosts.
    let asked = alice.helper(&[
        "--accept-new-broker-key",
        "request",
        "restart-web",
        "--for",
        "30m",
        "--reason",
        "INC-4 restart the stuck workers",
        "--json",
    ]);
    let req: serde_json::Value = serde_json::from_str(&asked.stdout).unwrap();
    assert_eq!(
        (req["kind"].as_str(), req["role"].is_null()),
        (Some("command"), true),
        "{req}"
    );
    assert!(
        req["justification"]["text"]
            .as_str()
            .unwrap()
            .contains("2 hosts: web-01, web-02")
    );
    let id = req["id"].as_u64().unwrap();
    let shown = b.ssh(&adam, &format!("show {id}")).ok().stdout;
    assert!(
        shown.contains(&format!("hosts          2 ({me}@web-01, {me}@web-02)"))
            && shown.contains("runs only      echo forced on port ${SSH_CONNECTION##* }"),
        "{shown}"
    );
    b.ssh(&adam, &format!("approve {id}")).ok();
    let mut args = vec!["run", "restart-web", "--"];
    let opts = ssh_opts(alice.home.path());
    args.extend(opts.iter().map(String::as_str));
    let ran = alice.helper(&args);
    assert_eq!(ran.code, 0, "{ran:?}\n{}\n{}", web01.log(), web02.log());
    for (host, port) in [("web-01", ports[0]), ("web-02", ports[1])] {
        assert!(
            ran.stdout
                .contains(&format!("{host} | forced on port {port}")),
            "{ran:?}"
        );
    }
    assert!(
        ran.stdout
            .contains("restart-web on 2 host(s): 2 ok, 0 failed"),
        "{ran:?}"
    );
    let as_json: serde_json::Value = serde_json::from_str(
        &alice
            .helper(&[&args[..2], &["--json", "--"], &args[3..]].concat())
            .stdout,
    )
    .unwrap();
    assert_eq!(as_json["ok"], true, "{as_json}");
    assert_eq!(as_json["results"][1]["exit_status"], 0, "{as_json}");

    // `sshjit ls` shows fleets and commands; `sshjit certs` the command's certificate.
    let ls = alice.helper(&["ls", "--json"]).ok().json();
    assert_eq!(ls["fleets"][0]["name"], "web", "{ls}");
    assert_eq!(ls["commands"][0]["name"], "restart-web", "{ls}");
    assert_eq!(ls["hosts"].as_array().unwrap().len(), 3, "{ls}");
    let certs = alice.helper(&["certs"]).ok().stdout;
    assert!(
        certs
            .lines()
            .any(|l| l.starts_with("restart-web") && l.contains("command")),
        "{certs}"
    );

    // The same certificate with plain ssh: whatever is asked, sshd runs only the command,
    // and forwarding is refused. The certificate has force-command and no extensions.
    let key = alice.certs_dir().join(format!("restart-web/{id}"));
    let CertInfo {
        principals,
        critical_options: critical,
        extensions,
        ..
    } = inspect_cert(&alice.certs_dir().join(format!("restart-web/{id}-cert.pub")));
    assert_eq!(principals, [format!("{me}@web-01"), format!("{me}@web-02")]);
    assert_eq!(
        critical,
        ["force-command echo forced on port ${SSH_CONNECTION##* }"]
    );
    assert!(extensions.is_empty(), "{extensions:?}");
    let other = web01.login(tmp, &key, &me, "id -un; cat /etc/hostname");
    assert_eq!(
        other.stdout.trim(),
        format!("forced on port {}", ports[0]),
        "{other:?}"
    );
    let mut fwd = Command::new(require("ssh"));
    fwd.args(ssh_opts(tmp))
        .arg("-i")
        .arg(&key)
        .args([
            "-p",
            &ports[0].to_string(),
            "-W",
            &format!("127.0.0.1:{}", ports[1]),
        ])
        .arg(format!("{me}@127.0.0.1"));
    let fwd = run_with_stdin(fwd, b"");
    assert_ne!(fwd.code, 0, "{fwd:?}");
    assert!(fwd.stderr.contains("forwarding failed"), "{fwd:?}");
    assert!(
        web01.log().contains("refused local port forward"),
        "{}",
        web01.log()
    );
    let refused = db01.login(tmp, &key, &me, "true");
    assert_eq!(refused.code, 255, "{refused:?}");

    // A fleet grant: one certificate opens both web hosts and not the db host; `sshjit ssh`
    // finds it for either web host.
    let (fid, fkey, cert) = b.granted_cert(
        &alice_id,
        &adam,
        "request web --role viewer --for 1h --reason 'INC-5 compare the web configs' --json",
        "fleet-key",
    );
    assert_eq!(cert["kind"], "fleet");
    assert!(cert["host"].is_null(), "{cert}");
    assert_eq!(
        cert["principals"],
        serde_json::json!([format!("{me}@web-01"), format!("{me}@web-02")])
    );
    for sshd in [&web01, &web02] {
        let out = sshd.login(tmp, &fkey.key, &me, "id -un");
        assert_eq!(out.stdout.trim(), me, "{out:?}\n{}", sshd.log());
    }
    let refused = db01.login(tmp, &fkey.key, &me, "id -un");
    assert_eq!(refused.code, 255, "{refused:?}");
    // sshd writes its log as the connection ends: give it a moment.
    let refusal = format!("ID sshjit:{fid}:alice");
    let start = std::time::Instant::now();
    while !db01.log().contains(&refusal) && start.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = db01.log();
    let line = log.lines().position(|l| l.contains(&refusal)).unwrap_or(0);
    assert!(
        line > 0
            && log.lines().nth(line - 1)
                == Some("Certificate does not contain an authorized principal"),
        "{log}"
    );
    let mut args = vec!["ssh", "web-02", "--"];
    args.extend(opts.iter().map(String::as_str));
    args.extend(["id", "-un"]);
    let via_helper = alice.helper(&args);
    assert_eq!(via_helper.stdout.trim(), me, "{via_helper:?}");
    let block = alice.helper(&["ssh-config"]).ok().stdout;
    assert!(
        block.contains("Host web-01") && block.contains("Host web-02"),
        "{block}"
    );

    // The grant's hosts were fixed at approval: a host tagged later is not in new
    // certificates, and a host removed later gets none.
    let late = free_port();
    b.ssh(
        &b.owner,
        &format!("host add web-03 --address 127.0.0.1 --port {late} --login viewer={me} --tag web"),
    )
    .ok();
    assert_eq!(
        b.json("fleet show web")["hosts"].as_array().unwrap().len(),
        3
    );
    let fresh = keygen(tmp, "fresh");
    let again = |b: &Broker| {
        b.ssh_stdin(
            &alice_id,
            &format!("cert {fid} --json"),
            fresh.public.as_bytes(),
        )
        .ok()
        .json()["principals"]
            .clone()
    };
    assert_eq!(
        again(&b),
        serde_json::json!([format!("{me}@web-01"), format!("{me}@web-02")])
    );
    b.ssh(&b.owner, "host remove web-02").ok();
    assert_eq!(again(&b), serde_json::json!([format!("{me}@web-01")]));

    // The audit log names the scope of the grant and of every certificate.
    let export = b.ssh(&b.owner, "audit export").ok().stdout;
    let events: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect();
    let entry = |kind: &str| {
        events
            .iter()
            .find(|e| e["type"] == kind && e["id"] == id)
            .unwrap_or_else(|| panic!("no {kind} entry for {id}: {export}"))
    };
    let run_line = "echo forced on port ${SSH_CONNECTION##* }";
    let started = entry("grant_started");
    assert_eq!(started["force_command"], run_line);
    assert_eq!(
        started["principals"],
        serde_json::json!([format!("{me}@web-01"), format!("{me}@web-02")])
    );
    assert_eq!(entry("certificate_issued")["force_command"], run_line);
    assert_eq!(b.json("audit verify")["ok"], true);

    // With one host down, `run` reports it and exits non-zero.
    drop(web02);
    let mut args = vec!["run", "restart-web", "--"];
    args.extend(opts.iter().map(String::as_str));
    let ran = alice.helper(&args);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout.contains("1 ok, 1 failed or unreachable"),
        "{ran:?}"
    );
}

#[test]
fn a_fleet_larger_than_a_certificate_can_name_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let owner = keygen(tmp.path(), "olga");
    let alice = keygen(tmp.path(), "alice");
    let dir = DataDir::new(tmp.path().join("data"));
    let t0 = Timestamp::from_unix(1_900_000_000);
    datadir::init(&dir, "olga", &owner.public, "127.0.0.1:0", t0).unwrap();
    let opened = datadir::open(&dir).unwrap();
    let core = &opened.broker;
    let fp = |k: &util::Identity| {
        sshjit::ca::fingerprint(sshjit::ca::parse_public_key(&k.public).unwrap().key_data())
    };
    let run = |who, line: &str| core.run_line(&fp(who), line.as_bytes(), b"", t0);
    let ok = |who, line: &str| {
        let out = run(who, line);
        assert_eq!(out.status, 0, "{line}: {out:?}");
        out
    };
    ok(
        &owner,
        &format!("member add alice --role viewer --key '{}'", alice.public),
    );
    let adam = keygen(tmp.path(), "adam");
    ok(
        &owner,
        &format!("member add adam --role admin --key '{}'", adam.public),
    );
    for i in 1..=257 {
        ok(
            &owner,
            &format!(
                "host add h-{i:03} --address 10.1.{}.{} --login viewer=ro --tag bulk",
                i / 200,
                i % 200
            ),
        );
    }
    ok(&owner, "fleet add bulk --tag bulk");
    let out = run(
        &alice,
        "request bulk --role viewer --for 1h --reason 'INC-9 check every host' --json",
    );
    assert_ne!(out.status, 0);
    let v: serde_json::Value = serde_json::from_str(out.stderr.trim()).unwrap();
    assert_eq!(v["error"]["code"], "limit_reached", "{v}");
    assert!(
        out.stderr
            .contains("fleet bulk covers 257 hosts, more than the 256 one grant may hold"),
        "{out:?}"
    );
    // A host fewer, and it fits: one certificate names all 256.
    ok(&owner, "host remove h-257");
    let out = ok(
        &alice,
        "request bulk --role viewer --for 1h --reason 'INC-9 check every host' --json",
    );
    let id = serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_u64()
        .unwrap();
    ok(&adam, &format!("approve {id}"));
    let fresh = keygen(tmp.path(), "fresh");
    let cert = core.run_line(
        &fp(&alice),
        format!("cert {id} --json").as_bytes(),
        fresh.public.as_bytes(),
        t0,
    );
    let v: serde_json::Value = serde_json::from_str(&cert.stdout).unwrap();
    assert_eq!(v["principals"].as_array().unwrap().len(), 256, "{cert:?}");
    // --max-hosts caps it lower.
    ok(&owner, "fleet add small --tag bulk --max-hosts 10");
    let out = run(
        &alice,
        "request small --role viewer --for 1h --reason 'INC-9 check every host' --json",
    );
    assert!(
        out.stderr
            .contains("covers 256 hosts, more than the 10 one grant may hold"),
        "{out:?}"
    );
}

#[test]
fn host_config_names_the_logins_of_the_commands_that_run_on_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let owner = keygen(tmp.path(), "olga");
    let dir = DataDir::new(tmp.path().join("data"));
    let t0 = Timestamp::from_unix(1_900_000_000);
    datadir::init(&dir, "olga", &owner.public, "127.0.0.1:0", t0).unwrap();
    let opened = datadir::open(&dir).unwrap();
    let fp = sshjit::ca::fingerprint(
        sshjit::ca::parse_public_key(&owner.public)
            .unwrap()
            .key_data(),
    );
    let run = |line: &str| {
        let out = opened.broker.run_line(&fp, line.as_bytes(), b"", t0);
        assert_eq!(out.status, 0, "{line}: {out:?}");
        out.stdout
    };
    run("host add q-01 --address 10.0.0.1 --login viewer=ro --tag queue");
    run("host add q-02 --address 10.0.0.2 --login viewer=ro --tag other");
    run("fleet add queue --tag queue");
    let added = run("command add drain --fleet queue --run 'worker drain' --login ops");
    assert!(
        added.contains("note: q-01 has no login ops yet; run 'host-config HOST' again"),
        "{added}"
    );
    let files = |host: &str| -> Vec<(String, String)> {
        let v: serde_json::Value =
            serde_json::from_str(&run(&format!("host-config {host} --json"))).unwrap();
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["path"].as_str().unwrap().to_string(),
                    f["content"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let q1 = files("q-01");
    assert!(
        q1.contains(&("/etc/ssh/sshjit_principals/ops".into(), "ops@q-01\n".into())),
        "{q1:?}"
    );
    assert!(
        !files("q-02").iter().any(|(p, _)| p.ends_with("/ops")),
        "q-02 is not in the fleet"
    );
}
