//! What a connection knows of each of its session channels: whether it has a pty, whether
//! it has had its one command, and the command waiting for its stdin, if any.
//!
//! One command per channel, as in OpenSSH: a channel cannot run command after command past
//! the per-connection limit. A channel the broker closes without an answer, or the client
//! closes before one, is forgotten here, and [`Channels::forget`] says whether it still
//! counted as unanswered, so that the hang-up after a connection's last command still
//! comes. (russh does not report a close of a channel the server closed first, so a channel
//! answered normally stays here until its connection ends: at most
//! `COMMANDS_PER_CONNECTION` entries.)

use std::collections::HashMap;

use russh::ChannelId;

use super::answer::{ExecReply, HeldReply};
use crate::commands::Invocation;

/// A command reading its stdin.
pub(super) struct Waiting {
    pub(super) inv: Invocation,
    pub(super) stdin: Vec<u8>,
    /// Its exec reply, if held (not on a channel with a pty: it went with the request).
    pub(super) reply: Option<HeldReply>,
}

impl Waiting {
    /// Where the exec reply stands now that the answer is to be sent (or never will be).
    pub(super) fn take_reply(&self) -> ExecReply {
        self.reply.as_ref().map_or(ExecReply::Sent, HeldReply::take)
    }
}

/// One open session channel.
#[derive(Default)]
struct Chan {
    /// A pty was granted: exec replies are not held, since a terminal's window-change may
    /// come at any moment and would take a held reply's place.
    pty: bool,
    /// It has had its exec or shell.
    started: bool,
}

/// A connection's open session channels.
#[derive(Default)]
pub(super) struct Channels {
    open: HashMap<ChannelId, Chan>,
    waiting: HashMap<ChannelId, Waiting>,
}

impl Channels {
    /// Records a channel just accepted.
    pub(super) fn open(&mut self, channel: ChannelId) {
        self.open.insert(channel, Chan::default());
    }

    /// Records a pty on `channel`.
    pub(super) fn set_pty(&mut self, channel: ChannelId) {
        if let Some(c) = self.open.get_mut(&channel) {
            c.pty = true;
        }
    }

    pub(super) fn has_pty(&self, channel: ChannelId) -> bool {
        self.open.get(&channel).is_some_and(|c| c.pty)
    }

    /// Marks `channel`'s one command as started; false if it had one, or is not open.
    pub(super) fn start(&mut self, channel: ChannelId) -> bool {
        self.open
            .get_mut(&channel)
            .is_some_and(|c| !std::mem::replace(&mut c.started, true))
    }

    /// Keeps `w` until its stdin ends.
    pub(super) fn wait(&mut self, channel: ChannelId, w: Waiting) {
        self.waiting.insert(channel, w);
    }

    /// Commands waiting for their stdin.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub(super) fn waiting_mut(&mut self, channel: ChannelId) -> Option<&mut Waiting> {
        self.waiting.get_mut(&channel)
    }

    /// Takes the waiting command of `channel`, to run or to refuse: it will be answered.
    pub(super) fn take_waiting(&mut self, channel: ChannelId) -> Option<Waiting> {
        self.waiting.remove(&channel)
    }

    /// Takes the waiting command of `channel` if its exec reply is held.
    pub(super) fn take_held(&mut self, channel: ChannelId) -> Option<Waiting> {
        self.waiting.get(&channel)?.reply.as_ref()?;
        self.waiting.remove(&channel)
    }

    /// Forgets `channel`, closed without an answer (by the broker, or by the client); its
    /// waiting command, if any, is dropped. True if it counted as unanswered: it had no
    /// command, or one that was still waiting for its stdin (a running one answers anyway).
    pub(super) fn forget(&mut self, channel: ChannelId) -> bool {
        let waited = self.waiting.remove(&channel).map(|w| w.take_reply());
        self.open
            .remove(&channel)
            .is_some_and(|c| !c.started || waited.is_some())
    }
}
