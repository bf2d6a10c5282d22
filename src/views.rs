//! How records look to users: the `--json` objects of [`crate::contract`] built from the
//! records, and their text forms for people.

use crate::contract::{
    ApprovalView, CommandView, DenialView, EndedView, FleetView, GrantStatus, GrantView, HostView,
    MemberView, RequestView, RuleView,
};
use crate::justify;
use crate::model::{
    Decision, Grant, Host, Member, Request, RequestState, Timestamp, escape_for_log,
    format_duration,
};
use crate::rule::Rule;
use crate::target::{Fleet, FleetCommand, Scope};
use crate::verdict::MemberKind;

/// Where a grant's window stands at `now`.
pub fn grant_status(g: &Grant, now: Timestamp) -> GrantStatus {
    if g.ended.is_some() && now < g.end {
        GrantStatus::Ended
    } else if now < g.start {
        GrantStatus::Scheduled
    } else if now < g.end {
        GrantStatus::Active
    } else {
        GrantStatus::Expired
    }
}

/// The request object of the contract, as of `now`.
pub fn request_view(r: &Request, now: Timestamp) -> RequestView {
    let state = r.state_at(now);
    let grant = r.grant().map(|g| GrantView {
        start: g.start,
        end: g.end,
        effective_role: g.effective_role,
        logins: g.scope.logins(),
        hosts: g.scope.hosts.clone(),
        command: g.scope.command.clone(),
        left_out: g.scope.left_out.clone(),
        status: grant_status(g, now),
        seconds_left: now.until(g.end).max(0) as u64,
        certificates: g.certificates,
        ended: g.ended.as_ref().map(|e| EndedView {
            at: e.at,
            by: e.by.clone(),
            reason: e.reason.clone(),
        }),
    });
    let mut v = RequestView {
        id: r.id,
        state,
        requester: r.requester.clone(),
        kind: r.kind,
        resource: r.resource.clone(),
        role: r.role,
        duration_secs: r.duration_secs,
        reason: r.reason.clone(),
        requested_start: r.requested_start,
        justification: r.justification.clone(),
        created_at: r.created_at,
        pending_until: r.pending_until,
        pending_seconds_left: (state == RequestState::Pending)
            .then(|| now.until(r.pending_until).max(0) as u64),
        approvals: r
            .approvals
            .iter()
            .map(|a| ApprovalView {
                by: a.by.clone(),
                at: a.at,
                comment: a.comment.clone(),
            })
            .collect(),
        approvals_required: r.approvals_required,
        grant,
        denial: None,
        cancelled_at: None,
        cancelled_by: None,
        cancel_reason: None,
        risk: r.risk.clone(),
        requester_kind: r.requester_kind,
        approved_by_rule: r.approved_by_rule.clone(),
        break_glass: r.break_glass,
        review_due: r.review_due,
        review: r.review.clone(),
        escalated: r.escalated_at(now),
        escalate_at: r.escalate_at,
        approvers: None,
        certificates: None,
        would_grant: None,
    };
    match &r.decision {
        Decision::Denied { by, at, reason } => {
            v.denial = Some(DenialView {
                by: by.clone(),
                at: *at,
                reason: reason.clone(),
            });
        }
        Decision::Cancelled { at, by, reason } => {
            v.cancelled_at = Some(*at);
            v.cancelled_by = by.clone();
            v.cancel_reason = reason.clone();
        }
        Decision::Pending | Decision::Approved { .. } => {}
    }
    v
}

/// A request in full, for people.
pub fn request_text(r: &Request, now: Timestamp) -> String {
    let state = r.state_at(now);
    let mut s = format!("request {}: {}\n", r.id, state);
    s.push_str(&format!("  requester      {}\n", r.requester));
    s.push_str(&format!("  {:<14} {}\n", r.kind.as_str(), r.resource));
    s.push_str(&format!(
        "  {:<14} {} for {}\n",
        if r.role.is_some() { "role" } else { "access" },
        role_label(r),
        format_duration(r.duration_secs)
    ));
    if let Some(t) = r.requested_start {
        s.push_str(&format!("  not before     {t}\n"));
    }
    let marks = marks(r, now);
    if !marks.is_empty() {
        s.push_str(&format!("  note           {}\n", marks.join("; ")));
    }
    s.push_str(&format!("  reason         {}\n", r.reason));
    s.push_str(&format!("  risk           {}\n", r.risk.explain()));
    match &r.justification.model {
        Some(m) => s.push_str(&format!(
            "  justification  [written by the model {}] {}\n",
            escape_for_log(m),
            r.justification.text
        )),
        None => s.push_str(&format!("  justification  {}\n", r.justification.text)),
    }
    if !r.justification.flags.is_empty() {
        let flags: Vec<String> = r
            .justification
            .flags
            .iter()
            .map(|f| format!("{f} ({})", justify::describe(f)))
            .collect();
        s.push_str(&format!("  flags          {}\n", flags.join(", ")));
    }
    let mut by: Vec<String> = r
        .approvals
        .iter()
        .map(|a| format!("{} at {}", a.by, a.at))
        .collect();
    if let Some(rule) = &r.approved_by_rule {
        by.push(format!(
            "rule:{} at {}, matched {}",
            rule.rule,
            rule.at,
            rule.matched.join(", ")
        ));
    }
    s.push_str(&format!(
        "  approvals      {}/{}{}\n",
        r.approvals.len(),
        r.approvals_required,
        if by.is_empty() {
            String::new()
        } else {
            format!(" ({})", by.join(", "))
        }
    ));
    match &r.decision {
        Decision::Pending if state == RequestState::Pending => s.push_str(&format!(
            "  decide by      {} ({} left)\n",
            r.pending_until,
            format_duration(now.until(r.pending_until).max(0) as u64)
        )),
        Decision::Pending => s.push_str(&format!("  expired at     {}\n", r.pending_until)),
        Decision::Approved { grant } => {
            if let Some(rv) = &r.review {
                s.push_str(&format!(
                    "  review         {} by {} at {}{}: {}\n",
                    rv.verdict,
                    rv.by,
                    rv.at,
                    if rv.late { " (late)" } else { "" },
                    rv.comment
                ));
            }
            s.push_str(&format!(
                "  grant          {} to {} ({}, {})\n",
                grant.start,
                grant.end,
                grant.effective_role.map_or("command", |r| r.as_str()),
                window_note(grant, now)
            ));
            s.push_str(&scope_text(&grant.scope));
        }
        Decision::Denied { by, at, reason } => {
            s.push_str(&format!("  denied         by {by} at {at}: {reason}\n"))
        }
        Decision::Cancelled { at, by, reason } => {
            s.push_str(&format!("  cancelled      at {at}"));
            if let Some(by) = by {
                s.push_str(&format!(" by {by}"));
            }
            if let Some(reason) = reason {
                s.push_str(&format!(": {reason}"));
            }
            s.push('\n');
        }
    }
    s
}

/// The role a request asks for, or `command` for a fleet command.
pub fn role_label(r: &Request) -> &'static str {
    r.role.map_or("command", |r| r.as_str())
}

/// The lines of `show` that spell out a scope: every host with its login, the forced
/// command, and the hosts left out.
pub fn scope_text(scope: &Scope) -> String {
    let mut s = String::new();
    let hosts: Vec<String> = scope
        .hosts
        .iter()
        .map(|h| {
            format!(
                "{}@{}{}",
                h.login,
                h.name,
                if h.production { " (production)" } else { "" }
            )
        })
        .collect();
    s.push_str(&format!(
        "  hosts          {} ({})\n",
        hosts.len(),
        hosts.join(", ")
    ));
    if let Some(run) = &scope.command {
        s.push_str(&format!("  runs only      {run}\n"));
    }
    if !scope.left_out.is_empty() {
        let left: Vec<&str> = scope.left_out.iter().map(|n| n.as_str()).collect();
        s.push_str(&format!(
            "  left out       {} (no login for the role)\n",
            left.join(", ")
        ));
    }
    s
}

fn window_note(g: &Grant, now: Timestamp) -> String {
    match (grant_status(g, now), &g.ended) {
        (GrantStatus::Scheduled, _) => {
            format!("starts in {}", format_duration(now.until(g.start) as u64))
        }
        (GrantStatus::Active, _) => format!("{} left", format_duration(now.until(g.end) as u64)),
        (GrantStatus::Ended, Some(e)) => format!("ended at {} by {}: {}", e.at, e.by, e.reason),
        (GrantStatus::Ended, None) => "ended".into(),
        (GrantStatus::Expired, _) => "expired".into(),
    }
}

/// Requests as a table, one line each.
pub fn requests_table(rs: &[Request], now: Timestamp) -> String {
    if rs.is_empty() {
        return "no requests\n".into();
    }
    let mut s = format!(
        "{:<6} {:<9} {:<12} {:<14} {:<7} {:<8} {:<4} {:<9} {}\n",
        "ID", "STATE", "REQUESTER", "TARGET", "ROLE", "FOR", "RISK", "APPROVALS", "NOTE"
    );
    for r in rs {
        let mut note = marks(r, now);
        note.push(match (r.state_at(now), r.grant()) {
            (RequestState::Pending, _) => format!(
                "{} left to decide; flags: {}",
                format_duration(now.until(r.pending_until).max(0) as u64),
                if r.justification.flags.is_empty() {
                    "none".into()
                } else {
                    r.justification.flags.join(",")
                }
            ),
            (_, Some(g)) => format!(
                "{} on {} host(s) as {}",
                window_note(g, now),
                g.scope.hosts.len(),
                g.scope.logins().join(",")
            ),
            _ => String::new(),
        });
        let approvals = match (&r.approved_by_rule, r.break_glass) {
            (Some(_), _) => "rule".to_string(),
            (_, true) => "none".to_string(),
            _ => format!("{}/{}", r.approvals.len(), r.approvals_required),
        };
        s.push_str(&format!(
            "{:<6} {:<9} {:<12} {:<14} {:<7} {:<8} {:<4} {:<9} {}\n",
            r.id,
            r.state_at(now).as_str(),
            r.requester.as_str(),
            r.resource.as_str(),
            role_label(r),
            format_duration(r.duration_secs),
            r.risk.score,
            approvals,
            note.join("; ")
        ));
    }
    s
}

/// What an approver must notice first: `ESCALATED`, `BREAK-GLASS, review OVERDUE since T`,
/// `approved by rule NAME`, `from a bot`.
pub fn marks(r: &Request, now: Timestamp) -> Vec<String> {
    let mut m = Vec::new();
    if r.escalated_at(now) {
        m.push("ESCALATED".to_string());
    }
    if r.break_glass {
        m.push(match (&r.review, r.review_due) {
            (Some(rv), _) => format!("BREAK-GLASS, reviewed {} by {}", rv.verdict, rv.by),
            (None, Some(due)) if now >= due => format!("BREAK-GLASS, review OVERDUE since {due}"),
            (None, Some(due)) => format!("BREAK-GLASS, review due by {due}"),
            (None, None) => "BREAK-GLASS".to_string(),
        });
    }
    if let Some(by) = &r.approved_by_rule {
        m.push(format!("approved by rule {}", by.rule));
    }
    if r.requester_kind == MemberKind::Bot {
        m.push("from a bot".to_string());
    }
    m
}

/// The member object of the contract.
pub fn member_view(m: &Member) -> MemberView {
    MemberView {
        id: m.id,
        name: m.name.clone(),
        role: m.role,
        kind: m.kind,
        key_fingerprints: m.key_fingerprints.clone(),
        added_at: m.added_at,
        added_by: m.added_by.clone(),
    }
}

pub fn members_table(ms: &[Member]) -> String {
    let mut s = format!("{:<16} {:<7} {}\n", "NAME", "ROLE", "KEYS");
    for m in ms {
        s.push_str(&format!(
            "{:<16} {:<7} {}\n",
            m.name.as_str(),
            m.role.as_str(),
            m.key_fingerprints.join(" ")
        ));
    }
    s
}

/// The host object of the contract.
pub fn host_view(h: &Host) -> HostView {
    HostView {
        id: h.id,
        name: h.name.clone(),
        address: h.address.clone(),
        port: h.port,
        tags: h.tags.clone(),
        logins: h.logins.clone(),
        approvals_required: h.approvals_required,
        added_at: h.added_at,
    }
}

pub fn hosts_table(hs: &[Host]) -> String {
    let mut s = format!(
        "{:<16} {:<24} {:<16} {:<28} {}\n",
        "NAME", "ADDRESS", "TAGS", "LOGINS", "APPROVALS"
    );
    for h in hs {
        let tags: Vec<&str> = h.tags.iter().map(|t| t.as_str()).collect();
        let logins: Vec<String> = h.logins.iter().map(|(r, l)| format!("{r}={l}")).collect();
        s.push_str(&format!(
            "{:<16} {:<24} {:<16} {:<28} {}\n",
            h.name.as_str(),
            format!("{}:{}", h.address, h.port),
            if tags.is_empty() {
                "-".into()
            } else {
                tags.join(",")
            },
            logins.join(","),
            h.approvals_required
        ));
    }
    s
}

/// The fleet object of the contract, with the hosts it covers now.
pub fn fleet_view(f: &Fleet, hosts: Vec<crate::model::Name>) -> FleetView {
    FleetView {
        id: f.id,
        name: f.name.clone(),
        tags: f.tags.clone(),
        approvals_required: f.approvals_required,
        max_hosts: f.max_hosts,
        hosts,
        added_at: f.added_at,
        added_by: f.added_by.clone(),
    }
}

pub fn fleets_table(fs: &[FleetView]) -> String {
    if fs.is_empty() {
        return "no fleets yet; an owner or admin adds them with 'fleet add NAME --tag T'\n".into();
    }
    let mut s = format!(
        "{:<16} {:<20} {:<6} {:<10} {}\n",
        "NAME", "TAGS", "HOSTS", "APPROVALS", "MAX HOSTS"
    );
    for f in fs {
        let tags: Vec<&str> = f.tags.iter().map(|t| t.as_str()).collect();
        s.push_str(&format!(
            "{:<16} {:<20} {:<6} {:<10} {}\n",
            f.name.as_str(),
            tags.join(","),
            f.hosts.len(),
            f.approvals_required,
            f.max_hosts
        ));
    }
    s
}

/// The command object of the contract, with the hosts it runs on now.
pub fn command_view(c: &FleetCommand, hosts: Vec<crate::model::Name>) -> CommandView {
    CommandView {
        id: c.id,
        name: c.name.clone(),
        on_kind: c.on_kind,
        on: c.on.clone(),
        run: c.run.clone(),
        login: c.login.clone(),
        approvals_required: c.approvals_required,
        hosts,
        added_at: c.added_at,
        added_by: c.added_by.clone(),
    }
}

pub fn commands_table(cs: &[CommandView]) -> String {
    if cs.is_empty() {
        return "no commands yet; an owner or admin adds them with 'command add NAME --fleet F --run LINE --login USER'\n".into();
    }
    let mut s = format!(
        "{:<16} {:<18} {:<10} {:<6} {:<10} {}\n",
        "NAME", "ON", "LOGIN", "HOSTS", "APPROVALS", "RUNS"
    );
    for c in cs {
        s.push_str(&format!(
            "{:<16} {:<18} {:<10} {:<6} {:<10} {}\n",
            c.name.as_str(),
            format!("{} {}", c.on_kind, c.on),
            c.login,
            c.hosts.len(),
            c.approvals_required,
            c.run
        ));
    }
    s
}

/// The rule object of the contract, as of `now`.
pub fn rule_view(r: &Rule, now: Timestamp) -> RuleView {
    RuleView {
        id: r.id,
        name: r.name.clone(),
        conditions: r.conditions(),
        uses_left: r.uses_left(now),
        added_at: r.added_at,
        added_by: r.added_by.clone(),
    }
}

pub fn rules_table(rs: &[Rule], now: Timestamp) -> String {
    if rs.is_empty() {
        return "no rules; an owner adds them with 'rule add NAME --target T ...'\n".into();
    }
    let mut s = format!("{:<16} {:<10} {}\n", "NAME", "USES LEFT", "APPROVES WHEN");
    for r in rs {
        s.push_str(&format!(
            "{:<16} {:<10} {}\n",
            r.name.as_str(),
            r.uses_left(now).map_or("-".to_string(), |n| n.to_string()),
            r.conditions().join("; ")
        ));
    }
    s
}
