//! Hosts over SSH: the `host` commands, `host-config` (what makes a host trust the CA) and
//! `ca-pubkey`. Removing a host closes everything open on it (rule 14).

use std::collections::BTreeMap;

use super::members::{close_open, closed_note};
use super::targets::{check_approvals, target_options};
use super::{Broker, Call, Reply, require_manager};
use crate::audit::AuditEvent;
use crate::ca;
use crate::commands::{GuardArgs, HostCommand};
use crate::contract::CaPubkeyView;
use crate::error::{Error, Result};
use crate::model::{
    GrantRole, Host, IdentityId, Member, Name, Role, Timestamp, validate_address, validate_login,
};
use crate::policy;
use crate::target::TargetKind;
use crate::views;

/// Most approvals a host may require.
pub const MAX_APPROVALS: u32 = 5;

impl Broker {
    pub(super) fn ca_pubkey(&self) -> Result<Reply> {
        let key = self.ca.public_key()?;
        let view = CaPubkeyView {
            ca_public_key: key.clone(),
            fingerprint: self.ca.fingerprint(),
        };
        Reply::of(&view, key)
    }

    pub(super) fn host(&self, actor: &Member, cmd: &HostCommand, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        match cmd {
            HostCommand::List => {
                let hs = self.store.hosts()?;
                let views: Vec<_> = hs.iter().map(views::host_view).collect();
                Reply::of(&views, views::hosts_table(&hs))
            }
            HostCommand::Add {
                name,
                address,
                port,
                tags,
                logins,
                approvals,
                options,
            } => {
                require_manager(actor, "add hosts")?;
                let mut host =
                    new_host(name, address, *port, tags, logins, *approvals, actor, now)?;
                (host.break_glass, host.escalate_after_secs) = target_options(options)?;
                let host = self.apply(cx, actor, |tx| {
                    match tx.kind_of(&host.name)? {
                        Some(TargetKind::Host) => {
                            return Err(Error::AlreadyExists(format!(
                                "host {} already exists; remove it first to change it",
                                host.name
                            ))
                            .into());
                        }
                        Some(kind) => {
                            return Err(Error::NameTaken {
                                name: host.name.to_string(),
                                kind,
                            }
                            .into());
                        }
                        None => {}
                    }
                    let h = tx.add_host(&host)?;
                    Ok((h.clone(), vec![AuditEvent::host_added(&h)]))
                })?;
                tracing::info!(host = %host.name, by = %actor.name, "host added");
                let mut text = format!(
                    "added host {}; run 'host-config {}' to set it up",
                    host.name, host.name
                );
                let managers = self
                    .store
                    .members()?
                    .iter()
                    .filter(|m| m.role.can_manage())
                    .count() as u32;
                let need = host.approvals_required;
                if managers < need {
                    text.push_str(&format!(
                        "\nnote: requests for {} need {need} approvers but only {managers} owner(s)/admin(s) exist, so none can be approved yet; add approvers",
                        host.name
                    ));
                } else if managers == need {
                    text.push_str(&format!(
                        "\nnote: requests for {} need {need} approvers other than the requester; with {managers} owner(s)/admin(s), their own requests cannot be approved",
                        host.name
                    ));
                }
                Reply::of(&views::host_view(&host), text)
            }
            HostCommand::Remove { name } => {
                require_manager(actor, "remove hosts")?;
                let name: Name = name.parse()?;
                let Some(before) = self.store.host(&name)? else {
                    return Err(self.unknown_target(&name, Some(TargetKind::Host))?);
                };
                policy::check_removal(actor, TargetKind::Host, &name, before.approvals_required)?;
                // What is open on it, and on the commands that run on it alone, found outside
                // the transaction (it cannot scan); each one is checked again inside it.
                let open = self.store.open_requests_of(before.id, now)?;
                let mut on_it = Vec::new();
                for id in self.commands_on_host(&before)? {
                    on_it.push((id, self.store.open_requests_of(id, now)?));
                }
                let (host, closed) = self.apply(cx, actor, |tx| {
                    let h = tx
                        .host(&name)?
                        .ok_or_else(|| Error::NotFound(format!("no host named {name}")))?;
                    let why = format!("host {name} was removed");
                    let mut events = vec![AuditEvent::HostRemoved {
                        name: name.to_string(),
                    }];
                    let mut closed = (0, 0);
                    if h.id == before.id {
                        for (identity, ids) in std::iter::once((h.id, &open))
                            .chain(on_it.iter().map(|(id, ids)| (*id, ids)))
                        {
                            let (c, e) =
                                close_open(tx, identity, ids, actor, &why, now, &mut events)?;
                            closed = (closed.0 + c, closed.1 + e);
                        }
                    }
                    tx.remove_host(&name)?;
                    Ok(((h, closed), events))
                })?;
                tracing::info!(host = %name, by = %actor.name, "host removed");
                Reply::of(
                    &views::host_view(&host),
                    format!("removed host {name}; {}", closed_note(closed)),
                )
            }
        }
    }

    pub(super) fn host_config(
        &self,
        actor: &Member,
        name: &str,
        dir: &str,
        script: bool,
        guard: &GuardArgs,
    ) -> Result<Reply> {
        require_manager(actor, "print host setup")?;
        let name: Name = name.parse()?;
        ca::validate_host_dir(dir)?;
        let guard = guard
            .session_guard
            .then(|| ca::SessionGuard::new(&guard.guard_path, &guard.pam_service))
            .transpose()?;
        let Some(host) = self.store.host(&name)? else {
            return Err(self.unknown_target(&name, Some(TargetKind::Host))?);
        };
        let command_logins = self.command_logins(&host)?;
        let mut cfg = ca::host_config(&host, &command_logins, &self.ca.public_key()?, dir);
        if let Some(g) = guard {
            cfg.add_guard(g, dir);
        }
        let json = serde_json::to_value(&cfg)?;
        let text = if script {
            cfg.script()
        } else {
            let mut t = format!(
                "# Host setup for {name}. Write these files as root, add the sshd_config lines\n# (or keep the sshd_config.d file), then reload sshd. Keep the host's clock in sync (NTP).\n\n# sshd_config\n"
            );
            for l in &cfg.sshd_config {
                t.push_str(l);
                t.push('\n');
            }
            for f in &cfg.files {
                t.push_str(&format!("\n# {}\n{}", f.path, f.content));
            }
            if let Some(g) = &cfg.guard {
                t.push_str(&format!(
                    "\n# {} (the session guard; replaces any earlier sshjit-guard line)\n{}\n# Install sshjit-guard (built beside sshjit-broker) at {}, mode 0755, owned by root.\n",
                    g.pam_file, g.pam_line, g.path
                ));
            }
            let mut dir_flag = if dir == "/etc/ssh" {
                String::new()
            } else {
                format!(" --dir {dir}")
            };
            if cfg.guard.is_some() {
                dir_flag.push_str(" --session-guard");
            }
            t.push_str(&format!(
                "\n# Or run: ssh -p PORT BROKER host-config {name}{dir_flag} --script | sudo sh\n"
            ));
            t
        };
        let mut reply = Reply::new(json, text);
        reply.raw = script;
        Ok(reply)
    }
}

#[allow(clippy::too_many_arguments)]
fn new_host(
    name: &str,
    address: &str,
    port: u16,
    tags: &[String],
    logins: &[String],
    approvals: u32,
    actor: &Member,
    now: Timestamp,
) -> Result<Host> {
    let name: Name = name.parse()?;
    validate_address(address)?;
    if port == 0 {
        return Err(Error::invalid(
            "port 0 is not a port; use the host's sshd port, such as 22",
        ));
    }
    check_approvals(approvals)?;
    let tags = tags
        .iter()
        .map(|t| t.parse())
        .collect::<Result<Vec<Name>>>()?;
    let mut map = BTreeMap::new();
    for l in logins {
        let (role, user) = l.split_once('=').ok_or_else(|| {
            Error::invalid(format!(
                "--login '{}' is not ROLE=USER; use for example --login editor=deploy",
                crate::model::printable(l, 40)
            ))
        })?;
        let role: GrantRole = match role.parse::<Role>() {
            Ok(Role::Viewer) => GrantRole::Viewer,
            Ok(Role::Editor) => GrantRole::Editor,
            _ => {
                return Err(Error::invalid(format!(
                    "--login {}: only viewer and editor have logins on hosts (just-in-time access never grants admin or owner)",
                    crate::model::printable(l, 40)
                )));
            }
        };
        validate_login(user)?;
        if map.insert(role, user.to_string()).is_some() {
            return Err(Error::invalid(format!(
                "--login for {role} is given twice; give it once"
            )));
        }
    }
    Ok(Host {
        // The store gives the host its identity when it is added.
        id: IdentityId(0),
        name,
        address: address.to_string(),
        port,
        tags,
        logins: map,
        approvals_required: approvals,
        break_glass: false,
        escalate_after_secs: None,
        added_at: now,
        added_by: actor.name.to_string(),
    })
}
