//! `sshjit-broker admin`: any broker command, run remotely as the approver, with a pending-requests
//! table and a confirmation before an approval.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::Value;

use super::Settings;
use super::conn::{Connection, quote_line};
use crate::error::{Error, Result};
use crate::justify;
use crate::model::format_duration;

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
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut args = args;
    if args.first() == Some(&"requests") && !args.contains(&"--state") {
        // Approvers come to decide: pending ones by default, in text and JSON alike.
        args.extend(["--state", "pending"]);
    }
    let out = match args.first().copied() {
        Some("requests") if !json => pending_table(&conn, &args).await,
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
    let list = conn.json(args).await?;
    let rows = list.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return Ok(text_output("no requests waiting for a decision\n".into()));
    }
    let mut s = format!(
        "{:<6} {:<12} {:<14} {:<7} {:<7} {:<10} {:<12} {}\n",
        "ID", "REQUESTER", "HOST", "ROLE", "FOR", "APPROVALS", "DECIDE IN", "FLAGS"
    );
    for r in &rows {
        let flags: Vec<&str> = r["justification"]["flags"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let decide = match r["pending_seconds_left"].as_u64() {
            Some(secs) => format_duration(secs),
            None => r["state"].as_str().unwrap_or_default().to_string(),
        };
        s.push_str(&format!(
            "{:<6} {:<12} {:<14} {:<7} {:<7} {:<10} {:<12} {}\n",
            r["id"].as_u64().unwrap_or_default(),
            r["requester"].as_str().unwrap_or_default(),
            r["resource"].as_str().unwrap_or_default(),
            r["role"].as_str().unwrap_or_default(),
            format_duration(r["duration_secs"].as_u64().unwrap_or(0)),
            format!(
                "{}/{}",
                r["approvals"].as_array().map_or(0, Vec::len),
                r["approvals_required"]
            ),
            decide,
            if flags.is_empty() {
                "-".to_string()
            } else {
                flags.join(",")
            }
        ));
    }
    s.push_str("\nshow one with: sshjit-broker admin show ID; decide with: admin approve ID / admin deny ID --reason TEXT\n");
    Ok(text_output(s))
}

/// `admin approve ID`: shows exactly what will be granted, asks on a terminal, then approves.
async fn approve(conn: &Connection, args: &[&str], json: bool, yes: bool) -> Result<AdminOutput> {
    let Some(id) = args.get(1) else {
        return pass_through(conn, args, json).await;
    };
    let r = conn.json(&["show", id]).await?;
    if r["state"] != "pending" {
        // Let the broker say why it cannot be approved.
        return pass_through(conn, args, json).await;
    }
    let summary = grant_summary(&r);
    if !yes {
        if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
            return Err(Error::Client(format!(
                "not approving request {id} without confirmation and there is no terminal to ask on; review it with 'admin show {id}', then rerun with --yes"
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

fn grant_summary(r: &Value) -> String {
    let w = &r["would_grant"];
    let mut s = format!(
        "request {}: {} asks for {} on {} for {}\n  reason          {}\n  grants          {} as login {} (principal {})\n  window          {} to {} if approved now\n  approvals       {}/{}\n",
        r["id"],
        r["requester"].as_str().unwrap_or_default(),
        r["role"].as_str().unwrap_or_default(),
        r["resource"].as_str().unwrap_or_default(),
        format_duration(r["duration_secs"].as_u64().unwrap_or(0)),
        r["reason"].as_str().unwrap_or_default(),
        w["effective_role"].as_str().unwrap_or("?"),
        w["login"].as_str().unwrap_or("?"),
        w["principals"][0].as_str().unwrap_or("?"),
        w["start_if_approved_now"].as_str().unwrap_or("?"),
        w["end_if_approved_now"].as_str().unwrap_or("?"),
        r["approvals"].as_array().map_or(0, Vec::len),
        r["approvals_required"],
    );
    for f in r["justification"]["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
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
