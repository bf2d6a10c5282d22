//! The audit log over SSH: `audit log`, `audit verify` and `audit export` (owners and
//! admins); the proofs any member may ask for are in `proofs`.

use serde_json::Value;

use super::{Broker, Reply, require_manager};
use crate::audit::{self, AuditEvent};
use crate::commands::AuditCommand;
use crate::error::{Error, Result};
use crate::model::Member;

impl Broker {
    pub(super) fn audit(&self, actor: &Member, cmd: &AuditCommand) -> Result<Reply> {
        if matches!(
            cmd,
            AuditCommand::Checkpoint { .. }
                | AuditCommand::Prove { .. }
                | AuditCommand::Consistency { .. }
        ) {
            return self.log_proof(cmd);
        }
        require_manager(actor, "read the audit log")?;
        match cmd {
            AuditCommand::Log { limit: 0, .. } => Err(Error::invalid("--limit must be at least 1")),
            AuditCommand::Log { from, limit } => {
                let mut entries = Vec::new();
                let mut text = String::new();
                for raw in self.store.audit_raw(*from).take(*limit) {
                    let e = audit::decode(&raw?)?;
                    text.push_str(&format!(
                        "{:>6} {} {:<12} {}\n",
                        e.seq,
                        e.at,
                        e.actor,
                        describe_event(&e.event)
                    ));
                    entries.push(serde_json::to_value(&e)?);
                }
                Ok(Reply::new(Value::Array(entries), text))
            }
            AuditCommand::Verify => Ok(verify_reply(self.store.verify_audit()?)),
            AuditCommand::Export { limit: Some(0), .. } => {
                Err(Error::invalid("--limit must be at least 1"))
            }
            AuditCommand::Checkpoint { .. }
            | AuditCommand::Prove { .. }
            | AuditCommand::Consistency { .. } => self.log_proof(cmd),
            AuditCommand::Export { from, limit } => {
                let mut text = String::new();
                for raw in self
                    .store
                    .audit_raw(*from)
                    .take(limit.unwrap_or(usize::MAX))
                {
                    text.push_str(&String::from_utf8_lossy(&raw?));
                    text.push('\n');
                }
                let mut reply = Reply::new(Value::Null, text);
                reply.raw = true;
                Ok(reply)
            }
        }
    }
}

/// The answer to `audit verify`, online or offline: non-zero status when the chain is broken.
pub fn verify_reply(report: audit::VerifyReport) -> Reply {
    let text = match (&report.first_bad_seq, &report.problem) {
        (Some(seq), Some(p)) => format!(
            "audit log BROKEN at entry {seq}: {p} ({} entries before it verify)",
            report.entries
        ),
        (None, Some(p)) => format!(
            "audit log BROKEN: {p} ({} entries verify one by one)",
            report.entries
        ),
        _ => {
            let against = match report.checkpoint {
                Some(size) => format!("; it extends the checkpoint of {size} entries"),
                None => String::new(),
            };
            format!(
                "audit log ok: {} entries, head {}, tree root {}{against}",
                report.entries, report.head, report.root
            )
        }
    };
    let ok = report.ok;
    let mut reply = Reply::new(serde_json::to_value(&report).unwrap_or(Value::Null), text);
    if !ok {
        reply.status = 1;
    }
    reply
}

fn describe_event(e: &AuditEvent) -> String {
    match e {
        AuditEvent::BrokerInitialized {
            owner,
            ca_fingerprint,
        } => {
            format!("broker initialized, owner {owner}, CA {ca_fingerprint}")
        }
        AuditEvent::MemberAdded { name, role, .. } => format!("member {name} added as {role}"),
        AuditEvent::MemberRemoved { name, .. } => format!("member {name} removed"),
        AuditEvent::MemberRoleChanged { name, from, to } => {
            format!("member {name} role changed from {from} to {to}")
        }
        AuditEvent::MemberKeyAdded {
            name,
            key_fingerprint,
        } => format!("member {name} key {key_fingerprint} added"),
        AuditEvent::MemberKeyRemoved {
            name,
            key_fingerprint,
        } => format!("member {name} key {key_fingerprint} removed"),
        AuditEvent::HostAdded {
            name,
            address,
            port,
            ..
        } => format!("host {name} added ({address}:{port})"),
        AuditEvent::HostRemoved { name } => format!("host {name} removed"),
        AuditEvent::FleetAdded { name, tags, .. } => {
            format!("fleet {name} added (tags {})", tags.join(", "))
        }
        AuditEvent::FleetRemoved { name } => format!("fleet {name} removed"),
        AuditEvent::RuleAdded { name, conditions } => {
            format!("rule {name} added: approves when {}", conditions.join("; "))
        }
        AuditEvent::RuleRemoved { name } => format!("rule {name} removed"),
        AuditEvent::BreakGlass {
            id,
            requester,
            resource,
            review_due,
            ..
        } => format!(
            "BREAK-GLASS request {id}: {requester} on {resource}, granted without approvers; review due by {review_due}"
        ),
        AuditEvent::BreakGlassReviewed {
            id,
            by,
            verdict,
            late,
            ..
        } => format!(
            "break-glass {id} reviewed by {by}: {verdict}{}",
            if *late { " (late)" } else { "" }
        ),
        AuditEvent::CommandAdded {
            name,
            on,
            run,
            login,
            ..
        } => format!("command {name} added: runs {run:?} as {login} on {on}"),
        AuditEvent::CommandRemoved { name } => format!("command {name} removed"),
        AuditEvent::RequestCreated {
            id,
            requester,
            kind,
            resource,
            role,
            duration_secs,
            ..
        } => {
            let what = match role {
                Some(role) => format!("{role} on {kind} {resource}"),
                None => format!("to run {kind} {resource}"),
            };
            format!(
                "request {id} created: {requester} asks {what} for {}",
                crate::model::format_duration(*duration_secs)
            )
        }
        AuditEvent::RequestApproved {
            id,
            by,
            approvals,
            approvals_required,
            ..
        } => {
            format!("request {id} approved by {by} ({approvals}/{approvals_required})")
        }
        AuditEvent::RequestDenied { id, by, reason } => {
            format!("request {id} denied by {by}: {reason}")
        }
        AuditEvent::RequestCancelled { id, by, reason } => match reason {
            Some(r) => format!("request {id} cancelled by {by}: {r}"),
            None => format!("request {id} cancelled by {by}"),
        },
        AuditEvent::GrantEnded { id, reason } => format!("grant {id} ended: {reason}"),
        AuditEvent::Due { id, what } => {
            format!(
                "request {id}: {} ({what})",
                crate::notify::schedule::describe(*what)
            )
        }
        AuditEvent::NotifyTest {} => "test notification sent".to_string(),
        AuditEvent::GrantStarted {
            id,
            start,
            end,
            principals,
            force_command,
            ..
        } => {
            let mut s = format!("grant {id}: {start} to {end} for {}", principals.join(" "));
            if let Some(run) = force_command {
                s.push_str(&format!(", forced command {run:?}"));
            }
            s
        }
        AuditEvent::CertificateIssued {
            id,
            serial,
            key_id,
            key_fingerprint,
            ..
        } => {
            format!(
                "certificate serial {serial} ({key_id}) for request {id}, key {key_fingerprint}"
            )
        }
    }
}
