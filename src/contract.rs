//! The `--json` contract: one set of serde types, written by the broker and read by its
//! clients (the helper and `admin`), so a renamed field fails to compile or fails a test.
//!
//! Field names are a contract: add fields freely, never rename. Clients accept fields they do
//! not know, but a field the contract says is always there and is missing from an answer is an
//! error, not a silent default: `Option` fields that are always present (as `null` when
//! empty) are read with [`present`], and only the fields that some commands add are
//! `#[serde(default)]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::model::{GrantRole, IdentityId, Justification, Name, RequestState, Role, Timestamp};
use crate::target::{ScopeHost, TargetKind};
use crate::verdict::{MemberKind, Review, Risk, RuleApproval};

/// Reads an `Option` field that must be present in the answer, possibly as `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::deserialize(d)
}

/// A request, as `request`, `status`, `show`, `requests`, `cancel`, `approve` and `deny`
/// print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestView {
    pub id: u64,
    pub state: RequestState,
    pub requester: Name,
    /// What `resource` is: `host`, `fleet` or `command`.
    pub kind: TargetKind,
    pub resource: Name,
    /// The role asked for; `null` for a fleet command.
    #[serde(deserialize_with = "present")]
    pub role: Option<GrantRole>,
    pub duration_secs: u64,
    pub reason: String,
    #[serde(deserialize_with = "present")]
    pub requested_start: Option<Timestamp>,
    pub justification: Justification,
    pub created_at: Timestamp,
    pub pending_until: Timestamp,
    /// Only while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_seconds_left: Option<u64>,
    pub approvals: Vec<ApprovalView>,
    pub approvals_required: u32,
    #[serde(deserialize_with = "present")]
    pub grant: Option<GrantView>,
    /// Only when denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denial: Option<DenialView>,
    /// Only when cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<Timestamp>,
    /// Only when someone other than the requester cancelled it (a removal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// The risk score when it was made, with its factors.
    pub risk: Risk,
    /// Whether the requester is a person or a bot.
    pub requester_kind: MemberKind,
    /// The rule that approved it at creation, with what matched.
    #[serde(deserialize_with = "present")]
    pub approved_by_rule: Option<RuleApproval>,
    /// A break-glass grant: granted without approvers, reviewed afterwards.
    pub break_glass: bool,
    /// When its review is due (break-glass only).
    #[serde(deserialize_with = "present")]
    pub review_due: Option<Timestamp>,
    /// The review, once done.
    #[serde(deserialize_with = "present")]
    pub review: Option<Review>,
    /// Pending past its target's `--escalate-after`: listed first, for owners to see.
    pub escalated: bool,
    #[serde(deserialize_with = "present")]
    pub escalate_at: Option<Timestamp>,
    /// Added by `request`: who may approve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Vec<Name>>,
    /// Added by `show`: the certificates issued for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<Vec<CertSummary>>,
    /// Added by `show` while pending: what approving it now would grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_grant: Option<WouldGrant>,
}

/// One approval of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    pub by: Name,
    pub at: Timestamp,
    #[serde(deserialize_with = "present")]
    pub comment: Option<String>,
}

/// Where a grant's window stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    Scheduled,
    Active,
    /// Ended early by a removal; certificates already issued stay valid to `end`.
    Ended,
    Expired,
}

/// The grant an approved request became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    pub start: Timestamp,
    pub end: Timestamp,
    /// `null` for a fleet command, which carries `command` instead.
    #[serde(deserialize_with = "present")]
    pub effective_role: Option<GrantRole>,
    /// The distinct logins of `hosts`.
    pub logins: Vec<String>,
    /// The hosts of the grant, each with its login: fixed at final approval.
    pub hosts: Vec<ScopeHost>,
    /// The forced command of a fleet command's grant.
    #[serde(deserialize_with = "present")]
    pub command: Option<String>,
    /// Hosts the target matched that have no login for the role.
    #[serde(default)]
    pub left_out: Vec<Name>,
    pub status: GrantStatus,
    pub seconds_left: u64,
    pub certificates: u32,
    #[serde(deserialize_with = "present")]
    pub ended: Option<EndedView>,
}

/// Why a grant was ended before its window closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedView {
    pub at: Timestamp,
    pub by: Name,
    pub reason: String,
}

/// A denial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialView {
    pub by: Name,
    pub at: Timestamp,
    pub reason: String,
}

/// A certificate issued for a request, as `show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSummary {
    pub serial: u64,
    pub key_id: String,
    pub key_fingerprint: String,
    pub issued_at: Timestamp,
}

/// What approving a pending request now would grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WouldGrant {
    #[serde(deserialize_with = "present")]
    pub effective_role: Option<GrantRole>,
    /// The login, when every host shares one.
    #[serde(deserialize_with = "present")]
    pub login: Option<String>,
    pub principals: Vec<String>,
    pub hosts: Vec<ScopeHost>,
    #[serde(deserialize_with = "present")]
    pub command: Option<String>,
    pub left_out: Vec<Name>,
    pub approvals_required: u32,
    pub start_if_approved_now: Timestamp,
    pub end_if_approved_now: Timestamp,
}

/// The answer to `cert`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertView {
    pub certificate: String,
    pub serial: u64,
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_after: Timestamp,
    pub valid_before: Timestamp,
    /// The target the grant is for, and its kind.
    pub target: Name,
    pub kind: TargetKind,
    /// The login, when every host shares one.
    #[serde(deserialize_with = "present")]
    pub login: Option<String>,
    /// Seconds left in the window by the broker's clock when it signed.
    pub seconds_left: u64,
    /// The host, when the certificate names exactly one.
    #[serde(deserialize_with = "present")]
    pub host: Option<HostAddress>,
    /// Every host the certificate names, with the login there.
    pub hosts: Vec<ScopeHost>,
    /// What sshd runs with it, for a fleet command (`force-command`).
    #[serde(deserialize_with = "present")]
    pub command: Option<String>,
    /// The fingerprint of the CA that signed it (what the host must trust).
    pub ca_fingerprint: String,
    /// Its audit entry, and the proof that the entry is in the log.
    pub log: InclusionView,
}

/// Where a certificate is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAddress {
    pub name: Name,
    pub address: String,
    pub port: u16,
}

/// A member, as `member` commands print them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: IdentityId,
    pub name: Name,
    pub role: Role,
    /// `human` or `bot`.
    pub kind: MemberKind,
    pub key_fingerprints: Vec<String>,
    pub added_at: Timestamp,
    pub added_by: String,
}

/// A host, as `host` commands print them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub id: IdentityId,
    pub name: Name,
    pub address: String,
    pub port: u16,
    pub tags: Vec<Name>,
    /// The unix login per role (`viewer`, `editor`).
    pub logins: BTreeMap<GrantRole, String>,
    pub approvals_required: u32,
    pub added_at: Timestamp,
}

/// A fleet, as `fleet` commands print them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    pub id: IdentityId,
    pub name: Name,
    pub tags: Vec<Name>,
    pub approvals_required: u32,
    pub max_hosts: u32,
    /// The hosts it covers right now.
    pub hosts: Vec<Name>,
    pub added_at: Timestamp,
    pub added_by: String,
}

/// A fleet command, as `command` commands print them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandView {
    pub id: IdentityId,
    pub name: Name,
    /// `fleet` or `host`.
    pub on_kind: TargetKind,
    pub on: Name,
    pub run: String,
    pub login: String,
    pub approvals_required: u32,
    /// The hosts it runs on right now (empty if its fleet or host was removed).
    pub hosts: Vec<Name>,
    pub added_at: Timestamp,
    pub added_by: String,
}

/// An auto-approval rule, as `rule` commands print them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    pub id: IdentityId,
    pub name: Name,
    /// Each condition in words, as the audit log records them.
    pub conditions: Vec<String>,
    /// Approvals left in the current period, when capped.
    #[serde(deserialize_with = "present")]
    pub uses_left: Option<u32>,
    pub added_at: Timestamp,
    pub added_by: String,
}

/// The answer to `whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoamiView {
    pub name: Name,
    pub role: Role,
    /// `human` or `bot`.
    pub kind: MemberKind,
    pub can_approve: bool,
    pub key_fingerprints: Vec<String>,
}

/// The answer to `ca-pubkey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaPubkeyView {
    pub ca_public_key: String,
    pub fingerprint: String,
}

/// A signed checkpoint of the audit log (`audit checkpoint`, and beside every proof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointView {
    /// The log's name: the broker, named by its CA.
    pub origin: String,
    /// How many entries it covers.
    pub size: u64,
    /// The RFC 6962 Merkle root of those entries, base64.
    pub root: String,
    /// The checkpoint as a C2SP signed note: what a client keeps.
    pub note: String,
    /// The verifier key of the note's signature (`origin+keyid+base64`).
    pub key: String,
    /// The checkpoint text's SSHSIG signature, for `ssh-keygen -Y verify` (`audit checkpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sshsig: Option<String>,
    /// The signing key as an OpenSSH public key (`audit checkpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
}

/// The answer to `audit prove`, and the proof a certificate carries: entry `seq` is leaf
/// `seq - 1` of the tree of `size` entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionView {
    pub seq: u64,
    pub size: u64,
    /// The RFC 6962 audit path, leaf to root, base64.
    pub proof: Vec<String>,
    pub checkpoint: CheckpointView,
    /// The entry itself, as stored (with a certificate: its `certificate_issued` entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
}

/// The answer to `audit consistency`: the tree of `to` entries extends the tree of `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyView {
    pub from: u64,
    pub to: u64,
    /// The RFC 6962 consistency proof, base64.
    pub proof: Vec<String>,
    /// The checkpoint of `to` entries.
    pub checkpoint: CheckpointView,
}

/// An error, as stderr carries it with `--json`: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorView,
}

/// The code and message of an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorView {
    pub code: String,
    pub message: String,
    /// For rate limits: seconds until the same command can succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JustificationSource;

    fn request() -> RequestView {
        let t = Timestamp::from_unix(1_900_000_000);
        RequestView {
            id: 7,
            state: RequestState::Pending,
            requester: "alice".parse().unwrap(),
            kind: TargetKind::Host,
            resource: "web-01".parse().unwrap(),
            role: Some(GrantRole::Editor),
            duration_secs: 3600,
            reason: "INC-1 x".into(),
            requested_start: None,
            justification: Justification {
                text: "t".into(),
                flags: vec![],
                source: JustificationSource::Deterministic,
                model: None,
            },
            created_at: t,
            pending_until: t.plus(3600),
            pending_seconds_left: Some(3600),
            approvals: vec![],
            approvals_required: 1,
            grant: None,
            denial: None,
            cancelled_at: None,
            cancelled_by: None,
            cancel_reason: None,
            risk: Risk::default(),
            requester_kind: MemberKind::Human,
            approved_by_rule: None,
            break_glass: false,
            review_due: None,
            review: None,
            escalated: false,
            escalate_at: None,
            approvers: None,
            certificates: None,
            would_grant: None,
        }
    }

    #[test]
    fn a_request_round_trips_and_keeps_the_documented_names() {
        let v = serde_json::to_value(request()).unwrap();
        for field in [
            "id",
            "state",
            "requester",
            "resource",
            "role",
            "duration_secs",
            "reason",
            "requested_start",
            "justification",
            "created_at",
            "pending_until",
            "approvals",
            "approvals_required",
            "grant",
        ] {
            assert!(v.get(field).is_some(), "{field} missing from {v}");
        }
        assert_eq!(v["grant"], serde_json::Value::Null);
        let back: RequestView = serde_json::from_value(v).unwrap();
        assert_eq!(back, request());
    }

    #[test]
    fn a_missing_field_is_an_error_and_an_unknown_one_is_not() {
        let mut v = serde_json::to_value(request()).unwrap();
        v["added_later"] = serde_json::json!(1);
        assert!(serde_json::from_value::<RequestView>(v.clone()).is_ok());
        for field in ["grant", "requested_start", "state", "role", "kind"] {
            let mut w = v.clone();
            w.as_object_mut().unwrap().remove(field);
            let err = serde_json::from_value::<RequestView>(w).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }
}

/// One notification endpoint in `notify status`. The URL is never shown (it may carry a
/// token): `name` is its host unless config.toml names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub name: String,
    pub format: String,
    /// The member whose own endpoint it is, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Name>,
    /// Notifications not yet delivered: waiting for a retry, or not yet tried.
    pub pending: u64,
    #[serde(flatten)]
    pub counts: DeliveryCounts,
}

/// How an endpoint's deliveries went: kept by the broker, shown by `notify status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCounts {
    pub delivered: u64,
    /// Given up after a day of retries.
    pub failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered_at: Option<Timestamp>,
    /// Why nothing is sent any more (a 410 Gone), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<String>,
}

/// `notify test`: the test notification's place in the log and who will get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyTestView {
    pub seq: u64,
    pub endpoints: Vec<String>,
}
