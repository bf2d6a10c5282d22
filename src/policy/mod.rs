//! The access rules, pure: given a request, the people involved and the time, what is allowed.
//!
//! Nothing here does I/O or reads the clock; `now` is always an argument. What a target
//! grants (its scope) is decided in [`scope`].

mod risk;
mod rules;
mod scope;

pub use risk::{DENIALS_WINDOW_SECS, History};
pub use rules::{Candidate, check as rule_check};
pub use scope::{Resolved, check_role, resolve};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::justify;
use crate::model::{
    Approval, Decision, Ended, Grant, GrantRole, IdentityId, Member, Name, OpenEntry, Request,
    RequestState, Role, Timestamp, format_duration, is_hidden_char,
};
use crate::rule::Rule;
use crate::target::{Found, ScopeHost, TargetKind};
use crate::verdict::{MemberKind, Review, ReviewVerdict, RuleApproval};

/// The hard floor on a grant's duration (5 minutes).
pub const MIN_DURATION_FLOOR: u64 = 5 * 60;
/// The hard ceiling on a grant's duration (24 hours).
pub const MAX_DURATION_CEILING: u64 = 24 * 3600;
/// The most identity keys one member may hold.
pub const MAX_KEYS_PER_MEMBER: usize = 16;
/// The longest reason accepted, in bytes.
pub const MAX_REASON_BYTES: usize = 1000;

/// A deployment's policy knobs. They may tighten the built-in bounds, never widen them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Shortest grant, in seconds (at least 300).
    pub min_duration_secs: u64,
    /// Longest grant, in seconds (at most 86400).
    pub max_duration_secs: u64,
    /// How long a request may wait for a decision, in seconds.
    pub pending_ttl_secs: u64,
    /// How far ahead a requested start time may be, in seconds.
    pub max_start_ahead_secs: u64,
    /// Pending requests one member may have at once.
    pub max_pending_per_member: u32,
    /// Certificates one grant may have over its window.
    pub max_certs_per_grant: u32,
    /// How often one member may run `request`.
    pub request_rate: RateLimit,
    /// How often one member may run `cert`.
    pub cert_rate: RateLimit,
    /// How often one member may add or remove identity keys (each is an audit entry).
    pub key_rate: RateLimit,
    /// The longest break-glass grant, in seconds.
    pub break_glass_max_secs: u64,
    /// How soon after a break-glass grant its review is due, in seconds.
    pub review_within_secs: u64,
    /// The longest grant a bot may have, in seconds.
    pub bot_max_duration_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_duration_secs: MIN_DURATION_FLOOR,
            max_duration_secs: MAX_DURATION_CEILING,
            pending_ttl_secs: 3600,
            max_start_ahead_secs: 7 * 86400,
            max_pending_per_member: 10,
            max_certs_per_grant: 20,
            // A person asks a few times an hour; a script hits these within seconds.
            request_rate: RateLimit {
                burst: 10,
                per_minute: 2,
            },
            cert_rate: RateLimit {
                burst: 20,
                per_minute: 10,
            },
            key_rate: RateLimit {
                burst: 10,
                per_minute: 2,
            },
            break_glass_max_secs: 3600,
            review_within_secs: 86400,
            bot_max_duration_secs: 3600,
        }
    }
}

/// A per-member rate: `burst` at once, then `per_minute` (the generic cell rate algorithm,
/// a token bucket that stores one time instead of a count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub burst: u32,
    pub per_minute: u32,
}

impl RateLimit {
    /// Takes one use for `command` at `now`, given the member's `tat` (the time, in
    /// microseconds, at which their bucket is full again; 0 for a fresh one). On success `tat`
    /// moves on by one use; a refusal takes nothing.
    pub fn take(&self, command: &'static str, tat: &mut i64, now: Timestamp) -> Result<()> {
        let interval = 60_000_000 / i64::from(self.per_minute.max(1));
        let tolerance = interval * i64::from(self.burst.max(1) - 1);
        let now_us = now.unix().saturating_mul(1_000_000);
        // A bucket is never emptier than just emptied: if the clock stepped back, `tat` may lie
        // further ahead than that, and would otherwise lock the member out for the step.
        let base = (*tat).min(now_us + tolerance + interval).max(now_us);
        let wait_us = base - tolerance - now_us;
        if wait_us > 0 {
            *tat = base;
            return Err(Error::RateLimited {
                command,
                burst: self.burst,
                per_minute: self.per_minute,
                retry_after_secs: (wait_us as u64).div_ceil(1_000_000),
            });
        }
        *tat = base + interval;
        Ok(())
    }

    /// Gives back the use that moved `before` to `after` (the command it was taken for was
    /// refused), where `tat` is the bucket now: exactly as it was if nothing was taken since,
    /// otherwise one interval back, never before `before`.
    pub fn give_back(&self, tat: i64, before: i64, after: i64) -> i64 {
        if tat == after {
            return before;
        }
        let interval = 60_000_000 / i64::from(self.per_minute.max(1));
        (tat - interval).max(before)
    }
}

/// What a new request asks for, after parsing.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    /// The role asked for; none for a fleet command.
    pub role: Option<GrantRole>,
    pub duration_secs: u64,
    pub reason: &'a str,
    pub start: Option<Timestamp>,
    /// Break-glass: granted at once without approvers, reviewed afterwards.
    pub break_glass: bool,
}

/// Everything `Policy::open` weighs besides the policy and the time.
pub struct Asking<'a> {
    pub requester: &'a Member,
    pub found: &'a Found,
    pub ask: &'a Ask<'a>,
    /// The requester's pending requests (they count against the cap).
    pub open: &'a [OpenEntry],
    /// How many owners and admins other than the requester exist.
    pub approvers: usize,
    pub history: &'a History,
    /// The auto-approval rules, by name.
    pub rules: &'a [Rule],
}

/// What one approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approved {
    /// Recorded; more approvals are needed.
    Recorded { have: u32, need: u32 },
    /// The final approval: the request is now a grant.
    Granted(Grant),
}

impl Policy {
    /// Checks that the knobs stay inside the hard bounds.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.min_duration_secs < MIN_DURATION_FLOOR {
            return bad(format!(
                "min_duration_secs = {} is below the 5 minute floor; use 300 or more",
                self.min_duration_secs
            ));
        }
        if self.max_duration_secs > MAX_DURATION_CEILING {
            return bad(format!(
                "max_duration_secs = {} is above the 24 hour ceiling; use 86400 or less",
                self.max_duration_secs
            ));
        }
        if self.min_duration_secs > self.max_duration_secs {
            return bad("min_duration_secs is above max_duration_secs; lower it".into());
        }
        if self.pending_ttl_secs == 0 || self.pending_ttl_secs > 7 * 86400 {
            return bad("pending_ttl_secs must be between 1 and 604800".into());
        }
        if !(1..=1000).contains(&self.max_pending_per_member) {
            return bad("max_pending_per_member must be between 1 and 1000".into());
        }
        if !(1..=1_000_000).contains(&self.max_certs_per_grant) {
            return bad("max_certs_per_grant must be between 1 and 1000000".into());
        }
        for (name, v, lo, hi) in [
            (
                "break_glass_max_secs",
                self.break_glass_max_secs,
                MIN_DURATION_FLOOR,
                MAX_DURATION_CEILING,
            ),
            ("review_within_secs", self.review_within_secs, 60, 7 * 86400),
            (
                "bot_max_duration_secs",
                self.bot_max_duration_secs,
                MIN_DURATION_FLOOR,
                MAX_DURATION_CEILING,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                return bad(format!("{name} = {v} is out of range; use {lo} to {hi}"));
            }
        }
        for (name, r) in [
            ("request_rate", self.request_rate),
            ("cert_rate", self.cert_rate),
            ("key_rate", self.key_rate),
        ] {
            if !(1..=1_000_000).contains(&r.burst) || !(1..=10_000_000).contains(&r.per_minute) {
                return bad(format!(
                    "[policy.{name}] needs burst between 1 and 1000000 and per_minute between 1 and 10000000"
                ));
            }
        }
        Ok(())
    }

    /// Opens a request: validates it, writes its justification and risk, and decides what
    /// can be decided at once. A break-glass request is granted now (rule 18); one a rule
    /// approves is granted now and names the rule (rule 17); a bot's request that no rule
    /// approves is refused, since no person may approve it. Otherwise it is pending.
    pub fn open(&self, id: u64, a: &Asking<'_>, now: Timestamp) -> Result<Request> {
        let (requester, found, ask) = (a.requester, a.found, a.ask);
        let pending: Vec<u64> = a
            .open
            .iter()
            .filter(|e| e.is_open(now))
            .map(|e| e.id)
            .collect();
        if pending.len() >= self.max_pending_per_member as usize {
            return Err(Error::TooManyPending {
                open: pending,
                max: self.max_pending_per_member,
            });
        }
        check_role(found, ask.role)?;
        self.check_duration(ask.duration_secs)?;
        check_reason(ask.reason)?;
        if let Some(start) = ask.start {
            if start < now {
                return Err(Error::invalid(format!(
                    "start time {start} is in the past (broker time is {now}); omit --start to begin at approval"
                )));
            }
            if now.until(start) > self.max_start_ahead_secs as i64 {
                return Err(Error::invalid(format!(
                    "start time {start} is more than {} ahead; request closer to when you need access",
                    format_duration(self.max_start_ahead_secs)
                )));
            }
        }
        let bot = requester.kind == MemberKind::Bot;
        if bot && ask.duration_secs > self.bot_max_duration_secs {
            return Err(Error::BotTooLong {
                max: format_duration(self.bot_max_duration_secs),
            });
        }
        if ask.break_glass {
            self.check_break_glass(a)?;
        }
        let preview = resolve(found, ask.role, requester.role)?;
        let justification = justify::deterministic(requester, found, &preview, ask);
        let risk = risk::score(
            &preview,
            ask.duration_secs,
            &justification.flags,
            ask.break_glass,
            a.history,
            now,
        );
        let mut req = Request {
            id,
            requester: requester.name.clone(),
            requester_id: requester.id,
            kind: found.kind,
            resource: found.name.clone(),
            resource_id: found.id,
            role: ask.role,
            duration_secs: ask.duration_secs,
            reason: ask.reason.trim().to_string(),
            requested_start: ask.start,
            justification,
            created_at: now,
            pending_until: now.plus(self.pending_ttl_secs),
            approvals: Vec::new(),
            approvals_required: preview.approvals_required,
            decision: Decision::Pending,
            requester_kind: requester.kind,
            risk,
            approved_by_rule: None,
            break_glass: ask.break_glass,
            review_due: None,
            review: None,
            escalate_at: found.escalate_after_secs.map(|s| now.plus(s)),
        };
        if ask.break_glass {
            req.review_due = Some(now.plus(self.review_within_secs));
            req.escalate_at = None;
            req.decision = Decision::Approved {
                grant: grant_for(&req, preview, now),
            };
            return Ok(req);
        }
        let candidate = Candidate {
            requester,
            found,
            resolved: &preview,
            duration_secs: ask.duration_secs,
            risk: req.risk.score,
            now,
        };
        match rules::first_match(a.rules, &candidate) {
            Ok((rule, matched)) => {
                req.approved_by_rule = Some(RuleApproval {
                    rule: rule.name.clone(),
                    matched,
                    at: now,
                });
                req.escalate_at = None;
                req.decision = Decision::Approved {
                    grant: grant_for(&req, preview, now),
                };
            }
            Err(why) if bot => return Err(Error::BotNoRule { why }),
            Err(_) if a.approvers < preview.approvals_required as usize => {
                return Err(Error::InvalidState(format!(
                    "{} {} needs {} approvals but only {} owner(s) or admin(s) other than you can approve; ask an owner to add approvers",
                    found.kind, found.name, preview.approvals_required, a.approvers
                )));
            }
            Err(_) => {}
        }
        Ok(req)
    }

    /// Rule 18: break-glass needs a target that allows it, a person whose base role is at
    /// least EDITOR, at most `break_glass_max_secs`, an incident or ticket reference, no
    /// later start, and no overdue review of an earlier one.
    fn check_break_glass(&self, a: &Asking<'_>) -> Result<()> {
        let (m, found, ask) = (a.requester, a.found, a.ask);
        if !found.break_glass {
            return Err(Error::BreakGlassNotAllowed {
                kind: found.kind,
                name: found.name.to_string(),
            });
        }
        if m.kind == MemberKind::Bot || m.role < Role::Editor {
            return Err(Error::BreakGlassWho {
                who: if m.kind == MemberKind::Bot {
                    "a bot".to_string()
                } else {
                    format!("{}", m.role)
                },
            });
        }
        if ask.duration_secs > self.break_glass_max_secs {
            return Err(Error::BreakGlassTooLong {
                max: format_duration(self.break_glass_max_secs),
            });
        }
        if !justify::has_reference(ask.reason) {
            return Err(Error::BreakGlassNoReference);
        }
        if ask.start.is_some() {
            return Err(Error::invalid(
                "break-glass starts now; drop --start".to_string(),
            ));
        }
        if !a.history.overdue_break_glass.is_empty() {
            return Err(Error::ReviewOverdue {
                ids: a.history.overdue_break_glass.clone(),
            });
        }
        Ok(())
    }

    fn check_duration(&self, secs: u64) -> Result<()> {
        if secs < self.min_duration_secs || secs > self.max_duration_secs {
            return Err(Error::invalid(format!(
                "duration {} is out of range: access lasts between {} and {}; pick a duration in that range, such as --for 1h",
                format_duration(secs),
                format_duration(self.min_duration_secs),
                format_duration(self.max_duration_secs)
            )));
        }
        Ok(())
    }
}

/// Checks a human-written reason: present, short enough, one line of printable text.
pub fn check_reason(reason: &str) -> Result<()> {
    check_text("reason", reason)
}

/// The role a grant carries: the higher of base and granted, capped at EDITOR. JIT never downgrades.
pub fn effective_role(base: Role, granted: GrantRole) -> GrantRole {
    if base >= Role::Editor {
        GrantRole::Editor
    } else {
        granted
    }
}

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
fn grant_for(req: &Request, resolved: Resolved, now: Timestamp) -> Grant {
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

/// Refuses unless `actor` is an OWNER or ADMIN (the manage_members power): managing hosts,
/// fleets and commands, reading everyone's requests and the audit log. `what` completes
/// "only owners and admins can ...".
pub fn require_manager(actor: &Member, what: &str) -> Result<()> {
    if actor.role.can_manage() {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "only owners and admins can {what}; you are {}",
            actor.role
        )))
    }
}

/// Removing a target that needs two or more approvals takes an OWNER: an admin who could
/// remove it could add it again under the same name with one approval, and the hosts trust
/// the name (rule 3).
pub fn check_removal(actor: &Member, kind: TargetKind, name: &Name, approvals: u32) -> Result<()> {
    require_manager(actor, &format!("remove {kind}s"))?;
    if approvals >= 2 && actor.role != Role::Owner {
        return Err(Error::PermissionDenied(format!(
            "{kind} {name} needs {approvals} approvals, so only an owner may remove it: adding it again could lower them. Ask an owner"
        )));
    }
    Ok(())
}

/// Whether `actor` may read `req`: their own, or any for owners and admins.
pub fn may_read(req: &Request, actor: &Member) -> bool {
    req.requester_id == actor.id || actor.role.can_manage()
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

/// What removing an identity did to one of its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// It was pending and is now cancelled.
    Cancelled,
    /// Its grant will issue no more certificates.
    Ended,
    /// It was already decided, expired or over.
    Untouched,
}

/// Closes `req` because its requester or host was removed by `by`: a pending request is
/// cancelled, a grant that has not run out is ended. Rule 14: removal is final.
pub fn close_for_removal(req: &mut Request, by: &Name, reason: &str, now: Timestamp) -> Closed {
    if req.state_at(now) == RequestState::Pending {
        req.decision = Decision::Cancelled {
            at: now,
            by: Some(by.clone()),
            reason: Some(reason.to_string()),
        };
        return Closed::Cancelled;
    }
    if let Decision::Approved { grant } = &mut req.decision
        && grant.ended.is_none()
        && now < grant.end
    {
        grant.ended = Some(Ended {
            at: now,
            by: by.clone(),
            reason: reason.to_string(),
        });
        return Closed::Ended;
    }
    Closed::Untouched
}

/// A change to the team, as policy sees it.
#[derive(Debug, Clone, Copy)]
pub enum TeamChange<'a> {
    Add { role: Role, kind: MemberKind },
    Remove { target: &'a Member },
    Keys { target: &'a Member },
    SetRole { target: &'a Member, to: Role },
}

/// Rule 13: OWNERs are the root of trust. Only an OWNER adds, removes, re-keys or changes
/// the role of an OWNER or ADMIN (or makes someone one), so no single ADMIN can create a
/// second approver; ADMINs manage EDITORs and VIEWERs; every member changes their own keys.
/// `owners` is how many OWNERs exist, so the last one is never removed or demoted.
pub fn check_team_change(actor: &Member, change: TeamChange<'_>, owners: u64) -> Result<()> {
    if let TeamChange::Keys { target } = change
        && target.id == actor.id
    {
        return Ok(());
    }
    let (verb, approver) = match change {
        TeamChange::Add { role, .. } => ("add", role.can_manage()),
        TeamChange::Remove { target } => ("remove", target.role.can_manage()),
        TeamChange::Keys { target } => ("change the keys of", target.role.can_manage()),
        TeamChange::SetRole { target, to } => (
            "change the role of",
            target.role.can_manage() || to.can_manage(),
        ),
    };
    if !actor.role.can_manage() {
        return Err(Error::PermissionDenied(format!(
            "only owners and admins can {verb} members (you may add and remove your own keys); you are {}",
            actor.role
        )));
    }
    if approver && actor.role != Role::Owner {
        return Err(Error::PermissionDenied(format!(
            "only owners can {verb} an owner or admin, or make someone one: owners are the root of trust, so no admin can create a second approver. Ask an owner; you are {}",
            actor.role
        )));
    }
    // Bots never approve or manage: their base role stays viewer or editor.
    let bot_manager = match change {
        TeamChange::Add { role, kind } => kind == MemberKind::Bot && role.can_manage(),
        TeamChange::SetRole { target, to } => target.kind == MemberKind::Bot && to.can_manage(),
        _ => false,
    };
    if bot_manager {
        return Err(Error::invalid(
            "a bot's base role is viewer or editor: bots never approve, review or manage anything",
        ));
    }
    let last_owner = |t: &Member| t.role == Role::Owner && owners <= 1;
    match change {
        TeamChange::Remove { target } if last_owner(target) => Err(Error::InvalidState(format!(
            "{} is the last owner; add another owner before removing them",
            target.name
        ))),
        TeamChange::SetRole { target, to } if to != Role::Owner && last_owner(target) => {
            Err(Error::InvalidState(format!(
                "{} is the last owner; make another member owner before changing their role",
                target.name
            )))
        }
        _ => Ok(()),
    }
}

fn check_approver(req: &Request, approver: &Member, verb: &str) -> Result<()> {
    if !approver.role.can_manage() {
        return Err(Error::PermissionDenied(format!(
            "only owners and admins can {verb} requests; you are {}",
            approver.role
        )));
    }
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

/// Checks a human-written reason or comment: present, short enough, one line of plain text
/// with nothing hidden (no controls, separators or invisible format characters).
fn check_text(what: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::invalid(format!(
            "the {what} is empty; say why, ideally with a ticket or incident id"
        )));
    }
    if text.len() > MAX_REASON_BYTES {
        return Err(Error::invalid(format!(
            "the {what} is {} bytes; the limit is {MAX_REASON_BYTES}. Summarize it and link the ticket",
            text.len()
        )));
    }
    if let Some(c) = text.chars().find(|c| is_hidden_char(*c)) {
        return Err(Error::invalid(format!(
            "the {what} contains the invisible or control character U+{:04X}; use one line of plain text with ordinary spaces",
            c as u32
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Host, IdentityId};

    pub(crate) fn member(name: &str, role: Role) -> Member {
        Member {
            id: IdentityId(name.bytes().fold(7, |a, b| a * 31 + u64::from(b))),
            name: name.parse().unwrap(),
            role,
            kind: MemberKind::Human,
            key_added_by: vec![],
            keys: vec![],
            key_fingerprints: vec![],
            added_at: Timestamp::from_unix(0),
            added_by: "test".into(),
        }
    }

    fn host(approvals: u32, tags: &[&str]) -> Found {
        Found::host(&Host {
            id: IdentityId(1),
            name: "web-01".parse().unwrap(),
            address: "10.0.0.5".into(),
            port: 22,
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
            logins: BTreeMap::from([
                (GrantRole::Viewer, "readonly".to_string()),
                (GrantRole::Editor, "deploy".to_string()),
            ]),
            approvals_required: approvals,
            break_glass: false,
            escalate_after_secs: None,
            added_at: Timestamp::from_unix(0),
            added_by: "test".into(),
        })
    }

    /// `Policy::open` with no history and no rules.
    #[allow(clippy::too_many_arguments)]
    fn open_with(
        p: &Policy,
        id: u64,
        requester: &Member,
        found: &Found,
        ask: &Ask<'_>,
        open: &[OpenEntry],
        approvers: usize,
        now: Timestamp,
    ) -> Result<Request> {
        let asking = Asking {
            requester,
            found,
            ask,
            open,
            approvers,
            history: &History::default(),
            rules: &[],
        };
        p.open(id, &asking, now)
    }

    /// Approves as `approver`, the requester (same identity) having base role `base`.
    fn yes(r: &mut Request, approver: &Member, base: Role, now: Timestamp) -> Result<Approved> {
        let mut requester = member(r.requester.as_str(), base);
        requester.id = r.requester_id;
        approve(
            r,
            approver,
            Some(&requester),
            Some(&host(1, &[])),
            &[],
            None,
            now,
        )
    }

    const T0: Timestamp = Timestamp::from_unix(1_800_000_000);

    fn ask(role: GrantRole, secs: u64) -> Ask<'static> {
        Ask {
            role: Some(role),
            duration_secs: secs,
            reason: "INC-42 restart the stuck worker",
            start: None,
            break_glass: false,
        }
    }

    fn open(approvals: u32) -> Request {
        open_with(
            &Policy::default(),
            1,
            &member("alice", Role::Viewer),
            &host(approvals, &[]),
            &ask(GrantRole::Editor, 7200),
            &[],
            5,
            T0,
        )
        .unwrap()
    }

    #[test]
    fn duration_is_bounded_on_both_ends() {
        let p = Policy::default();
        let (a, h) = (member("alice", Role::Viewer), host(1, &[]));
        for secs in [60, 299, 86401, 25 * 3600] {
            assert!(open_with(&p, 1, &a, &h, &ask(GrantRole::Viewer, secs), &[], 5, T0).is_err());
        }
        for secs in [300, 3600, 86400] {
            assert!(open_with(&p, 1, &a, &h, &ask(GrantRole::Viewer, secs), &[], 5, T0).is_ok());
        }
    }

    #[test]
    fn deployments_may_tighten_but_not_widen() {
        let mut p = Policy {
            max_duration_secs: 3600,
            ..Policy::default()
        };
        assert!(p.validate().is_ok());
        let (a, h) = (member("alice", Role::Viewer), host(1, &[]));
        assert!(open_with(&p, 1, &a, &h, &ask(GrantRole::Viewer, 7200), &[], 5, T0).is_err());
        p.max_duration_secs = 90_000;
        assert!(p.validate().is_err());
        p.max_duration_secs = 3600;
        p.min_duration_secs = 60;
        assert!(p.validate().is_err());
    }

    #[test]
    fn reasons_are_checked() {
        assert!(check_reason("").is_err());
        assert!(check_reason("   ").is_err());
        assert!(check_reason(&"x".repeat(1001)).is_err());
        assert!(check_reason("fix\u{7}bell").is_err());
        assert!(check_reason("line\nbreak").is_err());
        assert!(check_reason("INC-1 fix it").is_ok());
    }

    #[test]
    fn nobody_approves_their_own_request() {
        let mut r = open(1);
        let err = yes(&mut r, &member("alice", Role::Owner), Role::Owner, T0);
        assert!(matches!(err, Err(Error::PermissionDenied(_))));
        assert_eq!(r.state_at(T0), RequestState::Pending);
    }

    #[test]
    fn only_owners_and_admins_approve() {
        let mut r = open(1);
        for role in [Role::Viewer, Role::Editor] {
            assert!(yes(&mut r, &member("bob", role), Role::Viewer, T0).is_err());
        }
        assert!(yes(&mut r, &member("adam", Role::Admin), Role::Viewer, T0).is_ok());
    }

    #[test]
    fn window_starts_at_final_approval_and_lasts_the_duration() {
        let mut r = open(1);
        let now = T0.plus(100);
        let out = yes(&mut r, &member("olga", Role::Owner), Role::Viewer, now).unwrap();
        let Approved::Granted(g) = out else {
            panic!("not granted")
        };
        assert_eq!((g.start, g.end), (now, now.plus(7200)));
        assert_eq!(g.scope.principals(), ["deploy@web-01".to_string()]);
        assert_eq!(r.state_at(now), RequestState::Approved);
    }

    #[test]
    fn requested_start_wins_when_later() {
        let p = Policy::default();
        let mut a = ask(GrantRole::Viewer, 600);
        a.start = Some(T0.plus(3600));
        let mut r = open_with(
            &p,
            1,
            &member("alice", Role::Viewer),
            &host(1, &[]),
            &a,
            &[],
            5,
            T0,
        )
        .unwrap();
        yes(
            &mut r,
            &member("olga", Role::Owner),
            Role::Viewer,
            T0.plus(5),
        )
        .unwrap();
        let g = r.grant().unwrap();
        assert_eq!((g.start, g.end), (T0.plus(3600), T0.plus(4200)));
        let alice = member("alice", Role::Viewer);
        let refused = |a: &Ask<'_>| open_with(&p, 1, &alice, &host(1, &[]), a, &[], 5, T0).is_err();
        a.start = Some(Timestamp::from_unix(T0.unix() - 10));
        assert!(refused(&a), "a start in the past");
        a.start = Some(T0.plus(8 * 86400));
        assert!(refused(&a), "a start too far ahead");
    }

    #[test]
    fn dual_authorization_needs_distinct_approvers() {
        let mut r = open(2);
        let olga = member("olga", Role::Owner);
        assert_eq!(
            yes(&mut r, &olga, Role::Viewer, T0).unwrap(),
            Approved::Recorded { have: 1, need: 2 }
        );
        assert!(yes(&mut r, &olga, Role::Viewer, T0).is_err());
        assert_eq!(r.state_at(T0), RequestState::Pending);
        let out = yes(&mut r, &member("adam", Role::Admin), Role::Viewer, T0).unwrap();
        assert!(matches!(out, Approved::Granted(_)));
    }

    #[test]
    fn any_one_denial_vetoes() {
        let mut r = open(2);
        yes(&mut r, &member("olga", Role::Owner), Role::Viewer, T0).unwrap();
        deny(&mut r, &member("adam", Role::Admin), "not now", T0).unwrap();
        assert_eq!(r.state_at(T0), RequestState::Denied);
        assert!(yes(&mut r, &member("zed", Role::Admin), Role::Viewer, T0).is_err());
    }

    #[test]
    fn pending_requests_expire_by_the_clock() {
        let mut r = open(1);
        let ttl = Policy::default().pending_ttl_secs;
        assert_eq!(r.state_at(T0.plus(ttl - 1)), RequestState::Pending);
        assert_eq!(r.state_at(T0.plus(ttl)), RequestState::Expired);
        let late = yes(
            &mut r,
            &member("olga", Role::Owner),
            Role::Viewer,
            T0.plus(ttl),
        );
        assert!(matches!(late, Err(Error::InvalidState(_))));
        assert!(cancel(&mut r, &member("alice", Role::Viewer), T0.plus(ttl)).is_err());
    }

    #[test]
    fn only_the_requester_cancels_and_only_while_pending() {
        let mut r = open(1);
        assert!(cancel(&mut r, &member("bob", Role::Viewer), T0).is_err());
        cancel(&mut r, &member("alice", Role::Viewer), T0).unwrap();
        assert_eq!(r.state_at(T0), RequestState::Cancelled);
        assert!(cancel(&mut r, &member("alice", Role::Viewer), T0).is_err());
    }

    #[test]
    fn effective_role_elevates_never_downgrades_and_caps_at_editor() {
        use GrantRole::*;
        assert_eq!(effective_role(Role::Viewer, Viewer), Viewer);
        assert_eq!(effective_role(Role::Viewer, Editor), Editor);
        assert_eq!(effective_role(Role::Editor, Viewer), Editor);
        assert_eq!(effective_role(Role::Owner, Viewer), Editor);
        assert_eq!(effective_role(Role::Admin, Editor), Editor);
    }

    #[test]
    fn elevation_never_lends_editor_rights_to_a_viewer_login() {
        let mut h = host(1, &[]);
        h.hosts[0].logins.remove(&GrantRole::Editor);
        let p = Policy::default();
        let mut r = open_with(
            &p,
            1,
            &member("ed", Role::Editor),
            &h,
            &ask(GrantRole::Viewer, 600),
            &[],
            5,
            T0,
        )
        .unwrap();
        let mut ed = member("ed", Role::Editor);
        ed.id = r.requester_id;
        approve(
            &mut r,
            &member("olga", Role::Owner),
            Some(&ed),
            Some(&h),
            &[],
            None,
            T0,
        )
        .unwrap();
        let g = r.grant().unwrap();
        assert_eq!(g.effective_role, Some(GrantRole::Viewer));
        assert_eq!(g.scope.principals(), ["readonly@web-01".to_string()]);
    }

    #[test]
    fn certificates_only_for_the_requester_inside_the_window() {
        let mut r = open(1);
        let p = Policy::default();
        let cert =
            |r: &Request, who: &Member, at| p.authorize_cert(r, who, |_| true, at).map(|_| ());
        let alice = member("alice", Role::Viewer);
        assert!(matches!(cert(&r, &alice, T0), Err(Error::InvalidState(_))));
        yes(&mut r, &member("olga", Role::Owner), Role::Viewer, T0).unwrap();
        let bob = member("bob", Role::Viewer);
        assert!(matches!(
            cert(&r, &bob, T0),
            Err(Error::PermissionDenied(_))
        ));
        assert!(cert(&r, &alice, T0).is_ok());
        assert!(cert(&r, &alice, T0.plus(7199)).is_ok());
        assert!(matches!(
            cert(&r, &alice, T0.plus(7200)),
            Err(Error::GrantNotCurrent(_))
        ));
    }

    #[test]
    fn production_editor_requests_are_flagged() {
        let r = open_with(
            &Policy::default(),
            1,
            &member("alice", Role::Viewer),
            &host(1, &["prod"]),
            &ask(GrantRole::Editor, 7200),
            &[],
            5,
            T0,
        )
        .unwrap();
        assert!(
            r.justification
                .flags
                .iter()
                .any(|f| f == "editor_on_production")
        );
    }

    #[test]
    fn only_owners_touch_owners_and_admins() {
        let (olga, adam, ed) = (
            member("olga", Role::Owner),
            member("adam", Role::Admin),
            member("ed", Role::Editor),
        );
        let zoe = member("zoe", Role::Admin);
        let denied = |actor: &Member, change| {
            matches!(
                check_team_change(actor, change, 2),
                Err(Error::PermissionDenied(_))
            )
        };
        for change in [
            TeamChange::Add {
                role: Role::Admin,
                kind: MemberKind::Human,
            },
            TeamChange::Add {
                role: Role::Owner,
                kind: MemberKind::Human,
            },
            TeamChange::Remove { target: &zoe },
            TeamChange::Keys { target: &zoe },
            TeamChange::SetRole {
                target: &ed,
                to: Role::Admin,
            },
            TeamChange::SetRole {
                target: &zoe,
                to: Role::Viewer,
            },
        ] {
            assert!(denied(&adam, change), "{change:?}");
            assert!(check_team_change(&olga, change, 2).is_ok(), "{change:?}");
        }
        // Admins manage editors and viewers; everyone manages their own keys.
        assert!(
            check_team_change(
                &adam,
                TeamChange::Add {
                    role: Role::Editor,
                    kind: MemberKind::Human
                },
                2
            )
            .is_ok()
        );
        assert!(check_team_change(&adam, TeamChange::Keys { target: &ed }, 2).is_ok());
        assert!(check_team_change(&ed, TeamChange::Keys { target: &ed }, 2).is_ok());
        assert!(check_team_change(&adam, TeamChange::Keys { target: &adam }, 2).is_ok());
        assert!(denied(&ed, TeamChange::Keys { target: &adam }));
        assert!(denied(
            &ed,
            TeamChange::Add {
                role: Role::Viewer,
                kind: MemberKind::Human
            }
        ));
        // The last owner stays.
        for change in [
            TeamChange::Remove { target: &olga },
            TeamChange::SetRole {
                target: &olga,
                to: Role::Admin,
            },
        ] {
            assert!(matches!(
                check_team_change(&olga, change, 1),
                Err(Error::InvalidState(_))
            ));
        }
    }

    #[test]
    fn the_rate_allows_a_burst_then_a_steady_pace() {
        let rate = RateLimit {
            burst: 3,
            per_minute: 6,
        };
        let mut tat = 0;
        for _ in 0..3 {
            rate.take("cert", &mut tat, T0).unwrap();
        }
        let Err(Error::RateLimited {
            retry_after_secs, ..
        }) = rate.take("cert", &mut tat, T0)
        else {
            panic!("not limited")
        };
        assert_eq!(retry_after_secs, 10);
        assert!(rate.take("cert", &mut tat, T0.plus(9)).is_err());
        rate.take("cert", &mut tat, T0.plus(10)).unwrap();
        // A long pause refills the burst, never more.
        for _ in 0..3 {
            rate.take("cert", &mut tat, T0.plus(1000)).unwrap();
        }
        assert!(rate.take("cert", &mut tat, T0.plus(1000)).is_err());
        // A use given back can be taken again.
        let (before, after) = (tat - 10_000_000, tat);
        tat = rate.give_back(tat, before, after);
        assert_eq!(tat, before);
        rate.take("cert", &mut tat, T0.plus(1000)).unwrap();
        // A clock stepped back makes the member wait at most one interval.
        let mut tat = 0;
        rate.take("cert", &mut tat, T0.plus(3600)).unwrap();
        assert!(matches!(
            rate.take("cert", &mut tat, T0),
            Err(Error::RateLimited {
                retry_after_secs: 10,
                ..
            })
        ));
        rate.take("cert", &mut tat, T0.plus(10)).unwrap();
    }

    #[test]
    fn removal_cancels_pending_and_ends_current_grants_only() {
        let by: Name = "olga".parse().unwrap();
        let mut pending = open(1);
        assert_eq!(
            close_for_removal(&mut pending, &by, "gone", T0),
            Closed::Cancelled
        );
        assert_eq!(pending.state_at(T0), RequestState::Cancelled);
        let mut granted = open(1);
        yes(&mut granted, &member("adam", Role::Admin), Role::Viewer, T0).unwrap();
        assert_eq!(
            close_for_removal(&mut granted, &by, "gone", T0.plus(10)),
            Closed::Ended
        );
        let p = Policy::default();
        let alice = member("alice", Role::Viewer);
        assert!(matches!(
            p.authorize_cert(&granted, &alice, |_| true, T0.plus(20)),
            Err(Error::GrantNotCurrent(m)) if m.contains("was ended")
        ));
        assert_eq!(
            close_for_removal(&mut granted, &by, "again", T0.plus(30)),
            Closed::Untouched
        );
        let mut over = open(1);
        yes(&mut over, &member("adam", Role::Admin), Role::Viewer, T0).unwrap();
        assert_eq!(
            close_for_removal(&mut over, &by, "late", T0.plus(7200)),
            Closed::Untouched
        );
    }

    #[test]
    fn requests_belong_to_identities_not_names() {
        let mut r = open(1);
        let mut impostor = member("alice", Role::Viewer);
        impostor.id = IdentityId(999);
        assert!(!may_read(&r, &impostor));
        assert!(cancel(&mut r, &impostor, T0).is_err());
        // The requester's name now belongs to someone else: no approval.
        let out = approve(
            &mut r,
            &member("olga", Role::Owner),
            Some(&impostor),
            Some(&host(1, &[])),
            &[],
            None,
            T0,
        );
        assert!(matches!(out, Err(Error::InvalidState(m)) if m.contains("no longer a member")));
        let mut other_host = host(1, &[]);
        other_host.id = IdentityId(2);
        other_host.hosts[0].id = IdentityId(2);
        let out = approve(
            &mut r,
            &member("olga", Role::Owner),
            Some(&member("alice", Role::Viewer)),
            Some(&other_host),
            &[],
            None,
            T0,
        );
        assert!(matches!(out, Err(Error::InvalidState(m)) if m.contains("was removed")));
    }

    #[test]
    fn the_scope_is_fixed_at_final_approval_and_needs_what_its_hosts_need() {
        let fleet = |hosts: Vec<Host>| Found {
            kind: crate::target::TargetKind::Fleet,
            name: "web".parse().unwrap(),
            id: IdentityId(50),
            approvals_required: 1,
            max_hosts: 256,
            hosts,
            command: None,
            why_empty: "none".into(),
            break_glass: false,
            escalate_after_secs: None,
        };
        let web = |id: u64, name: &str, approvals: u32| {
            let mut h = host(approvals, &["web"]).hosts.remove(0);
            h.id = IdentityId(id);
            h.name = name.parse().unwrap();
            h
        };
        let alice = member("alice", Role::Viewer);
        let p = Policy::default();
        let mut r = open_with(
            &p,
            1,
            &alice,
            &fleet(vec![web(1, "web-01", 1)]),
            &ask(GrantRole::Viewer, 600),
            &[],
            5,
            T0,
        )
        .unwrap();
        assert_eq!(r.approvals_required, 1);
        // A host needing two approvals joined the fleet before approval: one is not enough.
        let now_fleet = fleet(vec![web(1, "web-01", 1), web(2, "web-02", 2)]);
        let olga = member("olga", Role::Owner);
        let out = approve(&mut r, &olga, Some(&alice), Some(&now_fleet), &[], None, T0).unwrap();
        assert_eq!(out, Approved::Recorded { have: 1, need: 2 });
        let out = approve(
            &mut r,
            &member("adam", Role::Admin),
            Some(&alice),
            Some(&now_fleet),
            &[],
            None,
            T0,
        );
        let Ok(Approved::Granted(g)) = out else {
            panic!("not granted: {out:?}")
        };
        assert_eq!(g.scope.host_list(10), "web-01, web-02");
        // A removed host gets no certificate; with all gone, none is issued.
        let (_, hosts) = p
            .authorize_cert(
                &r,
                &alice,
                |h| h.is_none_or(|h| h.name.as_str() != "web-02"),
                T0,
            )
            .unwrap();
        assert_eq!(hosts.len(), 1);
        assert!(matches!(
            p.authorize_cert(&r, &alice, |h| h.is_none(), T0),
            Err(Error::GrantNotCurrent(m)) if m.contains("every host")
        ));
        // The fleet itself removed: nothing more, even with its hosts there.
        assert!(matches!(
            p.authorize_cert(&r, &alice, |h| h.is_some(), T0),
            Err(Error::GrantNotCurrent(m)) if m.contains("fleet web was removed")
        ));
    }

    #[test]
    fn break_glass_needs_a_person_a_reference_a_short_window_and_no_overdue_review() {
        let p = Policy::default();
        let mut found = host(2, &[]);
        found.break_glass = true;
        let ed = member("ed", Role::Editor);
        let glass_on =
            |found: &Found, who: &Member, secs: u64, reason: &'static str, history: &History| {
                let ask = Ask {
                    role: Some(GrantRole::Editor),
                    duration_secs: secs,
                    reason,
                    start: None,
                    break_glass: true,
                };
                let asking = Asking {
                    requester: who,
                    found,
                    ask: &ask,
                    open: &[],
                    approvers: 0,
                    history,
                    rules: &[],
                };
                p.open(1, &asking, T0)
            };
        let glass = |who: &Member, secs: u64, reason: &'static str, history: &History| {
            glass_on(&found, who, secs, reason, history)
        };
        let clean = History::default();
        let r = glass(&ed, 1800, "INC-9 disk full", &clean).unwrap();
        // Granted at once, with no approvers, though the host needs two and none exist.
        assert_eq!(r.state_at(T0), RequestState::Approved);
        assert_eq!(r.review_due, Some(T0.plus(p.review_within_secs)));
        assert!(r.approvals.is_empty());
        let err = |e: Result<Request>| e.unwrap_err();
        assert!(matches!(
            err(glass(
                &member("vic", Role::Viewer),
                1800,
                "INC-9 disk full",
                &clean
            )),
            Error::BreakGlassWho { .. }
        ));
        let mut bot = member("robo", Role::Editor);
        bot.kind = MemberKind::Bot;
        assert!(matches!(
            err(glass(&bot, 1800, "INC-9 disk full", &clean)),
            Error::BreakGlassWho { .. }
        ));
        assert!(matches!(
            err(glass(&ed, 3601, "INC-9 disk full", &clean)),
            Error::BreakGlassTooLong { .. }
        ));
        assert!(matches!(
            err(glass(&ed, 1800, "the disk is full", &clean)),
            Error::BreakGlassNoReference
        ));
        let overdue = History {
            overdue_break_glass: vec![4],
            ..History::default()
        };
        assert!(
            matches!(err(glass(&ed, 1800, "INC-9 disk full", &overdue)), Error::ReviewOverdue { ids } if ids == [4])
        );
        let mut closed = found.clone();
        closed.break_glass = false;
        assert!(matches!(
            err(glass_on(&closed, &ed, 1800, "INC-9 disk full", &clean)),
            Error::BreakGlassNotAllowed { .. }
        ));
    }

    #[test]
    fn a_review_is_once_by_another_approver_and_marks_lateness() {
        let p = Policy::default();
        let mut found = host(1, &[]);
        found.break_glass = true;
        let ed = member("ed", Role::Editor);
        let ask = Ask {
            break_glass: true,
            ..ask(GrantRole::Editor, 1800)
        };
        let asking = Asking {
            requester: &ed,
            found: &found,
            ask: &ask,
            open: &[],
            approvers: 1,
            history: &History::default(),
            rules: &[],
        };
        let mut r = p.open(1, &asking, T0).unwrap();
        let adam = member("adam", Role::Admin);
        let ok = ReviewVerdict::Ok;
        assert!(review(&mut r, &ed, Some(&ed), ok, "mine", T0).is_err());
        assert!(review(&mut r, &member("vic", Role::Viewer), Some(&ed), ok, "x", T0).is_err());
        let late = T0.plus(p.review_within_secs);
        assert!(r.review_overdue(late));
        review(
            &mut r,
            &adam,
            Some(&ed),
            ReviewVerdict::Flagged,
            "INC-9 follow up",
            late,
        )
        .unwrap();
        let rv = r.review.clone().unwrap();
        assert_eq!((rv.verdict, rv.late), (ReviewVerdict::Flagged, true));
        assert!(!r.review_overdue(late));
        assert!(
            review(
                &mut r,
                &member("olga", Role::Owner),
                Some(&ed),
                ok,
                "again",
                late
            )
            .is_err()
        );
        // An admin who added a key of the requester's cannot review for them.
        let mut r2 = p.open(2, &asking, T0).unwrap();
        let mut keyed = ed.clone();
        keyed.key_added_by = vec![adam.id];
        assert!(matches!(
            review(&mut r2, &adam, Some(&keyed), ok, "x", T0),
            Err(Error::PermissionDenied(m)) if m.contains("you added ed")
        ));
    }

    #[test]
    fn the_new_knobs_are_bounded() {
        for (knob, bad) in [
            ("break_glass_max_secs", 90_000u64),
            ("review_within_secs", 30),
            ("bot_max_duration_secs", 60),
        ] {
            let mut p = Policy::default();
            match knob {
                "break_glass_max_secs" => p.break_glass_max_secs = bad,
                "review_within_secs" => p.review_within_secs = bad,
                _ => p.bot_max_duration_secs = bad,
            }
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(knob), "{err}");
        }
        assert!(Policy::default().validate().is_ok());
    }

    #[test]
    fn hidden_characters_are_refused_in_text() {
        for bad in [
            "a\u{202E}b",
            "a\u{2066}b",
            "a\u{200B}b",
            "a\u{2028}b",
            "\u{FEFF}a",
            "a\u{E0041}",
            "a\u{00A0}b",
            "/opt/app\u{FE0F}/restart.sh",
            "a\u{E0100}b",
            "a\u{180E}b",
            "a\u{17B4}b",
            "a\u{2800}b",
        ] {
            assert!(check_reason(bad).is_err(), "{bad:?}");
        }
        assert!(check_reason("INC-1 réparer le café ☕").is_ok());
    }
}
