//! `sshjit run NAME`: runs an approved fleet command on every host of its grant at once, each
//! output line prefixed with its host, and ends with a summary (host, exit status, duration).
//!
//! The certificate's `force-command` decides what runs; this only connects. Output from the
//! hosts is escaped before it reaches the terminal, so a host cannot drive it.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::Semaphore;

use super::Settings;
use super::helper::{Printed, cert_options, certificate_for};
use super::local::{LocalCert, Want};
use crate::error::{Error, Result};
use crate::model::{Name, escape_for_log};
use crate::target::ScopeHost;

/// How much output per host and stream `--json` keeps.
const MAX_CAPTURE: usize = 64 * 1024;
/// ssh's own exit status when it cannot connect or log in.
const SSH_FAILED: i32 = 255;

/// How one host went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The command exited 0.
    Ok,
    /// The command ran and exited non-zero, or was killed.
    Failed,
    /// ssh could not connect or log in (exit status 255).
    Unreachable,
}

/// One host's result, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct HostResult {
    pub host: Name,
    pub outcome: Outcome,
    pub exit_status: Option<i32>,
    pub duration_ms: u64,
    /// With `--json`: what the host printed (at most 64 KiB per stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

/// Runs command `name` on every host of its current grant, `parallel` at a time, with
/// `ssh_args` given to ssh before each destination. Fails (after printing the summary) if any
/// host failed or could not be reached.
pub async fn run(
    settings: Option<&Settings>,
    certs_dir: &std::path::Path,
    name: &str,
    parallel: usize,
    ssh_args: &[String],
    json: bool,
) -> Result<(Printed, bool)> {
    if parallel == 0 {
        return Err(Error::invalid("--parallel must be at least 1"));
    }
    let cert = Arc::new(certificate_for(settings, certs_dir, Want::Command(name)).await?);
    let width = cert
        .hosts
        .iter()
        .map(|h| h.name.as_str().len())
        .max()
        .unwrap_or(0);
    let gate = Arc::new(Semaphore::new(parallel));
    let mut tasks = Vec::new();
    for host in cert.hosts.clone() {
        let (cert, gate, args) = (cert.clone(), gate.clone(), ssh_args.to_vec());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            on_host(&cert, &host, &args, width, json).await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(
            t.await
                .map_err(|e| Error::Internal(format!("a host's task failed: {e}")))?,
        );
    }
    let ok = results.iter().all(|r| r.outcome == Outcome::Ok);
    let mut text = format!(
        "\n{:<w$}  {:<11}  {:<4}  {}\n",
        "HOST",
        "RESULT",
        "EXIT",
        "TIME",
        w = width.max(4)
    );
    for r in &results {
        text.push_str(&format!(
            "{:<w$}  {:<11}  {:<4}  {:.1}s\n",
            r.host.as_str(),
            match r.outcome {
                Outcome::Ok => "ok",
                Outcome::Failed => "failed",
                Outcome::Unreachable => "unreachable",
            },
            r.exit_status.map_or("-".to_string(), |s| s.to_string()),
            r.duration_ms as f64 / 1000.0,
            w = width.max(4)
        ));
    }
    let good = results.iter().filter(|r| r.outcome == Outcome::Ok).count();
    text.push_str(&format!(
        "{name} on {} host(s): {good} ok, {} failed or unreachable\n",
        results.len(),
        results.len() - good
    ));
    let json = serde_json::json!({
        "command": name,
        "request_id": cert.request_id,
        "runs": cert.command,
        "ok": ok,
        "results": results,
    });
    Ok((Printed { text, json }, ok))
}

async fn on_host(
    cert: &LocalCert,
    host: &ScopeHost,
    ssh_args: &[String],
    width: usize,
    capture: bool,
) -> HostResult {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(cert_options(cert))
        .args([
            "-T",
            "-n",
            "-o",
            "BatchMode=yes",
            "-p",
            &host.port.to_string(),
        ])
        .args(ssh_args)
        .arg(format!("{}@{}", host.login, host.address))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let result = |outcome, exit_status, stdout, stderr| HostResult {
        host: host.name.clone(),
        outcome,
        exit_status,
        duration_ms: started.elapsed().as_millis() as u64,
        stdout,
        stderr,
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "{:<width$} | cannot run ssh: {e}; install openssh-client",
                host.name.as_str()
            );
            return result(Outcome::Unreachable, None, None, None);
        }
    };
    let name = host.name.as_str();
    let (out, err) = tokio::join!(
        relay(child.stdout.take(), name, width, capture, false),
        relay(child.stderr.take(), name, width, capture, true),
    );
    let status = child.wait().await.ok().and_then(|s| s.code());
    let outcome = match status {
        Some(0) => Outcome::Ok,
        Some(SSH_FAILED) => Outcome::Unreachable,
        _ => Outcome::Failed,
    };
    result(outcome, status, out, err)
}

/// Copies a stream line by line to the terminal with the host in front (escaped), or keeps it
/// for `--json`.
async fn relay(
    stream: Option<impl AsyncRead + Unpin>,
    host: &str,
    width: usize,
    capture: bool,
    to_stderr: bool,
) -> Option<String> {
    let mut kept = String::new();
    let mut reader = BufReader::new(stream?);
    let mut line = Vec::new();
    while let Ok(n) = reader.read_until(b'\n', &mut line).await {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if capture {
            if kept.len() < MAX_CAPTURE {
                kept.push_str(text);
                kept.push('\n');
            }
        } else if to_stderr {
            eprintln!("{host:<width$} | {}", escape_for_log(text));
        } else {
            println!("{host:<width$} | {}", escape_for_log(text));
        }
        line.clear();
    }
    capture.then_some(kept)
}
