//! `sshjit-broker migrate`: moves a stopped sled broker's database into etcd, checking the
//! audit chain before and after, and points the data dir's config at etcd.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use crate::audit::VerifyReport;
use crate::datadir::{Config, DataDir};
use crate::error::{Error, Result};
use crate::store::{EtcdConfig, Store, StoreConfig};

/// What a migration copied.
#[derive(Debug)]
pub struct Migrated {
    pub keys: u64,
    pub entries: u64,
}

/// Copies the sled database of `dir` into etcd and rewrites `dir`'s config to use it. The sled
/// database is left as it was (a backup); nothing is rewritten unless the copy verifies.
pub fn to_etcd(dir: &DataDir, etcd: EtcdConfig) -> Result<Migrated> {
    let mut config = Config::load(&dir.config())?;
    if !config.store.is_sled() {
        return Err(Error::DataDir(format!(
            "{} already uses etcd; migrate copies a sled broker's database",
            dir.root.display()
        )));
    }
    let from = Store::open(&dir.db())?;
    let before = checked(&from, "the sled database")?;
    let target = StoreConfig::Etcd(etcd);
    let to = Store::connect(&dir.db(), &target)?;
    let keys = from.copy_into(&to)?;
    let after = checked(&to, "the copy in etcd")?;
    if (after.entries, &after.head) != (before.entries, &before.head) {
        return Err(Error::Storage(format!(
            "the copy in etcd ends at entry {} ({}), the sled log at {} ({}); the config was not changed",
            after.entries, after.head, before.entries, before.head
        )));
    }
    config.store = target;
    write_config(dir, &config)?;
    Ok(Migrated {
        keys,
        entries: after.entries,
    })
}

fn checked(store: &Store, what: &str) -> Result<VerifyReport> {
    let report = store.verify_audit()?;
    match &report.problem {
        None => Ok(report),
        Some(p) => Err(Error::Storage(format!(
            "the audit log of {what} does not verify ({p}); nothing was migrated"
        ))),
    }
}

/// Replaces config.toml (0600) in one rename, so a crash leaves the old or the new one.
fn write_config(dir: &DataDir, config: &Config) -> Result<()> {
    let text = toml::to_string_pretty(config)
        .map_err(|e| Error::Internal(format!("cannot encode config: {e}")))?;
    let tmp = dir.root.join("config.toml.new");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io(format!("cannot write {}", tmp.display())))?;
    f.write_all(format!("# sshjit-broker configuration\n{text}").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(Error::io(format!("cannot write {}", tmp.display())))?;
    fs::rename(&tmp, dir.config()).map_err(Error::io("cannot replace config.toml"))
}
