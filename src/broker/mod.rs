//! The broker service: runs one parsed command for an authenticated key at a given time.
//!
//! This is transport-free: the SSH server, the tests and the property tests all call
//! [`Broker::execute`] with `now` as an argument.

mod access;
mod answer;
mod fleets;
mod hosts;
mod log;
mod members;
mod notify;
mod proofs;
mod request;
mod rules;
mod targets;
mod wait;

pub use answer::{Answer, Output, Reply};
pub use log::verify_reply;
pub use wait::MAX_WAIT_SECS;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::audit::AuditEvent;
use crate::ca::Ca;
use crate::checkpoint::NoteSigner;
use crate::commands::{Command, Invocation, Parsed};
use crate::error::{Error, Result};
use crate::justify::llm::{Model, Written};
use crate::model::{IdentityId, Member, Timestamp};
use crate::notify::config::Endpoint;
use crate::notify::deliver::{ATTEMPT_TIMEOUT, Deliverer};
use crate::policy::{Policy, RateLimit, require_manager};
use crate::store::{Store, Ticket, Tx, TxResult};

/// One command's context: when it runs, and whether the caller waits for durability itself.
pub struct Call {
    pub now: Timestamp,
    defer: bool,
    ticket: Cell<Option<Ticket>>,
    /// A model's justification text for a `request`, written before the call.
    written: Option<Written>,
}

impl Call {
    fn new(now: Timestamp, defer: bool) -> Self {
        Call {
            now,
            defer,
            ticket: Cell::new(None),
            written: None,
        }
    }
}

/// The broker: its database, its CA and its policy.
pub struct Broker {
    store: Store,
    ca: Ca,
    policy: Policy,
    /// Per member and rate-limited command, when their bucket is full again (see
    /// [`RateLimit::take`]). In memory: a restart forgets it, which only ever allows more.
    rates: Mutex<HashMap<(IdentityId, &'static str), i64>>,
    /// Where notifications go, when any endpoint is configured.
    deliverer: Option<Arc<Deliverer>>,
    /// The model that writes justifications, when one is configured.
    model: Option<Model>,
    /// Signs the audit log's checkpoints.
    checkpoints: proofs::Checkpoints,
}

impl Broker {
    pub fn new(store: Store, ca: Ca, signer: NoteSigner, policy: Policy) -> Self {
        Broker {
            store,
            ca,
            checkpoints: proofs::Checkpoints::new(signer),
            policy,
            rates: Mutex::new(HashMap::new()),
            deliverer: None,
            model: None,
        }
    }

    /// Asks `model` (if any) to write each request's justification.
    pub fn with_model(mut self, model: Option<Model>) -> Self {
        self.model = model;
        self
    }

    /// The model that writes justifications, if one is configured.
    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// Sends notifications to `endpoints` (none: changes write no notifications).
    pub fn with_notify(mut self, endpoints: Vec<Endpoint>) -> Result<Self> {
        if endpoints.is_empty() {
            return Ok(self);
        }
        let d = Deliverer::new(endpoints, &self.store, ATTEMPT_TIMEOUT)?;
        self.store.set_outbox(true);
        self.deliverer = Some(Arc::new(d));
        Ok(self)
    }

    /// The delivery worker's view of the endpoints, if any are configured.
    pub fn deliverer(&self) -> Option<&Deliverer> {
        self.deliverer.as_deref()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The member whose identity key has this fingerprint, if any.
    pub fn member_for_key(&self, fingerprint: &str) -> Result<Option<Member>> {
        self.store.member_by_key(fingerprint)
    }

    /// Parses and runs an exec line for the key with `fingerprint`.
    pub fn run_line(&self, fingerprint: &str, line: &[u8], stdin: &[u8], now: Timestamp) -> Output {
        match crate::commands::parse_line(line) {
            Ok(Parsed::Help(h)) => Output::text(h),
            Ok(Parsed::Run(inv)) => self.execute(fingerprint, &inv, stdin, now),
            Err(e) => Output::error(&e, wants_json(line)),
        }
    }

    /// Runs a parsed command for the key with `fingerprint` at `now`; changes are durable
    /// when it returns.
    pub fn execute(
        &self,
        fingerprint: &str,
        inv: &Invocation,
        stdin: &[u8],
        now: Timestamp,
    ) -> Output {
        let (out, proven) = self.run(fingerprint, inv, stdin, &Call::new(now, false));
        // The change was durable before `run` returned.
        self.prove(out, proven)
    }

    /// Like [`Broker::execute`], but leaves waiting for durability to the caller: the answer
    /// is shown only through [`Answer::ready`] or [`Broker::finish`].
    pub fn execute_deferred(
        &self,
        fingerprint: &str,
        inv: &Invocation,
        stdin: &[u8],
        now: Timestamp,
    ) -> Answer {
        self.execute_written(fingerprint, inv, stdin, now, None)
    }

    /// [`Broker::execute_deferred`] with a model's justification text for a `request`.
    pub fn execute_written(
        &self,
        fingerprint: &str,
        inv: &Invocation,
        stdin: &[u8],
        now: Timestamp,
        written: Option<Written>,
    ) -> Answer {
        let mut cx = Call::new(now, true);
        cx.written = written;
        let (out, proven) = self.run(fingerprint, inv, stdin, &cx);
        Answer::new(out, cx.ticket.get(), proven)
    }

    fn run(
        &self,
        fingerprint: &str,
        inv: &Invocation,
        stdin: &[u8],
        cx: &Call,
    ) -> (Output, Option<answer::Proven>) {
        let result = self
            .member_for_key(fingerprint)
            .and_then(|m| {
                m.ok_or_else(|| {
                    Error::PermissionDenied(
                        "this key does not belong to a member; ask an owner or admin to add it with 'member add'".into(),
                    )
                })
            })
            .and_then(|actor| self.dispatch(&actor, inv, stdin, cx));
        match result {
            Ok(reply) => reply.render(inv.json),
            Err(e) => {
                let error = crate::model::escape_for_log(&e.to_string());
                tracing::info!(code = e.code(), %error, "command refused");
                (Output::error(&e, inv.json), None)
            }
        }
    }

    /// Applies `actor`'s change through the store, durably now or deferred to the caller (see
    /// [`Call`]). The change commits only if `actor` is, inside the transaction, still the
    /// member with the identity and role the command was authorized as: a removal or a role
    /// change that committed in between wins.
    fn apply<T>(
        &self,
        cx: &Call,
        actor: &Member,
        change: impl Fn(&Tx<'_>) -> TxResult<(T, Vec<AuditEvent>)>,
    ) -> Result<T> {
        let guarded = |tx: &Tx<'_>| {
            match tx.member(&actor.name)? {
                Some(m) if m.id == actor.id && m.role == actor.role => {}
                _ => return Err(Error::MembershipChanged.into()),
            }
            change(tx)
        };
        let name = actor.name.as_str();
        if !cx.defer {
            return self.store.apply(cx.now, name, guarded);
        }
        let (out, ticket) = self.store.commit(cx.now, name, guarded)?;
        cx.ticket
            .set(Some(cx.ticket.get().map_or(ticket, |t| t.max(ticket))));
        Ok(out)
    }

    /// Runs `f` as one use of the rate-limited `command` by `actor` at `now`. A refusal by `f`
    /// gives the use back: only changes that happen count, since refusals change nothing.
    fn metered<T>(
        &self,
        actor: &Member,
        command: &'static str,
        rate: RateLimit,
        now: Timestamp,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let key = (actor.id, command);
        let (before, after) = {
            let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
            let tat = rates.entry(key).or_insert(0);
            let before = *tat;
            rate.take(command, tat, now)?;
            (before, *tat)
        };
        let out = f();
        if out.is_err() {
            let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tat) = rates.get_mut(&key) {
                *tat = rate.give_back(*tat, before, after);
            }
        }
        out
    }

    /// Whether `actor` could run the rate-limited `command` at `now`, without taking a use.
    fn rate_allows(
        &self,
        actor: &Member,
        command: &'static str,
        rate: RateLimit,
        now: Timestamp,
    ) -> bool {
        let rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let mut tat = rates.get(&(actor.id, command)).copied().unwrap_or(0);
        rate.take(command, &mut tat, now).is_ok()
    }

    fn dispatch(&self, actor: &Member, inv: &Invocation, stdin: &[u8], cx: &Call) -> Result<Reply> {
        match &inv.command {
            Command::Whoami => self.whoami(actor),
            Command::CaPubkey => self.ca_pubkey(),
            Command::Request(args) => self.request(actor, args, cx),
            Command::Status { id, limit } => self.status(actor, *id, *limit, cx),
            Command::Show { id } => self.show(actor, *id, cx),
            Command::Wait { .. } => self.wait_now(actor, inv, cx),
            Command::Cancel { id } => self.cancel(actor, *id, cx),
            Command::Requests {
                state,
                review,
                limit,
            } => self.requests(actor, state.as_deref(), *review, *limit, cx),
            Command::Review {
                id, flag, comment, ..
            } => {
                let verdict = if *flag {
                    crate::verdict::ReviewVerdict::Flagged
                } else {
                    crate::verdict::ReviewVerdict::Ok
                };
                self.review(actor, *id, verdict, comment, cx)
            }
            Command::Rule(op) => self.rule(actor, op, cx),
            Command::Notify(op) => self.notify(actor, op, cx),
            Command::Approve { id, comment } => self.approve(actor, *id, comment.as_deref(), cx),
            Command::Deny { id, reason } => self.deny(actor, *id, reason, cx),
            Command::Cert { id, key } => {
                let text = match key {
                    Some(words) => words.join(" "),
                    None => String::from_utf8_lossy(stdin).into_owned(),
                };
                self.cert(actor, *id, &text, cx)
            }
            Command::Member(cmd) => self.member(actor, cmd, cx),
            Command::Host(cmd) => self.host(actor, cmd, cx),
            Command::Fleet(op) => self.fleet(actor, op, cx),
            Command::Command(op) => self.command(actor, op, cx),
            Command::HostConfig {
                name,
                dir,
                script,
                guard,
            } => self.host_config(actor, name, dir, *script, guard),
            Command::Audit(cmd) => self.audit(actor, cmd),
        }
    }
}

/// Whether a raw exec line asked for JSON, for errors found before it parses.
pub fn wants_json(line: &[u8]) -> bool {
    line.split(|b| b.is_ascii_whitespace())
        .any(|w| w == b"--json")
}
