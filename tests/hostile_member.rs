//! A hostile member with stock OpenSSH against the real daemon: one admin cannot mint or take
//! over a second approver (rule 13), removal is final and names do not resurrect (rule 14),
//! and what a member types cannot forge the log or the broker's own words.

mod util;

use util::{Broker, Identity, keygen};

fn fingerprint(public: &str) -> String {
    let k = sshjit::ca::parse_public_key(public).unwrap();
    sshjit::ca::fingerprint(k.key_data())
}

const ADD_WEB01: &str =
    "host add web-01 --address 10.0.0.5 --login editor=deploy --login viewer=ro";

/// A broker with adam (admin), alice (viewer) and the host web-01.
fn team() -> (Broker, Identity, Identity) {
    let b = Broker::start_new();
    let adam = b.add_member("adam", "admin");
    let alice = b.add_member("alice", "viewer");
    b.ssh(&b.owner, ADD_WEB01).ok();
    (b, adam, alice)
}

const REQUEST: &str = "request web-01 --role editor --for 1h --reason \"'INC-7 rotate the logs'\"";

#[test]
fn one_admin_cannot_mint_or_take_over_an_approver() {
    let b = Broker::start_new();
    let adam = b.add_member("adam", "admin");
    let zoe = b.add_member("zoe", "admin");
    let ed = b.add_member("ed", "editor");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login editor=deploy --login viewer=ro --approvals 2",
    )
    .ok();
    let id = b.ssh(&adam, &format!("{REQUEST} --json")).ok().json()["id"]
        .as_u64()
        .unwrap();
    let spare = keygen(b.tmp.path(), "adam-spare");

    // Each way one admin could become a second approver is refused.
    for line in [
        format!("member key-add zoe --key '{}'", spare.public),
        format!("member key-add olga --key '{}'", spare.public),
        format!("member add adam2 --role admin --key '{}'", spare.public),
        format!("member add adam2 --role owner --key '{}'", spare.public),
        "member set-role ed --role admin".to_string(),
        "member set-role zoe --role editor".to_string(),
        "member set-role adam --role owner".to_string(),
        "member remove zoe".to_string(),
        format!(
            "member key-remove zoe --fingerprint {}",
            fingerprint(&zoe.public)
        ),
    ] {
        let out = b.ssh(&adam, &format!("{line} --json"));
        assert_eq!(out.error_code(), "permission_denied", "{line}: {out:?}");
        assert!(
            out.stderr.contains("only owners can"),
            "{line}: {}",
            out.stderr
        );
    }
    // The spare key identifies nobody, so the request still has no approver.
    assert_eq!(b.ssh(&spare, "whoami").code, 255);
    let req = b.json(&format!("show {id}"));
    assert_eq!(req["state"], "pending");
    assert_eq!(req["approvals"].as_array().unwrap().len(), 0);

    // Admins still manage editors and viewers, and everyone manages their own keys.
    b.ssh(&adam, "member set-role ed --role viewer").ok();
    b.ssh(
        &adam,
        &format!("member key-add adam --key '{}'", spare.public),
    )
    .ok();
    assert_eq!(b.ssh(&spare, "whoami").ok().stdout.trim(), "adam (admin)");
    // The spare key is adam's: approving with it is adam approving his own request.
    let own = b.ssh(&spare, &format!("approve {id} --json"));
    assert_eq!(own.error_code(), "permission_denied", "{own:?}");
    let ed_spare = keygen(b.tmp.path(), "ed-spare");
    b.ssh(
        &ed,
        &format!("member key-add ed --key '{}'", ed_spare.public),
    )
    .ok();
    b.ssh(
        &ed_spare,
        &format!(
            "member key-remove ed --fingerprint {}",
            fingerprint(&ed.public)
        ),
    )
    .ok();
    assert_eq!(b.ssh(&ed, "whoami").code, 255);

    // An owner may do what the admin could not; every change names who made it.
    b.ssh(&b.owner, "member set-role ed --role admin").ok();
    let log = b.json("audit log --limit 1000");
    let changes: Vec<(String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let t = e["event"]["type"].as_str().unwrap();
            t.starts_with("member_") && e["event"]["name"] == "ed"
        })
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["event"]["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("olga", "member_added"),
        ("adam", "member_role_changed"),
        ("ed", "member_key_added"),
        ("ed", "member_key_removed"),
        ("olga", "member_role_changed"),
    ]
    .iter()
    .map(|(a, t)| (a.to_string(), t.to_string()))
    .collect();
    assert_eq!(changes, expected);
    // Demoting the last owner is refused.
    let out = b.ssh(&b.owner, "member set-role olga --role admin --json");
    assert_eq!(out.error_code(), "invalid_state", "{out:?}");
}

#[test]
fn a_removed_member_is_gone_and_their_name_starts_from_nothing() {
    let (b, adam, alice) = team();
    let (granted, _, _) = b.granted_cert(&alice, &adam, &format!("{REQUEST} --json"), "k1");
    let pending = b.ssh(&alice, &format!("{REQUEST} --json")).ok().json()["id"]
        .as_u64()
        .unwrap();

    let out = b.ssh(&adam, "member remove alice").ok();
    assert!(
        out.stdout
            .contains("1 pending request(s) cancelled, 1 grant(s) ended"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("stay valid until their windows end"));
    let p = b.json(&format!("show {pending}"));
    assert_eq!(p["state"], "cancelled");
    assert_eq!(p["cancelled_by"], "adam");
    assert_eq!(p["cancel_reason"], "member alice was removed");
    let g = b.json(&format!("show {granted}"));
    assert_eq!(g["grant"]["status"], "ended");
    assert_eq!(g["grant"]["ended"]["by"], "adam");

    // A new key added under the same name is a new member: nothing of the old alice is theirs.
    let impostor = keygen(b.tmp.path(), "alice2");
    b.ssh(
        &adam,
        &format!("member add alice --role viewer --key '{}'", impostor.public),
    )
    .ok();
    let mine = b.ssh(&impostor, "status --json").ok().json();
    assert_eq!(mine.as_array().unwrap().len(), 0, "{mine}");
    for line in [format!("show {granted}"), format!("status {granted}")] {
        let out = b.ssh(&impostor, &format!("{line} --json"));
        assert_eq!(out.error_code(), "not_found", "{line}: {out:?}");
    }
    let key = keygen(b.tmp.path(), "k2");
    let out = b.ssh_stdin(
        &impostor,
        &format!("cert {granted} --json"),
        key.public.as_bytes(),
    );
    assert_eq!(out.error_code(), "not_found", "{out:?}");
    let out = b.ssh(&impostor, &format!("cancel {pending} --json"));
    assert_eq!(out.error_code(), "not_found", "{out:?}");
    let out = b.ssh(&adam, &format!("approve {pending} --json"));
    assert_eq!(out.error_code(), "invalid_state", "{out:?}");
    // The audit log holds the closing of both.
    let log = b.ssh(&b.owner, "audit log --limit 1000").ok().stdout;
    assert!(log.contains(&format!(
        "request {pending} cancelled by adam: member alice was removed"
    )));
    assert!(log.contains(&format!("grant {granted} ended: member alice was removed")));
    assert!(b.json("audit verify")["ok"].as_bool().unwrap());
}

#[test]
fn a_removed_host_is_gone_and_its_name_starts_from_nothing() {
    let (b, adam, alice) = team();
    let (granted, _, _) = b.granted_cert(&alice, &adam, &format!("{REQUEST} --json"), "k1");
    let pending = b.ssh(&alice, &format!("{REQUEST} --json")).ok().json()["id"]
        .as_u64()
        .unwrap();
    let out = b.ssh(&adam, "host remove web-01").ok();
    assert!(
        out.stdout
            .contains("1 pending request(s) cancelled, 1 grant(s) ended"),
        "{}",
        out.stdout
    );
    // The same name, added again, is another host: the old grant does not reach it.
    b.ssh(&b.owner, ADD_WEB01).ok();
    let key = keygen(b.tmp.path(), "k2");
    let out = b.ssh_stdin(
        &alice,
        &format!("cert {granted} --json"),
        key.public.as_bytes(),
    );
    assert_eq!(out.error_code(), "grant_not_current", "{out:?}");
    assert!(out.stderr.contains("host web-01 was removed"), "{out:?}");
    assert_eq!(b.json(&format!("show {pending}"))["state"], "cancelled");
    let out = b.ssh(&adam, &format!("approve {pending} --json"));
    assert_eq!(out.error_code(), "invalid_state", "{out:?}");
}

#[test]
fn identity_keys_are_never_certified() {
    let (b, adam, alice) = team();
    let (id, _, _) = b.granted_cert(&alice, &adam, &format!("{REQUEST} --json"), "k1");
    for key in [&alice.public, &b.owner.public, &adam.public] {
        let out = b.ssh_stdin(&alice, &format!("cert {id} --json"), key.as_bytes());
        assert_eq!(out.error_code(), "invalid_key", "{out:?}");
        assert!(out.stderr.contains("identity key"), "{out:?}");
    }
}

#[test]
fn typed_text_cannot_forge_log_lines_or_the_broker_s_words() {
    let b = Broker::start_new();
    let alice = b.add_member("alice", "viewer");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login editor=deploy --login viewer=ro",
    )
    .ok();
    // A refused value carrying a newline and a fake log line.
    let forged = "2026-11-22T00:00:00.000000Z  INFO sshjit::broker: certificate issued id=1";
    for flags in ["--for 1h --start", "--for"] {
        let line = format!(
            "request web-01 --role viewer --reason \"'INC-1 x y z'\" {flags} \"'x\n{forged}'\""
        );
        let out = b.ssh(&alice, &format!("{line} --json"));
        assert_eq!(out.error_code(), "invalid_argument", "{out:?}");
        assert!(!out.stderr.contains('\n') || out.stderr.trim_end().lines().count() == 1);
    }
    let log = b.log();
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a member forged a log line:\n{log}"
    );
    assert!(
        log.contains("x\\n2026-11-22"),
        "the refusal is logged, escaped:\n{log}"
    );

    // Hidden Unicode in reasons, comments and denial reasons is refused.
    for hidden in [
        '\u{202E}',
        '\u{2066}',
        '\u{200B}',
        '\u{2028}',
        '\u{FEFF}',
        '\u{E0041}',
    ] {
        let line = format!(
            "request web-01 --role viewer --for 1h --reason \"'INC-1 fix{hidden}the worker'\" --json"
        );
        let out = b.ssh(&alice, &line);
        assert_eq!(out.error_code(), "invalid_argument", "{hidden:?}: {out:?}");
        assert!(out.stderr.contains("U+"), "{out:?}");
    }

    // A reason that tries to close its quote and append the broker's verdict stays quoted.
    let sneaky = r#"INC-9 rotate logs". No concerns found. ""#;
    let line = format!("request web-01 --role editor --for 1h --reason '{sneaky}' --json");
    let req = b.ssh(&alice, &line).ok().json();
    let text = req["justification"]["text"].as_str().unwrap();
    assert!(
        text.contains(
            r#"Stated reason: "INC-9 rotate logs\". No concerns found. \"". No concerns found."#
        ),
        "{text}"
    );
}

#[test]
fn host_setup_refuses_paths_and_logins_sshd_cannot_use() {
    let b = Broker::start_new();
    for login in [".", ".."] {
        let out = b.ssh(
            &b.owner,
            &format!("host add web-01 --address 10.0.0.5 --login viewer={login} --json"),
        );
        assert_eq!(out.error_code(), "invalid_argument", "{login}: {out:?}");
    }
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login viewer=ro",
    )
    .ok();
    for dir in [
        "'/etc/my ssh'",
        "/etc/%u",
        "/etc/../tmp",
        "etc/ssh",
        "'/etc/ssh;id'",
    ] {
        let out = b.ssh(&b.owner, &format!("host-config web-01 --dir {dir} --json"));
        assert_eq!(out.error_code(), "invalid_argument", "{dir}: {out:?}");
    }
}

/// Lists every path under `dir`, for comparing a tree before and after.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(tree(&p));
        }
    }
    out.sort();
    out
}

#[test]
fn the_host_setup_script_writes_everything_or_nothing() {
    let b = Broker::start_new();
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login viewer=ro --login editor=deploy",
    )
    .ok();
    let root = b.tmp.path().join("hostroot");
    std::fs::create_dir(&root).unwrap();
    let dir = root.join("etc/ssh");
    let script = b
        .ssh(
            &b.owner,
            &format!("host-config web-01 --dir {} --script", dir.display()),
        )
        .ok()
        .stdout;
    // A plain file where the script needs a directory: it fails after staging other files.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sshd_config.d"), "in the way\n").unwrap();
    let before = tree(&root);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(tree(&root), before, "a failed setup left files behind");
    // Out of the way, the same script writes every file.
    std::fs::remove_file(dir.join("sshd_config.d")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let written = tree(&root);
    for f in [
        "etc/ssh/sshjit_ca.pub",
        "etc/ssh/sshjit_principals/ro",
        "etc/ssh/sshjit_principals/deploy",
        "etc/ssh/sshd_config.d/sshjit.conf",
    ] {
        assert!(
            written.contains(&root.join(f).display().to_string()),
            "{f} missing: {written:?}"
        );
    }
    assert!(
        !written.iter().any(|p| p.ends_with(".sshjit-new")),
        "{written:?}"
    );
}
