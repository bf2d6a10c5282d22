//! The access flow: request, decide (approve, deny, cancel), read, and sign certificates.

use serde_json::json;

use super::{Broker, Call, Reply, require_manager};
use crate::audit::AuditEvent;
use crate::ca;
use crate::commands::RequestArgs;
use crate::error::{Error, Result};
use crate::model::{
    GrantRole, Member, Name, Request, RequestState, Timestamp, format_duration, parse_duration,
};
use crate::policy::{self, Approved, Ask};
use crate::store::CertRecord;
use crate::views;

impl Broker {
    pub(super) fn request(&self, actor: &Member, a: &RequestArgs, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        let host_name: Name = a.host.parse()?;
        let role: GrantRole = a.role.parse()?;
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
        };
        let approvers = self.approvers_other_than(&actor.name)?;
        let req = self.apply(cx, actor.name.as_str(), |tx| {
            let host = tx
                .host(&host_name)?
                .ok_or_else(|| unknown_host(&host_name))?;
            if (approvers.len() as u32) < host.approvals_required {
                return Err(Error::InvalidState(format!(
                    "{} needs {} approvals but only {} owner(s) or admin(s) other than you can approve; ask an owner to add approvers",
                    host.name,
                    host.approvals_required,
                    approvers.len()
                ))
                .into());
            }
            let id = tx.next_request_id()?;
            let req = self.policy.open(id, actor, &host, &ask, now)?;
            tx.put_request(&req)?;
            let event = AuditEvent::RequestCreated {
                id,
                requester: req.requester.to_string(),
                resource: req.resource.to_string(),
                role: req.role,
                duration_secs: req.duration_secs,
                reason: req.reason.clone(),
                requested_start: req.requested_start,
                pending_until: req.pending_until,
                justification_flags: req.justification.flags.clone(),
            };
            Ok((req, vec![event]))
        })?;
        tracing::info!(id = req.id, requester = %req.requester, host = %req.resource, role = %req.role, "request created");
        let mut json = views::request_json(&req, now);
        json["approvers"] = json!(approvers);
        let text = format!(
            "{}\ncan approve: {}\nwait for approval, then fetch a certificate with: cert {} < KEY.pub\n",
            views::request_text(&req, now),
            if approvers.is_empty() {
                "nobody yet (add another owner or admin)".to_string()
            } else {
                approvers.join(", ")
            },
            req.id
        );
        Ok(Reply::new(json, text))
    }

    /// Owners and admins other than `requester`: who can approve their requests.
    fn approvers_other_than(&self, requester: &Name) -> Result<Vec<String>> {
        Ok(self
            .store
            .members()?
            .into_iter()
            .filter(|m| m.role.can_manage() && &m.name != requester)
            .map(|m| m.name.to_string())
            .collect())
    }

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
            None => self.store.requests_of(&actor.name, limit)?,
        };
        let json = reqs.iter().map(|r| views::request_json(r, now)).collect();
        let text = match id {
            Some(_) => reqs.iter().map(|r| views::request_text(r, now)).collect(),
            None => views::requests_table(&reqs, now),
        };
        Ok(Reply::new(json, text))
    }

    pub(super) fn show(&self, actor: &Member, id: u64, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        let r = self.visible_request(actor, id)?;
        let mut json = views::request_json(&r, now);
        let certs = self.store.certs_of(id)?;
        json["certificates"] = json!(certs
            .iter()
            .map(|c| json!({"serial": c.serial, "key_id": c.key_id, "key_fingerprint": c.key_fingerprint, "issued_at": c.issued_at}))
            .collect::<Vec<_>>());
        if r.state_at(now) == RequestState::Pending
            && let Some(m) = self.store.member(&r.requester)?
        {
            let (role, login) = policy::grant_shape(&r, m.role)?;
            let start = r.requested_start.map_or(now, |s| s.max(now));
            json["would_grant"] = json!({
                "effective_role": role,
                "login": login,
                "principals": [ca::principal(&login, r.resource.as_str())],
                "start_if_approved_now": start,
                "end_if_approved_now": start.plus(r.duration_secs),
            });
        }
        let mut text = views::request_text(&r, now);
        for c in &certs {
            text.push_str(&format!(
                "  certificate    serial {} for {} issued {}\n",
                c.serial, c.key_fingerprint, c.issued_at
            ));
        }
        Ok(Reply::new(json, text))
    }

    /// A request the actor may read: their own, or any for approvers.
    fn visible_request(&self, actor: &Member, id: u64) -> Result<Request> {
        let r = self.store.request(id)?.ok_or_else(|| unknown_request(id))?;
        if r.requester != actor.name && !actor.role.can_manage() {
            return Err(unknown_request(id));
        }
        Ok(r)
    }

    pub(super) fn requests(
        &self,
        actor: &Member,
        state: Option<&str>,
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
        let state: Option<RequestState> = state.map(str::parse).transpose()?;
        let reqs = self.store.requests_in(state, now, limit)?;
        let json = reqs.iter().map(|r| views::request_json(r, now)).collect();
        Ok(Reply::new(json, views::requests_table(&reqs, now)))
    }

    pub(super) fn cancel(&self, actor: &Member, id: u64, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        let req = self.apply(cx, actor.name.as_str(), |tx| {
            let mut req = tx.request(id)?.ok_or_else(|| unknown_request(id))?;
            policy::cancel(&mut req, &actor.name, now)?;
            tx.put_request(&req)?;
            let event = AuditEvent::RequestCancelled {
                id,
                by: actor.name.to_string(),
            };
            Ok((req, vec![event]))
        })?;
        tracing::info!(id, by = %actor.name, "request cancelled");
        let text = format!("request {id} cancelled\n");
        Ok(Reply::new(views::request_json(&req, now), text))
    }

    pub(super) fn approve(
        &self,
        actor: &Member,
        id: u64,
        comment: Option<&str>,
        cx: &Call,
    ) -> Result<Reply> {
        let now = cx.now;
        let (req, outcome) = self.apply(cx, actor.name.as_str(), |tx| {
            let mut req = tx.request(id)?.ok_or_else(|| unknown_request(id))?;
            let requester = tx.member(&req.requester)?.ok_or_else(|| {
                Error::InvalidState(format!(
                    "{} is no longer a member, so request {id} cannot be approved; deny it",
                    req.requester
                ))
            })?;
            let outcome = policy::approve(&mut req, actor, requester.role, comment, now)?;
            if tx.host(&req.resource)?.is_none() {
                return Err(Error::InvalidState(format!(
                    "host {} was removed, so request {id} cannot be approved; deny it",
                    req.resource
                ))
                .into());
            }
            tx.put_request(&req)?;
            let mut events = vec![AuditEvent::RequestApproved {
                id,
                by: actor.name.to_string(),
                comment: comment.map(str::to_string),
                approvals: req.approvals.len() as u32,
                approvals_required: req.approvals_required,
            }];
            if let Approved::Granted(g) = &outcome {
                events.push(AuditEvent::GrantStarted {
                    id,
                    start: g.start,
                    end: g.end,
                    effective_role: g.effective_role,
                    login: g.login.clone(),
                });
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
                "request {id} approved: {} may log in to {} as {} from {} to {} ({})\n",
                req.requester,
                req.resource,
                g.login,
                g.start,
                g.end,
                format_duration(g.start.until(g.end) as u64)
            ),
        };
        Ok(Reply::new(views::request_json(&req, now), text))
    }

    pub(super) fn deny(&self, actor: &Member, id: u64, reason: &str, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        let req = self.apply(cx, actor.name.as_str(), |tx| {
            let mut req = tx.request(id)?.ok_or_else(|| unknown_request(id))?;
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
        Ok(Reply::new(
            views::request_json(&req, now),
            format!("request {id} denied\n"),
        ))
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
        let (cert, record, host, login) = self.apply(cx, actor.name.as_str(), |tx| {
            let req = tx.request(id)?.ok_or_else(|| unknown_request(id))?;
            let grant = policy::authorize_cert(&req, &actor.name, now)?;
            let host = tx.host(&req.resource)?.ok_or_else(|| {
                Error::NotFound(format!(
                    "host {} was removed; no certificates are issued for it",
                    req.resource
                ))
            })?;
            let serial = tx.next_serial()?;
            let profile = ca::profile(&req, grant, serial);
            let cert = self.ca.sign(key.key_data(), &profile)?;
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
            };
            tx.put_cert(&record)?;
            let event = AuditEvent::CertificateIssued {
                id,
                serial,
                key_id: record.key_id.clone(),
                principals: record.principals.clone(),
                valid_after: record.valid_after,
                valid_before: record.valid_before,
                key_fingerprint: key_fingerprint.clone(),
            };
            Ok(((cert, record, host, grant.login.clone()), vec![event]))
        })?;
        tracing::info!(id, serial = record.serial, key_id = %record.key_id, "certificate issued");
        let line = cert
            .to_openssh()
            .map_err(|e| Error::Internal(format!("cannot encode a certificate: {e}")))?;
        let json = json!({
            "certificate": line,
            "serial": record.serial,
            "key_id": record.key_id,
            "principals": record.principals,
            "valid_after": record.valid_after,
            "valid_before": record.valid_before,
            "login": login,
            "seconds_left": now.until(record.valid_before).max(0),
            "host": {"name": host.name, "address": host.address, "port": host.port},
        });
        Ok(Reply::new(json, format!("{line}\n")))
    }
}

fn unknown_request(id: u64) -> Error {
    Error::NotFound(format!(
        "no request {id} that you can see; 'status' lists yours"
    ))
}

fn unknown_host(name: &Name) -> Error {
    Error::NotFound(format!(
        "no host named {name}; 'host list' shows the hosts you can request"
    ))
}
