//! Test helpers: a real broker process on 127.0.0.1:0, stock OpenSSH clients, and a real sshd.
#![allow(dead_code)]

pub mod etcd;
pub mod http;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Fails with install instructions when an OpenSSH tool is missing.
pub fn require(tool: &str) -> PathBuf {
    let candidates = [
        PathBuf::from(tool),
        Path::new("/usr/bin").join(tool),
        Path::new("/usr/sbin").join(tool),
    ];
    for c in candidates {
        if c.is_absolute() && c.is_file() {
            return c;
        }
    }
    if let Ok(out) = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "{tool} is not installed; these tests run real tools. Install them with \
         'apt-get install -y openssh-server openssh-client man-db', or run scripts/test, which does"
    );
}

/// The unix user running the tests (logins go to this account, so no accounts are created).
pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An identity key made by ssh-keygen.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub key: PathBuf,
    pub public: String,
}

/// Makes an Ed25519 key with ssh-keygen in `dir`.
pub fn keygen(dir: &Path, name: &str) -> Identity {
    let key = dir.join(name);
    let st = Command::new(require("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .unwrap_or_else(|_| std::fs::read_to_string(format!("{}.pub", key.display())).unwrap());
    Identity {
        name: name.to_string(),
        key,
        public: public.trim().to_string(),
    }
}

/// What a command printed.
#[derive(Debug, Clone)]
pub struct Out {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }
    /// The `--json` error object on stderr.
    pub fn error_code(&self) -> String {
        let v: Value = serde_json::from_str(self.stderr.trim())
            .unwrap_or_else(|e| panic!("stderr is not a JSON error ({e}): {self:?}"));
        v["error"]["code"].as_str().unwrap().to_string()
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sshjit-broker")
}

pub fn helper_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sshjit")
}

/// A person with their own HOME and identity, talking to `b` through the helper.
pub struct Person {
    pub home: tempfile::TempDir,
    pub id: Identity,
    pub broker: String,
}

impl Person {
    pub fn new(b: &Broker, id: &Identity) -> Person {
        Person {
            home: tempfile::tempdir().unwrap(),
            id: id.clone(),
            broker: format!("127.0.0.1:{}", b.addr.port()),
        }
    }

    pub fn cmd(&self, bin: &str) -> Command {
        let mut c = Command::new(bin);
        c.env("HOME", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("SSH_AUTH_SOCK")
            .env("SSHJIT_BROKER", &self.broker)
            .env("SSHJIT_IDENTITY", &self.id.key)
            .stdin(Stdio::null());
        c
    }

    pub fn helper(&self, args: &[&str]) -> Out {
        let mut c = self.cmd(helper_bin());
        c.args(args);
        run_with_stdin(c, b"")
    }

    pub fn admin(&self, args: &[&str]) -> Out {
        let mut c = self.cmd(bin());
        c.arg("admin").args(args);
        run_with_stdin(c, b"")
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.home.path().join(".ssh/sshjit")
    }
}

/// The etcd cluster the whole suite runs on instead of sled, when `SSHJIT_TEST_ETCD` names its
/// client URLs (scripts/test starts one and runs the policy, property and bad-input tests on it).
pub fn test_etcd() -> Option<String> {
    std::env::var("SSHJIT_TEST_ETCD")
        .ok()
        .filter(|e| !e.is_empty())
}

/// A key prefix no other test uses.
pub fn fresh_prefix() -> String {
    format!("/sshjit-test/{:016x}/", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// The database a test broker uses: sled in its data dir, or a fresh prefix of the etcd cluster
/// in `SSHJIT_TEST_ETCD`.
pub fn test_store() -> sshjit::store::StoreConfig {
    match test_etcd() {
        Some(e) => sshjit::store::StoreConfig::Etcd(
            sshjit::store::EtcdConfig::new(&e, Some(&fresh_prefix())).unwrap(),
        ),
        None => sshjit::store::StoreConfig::Sled,
    }
}

/// `init` a data dir `DIR/data` with `owner` as the OWNER olga; returns its path.
pub fn init_data_dir(dir: &Path, owner: &Identity) -> PathBuf {
    init_data_dir_with(dir, owner, &[])
}

/// Like `init_data_dir`, with more arguments to `init` (such as `--store etcd`).
pub fn init_data_dir_with(dir: &Path, owner: &Identity, args: &[&str]) -> PathBuf {
    let data = dir.join("data");
    let mut cmd = Command::new(bin());
    cmd.args([
        "init",
        "--owner",
        "olga",
        "--owner-key",
        &owner.public,
        "--data-dir",
    ])
    .arg(&data)
    .args(args);
    if let (Some(e), true) = (test_etcd(), args.is_empty()) {
        cmd.args([
            "--store",
            "etcd",
            "--etcd-endpoints",
            &e,
            "--etcd-prefix",
            &fresh_prefix(),
        ]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "init failed: {out:?}");
    data
}

/// Writes a 0600 secret file `dir/name` and returns its path.
pub fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A broker daemon process over a data dir in a temp dir.
pub struct Broker {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
    pub owner: Identity,
}

impl Broker {
    /// `init` a fresh data dir with `olga` as OWNER and start the daemon.
    pub fn start_new() -> Broker {
        Self::start_with_config(&[])
    }

    /// Like `start_new`, with settings in config.toml changed: `("login_grace_secs", "1")`.
    pub fn start_with_config(settings: &[(&str, &str)]) -> Broker {
        Self::start_with_tables(settings, |_| String::new())
    }

    /// Like `start_with_config`, with tables appended to config.toml (`[[notify]]`,
    /// `[justify]`), written by `tables` given the temp dir (for secret files).
    pub fn start_with_tables(
        settings: &[(&str, &str)],
        tables: impl FnOnce(&Path) -> String,
    ) -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let owner = keygen(tmp.path(), "olga");
        let data = init_data_dir(tmp.path(), &owner);
        let cfg = data.join("config.toml");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        for (key, value) in settings {
            let start = text
                .find(&format!("\n{key} = "))
                .unwrap_or_else(|| panic!("no {key} in config"))
                + 1;
            let end = start + text[start..].find('\n').unwrap();
            text.replace_range(start..end, &format!("{key} = {value}"));
        }
        text.push_str(&tables(tmp.path()));
        std::fs::write(&cfg, text).unwrap();
        let mut b = Broker {
            tmp,
            data,
            addr: "127.0.0.1:0".parse().unwrap(),
            child: None,
            owner,
        };
        b.spawn();
        b
    }

    /// `init` a data dir on the etcd cluster at `endpoints` (under a fresh prefix) and start
    /// the daemon.
    pub fn start_on_etcd(endpoints: &str) -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let owner = keygen(tmp.path(), "olga");
        let prefix = fresh_prefix();
        let args = [
            "--store",
            "etcd",
            "--etcd-endpoints",
            endpoints,
            "--etcd-prefix",
            &prefix,
        ];
        let data = init_data_dir_with(tmp.path(), &owner, &args);
        Broker::start_from(tmp, data, owner)
    }

    /// Starts the daemon on a data dir that exists.
    pub fn start_from(tmp: tempfile::TempDir, data: PathBuf, owner: Identity) -> Broker {
        let mut b = Broker {
            tmp,
            data,
            addr: "127.0.0.1:0".parse().unwrap(),
            child: None,
            owner,
        };
        b.spawn();
        b
    }

    /// A second broker of the same team: a copy of this data dir (config and keys, as an
    /// operator distributes them) in its own temp dir, started.
    pub fn replica(&self) -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let st = Command::new("cp")
            .arg("-a")
            .arg(&self.data)
            .arg(&data)
            .status()
            .unwrap();
        assert!(st.success());
        let owner = self.owner.clone();
        Broker::start_from(tmp, data, owner)
    }

    /// Whether the daemon process is running (not stopped or killed by the test).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the daemon on the existing data dir.
    pub fn spawn(&mut self) {
        self.spawn_on("127.0.0.1:0");
    }

    /// Starts the daemon on the existing data dir, listening on `listen`.
    pub fn spawn_on(&mut self, listen: &str) {
        // A daemon killed by signal (through its pid) is reaped here.
        if let Some(mut old) = self.child.take() {
            old.wait().unwrap();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("broker.log"))
            .unwrap();
        let mut child = Command::new(bin())
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(&self.data)
            .env("SSHJIT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("broker did not start: {line:?}; log: {}", self.log()));
        self.addr = addr.parse().unwrap();
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("broker.log")).unwrap_or_default()
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("broker not running");
        signal(&child, "TERM");
        wait_timeout(&mut child, Duration::from_secs(20)).expect("broker did not stop on SIGTERM")
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("broker not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Base arguments for stock `ssh` to this broker as `who`.
    pub fn ssh_cmd(&self, who: &Identity) -> Command {
        let mut c = Command::new(require("ssh"));
        c.args(ssh_opts(self.tmp.path()))
            .arg("-i")
            .arg(&who.key)
            .args(["-p", &self.addr.port().to_string(), "127.0.0.1"]);
        c
    }

    /// Runs one broker command over stock ssh as `who`.
    pub fn ssh(&self, who: &Identity, line: &str) -> Out {
        self.ssh_stdin(who, line, b"")
    }

    /// Runs one broker command with `stdin`.
    pub fn ssh_stdin(&self, who: &Identity, line: &str, stdin: &[u8]) -> Out {
        let mut c = self.ssh_cmd(who);
        c.arg(line);
        run_with_stdin(c, stdin)
    }

    /// Adds a member with a fresh key.
    pub fn add_member(&self, name: &str, role: &str) -> Identity {
        let id = keygen(self.tmp.path(), name);
        self.ssh(
            &self.owner,
            &format!("member add {name} --role {role} --key '{}'", id.public),
        )
        .ok();
        id
    }

    /// `requester` runs `request_line` (which must include `--json`), `approver` approves,
    /// and `requester` certifies a fresh key named `key_name`, written with its `-cert.pub`.
    /// Returns the request id, the key, and the `cert` JSON.
    pub fn granted_cert(
        &self,
        requester: &Identity,
        approver: &Identity,
        request_line: &str,
        key_name: &str,
    ) -> (u64, Identity, Value) {
        let id = self.ssh(requester, request_line).ok().json()["id"]
            .as_u64()
            .unwrap();
        self.ssh(approver, &format!("approve {id}")).ok();
        self.cert_for(requester, id, key_name)
    }

    /// Like `granted_cert`, for a request a rule approves at once (nobody approves it).
    pub fn granted_cert_by_rule(
        &self,
        requester: &Identity,
        request_line: &str,
        key_name: &str,
    ) -> (u64, Identity, Value) {
        let r = self.ssh(requester, request_line).ok().json();
        assert_eq!(r["state"], "approved", "no rule approved it: {r}");
        self.cert_for(requester, r["id"].as_u64().unwrap(), key_name)
    }

    /// `requester` certifies a fresh key named `key_name` for request `id`, written with its
    /// `-cert.pub`.
    fn cert_for(&self, requester: &Identity, id: u64, key_name: &str) -> (u64, Identity, Value) {
        let key = keygen(self.tmp.path(), key_name);
        let cert = self
            .ssh_stdin(
                requester,
                &format!("cert {id} --json"),
                key.public.as_bytes(),
            )
            .ok()
            .json();
        let path = format!("{}-cert.pub", key.key.display());
        std::fs::write(path, format!("{}\n", cert["certificate"].as_str().unwrap())).unwrap();
        (id, key, cert)
    }

    /// A real sshd on `port` for host `name`, configured only from what `host-config --script`
    /// writes (under this broker's temp dir) plus a private base config.
    pub fn host_sshd(&self, name: &str, port: u16) -> Sshd {
        let dir = self.tmp.path().join(format!("host-{name}"));
        let line = format!("host-config {name} --dir {} --script", dir.display());
        let script = self.ssh(&self.owner, &line).ok().stdout;
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "host-config script failed: {out:?}");
        let include = format!("Include {}/sshd_config.d/sshjit.conf", dir.display());
        Sshd::start_on(&dir, &include, port)
    }

    /// JSON of a command run as the owner.
    pub fn json(&self, line: &str) -> Value {
        self.ssh(&self.owner, &format!("{line} --json")).ok().json()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// ssh options that ignore the user's config and known hosts.
pub fn ssh_opts(tmp: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=no".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", tmp.join("known_hosts").display()),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        "ConnectTimeout=10".into(),
    ]
}

pub fn run_with_stdin(mut c: Command, stdin: &[u8]) -> Out {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Out {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

pub fn signal(child: &Child, sig: &str) {
    signal_pid(child.id(), sig);
}

/// Sends `sig` to process `pid` (a child that is then reaped by whoever owns it).
pub fn signal_pid(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A real OpenSSH sshd on 127.0.0.1, configured by a base config plus the host-config files.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Sshd {
    /// Starts sshd with `extra` config lines (normally an `Include` of host-config's file).
    pub fn start(dir: &Path, extra: &str) -> Sshd {
        Self::start_on(dir, extra, free_port())
    }

    /// Like `start`, on a chosen port.
    pub fn start_on(dir: &Path, extra: &str, port: u16) -> Sshd {
        let sshd = require("/usr/sbin/sshd");
        if !Path::new("/run/sshd").is_dir() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        assert!(
            Path::new("/run/sshd").is_dir(),
            "sshd needs the directory /run/sshd; create it with 'sudo mkdir -p /run/sshd' (scripts/test does)"
        );
        let host_key = dir.join("sshd_host_key");
        if !host_key.exists() {
            let st = Command::new(require("ssh-keygen"))
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let log = dir.join("sshd.log");
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nAuthorizedKeysFile none\n\
                 LogLevel VERBOSE\n{extra}\n",
                host_key.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd { child, port, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Logs in as `login` with `key` (whose certificate is `key-cert.pub`) and runs `cmd`.
    pub fn login(&self, tmp: &Path, key: &Path, login: &str, cmd: &str) -> Out {
        let mut c = Command::new(require("ssh"));
        c.args(ssh_opts(tmp))
            .arg("-i")
            .arg(key)
            .args(["-p", &self.port.to_string()])
            .arg(format!("{login}@127.0.0.1"))
            .arg(cmd);
        run_with_stdin(c, b"")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What `ssh-keygen -L` says of a certificate.
#[derive(Debug, Default)]
pub struct CertInfo {
    pub key_id: String,
    pub serial: String,
    pub valid: String,
    pub principals: Vec<String>,
    pub critical_options: Vec<String>,
    pub extensions: Vec<String>,
}

/// Reads a certificate file with `ssh-keygen -L` (run it with `TZ=UTC` to compare times).
pub fn inspect_cert(cert: &Path) -> CertInfo {
    let out = Command::new(require("ssh-keygen"))
        .arg("-L")
        .arg("-f")
        .arg(cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let block = |name: &str| -> Vec<String> {
        let mut lines = text.lines().skip_while(|l| !l.trim().starts_with(name));
        if lines.next().is_none_or(|head| head.contains("(none)")) {
            return vec![];
        }
        lines
            .take_while(|l| l.starts_with("                "))
            .map(|l| l.trim().to_string())
            .collect()
    };
    CertInfo {
        key_id: field("Key ID:"),
        serial: field("Serial:"),
        valid: field("Valid:"),
        principals: block("Principals:"),
        critical_options: block("Critical Options:"),
        extensions: block("Extensions:"),
    }
}
