//! Running a connection's commands: at once in the session's task when nothing is slow, in a
//! task of their own otherwise, and the answer sent only once the change it reports is
//! durable (after the exec request's reply, see [`super::answer`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use russh::ChannelId;
use russh::server::{Handle, Session};

use super::answer::{ExecReply, send_output, write_output};
use super::handler::Conn;
use crate::broker::Output;
use crate::commands::{Command, Invocation};
use crate::error::Error;
use crate::model::Timestamp;

impl Conn {
    /// Answers on `channel` in the background: stdout, stderr, exit status, EOF, close
    /// (after the exec request's reply).
    pub(super) fn reply(&self, handle: Handle, channel: ChannelId, out: Output, reply: ExecReply) {
        let done = self.done.clone();
        let signals = self.signals.clone();
        tokio::spawn(async move {
            send_output(&handle, channel, out, reply).await;
            signals.answered();
            drop(done);
        });
    }

    /// Runs a parsed command and answers when it is done (and its change is durable), after
    /// the exec request's reply. One that needs nothing slow runs at once in
    /// the session's task: its answer goes out directly, or, for a change, from a task that
    /// waits for the flush.
    pub(super) fn start_command(
        &self,
        session: &mut Session,
        channel: ChannelId,
        inv: Invocation,
        stdin: Vec<u8>,
        reply: ExecReply,
    ) -> Result<(), russh::Error> {
        let broker = &self.shared.broker;
        let slow = inv.command.waits()
            || inv.command.is_heavy()
            || broker.store().is_shared()
            || (matches!(inv.command, Command::Request(_)) && broker.model().is_some());
        let Some(fp) = self.fingerprint.as_deref().filter(|_| !slow) else {
            self.spawn_command(session.handle(), channel, inv, stdin, reply);
            return Ok(());
        };
        let answer = broker.execute_written(fp, &inv, &stdin, Timestamp::now(), None);
        self.signals.touch();
        let answer = match answer.ready() {
            Ok(out) if !reply.direct() => {
                self.reply(session.handle(), channel, out, reply);
                return Ok(());
            }
            Ok(out) => {
                write_output(session, channel, out, reply)?;
                self.signals.answered();
                return Ok(());
            }
            Err(waits) => waits,
        };
        let (broker, signals, done) = (broker.clone(), self.signals.clone(), self.done.clone());
        let (handle, peer, json) = (session.handle(), self.peer, inv.json);
        signals.inflight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let out = broker
                .finish(answer)
                .await
                .unwrap_or_else(|e| command_failed(peer, &e, json));
            send_output(&handle, channel, out, reply).await;
            signals.touch();
            signals.inflight.fetch_sub(1, Ordering::SeqCst);
            signals.answered();
            drop(done);
        });
        Ok(())
    }

    /// Runs a command in a task of its own and answers when it is done (and durable).
    fn spawn_command(
        &self,
        handle: Handle,
        channel: ChannelId,
        inv: Invocation,
        stdin: Vec<u8>,
        reply: ExecReply,
    ) {
        let Some(fp) = self.fingerprint.clone() else {
            let out = Output::error(&not_authenticated(), inv.json);
            return self.reply(handle, channel, out, reply);
        };
        let broker = self.shared.broker.clone();
        let shared = self.shared.clone();
        let signals = self.signals.clone();
        let done = self.done.clone();
        let peer = self.peer;
        signals.inflight.fetch_add(1, Ordering::SeqCst);
        signals.touch();
        tokio::spawn(async move {
            let json = inv.json;
            let failed = |e: &dyn std::fmt::Display| command_failed(peer, e, json);
            let out = if inv.command.waits() {
                // Waits for a change, not for work: async, and cut short by shutdown.
                let mut stopping = shared.stopping.subscribe();
                let stop = async move {
                    let _ = stopping.wait_for(|s| *s).await;
                };
                broker.wait(&fp, &inv, stop).await
            } else if inv.command.is_heavy() {
                // Whole-log reads take long enough to belong on the blocking pool.
                tokio::task::spawn_blocking(move || {
                    broker.execute(&fp, &inv, &stdin, Timestamp::now())
                })
                .await
                .unwrap_or_else(|e| failed(&e))
            } else {
                // Everything else is microseconds of work: run it here, then wait for the
                // group flush without holding a thread. Nothing is sent before it is durable.
                // A `request` may first ask a model for its justification's text (bounded by
                // the model's timeout, outside any transaction).
                let written = match (&inv.command, broker.model()) {
                    (Command::Request(a), Some(model)) => {
                        match broker.model_prompt(&fp, a, Timestamp::now()) {
                            Some(prompt) => model.write(prompt).await,
                            None => None,
                        }
                    }
                    _ => None,
                };
                let run = {
                    let broker = broker.clone();
                    move || broker.execute_written(&fp, &inv, &stdin, Timestamp::now(), written)
                };
                // On a shared database the command's calls cross the network: blocking pool.
                let done = if broker.store().is_shared() {
                    tokio::task::spawn_blocking(run)
                        .await
                        .map_err(|e| failed(&e))
                } else {
                    Ok(run())
                };
                match done {
                    Ok(answer) => broker.finish(answer).await.unwrap_or_else(|e| failed(&e)),
                    Err(out) => out,
                }
            };
            send_output(&handle, channel, out, reply).await;
            signals.touch();
            signals.inflight.fetch_sub(1, Ordering::SeqCst);
            signals.answered();
            drop(done);
        });
    }

    /// Refusals that apply before a command is even parsed.
    pub(super) fn admission(&self, json: bool) -> Option<Output> {
        let refuse = |msg: String| Some(Output::error(&Error::Busy(msg), json));
        if self.shared.closing.load(Ordering::SeqCst) {
            return refuse("the broker is shutting down; try again in a moment".into());
        }
        let limit = self.shared.limits.max_channels_per_connection;
        if self.signals.inflight.load(Ordering::SeqCst) + self.chans.waiting() >= limit {
            return refuse(format!(
                "too many commands running on this connection (limit {limit}); wait for some to finish"
            ));
        }
        None
    }
}

/// The answer when running a command failed inside the broker: logged, not shown.
fn command_failed(peer: SocketAddr, e: &dyn std::fmt::Display, json: bool) -> Output {
    tracing::error!(%peer, error = %e, "command failed");
    Output::error(
        &Error::Internal("the command failed; see the broker log".into()),
        json,
    )
}

fn not_authenticated() -> Error {
    Error::PermissionDenied("not authenticated".into())
}
