//! The helper's listing commands: what you can request (`ls`), who you are (`whoami`), and
//! the certificates stored here (`certs`, `ssh-config`, `logout`).

use serde_json::json;

use super::Settings;
use super::conn::Connection;
use super::helper::Printed;
use super::local::{self, LocalCert};
use crate::contract::{CommandView, FleetView, HostView, WhoamiView};
use crate::error::{Error, Result};
use crate::model::{Timestamp, format_duration};
use crate::target::ScopeHost;

/// `sshjit ssh-config`: blocks for `~/.ssh/config` using the stable `current` links, one per
/// host (a fleet's certificate serves each of its hosts).
pub fn ssh_config(certs_dir: &std::path::Path) -> Result<Printed> {
    let now = Timestamp::now();
    local::prune(certs_dir, now)?;
    let mut latest: std::collections::BTreeMap<String, (LocalCert, ScopeHost)> = Default::default();
    for c in local::list(certs_dir)? {
        if c.command.is_some() {
            continue;
        }
        for h in &c.hosts {
            latest.insert(h.name.to_string(), (c.clone(), h.clone()));
        }
    }
    let mut text = String::from(
        "# sshjit: paste into ~/.ssh/config (or Include it). Plain ssh, scp, rsync and git then use\n# the current certificate for each host. Run 'sshjit login ID' to renew; rerun this for new hosts.\n",
    );
    for (host, (c, h)) in &latest {
        let dir = c
            .key
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        text.push_str(&format!(
            "\nHost {host}\n    HostName {}\n    Port {}\n    User {}\n    IdentityFile {dir}/current\n    CertificateFile {dir}/current-cert.pub\n    IdentitiesOnly yes\n",
            h.address, h.port, h.login
        ));
    }
    if latest.is_empty() {
        text.push_str("# no certificates yet: run 'sshjit login ID' after a request is approved\n");
    }
    Ok(Printed {
        json: json!({"config": text}),
        text,
    })
}

/// `sshjit certs`: local certificates with their windows.
pub fn certs(certs_dir: &std::path::Path) -> Result<Printed> {
    let now = Timestamp::now();
    local::prune(certs_dir, now)?;
    let all = local::list(certs_dir)?;
    let mut text = format!(
        "{:<16} {:<8} {:<6} {:<12} {:<6} {:<21} {:<21} {}\n",
        "TARGET", "KIND", "HOSTS", "LOGIN", "ID", "FROM", "UNTIL", "LEFT"
    );
    for c in &all {
        let left = if now < c.valid_after {
            "not yet".into()
        } else {
            format_duration(c.seconds_left(now))
        };
        let logins: Vec<&str> = c.hosts.iter().map(|h| h.login.as_str()).collect();
        let mut logins = logins;
        logins.sort();
        logins.dedup();
        text.push_str(&format!(
            "{:<16} {:<8} {:<6} {:<12} {:<6} {:<21} {:<21} {}\n",
            c.target,
            c.kind.as_str(),
            c.hosts.len(),
            logins.join(","),
            c.request_id,
            c.valid_after.to_string(),
            c.valid_before.to_string(),
            left
        ));
    }
    if all.is_empty() {
        text = "no certificates; run 'sshjit login ID' after a request is approved\n".into();
    }
    Ok(Printed {
        text,
        json: serde_json::to_value(&all)?,
    })
}

/// `sshjit ls`: what you can request (hosts with the login for each role, fleets with their
/// hosts now, and fleet commands), with the approvals each needs.
pub async fn ls(settings: &Settings) -> Result<Printed> {
    let conn = Connection::open(settings).await?;
    let hosts: Vec<HostView> = conn.call(&["host", "list"]).await?;
    let fleets: Vec<FleetView> = conn.call(&["fleet", "list"]).await?;
    let commands: Vec<CommandView> = conn.call(&["command", "list"]).await?;
    conn.close().await;
    let mut text = format!(
        "{:<16} {:<12} {:<12} {:<10} {}\n",
        "HOST", "VIEWER AS", "EDITOR AS", "APPROVALS", "TAGS"
    );
    for h in &hosts {
        let login = |r| h.logins.get(&r).map_or("-", String::as_str);
        let tags: Vec<&str> = h.tags.iter().map(|t| t.as_str()).collect();
        text.push_str(&format!(
            "{:<16} {:<12} {:<12} {:<10} {}\n",
            h.name.as_str(),
            login(crate::model::GrantRole::Viewer),
            login(crate::model::GrantRole::Editor),
            h.approvals_required,
            if tags.is_empty() {
                "-".into()
            } else {
                tags.join(",")
            }
        ));
    }
    if hosts.is_empty() {
        text = "no hosts yet; an owner or admin adds them with 'host add'\n".into();
    }
    if !fleets.is_empty() {
        text.push('\n');
        text.push_str(&crate::views::fleets_table(&fleets));
    }
    if !commands.is_empty() {
        text.push('\n');
        text.push_str(&crate::views::commands_table(&commands));
    }
    if !hosts.is_empty() {
        text.push_str("\nask for a host or fleet with: sshjit request NAME --role viewer|editor --for 1h --reason 'TICKET-123 why'\n");
    }
    if !commands.is_empty() {
        text.push_str("ask to run a command with: sshjit request NAME --for 30m --reason 'TICKET-123 why', then: sshjit run NAME\n");
    }
    Ok(Printed {
        text,
        json: json!({"hosts": hosts, "fleets": fleets, "commands": commands}),
    })
}

/// `sshjit whoami`: who the broker thinks you are.
pub async fn whoami(settings: &Settings) -> Result<Printed> {
    let conn = Connection::open(settings).await?;
    let me: WhoamiView = conn.call(&["whoami"]).await?;
    conn.close().await;
    let text = format!(
        "{} ({}) on the broker at {}{}\n",
        me.name,
        me.role,
        settings.broker,
        if me.can_approve {
            "; you can approve others' requests"
        } else {
            ""
        }
    );
    Ok(Printed {
        text,
        json: serde_json::to_value(&me)?,
    })
}

/// `sshjit logout [ID | --all]`: removes stored keys and certificates, and their ssh-agent
/// entries. Local only: the certificates stay valid until their windows end (on the host).
pub fn logout(certs_dir: &std::path::Path, id: Option<u64>) -> Result<Printed> {
    let all = local::list(certs_dir)?;
    let chosen: Vec<&LocalCert> = all
        .iter()
        .filter(|c| id.is_none_or(|i| c.request_id == i))
        .collect();
    if let (Some(i), true) = (id, chosen.is_empty()) {
        return Err(Error::Client(format!(
            "no stored certificate for request {i}; 'sshjit certs' lists them"
        )));
    }
    let mut text = String::new();
    for c in &chosen {
        let agent = local::remove_from_agent(c);
        local::remove(c);
        text.push_str(&format!(
            "removed the key and certificate for {} (request {}){}\n",
            c.describe(),
            c.request_id,
            if agent {
                " and its ssh-agent entry"
            } else {
                ""
            }
        ));
    }
    if chosen.is_empty() {
        text.push_str("no stored certificates\n");
    } else {
        text.push_str("certificates already given to ssh stay valid until their windows end\n");
    }
    Ok(Printed {
        text,
        json: json!({"removed": chosen.iter().map(|c| c.request_id).collect::<Vec<_>>()}),
    })
}
