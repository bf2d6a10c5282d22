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
        Who::Kind { kind } if *kind == m.kind => matched.push(format!("a {kind}")),
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
