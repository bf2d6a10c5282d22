//! The transport's ceiling for the benchmarks: a russh server with the broker's settings that
//! accepts any key and answers every command at once with one line and exit status 0, doing
//! no work of its own. `scripts/bench` drives it with the same load generator as the broker.
//!
//!   cargo run --release --example noop_server -- --listen 127.0.0.1:0
//!
//! Prints `listening on ADDR` once it accepts connections. Loopback only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};

/// The broker's allocator, so the ceiling is not lowered by a slower one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "A russh server that answers every command at once (benchmark baseline)")]
struct Args {
    /// Where to listen; must be a loopback address.
    #[arg(long)]
    listen: SocketAddr,
}

struct Noop;

impl russh::server::Handler for Noop {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _key: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        session.data(channel, b"ok\n".to_vec())?;
        session.exit_status_request(channel, 0)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "--listen must be a loopback address"
    );
    let host_key = sshjit::ca::generate_key("noop-server")?;
    let config = Arc::new(russh::server::Config {
        keys: vec![host_key],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let config = config.clone();
        tokio::spawn(async move {
            // Read through a buffer as the broker does (server/mod.rs).
            let socket = tokio::io::BufReader::with_capacity(8 * 1024, socket);
            if let Ok(session) = russh::server::run_stream(config, socket, Noop).await {
                let _ = session.await;
            }
        });
    }
}
