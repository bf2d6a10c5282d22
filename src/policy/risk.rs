//! The risk score: a deterministic 0-100 for every request, from its scope, its window, its
//! justification's flags, the time of day and the requester's recent history, with each
//! factor named so approvers (and rules) can see why.

use chrono::{Datelike, TimeZone, Timelike, Utc};

use crate::model::{GrantRole, Timestamp};
use crate::verdict::{Risk, RiskFactor};

use super::Resolved;

/// What the requester did lately, as the broker found it before the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Their requests denied in the last 30 days.
    pub recent_denials: u32,
    /// Their break-glass grants still waiting for review.
    pub unreviewed_break_glass: u32,
    /// Those whose review is overdue: they block the next break-glass.
    pub overdue_break_glass: Vec<u64>,
}

/// How far back denials count.
pub const DENIALS_WINDOW_SECS: i64 = 30 * 86400;

/// Scores a request whose scope, if approved now, is `resolved`.
pub fn score(
    resolved: &Resolved,
    duration_secs: u64,
    flags: &[String],
    break_glass: bool,
    history: &History,
    now: Timestamp,
) -> Risk {
    let mut factors = Vec::new();
    let mut add = |factor: String, points: u8| factors.push(RiskFactor { factor, points });
    let scope = &resolved.scope;
    if !scope.production().is_empty() {
        add("production hosts".into(), 25);
    }
    match scope.hosts.len() {
        0 | 1 => {}
        n @ 2..=10 => add(format!("{n} hosts"), 5),
        n @ 11..=50 => add(format!("{n} hosts"), 10),
        n => add(format!("{n} hosts"), 15),
    }
    match (resolved.effective_role, &scope.command) {
        (Some(GrantRole::Editor), _) => add("editor access".into(), 15),
        (None, Some(_)) => add("a fleet command".into(), 5),
        _ => {}
    }
    if duration_secs > 8 * 3600 {
        add("window over 8h".into(), 15);
    } else if duration_secs > 2 * 3600 {
        add("window over 2h".into(), 5);
    }
    for f in flags {
        match f.as_str() {
            "short_reason" => add("short reason".into(), 5),
            "no_ticket_reference" => add("no ticket reference".into(), 10),
            "generic_reason" => add("generic reason".into(), 10),
            _ => {}
        }
    }
    if off_hours(now) {
        add("outside 07:00-20:00 UTC on weekdays".into(), 10);
    }
    if break_glass {
        add("break-glass".into(), 15);
    }
    if history.recent_denials > 0 {
        let n = history.recent_denials.min(3);
        add(format!("{n} denial(s) in 30 days"), (n * 5) as u8);
    }
    if history.unreviewed_break_glass > 0 {
        let n = history.unreviewed_break_glass.min(2);
        add(format!("{n} unreviewed break-glass"), (n * 10) as u8);
    }
    let total: u32 = factors.iter().map(|f| u32::from(f.points)).sum();
    Risk {
        score: total.min(100) as u8,
        factors,
    }
}

/// Nights and weekends, in UTC.
fn off_hours(now: Timestamp) -> bool {
    match Utc.timestamp_opt(now.unix(), 0).single() {
        Some(t) => t.weekday().num_days_from_monday() >= 5 || t.hour() < 7 || t.hour() >= 20,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IdentityId, Name};
    use crate::target::{Scope, ScopeHost};

    fn resolved(hosts: usize, production: bool, role: Option<GrantRole>) -> Resolved {
        let host = |i: usize| ScopeHost {
            id: IdentityId(i as u64),
            name: format!("h-{i}").parse::<Name>().unwrap(),
            address: "10.0.0.1".into(),
            port: 22,
            login: "ro".into(),
            production: production && i == 0,
        };
        Resolved {
            scope: Scope {
                hosts: (0..hosts).map(host).collect(),
                command: role.is_none().then(|| "uptime".to_string()),
                left_out: vec![],
            },
            effective_role: role,
            approvals_required: 1,
        }
    }

    /// Monday 2026-11-23 10:00 UTC.
    const WORKDAY: Timestamp = Timestamp::from_unix(1_795_428_000);

    #[test]
    fn a_small_daytime_viewer_request_with_a_ticket_scores_zero() {
        let r = score(
            &resolved(1, false, Some(GrantRole::Viewer)),
            3600,
            &[],
            false,
            &History::default(),
            WORKDAY,
        );
        assert_eq!(r, Risk::default());
    }

    #[test]
    fn each_factor_adds_what_it_says() {
        let flags = vec![
            "short_reason".to_string(),
            "no_ticket_reference".to_string(),
        ];
        let history = History {
            recent_denials: 5,
            unreviewed_break_glass: 1,
            overdue_break_glass: vec![],
        };
        let night = WORKDAY.plus(12 * 3600);
        let r = score(
            &resolved(12, true, Some(GrantRole::Editor)),
            9 * 3600,
            &flags,
            true,
            &history,
            night,
        );
        let points: Vec<(&str, u8)> = r
            .factors
            .iter()
            .map(|f| (f.factor.as_str(), f.points))
            .collect();
        assert_eq!(
            points,
            [
                ("production hosts", 25),
                ("12 hosts", 10),
                ("editor access", 15),
                ("window over 8h", 15),
                ("short reason", 5),
                ("no ticket reference", 10),
                ("outside 07:00-20:00 UTC on weekdays", 10),
                ("break-glass", 15),
                ("3 denial(s) in 30 days", 15),
                ("1 unreviewed break-glass", 10),
            ]
        );
        assert_eq!(r.score, 100, "capped");
        let cmd = score(
            &resolved(2, false, None),
            1800,
            &[],
            false,
            &History::default(),
            WORKDAY,
        );
        assert_eq!(
            (cmd.score, cmd.explain().as_str()),
            (10, "10 (2 hosts +5, a fleet command +5)")
        );
        // Saturday daytime is off hours too.
        let sat = score(
            &resolved(1, false, Some(GrantRole::Viewer)),
            600,
            &[],
            false,
            &History::default(),
            WORKDAY.plus(5 * 86400),
        );
        assert_eq!(sat.score, 10);
    }
}
