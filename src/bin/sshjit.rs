//! `sshjit`, the engineer's helper: parses flags, resolves settings, runs one client command.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use sshjit::client::local::Want;
use sshjit::client::{self, ConnectArgs, Settings, helper, listing, local};
use sshjit::commands::RequestArgs;
use sshjit::model::Timestamp;
use sshjit::{Error, cli_docs};

#[derive(Debug, Parser)]
#[command(
    name = "sshjit",
    version,
    about = "Ask for time-boxed SSH access, wait for approval, and connect with a short-lived certificate",
    after_help = "Settings come from flags, then SSHJIT_BROKER / SSHJIT_IDENTITY, then ~/.config/sshjit/config.toml (broker, identity, broker_fingerprint, and role and duration: the defaults for request)."
)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Ask for access to a host or fleet, or to run a fleet command; with --wait, follow it to
    /// a certificate.
    Request {
        #[command(flatten)]
        args: RequestArgs,
        /// Wait for the decision, then fetch the certificate.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show your requests and grants with the time left.
    Status {
        /// A request id; omit to list yours.
        id: Option<u64>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Withdraw a pending request.
    Cancel {
        /// The request id.
        id: u64,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Make a fresh key for an approved grant, have it certified, and add it to ssh-agent.
    Login {
        /// The approved request's id.
        id: u64,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Run ssh to HOST with the current grant's login, key and certificate (a host grant, or a
    /// fleet grant that holds HOST).
    Ssh {
        #[command(flatten)]
        connect: ConnectArgs,
        /// The host's name.
        host: String,
        /// Passed to ssh after the destination (options, then a remote command).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run an approved fleet command on every host of its grant, and sum up how each went.
    Run {
        #[command(flatten)]
        connect: ConnectArgs,
        /// The fleet command's name.
        name: String,
        /// How many hosts at once.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        /// Options for ssh, given before each destination (such as -o ConnectTimeout=5).
        #[arg(last = true)]
        ssh_args: Vec<String>,
    },
    /// Print an ~/.ssh/config block so plain ssh, scp, rsync and git use your certificates.
    SshConfig,
    /// List the certificates stored in ~/.ssh/sshjit.
    Certs,
    /// List what you can request: hosts (with the login for each role), fleets and commands.
    Ls {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show who the broker thinks you are.
    Whoami {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Remove stored keys and certificates (one request's, or all) and their ssh-agent entries.
    Logout {
        /// The request whose certificate to remove.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u64>,
        /// Remove every stored certificate.
        #[arg(long)]
        all: bool,
    },
    /// Print a shell completion script: source it, or install it where your shell looks.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): sshjit man > ~/.local/share/man/man1/sshjit.1
    Man,
}

fn main() -> ExitCode {
    let args = match client::with_request_defaults(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprint!("{}", sshjit::broker::Output::error(&e, false).stderr);
            return ExitCode::FAILURE;
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => match sshjit::commands::duration_hint(&e) {
            Some(hint) => {
                eprint!("{}", e.render());
                eprintln!("tip: {hint}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", sshjit::broker::Output::error(&e, cli.json).stderr);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<(), Error> {
    let printed = match &cli.command {
        // Local-only commands need no broker.
        Cmd::SshConfig => listing::ssh_config(&client::certs_dir()?)?,
        Cmd::Certs => listing::certs(&client::certs_dir()?)?,
        Cmd::Logout { id, .. } => listing::logout(&client::certs_dir()?, *id)?,
        Cmd::Completions { shell } => {
            print!("{}", cli_docs::completions(Cli::command(), *shell));
            return Ok(());
        }
        Cmd::Man => {
            print!("{}", cli_docs::man_page(Cli::command())?);
            return Ok(());
        }
        Cmd::Ls { connect } => listing::ls(&settings(cli, connect)?).await?,
        Cmd::Whoami { connect } => listing::whoami(&settings(cli, connect)?).await?,
        Cmd::Request {
            args,
            wait,
            connect,
        } => helper::request(&settings(cli, connect)?, args, *wait, cli.json).await?,
        Cmd::Status { id, connect } => helper::status(&settings(cli, connect)?, *id).await?,
        Cmd::Cancel { id, connect } => helper::cancel(&settings(cli, connect)?, *id).await?,
        Cmd::Login { id, connect } => helper::login(&settings(cli, connect)?, *id).await?,
        Cmd::Run {
            connect,
            name,
            parallel,
            ssh_args,
        } => {
            let settings = optional_settings(cli, connect)?;
            let (printed, ok) = client::run::run(
                settings.as_ref(),
                &client::certs_dir()?,
                name,
                *parallel,
                ssh_args,
                cli.json,
            )
            .await?;
            if ok {
                printed
            } else {
                if cli.json {
                    println!("{}", printed.json);
                } else {
                    print!("{}", printed.text);
                }
                return Err(Error::Client(format!(
                    "{name} did not succeed on every host; see the summary above"
                )));
            }
        }
        Cmd::Ssh {
            host,
            args,
            connect,
        } => {
            let settings = optional_settings(cli, connect)?;
            let certs_dir = client::certs_dir()?;
            let cert =
                helper::certificate_for(settings.as_ref(), &certs_dir, Want::Host(host)).await?;
            let target = cert.host(host).ok_or_else(|| {
                Error::Internal(format!("the certificate for {host} does not name it"))
            })?;
            let err = exec(helper::ssh_command(&cert, target, args));
            return Err(Error::Client(format!(
                "cannot run ssh: {err}; install openssh-client"
            )));
        }
    };
    if cli.json {
        println!("{}", printed.json);
    } else {
        print!("{}", printed.text);
    }
    Ok(())
}

/// Resolves settings and removes expired certificates, as every broker command does first.
/// The command's connection flags, with those given before the command where it has none.
fn settings(cli: &Cli, connect: &ConnectArgs) -> Result<Settings, Error> {
    let settings = Settings::resolve(&connect.or(&cli.connect))?;
    let pruned = local::prune(&settings.certs_dir, Timestamp::now())?;
    if !pruned.is_empty() && !cli.json && std::io::stderr().is_terminal() {
        eprintln!("sshjit: removed {} expired certificate(s)", pruned.len());
    }
    Ok(settings)
}

/// Settings when there are any: a stored certificate serves without them (`ssh`, `run`), and
/// with them it is checked against the broker.
fn optional_settings(cli: &Cli, connect: &ConnectArgs) -> Result<Option<Settings>, Error> {
    match settings(cli, connect) {
        Ok(s) => Ok(Some(s)),
        Err(Error::Config(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces this process with `cmd`; returns only on failure.
fn exec(mut cmd: std::process::Command) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    cmd.exec()
}
