//! How a command's answer leaves: in as few writes as russh allows, with the reply to its
//! exec request held back, for a command that reads stdin, until the answer goes.
//!
//! A `cert` reads its key on stdin and answers only once its change is durable. Replying to
//! its exec request at once would cost a packet of its own: a `sendto` on the broker and a
//! wake-up on the client, for every certificate. A client that sends its key without waiting
//! for that reply (OpenSSH, the helper, russh) gets it in the same write as the answer
//! instead. A client that waits for the reply before it sends (some SSH libraries do) gets it
//! after [`GRACE`]: held, not withheld. Either way the reply comes first on its channel,
//! and once.
//!
//! russh keeps a single pending reply per channel, so another request on the channel while
//! the reply is held takes the reply's place. The handler ends the command then, with the
//! reason (a client waiting for the reply is not left waiting), and does not hold the reply
//! on a channel with a pty, where a terminal's window-change may come at any moment. Two
//! cases remain where the reply is lost: a request of a type russh answers itself (one it
//! does not know, sent without want-reply), and any request after the stdin ended while the
//! answer waits for its flush; the answer and the channel's end still come.

use std::sync::Arc;
use std::time::Duration;

use russh::ChannelId;
use russh::server::{Handle, Session};
use tokio::sync::Mutex;

use crate::broker::Output;

/// How long an exec request's reply is held while its stdin has not ended: long enough for
/// a client that sends its key at once, short for one that waits.
pub(super) const GRACE: Duration = Duration::from_millis(5);

/// The success reply owed to an exec request whose command reads stdin, while it is held
/// (`true`). The timer holds the lock while it sends the reply, so an answer that takes the
/// lock after it is queued behind the reply.
#[derive(Clone)]
pub(super) struct HeldReply(Arc<Mutex<bool>>);

/// Where the exec request's reply stands when its answer is ready.
pub(super) enum ExecReply {
    /// Sent with the request.
    Sent,
    /// Still owed: it goes first in the answer's own write.
    Owed,
    /// Sent, or being sent, by the timer through the session's handle: the answer must
    /// follow it there, once it is queued.
    ByTimer(HeldReply),
}

impl HeldReply {
    /// Holds the reply for `channel`; it is sent by itself if nobody has taken it after
    /// [`GRACE`].
    pub(super) fn hold(handle: Handle, channel: ChannelId) -> HeldReply {
        let held = HeldReply(Arc::new(Mutex::new(true)));
        let timer = held.clone();
        tokio::spawn(async move {
            tokio::time::sleep(GRACE).await;
            let mut owed = timer.0.lock().await;
            if std::mem::take(&mut *owed) {
                let _ = handle.channel_success(channel).await;
            }
        });
        held
    }

    /// Takes the reply for the answer, if the timer has not. Never waits (the session's
    /// task calls it, and the timer may be waiting on that task to take its message).
    pub(super) fn take(&self) -> ExecReply {
        let owed = match self.0.try_lock() {
            Ok(mut owed) => std::mem::take(&mut *owed),
            Err(_) => false,
        };
        if owed {
            ExecReply::Owed
        } else {
            ExecReply::ByTimer(self.clone())
        }
    }
}

impl ExecReply {
    /// Whether the answer may be written straight into the session (not behind a reply
    /// the timer queued on the handle).
    pub(super) fn direct(&self) -> bool {
        !matches!(self, ExecReply::ByTimer(_))
    }
}

/// Writes a whole answer into the session, after the exec request's reply if it is owed:
/// all of it leaves in the session's next write. (Only for a reply that is not the timer's:
/// [`ExecReply::direct`].)
pub(super) fn write_output(
    session: &mut Session,
    channel: ChannelId,
    out: Output,
    reply: ExecReply,
) -> Result<(), russh::Error> {
    if matches!(reply, ExecReply::Owed) {
        session.channel_success(channel)?;
    }
    if !out.stdout.is_empty() {
        session.data(channel, out.stdout.into_bytes())?;
    }
    if !out.stderr.is_empty() {
        session.extended_data(channel, 1, out.stderr.into_bytes())?;
    }
    session.exit_status_request(channel, out.status)?;
    session.eof(channel)?;
    session.close(channel)
}

/// Sends a command's answer from another task, after the exec request's reply: stdout,
/// stderr (extended data 1), exit status, EOF, close.
///
/// An empty message goes first. russh's session task, woken by a message from a handle,
/// takes that one message alone and writes it out, then takes everything queued since in one
/// batch and one write. The empty one writes nothing, so the whole answer leaves in one
/// `sendto` rather than two (its first message, then the rest).
pub(super) async fn send_output(
    handle: &Handle,
    channel: ChannelId,
    out: Output,
    reply: ExecReply,
) {
    let owed = matches!(reply, ExecReply::Owed);
    if let ExecReply::ByTimer(held) = reply {
        // Once the timer lets go, its reply is queued: everything sent now comes after it.
        drop(held.0.lock().await);
    }
    let _ = handle.data(channel, Vec::<u8>::new()).await;
    if owed {
        let _ = handle.channel_success(channel).await;
    }
    if !out.stdout.is_empty() {
        let _ = handle.data(channel, out.stdout.into_bytes()).await;
    }
    if !out.stderr.is_empty() {
        let _ = handle
            .extended_data(channel, 1, out.stderr.into_bytes())
            .await;
    }
    let _ = handle.exit_status_request(channel, out.status).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}
