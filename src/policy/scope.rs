//! What a target grants: the scope (hosts, the login on each, an optional forced command),
//! the effective role and the approvals it needs, decided from what the target covers now.

use crate::error::{Error, Result};
use crate::model::{GrantRole, Role};
use crate::target::{Found, MAX_PRINCIPALS, Scope, ScopeHost, TargetKind};

use super::effective_role;

/// A target resolved for one requester: what approving it now would grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub scope: Scope,
    /// The role the certificate carries; `None` for a fleet command (its own kind).
    pub effective_role: Option<GrantRole>,
    /// The largest of the target's own approvals and those of every host in the scope.
    pub approvals_required: u32,
}

/// Checks that `role` fits the target: a fleet command takes none, a host or fleet needs one.
pub fn check_role(found: &Found, role: Option<GrantRole>) -> Result<()> {
    match (found.kind, role) {
        (TargetKind::Command, Some(_)) => Err(Error::RoleForCommand {
            name: found.name.to_string(),
        }),
        (TargetKind::Host | TargetKind::Fleet, None) => Err(Error::RoleMissing {
            kind: found.kind,
            name: found.name.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Resolves `found` for a requester with base role `base` asking for `role`.
///
/// Every host gets one principal `<login>@<host>`. With a role, the login is each host's own
/// for the effective role, which is the elevated role only if every host has a login for it
/// (a certificate's rights must match every login it opens); hosts with no login for the
/// role are left out. A fleet command uses its own login everywhere and carries its command.
/// Refused: an empty target, more hosts than the target allows (at most 256, OpenSSH's
/// limit on principals), or no host with a login for the role.
pub fn resolve(found: &Found, role: Option<GrantRole>, base: Role) -> Result<Resolved> {
    check_role(found, role)?;
    if found.hosts.is_empty() {
        return Err(Error::EmptyTarget {
            kind: found.kind,
            name: found.name.to_string(),
            why: found.why_empty.clone(),
        });
    }
    let max = found.max_hosts.clamp(1, MAX_PRINCIPALS);
    if found.hosts.len() > max as usize {
        return Err(Error::TooManyHosts {
            kind: found.kind,
            name: found.name.to_string(),
            hosts: found.hosts.len(),
            max,
        });
    }
    let mut hosts: Vec<_> = found.hosts.iter().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let in_scope = |h: &crate::model::Host, login: &str| ScopeHost {
        id: h.id,
        name: h.name.clone(),
        address: h.address.clone(),
        port: h.port,
        login: login.to_string(),
        production: h.is_production(),
    };
    let mut scope = Scope::default();
    let effective = match (&found.command, role) {
        (Some((run, login)), _) => {
            scope.hosts = hosts.iter().map(|h| in_scope(h, login)).collect();
            scope.command = Some(run.clone());
            None
        }
        (None, Some(role)) => {
            let elevated = effective_role(base, role);
            let effective = if hosts.iter().all(|h| h.logins.contains_key(&elevated)) {
                elevated
            } else {
                role
            };
            for h in &hosts {
                match h.logins.get(&effective) {
                    Some(login) => scope.hosts.push(in_scope(h, login)),
                    None => scope.left_out.push(h.name.clone()),
                }
            }
            if scope.hosts.is_empty() {
                return Err(Error::NoLoginForRole {
                    kind: found.kind,
                    name: found.name.to_string(),
                    role: effective,
                });
            }
            Some(effective)
        }
        // check_role refused this above.
        (None, None) => {
            return Err(Error::RoleMissing {
                kind: found.kind,
                name: found.name.to_string(),
            });
        }
    };
    let approvals_required = scope
        .hosts
        .iter()
        .filter_map(|s| hosts.iter().find(|h| h.id == s.id))
        .map(|h| h.approvals_required)
        .chain([found.approvals_required, 1])
        .max()
        .unwrap_or(1);
    Ok(Resolved {
        scope,
        effective_role: effective,
        approvals_required,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Host, IdentityId, Timestamp};

    fn host(
        n: u64,
        name: &str,
        tags: &[&str],
        logins: &[(GrantRole, &str)],
        approvals: u32,
    ) -> Host {
        Host {
            id: IdentityId(n),
            name: name.parse().unwrap(),
            address: format!("10.0.0.{n}"),
            port: 22,
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
            logins: logins
                .iter()
                .map(|(r, l)| (*r, l.to_string()))
                .collect::<BTreeMap<_, _>>(),
            approvals_required: approvals,
            break_glass: false,
            escalate_after_secs: None,
            added_at: Timestamp::from_unix(0),
            added_by: "t".into(),
        }
    }

    fn fleet(hosts: Vec<Host>) -> Found {
        Found {
            kind: TargetKind::Fleet,
            name: "web".parse().unwrap(),
            id: IdentityId(100),
            approvals_required: 1,
            max_hosts: MAX_PRINCIPALS,
            hosts,
            command: None,
            why_empty: "no host carries tag(s) web".into(),
            break_glass: false,
            escalate_after_secs: None,
        }
    }

    const BOTH: &[(GrantRole, &str)] = &[(GrantRole::Viewer, "ro"), (GrantRole::Editor, "deploy")];

    #[test]
    fn a_fleet_gets_one_principal_per_host_with_its_own_login() {
        let f = fleet(vec![
            host(2, "web-02", &["web"], &[(GrantRole::Viewer, "look")], 1),
            host(1, "web-01", &["web", "prod"], BOTH, 2),
        ]);
        let r = resolve(&f, Some(GrantRole::Viewer), Role::Viewer).unwrap();
        assert_eq!(
            r.scope.principals(),
            ["ro@web-01".to_string(), "look@web-02".to_string()]
        );
        assert_eq!(r.approvals_required, 2);
        assert_eq!(r.scope.production().len(), 1);
        // An editor base role elevates only if every host has an editor login; it does not
        // here, so the grant stays viewer everywhere.
        let r = resolve(&f, Some(GrantRole::Viewer), Role::Editor).unwrap();
        assert_eq!(r.effective_role, Some(GrantRole::Viewer));
        // Asking for editor leaves out the host with no editor login, and says so.
        let r = resolve(&f, Some(GrantRole::Editor), Role::Viewer).unwrap();
        assert_eq!(r.scope.principals(), ["deploy@web-01".to_string()]);
        assert_eq!(
            r.scope.left_out,
            ["web-02".parse::<crate::model::Name>().unwrap()]
        );
    }

    #[test]
    fn empty_oversized_and_loginless_targets_are_refused() {
        assert!(matches!(
            resolve(&fleet(vec![]), Some(GrantRole::Viewer), Role::Viewer),
            Err(Error::EmptyTarget { .. })
        ));
        let many: Vec<Host> = (1..=257)
            .map(|i| host(i, &format!("h-{i}"), &["web"], BOTH, 1))
            .collect();
        assert!(matches!(
            resolve(&fleet(many.clone()), Some(GrantRole::Viewer), Role::Viewer),
            Err(Error::TooManyHosts {
                hosts: 257,
                max: 256,
                ..
            })
        ));
        let r = resolve(
            &fleet(many[..256].to_vec()),
            Some(GrantRole::Viewer),
            Role::Viewer,
        );
        assert_eq!(r.unwrap().scope.hosts.len(), 256);
        let mut small = fleet(many[..3].to_vec());
        small.max_hosts = 2;
        assert!(matches!(
            resolve(&small, Some(GrantRole::Viewer), Role::Viewer),
            Err(Error::TooManyHosts {
                hosts: 3,
                max: 2,
                ..
            })
        ));
        let ro = fleet(vec![host(
            1,
            "a",
            &["web"],
            &[(GrantRole::Viewer, "ro")],
            1,
        )]);
        assert!(matches!(
            resolve(&ro, Some(GrantRole::Editor), Role::Viewer),
            Err(Error::NoLoginForRole { .. })
        ));
    }

    #[test]
    fn a_command_takes_no_role_and_carries_its_command_and_login() {
        let mut c = fleet(vec![
            host(1, "q-01", &["queue"], BOTH, 1),
            host(2, "q-02", &["queue"], &[], 1),
        ]);
        c.kind = TargetKind::Command;
        c.command = Some(("systemctl restart worker".into(), "ops".into()));
        assert!(matches!(
            resolve(&c, Some(GrantRole::Viewer), Role::Viewer),
            Err(Error::RoleForCommand { .. })
        ));
        let r = resolve(&c, None, Role::Owner).unwrap();
        assert_eq!(r.effective_role, None);
        assert_eq!(r.scope.command.as_deref(), Some("systemctl restart worker"));
        assert_eq!(
            r.scope.principals(),
            ["ops@q-01".to_string(), "ops@q-02".to_string()]
        );
        assert!(matches!(
            resolve(&fleet(vec![]), None, Role::Viewer),
            Err(Error::RoleMissing { .. })
        ));
    }
}
