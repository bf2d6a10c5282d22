//! Deciding requests: approving (the last approval fixes the grant), denying, cancelling,
//! reviewing break-glass grants, and authorizing certificates for a grant.

use crate::error::{Error, Result};
use crate::model::{
    Approval, Decision, Grant, IdentityId, Member, Request, RequestState, Role, Timestamp,
    format_duration,
};
use crate::target::{Found, ScopeHost, TargetKind};
use crate::verdict::{MemberKind, Review, ReviewVerdict};

use super::{Approved, Policy, Resolved, check_text, resolve};

/// Records `approver`'s approval of `req` at `now`; the last one needed turns it into a grant,
/// whose scope is resolved from `found` then and fixed from then on.
///
/// `requester` and `found` are the member and target that now carry the request's names, if
/// any: the request is approved only while both are the very identities it was made for. If
/// the target now needs more approvals (a host that needs more joined the fleet), the
/// approval is recorded and the request waits for them.
///
/// `lapsed` are earlier approvers who are no longer owners or admins (removed or demoted):
/// their approvals no longer count (rule 14).
pub fn approve(
    req: &mut Request,
    approver: &Member,
    requester: Option<&Member>,
    found: Option<&Found>,
    lapsed: &[IdentityId],
    comment: Option<&str>,
    now: Timestamp,
) -> Result<Approved> {
    check_approver(req, approver, "approve")?;
    require_pending(req, now, "approved")?;
    if let Some(c) = comment {
        check_text("comment", c)?;
    }
    if req
        .approvals
        .iter()
        .any(|a| a.by_id == approver.id || a.by == approver.name)
    {
        return Err(Error::InvalidState(format!(
            "you already approved request {}; it needs {} more approval(s) from other approvers",
            req.id,
            req.approvals_required
                .saturating_sub(req.approvals.len() as u32)
        )));
    }
    let requester = requester
        .filter(|m| m.id == req.requester_id)
        .ok_or_else(|| {
            Error::InvalidState(format!(
                "{} is no longer a member, so request {} cannot be approved",
                req.requester, req.id
            ))
        })?;
    if req.requester_kind == MemberKind::Bot {
        return Err(Error::BotRequest {
            id: req.id,
            bot: req.requester.to_string(),
        });
    }
    check_not_their_keyholder(approver, requester, req.id, "approve")?;
    let Some(found) = found.filter(|f| f.id == req.resource_id) else {
        return Err(Error::InvalidState(format!(
            "{} {} was removed, so request {} cannot be approved",
            req.kind, req.resource, req.id
        )));
    };
    req.approvals.push(Approval {
        by: approver.name.clone(),
        by_id: approver.id,
        at: now,
        comment: comment.map(str::to_string),
    });
    let have = req
        .approvals
        .iter()
        .filter(|a| !lapsed.contains(&a.by_id))
        .count() as u32;
    if have < req.approvals_required {
        return Ok(Approved::Recorded {
            have,
            need: req.approvals_required,
        });
    }
    let resolved = resolve(found, req.role, requester.role)?;
    if resolved.approvals_required > have {
        req.approvals_required = resolved.approvals_required;
        return Ok(Approved::Recorded {
            have,
            need: req.approvals_required,
        });
    }
    let grant = grant_for(req, resolved, now);
    req.decision = Decision::Approved {
        grant: grant.clone(),
    };
    Ok(Approved::Granted(grant))
}

/// The grant `req` becomes when decided at `now` with the scope `resolved`: the window starts
/// then (or at the requested start, if later) and lasts the duration (rule 5).
pub(super) fn grant_for(req: &Request, resolved: Resolved, now: Timestamp) -> Grant {
    let start = req.requested_start.map_or(now, |s| s.max(now));
    Grant {
        start,
        end: start.plus(req.duration_secs),
        effective_role: resolved.effective_role,
        scope: resolved.scope,
        certificates: 0,
        ended: None,
    }
}

/// An ADMIN may not decide for a member whose identity they hold a key to: one they added,
/// or whose keys they added, and who still has such a key. Otherwise one admin could add a
/// member with their own key (a puppet), ask as it, and approve it alone. OWNERs are the root
/// of trust and are not held to this (rule 13).
fn check_not_their_keyholder(
    approver: &Member,
    requester: &Member,
    id: u64,
    verb: &str,
) -> Result<()> {
    if approver.role == Role::Admin && requester.key_added_by.contains(&approver.id) {
        return Err(Error::PermissionDenied(format!(
            "you added {} or one of their keys, so you cannot {verb} request {id}: an admin who holds a member's key could decide for themselves. Another approver must (an owner may)",
            requester.name
        )));
    }
    Ok(())
}

/// Records `reviewer`'s review of the break-glass grant `req` at `now` (rule 18): an owner or
/// admin other than the requester (and not an admin who added them or their keys), once.
/// `requester` is the member who carries the request's requester identity, if still there.
pub fn review(
    req: &mut Request,
    reviewer: &Member,
    requester: Option<&Member>,
    verdict: ReviewVerdict,
    comment: &str,
    now: Timestamp,
) -> Result<()> {
    if !reviewer.role.can_manage() || reviewer.kind == MemberKind::Bot {
        return Err(Error::PermissionDenied(format!(
            "only owners and admins review break-glass grants; you are {}",
            reviewer.role
        )));
    }
    if reviewer.id == req.requester_id {
        return Err(Error::PermissionDenied(format!(
            "you cannot review your own break-glass grant {}; another owner or admin must",
            req.id
        )));
    }
    if !req.break_glass {
        return Err(Error::InvalidState(format!(
            "request {} is not a break-glass grant; only those are reviewed",
            req.id
        )));
    }
    if let Some(m) = requester.filter(|m| m.id == req.requester_id) {
        check_not_their_keyholder(reviewer, m, req.id, "review")?;
    }
    if let Some(r) = &req.review {
        return Err(Error::InvalidState(format!(
            "request {} was already reviewed by {} at {} ({})",
            req.id, r.by, r.at, r.verdict
        )));
    }
    check_text("comment", comment)?;
    req.review = Some(Review {
        by: reviewer.name.clone(),
        at: now,
        verdict,
        comment: comment.trim().to_string(),
        late: req.review_due.is_some_and(|due| now >= due),
    });
    Ok(())
}

/// Denies `req`: any one approver's denial vetoes it.
pub fn deny(req: &mut Request, approver: &Member, reason: &str, now: Timestamp) -> Result<()> {
    check_approver(req, approver, "deny")?;
    require_pending(req, now, "denied")?;
    check_text("reason", reason)?;
    req.decision = Decision::Denied {
        by: approver.name.clone(),
        at: now,
        reason: reason.trim().to_string(),
    };
    Ok(())
}

/// Cancels a pending request; only its requester may.
pub fn cancel(req: &mut Request, actor: &Member, now: Timestamp) -> Result<()> {
    if req.requester_id != actor.id {
        return Err(Error::PermissionDenied(format!(
            "request {} belongs to {}; only the requester can cancel it (approvers can deny it)",
            req.id, req.requester
        )));
    }
    require_pending(req, now, "cancelled")?;
    req.decision = Decision::Cancelled {
        at: now,
        by: None,
        reason: None,
    };
    Ok(())
}

impl Policy {
    /// Checks that `actor` may have a certificate for `req` at `now`; returns the grant and
    /// the hosts of its scope that are still there (`live`: the host with that name is still
    /// the one the scope was fixed with; for a fleet or command, `live(None)` says whether the
    /// target itself is). A removed host gets no new certificate, nor a removed target.
    pub fn authorize_cert<'r>(
        &self,
        req: &'r Request,
        actor: &Member,
        live: impl Fn(Option<&ScopeHost>) -> bool,
        now: Timestamp,
    ) -> Result<(&'r Grant, Vec<&'r ScopeHost>)> {
        if req.requester_id != actor.id {
            return Err(Error::PermissionDenied(format!(
                "request {} belongs to {}; certificates are issued only to the requester",
                req.id, req.requester
            )));
        }
        let Some(grant) = req.grant() else {
            let state = req.state_at(now);
            let hint = match state {
                RequestState::Pending => {
                    "wait for approval, then ask for the certificate again".to_string()
                }
                _ => "make a new request".into(),
            };
            return Err(Error::InvalidState(format!(
                "request {} is {state}, not approved; {hint}",
                req.id
            )));
        };
        if let Some(e) = &grant.ended {
            return Err(Error::GrantNotCurrent(format!(
                "the grant for request {} was ended at {} by {}: {}; certificates already issued stay valid until {}",
                req.id, e.at, e.by, e.reason, grant.end
            )));
        }
        if req.kind != TargetKind::Host && !live(None) {
            return Err(Error::GrantNotCurrent(format!(
                "{} {} was removed; no certificates are issued for its grants",
                req.kind, req.resource
            )));
        }
        let hosts: Vec<&ScopeHost> = grant.scope.hosts.iter().filter(|h| live(Some(h))).collect();
        if hosts.is_empty() {
            return Err(Error::GrantNotCurrent(match grant.scope.hosts.as_slice() {
                [one] => format!(
                    "host {} was removed; no certificates are issued for it",
                    one.name
                ),
                _ => format!(
                    "every host of the grant for request {} was removed; no certificates are issued for it",
                    req.id
                ),
            }));
        }
        if now < grant.start {
            return Err(Error::GrantNotCurrent(format!(
                "the grant for request {} starts at {} (in {}); ask for the certificate then",
                req.id,
                grant.start,
                format_duration(now.until(grant.start) as u64)
            )));
        }
        if now >= grant.end {
            return Err(Error::GrantNotCurrent(format!(
                "the grant for request {} ended at {}; make a new request",
                req.id, grant.end
            )));
        }
        if grant.certificates >= self.max_certs_per_grant {
            return Err(Error::CertificateLimit {
                id: req.id,
                max: self.max_certs_per_grant,
            });
        }
        Ok((grant, hosts))
    }
}

fn check_approver(req: &Request, approver: &Member, verb: &str) -> Result<()> {
    super::require_manager(approver, &format!("{verb} requests"))?;
    if approver.id == req.requester_id || approver.name == req.requester {
        return Err(Error::PermissionDenied(format!(
            "you cannot {verb} your own request {}; another owner or admin must decide it{}",
            req.id,
            if verb == "deny" {
                " (use 'cancel' to withdraw it)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

fn require_pending(req: &Request, now: Timestamp, verb: &str) -> Result<()> {
    match req.state_at(now) {
        RequestState::Pending => Ok(()),
        RequestState::Expired => Err(Error::InvalidState(format!(
            "request {} expired at {} without a decision and cannot be {verb}; the requester can make a new one",
            req.id, req.pending_until
        ))),
        state => Err(Error::InvalidState(format!(
            "request {} is already {state} and cannot be {verb}",
            req.id
        ))),
    }
}
