//! A command's answer: the reply a command builds, the output that goes back to the caller,
//! and an answer that may be shown only once its change is durable.

use std::sync::Arc;

use serde_json::Value;

use super::Broker;
use crate::contract::InclusionView;
use crate::error::{Error, Result};
use crate::store::Ticket;

/// What a command printed and how it exited, ready for a channel or a terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub status: u32,
}

impl Output {
    /// A failure, as text or as `{"error":{"code":...,"message":...}}`.
    pub fn error(e: &Error, json: bool) -> Output {
        let stderr = if json {
            let body = crate::contract::ErrorBody {
                error: crate::contract::ErrorView {
                    code: e.code().to_string(),
                    message: e.to_string(),
                    retry_after_secs: e.retry_after_secs(),
                },
            };
            let v = serde_json::to_string(&body).unwrap_or_else(|_| {
                // Two strings and a number always encode; this is unreachable.
                r#"{"error":{"code":"internal","message":"cannot encode an error"}}"#.into()
            });
            format!("{v}\n")
        } else {
            format!("error: {e}\n")
        };
        let status = match e {
            Error::Usage(_) | Error::UnknownCommand { .. } | Error::ExecLineTooLong { .. } => 2,
            _ => 1,
        };
        Output {
            stdout: String::new(),
            stderr,
            status,
        }
    }

    /// Help text, successfully.
    pub fn text(s: String) -> Output {
        Output {
            stdout: s,
            stderr: String::new(),
            status: 0,
        }
    }
}

/// A command's result: machine and human forms of the same answer.
#[derive(Debug)]
pub struct Reply {
    pub json: Value,
    pub text: String,
    /// Non-zero for answers that are not errors but report a failure (a broken audit chain).
    pub status: u32,
    /// Print `text` even with `--json` (exports that are already JSON lines).
    pub raw: bool,
    /// Set when the JSON form carries the inclusion proof of the answer's audit entry (a
    /// certificate's): that form is then built by it, not taken from `json`.
    proven: Option<Proven>,
}

/// The JSON form of an answer that proves its audit entry is in the log. It is built only when
/// JSON is asked for, and only once the entry is durable, with the proof against the durable
/// log's size: the answers one flush covers share that size, and so one signed checkpoint.
pub(super) struct Proven {
    /// The entry's sequence number.
    pub seq: u64,
    /// Builds the JSON form around the entry's inclusion proof.
    pub build: Box<dyn FnOnce(InclusionView) -> Result<Value> + Send>,
}

impl std::fmt::Debug for Proven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proven").field("seq", &self.seq).finish()
    }
}

impl Reply {
    /// An answer whose JSON form is the contract object `view` (see [`crate::contract`]).
    pub fn of(view: &impl serde::Serialize, text: impl Into<String>) -> Result<Reply> {
        let json = serde_json::to_value(view)
            .map_err(|e| Error::Internal(format!("cannot encode an answer: {e}")))?;
        Ok(Reply::new(json, text))
    }

    pub fn new(json: Value, text: impl Into<String>) -> Reply {
        Reply {
            json,
            text: text.into(),
            status: 0,
            raw: false,
            proven: None,
        }
    }

    /// An answer whose JSON form `build` makes around the inclusion proof of audit entry `seq`
    /// (see [`Proven`]); `text` is its human form, which carries no proof.
    pub(super) fn proven(
        seq: u64,
        text: impl Into<String>,
        build: impl FnOnce(InclusionView) -> Result<Value> + Send + 'static,
    ) -> Reply {
        Reply {
            proven: Some(Proven {
                seq,
                build: Box::new(build),
            }),
            ..Reply::new(Value::Null, text)
        }
    }

    /// The output, and what its JSON form still needs (a proof) before it may be shown.
    pub(super) fn render(self, json: bool) -> (Output, Option<Proven>) {
        if let (true, Some(proven)) = (json, self.proven) {
            let out = Output {
                stdout: String::new(),
                stderr: String::new(),
                status: self.status,
            };
            return (out, Some(proven));
        }
        let stdout = if json && !self.raw {
            format!("{}\n", self.json)
        } else {
            let mut t = self.text;
            if !t.is_empty() && !t.ends_with('\n') {
                t.push('\n');
            }
            t
        };
        let out = Output {
            stdout,
            stderr: String::new(),
            status: self.status,
        };
        (out, None)
    }
}

/// A command's output, held back until its change is durable when the caller waits for that
/// itself ([`Broker::execute_written`]): see [`Broker::finish`].
#[derive(Debug)]
pub struct Answer {
    out: Output,
    ticket: Option<Ticket>,
    proven: Option<Proven>,
}

impl Answer {
    pub(super) fn new(out: Output, ticket: Option<Ticket>, proven: Option<Proven>) -> Answer {
        Answer {
            out,
            ticket,
            proven,
        }
    }

    /// The exit status the answer has unless its flush or its proof fails.
    pub fn status(&self) -> u32 {
        self.out.status
    }

    /// The output, if it has nothing to wait for; else the answer, for [`Broker::finish`].
    pub fn ready(self) -> std::result::Result<Output, Answer> {
        match (&self.ticket, &self.proven) {
            (None, None) => Ok(self.out),
            _ => Err(self),
        }
    }
}

impl Broker {
    /// Waits until the answer's change is durable, then finishes its output.
    pub async fn finish(self: &Arc<Self>, answer: Answer) -> Result<Output> {
        if let Some(t) = answer.ticket {
            self.store.wait_durable(t).await?;
        }
        let Answer { out, proven, .. } = answer;
        if proven.is_none() || !self.store.is_shared() {
            return Ok(self.prove(out, proven));
        }
        // On a shared database the proof's reads may cross the network: blocking pool.
        let broker = self.clone();
        tokio::task::spawn_blocking(move || broker.prove(out, proven))
            .await
            .map_err(|e| Error::Internal(format!("the proof's task failed: {e}")))
    }

    /// Adds the inclusion proof a JSON answer carries, against the log a flush has made
    /// durable: call it only once the answer's own entry is durable.
    pub(super) fn prove(&self, mut out: Output, proven: Option<Proven>) -> Output {
        let Some(p) = proven else {
            return out;
        };
        let size = self.store.durable_audit_len();
        match self.inclusion(p.seq, size, true).and_then(p.build) {
            Ok(json) => out.stdout = format!("{json}\n"),
            Err(e) => out = Output::error(&e, true),
        }
        out
    }
}
