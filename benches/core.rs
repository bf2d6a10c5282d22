//! Criterion benches for the broker's hot paths, each next to the baseline its target names:
//! certificate issuance vs raw Ed25519 signing, audit verify vs raw SHA-256 over the same bytes,
//! the transactional audit append, and policy evaluation. `examples/bench_report.rs` turns the
//! estimates into the ratios in docs/PERFORMANCE.md.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "support/fixture.rs"]
mod fixture;
use ed25519_dalek::Signer;
use sha2::{Digest, Sha256};
use sshjit::audit::{AuditEvent, GENESIS, Verifier, seal};
use sshjit::ca::{self, Ca};
use sshjit::model::{GrantRole, Host, IdentityId, Member, Role, Timestamp};
use sshjit::policy::{self, Ask, Asking, History, Policy};
use sshjit::store::Store;
use sshjit::target::Found;

const T0: Timestamp = Timestamp::from_unix(1_900_000_000);

fn member(name: &str, role: Role) -> Member {
    Member {
        id: IdentityId(name.len() as u64),
        name: name.parse().unwrap(),
        role,
        kind: Default::default(),
        keys: vec![],
        key_fingerprints: vec![],
        key_added_by: vec![],
        added_at: T0,
        added_by: "bench".into(),
    }
}

fn host() -> Found {
    Found::host(&Host {
        id: IdentityId(100),
        name: "web-01".parse().unwrap(),
        address: "10.0.0.5".into(),
        port: 22,
        tags: vec!["prod".parse().unwrap()],
        logins: BTreeMap::from([
            (GrantRole::Viewer, "ro".to_string()),
            (GrantRole::Editor, "deploy".to_string()),
        ]),
        approvals_required: 1,
        break_glass: false,
        escalate_after_secs: None,
        added_at: T0,
        added_by: "bench".into(),
    })
}

fn approved_request() -> sshjit::model::Request {
    let mut r = open(
        &Policy::default(),
        42,
        &member("alice", Role::Viewer),
        &host(),
    );
    let alice = member("alice", Role::Viewer);
    policy::approve(
        &mut r,
        &member("olga", Role::Owner),
        Some(&alice),
        Some(&host()),
        &[],
        None,
        T0,
    )
    .unwrap();
    r
}

/// `Policy::open` for `requester` on `found`, with no history and no rules.
fn open(p: &Policy, id: u64, requester: &Member, found: &Found) -> sshjit::model::Request {
    let asking = Asking {
        requester,
        found,
        ask: &ask(),
        open: &[],
        approvers: 1,
        history: &History::default(),
        rules: &[],
        written: None,
    };
    p.open(id, &asking, T0).unwrap()
}

fn ask() -> Ask<'static> {
    Ask {
        role: Some(GrantRole::Editor),
        duration_secs: 7200,
        reason: "INC-42 restart the stuck worker",
        start: None,
        break_glass: false,
    }
}

fn issuance(c: &mut Criterion) {
    let ca_key = ca::generate_key("bench-ca").unwrap();
    let subject = ca::generate_key("subject")
        .unwrap()
        .public_key()
        .key_data()
        .clone();
    let req = approved_request();
    let grant = req.grant().unwrap().clone();
    let hosts: Vec<_> = grant.scope.hosts.iter().collect();
    let profile = ca::profile(&req, &grant, &hosts, 7);
    let ca = Ca::new(ca_key.clone());
    // What the CA signs: the certificate's to-be-signed bytes are about this long.
    let tbs_len = ca
        .sign(&subject, &profile)
        .unwrap()
        .to_openssh()
        .unwrap()
        .len()
        * 3
        / 4;
    let message = vec![0x5au8; tbs_len];
    let seed = ca_key.key_data().ed25519().unwrap().private.to_bytes();
    let raw = ed25519_dalek::SigningKey::from_bytes(&seed);

    let mut g = c.benchmark_group("issuance");
    g.throughput(Throughput::Elements(1));
    g.bench_function("certificate_build_sign_encode", |b| {
        b.iter(|| {
            black_box(
                ca.sign(black_box(&subject), black_box(&profile))
                    .unwrap()
                    .to_openssh()
                    .unwrap(),
            )
        })
    });
    g.bench_function("raw_ed25519_sign", |b| {
        b.iter(|| black_box(raw.sign(black_box(&message))))
    });
    g.finish();
}

fn chain(n: u64) -> Vec<Vec<u8>> {
    let mut prev = GENESIS;
    (1..=n)
        .map(|seq| {
            let ev = AuditEvent::CertificateIssued {
                id: seq,
                serial: seq,
                key_id: format!("sshjit:{seq}:alice"),
                principals: vec!["deploy@web-01".into()],
                valid_after: T0,
                valid_before: T0.plus(7200),
                key_fingerprint: "SHA256:3q2+7w5zTZm9hL1JgMnJx1zG7bDgB8bQ2jQfYk0c8aA".into(),
                force_command: None,
            };
            let (raw, h) = seal(seq, T0, "alice", &ev, &prev).unwrap();
            prev = h;
            raw
        })
        .collect()
}

fn audit(c: &mut Criterion) {
    let entries = chain(10_000);
    let mut g = c.benchmark_group("audit_verify");
    g.throughput(Throughput::Elements(entries.len() as u64));
    g.bench_function("verify_chain", |b| {
        b.iter(|| {
            let mut v = Verifier::default();
            entries.iter().for_each(|e| v.push(e));
            assert!(v.finish().ok);
        })
    });
    g.bench_function("raw_sha256_same_bytes", |b| {
        b.iter(|| {
            let mut prev = [0u8; 32];
            for e in &entries {
                let mut h = Sha256::new();
                h.update(prev);
                h.update(e);
                prev = h.finalize().into();
            }
            black_box(prev)
        })
    });
    g.finish();

    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut g = c.benchmark_group("audit_append");
    g.throughput(Throughput::Elements(1));
    g.bench_function("transaction_with_flush", |b| {
        b.iter(|| {
            store
                .apply(T0, "bench", |_tx| {
                    Ok((
                        (),
                        vec![AuditEvent::MemberRemoved {
                            name: "x".into(),
                            role: None,
                        }],
                    ))
                })
                .unwrap()
        })
    });
    // The transaction alone: the chain, the tree and the head, without the shared flush.
    g.bench_function("commit_only", |b| {
        b.iter(|| {
            store
                .commit(T0, "bench", |_tx| {
                    Ok((
                        (),
                        vec![AuditEvent::MemberRemoved {
                            name: "x".into(),
                            role: None,
                        }],
                    ))
                })
                .unwrap()
        })
    });
    g.finish();
}

fn policy_eval(c: &mut Criterion) {
    let (alice, olga, h) = (
        member("alice", Role::Viewer),
        member("olga", Role::Owner),
        host(),
    );
    let p = Policy::default();
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(1));
    g.bench_function("open_approve_authorize", |b| {
        b.iter(|| {
            let mut r = open(&p, 1, &alice, &h);
            policy::approve(&mut r, &olga, Some(&alice), Some(&h), &[], None, T0).unwrap();
            black_box(p.authorize_cert(&r, &alice, |_| true, T0.plus(60)).is_ok())
        })
    });
    g.finish();
}

/// Whole commands through `Broker::execute`, without the SSH transport.
fn commands(c: &mut Criterion) {
    use sshjit::commands::parse_line;
    let f = fixture::fixture();
    let (broker, afp, subject, now) = (&f.broker, &f.alice, &f.subject, f.now);
    let (cert, whoami) = (&f.cert, &f.whoami);
    let mut g = c.benchmark_group("commands");
    g.throughput(Throughput::Elements(1));
    // A line seen before is remembered; a new one is parsed (the ids run past the memo's size).
    g.bench_function("parse_cert_line_repeated", |b| {
        b.iter(|| black_box(parse_line(b"cert 1").unwrap()))
    });
    let mut id = 0u64;
    g.bench_function("parse_cert_line_new", |b| {
        b.iter(|| {
            id += 1;
            black_box(parse_line(format!("cert {id}").as_bytes()).unwrap())
        })
    });
    g.bench_function("whoami", |b| {
        b.iter(|| assert_eq!(broker.execute(afp, whoami, b"", now).status, 0))
    });
    g.bench_function("cert_durable", |b| {
        b.iter(|| assert_eq!(broker.execute(afp, cert, subject.as_bytes(), now).status, 0))
    });
    g.bench_function("cert_commit_only", |b| {
        b.iter(|| {
            assert_eq!(
                broker
                    .execute_deferred(afp, cert, subject.as_bytes(), now)
                    .status(),
                0
            )
        })
    });
    g.finish();
}

criterion_group!(benches, issuance, audit, policy_eval, commands);
criterion_main!(benches);
