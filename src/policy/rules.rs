//! Whether an auto-approval rule approves a request: every condition of the rule, checked
//! against the request as it would be granted now. A rule never approves a target that needs
//! two or more approvals (rule 17): dual authorization always needs people.

use crate::model::{Member, Timestamp, format_duration};
use crate::rule::{Rule, Who};
use crate::target::Found;

use super::Resolved;

/// A request as a rule sees it.
pub struct Candidate<'a> {
    pub requester: &'a Member,
    pub found: &'a Found,
    pub resolved: &'a Resolved,
    pub duration_secs: u64,
    pub risk: u8,
    pub now: Timestamp,
}

/// The values that matched, if `rule` approves `c`; otherwise the first condition that did
/// not hold.
pub fn check(rule: &Rule, c: &Candidate<'_>) -> Result<Vec<String>, String> {
    let scope = &c.resolved.scope;
    if c.resolved.approvals_required >= 2 {
        return Err(format!(
            "{} {} needs {} approvals, and rules never stand in for people where two or more are needed",
            c.found.kind, c.found.name, c.resolved.approvals_required
        ));
    }
    let mut matched = Vec::new();
    if rule.targets.contains(&c.found.name) {
        matched.push(format!("target {}", c.found.name));
    } else if !rule.tags.is_empty()
        && scope.hosts.iter().all(|h| {
            c.found
                .hosts
                .iter()
                .any(|fh| fh.id == h.id && fh.tags.iter().any(|t| rule.tags.contains(t)))
        })
    {
        let tags: Vec<&str> = rule.tags.iter().map(|t| t.as_str()).collect();
        matched.push(format!("every host tagged {}", tags.join(" or ")));
    } else {
        return Err(format!(
            "{} {} is not among its targets or tags",
            c.found.kind, c.found.name
        ));
    }
    match c.resolved.effective_role {
        Some(role) if role > rule.role => {
            return Err(format!("it approves {} at most, not {role}", rule.role));
        }
        Some(role) => matched.push(format!("role {role}")),
        None => matched.push("a fleet command".into()),
    }
    if c.duration_secs > rule.max_duration_secs {
        return Err(format!(
            "{} is longer than its {}",
            format_duration(c.duration_secs),
            format_duration(rule.max_duration_secs)
        ));
    }
    matched.push(format!(
        "duration {} <= {}",
        format_duration(c.duration_secs),
        format_duration(rule.max_duration_secs)
    ));
    if c.risk > rule.max_risk {
        return Err(format!("risk {} is above its {}", c.risk, rule.max_risk));
    }
    matched.push(format!("risk {} <= {}", c.risk, rule.max_risk));
    let m = c.requester;
    match &rule.who {
        Who::Anyone => {}
        Who::Member { name, id } if *id == m.id => matched.push(format!("requester {name}")),
        Who::Member { name, .. } => return Err(format!("it is only for {name}")),
        Who::BaseRole { role } if m.role >= *role => {
            matched.push(format!("base role {} >= {role}", m.role))
        }
        Who::BaseRole { role } => return Err(format!("it needs base role {role} or higher")),
        Who::Kind { kind } if *kind == m.kind => matched.push(format!("kind {kind}")),
        Who::Kind { kind } => return Err(format!("it is only for {kind}s")),
    }
    if let Some(w) = &rule.window {
        let (inside, local) = w.contains(c.now);
        if !inside {
            return Err(format!("{local} is outside {}", w.describe()));
        }
        matched.push(format!("{local} in {}", w.describe()));
    }
    if let Some(cap) = rule.cap {
        let used = rule.uses_in_period(c.now) as u32;
        if used >= cap.max {
            return Err(format!(
                "its {} uses per {} are taken",
                cap.max,
                format_duration(cap.per_secs)
            ));
        }
        matched.push(format!(
            "use {} of {} per {}",
            used + 1,
            cap.max,
            format_duration(cap.per_secs)
        ));
    }
    Ok(matched)
}

/// The first rule (by name) that approves `c`, with what matched; or why none did.
pub fn first_match<'r>(
    rules: &'r [Rule],
    c: &Candidate<'_>,
) -> Result<(&'r Rule, Vec<String>), Vec<String>> {
    let mut why = Vec::new();
    for r in rules {
        match check(r, c) {
            Ok(m) => return Ok((r, m)),
            Err(e) => why.push(format!("rule {}: {e}", r.name)),
        }
    }
    Err(why)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{GrantRole, Host, IdentityId, Name, Role};
    use crate::policy::resolve;
    use crate::rule::{UseCap, Window};
    use crate::target::TargetKind;
    use crate::verdict::MemberKind;

    /// Monday 2026-11-23 10:00 UTC.
    const MONDAY: Timestamp = Timestamp::from_unix(1_795_428_000);

    fn host(id: u64, name: &str, tags: &[&str], approvals: u32) -> Host {
        Host {
            id: IdentityId(id),
            name: name.parse().unwrap(),
            address: "10.0.0.1".into(),
            port: 22,
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
            logins: BTreeMap::from([
                (GrantRole::Viewer, "ro".into()),
                (GrantRole::Editor, "deploy".into()),
            ]),
            approvals_required: approvals,
            break_glass: false,
            escalate_after_secs: None,
            added_at: MONDAY,
            added_by: "t".into(),
        }
    }

    fn member(role: Role, kind: MemberKind) -> Member {
        Member {
            id: IdentityId(7),
            name: "alice".parse().unwrap(),
            role,
            kind,
            keys: vec![],
            key_fingerprints: vec![],
            key_added_by: vec![],
            added_at: MONDAY,
            added_by: "t".into(),
        }
    }

    fn rule() -> Rule {
        Rule {
            id: IdentityId(90),
            name: "dev".parse().unwrap(),
            targets: vec![],
            tags: vec!["dev".parse().unwrap()],
            role: GrantRole::Viewer,
            max_duration_secs: 7200,
            max_risk: 30,
            who: Who::Anyone,
            cap: None,
            window: None,
            uses: vec![],
            added_at: MONDAY,
            added_by: "olga".into(),
        }
    }

    /// Checks `rule` against a request by `m` for `role` on `hosts` (as fleet `devs`).
    fn check_on(
        rule: &Rule,
        m: &Member,
        hosts: Vec<Host>,
        role: GrantRole,
        secs: u64,
        risk: u8,
        now: Timestamp,
    ) -> Result<Vec<String>, String> {
        let found = Found {
            kind: TargetKind::Fleet,
            name: "devs".parse().unwrap(),
            id: IdentityId(50),
            approvals_required: 1,
            max_hosts: 256,
            hosts,
            command: None,
            why_empty: String::new(),
            break_glass: false,
            escalate_after_secs: None,
        };
        let resolved = resolve(&found, Some(role), m.role).unwrap();
        check(
            rule,
            &Candidate {
                requester: m,
                found: &found,
                resolved: &resolved,
                duration_secs: secs,
                risk,
                now,
            },
        )
    }

    #[test]
    fn a_rule_matches_only_when_every_condition_holds() {
        let alice = member(Role::Viewer, MemberKind::Human);
        let dev = || {
            vec![
                host(1, "dev-01", &["dev"], 1),
                host(2, "dev-02", &["dev", "x"], 1),
            ]
        };
        let m = check_on(&rule(), &alice, dev(), GrantRole::Viewer, 3600, 10, MONDAY).unwrap();
        assert_eq!(
            m,
            [
                "every host tagged dev",
                "role viewer",
                "duration 1h <= 2h",
                "risk 10 <= 30"
            ]
        );
        let refused = |hosts, role, secs, risk| {
            check_on(&rule(), &alice, hosts, role, secs, risk, MONDAY).unwrap_err()
        };
        let mixed = vec![
            host(1, "dev-01", &["dev"], 1),
            host(3, "prod-01", &["prod"], 1),
        ];
        assert!(
            refused(mixed, GrantRole::Viewer, 3600, 10).contains("not among its targets or tags")
        );
        assert!(refused(dev(), GrantRole::Editor, 3600, 10).contains("viewer at most, not editor"));
        assert!(refused(dev(), GrantRole::Viewer, 7201, 10).contains("longer than its 2h"));
        assert!(refused(dev(), GrantRole::Viewer, 3600, 31).contains("risk 31 is above its 30"));
        // Two approvals needed anywhere in the scope: never a rule.
        let dual = vec![host(1, "dev-01", &["dev"], 2)];
        assert!(
            refused(dual, GrantRole::Viewer, 3600, 0).contains("rules never stand in for people")
        );
    }

    #[test]
    fn who_window_and_cap_are_checked() {
        let alice = member(Role::Viewer, MemberKind::Human);
        let dev = || vec![host(1, "dev-01", &["dev"], 1)];
        let with = |f: &dyn Fn(&mut Rule)| {
            let mut r = rule();
            f(&mut r);
            r
        };
        let ok = |r: &Rule, m: &Member, now| check_on(r, m, dev(), GrantRole::Viewer, 600, 0, now);
        let someone_else = with(&|r| {
            r.who = Who::Member {
                name: "bob".parse().unwrap(),
                id: IdentityId(8),
            }
        });
        assert!(ok(&someone_else, &alice, MONDAY).is_err());
        let her = with(&|r| {
            r.who = Who::Member {
                name: "alice".parse().unwrap(),
                id: IdentityId(7),
            }
        });
        assert!(ok(&her, &alice, MONDAY).is_ok());
        let admins = with(&|r| r.who = Who::BaseRole { role: Role::Admin });
        assert!(ok(&admins, &alice, MONDAY).is_err());
        let bots = with(&|r| {
            r.who = Who::Kind {
                kind: MemberKind::Bot,
            }
        });
        assert!(ok(&bots, &alice, MONDAY).is_err());
        assert!(ok(&bots, &member(Role::Viewer, MemberKind::Bot), MONDAY).is_ok());
        let office = with(&|r| {
            r.window = Some(
                Window::parse(
                    Some("mon-fri"),
                    Some("09:00-18:00"),
                    Some("America/New_York"),
                )
                .unwrap(),
            )
        });
        // 10:00 UTC is 05:00 in New York; 15:00 UTC is 10:00 there.
        assert!(
            ok(&office, &alice, MONDAY)
                .unwrap_err()
                .contains("mon 05:00 America/New_York is outside")
        );
        assert!(ok(&office, &alice, MONDAY.plus(5 * 3600)).is_ok());
        let mut capped = with(&|r| {
            r.cap = Some(UseCap {
                max: 2,
                per_secs: 3600,
            })
        });
        for i in 0..2 {
            let m = ok(&capped, &alice, MONDAY.plus(i)).unwrap();
            assert_eq!(m.last().unwrap(), &format!("use {} of 2 per 1h", i + 1));
            capped.record_use(MONDAY.plus(i));
        }
        assert!(
            ok(&capped, &alice, MONDAY.plus(10))
                .unwrap_err()
                .contains("uses per 1h are taken")
        );
        // A use counts for exactly its period.
        assert!(ok(&capped, &alice, MONDAY.plus(3599)).is_err());
        assert!(ok(&capped, &alice, MONDAY.plus(3600)).is_ok());
        assert_eq!(capped.uses_left(MONDAY.plus(3601)), Some(2));
    }

    #[test]
    fn named_targets_and_commands_match_by_name() {
        let alice = member(Role::Viewer, MemberKind::Human);
        let mut r = rule();
        r.tags.clear();
        r.targets = vec!["devs".parse::<Name>().unwrap()];
        let prod = vec![host(1, "p-01", &["prod"], 1)];
        let m = check_on(&r, &alice, prod, GrantRole::Viewer, 600, 0, MONDAY).unwrap();
        assert_eq!(m[0], "target devs");
    }
}
