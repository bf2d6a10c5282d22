//! The access rules, pure: given a request, the people involved and the time, what is allowed.
//!
//! Nothing here does I/O or reads the clock; `now` is always an argument. What a target
//! grants (its scope) is decided in [`scope`].

mod decide;
mod risk;
mod rules;
mod scope;
mod team;
#[cfg(test)]
mod tests;

pub use decide::{approve, cancel, deny, review};
pub use risk::{DENIALS_WINDOW_SECS, History};
pub use rules::{Candidate, check as rule_check};
pub use scope::{Resolved, check_role, resolve};
pub use team::{
    Closed, TeamChange, check_removal, check_team_change, close_for_removal, may_read,
    require_manager,
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::justify;
use crate::justify::llm::Written;
use crate::model::{
    Decision, Grant, GrantRole, JustificationSource, Member, OpenEntry, Request, Role, Timestamp,
    format_duration, is_hidden_char,
};
use crate::rule::Rule;
use crate::target::Found;
use crate::verdict::{MemberKind, RuleApproval};

use decide::grant_for;

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
    /// A model's text for the justification, if one wrote it (the flags stay the broker's).
    pub written: Option<&'a Written>,
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
        let mut justification = justify::deterministic(requester, found, &preview, ask);
        if let Some(w) = a.written {
            justification.text = w.text.clone();
            justification.source = JustificationSource::Model;
            justification.model = Some(w.model.clone());
        }
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

/// Checks a human-written reason or comment: present, short enough, one line of plain text
/// with nothing hidden (no controls, separators or invisible format characters).
pub(crate) fn check_text(what: &str, text: &str) -> Result<()> {
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
