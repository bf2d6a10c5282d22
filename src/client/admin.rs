//! `sshjit-broker admin`: any broker command, run remotely as the approver, with a pending-requests
//! table and a confirmation before an approval.

use std::io::{BufRead, IsTerminal, Write};

use super::Settings;
use super::conn::{Connection, quote_line};
use crate::contract::{RequestView, WhoamiView};
use crate::error::{Error, Result};
use crate::justify;
use crate::model::{RequestState, format_duration};
use crate::target::Scope;

/// What `admin` printed, and its exit status.
pub struct AdminOutput {
    pub stdout: String,
    pub stderr: String,
    pub status: u32,
}

/// Runs `words` on the broker as the approver.
pub async fn run(
    settings: &Settings,
    words: &[String],
    json: bool,
    yes: bool,
) -> Result<AdminOutput> {
    let conn = Connection::open(settings).await?;
    let mut args: Vec<&str> = words.iter().map(String::as_str).collect();
    let help = args.iter().any(|a| matches!(*a, "--help" | "-h" | "help"));
    let has_state = args
        .iter()
        .any(|a| *a == "--state" || a.starts_with("--state=") || *a == "--review");
    if args.first() == Some(&"requests") && !has_state && !help {
        // Approvers come to decide: pending ones by default, in text and JSON alike.
        args.extend(["--state", "pending"]);
    }
    let out = match args.first().copied() {
        // Help is text, whatever the command: the broker prints it.
        _ if help => pass_through(&conn, &args, json).await,
        Some("requests") if !json && !args.contains(&"--review") => {
            pending_table(&conn, &args).await
        }
        Some("approve") => approve(&conn, &args, json, yes).await,
        _ => pass_through(&conn, &args, json).await,
    };
    conn.close().await;
    out
}

async fn pass_through(conn: &Connection, args: &[&str], json: bool) -> Result<AdminOutput> {
    let a = conn.run(&quote_line(args, json), b"").await?;
    Ok(AdminOutput {
        stdout: String::from_utf8_lossy(&a.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&a.stderr).into_owned(),
        status: a.status,
    })
}

/// `admin requests`: pending by default, as a table with what an approver needs to decide.
async fn pending_table(conn: &Connection, args: &[&str]) -> Result<AdminOutput> {
    let rows: Vec<RequestView> = conn.call(args).await?;
    if rows.is_empty() {
        return Ok(text_output("no requests waiting for a decision\n".into()));
    }
    let mut s = format!(
        "{:<6} {:<12} {:<14} {:<7} {:<7} {:<4} {:<10} {:<12} {}\n",
        "ID", "REQUESTER", "TARGET", "ROLE", "FOR", "RISK", "APPROVALS", "DECIDE IN", "FLAGS"
    );
    for r in &rows {
        let decide = match r.pending_seconds_left {
            Some(secs) => format_duration(secs),
            None => r.state.to_string(),
        };
        let mut flags = r.justification.flags.clone();
        if r.escalated {
            flags.insert(0, "ESCALATED".into());
        }
        s.push_str(&format!(
            "{:<6} {:<12} {:<14} {:<7} {:<7} {:<4} {:<10} {:<12} {}\n",
            r.id,
            r.requester.as_str(),
            r.resource.as_str(),
            r.role.map_or("command", |r| r.as_str()),
            format_duration(r.duration_secs),
            r.risk.score,
            format!("{}/{}", r.approvals.len(), r.approvals_required),
            decide,
            if flags.is_empty() {
                "-".to_string()
            } else {
                flags.join(",")
            }
        ));
    }
    s.push_str("\nshow one with: sshjit-broker admin show ID; decide with: sshjit-broker admin approve ID / sshjit-broker admin deny ID --reason TEXT\n");
    Ok(text_output(s))
}

/// The request id among `approve`'s words: the first number that is not `--comment`'s value.
fn approve_id<'a>(args: &[&'a str]) -> Option<&'a str> {
    let mut words = args.iter().skip(1);
    while let Some(w) = words.next() {
        if *w == "--comment" {
            words.next();
        } else if w.parse::<u64>().is_ok() {
            return Some(w);
        }
    }
    None
}

/// `admin approve ID`: shows exactly what will be granted, asks on a terminal, then approves.
async fn approve(conn: &Connection, args: &[&str], json: bool, yes: bool) -> Result<AdminOutput> {
    let Some(id) = approve_id(args) else {
        return pass_through(conn, args, json).await;
    };
    let r: RequestView = match conn.call(&["show", id]).await {
        Ok(r) => r,
        // Let the broker say what is wrong with the approval itself.
        Err(_) => return pass_through(conn, args, json).await,
    };
    let me: WhoamiView = conn.call(&["whoami"]).await?;
    if r.state != RequestState::Pending || r.requester == me.name || !me.can_approve {
        // Nothing to ask about: the broker refuses, and says why.
        return pass_through(conn, args, json).await;
    }
    let summary = grant_summary(&r);
    if !yes {
        if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
            return Err(Error::Client(format!(
                "not approving request {id} without confirmation and there is no terminal to ask on; review it with 'sshjit-broker admin show {id}', then rerun with --yes"
            )));
        }
        eprint!("{summary}Approve request {id}? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES") {
            return Err(Error::Client(format!("request {id} was not approved")));
        }
    } else if !json {
        eprint!("{summary}");
    }
    pass_through(conn, args, json).await
}

fn grant_summary(r: &RequestView) -> String {
    let mut s = format!(
        "request {}: {} asks for {} on {} {} for {}\n  reason         {}\n",
        r.id,
        r.requester,
        r.role.map_or("a command", |r| r.as_str()),
        r.kind,
        r.resource,
        format_duration(r.duration_secs),
        r.reason,
    );
    s.push_str(&format!("  risk           {}\n", r.risk.explain()));
    if r.escalated {
        s.push_str("  ESCALATED: it waited past its target's --escalate-after\n");
    }
    if let Some(w) = &r.would_grant {
        s.push_str(&format!(
            "  grants         {} from {} to {} if approved now\n",
            w.effective_role.map_or("the command", |r| r.as_str()),
            w.start_if_approved_now,
            w.end_if_approved_now,
        ));
        let scope = Scope {
            hosts: w.hosts.clone(),
            command: w.command.clone(),
            left_out: w.left_out.clone(),
        };
        s.push_str(&crate::views::scope_text(&scope));
    }
    s.push_str(&format!(
        "  approvals      {}/{}\n",
        r.approvals.len(),
        r.approvals_required
    ));
    for f in &r.justification.flags {
        s.push_str(&format!("  ! {f}: {}\n", justify::describe(f)));
    }
    s
}

fn text_output(stdout: String) -> AdminOutput {
    AdminOutput {
        stdout,
        stderr: String::new(),
        status: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_to_approve_is_found_wherever_it_stands() {
        assert_eq!(approve_id(&["approve", "7"]), Some("7"));
        assert_eq!(approve_id(&["approve", "--comment", "12", "7"]), Some("7"));
        assert_eq!(approve_id(&["approve", "--comment", "x", "7"]), Some("7"));
        assert_eq!(approve_id(&["approve", "--comment", "x"]), None);
    }
}
