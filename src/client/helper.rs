//! The engineer's commands (`sshjit request|status|cancel|login|ssh`). Listings are in
//! [`super::listing`], and `sshjit run` in [`super::run`].

use std::io::{IsTerminal, Write};
use std::time::Instant;

use russh::keys::ssh_key::LineEnding;
use serde_json::{Value, json};

use super::Settings;
use super::conn::Connection;
use super::local::{self, LocalCert, Want};
use crate::ca;
use crate::commands::RequestArgs;
use crate::contract::{CaPubkeyView, CertView, CommandView, GrantStatus, RequestView};
use crate::error::{Error, Result};
use crate::justify;
use crate::model::{RequestState, Timestamp, format_duration};
use crate::target::{ScopeHost, TargetKind};

/// What a helper command prints: text for people, JSON with `--json`.
pub struct Printed {
    pub text: String,
    pub json: Value,
}

/// `sshjit request`: asks, prints the case for approvers, and with `wait` follows it to a certificate.
pub async fn request(
    settings: &Settings,
    a: &RequestArgs,
    wait: bool,
    json_out: bool,
) -> Result<Printed> {
    let conn = Connection::open(settings).await?;
    let mut a = a.clone();
    if a.role.is_none()
        && let Some(role) = &settings.default_role
    {
        // The config's role is for hosts and fleets: a fleet command takes none.
        let commands: Vec<CommandView> = conn.call(&["command", "list"]).await?;
        if !commands.iter().any(|c| c.name.as_str() == a.target) {
            a.role = Some(role.clone());
        }
    }
    let words = a.to_words();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let req: RequestView = conn.call(&words).await?;
    let id = req.id;
    let mut text = describe_request(&req);
    if !wait {
        let next = match req.kind {
            TargetKind::Command => format!("sshjit run {}", a.target),
            TargetKind::Fleet => "sshjit ssh HOST, for any host of the fleet".to_string(),
            TargetKind::Host => format!("sshjit ssh {}", a.target),
        };
        if req.state == RequestState::Approved {
            // A rule or break-glass granted it at once: nobody needs to approve it.
            text.push_str(&format!(
                "\nGranted now: fetch your certificate with: sshjit login {id} (or just: {next})\n",
            ));
        } else {
            text.push_str(&format!(
                "\nFollow it with: sshjit status {id}\nOnce approved, fetch your certificate with: sshjit login {id} (or just: {next})\n",
            ));
        }
        conn.close().await;
        return Ok(Printed {
            text,
            json: serde_json::to_value(&req)?,
        });
    }
    // Print the request now: waiting can take a while.
    if !json_out {
        print!("{text}");
        let _ = std::io::stdout().flush();
    }
    let decided = tokio::select! {
        r = follow(&conn, id, json_out) => r?,
        _ = tokio::signal::ctrl_c() => {
            conn.close().await;
            return Err(Error::Client(format!(
                "stopped waiting; request {id} is still pending. Check it with 'sshjit status {id}' and, once approved, run 'sshjit login {id}'"
            )));
        }
    };
    match (decided.state, &decided.grant) {
        (RequestState::Approved, Some(g)) if g.status == GrantStatus::Scheduled => {
            conn.close().await;
            let text = format!(
                "request {id} approved; the window starts at {}. Then run: sshjit login {id}\n",
                g.start
            );
            Ok(Printed {
                text,
                json: serde_json::to_value(&decided)?,
            })
        }
        (RequestState::Approved, _) => {
            let cert = login_on(&conn, settings, id).await?;
            conn.close().await;
            Ok(Printed {
                text: login_text(&cert.0, cert.1),
                json: json!({"request": decided, "certificate": cert.0}),
            })
        }
        (state, _) => {
            conn.close().await;
            let why = match &decided.denial {
                Some(d) => format!(": {}", d.reason),
                None => String::new(),
            };
            Err(Error::Client(format!(
                "request {id} was {state}{why}; make a new request if you still need access"
            )))
        }
    }
}

/// How long one `wait` lasts before the helper shows progress and waits again.
const WAIT_SLICE: &str = "15s";

/// Follows the request until it leaves `pending`, showing progress: the broker answers each
/// `wait` as soon as the request changes, so a decision arrives at once.
async fn follow(conn: &Connection, id: u64, quiet: bool) -> Result<RequestView> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    let id_word = id.to_string();
    loop {
        let r: RequestView = conn
            .call(&["wait", &id_word, "--timeout", WAIT_SLICE])
            .await?;
        if r.state != RequestState::Pending {
            if tty && !quiet {
                eprintln!();
            } else if !quiet {
                eprintln!("request {id}: {}", r.state);
            }
            return Ok(r);
        }
        if !quiet {
            let line = format!(
                "request {id}: {}, approvals {}/{}, waiting {}, {} left before it expires",
                r.state,
                r.approvals.len(),
                r.approvals_required,
                format_duration(started.elapsed().as_secs()),
                format_duration(r.pending_seconds_left.unwrap_or(0)),
            );
            if tty {
                eprint!("\r{line}  ");
            } else {
                // Without a terminal, print only changes (not the ticking clock).
                let key = format!("{} {}", r.state, r.approvals.len());
                if key != last {
                    eprintln!("{line}");
                    last = key;
                }
            }
        }
    }
}

fn describe_request(r: &RequestView) -> String {
    let mut s = format!(
        "request {}: {} access to {} {} for {} ({})\n",
        r.id,
        r.role.map_or("command", |r| r.as_str()),
        r.kind,
        r.resource,
        format_duration(r.duration_secs),
        r.state,
    );
    match &r.justification.model {
        Some(m) => s.push_str(&format!(
            "justification: [written by the model {}] {}\n",
            crate::model::escape_for_log(m),
            r.justification.text
        )),
        None => s.push_str(&format!("justification: {}\n", r.justification.text)),
    }
    s.push_str(&format!("risk: {}\n", r.risk.explain()));
    if let Some(by) = &r.approved_by_rule {
        s.push_str(&format!(
            "approved at once by rule {} ({})\n",
            by.rule,
            by.matched.join(", ")
        ));
    }
    if let Some(due) = r.review_due {
        s.push_str(&format!(
            "BREAK-GLASS: granted now without approvers; an owner or admin reviews it by {due}\n"
        ));
    }
    if !r.justification.flags.is_empty() {
        s.push_str("flags an approver will see:\n");
        for f in &r.justification.flags {
            s.push_str(&format!("  ! {f}: {}\n", justify::describe(f)));
        }
    }
    if r.state != RequestState::Pending {
        return s;
    }
    let approvers: Vec<&str> = r.approvers.iter().flatten().map(|n| n.as_str()).collect();
    s.push_str(&format!(
        "needs {} approval(s) from: {}\n",
        r.approvals_required,
        if approvers.is_empty() {
            "nobody yet".to_string()
        } else {
            approvers.join(", ")
        }
    ));
    s
}

/// `sshjit status [ID]`.
pub async fn status(settings: &Settings, id: Option<u64>) -> Result<Printed> {
    let conn = Connection::open(settings).await?;
    let id_text = id.map(|i| i.to_string());
    let mut words = vec!["status"];
    if let Some(i) = &id_text {
        words.push(i);
    }
    let list: Vec<RequestView> = conn.call(&words).await?;
    conn.close().await;
    let mut text = format!(
        "{:<6} {:<9} {:<14} {:<7} {:<8} {}\n",
        "ID", "STATE", "TARGET", "ROLE", "FOR", "WHEN"
    );
    for r in &list {
        let when = match (r.state, &r.grant) {
            (RequestState::Pending, _) => format!(
                "{} left to decide",
                format_duration(r.pending_seconds_left.unwrap_or(0))
            ),
            (RequestState::Approved, Some(g)) => match g.status {
                GrantStatus::Active => format!(
                    "active, {} left as {} on {} host(s)",
                    format_duration(g.seconds_left),
                    g.logins.join(","),
                    g.hosts.len()
                ),
                GrantStatus::Scheduled => format!("starts {}", g.start),
                GrantStatus::Ended => match &g.ended {
                    Some(e) => format!("ended by {}: {}", e.by, e.reason),
                    None => "ended".into(),
                },
                GrantStatus::Expired => "window over".into(),
            },
            (RequestState::Approved, None) => "approved".into(),
            (RequestState::Denied, _) => match &r.denial {
                Some(d) => format!("denied by {}: {}", d.by, d.reason),
                None => "denied".into(),
            },
            (RequestState::Expired, _) => "expired without a decision".into(),
            (RequestState::Cancelled, _) => match (&r.cancelled_by, &r.cancel_reason) {
                (Some(by), Some(why)) => format!("cancelled by {by}: {why}"),
                _ => "cancelled".into(),
            },
        };
        text.push_str(&format!(
            "{:<6} {:<9} {:<14} {:<7} {:<8} {}\n",
            r.id,
            r.state.as_str(),
            r.resource.as_str(),
            r.role.map_or("command", |r| r.as_str()),
            format_duration(r.duration_secs),
            when
        ));
    }
    Ok(Printed {
        text,
        json: serde_json::to_value(&list)?,
    })
}

/// `sshjit cancel ID`.
pub async fn cancel(settings: &Settings, id: u64) -> Result<Printed> {
    let conn = Connection::open(settings).await?;
    let r: RequestView = conn.call(&["cancel", &id.to_string()]).await?;
    conn.close().await;
    Ok(Printed {
        text: format!("request {id} cancelled\n"),
        json: serde_json::to_value(&r)?,
    })
}

/// `sshjit login ID`: a fresh key, signed, stored, and added to ssh-agent for the time left.
pub async fn login(settings: &Settings, id: u64) -> Result<Printed> {
    let conn = Connection::open(settings).await?;
    let (cert, agent) = login_on(&conn, settings, id).await?;
    conn.close().await;
    Ok(Printed {
        text: login_text(&cert, agent),
        json: serde_json::to_value(&cert)?,
    })
}

pub(super) async fn login_on(
    conn: &Connection,
    settings: &Settings,
    id: u64,
) -> Result<(LocalCert, Option<u64>)> {
    let key = ca::generate_key(&format!("sshjit:{id}"))?;
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| Error::Internal(format!("cannot encode a key: {e}")))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| Error::Internal(format!("cannot encode a key: {e}")))?;
    let answer = conn
        .run(
            &super::conn::quote_line(&["cert", &id.to_string()], true),
            public.as_bytes(),
        )
        .await?;
    let cert: CertView = answer.typed()?;
    conn.check_certificate(&cert).await?;
    let local = local::save(
        &settings.certs_dir,
        &settings.broker,
        &cert,
        id,
        &private,
        &public,
    )?;
    // The broker's clock decides the lifetime, not ours.
    let seconds = cert.seconds_left;
    let agent = local::add_to_agent(&local, seconds)?.then_some(seconds);
    Ok((local, agent))
}

fn login_text(c: &LocalCert, agent: Option<u64>) -> String {
    let logins: Vec<String> = c
        .hosts
        .iter()
        .map(|h| format!("{}@{}", h.login, h.name))
        .collect();
    let mut s = format!(
        "certificate for {} (serial {}), valid {} to {}\n  logins       {}\n  key          {}\n  certificate  {}\n",
        c.describe(),
        c.serial,
        c.valid_after,
        c.valid_before,
        crate::target::name_list(&logins.iter().map(String::as_str).collect::<Vec<_>>(), 10),
        c.key.display(),
        c.certificate.display()
    );
    if let Some(run) = &c.command {
        s.push_str(&format!("  runs only    {run}\n"));
    }
    match agent {
        Some(secs) => s.push_str(&format!(
            "  ssh-agent    added for {} (until the window ends)\n",
            format_duration(secs)
        )),
        None => s.push_str("  ssh-agent    not running; 'sshjit ssh' uses the files directly\n"),
    }
    match (&c.command, c.hosts.first()) {
        (Some(_), _) => s.push_str(&format!("run it with: sshjit run {}\n", c.target)),
        (None, Some(h)) => s.push_str(&format!("connect with: sshjit ssh {}\n", h.name)),
        (None, None) => {}
    }
    s
}

/// Finds (or fetches) the current certificate that serves `want` (a login on a host, or a
/// fleet command), or says which request to make.
///
/// A stored certificate serves without any broker settings. With settings, the broker is
/// asked which CA it signs with, and a certificate from another CA (a broker that was
/// replaced) is never offered; if the broker cannot be reached, the stored one is used.
pub async fn certificate_for(
    settings: Option<&Settings>,
    certs_dir: &std::path::Path,
    want: Want<'_>,
) -> Result<LocalCert> {
    let now = Timestamp::now();
    let name = want.name();
    let stored = local::current_for(certs_dir, want, now)?;
    let Some(settings) = settings else {
        return stored.ok_or_else(|| {
            Error::Client(format!(
                "no current certificate for {name} is stored here, and no broker is configured to ask for one; set SSHJIT_BROKER and SSHJIT_IDENTITY (or --broker and --identity), then try again"
            ))
        });
    };
    let conn = match Connection::open(settings).await {
        Ok(c) => c,
        // A broker whose log no longer extends what this client saw is refused loudly, never
        // passed over as unreachable.
        Err(e @ Error::LogNotExtended { .. }) => return Err(e),
        Err(e) => {
            if let Some(c) = stored {
                eprintln!(
                    "sshjit: cannot reach the broker to check the certificate ({e}); using the stored one"
                );
                return Ok(c);
            }
            return Err(e);
        }
    };
    if let Some(c) = stored {
        let ca: CaPubkeyView = conn.call(&["ca-pubkey"]).await?;
        if ca.fingerprint == c.ca_fingerprint {
            conn.close().await;
            return Ok(c);
        }
        eprintln!(
            "sshjit: the stored certificate for {name} (request {}) was signed by CA {}, but the broker at {} now signs with {}: it was replaced, so that certificate cannot work; looking for a current grant",
            c.request_id,
            if c.ca_fingerprint.is_empty() {
                "unknown"
            } else {
                c.ca_fingerprint.as_str()
            },
            settings.broker,
            ca.fingerprint
        );
    }
    let mine: Vec<RequestView> = conn.call(&["status"]).await?;
    let grant_in = |status: GrantStatus| {
        mine.iter().rev().find_map(|r| {
            let g = r.grant.as_ref()?;
            (g.status == status && want.served_by(r.resource.as_str(), r.kind, &g.hosts))
                .then_some((r.id, g))
        })
    };
    if let Some((id, _)) = grant_in(GrantStatus::Active) {
        let (c, _) = login_on(&conn, settings, id).await?;
        conn.close().await;
        return Ok(c);
    }
    conn.close().await;
    if let Some((id, g)) = grant_in(GrantStatus::Scheduled) {
        return Err(Error::Client(format!(
            "your grant for {name} (request {id}) starts at {}; connect then",
            g.start
        )));
    }
    let ask = match want {
        Want::Host(_) => format!(
            "sshjit request {name} --role viewer --for 1h --reason 'TICKET-123 what you need to do'"
        ),
        Want::Command(_) => {
            format!("sshjit request {name} --for 30m --reason 'TICKET-123 why it must run'")
        }
    };
    Err(Error::Client(format!(
        "you have no current grant for {name}; ask for one with:\n  {ask}"
    )))
}

/// The `ssh` options that make it use exactly this certificate and its key.
pub fn cert_options(c: &LocalCert) -> Vec<String> {
    vec![
        "-i".into(),
        c.key.display().to_string(),
        "-o".into(),
        format!("CertificateFile={}", c.certificate.display()),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
    ]
}

/// The `ssh` command line for `host` with a certificate, with `extra` after the destination.
pub fn ssh_command(c: &LocalCert, host: &ScopeHost, extra: &[String]) -> std::process::Command {
    let mut cmd = std::process::Command::new("ssh");
    cmd.args(cert_options(c))
        .args(["-p", &host.port.to_string()])
        .arg(format!("{}@{}", host.login, host.address))
        .args(extra);
    cmd
}
