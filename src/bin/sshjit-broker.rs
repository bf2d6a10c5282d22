//! `sshjit-broker`: parses flags, sets up logging, and calls the library (init, serve, offline audit verify).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use sshjit::broker::{Output, verify_reply};
use sshjit::client::{ConnectArgs, Settings, admin};
use sshjit::datadir::{self, DataDir};
use sshjit::model::Timestamp;
use sshjit::store::{EtcdConfig, StoreConfig};
use sshjit::{Error, auditor, cli_docs, dev, server};
use tokio::net::TcpListener;

/// glibc's allocator took a seventh of the broker's time under certificate load (memory taken
/// on a worker thread is freed on the flusher's); with mimalloc, certificates and request
/// cycles on one machine rose by about a third (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "sshjit-broker",
    version,
    about = "sshjit: a just-in-time SSH access broker and certificate authority"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a data dir: CA key, host key, config and database, with the first OWNER.
    Init {
        /// The new data directory (it must not exist, or be empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// The first owner's member name.
        #[arg(long)]
        owner: String,
        /// The owner's SSH public key, as text or as the path of a .pub file.
        #[arg(long)]
        owner_key: String,
        /// Address to listen on (written to config.toml).
        #[arg(long, default_value = "127.0.0.1:2222")]
        listen: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Move a stopped sled broker's database into etcd, checking the audit chain
    ///
    /// Copies every table into an empty etcd prefix, verifies the audit chain before and after,
    /// and only then points the data dir's config at etcd; the sled database stays as a backup.
    #[command(
        after_help = "Example:\n  sshjit-broker migrate --from-data-dir /var/lib/sshjit --to-etcd http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379"
    )]
    Migrate {
        /// The data directory of the sled broker (stopped).
        #[arg(long)]
        from_data_dir: PathBuf,
        /// etcd client URLs, comma-separated.
        #[arg(long, value_name = "URL,...")]
        to_etcd: String,
        /// Every key goes under this prefix (one per team).
        #[arg(long, value_name = "PREFIX")]
        etcd_prefix: Option<String>,
        #[command(flatten)]
        tls: EtcdTls,
    },
    /// Run the broker daemon.
    #[command(
        override_usage = "sshjit-broker serve --data-dir <DATA_DIR> [--listen <LISTEN>]\n       sshjit-broker serve --dev [--listen <LISTEN>]"
    )]
    Serve {
        /// The data directory made by init (or use --dev for a throwaway demo).
        #[arg(long, required_unless_present = "dev", conflicts_with = "dev")]
        data_dir: Option<PathBuf>,
        /// Override the listen address from config.toml.
        #[arg(long)]
        listen: Option<String>,
        /// A throwaway demo broker with a printed walkthrough.
        #[arg(long)]
        dev: bool,
    },
    /// Run a broker command remotely as an approver, over SSH (for example: admin requests).
    #[command(
        after_help = "Examples:\n  sshjit-broker admin requests\n  sshjit-broker admin show 42\n  sshjit-broker admin approve 42 --comment 'ok for INC-7'\n  sshjit-broker admin deny 43 --reason 'use the runbook'\n  sshjit-broker admin member add bob --role editor --key \"$(cat bob.pub)\"\n\nConnection settings are the helper's: --broker/SSHJIT_BROKER, --identity/SSHJIT_IDENTITY, ~/.config/sshjit/config.toml."
    )]
    Admin {
        #[command(flatten)]
        connect: ConnectArgs,
        /// Print the broker's JSON.
        #[arg(long)]
        json: bool,
        /// Approve without asking for confirmation.
        #[arg(long)]
        yes: bool,
        /// The broker command and its arguments.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// Offline audit commands (the daemon must be stopped to read its database).
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Check a data dir as serve would (config, modes, owners, keys), saying what to change.
    CheckConfig {
        /// The broker's data directory (made by init).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Print a shell completion script: source it, or install it where your shell looks.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): sshjit-broker man > ~/.local/share/man/man1/sshjit-broker.1
    Man,
}

/// Where `init` puts the database.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// The database engine: sled in the data dir (one broker), or etcd (several brokers).
    #[arg(long, value_enum, default_value_t = Engine::Sled)]
    store: Engine,
    /// With --store etcd: the cluster's client URLs, comma-separated.
    #[arg(long, value_name = "URL,...", required_if_eq("store", "etcd"))]
    etcd_endpoints: Option<String>,
    /// With --store etcd: every key goes under this prefix (one per team; default /sshjit/).
    #[arg(long, value_name = "PREFIX", requires = "etcd_endpoints")]
    etcd_prefix: Option<String>,
    #[command(flatten)]
    tls: EtcdTls,
}

/// TLS to etcd (`https://` endpoints), written to `[store]` in config.toml.
#[derive(Debug, clap::Args)]
struct EtcdTls {
    /// The CA that signed etcd's certificates (PEM).
    #[arg(long, value_name = "FILE")]
    etcd_ca_file: Option<PathBuf>,
    /// This broker's client certificate for etcd (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_key_file")]
    etcd_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert_file")]
    etcd_key_file: Option<PathBuf>,
}

impl EtcdTls {
    /// `endpoints` under `prefix` with these TLS files (made absolute).
    fn config(&self, endpoints: &str, prefix: Option<&str>) -> sshjit::error::Result<EtcdConfig> {
        let absolute = |p: &Option<PathBuf>| -> sshjit::error::Result<Option<PathBuf>> {
            p.as_ref()
                .map(|p| {
                    std::path::absolute(p)
                        .map_err(Error::io(format!("cannot resolve {}", p.display())))
                })
                .transpose()
        };
        EtcdConfig::new(endpoints, prefix)?.with_tls(
            absolute(&self.etcd_ca_file)?,
            absolute(&self.etcd_cert_file)?,
            absolute(&self.etcd_key_file)?,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Engine {
    Sled,
    Etcd,
}

impl StoreArgs {
    fn config(&self) -> sshjit::error::Result<StoreConfig> {
        match (self.store, &self.etcd_endpoints) {
            (Engine::Etcd, Some(e)) => Ok(StoreConfig::Etcd(
                self.tls.config(e, self.etcd_prefix.as_deref())?,
            )),
            (Engine::Sled, Some(_)) => {
                Err(Error::Usage("--etcd-endpoints needs --store etcd".into()))
            }
            _ => Ok(StoreConfig::Sled),
        }
    }
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Recompute the hash chain and Merkle tree of a database or an export, name the first bad
    /// entry, and check that the log still extends a checkpoint you saved.
    Verify {
        /// A stopped broker's data directory.
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        data_dir: Option<PathBuf>,
        /// A JSON-lines export from 'audit export'.
        #[arg(long)]
        file: Option<PathBuf>,
        /// A checkpoint saved from 'audit checkpoint': the log must still extend it.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The key that signs the checkpoints ('key' of 'audit checkpoint --json', or a
        /// checkpoint_key.pub); with --data-dir, the data dir's own by default.
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Ask a running broker to prove that its log still extends a checkpoint you saved.
    Witness {
        #[command(flatten)]
        connect: ConnectArgs,
        /// A checkpoint saved from 'audit checkpoint'.
        #[arg(long, value_name = "FILE")]
        checkpoint: PathBuf,
        /// The key that signs the checkpoints (default: the broker's, which must have signed FILE).
        #[arg(long)]
        key: Option<String>,
        /// Replace FILE's checkpoint with the newer one once it is proven.
        #[arg(long)]
        update: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Tunes the allocator for a small resident size. By default mimalloc commits its arenas whole
/// and returns freed memory to the kernel only after a second; under certificate load that left
/// the broker at 110-140 MB resident where glibc had stayed under 70 (docs/PERFORMANCE.md).
/// Committing on demand and purging at once keep it near glibc's figure at no measured cost.
/// It runs from `.init_array`, before `main`: the same settings made at the start of `main`
/// left the resident size as high as untuned (measured), as the first arena already existed.
/// These two options can therefore not be overridden with `MIMALLOC_*` variables.
#[cfg_attr(test, allow(dead_code))] // the tests read the untuned defaults
extern "C" fn tune_allocator() {
    use libmimalloc_sys::mi_option_set;
    // SAFETY: mi_option_set only stores an option value; no other thread exists yet.
    unsafe {
        mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

#[cfg(not(test))]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

/// Positions in mimalloc's `mi_option_e` (v3 `mimalloc.h`) that its Rust bindings do not name;
/// a test checks both still hold their documented defaults, so a renumbering cannot go unseen.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The command line, with `admin --help` listing the broker commands it can run.
fn parse() -> Result<Cli, clap::Error> {
    use clap::FromArgMatches;
    let commands = sshjit::commands::known_commands().join(", ");
    let cmd = Cli::command().mut_subcommand("admin", |a| {
        let after = a
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        a.after_help(format!(
            "Broker commands: {commands}.\nEach takes --help: sshjit-broker admin approve --help.\n\n{after}"
        ))
    });
    Cli::from_arg_matches(&cmd.try_get_matches()?)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SSHJIT_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,russh=warn,sled=warn")
            }),
        )
        .with_writer(sshjit::logline::OneLineWriter(std::io::stderr))
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Completions { shell } => {
            print!("{}", cli_docs::completions(Cli::command(), shell));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man => {
            print!("{}", cli_docs::man_page(Cli::command())?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckConfig { data_dir } => {
            let mut ok = true;
            for (what, result) in datadir::check(&DataDir::new(&data_dir)) {
                match result {
                    Ok(()) => println!("ok      {what}"),
                    Err(e) => {
                        ok = false;
                        println!("PROBLEM {what}: {e}");
                    }
                }
            }
            if ok {
                println!("{} is ready to serve", data_dir.display());
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
        Cmd::Init {
            data_dir,
            owner,
            owner_key,
            listen,
            store,
        } => {
            let key = datadir::read_public_key_arg(&owner_key)?;
            let dir = DataDir::new(&data_dir);
            let store = store.config()?;
            let made = datadir::init_on(&dir, &owner, &key, &listen, &store, Timestamp::now())?;
            println!("initialized {}", data_dir.display());
            println!("  owner            {owner}");
            println!("  CA public key    {}", made.ca_public_key);
            println!("  CA fingerprint   {}", made.ca_fingerprint);
            println!("  broker host key  {}", made.host_key_fingerprint);
            println!(
                "next: sshjit-broker serve --data-dir {}",
                data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Migrate {
            from_data_dir,
            to_etcd,
            etcd_prefix,
            tls,
        } => {
            let etcd = tls.config(&to_etcd, etcd_prefix.as_deref())?;
            let done = sshjit::migrate::to_etcd(&DataDir::new(&from_data_dir), etcd)?;
            println!(
                "copied {} keys; the audit log's {} entries verify in etcd",
                done.keys, done.entries
            );
            println!(
                "{} now uses etcd (the sled database in db/ is left as a backup)",
                from_data_dir.join("config.toml").display()
            );
            println!(
                "next: sshjit-broker serve --data-dir {}",
                from_data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Serve {
            data_dir,
            listen,
            dev,
        } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(async {
                if dev {
                    serve_dev(listen).await
                } else {
                    let dir = DataDir::new(data_dir.unwrap_or_default());
                    let opened = datadir::open(&dir)?;
                    let addr = listen.unwrap_or_else(|| opened.config.listen.clone());
                    let listener = bind(&addr).await?;
                    tracing::info!(addr = %listener.local_addr()?, data_dir = %dir.root.display(), "listening");
                    println!("listening on {}", listener.local_addr()?);
                    serve(listener, opened).await
                }
            })
        }
        Cmd::Admin {
            connect,
            json,
            yes,
            command,
        } => {
            // --json and --yes may also come after the command, where people type them.
            let json = json || command.iter().any(|w| w == "--json");
            let yes = yes || command.iter().any(|w| w == "--yes");
            let words: Vec<String> = command
                .into_iter()
                .filter(|w| w != "--json" && w != "--yes")
                .collect();
            let out = client_runtime()?.block_on(async {
                let settings = Settings::resolve(&connect)?;
                admin::run(&settings, &words, json, yes).await
            });
            match out {
                Ok(o) => {
                    print!("{}", o.stdout);
                    eprint!("{}", o.stderr);
                    Ok(if o.status == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(u8::try_from(o.status).unwrap_or(1))
                    })
                }
                Err(e) => {
                    eprint!("{}", Output::error(&e, json).stderr);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Audit(AuditCmd::Witness {
            connect,
            checkpoint,
            key,
            update,
            json,
        }) => {
            let out = client_runtime()?.block_on(async {
                let settings = Settings::resolve(&connect)?;
                auditor::witness(&settings, &checkpoint, key.as_deref(), update).await
            });
            match out {
                Ok(v) if json => println!("{}", serde_json::to_string(&v)?),
                Ok(v) => println!(
                    "the broker's log of {} entries extends your checkpoint of {} entries{}",
                    v.to,
                    v.from,
                    if update {
                        "; the file now holds the newer checkpoint"
                    } else {
                        ""
                    }
                ),
                Err(e) => {
                    eprint!("{}", Output::error(&e, json).stderr);
                    return Ok(ExitCode::FAILURE);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit(AuditCmd::Verify {
            data_dir,
            file,
            checkpoint,
            key,
            json,
        }) => {
            let source = match (&data_dir, &file) {
                (Some(d), _) => Ok(auditor::Source::DataDir(d)),
                (None, Some(f)) => Ok(auditor::Source::Export(f)),
                (None, None) => Err(Error::invalid("give --data-dir DIR or --file EXPORT.jsonl")),
            };
            let verified =
                source.and_then(|s| auditor::verify(s, checkpoint.as_deref(), key.as_deref()));
            let report = match verified {
                Ok(r) => r,
                Err(e) => {
                    eprint!("{}", Output::error(&e, json).stderr);
                    return Ok(ExitCode::FAILURE);
                }
            };
            let reply = verify_reply(report);
            let ok = reply.status == 0;
            if json {
                println!("{}", reply.json);
            } else {
                println!("{}", reply.text);
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The runtime of a command that talks to a broker as a client: one thread is plenty.
fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn serve_dev(listen: Option<String>) -> anyhow::Result<ExitCode> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .or_else(unix_user_from_id)
        .context("cannot tell which unix user you are; set USER")?;
    let listener = bind(listen.as_deref().unwrap_or("127.0.0.1:2222")).await?;
    let sshd_port = free_port("127.0.0.1:2022")
        .or_else(|| free_port("127.0.0.1:0"))
        .unwrap_or(2022);
    let (env, opened) = dev::prepare(&home, &user, sshd_port, Timestamp::now())?;
    let addr = listener.local_addr()?;
    // One write, and a closed stdout (a reader that went away) does not stop the broker.
    let text = dev::walkthrough(&env, addr)?;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    let code = serve(listener, opened).await;
    drop(env);
    code
}

/// Serves until SIGINT or SIGTERM.
async fn serve(listener: TcpListener, opened: datadir::Opened) -> anyhow::Result<ExitCode> {
    let broker = Arc::new(opened.broker);
    server::run(
        listener,
        broker,
        opened.host_key,
        opened.config.limits,
        shutdown_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// The current user's name from `id -un`, for environments without USER.
fn unix_user_from_id() -> Option<String> {
    let out = std::process::Command::new("id").arg("-un").output().ok()?;
    let name = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !name.is_empty()).then_some(name)
}

fn free_port(addr: &str) -> Option<u16> {
    std::net::TcpListener::bind(addr)
        .ok()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port())
}

async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let sock: SocketAddr = addr.parse().with_context(|| {
        format!("'{addr}' is not an address; use IP:PORT such as 127.0.0.1:2222")
    })?;
    TcpListener::bind(sock).await.with_context(|| {
        format!(
            "cannot listen on {addr}; pick another address with --listen, or stop what holds it"
        )
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_options_are_the_ones_meant() {
        use libmimalloc_sys::mi_option_get;
        // SAFETY: reading an option has no preconditions. This process never calls
        // tune_allocator, so both options still hold mimalloc's documented defaults.
        let (eager, delay) = unsafe {
            (
                mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT),
                mi_option_get(MI_OPTION_PURGE_DELAY),
            )
        };
        assert_eq!(
            (eager, delay),
            (2, 1000),
            "mimalloc renumbered its options (or MIMALLOC_ARENA_EAGER_COMMIT or \
             MIMALLOC_PURGE_DELAY is set for this test run)"
        );
    }
}
