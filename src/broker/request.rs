//! `request`: a new request weighed against its target, the requester's history and the
//! rules, and granted at once when a rule approves it or it is a break-glass; and `review`,
//! the owner's or admin's look at a break-glass grant afterwards.

use super::targets::find;
use super::{Broker, Call, Reply, require_manager};
use crate::audit::AuditEvent;
use crate::commands::RequestArgs;
use crate::error::{Error, Result};
use crate::justify::llm::Prompt;
use crate::model::{GrantRole, Member, Name, Timestamp, format_duration, parse_duration};
use crate::policy::{self, Ask, Asking, DENIALS_WINDOW_SECS, History};
use crate::verdict::ReviewVerdict;
use crate::views;

impl Broker {
    pub(super) fn request(&self, actor: &Member, a: &RequestArgs, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        let name: Name = a.target.parse()?;
        let role = a.role.as_deref().map(str::parse::<GrantRole>).transpose()?;
        let duration_secs = parse_duration(&a.duration)?;
        let start = a
            .start
            .as_deref()
            .map(|s| Timestamp::parse_start(s, now))
            .transpose()?;
        let ask = Ask {
            role,
            duration_secs,
            reason: &a.reason,
            start,
            break_glass: a.break_glass,
        };
        if self.store.kind_of(&name)?.is_none() {
            return Err(self.unknown_target(&name, None)?);
        }
        // Read before the transaction (it cannot scan); rules are read again inside it, so
        // their use counts are exact.
        let candidates = self.hosts_for(&name)?;
        let approvers = self.approvers_other_than(actor)?;
        let history = self.history_of(actor, now)?;
        let rule_names: Vec<Name> = self.store.rules()?.into_iter().map(|r| r.name).collect();
        let rate = self.policy.request_rate;
        let req = self.metered(actor, "request", rate, now, || {
            self.apply(cx, actor, |tx| {
                let found = find(tx, &name, &candidates)?
                    .ok_or_else(|| Error::NotFound(format!("{name} was just removed")))?;
                let open = tx.open_of(actor.id)?;
                let mut rules = Vec::new();
                for n in &rule_names {
                    rules.extend(tx.rule(n)?);
                }
                let id = tx.next_request_id()?;
                let asking = Asking {
                    requester: actor,
                    found: &found,
                    ask: &ask,
                    open: &open,
                    approvers: approvers.len(),
                    history: &history,
                    rules: &rules,
                    written: cx.written.as_ref(),
                };
                let req = self.policy.open(id, &asking, now)?;
                tx.put_request(&req)?;
                let mut events = vec![AuditEvent::RequestCreated {
                    id,
                    requester: req.requester.to_string(),
                    kind: req.kind,
                    resource: req.resource.to_string(),
                    role: req.role,
                    risk: req.risk.score,
                    duration_secs: req.duration_secs,
                    reason: req.reason.clone(),
                    requested_start: req.requested_start,
                    pending_until: req.pending_until,
                    justification_flags: req.justification.flags.clone(),
                }];
                if let Some(due) = req.review_due {
                    events.push(AuditEvent::BreakGlass {
                        id,
                        requester: req.requester.to_string(),
                        resource: req.resource.to_string(),
                        reason: req.reason.clone(),
                        review_due: due,
                        risk: req.risk.score,
                    });
                }
                if let Some(by) = &req.approved_by_rule {
                    let mut rule = rules
                        .into_iter()
                        .find(|r| r.name == by.rule)
                        .ok_or_else(|| Error::Internal("the approving rule is gone".into()))?;
                    rule.record_use(now);
                    tx.put_rule(&rule)?;
                    events.push(AuditEvent::RequestApproved {
                        id,
                        by: format!("rule:{}", by.rule),
                        matched: by.matched.clone(),
                        comment: None,
                        approvals: 1,
                        approvals_required: req.approvals_required,
                    });
                }
                if let Some(g) = req.grant() {
                    events.push(AuditEvent::grant_started(id, g));
                }
                Ok((req, events))
            })
        })?;
        tracing::info!(id = req.id, requester = %req.requester, target = %req.resource, role = views::role_label(&req), risk = req.risk.score, break_glass = req.break_glass, "request created");
        let mut view = views::request_view(&req, now);
        view.approvers = Some(approvers.iter().map(|m| m.name.clone()).collect());
        let next = match (&req.approved_by_rule, req.review_due, req.grant()) {
            (_, Some(due), Some(g)) => format!(
                "BREAK-GLASS: granted now, until {}, without approvers. An owner or admin must review it by {due}.\nfetch a certificate with: cert {} < KEY.pub\n",
                g.end, req.id
            ),
            (Some(by), _, Some(g)) => format!(
                "approved by rule {} ({}); the window is {} to {}\nfetch a certificate with: cert {} < KEY.pub\n",
                by.rule,
                by.matched.join(", "),
                g.start,
                g.end,
                req.id
            ),
            _ => {
                let names: Vec<&str> = approvers.iter().map(|m| m.name.as_str()).collect();
                format!(
                    "can approve: {}\nwait for approval, then fetch a certificate with: cert {} < KEY.pub\n",
                    if names.is_empty() {
                        "nobody yet (add another owner or admin)".to_string()
                    } else {
                        names.join(", ")
                    },
                    req.id
                )
            }
        };
        Reply::of(&view, format!("{}{next}", views::request_text(&req, now)))
    }

    /// Owners and admins other than `requester`: who can approve their requests.
    /// What a model is told about a `request` by the key `fingerprint`, read before the
    /// request runs (and outside any transaction): None when there is no model, the request
    /// would be refused anyway (unknown key or target, rate limit), or nothing can be said.
    pub fn model_prompt(
        &self,
        fingerprint: &str,
        a: &RequestArgs,
        now: Timestamp,
    ) -> Option<Prompt> {
        self.model.as_ref()?;
        let actor = self.member_for_key(fingerprint).ok()??;
        if !self.rate_allows(&actor, "request", self.policy.request_rate, now) {
            return None;
        }
        let name: Name = a.target.parse().ok()?;
        let role = a
            .role
            .as_deref()
            .map(str::parse::<GrantRole>)
            .transpose()
            .ok()?;
        let ask = Ask {
            role,
            duration_secs: parse_duration(&a.duration).ok()?,
            reason: &a.reason,
            start: a
                .start
                .as_deref()
                .map(|s| Timestamp::parse_start(s, now))
                .transpose()
                .ok()?,
            break_glass: a.break_glass,
        };
        let found = find(&self.store, &name, &self.hosts_for(&name).ok()?).ok()??;
        let preview = policy::resolve(&found, role, actor.role).ok()?;
        let j = crate::justify::deterministic(&actor, &found, &preview, &ask);
        Some(Prompt {
            facts: j.text,
            flags: j.flags,
            reason: a.reason.trim().to_string(),
        })
    }

    fn approvers_other_than(&self, requester: &Member) -> Result<Vec<Member>> {
        Ok(self
            .store
            .members()?
            .into_iter()
            .filter(|m| m.role.can_manage() && m.id != requester.id)
            .collect())
    }

    /// What `m` did lately: denials in the last 30 days (counted up to 200, from the denials
    /// index) and break-glass grants waiting for review.
    fn history_of(&self, m: &Member, now: Timestamp) -> Result<History> {
        let reviews = self.store.reviews_of(m.id, now)?;
        let since = Timestamp::from_unix(now.unix() - DENIALS_WINDOW_SECS);
        Ok(History {
            recent_denials: self.store.denials_of(m.id, since, 200)?,
            unreviewed_break_glass: reviews.len() as u32,
            overdue_break_glass: reviews
                .iter()
                .filter(|(_, overdue)| *overdue)
                .map(|(id, _)| *id)
                .collect(),
        })
    }

    pub(super) fn review(
        &self,
        actor: &Member,
        id: u64,
        verdict: ReviewVerdict,
        comment: &str,
        cx: &Call,
    ) -> Result<Reply> {
        let now = cx.now;
        require_manager(actor, "review break-glass grants")?;
        let req = self.apply(cx, actor, |tx| {
            let mut req = tx
                .request(id)?
                .ok_or_else(|| Error::NotFound(format!("there is no request {id}")))?;
            let requester = tx.member(&req.requester)?;
            policy::review(&mut req, actor, requester.as_ref(), verdict, comment, now)?;
            tx.put_request(&req)?;
            let r = req
                .review
                .clone()
                .ok_or_else(|| Error::Internal("a review was not recorded".into()))?;
            let event = AuditEvent::BreakGlassReviewed {
                id,
                by: actor.name.to_string(),
                verdict: r.verdict,
                comment: r.comment,
                late: r.late,
            };
            Ok((req, vec![event]))
        })?;
        tracing::info!(id, by = %actor.name, %verdict, "break-glass reviewed");
        let late = match req.review_due {
            Some(due) if now >= due => format!(
                " ({} after it was due)",
                format_duration(due.until(now) as u64)
            ),
            _ => String::new(),
        };
        Reply::of(
            &views::request_view(&req, now),
            format!("break-glass grant {id} reviewed: {verdict}{late}\n"),
        )
    }
}
