//! The broker's data directory: `init`, the config file, opening it to serve, and the dev setup.
//!
//! Layout: `config.toml`, `ca_key`, `host_key` and `checkpoint_key` (0600) with their `.pub`,
//! and `db/` (sled). With `[store] engine = "etcd"` the database lives in etcd instead, and
//! every broker of the team has a copy of the same keys and config.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::AuditEvent;
use crate::broker::Broker;
use crate::ca::{self, Ca};
use crate::checkpoint::NoteSigner;
use crate::error::{Error, Result};
use crate::justify::llm::ModelConfig;
use crate::model::{GrantRole, Host, IdentityId, Role, Timestamp};
use crate::notify::{self, config::NotifyConfig};
use crate::policy::Policy;
use crate::store::{self, Store, StoreConfig};

/// Connection limits of the SSH server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Authenticated connections, all members together.
    pub max_connections: usize,
    /// Authenticated connections per member; one more is disconnected at authentication.
    pub max_connections_per_member: usize,
    /// Connections that have not authenticated yet, from anywhere (sshd's `MaxStartups`).
    pub max_startups: usize,
    /// Connections that have not authenticated yet, from one address (sshd's
    /// `PerSourceMaxStartups`).
    pub max_startups_per_source: usize,
    /// Seconds a connection may take to authenticate.
    pub login_grace_secs: u64,
    /// Seconds with no command running before a connection is closed; keepalives do not count.
    pub idle_timeout_secs: u64,
    /// Bytes a command may read from stdin (a public key).
    pub max_stdin_bytes: usize,
    /// Commands running at once on one connection.
    pub max_channels_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            max_connections_per_member: 16,
            max_startups: 64,
            max_startups_per_source: 8,
            login_grace_secs: 10,
            idle_timeout_secs: 60,
            max_stdin_bytes: 16 * 1024,
            max_channels_per_connection: 16,
        }
    }
}

impl Limits {
    /// Checks each limit is in a range that works; says which is not.
    fn validate(&self) -> std::result::Result<(), String> {
        let counts = [
            ("max_connections", self.max_connections, 100_000),
            (
                "max_connections_per_member",
                self.max_connections_per_member,
                10_000,
            ),
            ("max_startups", self.max_startups, 100_000),
            (
                "max_startups_per_source",
                self.max_startups_per_source,
                10_000,
            ),
            ("max_stdin_bytes", self.max_stdin_bytes, 1 << 20),
            (
                "max_channels_per_connection",
                self.max_channels_per_connection,
                1_000,
            ),
        ];
        for (name, value, max) in counts {
            if !(1..=max).contains(&value) {
                return Err(format!("{name} = {value} must be between 1 and {max}"));
            }
        }
        for (name, value) in [
            ("login_grace_secs", self.login_grace_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
        ] {
            if !(1..=86_400).contains(&value) {
                return Err(format!("{name} = {value} must be between 1 and 86400"));
            }
        }
        Ok(())
    }
}

/// `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, such as `0.0.0.0:2222`.
    pub listen: String,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub limits: Limits,
    /// Where notifications go (`[[notify]]` tables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<NotifyConfig>,
    /// A model that writes justifications (`[justify]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justify: Option<ModelConfig>,
    /// Where the database lives (`[store]`): sled in the data dir unless it names etcd.
    #[serde(default, skip_serializing_if = "StoreConfig::is_sled")]
    pub store: StoreConfig,
}

impl Config {
    fn new(listen: &str) -> Self {
        Config {
            listen: listen.to_string(),
            policy: Policy::default(),
            limits: Limits::default(),
            notify: Vec::new(),
            justify: None,
            store: StoreConfig::Sled,
        }
    }

    /// Reads and checks `config.toml`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = fs::read_to_string(path)
            .map_err(Error::io(format!("cannot read {}", path.display())))?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| {
            let mut m = format!("{} is invalid: {e}", path.display());
            if m.contains("notify")
                && (m.contains("expected a sequence") || m.contains("duplicate key"))
            {
                m.push_str(" (each endpoint is its own [[notify]] table, with double brackets)");
            }
            Error::Config(m)
        })?;
        cfg.policy.validate()?;
        cfg.limits
            .validate()
            .map_err(|m| Error::Config(format!("{}: [limits] {m}", path.display())))?;
        notify::config::load(&cfg.notify, path)?;
        if let Some(j) = &cfg.justify {
            j.load(path)?;
        }
        cfg.store
            .validate()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.store
            .resolve(path.parent().unwrap_or_else(|| Path::new(".")));
        Ok(cfg)
    }
}

/// A data directory's paths.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca_key")
    }
    pub fn host_key(&self) -> PathBuf {
        self.root.join("host_key")
    }
    /// The key that signs the audit log's checkpoints (its public half beside it, `.pub`).
    pub fn checkpoint_key(&self) -> PathBuf {
        self.root.join("checkpoint_key")
    }
    pub fn db(&self) -> PathBuf {
        store::db_dir(&self.root)
    }
}

/// What `init` made.
#[derive(Debug, Clone)]
pub struct Initialized {
    pub ca_public_key: String,
    pub ca_fingerprint: String,
    pub host_key_fingerprint: String,
}

/// Reads a public key given as text or as the path of a `.pub` file.
pub fn read_public_key_arg(arg: &str) -> Result<String> {
    let p = Path::new(arg);
    let looks_like_path = !arg.contains(' ') && (arg.contains('/') || arg.ends_with(".pub"));
    if looks_like_path || p.is_file() {
        return fs::read_to_string(p).map_err(Error::io(format!("cannot read the key file {arg}")));
    }
    Ok(arg.to_string())
}

/// Creates a data directory with its database in sled: keys, config, database, and the first
/// OWNER.
pub fn init(
    dir: &DataDir,
    owner: &str,
    owner_key: &str,
    listen: &str,
    now: Timestamp,
) -> Result<Initialized> {
    init_on(dir, owner, owner_key, listen, &StoreConfig::Sled, now)
}

/// Creates a data directory whose database is the one `store_config` names.
pub fn init_on(
    dir: &DataDir,
    owner: &str,
    owner_key: &str,
    listen: &str,
    store_config: &StoreConfig,
    now: Timestamp,
) -> Result<Initialized> {
    // Validate everything before anything is written.
    let member = ca::member_with_key(owner.parse()?, Role::Owner, owner_key, "init", now)?;
    store_config.validate()?;
    if !store_config.is_sled() {
        // A shared database must be reachable and empty before the data dir is made.
        let store = Store::connect(&dir.db(), store_config)?;
        if store.is_initialized()? {
            return Err(Error::DataDir(
                "the etcd prefix already holds a broker's state; to add a broker to that team, copy the first broker's data dir (config.toml and the keys) to this machine, or pick another --etcd-prefix".into(),
            ));
        }
    }
    if dir.root.exists() {
        let empty = fs::read_dir(&dir.root)
            .map_err(Error::io(format!("cannot read {}", dir.root.display())))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::DataDir(format!(
                "{} already exists and is not empty; init never overwrites a data dir. Pick a new directory",
                dir.root.display()
            )));
        }
        fs::set_permissions(&dir.root, fs::Permissions::from_mode(0o700))
            .map_err(Error::io(format!("cannot chmod {}", dir.root.display())))?;
    } else {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir.root)
            .map_err(Error::io(format!("cannot create {}", dir.root.display())))?;
    }
    let ca_key = ca::generate_key("sshjit-ca")?;
    ca::write_private_key(&ca_key, &dir.ca_key())?;
    let ca = Ca::new(ca_key);
    fs::write(
        dir.root.join("ca_key.pub"),
        format!("{}\n", ca.public_key()?),
    )
    .map_err(Error::io("cannot write ca_key.pub"))?;
    let host_key = ca::generate_key("sshjit-broker-host")?;
    ca::write_private_key(&host_key, &dir.host_key())?;
    ca::write_private_key(
        &ca::generate_key("sshjit-checkpoint")?,
        &dir.checkpoint_key(),
    )?;
    checkpoint_signer(dir, &ca)?;
    let mut config = Config::new(listen);
    config.store = store_config.clone();
    let cfg = toml::to_string_pretty(&config)
        .map_err(|e| Error::Internal(format!("cannot encode config: {e}")))?;
    fs::write(
        dir.config(),
        format!("# sshjit-broker configuration\n{cfg}"),
    )
    .map_err(Error::io("cannot write config.toml"))?;
    // Whatever the umask, nobody else may change what `serve` trusts (see check_files).
    fs::set_permissions(dir.config(), fs::Permissions::from_mode(0o600))
        .map_err(Error::io("cannot chmod config.toml"))?;
    if store_config.is_sled() {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dir.db())
            .map_err(Error::io(format!("cannot create {}", dir.db().display())))?;
    }

    let store = Store::connect(&dir.db(), store_config)?;
    let ca_fingerprint = ca.fingerprint();
    store.apply(now, "init", |tx| {
        let member = tx.add_member(&member)?;
        let events = vec![
            AuditEvent::BrokerInitialized {
                owner: member.name.to_string(),
                ca_fingerprint: ca_fingerprint.clone(),
            },
            AuditEvent::member_added(&member),
        ];
        Ok(((), events))
    })?;
    Ok(Initialized {
        ca_public_key: ca.public_key()?,
        ca_fingerprint,
        host_key_fingerprint: ca::fingerprint(host_key.public_key().key_data()),
    })
}

/// An opened data directory, ready to serve.
pub struct Opened {
    pub config: Config,
    pub broker: Broker,
    pub host_key: russh::keys::PrivateKey,
}

/// Opens a data directory made by `init`.
pub fn open(dir: &DataDir) -> Result<Opened> {
    if !dir.config().is_file() {
        return Err(Error::DataDir(format!(
            "{} is not a broker data dir (no config.toml); create one with 'sshjit-broker init'",
            dir.root.display()
        )));
    }
    check_files(dir, current_uid())?;
    let config = Config::load(&dir.config())?;
    let ca = Ca::open(ca::read_private_key(&dir.ca_key())?)?;
    let host_key = ca::read_private_key(&dir.host_key())?;
    let store = Store::connect(&dir.db(), &config.store)?;
    if !store.is_initialized()? {
        return Err(Error::DataDir(format!(
            "the database of {} is empty; it was not made by 'sshjit-broker init'",
            dir.root.display()
        )));
    }
    same_ca(&store, &ca)?;
    store.build_tree()?;
    store.build_denials()?;
    let signer = checkpoint_signer(dir, &ca)?;
    let endpoints = notify::config::load(&config.notify, &dir.config())?;
    let model = config
        .justify
        .as_ref()
        .map(|j| j.load(&dir.config()))
        .transpose()?;
    let broker = Broker::new(store, ca, signer, config.policy.clone())
        .with_notify(endpoints)?
        .with_model(model);
    Ok(Opened {
        config,
        broker,
        host_key,
    })
}

/// Refuses a database whose log was started by another CA: on a shared database, a broker
/// with another team's keys (or a stale copy of them) would sign what the log does not record.
fn same_ca(store: &Store, ca: &Ca) -> Result<()> {
    let first = match store.audit_entry(1)? {
        Some(raw) => crate::audit::decode(&raw)?,
        None => return Ok(()),
    };
    match first.event {
        AuditEvent::BrokerInitialized { ca_fingerprint, .. }
            if ca_fingerprint != ca.fingerprint() =>
        {
            Err(Error::DataDir(format!(
                "this data dir's CA key ({}) is not the one the database was made with ({ca_fingerprint}); every broker of a team needs a copy of the first broker's ca_key, host_key and checkpoint_key",
                ca.fingerprint()
            )))
        }
        _ => Ok(()),
    }
}

/// The database of a data dir, as its config names it (for offline tools).
pub fn open_store(dir: &DataDir) -> Result<Store> {
    // Without config.toml there is no `[store]`: look for sled's db/ (and say it is missing).
    let config = if dir.config().is_file() {
        Config::load(&dir.config())?
    } else {
        Config::new("")
    };
    if config.store.is_sled() && !dir.db().is_dir() {
        return Err(Error::DataDir(format!(
            "{} holds no broker database; give the --data-dir used with 'init'",
            dir.root.display()
        )));
    }
    Store::connect(&dir.db(), &config.store)
}

/// The checkpoint signer of the broker with CA `ca`: the key in the data dir, made (with its
/// `.pub`) when missing, as in a data dir made before checkpoints existed.
fn checkpoint_signer(dir: &DataDir, ca: &Ca) -> Result<NoteSigner> {
    let path = dir.checkpoint_key();
    let key = if path.exists() {
        ca::read_private_key(&path)?
    } else {
        let key = ca::generate_key("sshjit-checkpoint")?;
        ca::write_private_key(&key, &path)?;
        tracing::info!(path = %path.display(), "made the key that signs the audit log's checkpoints");
        key
    };
    let signer = NoteSigner::new(&log_origin(ca), key)?;
    let public = path.with_extension("pub");
    if !public.exists() {
        fs::write(&public, format!("{}\n", signer.ssh_public_key()?))
            .map_err(Error::io(format!("cannot write {}", public.display())))?;
    }
    Ok(signer)
}

/// The origin of the broker's checkpoints (and their key's name): the broker named by its CA,
/// which hosts already trust and which never changes.
pub fn log_origin(ca: &Ca) -> String {
    let digest = ca.fingerprint_digest();
    format!("sshjit/{}", hex::encode(&digest[..8.min(digest.len())]))
}

/// `check-config`: every check `serve` makes of a data dir before it opens the database, each
/// as `(what, Err(what to change))`, without opening the database (a running broker holds it).
pub fn check(dir: &DataDir) -> Vec<(String, Result<()>)> {
    let loaded = Config::load(&dir.config());
    let shared = loaded.as_ref().is_ok_and(|c| !c.store.is_sled());
    let mut out = Vec::new();
    if let Ok(cfg) = &loaded {
        // What the optional tables set up, so an operator sees they were picked up.
        if let Ok(endpoints) = notify::config::load(&cfg.notify, &dir.config())
            && !endpoints.is_empty()
        {
            let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
            out.push((format!("[[notify]]: {}", names.join(", ")), Ok(())));
        }
        if let Some(j) = &cfg.justify {
            out.push((
                format!("[justify]: model {}", crate::model::printable(&j.model, 60)),
                Ok(()),
            ));
        }
    }
    out.insert(0, ("config.toml".to_string(), loaded.map(|_| ())));
    out.push(("modes and owners".into(), check_files(dir, current_uid())));
    for (name, path) in [("ca_key", dir.ca_key()), ("host_key", dir.host_key())] {
        out.push((name.into(), ca::read_private_key(&path).map(|_| ())));
    }
    let checkpoint = dir.checkpoint_key();
    if checkpoint.exists() {
        out.push((
            "checkpoint_key".into(),
            ca::read_private_key(&checkpoint).map(|_| ()),
        ));
    } else {
        out.push(("checkpoint_key (made at the next start)".into(), Ok(())));
    }
    let db = if shared || dir.db().join("conf").is_file() || dir.db().join("db").is_file() {
        Ok(())
    } else {
        Err(Error::DataDir(format!(
            "{} holds no database; make the data dir with 'sshjit-broker init'",
            dir.db().display()
        )))
    };
    out.push(("db/".into(), db));
    out
}

/// The effective user id of this process.
fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// Refuses a data dir whose files others could change, or whose keys are someone else's:
/// the directory, `db/` and `config.toml` must not be writable by group or others, and
/// `ca_key` and `host_key` must belong to `uid`. Each refusal names the command that fixes it.
pub fn check_files(dir: &DataDir, uid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        |p: &Path| fs::metadata(p).map_err(Error::io(format!("cannot read {}", p.display())));
    // A data dir whose database is elsewhere (etcd) has no db/; a migrated one keeps it.
    let db = Some(dir.db()).filter(|p| p.exists());
    for (path, fix) in [(dir.root.clone(), "700"), (dir.config(), "600")]
        .into_iter()
        .chain(db.map(|p| (p, "700")))
    {
        let mode = meta(&path)?.mode() & 0o777;
        if mode & 0o022 != 0 {
            return Err(Error::DataDir(format!(
                "{} has mode {mode:o}, so others can change it; fix it with: chmod {fix} {}",
                path.display(),
                path.display()
            )));
        }
    }
    let checkpoint = Some(dir.checkpoint_key()).filter(|p| p.exists());
    for path in [dir.ca_key(), dir.host_key()].into_iter().chain(checkpoint) {
        let owner = meta(&path)?.uid();
        if owner != uid {
            return Err(Error::DataDir(format!(
                "{} belongs to user {owner}, not to the user running the broker ({uid}); fix it with: chown $(id -un) {}",
                path.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

/// Adds a member and a host directly, for `serve --dev` (same audit as over SSH).
pub fn dev_seed(
    store: &Store,
    approver: (&str, &str),
    host: (&str, u16, &str),
    now: Timestamp,
) -> Result<()> {
    let member = ca::member_with_key(approver.0.parse()?, Role::Owner, approver.1, "dev", now)?;
    let host = Host {
        id: IdentityId(0),
        name: host.0.parse()?,
        address: "127.0.0.1".into(),
        port: host.1,
        tags: vec!["dev".parse()?],
        logins: [
            (GrantRole::Viewer, host.2.to_string()),
            (GrantRole::Editor, host.2.to_string()),
        ]
        .into_iter()
        .collect(),
        approvals_required: 1,
        break_glass: false,
        escalate_after_secs: None,
        added_at: now,
        added_by: "dev".into(),
    };
    store.apply(now, "dev", |tx| {
        let member = tx.add_member(&member)?;
        let host = tx.add_host(&host)?;
        Ok((
            (),
            vec![
                AuditEvent::member_added(&member),
                AuditEvent::host_added(&host),
            ],
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        ca::generate_key("o")
            .unwrap()
            .public_key()
            .to_openssh()
            .unwrap()
    }

    #[test]
    fn a_data_dir_from_before_checkpoints_gets_its_key_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let owner = key();
        init(&dir, "olga", &owner, "127.0.0.1:0", Timestamp::from_unix(1)).unwrap();
        let public = dir.checkpoint_key().with_extension("pub");
        let made = fs::read_to_string(&public).unwrap();
        let ca = Ca::new(ca::read_private_key(&dir.ca_key()).unwrap());
        assert!(made.trim_end().ends_with(&log_origin(&ca)), "{made}");
        fs::remove_file(dir.checkpoint_key()).unwrap();
        fs::remove_file(&public).unwrap();
        let opened = open(&dir).unwrap();
        let mode = fs::metadata(dir.checkpoint_key())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let again = fs::read_to_string(&public).unwrap();
        assert_ne!(again, made, "a new key");
        // Its checkpoints verify with the key it published.
        let words: Vec<&str> = again.split_whitespace().collect();
        let v = crate::checkpoint::NoteVerifier::from_ssh(words[2], &words[..2].join(" ")).unwrap();
        let fp = ca::fingerprint(ca::parse_public_key(&owner).unwrap().key_data());
        let out = opened
            .broker
            .run_line(&fp, b"audit checkpoint", b"", Timestamp::from_unix(2));
        assert_eq!(out.status, 0, "{out:?}");
        assert_eq!(v.open_checkpoint(&out.stdout).unwrap().size, 2);
    }

    #[test]
    fn init_refuses_to_overwrite_and_open_works() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        init(
            &dir,
            "olga",
            &key(),
            "127.0.0.1:0",
            Timestamp::from_unix(1_800_000_000),
        )
        .unwrap();
        let mode = fs::metadata(dir.ca_key()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = init(&dir, "olga", &key(), "127.0.0.1:0", Timestamp::from_unix(1)).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        let opened = open(&dir).unwrap();
        assert!(opened.broker.store().verify_audit().unwrap().ok);
        // A second opener is told the broker is running.
        let second = open(&dir).err().unwrap();
        assert!(matches!(second, Error::DatabaseInUse(_)), "{second}");
    }

    #[test]
    fn open_refuses_files_others_could_change_or_keys_of_another_user() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        init(&dir, "olga", &key(), "127.0.0.1:0", Timestamp::from_unix(1)).unwrap();
        let uid = current_uid();
        assert!(check_files(&dir, uid).is_ok());
        for (path, mode, fix) in [
            (dir.root.clone(), 0o770, "chmod 700"),
            (dir.db(), 0o757, "chmod 700"),
            (dir.config(), 0o620, "chmod 600"),
        ] {
            let before = fs::metadata(&path).unwrap().permissions();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = open(&dir).err().unwrap().to_string();
            assert!(
                err.contains(&format!("fix it with: {fix} {}", path.display())),
                "{err}"
            );
            fs::set_permissions(&path, before).unwrap();
        }
        // Keys owned by another user: the check takes the uid, so any user can test it.
        let err = check_files(&dir, uid + 1).err().unwrap().to_string();
        assert!(err.contains("fix it with: chown $(id -un)"), "{err}");
        assert!(err.contains("ca_key"), "{err}");
        assert!(open(&dir).is_ok());
    }

    #[test]
    fn config_cannot_widen_the_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c.toml");
        fs::write(
            &p,
            "listen = \"127.0.0.1:1\"\n[policy]\nmax_duration_secs = 100000\n",
        )
        .unwrap();
        assert!(Config::load(&p).is_err());
        fs::write(&p, "listen = \"127.0.0.1:1\"\nbogus = 1\n").unwrap();
        assert!(Config::load(&p).is_err());
    }
}
