//! The audit log as a Merkle tree with signed checkpoints (DESIGN rule 20): cutting, rewriting
//! or forking the log of a real data dir is refused by a member's next contact and by an
//! auditor holding an old checkpoint, and stock `ssh-keygen` checks the checkpoint signature.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64ct::{Base64, Encoding};
use serde_json::Value;
use sshjit::audit::{AuditEntry, AuditEvent};
use sshjit::checkpoint::NoteVerifier;
use sshjit::contract::CertView;
use sshjit::store::Store;
use util::*;

/// Rewrites the stopped broker's log as someone holding the database could: `edit` changes
/// the list of entries, and the chain, the tree and the head are re-sealed to match.
fn reseal(data: &Path, edit: impl FnOnce(&mut Vec<AuditEntry>)) {
    let store = Store::open(&data.join("db")).unwrap();
    let mut entries: Vec<AuditEntry> = store
        .audit_raw(0)
        .map(|raw| sshjit::audit::decode(&raw.unwrap()).unwrap())
        .collect();
    edit(&mut entries);
    store.danger_reseal_log(&entries).unwrap();
    let report = store.verify_audit().unwrap();
    assert!(
        report.ok,
        "the re-sealed log must verify on its own: {report:?}"
    );
}

/// `cp -a` of a data dir, kept beside it.
fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn saved_checkpoint(b: &Broker, dir: &Path, name: &str) -> (PathBuf, u64) {
    let note = b.ssh(&b.owner, "audit checkpoint").ok().stdout;
    let size = note.lines().nth(1).unwrap().parse().unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &note).unwrap();
    (path, size)
}

fn offline_verify(data: &Path, checkpoint: &Path) -> (i32, Value) {
    let out = Command::new(bin())
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(data)
        .arg("--checkpoint")
        .arg(checkpoint)
        .output()
        .unwrap();
    let v =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    (out.status.code().unwrap_or(-1), v)
}

fn witness(auditor: &Person, checkpoint: &Path) -> Out {
    let mut c = auditor.cmd(bin());
    c.args(["audit", "witness", "--json", "--checkpoint"])
        .arg(checkpoint);
    run_with_stdin(c, b"")
}

fn refused(out: &Out, why: &str) {
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(out.error_code(), "log_not_extended", "{out:?}");
    assert!(out.stderr.contains(why), "{why:?} not in {out:?}");
}

/// A broker with some history, a member who has been in touch (their helper holds a
/// checkpoint) and an auditor's saved checkpoint of the same size.
fn seen_broker() -> (Broker, Person, Person, PathBuf, u64) {
    let b = Broker::start_new();
    let alice = b.add_member("alice", "viewer");
    for i in 0..5 {
        let line = format!("host add h{i} --address 10.0.0.{i} --login viewer=ro");
        b.ssh(&b.owner, &line).ok();
    }
    let member = Person::new(&b, &alice);
    member.helper(&["--accept-new-broker-key", "whoami"]).ok();
    let auditor = Person::new(&b, &b.owner);
    auditor.admin(&["--accept-new-broker-key", "whoami"]).ok();
    let (saved, size) = saved_checkpoint(&b, b.tmp.path(), "saved.note");
    (b, member, auditor, saved, size)
}

#[test]
fn a_log_cut_short_and_resealed_is_refused() {
    let (mut b, member, auditor, saved, size) = seen_broker();
    let addr = b.addr.to_string();
    b.stop();
    copy_dir(&b.data, &b.tmp.path().join("before"));
    reseal(&b.data, |e| e.truncate(size as usize - 2));
    let (code, v) = offline_verify(&b.data, &saved);
    assert_eq!((code, v["ok"].as_bool()), (1, Some(false)), "{v}");
    assert!(
        v["problem"].as_str().unwrap().contains("entries were cut"),
        "{v}"
    );
    let (code, v) = offline_verify(&b.tmp.path().join("before"), &saved);
    assert_eq!((code, v["ok"].as_bool()), (0, Some(true)), "{v}");

    b.spawn_on(&addr);
    refused(&member.helper(&["--json", "whoami"]), "entries were cut");
    refused(&witness(&auditor, &saved), "entries were cut");
    // Grown back past the size the member saw, it still cannot prove it extends it.
    for i in 0..4 {
        let line = format!("host add x{i} --address 10.1.0.{i} --login viewer=ro");
        b.ssh(&b.owner, &line).ok();
    }
    refused(
        &member.helper(&["--json", "whoami"]),
        "cannot prove that its log",
    );
    refused(&witness(&auditor, &saved), "cannot prove that its log");
}

#[test]
fn an_old_entry_rewritten_and_everything_resealed_is_refused() {
    let (mut b, member, auditor, saved, _) = seen_broker();
    // The member holds a certificate from before.
    member
        .helper(&[
            "request",
            "h0",
            "--role",
            "viewer",
            "--for",
            "1h",
            "--reason",
            "INC-1 read logs",
        ])
        .ok();
    b.ssh(&b.owner, "approve 1").ok();
    member.helper(&["login", "1"]).ok();
    let addr = b.addr.to_string();
    b.stop();
    reseal(&b.data, |entries| {
        // Entry 3 recorded alice as a viewer: make her an owner all along.
        let e = &mut entries[2];
        let AuditEvent::MemberAdded { name, role, .. } = &mut e.event else {
            panic!("entry 3 is not alice's: {e:?}");
        };
        assert_eq!(name, "alice");
        *role = sshjit::model::Role::Owner;
    });
    let (code, v) = offline_verify(&b.data, &saved);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["problem"]
            .as_str()
            .unwrap()
            .contains("do not hash to the checkpoint's root"),
        "{v}"
    );
    b.spawn_on(&addr);
    refused(&member.helper(&["--json", "whoami"]), "another root");
    // The auditor's checkpoint is older: the newer log cannot be proven to extend it.
    refused(&witness(&auditor, &saved), "entries were rewritten");
    // Its stored certificate is not passed over as "broker unreachable": the refusal stands.
    refused(&member.helper(&["--json", "ssh", "h0"]), "another root");
}

#[test]
fn a_fork_shown_to_two_members_is_refused_by_the_one_on_the_other_branch() {
    let mut b = Broker::start_new();
    let alice = b.add_member("alice", "viewer");
    let bob = b.add_member("bob", "viewer");
    let (pa, pb) = (Person::new(&b, &alice), Person::new(&b, &bob));
    pa.helper(&["--accept-new-broker-key", "whoami"]).ok();
    pb.helper(&["--accept-new-broker-key", "whoami"]).ok();
    let addr = b.addr.to_string();
    b.stop();
    let (one, two) = (b.tmp.path().join("one"), b.tmp.path().join("two"));
    copy_dir(&b.data, &two);
    std::fs::rename(&b.data, &one).unwrap();
    let serve = |b: &mut Broker, dir: &Path| {
        std::fs::rename(dir, &b.data).unwrap();
        b.spawn_on(&addr);
    };
    let park = |b: &mut Broker, dir: &Path| {
        b.stop();
        std::fs::rename(&b.data, dir).unwrap();
    };
    // Branch one: alice sees a host added. Branch two, same size: bob sees another.
    serve(&mut b, &one);
    b.ssh(
        &b.owner,
        "host add web-a --address 10.0.0.1 --login viewer=ro",
    )
    .ok();
    pa.helper(&["whoami"]).ok();
    let (alice_saw, size_one) = saved_checkpoint(&b, b.tmp.path(), "one.note");
    park(&mut b, &one);
    serve(&mut b, &two);
    b.ssh(
        &b.owner,
        "host add web-b --address 10.0.0.2 --login viewer=ro",
    )
    .ok();
    pb.helper(&["whoami"]).ok();
    let (bob_saw, size_two) = saved_checkpoint(&b, b.tmp.path(), "two.note");
    assert_eq!(size_one, size_two);
    // On branch two, alice refuses; bob goes on.
    refused(&pa.helper(&["--json", "whoami"]), "another root");
    pb.helper(&["whoami"]).ok();
    park(&mut b, &two);
    // On branch one, bob refuses; alice goes on; an auditor with bob's checkpoint refuses.
    serve(&mut b, &one);
    refused(&pb.helper(&["--json", "whoami"]), "another root");
    pa.helper(&["whoami"]).ok();
    let auditor = Person::new(&b, &b.owner);
    auditor.admin(&["--accept-new-broker-key", "whoami"]).ok();
    refused(&witness(&auditor, &bob_saw), "another root");
    witness(&auditor, &alice_saw).ok();
    park(&mut b, &one);
    let (code, v) = offline_verify(&one, &bob_saw);
    assert_eq!(code, 1, "{v}");
    let (code, v) = offline_verify(&one, &alice_saw);
    assert_eq!(code, 0, "{v}");
    std::fs::rename(&one, &b.data).unwrap();
}

#[test]
fn stock_ssh_keygen_verifies_the_checkpoint_signature() {
    let b = Broker::start_new();
    let note = b.ssh(&b.owner, "audit checkpoint").ok().stdout;
    let mut lines = note.lines();
    let (origin, size) = (lines.next().unwrap(), lines.next().unwrap());
    let body: String = note.lines().take(3).map(|l| format!("{l}\n")).collect();
    let sig = b
        .ssh(
            &b.owner,
            &format!("audit checkpoint --size {size} --sshsig"),
        )
        .ok()
        .stdout;
    assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----"), "{sig}");
    let signers = b.ssh(&b.owner, "audit checkpoint --signers").ok().stdout;
    let published = std::fs::read_to_string(b.data.join("checkpoint_key.pub")).unwrap();
    let key_b64 = published.split_whitespace().nth(1).unwrap();
    assert!(signers.contains(key_b64), "{signers} vs {published}");
    let dir = b.tmp.path();
    std::fs::write(dir.join("signers"), &signers).unwrap();
    std::fs::write(dir.join("checkpoint.sig"), &sig).unwrap();
    let verify = |text: &str| {
        let mut c = Command::new(require("ssh-keygen"));
        c.args([
            "-Y",
            "verify",
            "-n",
            "sshjit-checkpoint",
            "-I",
            origin,
            "-f",
        ])
        .arg(dir.join("signers"))
        .arg("-s")
        .arg(dir.join("checkpoint.sig"));
        run_with_stdin(c, text.as_bytes())
    };
    let good = verify(&body);
    assert_eq!(good.code, 0, "{good:?}");
    assert!(
        good.stdout.contains("Good \"sshjit-checkpoint\" signature"),
        "{good:?}"
    );
    let forged = body.replacen(&format!("\n{size}\n"), &format!("\n{}\n", 1000), 1);
    assert_ne!(forged, body);
    assert_ne!(verify(&forged).code, 0);
}

#[test]
fn any_member_gets_proofs_that_verify_and_bad_asks_are_refused() {
    let b = Broker::start_new();
    let alice = b.add_member("alice", "viewer");
    let cp = b.json("audit checkpoint");
    let size = cp["size"].as_u64().unwrap();
    let verifier = NoteVerifier::parse(cp["key"].as_str().unwrap()).unwrap();
    let checkpoint = verifier
        .open_checkpoint(cp["note"].as_str().unwrap())
        .unwrap();
    assert_eq!(Base64::encode_string(&checkpoint.root), cp["root"]);
    // A viewer gets proofs (hashes only), not the entries.
    let p = b.ssh(&alice, "audit prove 2 --json").ok().json();
    assert!(p.get("entry").is_none(), "{p}");
    assert_eq!(
        b.ssh(&alice, "audit log --json").error_code(),
        "permission_denied"
    );
    let entry = b
        .ssh(&b.owner, "audit export --from 2 --limit 1")
        .ok()
        .stdout;
    let proof: Vec<[u8; 32]> = p["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            Base64::decode_vec(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect();
    let leaf = sshjit::merkle::leaf_hash(entry.trim_end().as_bytes());
    assert!(sshjit::merkle::verify_inclusion(
        &leaf,
        1,
        size,
        &proof,
        &checkpoint.root
    ));
    let c = b
        .ssh(
            &alice,
            &format!("audit consistency --from 1 --to {size} --json"),
        )
        .ok()
        .json();
    assert_eq!(c["checkpoint"]["note"], cp["note"]);
    for (line, code) in [
        ("audit prove 0 --json", "beyond_log"),
        (
            &format!("audit prove {} --json", size + 1) as &str,
            "beyond_log",
        ),
        (
            &format!("audit consistency --from {} --json", size + 1),
            "beyond_log",
        ),
        ("audit consistency --from 1 --to 9999 --json", "beyond_log"),
        ("audit checkpoint --size 0 --json", "invalid_argument"),
        ("audit checkpoint --size 99999999 --json", "beyond_log"),
        ("audit checkpoint --sshsig --signers --json", "usage"),
        ("audit prove -1 --json", "usage"),
    ] {
        let out = b.ssh(&alice, line);
        assert_eq!(out.error_code(), code, "{line}: {out:?}");
    }
}

#[test]
fn a_certificate_carries_its_entry_and_a_proof_the_helper_checks() {
    let b = Broker::start_new();
    let alice = b.add_member("alice", "editor");
    b.ssh(
        &b.owner,
        "host add web-01 --address 10.0.0.5 --login editor=deploy",
    )
    .ok();
    let (_, _, cert) = b.granted_cert(
        &alice,
        &b.owner,
        "request web-01 --role editor --for 1h --reason 'INC-1 fix the deploy' --json",
        "k1",
    );
    let view: CertView = serde_json::from_value(cert).unwrap();
    let verifier = NoteVerifier::parse(&view.log.checkpoint.key).unwrap();
    let ok = sshjit::client::witness::certificate_in_log(&view, &verifier).unwrap();
    assert_eq!(ok.size, view.serial);
    type Tamper = Box<dyn Fn(&mut CertView)>;
    let tampered: Vec<(&str, Tamper)> = vec![
        (
            "entry",
            Box::new(|v| {
                let e = v.log.entry.as_mut().unwrap();
                *e = e.replace("deploy@web-01", "root@web-01");
            }),
        ),
        (
            "proof",
            Box::new(|v| v.log.proof[0] = Base64::encode_string(&[7u8; 32])),
        ),
        ("seq", Box::new(|v| v.log.seq -= 1)),
        (
            "checkpoint",
            Box::new(|v| v.log.checkpoint.note = v.log.checkpoint.note.replacen('=', "A", 1)),
        ),
        ("no entry", Box::new(|v| v.log.entry = None)),
    ];
    for (what, tamper) in tampered {
        let mut bad = view.clone();
        tamper(&mut bad);
        assert!(
            sshjit::client::witness::certificate_in_log(&bad, &verifier).is_err(),
            "a tampered {what} passed"
        );
    }
    // Another certificate's entry and proof do not pass for this one.
    let (_, _, other) = b.granted_cert(
        &alice,
        &b.owner,
        "request web-01 --role editor --for 1h --reason 'INC-2 fix the deploy' --json",
        "k2",
    );
    let other: CertView = serde_json::from_value(other).unwrap();
    let mut swapped = view.clone();
    swapped.log = other.log.clone();
    swapped.serial = other.serial;
    assert!(sshjit::client::witness::certificate_in_log(&swapped, &verifier).is_err());
    // The helper's login checks it and keeps the newer checkpoint.
    let p = Person::new(&b, &alice);
    let out = p.helper(&["--accept-new-broker-key", "--json", "login", "1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let kept = std::fs::read_to_string(
        p.home
            .path()
            .join(format!(".config/sshjit/checkpoints/{}", p.broker)),
    )
    .unwrap();
    let latest = b.json("audit checkpoint");
    assert!(kept.ends_with(latest["note"].as_str().unwrap()), "{kept}");
}
