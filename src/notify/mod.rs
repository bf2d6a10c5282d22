//! Notifications: which changes notify, the outbox record each one leaves in the same
//! transaction as its audit entry, and what falls due later (expiry, escalation, a window's
//! end, a review), so approvers hear of everything without polling.

pub mod config;
pub mod deliver;
pub mod format;
pub mod schedule;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::audit::AuditEvent;
use crate::error::Error;
use crate::model::{Decision, Request, Role, Timestamp};

/// How long before a window ends its requester hears `grant.ending`.
pub const ENDING_NOTICE_SECS: i64 = 600;

/// What a notification is about: the `type` of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Event {
    #[serde(rename = "request.created")]
    RequestCreated,
    #[serde(rename = "request.approved")]
    RequestApproved,
    #[serde(rename = "request.denied")]
    RequestDenied,
    #[serde(rename = "request.expired")]
    RequestExpired,
    #[serde(rename = "request.escalated")]
    RequestEscalated,
    #[serde(rename = "break_glass.used")]
    BreakGlassUsed,
    #[serde(rename = "review.due")]
    ReviewDue,
    #[serde(rename = "review.overdue")]
    ReviewOverdue,
    #[serde(rename = "grant.ending")]
    GrantEnding,
    #[serde(rename = "approver.changed")]
    ApproverChanged,
    /// `notify test`.
    #[serde(rename = "test")]
    Test,
}

impl Event {
    pub const ALL: [Event; 11] = [
        Event::RequestCreated,
        Event::RequestApproved,
        Event::RequestDenied,
        Event::RequestExpired,
        Event::RequestEscalated,
        Event::BreakGlassUsed,
        Event::ReviewDue,
        Event::ReviewOverdue,
        Event::GrantEnding,
        Event::ApproverChanged,
        Event::Test,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::RequestCreated => "request.created",
            Event::RequestApproved => "request.approved",
            Event::RequestDenied => "request.denied",
            Event::RequestExpired => "request.expired",
            Event::RequestEscalated => "request.escalated",
            Event::BreakGlassUsed => "break_glass.used",
            Event::ReviewDue => "review.due",
            Event::ReviewOverdue => "review.overdue",
            Event::GrantEnding => "grant.ending",
            Event::ApproverChanged => "approver.changed",
            Event::Test => "test",
        }
    }

    /// Whether the team's endpoints (those not tied to one member) hear it. A window's end
    /// concerns only its requester.
    pub fn for_team(self) -> bool {
        self != Event::GrantEnding
    }

    /// Whether a member's own endpoint hears it about their own request.
    pub fn for_requester(self) -> bool {
        matches!(
            self,
            Event::RequestApproved
                | Event::RequestDenied
                | Event::RequestExpired
                | Event::GrantEnding
                | Event::Test
        )
    }

    /// Its one-byte code in timer keys.
    fn code(self) -> u8 {
        Event::ALL.iter().position(|e| *e == self).unwrap_or(0) as u8
    }

    fn from_code(c: u8) -> Option<Event> {
        Event::ALL.get(c as usize).copied()
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Event {
    type Err = Error;
    fn from_str(s: &str) -> Result<Event, Error> {
        Event::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Event::ALL.iter().map(|e| e.as_str()).collect();
                Error::Config(format!(
                    "'{}' is not an event; use one of {}",
                    crate::model::escape_for_log(s),
                    all.join(", ")
                ))
            })
    }
}

/// What an audited change is about, when it notifies.
pub enum Subject<'a> {
    /// A request (read as it stands after the change).
    Request(u64),
    /// An owner or admin, or a member who was one; `role` is known unless the member still
    /// exists to be read.
    Member { name: &'a str, role: Option<Role> },
    /// Nothing but itself (`notify test`).
    Nothing,
}

/// Whether an audit event notifies, and about what. Member events notify only when they
/// touch an approver; the caller checks that with the member's role.
pub fn event_of(e: &AuditEvent) -> Option<(Event, Subject<'_>)> {
    fn member(name: &str, role: Option<Role>) -> Option<(Event, Subject<'_>)> {
        Some((Event::ApproverChanged, Subject::Member { name, role }))
    }
    match e {
        AuditEvent::RequestCreated { id, .. } => {
            Some((Event::RequestCreated, Subject::Request(*id)))
        }
        AuditEvent::RequestApproved { id, .. } => {
            Some((Event::RequestApproved, Subject::Request(*id)))
        }
        AuditEvent::RequestDenied { id, .. } => Some((Event::RequestDenied, Subject::Request(*id))),
        AuditEvent::BreakGlass { id, .. } => Some((Event::BreakGlassUsed, Subject::Request(*id))),
        AuditEvent::Due { id, what } => Some((*what, Subject::Request(*id))),
        AuditEvent::NotifyTest {} => Some((Event::Test, Subject::Nothing)),
        AuditEvent::MemberAdded { name, role, .. } => member(name, Some(*role)),
        AuditEvent::MemberRemoved { name, role } => member(name, Some(role.unwrap_or(Role::Owner))),
        AuditEvent::MemberRoleChanged { name, from, to } => member(name, Some((*from).max(*to))),
        AuditEvent::MemberKeyAdded { name, .. } | AuditEvent::MemberKeyRemoved { name, .. } => {
            member(name, None)
        }
        _ => None,
    }
}

/// One notification in the outbox, as written with the change it reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The sequence number of the audit entry that records the change: unique, increasing,
    /// and the webhook id's stem, so every retry carries the same id.
    pub seq: u64,
    pub event: Event,
    pub at: Timestamp,
    /// Who made the change (a member, `rule:NAME`, or `sshjit` for what fell due).
    pub actor: String,
    /// The audit event itself.
    pub change: AuditEvent,
    /// The request it is about, as it stood after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
}

impl Notice {
    /// The member whose own endpoint may hear it: the requester.
    pub fn requester(&self) -> Option<&str> {
        self.request.as_ref().map(|r| r.requester.as_str())
    }
}

/// What falls due for a request, and when: each becomes an audited change and a notice once,
/// when the scheduler passes its time. The store keeps these as an index of the request.
pub fn timers_of(r: &Request) -> Vec<(Timestamp, Event)> {
    let mut out = Vec::new();
    match &r.decision {
        Decision::Pending => {
            out.push((r.pending_until, Event::RequestExpired));
            if let Some(at) = r.escalate_at.filter(|at| *at < r.pending_until) {
                out.push((at, Event::RequestEscalated));
            }
        }
        Decision::Approved { grant } if grant.ended.is_none() => {
            // Ten minutes before the end, or at the start of a shorter window.
            let ending = Timestamp::from_unix(grant.end.unix().saturating_sub(ENDING_NOTICE_SECS));
            out.push((ending.max(grant.start), Event::GrantEnding));
            if let (Some(due), None) = (r.review_due, &r.review) {
                out.push((grant.end.min(due), Event::ReviewDue));
                out.push((due, Event::ReviewOverdue));
            }
        }
        _ => {
            if let (Some(due), None) = (r.review_due, &r.review) {
                out.push((due, Event::ReviewOverdue));
            }
        }
    }
    out
}

/// A timer's key: due time, request id, event, so a range scan finds what is due in order.
pub fn timer_key(due: Timestamp, id: u64, what: Event) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&(due.unix().max(0) as u64).to_be_bytes());
    k[8..16].copy_from_slice(&id.to_be_bytes());
    k[16] = what.code();
    k
}

/// A timer key's parts, or None for a key this version did not write.
pub fn parse_timer_key(k: &[u8]) -> Option<(Timestamp, u64, Event)> {
    let k: &[u8; 17] = k.try_into().ok()?;
    let due = u64::from_be_bytes(k[..8].try_into().ok()?);
    let id = u64::from_be_bytes(k[8..16].try_into().ok()?);
    Some((
        Timestamp::from_unix(i64::try_from(due).ok()?),
        id,
        Event::from_code(k[16])?,
    ))
}
