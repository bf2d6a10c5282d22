//! The access rules, pure: given a request, the people involved and the time, what is allowed.
//!
//! Nothing here does I/O or reads the clock; `now` is always an argument.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::justify;
use crate::model::{
    Approval, Decision, Grant, GrantRole, Host, Member, Name, Request, RequestState, Role,
    Timestamp, format_duration,
};

/// The hard floor on a grant's duration (5 minutes).
pub const MIN_DURATION_FLOOR: u64 = 5 * 60;
/// The hard ceiling on a grant's duration (24 hours).
pub const MAX_DURATION_CEILING: u64 = 24 * 3600;
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
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_duration_secs: MIN_DURATION_FLOOR,
            max_duration_secs: MAX_DURATION_CEILING,
            pending_ttl_secs: 3600,
            max_start_ahead_secs: 7 * 86400,
        }
    }
}

/// What a new request asks for, after parsing.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub role: GrantRole,
    pub duration_secs: u64,
    pub reason: &'a str,
    pub start: Option<Timestamp>,
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
        Ok(())
    }

    /// Opens a request: validates it and returns it, pending, with its justification.
    pub fn open(
        &self,
        id: u64,
        requester: &Member,
        host: &Host,
        ask: &Ask<'_>,
        now: Timestamp,
    ) -> Result<Request> {
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
        if !host.logins.contains_key(&ask.role) {
            return Err(Error::invalid(format!(
                "host {} has no login for role {}; ask an admin to add one with 'host add {} ... --login {}=USER'",
                host.name, ask.role, host.name, ask.role
            )));
        }
        let justification = justify::deterministic(requester, host, ask);
        Ok(Request {
            id,
            requester: requester.name.clone(),
            resource: host.name.clone(),
            role: ask.role,
            duration_secs: ask.duration_secs,
            reason: ask.reason.trim().to_string(),
            requested_start: ask.start,
            justification,
            created_at: now,
            pending_until: now.plus(self.pending_ttl_secs),
            approvals: Vec::new(),
            approvals_required: host.approvals_required.max(1),
            logins: host.logins.clone(),
            decision: Decision::Pending,
        })
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

/// The role and login a grant for `req` carries when its requester's base role is `base`.
///
/// The certificate's rights must match the login it opens: if the host has no login for the
/// elevated role, the grant stays at the requested role.
pub fn grant_shape(req: &Request, base: Role) -> Result<(GrantRole, String)> {
    let mut effective = effective_role(base, req.role);
    if !req.logins.contains_key(&effective) {
        effective = req.role;
    }
    let login =
        req.logins.get(&effective).cloned().ok_or_else(|| {
            Error::Internal(format!("request {} has no login for its role", req.id))
        })?;
    Ok((effective, login))
}

/// Records `approver`'s approval of `req` at `now`; the last one needed turns it into a grant.
pub fn approve(
    req: &mut Request,
    approver: &Member,
    requester_base: Role,
    comment: Option<&str>,
    now: Timestamp,
) -> Result<Approved> {
    check_approver(req, approver, "approve")?;
    require_pending(req, now, "approved")?;
    if let Some(c) = comment {
        check_text("comment", c)?;
    }
    if req.approvals.iter().any(|a| a.by == approver.name) {
        return Err(Error::InvalidState(format!(
            "you already approved request {}; it needs {} more approval(s) from other approvers",
            req.id,
            req.approvals_required
                .saturating_sub(req.approvals.len() as u32)
        )));
    }
    req.approvals.push(Approval {
        by: approver.name.clone(),
        at: now,
        comment: comment.map(str::to_string),
    });
    let have = req.approvals.len() as u32;
    if have < req.approvals_required {
        return Ok(Approved::Recorded {
            have,
            need: req.approvals_required,
        });
    }
    let start = req.requested_start.map_or(now, |s| s.max(now));
    let (effective, login) = grant_shape(req, requester_base)?;
    let grant = Grant {
        start,
        end: start.plus(req.duration_secs),
        effective_role: effective,
        login,
    };
    req.decision = Decision::Approved {
        grant: grant.clone(),
    };
    Ok(Approved::Granted(grant))
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
pub fn cancel(req: &mut Request, actor: &Name, now: Timestamp) -> Result<()> {
    if &req.requester != actor {
        return Err(Error::PermissionDenied(format!(
            "request {} belongs to {}; only the requester can cancel it (approvers can deny it)",
            req.id, req.requester
        )));
    }
    require_pending(req, now, "cancelled")?;
    req.decision = Decision::Cancelled { at: now };
    Ok(())
}

/// Checks that `actor` may have a certificate for `req` at `now`; returns the grant.
pub fn authorize_cert<'r>(req: &'r Request, actor: &Name, now: Timestamp) -> Result<&'r Grant> {
    if &req.requester != actor {
        return Err(Error::PermissionDenied(format!(
            "request {} belongs to {}; certificates are issued only to the requester",
            req.id, req.requester
        )));
    }
    let Some(grant) = req.grant() else {
        let state = req.state_at(now);
        let hint = match state {
            RequestState::Pending => "wait for approval, then run 'cert' again",
            _ => "make a new request",
        };
        return Err(Error::InvalidState(format!(
            "request {} is {state}, not approved; {hint}",
            req.id
        )));
    };
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
    Ok(grant)
}

fn check_approver(req: &Request, approver: &Member, verb: &str) -> Result<()> {
    if !approver.role.can_manage() {
        return Err(Error::PermissionDenied(format!(
            "only owners and admins can {verb} requests; you are {}",
            approver.role
        )));
    }
    if approver.name == req.requester {
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

/// Checks a human-written reason or comment: present, short enough, one line of printable text.
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
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "the {what} contains the control character {c:?}; use one line of plain text"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    pub(crate) fn member(name: &str, role: Role) -> Member {
        Member {
            name: name.parse().unwrap(),
            role,
            keys: vec![],
            key_fingerprints: vec![],
            added_at: Timestamp::from_unix(0),
            added_by: "test".into(),
        }
    }

    fn host(approvals: u32, tags: &[&str]) -> Host {
        Host {
            name: "web-01".parse().unwrap(),
            address: "10.0.0.5".into(),
            port: 22,
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
            logins: BTreeMap::from([
                (GrantRole::Viewer, "readonly".to_string()),
                (GrantRole::Editor, "deploy".to_string()),
            ]),
            approvals_required: approvals,
            added_at: Timestamp::from_unix(0),
            added_by: "test".into(),
        }
    }

    const T0: Timestamp = Timestamp::from_unix(1_800_000_000);

    fn ask(role: GrantRole, secs: u64) -> Ask<'static> {
        Ask {
            role,
            duration_secs: secs,
            reason: "INC-42 restart the stuck worker",
            start: None,
        }
    }

    fn open(approvals: u32) -> Request {
        Policy::default()
            .open(
                1,
                &member("alice", Role::Viewer),
                &host(approvals, &[]),
                &ask(GrantRole::Editor, 7200),
                T0,
            )
            .unwrap()
    }

    #[test]
    fn duration_is_bounded_on_both_ends() {
        let p = Policy::default();
        let (a, h) = (member("alice", Role::Viewer), host(1, &[]));
        for secs in [60, 299, 86401, 25 * 3600] {
            assert!(
                p.open(1, &a, &h, &ask(GrantRole::Viewer, secs), T0)
                    .is_err()
            );
        }
        for secs in [300, 3600, 86400] {
            assert!(p.open(1, &a, &h, &ask(GrantRole::Viewer, secs), T0).is_ok());
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
        assert!(
            p.open(1, &a, &h, &ask(GrantRole::Viewer, 7200), T0)
                .is_err()
        );
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
        let err = approve(&mut r, &member("alice", Role::Owner), Role::Owner, None, T0);
        assert!(matches!(err, Err(Error::PermissionDenied(_))));
        assert_eq!(r.state_at(T0), RequestState::Pending);
    }

    #[test]
    fn only_owners_and_admins_approve() {
        let mut r = open(1);
        for role in [Role::Viewer, Role::Editor] {
            assert!(approve(&mut r, &member("bob", role), Role::Viewer, None, T0).is_err());
        }
        assert!(approve(&mut r, &member("adam", Role::Admin), Role::Viewer, None, T0).is_ok());
    }

    #[test]
    fn window_starts_at_final_approval_and_lasts_the_duration() {
        let mut r = open(1);
        let now = T0.plus(100);
        let out = approve(
            &mut r,
            &member("olga", Role::Owner),
            Role::Viewer,
            None,
            now,
        )
        .unwrap();
        let Approved::Granted(g) = out else {
            panic!("not granted")
        };
        assert_eq!((g.start, g.end), (now, now.plus(7200)));
        assert_eq!(g.login, "deploy");
        assert_eq!(r.state_at(now), RequestState::Approved);
    }

    #[test]
    fn requested_start_wins_when_later() {
        let p = Policy::default();
        let mut a = ask(GrantRole::Viewer, 600);
        a.start = Some(T0.plus(3600));
        let mut r = p
            .open(1, &member("alice", Role::Viewer), &host(1, &[]), &a, T0)
            .unwrap();
        approve(
            &mut r,
            &member("olga", Role::Owner),
            Role::Viewer,
            None,
            T0.plus(5),
        )
        .unwrap();
        let g = r.grant().unwrap();
        assert_eq!((g.start, g.end), (T0.plus(3600), T0.plus(4200)));
        a.start = Some(Timestamp::from_unix(T0.unix() - 10));
        assert!(
            p.open(1, &member("alice", Role::Viewer), &host(1, &[]), &a, T0)
                .is_err()
        );
        a.start = Some(T0.plus(8 * 86400));
        assert!(
            p.open(1, &member("alice", Role::Viewer), &host(1, &[]), &a, T0)
                .is_err()
        );
    }

    #[test]
    fn dual_authorization_needs_distinct_approvers() {
        let mut r = open(2);
        let olga = member("olga", Role::Owner);
        assert_eq!(
            approve(&mut r, &olga, Role::Viewer, None, T0).unwrap(),
            Approved::Recorded { have: 1, need: 2 }
        );
        assert!(approve(&mut r, &olga, Role::Viewer, None, T0).is_err());
        assert_eq!(r.state_at(T0), RequestState::Pending);
        let out = approve(&mut r, &member("adam", Role::Admin), Role::Viewer, None, T0).unwrap();
        assert!(matches!(out, Approved::Granted(_)));
    }

    #[test]
    fn any_one_denial_vetoes() {
        let mut r = open(2);
        approve(&mut r, &member("olga", Role::Owner), Role::Viewer, None, T0).unwrap();
        deny(&mut r, &member("adam", Role::Admin), "not now", T0).unwrap();
        assert_eq!(r.state_at(T0), RequestState::Denied);
        assert!(approve(&mut r, &member("zed", Role::Admin), Role::Viewer, None, T0).is_err());
    }

    #[test]
    fn pending_requests_expire_by_the_clock() {
        let mut r = open(1);
        let ttl = Policy::default().pending_ttl_secs;
        assert_eq!(r.state_at(T0.plus(ttl - 1)), RequestState::Pending);
        assert_eq!(r.state_at(T0.plus(ttl)), RequestState::Expired);
        let late = approve(
            &mut r,
            &member("olga", Role::Owner),
            Role::Viewer,
            None,
            T0.plus(ttl),
        );
        assert!(matches!(late, Err(Error::InvalidState(_))));
        assert!(cancel(&mut r, &"alice".parse().unwrap(), T0.plus(ttl)).is_err());
    }

    #[test]
    fn only_the_requester_cancels_and_only_while_pending() {
        let mut r = open(1);
        assert!(cancel(&mut r, &"bob".parse().unwrap(), T0).is_err());
        cancel(&mut r, &"alice".parse().unwrap(), T0).unwrap();
        assert_eq!(r.state_at(T0), RequestState::Cancelled);
        assert!(cancel(&mut r, &"alice".parse().unwrap(), T0).is_err());
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
        h.logins.remove(&GrantRole::Editor);
        let p = Policy::default();
        let mut r = p
            .open(
                1,
                &member("ed", Role::Editor),
                &h,
                &ask(GrantRole::Viewer, 600),
                T0,
            )
            .unwrap();
        approve(&mut r, &member("olga", Role::Owner), Role::Editor, None, T0).unwrap();
        let g = r.grant().unwrap();
        assert_eq!(
            (g.effective_role, g.login.as_str()),
            (GrantRole::Viewer, "readonly")
        );
    }

    #[test]
    fn certificates_only_for_the_requester_inside_the_window() {
        let mut r = open(1);
        let alice: Name = "alice".parse().unwrap();
        assert!(authorize_cert(&r, &alice, T0).is_err());
        approve(&mut r, &member("olga", Role::Owner), Role::Viewer, None, T0).unwrap();
        assert!(authorize_cert(&r, &"bob".parse().unwrap(), T0).is_err());
        assert!(authorize_cert(&r, &alice, T0).is_ok());
        assert!(authorize_cert(&r, &alice, T0.plus(7199)).is_ok());
        assert!(matches!(
            authorize_cert(&r, &alice, T0.plus(7200)),
            Err(Error::GrantNotCurrent(_))
        ));
    }

    #[test]
    fn production_editor_requests_are_flagged() {
        let r = Policy::default()
            .open(
                1,
                &member("alice", Role::Viewer),
                &host(1, &["prod"]),
                &ask(GrantRole::Editor, 7200),
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
}
