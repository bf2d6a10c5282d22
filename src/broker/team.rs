//! Team administration over SSH: identity, members, hosts, host setup and the audit log.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Broker, Call, Reply, require_manager};
use crate::audit::{self, AuditEvent};
use crate::ca;
use crate::commands::{AuditCommand, HostCommand, MemberCommand};
use crate::error::{Error, Result};
use crate::model::{
    GrantRole, Host, Member, Name, Role, Timestamp, validate_address, validate_login,
};
use crate::views;

/// Most approvals a host may require.
pub const MAX_APPROVALS: u32 = 5;

impl Broker {
    pub(super) fn whoami(&self, actor: &Member) -> Result<Reply> {
        let json = json!({
            "name": actor.name,
            "role": actor.role,
            "can_approve": actor.role.can_manage(),
            "key_fingerprints": actor.key_fingerprints,
        });
        let text = format!("{} ({})", actor.name, actor.role);
        Ok(Reply::new(json, text))
    }

    pub(super) fn ca_pubkey(&self) -> Result<Reply> {
        let key = self.ca.public_key()?;
        let json = json!({"ca_public_key": key, "fingerprint": self.ca.fingerprint()});
        Ok(Reply::new(json, key))
    }

    pub(super) fn member(&self, actor: &Member, cmd: &MemberCommand, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        match cmd {
            MemberCommand::List => {
                require_manager(actor, "list members")?;
                let ms = self.store.members()?;
                let json = ms.iter().map(views::member_json).collect();
                Ok(Reply::new(json, views::members_table(&ms)))
            }
            MemberCommand::Add { name, role, key } => {
                require_manager(actor, "add members")?;
                let name: Name = name.parse()?;
                let role: Role = role.parse()?;
                if role == Role::Owner && actor.role != Role::Owner {
                    return Err(Error::PermissionDenied(
                        "only owners can add owners; add the member as admin or ask an owner"
                            .into(),
                    ));
                }
                let member =
                    ca::member_with_key(name, role, &key.join(" "), actor.name.as_str(), now)?;
                self.apply(cx, actor.name.as_str(), |tx| {
                    if tx.member(&member.name)?.is_some() {
                        return Err(Error::AlreadyExists(format!(
                            "member {} already exists; remove them first to change their role or keys",
                            member.name
                        ))
                        .into());
                    }
                    for fp in &member.key_fingerprints {
                        if let Some(owner) = tx.key_owner(fp)? {
                            return Err(Error::AlreadyExists(format!(
                                "key {fp} already belongs to member {owner}; each key identifies one member"
                            ))
                            .into());
                        }
                    }
                    tx.add_member(&member)?;
                    Ok(((), vec![AuditEvent::member_added(&member)]))
                })?;
                tracing::info!(member = %member.name, role = %member.role, by = %actor.name, "member added");
                let text = format!("added {} as {}", member.name, member.role);
                Ok(Reply::new(views::member_json(&member), text))
            }
            MemberCommand::KeyAdd { name, key } => {
                let name: Name = name.parse()?;
                let k = ca::parse_public_key(&key.join(" "))?;
                let (line, fp) = (
                    ca::openssh_without_comment(&k)?,
                    ca::fingerprint(k.key_data()),
                );
                let m = self.change_keys(actor, &name, cx, |m| {
                    if m.key_fingerprints.contains(&fp) {
                        return Err(Error::AlreadyExists(format!(
                            "key {fp} already belongs to member {name}"
                        )));
                    }
                    m.keys.push(line.clone());
                    m.key_fingerprints.push(fp.clone());
                    Ok(AuditEvent::MemberKeyAdded {
                        name: name.to_string(),
                        key_fingerprint: fp.clone(),
                    })
                })?;
                let text = format!(
                    "added key {fp} to {name}; they now have {} key(s)",
                    m.keys.len()
                );
                Ok(Reply::new(views::member_json(&m), text))
            }
            MemberCommand::KeyRemove { name, fingerprint } => {
                let name: Name = name.parse()?;
                let m = self.change_keys(actor, &name, cx, |m| {
                    let Some(i) = m.key_fingerprints.iter().position(|f| f == fingerprint) else {
                        return Err(Error::NotFound(format!(
                            "{name} has no key {}; 'member list' shows their fingerprints",
                            crate::model::printable(fingerprint, 60)
                        )));
                    };
                    if m.keys.len() == 1 {
                        return Err(Error::InvalidState(format!(
                            "that is {name}'s only key; add another first, or remove the member"
                        )));
                    }
                    m.keys.remove(i);
                    m.key_fingerprints.remove(i);
                    Ok(AuditEvent::MemberKeyRemoved {
                        name: name.to_string(),
                        key_fingerprint: fingerprint.clone(),
                    })
                })?;
                let text = format!("removed key {fingerprint} from {name}; it no longer works");
                Ok(Reply::new(views::member_json(&m), text))
            }
            MemberCommand::Remove { name } => {
                require_manager(actor, "remove members")?;
                let name: Name = name.parse()?;
                let removed = self.apply(cx, actor.name.as_str(), |tx| {
                    let m = tx.member(&name)?.ok_or_else(|| {
                        Error::NotFound(format!("no member named {name}; 'member list' shows them"))
                    })?;
                    if m.role == Role::Owner && actor.role != Role::Owner {
                        return Err(Error::PermissionDenied(
                            "only owners can remove owners".into(),
                        )
                        .into());
                    }
                    if m.role == Role::Owner && tx.owner_count()? <= 1 {
                        return Err(Error::InvalidState(format!(
                            "{name} is the last owner; add another owner before removing them"
                        ))
                        .into());
                    }
                    tx.remove_member(&m)?;
                    let event = AuditEvent::MemberRemoved {
                        name: name.to_string(),
                    };
                    Ok((m, vec![event]))
                })?;
                tracing::info!(member = %name, by = %actor.name, "member removed");
                Ok(Reply::new(
                    views::member_json(&removed),
                    format!("removed {name}; their keys no longer work"),
                ))
            }
        }
    }

    /// Changes a member's keys with `edit`, under the same rules as adding and removing members.
    fn change_keys(
        &self,
        actor: &Member,
        name: &Name,
        cx: &Call,
        edit: impl Fn(&mut Member) -> Result<AuditEvent>,
    ) -> Result<Member> {
        require_manager(actor, "change members' keys")?;
        self.apply(cx, actor.name.as_str(), |tx| {
            let before = tx.member(name)?.ok_or_else(|| {
                Error::NotFound(format!("no member named {name}; 'member list' shows them"))
            })?;
            if before.role == Role::Owner && actor.role != Role::Owner {
                return Err(
                    Error::PermissionDenied("only owners can change owners' keys".into()).into(),
                );
            }
            let mut after = before.clone();
            let event = edit(&mut after)?;
            for fp in after
                .key_fingerprints
                .iter()
                .filter(|f| !before.key_fingerprints.contains(f))
            {
                if let Some(owner) = tx.key_owner(fp)? {
                    return Err(Error::AlreadyExists(format!(
                        "key {fp} already belongs to member {owner}; each key identifies one member"
                    ))
                    .into());
                }
            }
            tx.replace_member_keys(&before, &after)?;
            Ok((after, vec![event]))
        })
    }

    pub(super) fn host(&self, actor: &Member, cmd: &HostCommand, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        match cmd {
            HostCommand::List => {
                let hs = self.store.hosts()?;
                let json = hs.iter().map(views::host_json).collect();
                Ok(Reply::new(json, views::hosts_table(&hs)))
            }
            HostCommand::Add {
                name,
                address,
                port,
                tags,
                logins,
                approvals,
            } => {
                require_manager(actor, "add hosts")?;
                let host = new_host(name, address, *port, tags, logins, *approvals, actor, now)?;
                self.apply(cx, actor.name.as_str(), |tx| {
                    if tx.host(&host.name)?.is_some() {
                        return Err(Error::AlreadyExists(format!(
                            "host {} already exists; remove it first to change it",
                            host.name
                        ))
                        .into());
                    }
                    tx.put_host(&host)?;
                    Ok(((), vec![AuditEvent::host_added(&host)]))
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
                Ok(Reply::new(views::host_json(&host), text))
            }
            HostCommand::Remove { name } => {
                require_manager(actor, "remove hosts")?;
                let name: Name = name.parse()?;
                let host = self.apply(cx, actor.name.as_str(), |tx| {
                    let h = tx.host(&name)?.ok_or_else(|| {
                        Error::NotFound(format!("no host named {name}; 'host list' shows them"))
                    })?;
                    tx.remove_host(&name)?;
                    Ok((
                        h,
                        vec![AuditEvent::HostRemoved {
                            name: name.to_string(),
                        }],
                    ))
                })?;
                tracing::info!(host = %name, by = %actor.name, "host removed");
                Ok(Reply::new(
                    views::host_json(&host),
                    format!(
                        "removed host {name}; certificates already issued stay valid until their windows end"
                    ),
                ))
            }
        }
    }

    pub(super) fn host_config(
        &self,
        actor: &Member,
        name: &str,
        dir: &str,
        script: bool,
    ) -> Result<Reply> {
        require_manager(actor, "print host setup")?;
        let name: Name = name.parse()?;
        if !dir.starts_with('/') || dir.contains(['\'', '\n', '\\', '"', '$', '`']) {
            return Err(Error::invalid(format!(
                "--dir '{}' must be an absolute path without quotes or shell characters",
                crate::model::printable(dir, 60)
            )));
        }
        let host = self.store.host(&name)?.ok_or_else(|| {
            Error::NotFound(format!("no host named {name}; 'host list' shows them"))
        })?;
        let cfg = ca::host_config(&host, &self.ca.public_key()?, dir);
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
            let dir_flag = if dir == "/etc/ssh" {
                String::new()
            } else {
                format!(" --dir {dir}")
            };
            t.push_str(&format!(
                "\n# Or run: ssh -p PORT BROKER host-config {name}{dir_flag} --script | sudo sh\n"
            ));
            t
        };
        let mut reply = Reply::new(json, text);
        reply.raw = script;
        Ok(reply)
    }

    pub(super) fn audit(&self, actor: &Member, cmd: &AuditCommand) -> Result<Reply> {
        require_manager(actor, "read the audit log")?;
        match cmd {
            AuditCommand::Log { limit: 0, .. } => Err(Error::invalid("--limit must be at least 1")),
            AuditCommand::Log { from, limit } => {
                let mut entries = Vec::new();
                let mut text = String::new();
                for raw in self.store.audit_raw(*from).take(*limit) {
                    let e = audit::decode(&raw?)?;
                    text.push_str(&format!(
                        "{:>6} {} {:<12} {}\n",
                        e.seq,
                        e.at,
                        e.actor,
                        describe_event(&e.event)
                    ));
                    entries.push(serde_json::to_value(&e)?);
                }
                Ok(Reply::new(Value::Array(entries), text))
            }
            AuditCommand::Verify => Ok(verify_reply(self.store.verify_audit()?)),
            AuditCommand::Export { limit: Some(0), .. } => {
                Err(Error::invalid("--limit must be at least 1"))
            }
            AuditCommand::Export { from, limit } => {
                let mut text = String::new();
                for raw in self
                    .store
                    .audit_raw(*from)
                    .take(limit.unwrap_or(usize::MAX))
                {
                    text.push_str(&String::from_utf8_lossy(&raw?));
                    text.push('\n');
                }
                let mut reply = Reply::new(Value::Null, text);
                reply.raw = true;
                Ok(reply)
            }
        }
    }
}

/// The answer to `audit verify`, online or offline: non-zero status when the chain is broken.
pub fn verify_reply(report: audit::VerifyReport) -> Reply {
    let text = match (&report.first_bad_seq, &report.problem) {
        (Some(seq), Some(p)) => format!(
            "audit chain BROKEN at entry {seq}: {p} ({} entries before it verify)",
            report.entries
        ),
        _ => format!(
            "audit chain ok: {} entries, head {}",
            report.entries, report.head
        ),
    };
    let ok = report.ok;
    let mut reply = Reply::new(serde_json::to_value(&report).unwrap_or(Value::Null), text);
    if !ok {
        reply.status = 1;
    }
    reply
}

fn describe_event(e: &AuditEvent) -> String {
    match e {
        AuditEvent::BrokerInitialized {
            owner,
            ca_fingerprint,
        } => {
            format!("broker initialized, owner {owner}, CA {ca_fingerprint}")
        }
        AuditEvent::MemberAdded { name, role, .. } => format!("member {name} added as {role}"),
        AuditEvent::MemberRemoved { name } => format!("member {name} removed"),
        AuditEvent::MemberKeyAdded {
            name,
            key_fingerprint,
        } => format!("member {name} key {key_fingerprint} added"),
        AuditEvent::MemberKeyRemoved {
            name,
            key_fingerprint,
        } => format!("member {name} key {key_fingerprint} removed"),
        AuditEvent::HostAdded {
            name,
            address,
            port,
            ..
        } => format!("host {name} added ({address}:{port})"),
        AuditEvent::HostRemoved { name } => format!("host {name} removed"),
        AuditEvent::RequestCreated {
            id,
            requester,
            resource,
            role,
            duration_secs,
            ..
        } => format!(
            "request {id} created: {requester} asks {role} on {resource} for {}",
            crate::model::format_duration(*duration_secs)
        ),
        AuditEvent::RequestApproved {
            id,
            by,
            approvals,
            approvals_required,
            ..
        } => {
            format!("request {id} approved by {by} ({approvals}/{approvals_required})")
        }
        AuditEvent::RequestDenied { id, by, reason } => {
            format!("request {id} denied by {by}: {reason}")
        }
        AuditEvent::RequestCancelled { id, by } => format!("request {id} cancelled by {by}"),
        AuditEvent::GrantStarted {
            id,
            start,
            end,
            login,
            ..
        } => {
            format!("grant {id}: {start} to {end} as {login}")
        }
        AuditEvent::CertificateIssued {
            id,
            serial,
            key_id,
            key_fingerprint,
            ..
        } => {
            format!(
                "certificate serial {serial} ({key_id}) for request {id}, key {key_fingerprint}"
            )
        }
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
    if !(1..=MAX_APPROVALS).contains(&approvals) {
        return Err(Error::invalid(format!(
            "--approvals {approvals} is out of range; use 1 to {MAX_APPROVALS}"
        )));
    }
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
        name,
        address: address.to_string(),
        port,
        tags,
        logins: map,
        approvals_required: approvals,
        added_at: now,
        added_by: actor.name.to_string(),
    })
}
