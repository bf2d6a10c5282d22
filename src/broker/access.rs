//! The access flow: request, decide (approve, deny, cancel), read, and sign certificates.

use std::collections::BTreeSet;

use super::targets::find;
use super::{Broker, Call, Reply, require_manager};
use crate::audit::AuditEvent;
use crate::ca;
use crate::contract::{CertSummary, CertView, HostAddress, WouldGrant};
use crate::error::{Error, Result};
use crate::model::{Member, Request, RequestState, format_duration};
use crate::policy::{self, Approved};
use crate::store::CertRecord;
use crate::target::{ScopeHost, TargetKind};
use crate::views;

impl Broker {
    pub(super) fn status(
        &self,
        actor: &Member,
        id: Option<u64>,
        limit: usize,
        cx: &Call,
    ) -> Result<Reply> {
        let now = cx.now;
        if limit == 0 {
            return Err(Error::invalid("--limit must be at least 1"));
        }
        let reqs = match id {
            Some(id) => vec![self.visible_request(actor, id)?],
            None => self.store.requests_of(actor.id, limit)?,
        };
        let views: Vec<_> = reqs.iter().map(|r| views::request_view(r, now)).collect();
        let text = match id {
            Some(_) => reqs.iter().map(|r| views::request_text(r, now)).collect(),
            None => views::requests_table(&reqs, now),
        };
        Reply::of(&views, text)
    }

    pub(super) fn show(&self, actor: &Member, id: u64, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        let r = self.visible_request(actor, id)?;
        let mut view = views::request_view(&r, now);
        let certs = self.store.certs_of(id)?;
        view.certificates = Some(
            certs
                .iter()
                .map(|c| CertSummary {
                    serial: c.serial,
                    key_id: c.key_id.clone(),
                    key_fingerprint: c.key_fingerprint.clone(),
                    issued_at: c.issued_at,
                })
                .collect(),
        );
        let mut would = String::new();
        if r.state_at(now) == RequestState::Pending
            && let Some(m) = self.store.member(&r.requester)?
            && m.id == r.requester_id
        {
            let found = self
                .find_now(&r.resource)?
                .filter(|f| f.id == r.resource_id);
            match found.map(|f| policy::resolve(&f, r.role, m.role)) {
                Some(Ok(res)) => {
                    let start = r.requested_start.map_or(now, |s| s.max(now));
                    would = format!(
                        "if approved now ({} approval(s) needed):\n{}",
                        res.approvals_required,
                        views::scope_text(&res.scope)
                    );
                    view.would_grant = Some(WouldGrant {
                        effective_role: res.effective_role,
                        login: res.scope.single_login(),
                        principals: res.scope.principals(),
                        hosts: res.scope.hosts.clone(),
                        command: res.scope.command.clone(),
                        left_out: res.scope.left_out.clone(),
                        approvals_required: res.approvals_required,
                        start_if_approved_now: start,
                        end_if_approved_now: start.plus(r.duration_secs),
                    });
                }
                Some(Err(e)) => would = format!("if approved now: it cannot be granted: {e}\n"),
                None => would = format!("if approved now: {} {} was removed\n", r.kind, r.resource),
            }
        }
        let mut text = views::request_text(&r, now);
        text.push_str(&would);
        for c in &certs {
            text.push_str(&format!(
                "  certificate    serial {} for {} issued {}\n",
                c.serial, c.key_fingerprint, c.issued_at
            ));
        }
        Reply::of(&view, text)
    }

    /// A request the actor may read: their own, or any for approvers.
    pub(super) fn visible_request(&self, actor: &Member, id: u64) -> Result<Request> {
        readable(self.store.request(id)?, id, actor)
    }

    pub(super) fn requests(
        &self,
        actor: &Member,
        state: Option<&str>,
        review: bool,
        limit: usize,
        cx: &Call,
    ) -> Result<Reply> {
        let now = cx.now;
        require_manager(
            actor,
            "list everyone's requests (use 'status' for your own)",
        )?;
        if limit == 0 {
            return Err(Error::invalid("--limit must be at least 1"));
        }
        let mut reqs = if review {
            self.store.reviews_waiting(limit)?
        } else {
            let state: Option<RequestState> = state.map(str::parse).transpose()?;
            self.store.requests_in(state, now, limit)?
        };
        // Escalated requests first: someone should have looked at them already.
        reqs.sort_by_key(|r| !r.escalated_at(now));
        let views: Vec<_> = reqs.iter().map(|r| views::request_view(r, now)).collect();
        Reply::of(&views, views::requests_table(&reqs, now))
    }

    pub(super) fn cancel(&self, actor: &Member, id: u64, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        let req = self.apply(cx, actor, |tx| {
            let mut req = readable(tx.request(id)?, id, actor)?;
            policy::cancel(&mut req, actor, now)?;
            tx.put_request(&req)?;
            let event = AuditEvent::RequestCancelled {
                id,
                by: actor.name.to_string(),
                reason: None,
            };
            Ok((req, vec![event]))
        })?;
        tracing::info!(id, by = %actor.name, "request cancelled");
        let text = format!("request {id} cancelled\n");
        Reply::of(&views::request_view(&req, now), text)
    }

    pub(super) fn approve(
        &self,
        actor: &Member,
        id: u64,
        comment: Option<&str>,
        cx: &Call,
    ) -> Result<Reply> {
        let now = cx.now;
        // Before the lookup: a member who cannot decide learns nothing of which requests exist.
        require_manager(actor, "approve requests")?;
        let candidates = match self.store.request(id)? {
            Some(r) => self.hosts_for(&r.resource)?,
            None => vec![],
        };
        let (req, outcome) = self.apply(cx, actor, |tx| {
            let mut req = tx.request(id)?.ok_or_else(|| unknown_request(id, actor))?;
            let requester = tx.member(&req.requester)?;
            let found = find(tx, &req.resource, &candidates)?;
            // Earlier approvers who are no longer owners or admins: theirs no longer count.
            let mut lapsed = Vec::new();
            for a in &req.approvals {
                let standing = tx
                    .member(&a.by)?
                    .is_some_and(|m| m.id == a.by_id && m.role.can_manage());
                if !standing {
                    lapsed.push(a.by_id);
                }
            }
            let outcome = policy::approve(
                &mut req,
                actor,
                requester.as_ref(),
                found.as_ref(),
                &lapsed,
                comment,
                now,
            )?;
            tx.put_request(&req)?;
            let mut events = vec![AuditEvent::RequestApproved {
                id,
                by: actor.name.to_string(),
                matched: vec![],
                comment: comment.map(str::to_string),
                approvals: req.approvals.len() as u32,
                approvals_required: req.approvals_required,
            }];
            if let Approved::Granted(g) = &outcome {
                events.push(AuditEvent::grant_started(id, g));
            }
            Ok(((req, outcome), events))
        })?;
        tracing::info!(id, by = %actor.name, "request approved");
        let text = match &outcome {
            Approved::Recorded { have, need } => {
                format!(
                    "approval recorded for request {id}: {have} of {need}; waiting for more approvers\n"
                )
            }
            Approved::Granted(g) => format!(
                "request {id} approved: {} may {} {} {} ({} host(s)) as {} from {} to {} ({})\n",
                req.requester,
                if g.scope.command.is_some() {
                    "run"
                } else {
                    "log in to"
                },
                req.kind,
                req.resource,
                g.scope.hosts.len(),
                g.scope.logins().join(","),
                g.start,
                g.end,
                format_duration(g.start.until(g.end) as u64)
            ),
        };
        Reply::of(&views::request_view(&req, now), text)
    }

    pub(super) fn deny(&self, actor: &Member, id: u64, reason: &str, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        require_manager(actor, "deny requests")?;
        let req = self.apply(cx, actor, |tx| {
            let mut req = tx.request(id)?.ok_or_else(|| unknown_request(id, actor))?;
            policy::deny(&mut req, actor, reason, now)?;
            tx.put_request(&req)?;
            let event = AuditEvent::RequestDenied {
                id,
                by: actor.name.to_string(),
                reason: reason.trim().to_string(),
            };
            Ok((req, vec![event]))
        })?;
        tracing::info!(id, by = %actor.name, "request denied");
        Reply::of(
            &views::request_view(&req, now),
            format!("request {id} denied\n"),
        )
    }

    pub(super) fn cert(&self, actor: &Member, id: u64, key_text: &str, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        if key_text.trim().is_empty() {
            return Err(Error::InvalidKey(format!(
                "no public key given; pass it with --key or on stdin: ssh BROKER cert {id} < KEY.pub"
            )));
        }
        let key = ca::parse_public_key(key_text)?;
        if self.ca.is_ca_key(key.key_data()) {
            return Err(Error::InvalidKey(
                "that is the CA's own key; certify a key of yours".into(),
            ));
        }
        let key_fingerprint = ca::fingerprint(key.key_data());
        let rate = self.policy.cert_rate;
        let (unsigned, record, req, hosts) = self.metered(actor, "cert", rate, now, || {
            self.apply(cx, actor, |tx| {
                if tx.key_owner(&key_fingerprint)?.is_some() {
                    return Err(Error::InvalidKey(
                        "that key is a member's identity key for the broker; certify a fresh key (sshjit login makes one)".into(),
                    )
                    .into());
                }
                let mut req = readable(tx.request(id)?, id, actor)?;
                // The scope's hosts that are still the hosts it was fixed with.
                let mut live = BTreeSet::new();
                for h in req.grant().map_or(&[][..], |g| &g.scope.hosts) {
                    if tx.host(&h.name)?.is_some_and(|now| now.id == h.id) {
                        live.insert(h.id);
                    }
                }
                let target_live = match req.kind {
                    TargetKind::Host => true,
                    _ => tx
                        .target(&req.resource)?
                        .is_some_and(|t| t.id() == req.resource_id),
                };
                let is_live = |h: Option<&ScopeHost>| h.map_or(target_live, |h| live.contains(&h.id));
                let (grant, hosts) = self.policy.authorize_cert(&req, actor, is_live, now)?;
                let hosts: Vec<ScopeHost> = hosts.into_iter().cloned().collect();
                let grant = grant.clone();
                let serial = tx.next_serial()?;
                let profile = ca::profile(&req, &grant, &hosts.iter().collect::<Vec<_>>(), serial);
                let unsigned = self.ca.prepare(key.key_data(), &profile)?;
                let record = CertRecord {
                    serial,
                    request_id: id,
                    member: actor.name.clone(),
                    key_id: profile.key_id.clone(),
                    principals: profile.principals.clone(),
                    valid_after: grant.start,
                    valid_before: grant.end,
                    key_fingerprint: key_fingerprint.clone(),
                    issued_at: now,
                    force_command: profile.force_command.clone(),
                };
                tx.put_cert(id, serial)?;
                if let crate::model::Decision::Approved { grant } = &mut req.decision {
                    grant.certificates += 1;
                    tx.count_certificate(id, grant.certificates)?;
                }
                let event = AuditEvent::CertificateIssued {
                    id,
                    serial,
                    key_id: record.key_id.clone(),
                    principals: record.principals.clone(),
                    valid_after: record.valid_after,
                    valid_before: record.valid_before,
                    key_fingerprint: key_fingerprint.clone(),
                    force_command: record.force_command.clone(),
                };
                Ok(((unsigned, record, req, hosts), vec![event]))
            })
        })?;
        // Signed once the change has committed: the record and the audit entry say all the
        // certificate says but its signature, and changes run one at a time, so none waits
        // on this one's signature. (Nothing is sent before the change is durable.)
        let cert = self.ca.finish(unsigned)?;
        tracing::info!(id, serial = record.serial, key_id = %record.key_id, "certificate issued");
        let line = cert
            .to_openssh()
            .map_err(|e| Error::Internal(format!("cannot encode a certificate: {e}")))?;
        let text = format!("{line}\n");
        let seq = record.serial;
        let ca_fingerprint = self.ca.fingerprint();
        // The JSON form carries the proof that the certificate's entry is in the log (the
        // serial is the entry's sequence number); it is built only when asked for, once the
        // entry is durable.
        Ok(Reply::proven(seq, text, move |log| {
            let scope = crate::target::Scope {
                hosts,
                command: record.force_command,
                left_out: vec![],
            };
            let view = CertView {
                certificate: line,
                serial: record.serial,
                key_id: record.key_id,
                principals: record.principals,
                valid_after: record.valid_after,
                valid_before: record.valid_before,
                target: req.resource,
                kind: req.kind,
                login: scope.single_login(),
                seconds_left: now.until(record.valid_before).max(0) as u64,
                host: match scope.hosts.as_slice() {
                    [h] => Some(HostAddress {
                        name: h.name.clone(),
                        address: h.address.clone(),
                        port: h.port,
                    }),
                    _ => None,
                },
                hosts: scope.hosts,
                command: scope.command,
                ca_fingerprint,
                log,
            };
            serde_json::to_value(&view)
                .map_err(|e| Error::Internal(format!("cannot encode an answer: {e}")))
        }))
    }
}

/// The request `found` under `id` if `actor` may read it; else, whether or not it exists,
/// the same error, so that a member learns nothing of others' requests (not even whose
/// they are) by asking for them.
fn readable(found: Option<Request>, id: u64, actor: &Member) -> Result<Request> {
    found
        .filter(|r| policy::may_read(r, actor))
        .ok_or_else(|| unknown_request(id, actor))
}

/// The error for a request `actor` cannot see: approvers see all, so for them it does not
/// exist; others are pointed at their own (`status` is a command of every client).
fn unknown_request(id: u64, actor: &Member) -> Error {
    if actor.role.can_manage() {
        Error::NotFound(format!("there is no request {id}"))
    } else {
        Error::NotFound(format!(
            "no request {id} that you can see; 'status' lists yours"
        ))
    }
}
