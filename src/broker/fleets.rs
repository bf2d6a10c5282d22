//! The `fleet` and `command` commands: owners and admins add and remove fleets (hosts by tag)
//! and fleet commands (one command line on a fleet or host); any member lists them.

use super::targets::{check_approvals, find, fleet_found, hosts_now, target_options};
use super::{Broker, Call, Reply, require_manager};
use crate::commands::{CommandOp, FleetOp};
use crate::error::{Error, Result};
use crate::model::{Member, Name, validate_login};
use crate::policy;
use crate::target::{Fleet, FleetCommand, MAX_PRINCIPALS, Target, TargetKind, check_command_line};
use crate::views;

impl Broker {
    pub(super) fn fleet(&self, actor: &Member, op: &FleetOp, cx: &Call) -> Result<Reply> {
        match op {
            FleetOp::List => {
                let hosts = self.store.hosts()?;
                let mut views = Vec::new();
                for t in self.store.targets()? {
                    if let Target::Fleet(f) = t {
                        let found = fleet_found(&self.store, &f, &hosts)?;
                        views.push(views::fleet_view(&f, Self::host_names(Some(found))));
                    }
                }
                Reply::of(&views, views::fleets_table(&views))
            }
            FleetOp::Show { name } => {
                let (name, t) = self.named(name, TargetKind::Fleet, "show")?;
                let Target::Fleet(f) = t else {
                    return Err(Error::Internal("named returned another kind".into()));
                };
                let v = views::fleet_view(&f, Self::host_names(self.find_now(&name)?));
                let text = format!(
                    "{}hosts now: {}\n",
                    views::fleets_table(std::slice::from_ref(&v)),
                    hosts_now(&v.hosts)
                );
                Reply::of(&v, text)
            }
            FleetOp::Add {
                name,
                tags,
                approvals,
                max_hosts,
                options,
            } => {
                require_manager(actor, "add fleets")?;
                let mut tags = tags
                    .iter()
                    .map(|t| t.parse())
                    .collect::<Result<Vec<Name>>>()?;
                tags.sort();
                tags.dedup();
                check_approvals(*approvals)?;
                if !(1..=MAX_PRINCIPALS).contains(max_hosts) {
                    return Err(Error::invalid(format!(
                        "--max-hosts {max_hosts} is out of range; use 1 to {MAX_PRINCIPALS} (OpenSSH accepts at most {MAX_PRINCIPALS} principals in a certificate)"
                    )));
                }
                let fleet = Target::Fleet(Fleet {
                    id: crate::model::IdentityId(0),
                    name: name.parse()?,
                    tags,
                    approvals_required: *approvals,
                    max_hosts: *max_hosts,
                    break_glass: false,
                    escalate_after_secs: None,
                    added_at: cx.now,
                    added_by: actor.name.to_string(),
                });
                let mut fleet = fleet;
                if let Target::Fleet(f) = &mut fleet {
                    (f.break_glass, f.escalate_after_secs) = target_options(options)?;
                }
                let Target::Fleet(f) = self.add_target(actor, fleet, cx)? else {
                    return Err(Error::Internal("added another kind".into()));
                };
                let hosts = Self::host_names(self.find_now(&f.name)?);
                let text = format!(
                    "added fleet {}: {} host(s) carry {} now{}",
                    f.name,
                    hosts.len(),
                    f.selector(),
                    if hosts.is_empty() {
                        "; requests for it are refused until hosts are tagged".to_string()
                    } else {
                        format!(
                            " ({})",
                            hosts
                                .iter()
                                .map(Name::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
                Reply::of(&views::fleet_view(&f, hosts), text)
            }
            FleetOp::Remove { name } => {
                require_manager(actor, "remove fleets")?;
                let (name, t) = self.named(name, TargetKind::Fleet, "remove")?;
                if let Target::Fleet(f) = &t {
                    policy::check_removal(actor, TargetKind::Fleet, &name, f.approvals_required)?;
                }
                let users: Vec<String> = self
                    .store
                    .targets()?
                    .into_iter()
                    .filter_map(|t| match t {
                        Target::Command(c) if c.on_kind == TargetKind::Fleet && c.on == name => {
                            Some(c.name.to_string())
                        }
                        _ => None,
                    })
                    .collect();
                if !users.is_empty() {
                    return Err(Error::InvalidState(format!(
                        "fleet {name} is used by command(s) {}; remove them first",
                        users.join(", ")
                    )));
                }
                self.remove_target(actor, &name, TargetKind::Fleet, cx)
            }
        }
    }

    pub(super) fn command(&self, actor: &Member, op: &CommandOp, cx: &Call) -> Result<Reply> {
        match op {
            CommandOp::List => {
                let hosts = self.store.hosts()?;
                let mut views = Vec::new();
                for t in self.store.targets()? {
                    if let Target::Command(c) = t {
                        let found = find(&self.store, &c.name, &hosts)?;
                        views.push(views::command_view(&c, Self::host_names(found)));
                    }
                }
                Reply::of(&views, views::commands_table(&views))
            }
            CommandOp::Show { name } => {
                let (name, t) = self.named(name, TargetKind::Command, "show")?;
                let Target::Command(c) = t else {
                    return Err(Error::Internal("named returned another kind".into()));
                };
                let v = views::command_view(&c, Self::host_names(self.find_now(&name)?));
                let text = format!(
                    "{}hosts now: {}\n",
                    views::commands_table(std::slice::from_ref(&v)),
                    hosts_now(&v.hosts)
                );
                Reply::of(&v, text)
            }
            CommandOp::Add {
                name,
                fleet,
                host,
                run,
                login,
                approvals,
                options,
            } => {
                require_manager(actor, "add fleet commands")?;
                let (break_glass, escalate_after_secs) = target_options(options)?;
                let name: Name = name.parse()?;
                check_command_line(run)?;
                validate_login(login)?;
                check_approvals(*approvals)?;
                let (on_kind, on) = match (fleet, host) {
                    (Some(f), None) => (TargetKind::Fleet, f.parse::<Name>()?),
                    (None, Some(h)) => (TargetKind::Host, h.parse::<Name>()?),
                    _ => {
                        return Err(Error::invalid(
                            "give exactly one of --fleet F or --host H: where the command runs",
                        ));
                    }
                };
                let on_id = match (on_kind, self.store.kind_of(&on)?, self.find_now(&on)?) {
                    (want, Some(got), Some(found)) if want == got => found.id,
                    (_, Some(TargetKind::Command), _) => {
                        return Err(Error::invalid(format!(
                            "{on} is a command: a command runs on a fleet (--fleet F) or a host (--host H)"
                        )));
                    }
                    (want, Some(got), _) => {
                        return Err(Error::invalid(format!(
                            "{on} is a {got}, not a {want}; use --{got} {on}"
                        )));
                    }
                    _ => return Err(self.unknown_target(&on, Some(on_kind))?),
                };
                let cmd = Target::Command(FleetCommand {
                    id: crate::model::IdentityId(0),
                    name,
                    on_kind,
                    on,
                    on_id,
                    run: run.trim().to_string(),
                    login: login.clone(),
                    approvals_required: *approvals,
                    break_glass,
                    escalate_after_secs,
                    added_at: cx.now,
                    added_by: actor.name.to_string(),
                });
                let Target::Command(c) = self.add_target(actor, cmd, cx)? else {
                    return Err(Error::Internal("added another kind".into()));
                };
                let found = self.find_now(&c.name)?;
                let missing: Vec<String> = found
                    .iter()
                    .flat_map(|f| &f.hosts)
                    .filter(|h| !h.logins.values().any(|l| *l == c.login))
                    .map(|h| h.name.to_string())
                    .collect();
                let hosts = Self::host_names(found);
                let mut text = format!(
                    "added command {}: runs '{}' as {} on {} {} ({} host(s) now)",
                    c.name,
                    c.run,
                    c.login,
                    c.on_kind,
                    c.on,
                    hosts.len()
                );
                if !missing.is_empty() {
                    text.push_str(&format!(
                        "\nnote: {} {} no login {} yet; run 'host-config HOST' again on {} so sshd accepts it",
                        missing.join(", "),
                        if missing.len() == 1 { "has" } else { "have" },
                        c.login,
                        if missing.len() == 1 { "it" } else { "each" }
                    ));
                }
                Reply::of(&views::command_view(&c, hosts), text)
            }
            CommandOp::Remove { name } => {
                require_manager(actor, "remove fleet commands")?;
                let (name, t) = self.named(name, TargetKind::Command, "remove")?;
                if let Target::Command(c) = &t {
                    policy::check_removal(actor, TargetKind::Command, &name, c.approvals_required)?;
                }
                self.remove_target(actor, &name, TargetKind::Command, cx)
            }
        }
    }
}
