//! A certificate's answer carries the proof that its audit entry is in the log, taken once the
//! entry is durable: the answers one flush covers share one signed checkpoint, every proof
//! still verifies as the helper checks it, and a plain-text answer is the certificate alone.

#[path = "../benches/support/fixture.rs"]
#[allow(dead_code)]
mod fixture;

use fixture::{Fixture, fixture, parsed};
use sshjit::checkpoint::NoteVerifier;
use sshjit::client::witness::certificate_in_log;
use sshjit::contract::CertView;

/// Checks `stdout` as the helper does and returns the answer.
fn checked(stdout: &str) -> CertView {
    let view: CertView = serde_json::from_str(stdout).unwrap();
    let verifier = NoteVerifier::parse(&view.log.checkpoint.key).unwrap();
    let checkpoint = certificate_in_log(&view, &verifier).unwrap();
    assert_eq!(checkpoint.size, view.log.size);
    view
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn certificates_one_flush_covers_share_one_signed_checkpoint() {
    let Fixture {
        _tmp,
        broker,
        alice,
        subject,
        now,
        ..
    } = fixture();
    let broker = std::sync::Arc::new(broker);
    let cert = parsed("cert 1 --json");
    let first = broker.execute_deferred(&alice, &cert, subject.as_bytes(), now);
    let second = broker.execute_deferred(&alice, &cert, subject.as_bytes(), now);
    let rt = runtime();
    // Once the second is durable, so is everything before it, and nothing commits after it.
    let second = rt.block_on(broker.finish(second)).unwrap();
    let first = rt.block_on(broker.finish(first)).unwrap();
    assert_eq!(
        (first.status, second.status),
        (0, 0),
        "{first:?} {second:?}"
    );
    let (first, second) = (checked(&first.stdout), checked(&second.stdout));
    assert_eq!(second.serial, first.serial + 1);
    // Both are proven against the durable log, which ends with the second's entry.
    assert_eq!(first.log.size, second.serial);
    assert_eq!(second.log.size, second.serial);
    assert_eq!(first.log.checkpoint, second.log.checkpoint);
    assert_ne!(first.log.proof, second.log.proof);
}

#[test]
fn an_answer_waits_for_its_flush_and_text_is_the_certificate_alone() {
    let Fixture {
        _tmp,
        broker,
        alice,
        subject,
        cert,
        now,
        ..
    } = fixture();
    let broker = std::sync::Arc::new(broker);
    let answer = broker.execute_deferred(&alice, &cert, subject.as_bytes(), now);
    // A change is never shown before it is durable.
    let answer = answer.ready().unwrap_err();
    let out = runtime().block_on(broker.finish(answer)).unwrap();
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout.starts_with("ssh-ed25519-cert-v01@openssh.com "));
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);

    // In one call (the broker waits for the flush itself) the proof is there as well.
    let json = parsed("cert 1 --json");
    let out = broker.execute(&alice, &json, subject.as_bytes(), now);
    assert_eq!(out.status, 0, "{out:?}");
    let view = checked(&out.stdout);
    assert_eq!(view.log.seq, view.serial);

    // A refusal has nothing to wait for and no proof to add.
    let refused = broker
        .execute_deferred(&alice, &parsed("cert 99 --json"), subject.as_bytes(), now)
        .ready()
        .unwrap();
    assert_eq!(refused.status, 1);
    assert!(
        refused.stderr.contains("\"code\":\"not_found\""),
        "{refused:?}"
    );
}
