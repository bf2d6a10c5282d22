//! `serve --dev`: a throwaway broker with a second approver, a demo host and a printed walkthrough.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::ca;
use crate::datadir::{self, DataDir, Opened};
use crate::error::{Error, Result};
use crate::model::{Name, Timestamp};

/// The demo host's name.
pub const DEMO_HOST: &str = "demo";

/// A dev environment; its directory is deleted when this is dropped.
pub struct DevEnv {
    pub dir: tempfile::TempDir,
    pub owner: String,
    /// The owner's public key file and, if the broker made the key, its private key.
    pub owner_pub: PathBuf,
    pub owner_private: Option<PathBuf>,
    pub login: String,
    pub sshd_port: u16,
}

impl DevEnv {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops the demo sshd the walkthrough started, if it still runs: it belongs to this
    /// throwaway environment. Only a process started with this environment's sshd_config is
    /// signalled, so a stale pid file never hits another process.
    fn stop_demo_sshd(&self) {
        let Ok(pid) = fs::read_to_string(self.path("sshd.pid")) else {
            return;
        };
        let Ok(pid) = pid.trim().parse::<i32>() else {
            return;
        };
        let config = self.path("sshd_config").display().to_string();
        let ours = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&config))
            .unwrap_or(false);
        if ours {
            // SAFETY: kill has no memory effects; the pid was checked to be our sshd.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
}

impl Drop for DevEnv {
    fn drop(&mut self) {
        self.stop_demo_sshd();
    }
}

/// The member name for a unix user: lowercase, other characters replaced, never empty.
pub fn member_name_for(user: &str) -> String {
    let s: String = user
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_start_matches(['.', '_', '-']).to_string();
    if s.is_empty() || s.parse::<Name>().is_err() {
        "owner".into()
    } else {
        s
    }
}

/// Makes the dev data dir: the user as OWNER, a second OWNER "approver", the demo host, and an sshd config.
pub fn prepare(
    home: &Path,
    unix_user: &str,
    sshd_port: u16,
    now: Timestamp,
) -> Result<(DevEnv, Opened)> {
    let dir = tempfile::Builder::new()
        .prefix("sshjit-dev-")
        .tempdir()
        .map_err(Error::io("cannot create a temporary directory"))?;
    let path = |n: &str| dir.path().join(n);
    let user_key = home.join(".ssh/id_ed25519.pub");
    let (owner_pub, owner_private) = if user_key.is_file() {
        (user_key, None)
    } else {
        let key = ca::generate_key("sshjit-dev-owner")?;
        ca::write_private_key(&key, &path("owner_ed25519"))?;
        write_public(&key, &path("owner_ed25519.pub"))?;
        (path("owner_ed25519.pub"), Some(path("owner_ed25519")))
    };
    let owner = member_name_for(unix_user);
    let owner_key = fs::read_to_string(&owner_pub)
        .map_err(Error::io(format!("cannot read {}", owner_pub.display())))?;
    let data = DataDir::new(path("data"));
    datadir::init(&data, &owner, &owner_key, "127.0.0.1:2222", now)?;
    let approver = ca::generate_key("sshjit-dev-approver")?;
    ca::write_private_key(&approver, &path("approver_ed25519"))?;
    write_public(&approver, &path("approver_ed25519.pub"))?;
    let opened = datadir::open(&data)?;
    let approver_pub = approver
        .public_key()
        .to_openssh()
        .map_err(|e| Error::Internal(e.to_string()))?;
    datadir::dev_seed(
        opened.broker.store(),
        ("approver", &approver_pub),
        (DEMO_HOST, sshd_port, unix_user),
        now,
    )?;
    // A private sshd for the demo host; the trust lines come from host-config.
    let sshd_key = ca::generate_key("sshjit-dev-sshd")?;
    ca::write_private_key(&sshd_key, &path("sshd_host_key"))?;
    let d = dir.path().display();
    let sshd_config = format!(
        "# A throwaway sshd for the sshjit demo host. Trust settings are included from host-config's files.\n\
         Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {d}/sshd_host_key\nPidFile {d}/sshd.pid\n\
         StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         AuthorizedKeysFile none\nLogLevel VERBOSE\nInclude {d}/host/sshd_config.d/*.conf\n"
    );
    fs::write(path("sshd_config"), sshd_config).map_err(Error::io("cannot write sshd_config"))?;
    let env = DevEnv {
        dir,
        owner,
        owner_pub,
        owner_private,
        login: unix_user.to_string(),
        sshd_port,
    };
    let sshd_pub = sshd_key
        .public_key()
        .to_openssh()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let broker_pub = opened
        .host_key
        .public_key()
        .to_openssh()
        .map_err(|e| Error::Internal(e.to_string()))?;
    // known_hosts is completed with the broker's port once it listens (see `walkthrough`).
    fs::write(
        env.path("sshd_known"),
        format!("[127.0.0.1]:{sshd_port} {sshd_pub}\n"),
    )
    .map_err(Error::io("cannot write known_hosts"))?;
    fs::write(env.path("broker_key.pub"), format!("{broker_pub}\n"))
        .map_err(Error::io("cannot write broker_key.pub"))?;
    Ok((env, opened))
}

fn write_public(key: &russh::keys::PrivateKey, path: &Path) -> Result<()> {
    let line = key
        .public_key()
        .to_openssh()
        .map_err(|e| Error::Internal(e.to_string()))?;
    fs::write(path, format!("{line}\n"))
        .map_err(Error::io(format!("cannot write {}", path.display())))
}

/// The helper binary beside this one, or plain `sshjit` (on PATH) when there is none.
fn helper_path() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("sshjit")))
        .filter(|p| p.is_file())
        .map_or_else(|| "sshjit".into(), |p| p.display().to_string())
}

/// Writes known_hosts for the broker at `addr` and returns the walkthrough to print.
pub fn walkthrough(env: &DevEnv, addr: SocketAddr) -> Result<String> {
    let d = env.dir.path().display().to_string();
    let broker_pub = fs::read_to_string(env.path("broker_key.pub"))
        .map_err(Error::io("cannot read broker_key.pub"))?;
    let sshd_known =
        fs::read_to_string(env.path("sshd_known")).map_err(Error::io("cannot read sshd_known"))?;
    let (ip, port) = (addr.ip(), addr.port());
    fs::write(
        env.path("known_hosts"),
        format!(
            "[{ip}]:{port} {}{sshd_known}",
            broker_pub.trim_end().to_string() + "\n"
        ),
    )
    .map_err(Error::io("cannot write known_hosts"))?;
    // Name the key explicitly: ssh finds ~/.ssh through the account database, not $HOME.
    let private = match &env.owner_private {
        Some(p) => p.clone(),
        None => env.owner_pub.with_extension(""),
    };
    let ident = format!(" -o IdentitiesOnly=yes -i {}", private.display());
    let (login, sshd_port, owner) = (&env.login, env.sshd_port, &env.owner);
    let sshd_note = if Path::new("/usr/sbin/sshd").is_file() {
        String::new()
    } else {
        "\n  note      /usr/sbin/sshd is missing, so steps 4 and 5 cannot run: install it (apt-get install openssh-server)\n".into()
    };
    let helper = helper_path();
    let private_key = private.display();
    Ok(format!(
        "sshjit broker (dev mode) listening on {addr}\n\
         \x20 data dir  {d}/data (deleted when the broker stops)\n\
         \x20 you       OWNER \"{owner}\" with key {owner_pub}\n\
         \x20 approver  OWNER \"approver\" with key {d}/approver_ed25519 (nobody approves their own request)\n\
         \x20 host      \"{DEMO_HOST}\" at 127.0.0.1:{sshd_port}, login {login}\n{sshd_note}\
         \n\
         Try it with stock OpenSSH; paste these lines into another shell:\n\
         \n\
         # --- walkthrough ---\n\
         D={d}\n\
         broker() {{ ssh -p {port} -o UserKnownHostsFile=$D/known_hosts -o StrictHostKeyChecking=yes{ident} {ip} \"$@\"; }}\n\
         approver() {{ ssh -p {port} -o UserKnownHostsFile=$D/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -i $D/approver_ed25519 {ip} \"$@\"; }}\n\
         # 1. ask for access (note the inner quotes: the broker splits the line like a shell)\n\
         broker request {DEMO_HOST} --role editor --for 30m --reason \"'INC-1 trying out sshjit on the demo host'\"\n\
         # 2. approve it as the second owner\n\
         approver approve 1\n\
         # 3. make a fresh key and have the broker certify it for the grant window\n\
         ssh-keygen -q -t ed25519 -N '' -f $D/grant\n\
         broker cert 1 < $D/grant.pub > $D/grant-cert.pub\n\
         ssh-keygen -L -f $D/grant-cert.pub\n\
         # 4. set up the demo host from host-config and start its sshd (needs /run/sshd: sudo mkdir -p /run/sshd)\n\
         broker host-config {DEMO_HOST} --dir $D/host --script | sh\n\
         /usr/sbin/sshd -f $D/sshd_config\n\
         # 5. log in with the certificate\n\
         ssh -p {sshd_port} -o UserKnownHostsFile=$D/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -i $D/grant {login}@127.0.0.1 id\n\
         # 6. look at the audit trail\n\
         broker audit log\n\
         # 7. the same with the helper, which makes the key, fetches the certificate and writes the ssh_config\n\
         #    (it lives beside sshjit-broker: cargo build --release --bin sshjit; its files go to $D/helper)\n\
         sj() {{ HOME=$D/helper SSHJIT_BROKER={ip}:{port} SSHJIT_IDENTITY={private_key} {helper} \"$@\"; }}\n\
         sj --accept-new-broker-key request {DEMO_HOST} --role viewer --for 30m --reason 'INC-2 trying the sshjit helper'\n\
         approver approve 2\n\
         sj login 2\n\
         sj ssh-config > $D/helper_ssh_config\n\
         ssh -F $D/helper_ssh_config -o UserKnownHostsFile=$D/known_hosts -o StrictHostKeyChecking=yes {DEMO_HOST} id\n\
         # --- end ---\n\
         \n\
         Press Ctrl-C to stop the broker (it also stops the demo sshd).\n",
        owner_pub = env.owner_pub.display(),
    ))
}
