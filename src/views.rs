//! How records look to users: the `--json` objects (a contract) and their text forms.

use serde_json::{Value, json};

use crate::justify;
use crate::model::{
    Decision, Grant, Host, Member, Request, RequestState, Timestamp, format_duration,
};

/// Where a grant's window stands at `now`.
pub fn grant_status(g: &Grant, now: Timestamp) -> &'static str {
    if g.ended.is_some() && now < g.end {
        "ended"
    } else if now < g.start {
        "scheduled"
    } else if now < g.end {
        "active"
    } else {
        "expired"
    }
}

/// The request object of `--json` output (its field names are a contract: add, never rename).
pub fn request_json(r: &Request, now: Timestamp) -> Value {
    let grant = r.grant().map(|g| {
        json!({
            "start": g.start,
            "end": g.end,
            "effective_role": g.effective_role,
            "logins": [g.login],
            "status": grant_status(g, now),
            "seconds_left": now.until(g.end).max(0),
            "certificates": g.certificates,
            "ended": g.ended,
        })
    });
    let mut v = json!({
        "id": r.id,
        "state": r.state_at(now),
        "requester": r.requester,
        "resource": r.resource,
        "role": r.role,
        "duration_secs": r.duration_secs,
        "reason": r.reason,
        "requested_start": r.requested_start,
        "justification": r.justification,
        "created_at": r.created_at,
        "pending_until": r.pending_until,
        "approvals": r.approvals.iter().map(|a| json!({"by": a.by, "at": a.at, "comment": a.comment})).collect::<Vec<_>>(),
        "approvals_required": r.approvals_required,
        "grant": grant,
    });
    if r.state_at(now) == RequestState::Pending {
        v["pending_seconds_left"] = json!(now.until(r.pending_until).max(0));
    }
    match &r.decision {
        Decision::Denied { by, at, reason } => {
            v["denial"] = json!({"by": by, "at": at, "reason": reason});
        }
        Decision::Cancelled { at, by, reason } => {
            v["cancelled_at"] = json!(at);
            if let Some(by) = by {
                v["cancelled_by"] = json!(by);
            }
            if let Some(reason) = reason {
                v["cancel_reason"] = json!(reason);
            }
        }
        _ => {}
    }
    v
}

/// A request in full, for people.
pub fn request_text(r: &Request, now: Timestamp) -> String {
    let state = r.state_at(now);
    let mut s = format!("request {}: {}\n", r.id, state);
    s.push_str(&format!("  requester      {}\n", r.requester));
    s.push_str(&format!("  host           {}\n", r.resource));
    s.push_str(&format!(
        "  role           {} for {}\n",
        r.role,
        format_duration(r.duration_secs)
    ));
    if let Some(t) = r.requested_start {
        s.push_str(&format!("  not before     {t}\n"));
    }
    s.push_str(&format!("  reason         {}\n", r.reason));
    s.push_str(&format!("  justification  {}\n", r.justification.text));
    if !r.justification.flags.is_empty() {
        let flags: Vec<String> = r
            .justification
            .flags
            .iter()
            .map(|f| format!("{f} ({})", justify::describe(f)))
            .collect();
        s.push_str(&format!("  flags          {}\n", flags.join(", ")));
    }
    let by: Vec<String> = r
        .approvals
        .iter()
        .map(|a| format!("{} at {}", a.by, a.at))
        .collect();
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
        Decision::Approved { grant } => s.push_str(&format!(
            "  grant          {} to {} as {} ({}, {})\n",
            grant.start,
            grant.end,
            grant.login,
            grant.effective_role,
            window_note(grant, now)
        )),
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

fn window_note(g: &Grant, now: Timestamp) -> String {
    match grant_status(g, now) {
        "scheduled" => format!("starts in {}", format_duration(now.until(g.start) as u64)),
        "active" => format!("{} left", format_duration(now.until(g.end) as u64)),
        "ended" => match &g.ended {
            Some(e) => format!("ended at {} by {}: {}", e.at, e.by, e.reason),
            None => "ended".into(),
        },
        _ => "expired".into(),
    }
}

/// Requests as a table, one line each.
pub fn requests_table(rs: &[Request], now: Timestamp) -> String {
    if rs.is_empty() {
        return "no requests\n".into();
    }
    let mut s = format!(
        "{:<6} {:<9} {:<12} {:<14} {:<7} {:<8} {:<9} {}\n",
        "ID", "STATE", "REQUESTER", "HOST", "ROLE", "FOR", "APPROVALS", "NOTE"
    );
    for r in rs {
        let note = match (r.state_at(now), r.grant()) {
            (RequestState::Pending, _) => format!(
                "{} left to decide; flags: {}",
                format_duration(now.until(r.pending_until).max(0) as u64),
                if r.justification.flags.is_empty() {
                    "none".into()
                } else {
                    r.justification.flags.join(",")
                }
            ),
            (_, Some(g)) => format!("{} as {}", window_note(g, now), g.login),
            _ => String::new(),
        };
        s.push_str(&format!(
            "{:<6} {:<9} {:<12} {:<14} {:<7} {:<8} {:<9} {}\n",
            r.id,
            r.state_at(now).as_str(),
            r.requester.as_str(),
            r.resource.as_str(),
            r.role.as_str(),
            format_duration(r.duration_secs),
            format!("{}/{}", r.approvals.len(), r.approvals_required),
            note
        ));
    }
    s
}

pub fn member_json(m: &Member) -> Value {
    json!({
        "id": m.id,
        "name": m.name,
        "role": m.role,
        "key_fingerprints": m.key_fingerprints,
        "added_at": m.added_at,
        "added_by": m.added_by,
    })
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

pub fn host_json(h: &Host) -> Value {
    let logins: serde_json::Map<String, Value> = h
        .logins
        .iter()
        .map(|(r, l)| (r.to_string(), json!(l)))
        .collect();
    json!({
        "id": h.id,
        "name": h.name,
        "address": h.address,
        "port": h.port,
        "tags": h.tags,
        "logins": logins,
        "approvals_required": h.approvals_required,
        "added_at": h.added_at,
    })
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
