//! The one error type of the library: each variant says what is wrong and what to do next.

use std::path::PathBuf;

use crate::model::GrantRole;
use crate::target::TargetKind;

/// A library result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, in words a user can act on.
///
/// Every variant has a stable machine `code` (part of the `--json` contract) and a
/// lowercase message that pairs the problem with a recommendation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value given on the command line is malformed or out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The exec line could not be parsed as a command.
    #[error("{0}")]
    Usage(String),
    /// The first word of the exec line is not a command.
    #[error("unknown command '{command}'; {hint}")]
    UnknownCommand { command: String, hint: String },
    /// The exec line is over the size limit.
    #[error(
        "command line is {len} bytes; the limit is {max} bytes. Shorten the reason or other arguments"
    )]
    ExecLineTooLong { len: usize, max: usize },
    /// JIT can only grant VIEWER or EDITOR.
    #[error(
        "role '{0}' cannot be requested: just-in-time access grants only 'viewer' or 'editor'. Ask an owner to change your base role if you need more"
    )]
    RoleNotGrantable(String),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// No target by that name: says the closest name, and the names there are. `what` is
    /// what was looked for (`host`, or `host, fleet or command`).
    #[error("no {what} named {name}{}", name_hint(.what, .did_you_mean, .known))]
    UnknownTarget {
        what: &'static str,
        name: String,
        did_you_mean: Option<String>,
        known: Vec<String>,
    },
    /// A name taken by a target of any kind (they share one namespace).
    #[error(
        "{name} is already a {kind}; hosts, fleets and commands share one namespace, so pick another name (or remove the {kind} first)"
    )]
    NameTaken { name: String, kind: TargetKind },
    /// `--role` given for a fleet command.
    #[error(
        "{name} is a fleet command: it runs its own command as its own login, so it takes no --role; ask again without --role"
    )]
    RoleForCommand { name: String },
    /// No `--role` for a host or fleet.
    #[error("{kind} {name} needs a role; add --role viewer or --role editor")]
    RoleMissing { kind: TargetKind, name: String },
    /// A target that covers no host now.
    #[error("{kind} {name} covers no host right now, so there is nothing to grant: {why}")]
    EmptyTarget {
        kind: TargetKind,
        name: String,
        why: String,
    },
    /// A target with more hosts than one grant may hold.
    #[error(
        "{kind} {name} covers {hosts} hosts, more than the {max} one grant may hold (OpenSSH accepts at most 256 principals in a certificate); narrow it with more tags, or ask for a smaller fleet"
    )]
    TooManyHosts {
        kind: TargetKind,
        name: String,
        hosts: usize,
        max: u32,
    },
    /// A bot asked for longer than bots may have.
    #[error("bots get at most {max} at a time; ask for {max} or less")]
    BotTooLong { max: String },
    /// No rule approves a bot's request, and no person may.
    #[error(
        "no rule approves this request, and a bot's requests are decided by rules alone ({}); ask an owner for a rule that covers it",
        .why.join("; ")
    )]
    BotNoRule { why: Vec<String> },
    /// A person tried to decide a bot's request.
    #[error(
        "request {id} is from the bot {bot}: bots' requests are decided by rules alone, never by people (rule 17)"
    )]
    BotRequest { id: u64, bot: String },
    /// Break-glass on a target that does not allow it.
    #[error(
        "{kind} {name} does not allow break-glass; make a normal request, or ask an owner to allow it with --break-glass"
    )]
    BreakGlassNotAllowed { kind: TargetKind, name: String },
    /// Break-glass by someone who may not.
    #[error(
        "break-glass needs a person whose base role is editor or higher; you are {who}. Make a normal request"
    )]
    BreakGlassWho { who: String },
    /// A break-glass window over the cap.
    #[error(
        "break-glass lasts at most {max}; ask for {max} or less, and make a normal request for more"
    )]
    BreakGlassTooLong { max: String },
    /// Break-glass without an incident or ticket.
    #[error(
        "break-glass needs an incident or ticket reference in the reason, such as INC-123, OPS-42, #812 or a link"
    )]
    BreakGlassNoReference,
    /// An overdue review blocks the next break-glass.
    #[error(
        "the review of your break-glass grant(s) {} is overdue, so you cannot break glass again until an owner or admin reviews it ('review ID --ok|--flag --comment ...')",
        .ids.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(", ")
    )]
    ReviewOverdue { ids: Vec<u64> },
    /// No host of the target has a login for the role.
    #[error(
        "no host of {kind} {name} has a login for role {role}; ask for the other role, or ask an admin to add hosts with a login for {role}"
    )]
    NoLoginForRole {
        kind: TargetKind,
        name: String,
        role: GrantRole,
    },
    /// Something with that name or key already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller's role does not allow the command.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller was removed or their role changed while their command ran.
    #[error(
        "your membership or role changed while this command ran, so it was not applied; run 'whoami' and try again"
    )]
    MembershipChanged,
    /// What a background change acted on changed first (a timer already gone); nothing to do.
    #[error("it changed meanwhile; nothing was done")]
    Stale,
    /// The request is not in a state that allows the action.
    #[error("{0}")]
    InvalidState(String),
    /// A certificate was asked for outside the grant window.
    #[error("{0}")]
    GrantNotCurrent(String),
    /// A public key could not be used.
    #[error("{0}")]
    InvalidKey(String),
    /// A connection limit was hit.
    #[error("{0}")]
    Busy(String),
    /// A member ran a command more often than the rate limit allows.
    #[error(
        "you ran '{command}' too often in a short time (at most {burst} at once, then {per_minute} a minute); try again in {retry_after_secs}s"
    )]
    RateLimited {
        command: &'static str,
        burst: u32,
        per_minute: u32,
        retry_after_secs: u64,
    },
    /// A member has as many pending requests as they may.
    #[error(
        "you already have {max} pending requests ({}); cancel one with 'cancel ID' or wait for a decision, then ask again",
        .open.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(", ")
    )]
    TooManyPending { open: Vec<u64>, max: u32 },
    /// A grant has had as many certificates as one grant gets.
    #[error(
        "request {id} has had {max} certificates, the most one grant gets; reuse one you have ('sshjit certs') or make a new request"
    )]
    CertificateLimit { id: u64, max: u32 },
    /// The database is held by another process (normally a running broker).
    #[error(
        "the database in {} is in use by a running broker; stop it first (to check the audit chain while it runs, use 'audit verify' over SSH)",
        .0.display()
    )]
    DatabaseInUse(PathBuf),
    /// The data directory is missing pieces or already exists.
    #[error("{0}")]
    DataDir(String),
    /// The configuration file is invalid.
    #[error("{0}")]
    Config(String),
    /// The database engine failed underneath us.
    #[error("storage error: {0}; the last change was not applied")]
    Storage(String),
    /// The shared database cannot commit now (etcd without a quorum, or out of reach).
    #[error(
        "the database is unavailable: {0}. Try again once the etcd cluster has a quorum (reads keep working while one member answers)"
    )]
    StoreUnavailable(String),
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The broker could not be reached or the connection dropped.
    #[error("{0}")]
    Connect(String),
    /// The broker's host key is unknown, changed, or not trusted.
    #[error("{0}")]
    BrokerKey(String),
    /// The broker did not accept our identity.
    #[error("{0}")]
    Auth(String),
    /// A local step of the helper failed (files, ssh-agent, ssh).
    #[error("{0}")]
    Client(String),
    /// A signed note or checkpoint that does not parse, or whose signature does not verify.
    #[error("{0}")]
    BadCheckpoint(String),
    /// A checkpoint or proof asked of the log beyond what it holds.
    #[error(
        "the audit log holds {size} entries, and {asked} is beyond that; ask for a size or entry from 1 to {size}"
    )]
    BeyondLog { size: u64, asked: u64 },
    /// The broker could not prove that its log extends a checkpoint a client verified before:
    /// the log was cut, rewritten or forked, or it is not the same broker.
    #[error(
        "THE BROKER'S AUDIT LOG NO LONGER EXTENDS WHAT THIS CLIENT SAW at {broker}: {detail}. Its log may have been cut, rewritten or forked. Nothing was sent. Report this to your owners and keep {evidence} as evidence; once they confirm the broker was restored on purpose, delete that file and connect again"
    )]
    LogNotExtended {
        broker: String,
        detail: String,
        evidence: String,
    },
    /// The broker refused a command; its code and message.
    #[error("{message}")]
    Remote { code: String, message: String },
    /// A bug or broken invariant; never expected.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable machine-readable code used in `--json` error output.
    pub fn code(&self) -> &str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Usage(_) => "usage",
            Error::UnknownCommand { .. } => "unknown_command",
            Error::ExecLineTooLong { .. } => "command_too_long",
            Error::RoleNotGrantable(_) => "role_not_grantable",
            Error::RoleForCommand { .. } | Error::RoleMissing { .. } => "invalid_argument",
            Error::NotFound(_) | Error::UnknownTarget { .. } => "not_found",
            Error::AlreadyExists(_) | Error::NameTaken { .. } => "already_exists",
            Error::EmptyTarget { .. } | Error::NoLoginForRole { .. } => "invalid_state",
            Error::TooManyHosts { .. } | Error::BotTooLong { .. } => "limit_reached",
            Error::BreakGlassTooLong { .. } => "limit_reached",
            Error::BotNoRule { .. }
            | Error::BotRequest { .. }
            | Error::BreakGlassNotAllowed { .. }
            | Error::BreakGlassWho { .. } => "permission_denied",
            Error::BreakGlassNoReference => "invalid_argument",
            Error::ReviewOverdue { .. } => "invalid_state",
            Error::PermissionDenied(_) | Error::MembershipChanged => "permission_denied",
            Error::InvalidState(_) | Error::Stale => "invalid_state",
            Error::GrantNotCurrent(_) => "grant_not_current",
            Error::InvalidKey(_) => "invalid_key",
            Error::Busy(_) | Error::RateLimited { .. } => "busy",
            Error::TooManyPending { .. } | Error::CertificateLimit { .. } => "limit_reached",
            Error::DatabaseInUse(_) => "database_in_use",
            Error::DataDir(_) => "data_dir",
            Error::Config(_) => "config",
            Error::Storage(_) => "storage",
            Error::StoreUnavailable(_) => "unavailable",
            Error::Io { .. } => "io",
            Error::Connect(_) => "connect",
            Error::BrokerKey(_) => "broker_key",
            Error::Auth(_) => "auth",
            Error::Client(_) => "client",
            Error::BadCheckpoint(_) => "bad_checkpoint",
            Error::BeyondLog { .. } => "beyond_log",
            Error::LogNotExtended { .. } => "log_not_extended",
            Error::Remote { code, .. } => code,
            Error::Internal(_) => "internal",
        }
    }

    /// Seconds after which the same command may succeed, for rate limits.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// "; did you mean X? The hosts are: a, b" (at most ten names), without naming a command, so
/// it reads right in every client.
fn name_hint(what: &str, did_you_mean: &Option<String>, known: &[String]) -> String {
    let plural = match what {
        "host" => "hosts",
        "fleet" => "fleets",
        "command" => "commands",
        _ => "names",
    };
    let list = match known.len() {
        0 => format!("there are no {plural} yet (an owner or admin adds them)"),
        n if n <= 10 => format!("the {plural} are: {}", known.join(", ")),
        n => format!(
            "the {plural} include: {} and {} more",
            known[..10].join(", "),
            n - 10
        ),
    };
    match did_you_mean {
        Some(d) => {
            let mut list = list;
            if let Some(first) = list.get(..1) {
                let upper = first.to_uppercase();
                list.replace_range(..1, &upper);
            }
            format!("; did you mean {d}? {list}")
        }
        None => format!("; {list}"),
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("stored record does not decode: {e}"))
    }
}
