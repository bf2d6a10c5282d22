//! Finding any target by name, the one place a name becomes a [`Found`] (the target with the
//! hosts it covers now), and what adding and removing a fleet or command share. The `fleet`
//! and `command` commands themselves are in `fleets.rs`.

use super::members::{close_open, closed_note};
use super::{Broker, Call, Reply};
use crate::audit::AuditEvent;
use crate::commands::TargetOptions;
use crate::error::{Error, Result};
use crate::model::{Host, IdentityId, Member, Name};
use crate::store::Lookup;
use crate::target::{Fleet, Found, Target, TargetKind};

use super::hosts::MAX_APPROVALS;

/// Finds the target called `name` through `l` (the store, or a transaction): a host, a fleet
/// with the hosts that carry all its tags, or a command with the hosts of its fleet or host.
///
/// `candidates` are the hosts as read before (a transaction cannot scan): a fleet's hosts are
/// those among them that carry its tags and are still there, read again through `l`, so a
/// host removed in between is not in it.
pub(super) fn find<L: Lookup>(
    l: &L,
    name: &Name,
    candidates: &[Host],
) -> std::result::Result<Option<Found>, L::Err> {
    if let Some(h) = l.host(name)? {
        return Ok(Some(Found::host(&h)));
    }
    let c = match l.target(name)? {
        None => return Ok(None),
        Some(Target::Fleet(f)) => return Ok(Some(fleet_found(l, &f, candidates)?)),
        Some(Target::Command(c)) => c,
    };
    let on = match c.on_kind {
        TargetKind::Host => match l.host(&c.on)? {
            Some(h) if h.id == c.on_id => Some(Found::host(&h)),
            _ => None,
        },
        _ => match l.target(&c.on)? {
            Some(Target::Fleet(f)) if f.id == c.on_id => Some(fleet_found(l, &f, candidates)?),
            _ => None,
        },
    };
    let (hosts, approvals, max_hosts, why_empty) = match on {
        Some(f) => (f.hosts, f.approvals_required, f.max_hosts, f.why_empty),
        None => (
            vec![],
            1,
            1,
            format!(
                "its {} {} was removed; remove the command, or add it again on a {} that is there",
                c.on_kind, c.on, c.on_kind
            ),
        ),
    };
    Ok(Some(Found {
        kind: TargetKind::Command,
        name: c.name.clone(),
        id: c.id,
        approvals_required: c.approvals_required.max(approvals),
        max_hosts,
        hosts,
        command: Some((c.run.clone(), c.login.clone())),
        why_empty,
        break_glass: c.break_glass,
        escalate_after_secs: c.escalate_after_secs,
    }))
}

pub(super) fn fleet_found<L: Lookup>(
    l: &L,
    f: &Fleet,
    candidates: &[Host],
) -> std::result::Result<Found, L::Err> {
    let mut hosts = Vec::new();
    for c in candidates.iter().filter(|h| f.covers(h)) {
        if let Some(h) = l.host(&c.name)?.filter(|h| h.id == c.id) {
            hosts.push(h);
        }
    }
    Ok(Found {
        kind: TargetKind::Fleet,
        name: f.name.clone(),
        id: f.id,
        approvals_required: f.approvals_required,
        max_hosts: f.max_hosts,
        hosts,
        command: None,
        why_empty: format!(
            "no host carries all of {}; tag hosts to match it, or ask for a host by name",
            f.selector()
        ),
        break_glass: f.break_glass,
        escalate_after_secs: f.escalate_after_secs,
    })
}

impl Broker {
    /// The hosts `find` may need for `name`, read now: all of them for a fleet or command,
    /// none for a host (or an unknown name).
    pub(super) fn hosts_for(&self, name: &Name) -> Result<Vec<Host>> {
        match self.store.kind_of(name)? {
            Some(TargetKind::Fleet | TargetKind::Command) => self.store.hosts(),
            _ => Ok(vec![]),
        }
    }

    /// The target called `name` as it is now.
    pub(super) fn find_now(&self, name: &Name) -> Result<Option<Found>> {
        find(&self.store, name, &self.hosts_for(name)?)
    }

    /// The error for a name that is not there (`kind`: one kind, or `None` for any target),
    /// with the closest name and the names of that kind there are.
    pub(super) fn unknown_target(&self, name: &Name, kind: Option<TargetKind>) -> Result<Error> {
        let mut known: Vec<String> = Vec::new();
        if kind.is_none_or(|k| k == TargetKind::Host) {
            known.extend(self.store.hosts()?.into_iter().map(|h| h.name.to_string()));
        }
        known.extend(
            self.store
                .targets()?
                .iter()
                .filter(|t| kind.is_none_or(|k| k == t.kind()))
                .map(|t| t.name().to_string()),
        );
        known.sort();
        Ok(Error::UnknownTarget {
            what: kind.map_or("host, fleet or command", TargetKind::as_str),
            name: name.to_string(),
            did_you_mean: crate::model::closest(name.as_str(), known.iter().map(String::as_str))
                .map(str::to_string),
            known,
        })
    }

    /// The fleet or command called `name` for `verb` (`show`, `remove`), or the error for a
    /// name of another kind, which says the command to use instead.
    pub(super) fn named(&self, name: &str, kind: TargetKind, verb: &str) -> Result<(Name, Target)> {
        let name: Name = name.parse()?;
        if let Some(t) = self.store.target(&name)?
            && t.kind() == kind
        {
            return Ok((name, t));
        }
        match self.store.kind_of(&name)? {
            Some(other) => {
                let instead = match (other, verb) {
                    (TargetKind::Host, "show") => "host list".to_string(),
                    (other, verb) => format!("{other} {verb} {name}"),
                };
                Err(Error::NotFound(format!(
                    "{name} is a {other}, not a {kind}; use '{instead}'"
                )))
            }
            None => Err(self.unknown_target(&name, Some(kind))?),
        }
    }

    /// The names of the hosts `found` covers now.
    pub(super) fn host_names(found: Option<Found>) -> Vec<Name> {
        found
            .map(|f| f.hosts.into_iter().map(|h| h.name).collect())
            .unwrap_or_default()
    }

    /// Adds a fleet or command under a name no target has.
    pub(super) fn add_target(&self, actor: &Member, t: Target, cx: &Call) -> Result<Target> {
        let added = self.apply(cx, actor, |tx| {
            if let Some(kind) = tx.kind_of(t.name())? {
                return Err(Error::NameTaken {
                    name: t.name().to_string(),
                    kind,
                }
                .into());
            }
            let t = tx.add_target(&t)?;
            let event = match &t {
                Target::Fleet(f) => AuditEvent::FleetAdded {
                    name: f.name.to_string(),
                    tags: f.tags.iter().map(Name::to_string).collect(),
                    approvals_required: f.approvals_required,
                    max_hosts: f.max_hosts,
                    break_glass: f.break_glass,
                    escalate_after_secs: f.escalate_after_secs,
                },
                Target::Command(c) => AuditEvent::CommandAdded {
                    name: c.name.to_string(),
                    on: format!("{} {}", c.on_kind, c.on),
                    run: c.run.clone(),
                    login: c.login.clone(),
                    approvals_required: c.approvals_required,
                    break_glass: c.break_glass,
                    escalate_after_secs: c.escalate_after_secs,
                },
            };
            Ok((t, vec![event]))
        })?;
        tracing::info!(kind = %added.kind(), name = %added.name(), by = %actor.name, "target added");
        Ok(added)
    }

    /// Removes a fleet or command: removal is final, so what is open on it is closed.
    pub(super) fn remove_target(
        &self,
        actor: &Member,
        name: &Name,
        kind: TargetKind,
        cx: &Call,
    ) -> Result<Reply> {
        let now = cx.now;
        let Some(before) = self.store.target(name)? else {
            return Err(Error::NotFound(format!("there is no {kind} named {name}")));
        };
        // What is open on it, found outside the transaction; each is checked again inside.
        let open = self.store.open_requests_of(before.id(), now)?;
        let closed = self.apply(cx, actor, |tx| {
            let t = tx
                .target(name)?
                .filter(|t| t.kind() == kind)
                .ok_or_else(|| Error::NotFound(format!("there is no {kind} named {name}")))?;
            let why = format!("{kind} {name} was removed");
            let mut events = vec![match kind {
                TargetKind::Fleet => AuditEvent::FleetRemoved {
                    name: name.to_string(),
                },
                _ => AuditEvent::CommandRemoved {
                    name: name.to_string(),
                },
            }];
            let ids: &[u64] = if t.id() == before.id() { &open } else { &[] };
            let closed = close_open(tx, t.id(), ids, actor, &why, now, &mut events)?;
            tx.remove_target(name)?;
            Ok((closed, events))
        })?;
        tracing::info!(%kind, %name, by = %actor.name, "target removed");
        Reply::of(
            &serde_json::json!({"removed": name, "kind": kind}),
            format!("removed {kind} {name}; {}", closed_note(closed)),
        )
    }

    /// The identities of the fleet commands that run on `host` alone (not through a fleet):
    /// removing the host closes what is open on them.
    pub(super) fn commands_on_host(&self, host: &Host) -> Result<Vec<IdentityId>> {
        Ok(self
            .store
            .targets()?
            .into_iter()
            .filter_map(|t| match t {
                Target::Command(c) if c.on_kind == TargetKind::Host && c.on_id == host.id => {
                    Some(c.id)
                }
                _ => None,
            })
            .collect())
    }

    /// The logins of the fleet commands that run on `host` now: its principals files need them.
    pub(super) fn command_logins(&self, host: &Host) -> Result<Vec<String>> {
        let mut logins = Vec::new();
        for t in self.store.targets()? {
            if let Target::Command(c) = t
                && find(&self.store, &c.name, std::slice::from_ref(host))?
                    .is_some_and(|f| f.hosts.iter().any(|h| h.id == host.id))
            {
                logins.push(c.login);
            }
        }
        Ok(logins)
    }
}

/// `web-01, web-02`, or `none`.
pub(super) fn hosts_now(hosts: &[Name]) -> String {
    if hosts.is_empty() {
        return "none".into();
    }
    hosts
        .iter()
        .map(Name::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The shortest and longest `--escalate-after`.
const ESCALATE_RANGE: std::ops::RangeInclusive<u64> = 60..=7 * 86400;

/// `--break-glass` and `--escalate-after`, checked.
pub(super) fn target_options(o: &TargetOptions) -> Result<(bool, Option<u64>)> {
    let escalate = match &o.escalate_after {
        Some(d) => {
            let secs = crate::model::parse_duration(d)?;
            if !ESCALATE_RANGE.contains(&secs) {
                return Err(Error::invalid(format!(
                    "--escalate-after {} is out of range; use 1m to 7d",
                    crate::model::printable(d, 20)
                )));
            }
            Some(secs)
        }
        None => None,
    };
    Ok((o.break_glass, escalate))
}

/// Checks `--approvals` for any target.
pub(super) fn check_approvals(n: u32) -> Result<()> {
    if (1..=MAX_APPROVALS).contains(&n) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "--approvals {n} is out of range; use 1 to {MAX_APPROVALS}"
        )))
    }
}
