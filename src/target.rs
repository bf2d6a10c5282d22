//! What a request names (a host, a fleet or a fleet command), and the scope it resolves to:
//! the hosts, the login on each, and an optional forced command.
//!
//! Hosts, fleets and commands share one namespace. A target is looked up at the moment of use
//! into a [`Found`] (the target and the hosts it covers then); policy turns that into a
//! [`Scope`] at final approval, and the scope is fixed from then on.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Host, IdentityId, Name, Timestamp, is_hidden_char, printable};

/// The most principals OpenSSH accepts in one certificate (`SSHKEY_CERT_MAX_PRINCIPALS`), so
/// the most hosts one grant can hold.
pub const MAX_PRINCIPALS: u32 = 256;
/// The longest command line a fleet command may run, in bytes.
pub const MAX_COMMAND_BYTES: usize = 1000;

/// The kinds of resource a request can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Host,
    Fleet,
    Command,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Host => "host",
            TargetKind::Fleet => "fleet",
            TargetKind::Command => "command",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named set of hosts: those carrying all of `tags`, as of the moment of use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// Never reused, from the same counter as members and hosts.
    pub id: IdentityId,
    pub name: Name,
    pub tags: Vec<Name>,
    /// Approvals the fleet itself requires; its hosts may require more.
    pub approvals_required: u32,
    /// The most hosts a grant for it may hold (at most [`MAX_PRINCIPALS`]).
    pub max_hosts: u32,
    /// Whether break-glass requests may name it.
    #[serde(default)]
    pub break_glass: bool,
    /// How long a request may wait before it reads as escalated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_after_secs: Option<u64>,
    pub added_at: Timestamp,
    pub added_by: String,
}

impl Fleet {
    /// Whether `host` carries every tag of the fleet.
    pub fn covers(&self, host: &Host) -> bool {
        self.tags.iter().all(|t| host.tags.contains(t))
    }

    /// `tags web, prod`, for messages.
    pub fn selector(&self) -> String {
        let tags: Vec<&str> = self.tags.iter().map(Name::as_str).collect();
        format!("tag(s) {}", tags.join(", "))
    }
}

/// A named command run on a fleet or a host: the least privilege a certificate can carry,
/// enforced by sshd through the `force-command` critical option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetCommand {
    pub id: IdentityId,
    pub name: Name,
    /// Where it runs: a fleet or a host, by kind, name and identity (a fleet or host added
    /// again under the same name is not this one).
    pub on_kind: TargetKind,
    pub on: Name,
    pub on_id: IdentityId,
    /// The command line sshd runs, whatever the client asks for.
    pub run: String,
    /// The unix login it runs as on every host.
    pub login: String,
    pub approvals_required: u32,
    /// Whether break-glass requests may name it.
    #[serde(default)]
    pub break_glass: bool,
    /// How long a request may wait before it reads as escalated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_after_secs: Option<u64>,
    pub added_at: Timestamp,
    pub added_by: String,
}

/// A fleet or a fleet command, as the targets table keeps them (hosts have their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    Fleet(Fleet),
    Command(FleetCommand),
}

impl Target {
    pub fn name(&self) -> &Name {
        match self {
            Target::Fleet(f) => &f.name,
            Target::Command(c) => &c.name,
        }
    }

    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Fleet(_) => TargetKind::Fleet,
            Target::Command(_) => TargetKind::Command,
        }
    }

    pub fn id(&self) -> IdentityId {
        match self {
            Target::Fleet(f) => f.id,
            Target::Command(c) => c.id,
        }
    }

    /// Gives the target its identity (the store does, when it is added).
    pub fn set_id(&mut self, id: IdentityId) {
        match self {
            Target::Fleet(f) => f.id = id,
            Target::Command(c) => c.id = id,
        }
    }
}

/// A target as found at one moment: what it is, and the hosts it covers then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: TargetKind,
    pub name: Name,
    pub id: IdentityId,
    /// Approvals the target itself requires (a command on a fleet: the larger of the two).
    pub approvals_required: u32,
    /// The most hosts a grant for it may hold.
    pub max_hosts: u32,
    /// The hosts it covers now, by name.
    pub hosts: Vec<Host>,
    /// For a fleet command: the command line and its login.
    pub command: Option<(String, String)>,
    /// Why it covers no host, when it covers none (`no host carries all of tag(s) web`).
    pub why_empty: String,
    /// Whether break-glass requests may name it (the target's own mark).
    pub break_glass: bool,
    /// How long a request for it may wait before it reads as escalated.
    pub escalate_after_secs: Option<u64>,
}

impl Found {
    /// A single host as a target.
    pub fn host(h: &Host) -> Found {
        Found {
            kind: TargetKind::Host,
            name: h.name.clone(),
            id: h.id,
            approvals_required: h.approvals_required,
            max_hosts: 1,
            hosts: vec![h.clone()],
            command: None,
            why_empty: format!("host {} is gone", h.name),
            break_glass: h.break_glass,
            escalate_after_secs: h.escalate_after_secs,
        }
    }
}

/// What a grant covers: fixed at final approval.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Scope {
    /// The hosts, by name, each with the login the certificate opens there.
    pub hosts: Vec<ScopeHost>,
    /// For a fleet command: the only thing sshd runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Hosts the target matched that have no login for the role, so are not in the grant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<Name>,
}

/// One host of a scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeHost {
    /// The host's identity when the scope was fixed: a host added again is not in it.
    pub id: IdentityId,
    pub name: Name,
    pub address: String,
    pub port: u16,
    pub login: String,
    /// Whether it was tagged as production.
    pub production: bool,
}

impl Scope {
    /// The distinct logins, sorted.
    pub fn logins(&self) -> Vec<String> {
        let mut l: Vec<String> = self.hosts.iter().map(|h| h.login.clone()).collect();
        l.sort();
        l.dedup();
        l
    }

    /// The one login every host shares, if they share one.
    pub fn single_login(&self) -> Option<String> {
        match self.logins().as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }

    /// The production-tagged hosts.
    pub fn production(&self) -> Vec<&Name> {
        self.hosts
            .iter()
            .filter(|h| h.production)
            .map(|h| &h.name)
            .collect()
    }

    /// The principal for each host: `<login>@<host>`.
    pub fn principals(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| crate::ca::principal(&h.login, h.name.as_str()))
            .collect()
    }

    /// `web-01, web-02 and 3 more`: at most `max` names.
    pub fn host_list(&self, max: usize) -> String {
        let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
        name_list(&names, max)
    }
}

/// `a, b and 3 more`: at most `max` names.
pub fn name_list(names: &[&str], max: usize) -> String {
    if names.len() <= max {
        return names.join(", ");
    }
    format!("{} and {} more", names[..max].join(", "), names.len() - max)
}

/// Checks a fleet command's line: present, short, one line of printable text (sshd hands it
/// to the login's shell, and it is shown to approvers and written to logs).
pub fn check_command_line(run: &str) -> Result<()> {
    if run.trim().is_empty() {
        return Err(Error::invalid(
            "--run is empty; give the command line to run, such as --run 'systemctl restart worker'",
        ));
    }
    if run.len() > MAX_COMMAND_BYTES {
        return Err(Error::invalid(format!(
            "--run is {} bytes; the limit is {MAX_COMMAND_BYTES}. Put a longer script on the hosts and run that",
            run.len()
        )));
    }
    if let Some(c) = run.chars().find(|c| is_hidden_char(*c)) {
        return Err(Error::invalid(format!(
            "--run '{}' contains the control or invisible character U+{:04X}; use one line of plain text",
            printable(run, 60),
            c as u32
        )));
    }
    Ok(())
}
