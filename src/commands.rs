//! The broker's command language: one clap definition, shared by the SSH server and its clients.

use clap::{Args, Parser, Subcommand, error::ErrorKind};

use crate::error::{Error, Result};

/// The longest exec line accepted, in bytes.
pub const MAX_EXEC_LINE: usize = 8 * 1024;

/// One command line, as sent in an SSH exec request.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sshjit",
    bin_name = "ssh BROKER",
    override_usage = "ssh BROKER <COMMAND> [ARGS]... [--json]",
    about = "sshjit broker commands: ask for, approve and use time-boxed SSH access",
    disable_version_flag = true,
    color = clap::ColorChoice::Never
)]
pub struct Invocation {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Every command the broker answers.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Show who the broker thinks you are.
    Whoami,
    /// Print the CA public key that hosts trust.
    CaPubkey,
    /// Ask for time-boxed access to a host or fleet, or to run a fleet command.
    Request(RequestArgs),
    /// Show your requests and grants, or one of them.
    Status {
        /// A request id; omit to list yours.
        id: Option<u64>,
        /// At most this many, newest last.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one request in full (requester or approvers).
    Show {
        /// The request id.
        id: u64,
    },
    /// Wait until a request changes (a decision, an approval, expiry) or is not in --while's
    /// state, then show it; after --timeout, show it as it is.
    Wait {
        /// The request id.
        id: u64,
        /// The state to wait out: pending, approved, denied, expired or cancelled.
        #[arg(long = "while", value_name = "STATE", default_value = "pending")]
        state: String,
        /// How long to wait at most, such as 30s or 2m (at most 5m).
        #[arg(long, value_name = "DURATION", default_value = "60s")]
        timeout: String,
    },
    /// Withdraw your pending request.
    Cancel {
        /// The request id.
        id: u64,
    },
    /// List everyone's requests (owners and admins); escalated ones first.
    Requests {
        /// Only this state: pending, approved, denied, expired or cancelled.
        #[arg(long, conflicts_with = "review")]
        state: Option<String>,
        /// Only break-glass grants waiting for review, overdue ones marked.
        #[arg(long)]
        review: bool,
        /// At most this many, newest last.
        #[arg(long, default_value_t = 200)]
        limit: usize,
    },
    /// Approve a pending request (owners and admins, not your own).
    Approve {
        /// The request id.
        id: u64,
        /// A note for the audit log.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Deny a pending request (owners and admins).
    Deny {
        /// The request id.
        id: u64,
        /// Why, for the requester and the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Review a break-glass grant afterwards (owners and admins, not your own).
    #[command(group(clap::ArgGroup::new("verdict").required(true).args(["ok", "flag"])))]
    Review {
        /// The request id.
        id: u64,
        /// The emergency was real and the access fitting.
        #[arg(long)]
        ok: bool,
        /// Something needs a follow-up.
        #[arg(long)]
        flag: bool,
        /// What you checked, for the audit log.
        #[arg(long)]
        comment: String,
    },
    /// Sign a certificate for a current grant. The public key comes from --key or stdin.
    Cert {
        /// The request id.
        id: u64,
        /// The public key to certify (`ssh-ed25519 AAAA...`); omit to read it from stdin.
        #[arg(long, num_args = 1..=3, value_name = "PUBKEY")]
        key: Option<Vec<String>>,
    },
    /// Manage team members (owners and admins; anyone may change their own keys).
    #[command(subcommand)]
    Member(MemberCommand),
    /// Manage hosts (owners and admins; any member may list them).
    #[command(subcommand)]
    Host(HostCommand),
    /// Manage fleets, named sets of hosts by tag (owners and admins; any member may list them).
    #[command(subcommand)]
    Fleet(FleetOp),
    /// Manage fleet commands, one command line run on a fleet or host (owners and admins; any
    /// member may list them).
    #[command(subcommand)]
    Command(CommandOp),
    /// Manage auto-approval rules (owners; any owner or admin may list them).
    #[command(subcommand)]
    Rule(RuleOp),
    /// See and try where notifications go (owners and admins).
    #[command(subcommand)]
    Notify(NotifyOp),
    /// Print what makes a host trust the broker (owners and admins).
    HostConfig {
        name: String,
        /// Directory on the host for the CA key and principals files.
        #[arg(long, default_value = "/etc/ssh")]
        dir: String,
        /// Print a shell script that writes the files, instead of showing them.
        #[arg(long)]
        script: bool,
        #[command(flatten)]
        guard: GuardArgs,
    },
    /// Read and check the audit log (owners and admins).
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `host-config --session-guard` and where its parts go on the host.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct GuardArgs {
    /// Also install the session guard, which ends every sshjit session when its window ends
    /// (a PAM session hook; sshjit-guard must be installed on the host first).
    #[arg(long)]
    pub session_guard: bool,
    /// Where sshjit-guard is installed on the host.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/usr/local/sbin/sshjit-guard",
        requires = "session_guard"
    )]
    pub guard_path: String,
    /// The PAM service sshd uses (its file in /etc/pam.d).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "sshd",
        requires = "session_guard"
    )]
    pub pam_service: String,
}

/// `request` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RequestArgs {
    /// What to access: a host, a fleet or a fleet command, by name.
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// viewer or editor (for a host or fleet; a fleet command takes none).
    #[arg(long)]
    pub role: Option<String>,
    /// How long, such as 30m, 2h or 1h30m (5m to 24h).
    #[arg(long = "for", visible_alias = "duration", value_name = "DURATION")]
    pub duration: String,
    /// Why you need access; cite a ticket or incident.
    #[arg(long)]
    pub reason: String,
    /// When the window may start at the earliest: RFC 3339 or +DURATION.
    #[arg(long)]
    pub start: Option<String>,
    /// An emergency: granted at once without approvers on targets that allow it, at most
    /// 1h by default, with an incident or ticket in the reason; reviewed afterwards.
    #[arg(long)]
    pub break_glass: bool,
}

impl RequestArgs {
    /// The broker command words that carry these arguments: the one place a client turns
    /// them back into a command, so a new flag cannot be dropped on the way (see the
    /// round-trip test).
    pub fn to_words(&self) -> Vec<String> {
        let RequestArgs {
            target,
            role,
            duration,
            reason,
            start,
            break_glass,
        } = self;
        // `--flag=value`, so a value that starts with a dash stays a value.
        let mut w = vec![
            "request".to_string(),
            target.clone(),
            format!("--for={duration}"),
            format!("--reason={reason}"),
        ];
        if let Some(r) = role {
            w.push(format!("--role={r}"));
        }
        if let Some(s) = start {
            w.push(format!("--start={s}"));
        }
        if *break_glass {
            w.push("--break-glass".into());
        }
        w
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum MemberCommand {
    /// Add a member with an identity key.
    Add {
        name: String,
        #[arg(long)]
        role: String,
        /// human (default) or bot: a pipeline or agent, decided by rules alone.
        #[arg(long, default_value = "human")]
        kind: String,
        /// The member's SSH public key (`ssh-ed25519 AAAA... [comment]`).
        #[arg(long, num_args = 1..=3, value_name = "PUBKEY", required = true)]
        key: Vec<String>,
    },
    /// List members.
    List,
    /// Remove a member: their keys stop working, their pending requests are cancelled and
    /// their grants ended. The name may be used again; it starts from nothing.
    Remove { name: String },
    /// Change a member's base role (only owners change owners and admins, or make one).
    SetRole {
        name: String,
        /// owner, admin, editor or viewer.
        #[arg(long)]
        role: String,
    },
    /// Give a member another identity key.
    KeyAdd {
        name: String,
        /// The new SSH public key (`ssh-ed25519 AAAA... [comment]`).
        #[arg(long, num_args = 1..=3, value_name = "PUBKEY", required = true)]
        key: Vec<String>,
    },
    /// Take an identity key from a member; it stops working at once.
    KeyRemove {
        name: String,
        /// The key's SHA-256 fingerprint, as `member list` shows it.
        #[arg(long)]
        fingerprint: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum HostCommand {
    /// Add a host.
    Add {
        name: String,
        #[arg(long)]
        address: String,
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// A tag such as prod; repeat for more.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// ROLE=USER: the unix login for a role (viewer or editor); repeat for both.
        #[arg(long = "login", required = true)]
        logins: Vec<String>,
        /// Distinct approvals needed (1-5).
        #[arg(long, default_value_t = 1)]
        approvals: u32,
        #[command(flatten)]
        options: TargetOptions,
    },
    /// List hosts.
    List,
    /// Remove a host: its pending requests are cancelled and its grants ended.
    Remove { name: String },
}

/// What a host, fleet or command allows beyond normal requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct TargetOptions {
    /// Allow break-glass requests: granted at once, reviewed afterwards.
    #[arg(long)]
    pub break_glass: bool,
    /// A pending request older than this reads as escalated and is listed first (1m to 7d).
    #[arg(long, value_name = "DURATION")]
    pub escalate_after: Option<String>,
}

/// `rule add` arguments.
#[derive(Debug, Clone, Args)]
pub struct RuleArgs {
    pub name: String,
    /// A target (host, fleet or command) it covers; repeat for more.
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
    /// Or: requests whose every host carries one of these tags; repeat for more.
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// The highest effective role it approves: viewer (default) or editor.
    #[arg(long, default_value = "viewer")]
    pub role: String,
    /// A fleet command it covers (like --target, for commands only); repeat for more.
    #[arg(long = "command", value_name = "NAME")]
    pub commands: Vec<String>,
    /// The longest window it approves (default: the policy's longest).
    #[arg(long, value_name = "DURATION")]
    pub max_duration: Option<String>,
    /// The highest risk score it approves, 0-100 (default 100).
    #[arg(long, value_name = "N")]
    pub max_risk: Option<u8>,
    /// Only this member's requests.
    #[arg(long, group = "who", value_name = "NAME")]
    pub requester: Option<String>,
    /// Only members whose base role is at least this.
    #[arg(long, group = "who", value_name = "ROLE")]
    pub base_role: Option<String>,
    /// Only people (human) or only bots (bot).
    #[arg(long, group = "who", value_name = "human|bot")]
    pub kind: Option<String>,
    /// At most N approvals per --per period, counted across restarts.
    #[arg(long, requires = "per", value_name = "N")]
    pub max_uses: Option<u32>,
    /// The period of --max-uses, such as 24h.
    #[arg(long, requires = "max_uses", value_name = "DURATION")]
    pub per: Option<String>,
    /// Days it applies, such as mon-fri or sat,sun (default every day).
    #[arg(long, value_name = "DAYS")]
    pub days: Option<String>,
    /// Hours it applies, such as 09:00-18:00 (default all day).
    #[arg(long, value_name = "HH:MM-HH:MM")]
    pub hours: Option<String>,
    /// The time zone of --days and --hours, such as Europe/Berlin (default UTC).
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum NotifyOp {
    /// Per endpoint: what waits, what was delivered or given up, and the last error.
    Status,
    /// Send a test notification to every endpoint.
    Test,
}

#[derive(Debug, Clone, Subcommand)]
pub enum RuleOp {
    /// Add an auto-approval rule (owners only). It approves a request at creation when every
    /// condition holds, never where two or more approvals are needed.
    Add(Box<RuleArgs>),
    /// List rules, with the uses left in their period.
    List,
    /// Show one rule.
    Show { name: String },
    /// Remove a rule (owners only).
    Remove { name: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum FleetOp {
    /// Add a fleet: the hosts carrying all of its tags, as of the moment of use.
    Add {
        name: String,
        /// A tag the fleet's hosts carry; repeat for more (a host needs them all).
        #[arg(long = "tag", required = true)]
        tags: Vec<String>,
        /// Distinct approvals needed (1-5); a host that needs more raises it.
        #[arg(long, default_value_t = 1)]
        approvals: u32,
        /// The most hosts one grant may hold (1-256; OpenSSH accepts 256 principals).
        #[arg(long, default_value_t = 256)]
        max_hosts: u32,
        #[command(flatten)]
        options: TargetOptions,
    },
    /// List fleets, with how many hosts each covers now.
    List,
    /// Show a fleet and the hosts it covers right now.
    Show { name: String },
    /// Remove a fleet: its pending requests are cancelled and its grants ended.
    Remove { name: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum CommandOp {
    /// Add a fleet command: COMMAND LINE run as USER on a fleet or a host, and nothing else.
    #[command(group(clap::ArgGroup::new("on").required(true).args(["fleet", "host"])))]
    Add {
        name: String,
        /// The fleet it runs on.
        #[arg(long)]
        fleet: Option<String>,
        /// The host it runs on.
        #[arg(long)]
        host: Option<String>,
        /// The command line sshd runs (the certificate's force-command).
        #[arg(long, value_name = "COMMAND LINE")]
        run: String,
        /// The unix login it runs as on every host.
        #[arg(long, value_name = "USER")]
        login: String,
        /// Distinct approvals needed (1-5); its fleet or hosts may need more.
        #[arg(long, default_value_t = 1)]
        approvals: u32,
        #[command(flatten)]
        options: TargetOptions,
    },
    /// List fleet commands.
    List,
    /// Show a fleet command and the hosts it runs on right now.
    Show { name: String },
    /// Remove a fleet command: its pending requests are cancelled and its grants ended.
    Remove { name: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Show audit entries.
    Log {
        /// Start at this sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Recompute the hash chain and name the first entry that does not match.
    Verify,
    /// Print entries as JSON lines, all of them by default; page a large log with --from/--limit.
    Export {
        /// Start at this sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// At most this many entries.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print the log's latest signed checkpoint (a C2SP signed note); keep it, and every later
    /// checkpoint must extend it. Any member.
    Checkpoint {
        /// A checkpoint of the first N entries instead of the whole log.
        #[arg(long, value_name = "N")]
        size: Option<u64>,
        /// Print the checkpoint text's SSHSIG signature instead, for 'ssh-keygen -Y verify'.
        #[arg(long, conflicts_with = "signers")]
        sshsig: bool,
        /// Print the allowed_signers line for 'ssh-keygen -Y verify' instead.
        #[arg(long)]
        signers: bool,
    },
    /// Prove that entry SEQ is in the log (an RFC 6962 inclusion proof). Any member.
    Prove {
        seq: u64,
        /// Against the checkpoint of the first N entries instead of the latest.
        #[arg(long, value_name = "N")]
        size: Option<u64>,
    },
    /// Prove that the log extends its first N entries (an RFC 6962 consistency proof). Any member.
    Consistency {
        /// The size of the checkpoint you hold.
        #[arg(long, value_name = "N")]
        from: u64,
        /// Up to the checkpoint of the first M entries instead of the latest.
        #[arg(long, value_name = "M")]
        to: Option<u64>,
    },
}

/// What parsing an exec line produced.
#[derive(Debug)]
pub enum Parsed {
    /// A command to run.
    Run(Box<Invocation>),
    /// Text to print with success (help).
    Help(String),
}

impl Command {
    /// Commands whose work grows with the whole audit log.
    pub fn is_heavy(&self) -> bool {
        matches!(
            self,
            Command::Audit(
                AuditCommand::Log { .. } | AuditCommand::Verify | AuditCommand::Export { .. }
            )
        )
    }

    /// Commands that wait for something to happen (the server runs them asynchronously).
    pub fn waits(&self) -> bool {
        matches!(self, Command::Wait { .. })
    }
}

impl Invocation {
    /// Whether the command reads the client's stdin before running.
    pub fn reads_stdin(&self) -> bool {
        matches!(self.command, Command::Cert { key: None, .. })
    }
}

/// How many lines each thread remembers the parse of, and the longest line it remembers.
const MEMO_LINES: usize = 128;
const MEMO_LINE_BYTES: usize = 256;

thread_local! {
    static MEMO: std::cell::RefCell<std::collections::HashMap<Box<[u8]>, Invocation>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Splits an exec line as a POSIX shell would (quotes and backslashes, no expansion) and parses it.
///
/// A parse depends on the line alone (arguments stay text until a command reads them), and
/// clients repeat their lines (`whoami`, `wait 7`, `cert 7 --json`), so each thread remembers
/// what its recent short lines parsed to: a lookup costs a fraction of clap's few
/// microseconds. Only lines that parsed to a command are remembered.
pub fn parse_line(line: &[u8]) -> Result<Parsed> {
    let short = line.len() <= MEMO_LINE_BYTES;
    if short && let Some(inv) = MEMO.with(|m| m.borrow().get(line).cloned()) {
        return Ok(Parsed::Run(Box::new(inv)));
    }
    let parsed = parse_fresh(line)?;
    if short && let Parsed::Run(inv) = &parsed {
        MEMO.with(|m| {
            let mut m = m.borrow_mut();
            if m.len() >= MEMO_LINES {
                m.clear();
            }
            m.insert(line.into(), (**inv).clone());
        });
    }
    Ok(parsed)
}

fn parse_fresh(line: &[u8]) -> Result<Parsed> {
    if line.len() > MAX_EXEC_LINE {
        return Err(Error::ExecLineTooLong {
            len: line.len(),
            max: MAX_EXEC_LINE,
        });
    }
    let line = std::str::from_utf8(line)
        .map_err(|_| Error::Usage("the command is not valid UTF-8; send plain text".into()))?;
    let words = shlex::split(line).ok_or_else(|| {
        Error::Usage(
            "the command has an unclosed quote or a trailing backslash; check its quoting (for an apostrophe in a reason, use double quotes inside: --reason '\"can't log in\"')".into(),
        )
    })?;
    parse_words(&words)
}

/// Parses already-split words.
pub fn parse_words(words: &[String]) -> Result<Parsed> {
    if words.is_empty() {
        return Ok(Parsed::Help(help_text()));
    }
    if words.len() == 1 && words[0] == "help" {
        return Ok(Parsed::Help(help_text()));
    }
    let argv = std::iter::once("sshjit").chain(words.iter().map(String::as_str));
    match parse_argv(argv) {
        Ok(inv) => Ok(Parsed::Run(Box::new(inv))),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                Ok(Parsed::Help(e.render().to_string()))
            }
            ErrorKind::InvalidSubcommand => Err(unknown_command(&e, words)),
            kind => {
                let mut msg = clean_clap_error(&e.render().to_string());
                if let Some(hint) = duration_hint(&e) {
                    msg.push_str(&format!(". {hint}"));
                } else if kind == ErrorKind::UnknownArgument {
                    msg.push_str(
                        ". A value with spaces needs its own quotes inside the ssh command, such as --reason \"'INC-7 restart the worker'\"",
                    );
                }
                if msg.contains("'<ID>'") {
                    msg.push_str(". Request ids are numbers, such as 7");
                }
                Err(Error::Usage(msg))
            }
        },
    }
}

/// A hint when a stray word is a time unit (`--for 2 hours`): durations are one word.
pub fn duration_hint(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(word)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let unit = matches!(
        word.to_ascii_lowercase().as_str(),
        "s" | "sec"
            | "secs"
            | "second"
            | "seconds"
            | "m"
            | "min"
            | "mins"
            | "minute"
            | "minutes"
            | "h"
            | "hr"
            | "hrs"
            | "hour"
            | "hours"
            | "d"
            | "day"
            | "days"
    );
    unit.then(|| "write a duration as one word with its unit, such as --for 2h or --for 90m".into())
}

/// Parses with a command tree built once per thread: building it costs more than parsing.
fn parse_argv<'a>(
    argv: impl Iterator<Item = &'a str>,
) -> std::result::Result<Invocation, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    thread_local! {
        static TREE: std::cell::RefCell<clap::Command> =
            std::cell::RefCell::new(Invocation::command().color(clap::ColorChoice::Never));
    }
    TREE.with(|tree| {
        let mut cmd = tree.borrow_mut();
        let matches = cmd.try_get_matches_from_mut(argv)?;
        Invocation::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
    })
}

/// Names the unknown word and what would have been valid in its place.
fn unknown_command(e: &clap::Error, words: &[String]) -> Error {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};
    let bad = match e.get(ContextKind::InvalidSubcommand) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => words.first().cloned().unwrap_or_default(),
    };
    let parent = words.first().filter(|w| **w != bad).and_then(|first| {
        Invocation::command().find_subcommand(first).map(|c| {
            (
                first.clone(),
                c.get_subcommands()
                    .map(|s| s.get_name().to_string())
                    .filter(|n| n != "help")
                    .collect::<Vec<_>>(),
            )
        })
    });
    let did_you_mean = |names: &[String]| {
        crate::model::closest(&bad, names.iter().map(String::as_str))
            .map(|c| format!("did you mean '{c}'? "))
            .unwrap_or_default()
    };
    match parent {
        Some((first, subs)) => Error::UnknownCommand {
            command: format!("{first} {}", crate::model::printable(&bad, 40)),
            hint: format!(
                "{}'{first}' takes: {}. Run '{first} --help' for details",
                did_you_mean(&subs),
                subs.join(", ")
            ),
        },
        None => {
            let known = known_commands();
            Error::UnknownCommand {
                command: crate::model::printable(&bad, 40),
                hint: format!(
                    "{}the commands are: {}. Run 'help' for details",
                    did_you_mean(&known),
                    known.join(", ")
                ),
            }
        }
    }
}

/// The top-level command names.
pub fn known_commands() -> Vec<String> {
    use clap::CommandFactory;
    Invocation::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .filter(|n| n != "help")
        .collect()
}

/// The full help text.
pub fn help_text() -> String {
    use clap::CommandFactory;
    Invocation::command().render_help().to_string()
}

fn clean_clap_error(s: &str) -> String {
    let s = s.trim().trim_start_matches("error: ");
    s.replace(
        "\n\nFor more information, try '--help'.",
        "; add --help to the command for usage",
    )
    .replace("Usage: ", "usage: ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> Invocation {
        match parse_line(line.as_bytes()).unwrap() {
            Parsed::Run(i) => *i,
            Parsed::Help(h) => panic!("help: {h}"),
        }
    }

    #[test]
    fn a_remembered_line_parses_as_it_did_the_first_time() {
        let line =
            "request web-01 --role viewer --for 2h --reason 'INC-7 restart the worker' --json";
        let fresh = match parse_fresh(line.as_bytes()).unwrap() {
            Parsed::Run(i) => format!("{i:?}"),
            Parsed::Help(h) => panic!("help: {h}"),
        };
        for _ in 0..3 {
            assert_eq!(format!("{:?}", run(line)), fresh);
        }
        // Lines differ by one byte: each gets its own parse.
        assert!(matches!(run("cert 7").command, Command::Cert { id: 7, .. }));
        assert!(matches!(run("cert 8").command, Command::Cert { id: 8, .. }));
        // A refusal is not remembered as anything: it is refused again.
        for _ in 0..2 {
            assert!(matches!(parse_line(b"cert seven"), Err(Error::Usage(_))));
        }
        // More lines than the memo holds: it starts again, and parses stay right.
        for id in 0..(MEMO_LINES as u64 * 2) {
            let line = format!("wait {id}");
            assert!(matches!(run(&line).command, Command::Wait { id: i, .. } if i == id));
        }
        assert!(MEMO.with(|m| m.borrow().len()) <= MEMO_LINES);
    }

    #[test]
    fn quoting_follows_posix_shell_rules() {
        let inv = run(r#"request web-01 --role editor --for 2h --reason 'fix "it"' --json"#);
        let Command::Request(a) = inv.command else {
            panic!()
        };
        assert_eq!(a.reason, r#"fix "it""#);
        assert!(inv.json);
        let inv = run(r#"deny 3 --reason no\ way"#);
        assert!(matches!(inv.command, Command::Deny { reason, .. } if reason == "no way"));
    }

    #[test]
    fn request_args_round_trip_through_words() {
        let cases = [
            RequestArgs {
                target: "web-01".into(),
                role: Some("editor".into()),
                duration: "2h".into(),
                reason: "INC-1 it's \"quoted\" --role admin; $(rm -rf /)".into(),
                start: Some("+30m".into()),
                break_glass: true,
            },
            RequestArgs {
                target: "db".into(),
                role: Some("viewer".into()),
                duration: "5m".into(),
                reason: "-- leading dashes".into(),
                start: None,
                break_glass: false,
            },
            RequestArgs {
                target: "restart-worker".into(),
                role: None,
                duration: "30m".into(),
                reason: "INC-9 stuck queue".into(),
                start: None,
                break_glass: false,
            },
        ];
        for a in cases {
            let words = a.to_words();
            let line = crate::client::conn::quote_line(
                &words.iter().map(String::as_str).collect::<Vec<_>>(),
                false,
            );
            let Parsed::Run(inv) = parse_line(line.as_bytes()).unwrap() else {
                panic!("help")
            };
            let Command::Request(back) = inv.command else {
                panic!("not a request")
            };
            assert_eq!(back, a, "{line}");
        }
    }

    #[test]
    fn keys_may_span_words() {
        let inv = run("member add bob --role editor --key ssh-ed25519 AAAAC3 bob@laptop");
        let Command::Member(MemberCommand::Add { key, .. }) = inv.command else {
            panic!()
        };
        assert_eq!(key, vec!["ssh-ed25519", "AAAAC3", "bob@laptop"]);
    }

    #[test]
    fn unknown_commands_list_the_known_ones() {
        let err = parse_line(b"frobnicate 1").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("frobnicate") && msg.contains("request") && msg.contains("audit"),
            "{msg}"
        );
    }

    #[test]
    fn help_and_limits() {
        assert!(matches!(parse_line(b"help").unwrap(), Parsed::Help(h) if h.contains("request")));
        assert!(matches!(
            parse_line(b"request --help").unwrap(),
            Parsed::Help(_)
        ));
        assert!(matches!(
            parse_line(&vec![b'a'; MAX_EXEC_LINE + 1]),
            Err(Error::ExecLineTooLong { .. })
        ));
        assert!(matches!(parse_line(b"status 'open"), Err(Error::Usage(_))));
    }
}
