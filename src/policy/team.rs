//! Who may change the team and its targets (rule 13), who may read what, and what removing an
//! identity closes (rule 14).

use crate::error::{Error, Result};
use crate::model::{Decision, Ended, Member, Name, Request, RequestState, Role, Timestamp};
use crate::target::TargetKind;
use crate::verdict::MemberKind;

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
