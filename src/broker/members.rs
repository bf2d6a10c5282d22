//! The team over SSH: `whoami` and the `member` commands, under rule 13 (owners are the
//! root of trust) and rule 14 (removal is final).

use super::{Broker, Call, Reply, require_manager};
use crate::audit::AuditEvent;
use crate::ca;
use crate::commands::MemberCommand;
use crate::contract::WhoamiView;
use crate::error::{Error, Result};
use crate::model::{IdentityId, Member, Name, Role, Timestamp};
use crate::policy::{self, Closed, TeamChange};
use crate::store::{Tx, TxResult};
use crate::verdict::MemberKind;
use crate::views;

impl Broker {
    pub(super) fn whoami(&self, actor: &Member) -> Result<Reply> {
        let view = WhoamiView {
            name: actor.name.clone(),
            role: actor.role,
            kind: actor.kind,
            can_approve: actor.role.can_manage() && actor.kind == MemberKind::Human,
            key_fingerprints: actor.key_fingerprints.clone(),
        };
        Reply::of(&view, format!("{} ({})", actor.name, actor.role))
    }

    pub(super) fn member(&self, actor: &Member, cmd: &MemberCommand, cx: &Call) -> Result<Reply> {
        match cmd {
            MemberCommand::List => {
                require_manager(actor, "list members")?;
                let ms = self.store.members()?;
                let views: Vec<_> = ms.iter().map(views::member_view).collect();
                Reply::of(&views, views::members_table(&ms))
            }
            MemberCommand::Add {
                name,
                role,
                kind,
                key,
            } => {
                let name: Name = name.parse()?;
                let role: Role = role.parse()?;
                let kind: MemberKind = kind.parse()?;
                policy::check_team_change(actor, TeamChange::Add { role, kind }, 0)?;
                let mut new =
                    ca::member_with_key(name, role, &key.join(" "), actor.name.as_str(), cx.now)?;
                new.kind = kind;
                new.key_added_by = vec![actor.id];
                let member = self.apply(cx, actor, |tx| {
                    if tx.member(&new.name)?.is_some() {
                        return Err(Error::AlreadyExists(format!(
                            "member {} already exists; use 'member set-role' or 'member key-add' to change them",
                            new.name
                        ))
                        .into());
                    }
                    for fp in &new.key_fingerprints {
                        refuse_taken_key(tx, fp)?;
                    }
                    let m = tx.add_member(&new)?;
                    Ok((m.clone(), vec![AuditEvent::member_added(&m)]))
                })?;
                tracing::info!(member = %member.name, role = %member.role, by = %actor.name, "member added");
                let text = match member.kind {
                    MemberKind::Bot => format!(
                        "added the bot {} as {}; its requests are decided by rules alone",
                        member.name, member.role
                    ),
                    MemberKind::Human => format!("added {} as {}", member.name, member.role),
                };
                Reply::of(&views::member_view(&member), text)
            }
            MemberCommand::SetRole { name, role } => {
                let name: Name = name.parse()?;
                let to: Role = role.parse()?;
                let (before, after) = self.change_member(actor, &name, cx, |tx, m| {
                    policy::check_team_change(
                        actor,
                        TeamChange::SetRole { target: m, to },
                        tx.owner_count()?,
                    )?;
                    if m.role == to {
                        return Err(Error::InvalidState(format!("{name} is already {to}")).into());
                    }
                    let mut after = m.clone();
                    after.role = to;
                    let event = AuditEvent::MemberRoleChanged {
                        name: name.to_string(),
                        from: m.role,
                        to,
                    };
                    Ok((after, event))
                })?;
                tracing::info!(member = %name, from = %before.role, to = %after.role, by = %actor.name, "member role changed");
                let text = format!("{name} is now {} (was {})", after.role, before.role);
                Reply::of(&views::member_view(&after), text)
            }
            MemberCommand::KeyAdd { name, key } => {
                let name: Name = name.parse()?;
                let k = ca::parse_public_key(&key.join(" "))?;
                let (line, fp) = (
                    ca::openssh_without_comment(&k)?,
                    ca::fingerprint(k.key_data()),
                );
                let (_, m) = self.change_keys(actor, &name, cx, |tx, m| {
                    policy::check_team_change(actor, TeamChange::Keys { target: m }, 0)?;
                    if m.keys.len() >= policy::MAX_KEYS_PER_MEMBER {
                        return Err(Error::InvalidState(format!(
                            "{name} already has {} keys, the most a member may hold; remove one first",
                            m.keys.len()
                        ))
                        .into());
                    }
                    refuse_taken_key(tx, &fp)?;
                    let mut after = m.clone();
                    // Older records may lack who added each key: count those as the member's own.
                    after.key_added_by.resize(after.keys.len(), m.id);
                    after.keys.push(line.clone());
                    after.key_fingerprints.push(fp.clone());
                    after.key_added_by.push(actor.id);
                    let event = AuditEvent::MemberKeyAdded {
                        name: name.to_string(),
                        key_fingerprint: fp.clone(),
                    };
                    Ok((after, event))
                })?;
                tracing::info!(member = %name, key = %fp, by = %actor.name, "member key added");
                let text = format!(
                    "added key {fp} to {name}; they now have {} key(s)",
                    m.keys.len()
                );
                Reply::of(&views::member_view(&m), text)
            }
            MemberCommand::KeyRemove { name, fingerprint } => {
                let name: Name = name.parse()?;
                let (_, m) = self.change_keys(actor, &name, cx, |_, m| {
                    policy::check_team_change(actor, TeamChange::Keys { target: m }, 0)?;
                    let Some(i) = m.key_fingerprints.iter().position(|f| f == fingerprint) else {
                        return Err(Error::NotFound(format!(
                            "{name} has no key {}; 'member list' (or 'whoami' for your own) shows the fingerprints",
                            crate::model::printable(fingerprint, 60)
                        ))
                        .into());
                    };
                    if m.keys.len() == 1 {
                        return Err(Error::InvalidState(format!(
                            "that is {name}'s only key; add another first, or remove the member"
                        ))
                        .into());
                    }
                    let mut after = m.clone();
                    after.key_added_by.resize(after.keys.len(), m.id);
                    after.keys.remove(i);
                    after.key_fingerprints.remove(i);
                    after.key_added_by.remove(i);
                    let event = AuditEvent::MemberKeyRemoved {
                        name: name.to_string(),
                        key_fingerprint: fingerprint.clone(),
                    };
                    Ok((after, event))
                })?;
                tracing::info!(member = %name, key = %fingerprint, by = %actor.name, "member key removed");
                let text = format!("removed key {fingerprint} from {name}; it no longer works");
                Reply::of(&views::member_view(&m), text)
            }
            MemberCommand::Remove { name } => {
                let name: Name = name.parse()?;
                let now = cx.now;
                // What is open for them, found outside the transaction (it cannot scan);
                // each one is checked again inside it.
                let found = match self.store.member(&name)? {
                    Some(m) => (m.id, self.store.open_requests_of(m.id, now)?),
                    None => (IdentityId(0), vec![]),
                };
                let (removed, closed) = self.apply(cx, actor, |tx| {
                    let m = tx.member(&name)?.ok_or_else(|| no_member(&name))?;
                    policy::check_team_change(
                        actor,
                        TeamChange::Remove { target: &m },
                        tx.owner_count()?,
                    )?;
                    let why = format!("member {name} was removed");
                    let mut events = vec![AuditEvent::MemberRemoved {
                        name: name.to_string(),
                        role: Some(m.role),
                    }];
                    let mut ids: Vec<u64> = tx.open_of(m.id)?.iter().map(|e| e.id).collect();
                    if found.0 == m.id {
                        ids.extend(&found.1);
                    }
                    let closed = close_open(tx, m.id, &ids, actor, &why, now, &mut events)?;
                    tx.drop_open(m.id)?;
                    tx.remove_member(&m)?;
                    Ok(((m, closed), events))
                })?;
                tracing::info!(member = %name, by = %actor.name, "member removed");
                let text = format!(
                    "removed {name}; their keys no longer work. {}",
                    closed_note(closed)
                );
                Reply::of(&views::member_view(&removed), text)
            }
        }
    }

    /// [`Broker::change_member`] for identity keys, as one use of the key-change rate limit:
    /// each change is an audit entry, and anyone may change their own.
    fn change_keys(
        &self,
        actor: &Member,
        name: &Name,
        cx: &Call,
        edit: impl Fn(&Tx<'_>, &Member) -> TxResult<(Member, AuditEvent)>,
    ) -> Result<(Member, Member)> {
        let rate = self.policy.key_rate;
        self.metered(actor, "member key-add/key-remove", rate, cx.now, || {
            self.change_member(actor, name, cx, edit)
        })
    }

    /// Changes the member `name` with `edit`, which checks the change against policy and
    /// returns the new record and its audit event. Returns the member before and after.
    fn change_member(
        &self,
        actor: &Member,
        name: &Name,
        cx: &Call,
        edit: impl Fn(&Tx<'_>, &Member) -> TxResult<(Member, AuditEvent)>,
    ) -> Result<(Member, Member)> {
        if actor.name != *name {
            require_manager(actor, "change other members")?;
        }
        self.apply(cx, actor, |tx| {
            let before = tx.member(name)?.ok_or_else(|| no_member(name))?;
            let (after, event) = edit(tx, &before)?;
            tx.replace_member(&before, &after)?;
            Ok(((before, after), vec![event]))
        })
    }
}

/// Closes the requests `ids` of a removed identity (member or host): pending ones are
/// cancelled and grants ended, each with its audit event; a request that is not the
/// identity's, or no longer open, is left alone. Returns (cancelled, ended).
#[allow(clippy::too_many_arguments)]
pub(super) fn close_open(
    tx: &Tx<'_>,
    identity: IdentityId,
    ids: &[u64],
    actor: &Member,
    why: &str,
    now: Timestamp,
    events: &mut Vec<AuditEvent>,
) -> TxResult<(usize, usize)> {
    let (mut cancelled, mut ended) = (0, 0);
    let mut seen = std::collections::BTreeSet::new();
    for &id in ids.iter().filter(|id| seen.insert(**id)) {
        let Some(mut req) = tx.request(id)? else {
            continue;
        };
        if req.requester_id != identity && req.resource_id != identity {
            continue;
        }
        match policy::close_for_removal(&mut req, &actor.name, why, now) {
            Closed::Cancelled => {
                cancelled += 1;
                events.push(AuditEvent::RequestCancelled {
                    id: req.id,
                    by: actor.name.to_string(),
                    reason: Some(why.to_string()),
                });
            }
            Closed::Ended => {
                ended += 1;
                events.push(AuditEvent::GrantEnded {
                    id: req.id,
                    reason: why.to_string(),
                });
            }
            Closed::Untouched => continue,
        }
        tx.put_request(&req)?;
    }
    Ok((cancelled, ended))
}

/// What a removal closed, for people; certificates issued before stay valid (rule 14).
pub(super) fn closed_note((cancelled, ended): (usize, usize)) -> String {
    format!(
        "{cancelled} pending request(s) cancelled, {ended} grant(s) ended; certificates already issued stay valid until their windows end"
    )
}

fn refuse_taken_key(tx: &Tx<'_>, fp: &str) -> TxResult<()> {
    match tx.key_owner(fp)? {
        Some(owner) => Err(Error::AlreadyExists(format!(
            "key {fp} already belongs to member {owner}; each key identifies one member"
        ))
        .into()),
        None => Ok(()),
    }
}

fn no_member(name: &Name) -> Error {
    Error::NotFound(format!("no member named {name}; 'member list' shows them"))
}
