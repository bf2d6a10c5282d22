//! One connection's russh handler: authentication by key, a seat for the member, one command
//! per exec channel (run by [`super::run`]), stdin for `cert`, and an immediate answer to
//! every other channel request (a failure for all the broker does not serve; a no-op success
//! for a pty).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, Disconnect, Pty, Sig};
use tokio::sync::mpsc;

use super::admission::{Seat, Startup};
use super::answer::{ExecReply, HeldReply};
use super::channels::{Channels, Waiting};
use super::{Shared, Signals};
use crate::broker::{Output, wants_json};
use crate::ca;
use crate::commands::{Parsed, parse_line};
use crate::error::Error;
use crate::model::printable;

/// One connection's handler.
pub(super) struct Conn {
    pub(super) shared: Arc<Shared>,
    pub(super) peer: SocketAddr,
    /// Fingerprint of the authenticated identity key.
    pub(super) fingerprint: Option<String>,
    /// The place this connection holds until it authenticates (released on drop).
    startup: Option<Startup>,
    /// The seat it holds once authenticated (released on drop).
    seat: Option<Seat>,
    /// Set when authentication found no seat, with the reason: the connection is disconnected
    /// as authentication completes, and every further attempt is refused.
    refused: Option<String>,
    pub(super) signals: Arc<Signals>,
    /// Its session channels, and the commands waiting for their stdin (a public key).
    pub(super) chans: Channels,
    pub(super) done: mpsc::Sender<()>,
}

impl Conn {
    pub(super) fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        startup: Startup,
        signals: Arc<Signals>,
        done: mpsc::Sender<()>,
    ) -> Conn {
        Conn {
            shared,
            peer,
            fingerprint: None,
            startup: Some(startup),
            seat: None,
            refused: None,
            signals,
            chans: Channels::default(),
            done,
        }
    }

    fn is_member(&self, key: &russh::keys::PublicKey) -> bool {
        let fp = ca::fingerprint(key.key_data());
        matches!(self.shared.broker.member_for_key(&fp), Ok(Some(_)))
    }

    /// Refuses a channel request the broker does not serve, at once.
    fn unsupported(
        &mut self,
        channel: ChannelId,
        what: &str,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        self.interrupt_held(channel, session);
        tracing::debug!(peer = %self.peer, request = what, "refused a channel request");
        session.channel_failure(channel)
    }

    /// Forgets a channel closed without an answer: if it counted as unanswered, it no longer
    /// holds back the hang-up after the connection's last command.
    fn forget(&mut self, channel: ChannelId) {
        if self.chans.forget(channel) {
            self.signals.answered();
        }
    }

    /// Ends the command of a channel whose exec reply is held, since another request came:
    /// russh keeps one pending reply per channel and has just given this request the
    /// exec's place, so the exec would never get its reply, and a client waiting for it
    /// would wait until the idle timeout. It gets the reason and the channel's end instead.
    fn interrupt_held(&mut self, channel: ChannelId, session: &Session) {
        let Some(w) = self.chans.take_held(channel) else {
            return;
        };
        // Not sent now (the flag russh sends it by is this request's): only kept in order.
        let reply = match w.take_reply() {
            ExecReply::Owed => ExecReply::Sent,
            by_timer => by_timer,
        };
        let e = Error::Usage(
            "a channel request came while the command read its stdin; send stdin and its end first"
                .into(),
        );
        self.reply(
            session.handle(),
            channel,
            Output::error(&e, w.inv.json),
            reply,
        );
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(
            if self.refused.is_none() && self.is_member(offer.public_key) {
                Auth::Accept
            } else {
                Auth::reject()
            },
        )
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.refused.is_some() {
            return Ok(Auth::reject());
        }
        let fp = ca::fingerprint(key.public_key.key_data());
        let member = match self.shared.broker.member_for_key(&fp) {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::info!(peer = %self.peer, fingerprint = %fp, "refused a key that belongs to no member");
                return Ok(Auth::reject());
            }
            Err(e) => {
                tracing::error!(error = %e, "member lookup failed");
                return Ok(Auth::reject());
            }
        };
        let name = member.name.to_string();
        match self.shared.admission.seat(&name) {
            Ok(seat) => {
                self.seat = Some(seat);
                self.startup = None;
            }
            Err(refusal) => {
                // Closed at authentication: an over-cap connection holds no seat and runs
                // nothing. The key is accepted only so that the disconnect, with its reason,
                // goes out with the success reply (auth_succeeded) and reaches the client
                // before it gives up; no channel opens without a seat.
                tracing::warn!(peer = %self.peer, member = %name, %refusal, "connection refused at authentication");
                self.refused = Some(refusal.to_string());
                return Ok(Auth::Accept);
            }
        }
        tracing::info!(peer = %self.peer, member = %name, fingerprint = %fp, "authenticated");
        self.fingerprint = Some(fp);
        self.signals.touch();
        self.signals.authed.store(true, Ordering::SeqCst);
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(reason) = &self.refused {
            session.disconnect(Disconnect::TooManyConnections, reason, "")?;
            // And cut the socket if the client does not go.
            self.signals
                .request_disconnect(Disconnect::TooManyConnections, reason.clone());
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.fingerprint.is_some() && self.signals.open_channel() {
            self.chans.open(channel.id());
            reply.accept().await;
        } else {
            // One more after the last command: the hang-up need not wait.
            self.signals.wake.notify_one();
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.signals.touch();
        if self.chans.waiting_mut(channel).is_some() {
            // One command per channel: a second exec while the first reads its stdin ends
            // both (and the first's held reply, which russh has just let the second replace).
            self.forget(channel);
            self.unsupported(channel, "a second exec", session)?;
            return session.close(channel);
        }
        if !self.chans.start(channel) {
            // Its command ran or is running: refused, and that command goes on.
            return self.unsupported(channel, "a second exec", session);
        }
        let json = wants_json(data);
        if let Some(out) = self.admission(json) {
            session.channel_success(channel)?;
            self.reply(session.handle(), channel, out, ExecReply::Sent);
            return Ok(());
        }
        let parsed = match parse_line(data) {
            Ok(Parsed::Run(inv)) if inv.reads_stdin() => {
                // The reply goes with the answer, or after GRACE (see `answer`); at once on a
                // channel with a pty, whose window-change could take its place.
                let reply = if self.chans.has_pty(channel) {
                    session.channel_success(channel)?;
                    None
                } else {
                    Some(HeldReply::hold(session.handle(), channel))
                };
                let stdin = Vec::new();
                self.chans.wait(
                    channel,
                    Waiting {
                        inv: *inv,
                        stdin,
                        reply,
                    },
                );
                return Ok(());
            }
            parsed => parsed,
        };
        session.channel_success(channel)?;
        match parsed {
            Ok(Parsed::Help(text)) => self.reply(
                session.handle(),
                channel,
                Output::text(text),
                ExecReply::Sent,
            ),
            Ok(Parsed::Run(inv)) => {
                return self.start_command(session, channel, *inv, Vec::new(), ExecReply::Sent);
            }
            Err(e) => {
                tracing::info!(peer = %self.peer, code = e.code(), "refused a command line");
                self.reply(
                    session.handle(),
                    channel,
                    Output::error(&e, json),
                    ExecReply::Sent,
                );
            }
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.interrupt_held(channel, session);
        if !self.chans.start(channel) {
            return self.unsupported(channel, "a shell after a command", session);
        }
        session.channel_success(channel)?;
        let text = format!(
            "sshjit broker: give a command, for example: ssh -p PORT BROKER help\n\n{}",
            crate::commands::help_text()
        );
        let out = Output {
            stdout: String::new(),
            stderr: text,
            status: 2,
        };
        self.reply(session.handle(), channel, out, ExecReply::Sent);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Nothing will run on this channel: refuse and close it so the client ends at once.
        self.unsupported(channel, &printable(name, 40), session)?;
        self.forget(channel);
        session.close(channel)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Answered at once, with success: the broker's answers are plain text either way, and
        // OpenSSH ends the session when a pty it asked for (`ssh -t`, or a bare `ssh BROKER`
        // from a terminal) is refused, which would hide the help a bare login shows.
        self.interrupt_held(channel, session);
        self.chans.set_pty(channel);
        session.channel_success(channel)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Refused (russh sends the failure); it still ends a command whose reply is held.
        self.interrupt_held(channel, session);
        tracing::debug!(peer = %self.peer, request = "auth-agent-req", "refused a channel request");
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.unsupported(channel, "x11-req", session)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.unsupported(channel, "env", session)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.unsupported(channel, "window-change", session)
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        _signal: Sig,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.unsupported(channel, "signal", session)
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let max = self.shared.limits.max_stdin_bytes;
        // Not activity: a command waiting for its stdin is not running, so a client that
        // trickles bytes (or never ends its stdin) is idle, counted from the exec.
        let Some(w) = self.chans.waiting_mut(channel) else {
            return Ok(());
        };
        if w.stdin.len() + data.len() > max {
            let Some(w) = self.chans.take_waiting(channel) else {
                return Ok(());
            };
            let e = Error::InvalidKey(format!(
                "stdin is over {max} bytes; send one public key line"
            ));
            let reply = w.take_reply();
            self.reply(
                session.handle(),
                channel,
                Output::error(&e, w.inv.json),
                reply,
            );
            return Ok(());
        }
        w.stdin.extend_from_slice(data);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(w) = self.chans.take_waiting(channel) {
            let reply = w.take_reply();
            return self.start_command(session, channel, w.inv, w.stdin, reply);
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Closed: nothing more is sent on it, the held reply included.
        self.forget(channel);
        Ok(())
    }
}
