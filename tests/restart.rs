//! Restarts: requests, grants, serials and the audit chain survive a graceful stop and a SIGKILL,
//! and the offline verifier refuses a database the daemon holds.

mod util;

use std::process::Command;

use util::{Broker, bin, keygen};

fn offline_verify(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(bin())
        .args(["audit", "verify", "--json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v, stderr)
}

#[test]
fn state_survives_graceful_stop_and_sigkill() {
    let mut b = Broker::start_new();
    let adam = b.add_member("adam", "admin");
    let alice = b.add_member("alice", "viewer");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login editor=deploy --login viewer=ro",
    )
    .ok();
    let id = b
        .ssh(
            &alice,
            "request web-01 --role editor --for 2h --reason 'INC-3 rotate keys on web-01' --json",
        )
        .ok()
        .json()["id"]
        .as_u64()
        .unwrap();
    b.ssh(&adam, &format!("approve {id}")).ok();
    let k = keygen(b.tmp.path(), "grant");
    let serial = |b: &Broker| -> u64 {
        b.ssh_stdin(&alice, &format!("cert {id} --json"), k.public.as_bytes())
            .ok()
            .json()["serial"]
            .as_u64()
            .unwrap()
    };
    let s1 = serial(&b);
    let pending = b
        .ssh(
            &alice,
            "request web-01 --role viewer --for 30m --reason 'INC-4 read logs' --json",
        )
        .ok()
        .json()["id"]
        .as_u64()
        .unwrap();

    // While the daemon runs, the offline verifier is told the database is in use.
    let data = b.data.to_str().unwrap().to_string();
    let (code, _, stderr) = offline_verify(&["--data-dir", &data]);
    assert_ne!(code, 0);
    assert!(stderr.contains("in use by a running broker"), "{stderr}");

    let export = b.ssh(&b.owner, "audit export").ok().stdout;
    let entries_before = export.lines().count() as u64;
    // A large log can be exported in pages that add up to the whole.
    let mut paged = String::new();
    let mut from = 1;
    while from <= entries_before {
        let page = b
            .ssh(&b.owner, &format!("audit export --from {from} --limit 3"))
            .ok()
            .stdout;
        assert!(page.lines().count() <= 3);
        paged.push_str(&page);
        from += 3;
    }
    assert_eq!(paged, export);

    // Graceful stop: exit 0, then the offline verifier reads the same chain.
    assert!(b.stop().success(), "broker log:\n{}", b.log());
    let (code, v, _) = offline_verify(&["--data-dir", &data]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["entries"], entries_before);
    let export_file = b.tmp.path().join("export.jsonl");
    std::fs::write(&export_file, &export).unwrap();
    let (code, v2, _) = offline_verify(&["--file", export_file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(
        v2["head"], v["head"],
        "export and database disagree on the head"
    );

    // Start again: everything is there and serials keep increasing.
    b.spawn();
    let status = b.ssh(&alice, "status --json").ok().json();
    let states: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["approved", "pending"]);
    assert_eq!(status[1]["id"], pending);
    let s2 = serial(&b);
    assert!(s2 > s1, "serial went from {s1} to {s2}");

    // SIGKILL right after an acknowledged change: it is still there after a restart.
    let id3 = b
        .ssh(
            &alice,
            "request web-01 --role viewer --for 30m --reason 'INC-5 read more logs' --json",
        )
        .ok()
        .json()["id"]
        .as_u64()
        .unwrap();
    let s3 = serial(&b);
    b.kill();
    b.spawn();
    let shown = b.ssh(&b.owner, &format!("show {id3} --json")).ok().json();
    assert_eq!(shown["state"], "pending");
    let s4 = serial(&b);
    assert!(s3 > s2 && s4 > s3, "serials {s2} {s3} {s4}");
    let certs = b.ssh(&b.owner, &format!("show {id} --json")).ok().json()["certificates"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(certs, 4);
    let v = b.json("audit verify");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["entries"].as_u64().unwrap(), entries_before + 4);
}

#[test]
fn offline_verify_refuses_a_dir_without_a_database_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let (code, _, stderr) = offline_verify(&["--data-dir", missing.to_str().unwrap()]);
    assert_ne!(code, 0);
    let v: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(v["error"]["code"], "data_dir");
    assert!(!missing.exists(), "verify created {}", missing.display());
    let (code, _, stderr) = offline_verify(&["--file", missing.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot read"), "{stderr}");
}
