//! End to end with real OpenSSH: stock ssh drives the broker, ssh-keygen reads the certificate,
//! and a real sshd set up only from `host-config` accepts or refuses it.

mod util;

use util::{Broker, CertInfo, inspect_cert, keygen};

/// ssh-keygen prints validity in local time; run it with TZ=UTC and compare to the grant.
fn utc_window(start: &str, end: &str) -> String {
    format!("from {} to {}", &start[..19], &end[..19])
}

#[test]
fn stock_openssh_from_request_to_login_on_a_real_sshd() {
    // ssh-keygen -L prints local time; pin it to UTC for the comparison.
    unsafe { std::env::set_var("TZ", "UTC") };
    let b = Broker::start_new();
    let me = util::current_user();
    let adam = b.add_member("adam", "admin");
    let alice = b.add_member("alice", "viewer");
    for (name, editor) in [("web-01", me.as_str()), ("web-02", me.as_str())] {
        b.ssh(&b.owner, &format!("host add {name} --address 127.0.0.1 --login editor={editor} --login viewer=sshjit-ro --tag web")).ok();
    }

    // alice asks, adam approves.
    let req = b.ssh(&alice, "request web-01 --role editor --for 2h --reason 'INC-7 restart the stuck worker' --json").ok().json();
    let id = req["id"].as_u64().unwrap();
    assert_eq!(req["state"], "pending");
    assert_eq!(req["justification"]["source"], "deterministic");
    assert_eq!(req["approvers"], serde_json::json!(["adam", "olga"]));
    let approved = b
        .ssh(
            &adam,
            &format!("approve {id} --comment 'looks fine' --json"),
        )
        .ok()
        .json();
    assert_eq!(approved["state"], "approved");
    let grant = approved["grant"].clone();
    assert_eq!(grant["logins"], serde_json::json!([me]));

    // alice certifies a fresh key made with ssh-keygen, sending it on stdin.
    let fresh = keygen(b.tmp.path(), "alice-grant");
    let cert = b
        .ssh_stdin(
            &alice,
            &format!("cert {id} --json"),
            fresh.public.as_bytes(),
        )
        .ok()
        .json();
    let cert_path = b.tmp.path().join("alice-grant-cert.pub");
    std::fs::write(
        &cert_path,
        format!("{}\n", cert["certificate"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(cert["valid_after"], grant["start"]);
    assert_eq!(cert["valid_before"], grant["end"]);
    assert_eq!(cert["login"], me.as_str());
    assert_eq!(cert["host"]["name"], "web-01");

    // ssh-keygen sees exactly the grant window, the key id and the principals.
    let CertInfo {
        key_id,
        serial,
        valid,
        principals,
        extensions,
        ..
    } = inspect_cert(&cert_path);
    assert_eq!(key_id, format!("\"sshjit:{id}:alice\""));
    assert_eq!(serial, cert["serial"].to_string());
    assert_eq!(
        valid,
        utc_window(
            grant["start"].as_str().unwrap(),
            grant["end"].as_str().unwrap()
        )
    );
    assert_eq!(principals, vec![format!("{me}@web-01")]);
    assert_eq!(extensions, vec!["permit-port-forwarding", "permit-pty"]);

    // A real sshd configured only from host-config's script.
    let sshd = b.host_sshd("web-01", util::free_port());
    let ok = sshd.login(b.tmp.path(), &fresh.key, &me, "echo logged-in-as-$(id -un)");
    assert_eq!(
        ok.code,
        0,
        "login refused: {ok:?}\nsshd log:\n{}",
        sshd.log()
    );
    assert_eq!(ok.stdout.trim(), format!("logged-in-as-{me}"));
    let log = sshd.log();
    assert!(
        log.contains(&format!(
            "Accepted certificate ID \"sshjit:{id}:alice\" (serial {serial})"
        )),
        "{log}"
    );

    // The same sshd refuses a certificate for another host...
    let (_, other, c2) = b.granted_cert(
        &alice,
        &adam,
        "request web-02 --role editor --for 1h --reason 'INC-8 same fix on web-02' --json",
        "alice-web02",
    );
    let refused = sshd.login(b.tmp.path(), &other.key, &me, "true");
    assert_ne!(
        refused.code, 0,
        "a web-02 certificate opened web-01: {refused:?}"
    );

    // ...and a VIEWER certificate for the EDITOR login.
    let (_, viewer, c3) = b.granted_cert(
        &alice,
        &adam,
        "request web-01 --role viewer --for 1h --reason 'INC-9 read the worker logs' --json",
        "alice-viewer",
    );
    assert_eq!(c3["principals"], serde_json::json!(["sshjit-ro@web-01"]));
    let ext = inspect_cert(&b.tmp.path().join("alice-viewer-cert.pub")).extensions;
    assert_eq!(ext, vec!["permit-pty"]);
    let refused = sshd.login(b.tmp.path(), &viewer.key, &me, "true");
    assert_ne!(
        refused.code, 0,
        "a viewer certificate opened the editor login: {refused:?}"
    );

    // Serials are unique and increasing; the chain verifies.
    let s: Vec<u64> = [&cert, &c2, &c3]
        .iter()
        .map(|c| c["serial"].as_u64().unwrap())
        .collect();
    assert!(s[0] < s[1] && s[1] < s[2], "{s:?}");
    let v = b.json("audit verify");
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn key_given_as_words_on_the_exec_line_works_too() {
    let b = Broker::start_new();
    let adam = b.add_member("adam", "admin");
    b.ssh(
        &b.owner,
        "host add db-01 --address 10.0.0.9 --login viewer=ro --login editor=dba",
    )
    .ok();
    let id = b
        .ssh(
            &b.owner,
            "request db-01 --role viewer --for 10m --reason 'CHG-1 check replication' --json",
        )
        .ok()
        .json()["id"]
        .as_u64()
        .unwrap();
    b.ssh(&adam, &format!("approve {id}")).ok();
    let k = keygen(b.tmp.path(), "k");
    // stock ssh joins words with spaces: the key arrives as up to three words.
    let out = b
        .ssh(&b.owner, &format!("cert {id} --key {}", k.public))
        .ok();
    assert!(
        out.stdout.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{out:?}"
    );
    // Owners are capped at EDITOR: JIT elevates, never downgrades, never past EDITOR.
    let show = b.json(&format!("show {id}"));
    assert_eq!(show["grant"]["effective_role"], "editor");
    assert_eq!(show["grant"]["logins"], serde_json::json!(["dba"]));
}
