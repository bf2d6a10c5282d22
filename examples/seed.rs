//! Fills a fresh data dir with a realistic history for the scale checks in scripts/bench:
//! many members, requests in every state (a recent slice still pending), and audit entries,
//! all written through the store's normal transactions so the chain is real.
//!
//! ```text
//! cargo run --release --example seed -- --data-dir DIR --requests 100000 --audit 1000000 \
//!     --member-key alice.pub --approver-key adam.pub
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use sshjit::audit::AuditEvent;
use sshjit::datadir::{self, DataDir};
use sshjit::model::{GrantRole, Host, IdentityId, Member, Role, Timestamp};
use sshjit::policy::{self, Ask, Asking, History};
use sshjit::target::Found;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Total audit entries to reach (filled up with certificate records).
    #[arg(long, default_value_t = 1_000_000)]
    audit: u64,
    /// Public key of `alice` (viewer), who owns a share of the requests.
    #[arg(long)]
    member_key: PathBuf,
    /// Public key of `adam` (admin), the approver.
    #[arg(long)]
    approver_key: PathBuf,
}

const MEMBERS: usize = 100;
const RECENT_PENDING: u64 = 1000;
const BATCH: u64 = 500;

fn member(name: &str, role: Role, key: &str, now: Timestamp) -> anyhow::Result<Member> {
    Ok(sshjit::ca::member_with_key(
        name.parse()?,
        role,
        key,
        "seed",
        now,
    )?)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let now = Timestamp::now();
    let opened = datadir::open(&DataDir::new(&a.data_dir))?;
    let store = opened.broker.store();
    let random_key = || -> anyhow::Result<String> {
        Ok(sshjit::ca::generate_key("seed")?
            .public_key()
            .to_openssh()?)
    };
    let mut members = vec![
        member(
            "alice",
            Role::Viewer,
            &std::fs::read_to_string(&a.member_key)?,
            now,
        )?,
        member(
            "adam",
            Role::Admin,
            &std::fs::read_to_string(&a.approver_key)?,
            now,
        )?,
    ];
    for i in 0..MEMBERS - 2 {
        members.push(member(
            &format!("m{i:03}"),
            Role::Viewer,
            &random_key()?,
            now,
        )?);
    }
    let hosts: Vec<Host> = (0..20)
        .map(|i| -> anyhow::Result<Host> {
            Ok(Host {
                id: IdentityId(0),
                name: format!("web-{i:02}").parse()?,
                address: format!("10.0.0.{i}"),
                port: 22,
                tags: vec![if i % 4 == 0 { "prod" } else { "dev" }.parse()?],
                logins: BTreeMap::from([
                    (GrantRole::Viewer, "ro".to_string()),
                    (GrantRole::Editor, "deploy".to_string()),
                ]),
                approvals_required: 1,
                break_glass: false,
                escalate_after_secs: None,
                added_at: now,
                added_by: "seed".into(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    // The store gives each member and host its identity.
    let (members, hosts) = store.apply(now, "seed", |tx| {
        let mut events = vec![];
        let (mut ms, mut hs) = (vec![], vec![]);
        for m in &members {
            let m = tx.add_member(m)?;
            events.push(AuditEvent::member_added(&m));
            ms.push(m);
        }
        for h in &hosts {
            let h = tx.add_host(h)?;
            events.push(AuditEvent::host_added(&h));
            hs.push(h);
        }
        Ok(((ms, hs), events))
    })?;

    let approver = members[1].clone();
    let policy = opened.config.policy.clone();
    let mut made = 0u64;
    let found: Vec<Found> = hosts.iter().map(Found::host).collect();
    while made < a.requests {
        let n = BATCH.min(a.requests - made);
        store.apply(now, "seed", |tx| {
            let mut events = vec![];
            for k in 0..n {
                let i = made + k;
                let requester = &members[(i as usize * 7 + 3) % MEMBERS];
                let requester = if requester.name.as_str() == "adam" {
                    &members[0]
                } else {
                    requester
                };
                let host = &found[i as usize % found.len()];
                let recent = i + RECENT_PENDING >= a.requests;
                // Older requests were made over the past weeks, a few seconds apart.
                let at = if recent {
                    now
                } else {
                    Timestamp::from_unix(now.unix() - ((a.requests - i) as i64) * 20)
                };
                let ask = Ask {
                    role: Some(GrantRole::Viewer),
                    duration_secs: 3600,
                    reason: "SEED-1 routine maintenance window",
                    start: None,
                    break_glass: false,
                };
                let id = tx.next_request_id()?;
                let asking = Asking {
                    requester,
                    found: host,
                    ask: &ask,
                    open: &[],
                    approvers: 1,
                    history: &History::default(),
                    rules: &[],
                    written: None,
                };
                let mut r = policy.open(id, &asking, at)?;
                events.push(AuditEvent::RequestCreated {
                    id,
                    requester: r.requester.to_string(),
                    kind: r.kind,
                    resource: r.resource.to_string(),
                    role: r.role,
                    risk: r.risk.score,
                    duration_secs: r.duration_secs,
                    reason: r.reason.clone(),
                    requested_start: None,
                    pending_until: r.pending_until,
                    justification_flags: r.justification.flags.clone(),
                });
                if !recent {
                    match i % 10 {
                        0..=5 => {
                            policy::approve(
                                &mut r,
                                &approver,
                                Some(requester),
                                Some(host),
                                &[],
                                None,
                                at,
                            )?;
                            events.push(AuditEvent::RequestApproved {
                                id,
                                by: "adam".into(),
                                matched: vec![],
                                comment: None,
                                approvals: 1,
                                approvals_required: 1,
                            });
                        }
                        6 | 7 => {
                            policy::deny(&mut r, &approver, "not this time", at)?;
                            events.push(AuditEvent::RequestDenied {
                                id,
                                by: "adam".into(),
                                reason: "not this time".into(),
                            });
                        }
                        8 => {
                            policy::cancel(&mut r, requester, at)?;
                            events.push(AuditEvent::RequestCancelled {
                                id,
                                by: requester.name.to_string(),
                                reason: None,
                            });
                        }
                        _ => {} // left pending: reads as expired
                    }
                }
                tx.put_request(&r)?;
            }
            Ok(((), events))
        })?;
        made += n;
    }
    let mut len = store.audit_len()?;
    while len < a.audit {
        let n = 2000.min(a.audit - len);
        store.apply(now, "seed", |_tx| {
            let events = (0..n)
                .map(|k| AuditEvent::CertificateIssued {
                    id: 1 + (len + k) % a.requests.max(1),
                    serial: len + k,
                    key_id: format!("sshjit:{}:alice", 1 + (len + k) % a.requests.max(1)),
                    principals: vec!["ro@web-01".into()],
                    valid_after: now,
                    valid_before: now.plus(3600),
                    key_fingerprint: "SHA256:seedseedseedseedseedseedseedseedseedseedsee".into(),
                    force_command: None,
                })
                .collect();
            Ok(((), events))
        })?;
        len += n;
    }
    let len = store.audit_len()?;
    eprintln!("seeded {} requests and {len} audit entries", a.requests);
    println!("{}", time_proofs(store, len)?);
    Ok(())
}

/// Times proofs over the whole seeded log, as the broker computes them (stored nodes read
/// from sled; signing the checkpoint not included): a JSON record for the bench report.
fn time_proofs(store: &sshjit::store::Store, len: u64) -> anyhow::Result<String> {
    const N: u64 = 2000;
    type Proof = Vec<[u8; 32]>;
    let micros = |f: &mut dyn FnMut(u64) -> sshjit::Result<Proof>| -> anyhow::Result<(f64, f64)> {
        let mut took = Vec::with_capacity(N as usize);
        for i in 0..N {
            // Spread over the log, with a step that is not a power of two.
            let x = 1 + (i * 7919 * 127) % len;
            let t = std::time::Instant::now();
            std::hint::black_box(f(x)?);
            took.push(t.elapsed().as_secs_f64() * 1e6);
        }
        took.sort_by(f64::total_cmp);
        Ok((took[took.len() / 2], took[took.len() * 99 / 100]))
    };
    let inclusion = micros(&mut |seq| store.audit_inclusion(seq, len))?;
    let consistency = micros(&mut |old| store.audit_consistency(old, len))?;
    Ok(format!(
        "{{\"label\":\"scale_proofs\",\"entries\":{len},\"inclusion_p50_us\":{:.1},\"inclusion_p99_us\":{:.1},\"consistency_p50_us\":{:.1},\"consistency_p99_us\":{:.1}}}",
        inclusion.0, inclusion.1, consistency.0, consistency.1
    ))
}
