//! sshjit: a just-in-time SSH access broker and OpenSSH user-certificate authority.
//!
//! The components, from the inside out:
//! - [`model`]: the nouns (members, hosts, requests, grants, times), parsed so bad values cannot exist;
//! - [`target`]: what a request names (host, fleet, fleet command) and the scope it resolves to;
//! - [`verdict`]: risk scores, rule approvals and break-glass reviews, as requests record them;
//! - [`rule`]: owner-made auto-approval rules and their conditions;
//! - [`policy`]: the access rules, pure, with `now` as an argument;
//! - [`justify`]: the justification written for each request (deterministic, or by a model);
//! - [`audit`]: typed audit events and the SHA-256 hash chain;
//! - [`checkpoint`]: signed checkpoints of the audit log (C2SP signed-note, tlog-checkpoint) and their SSHSIG form;
//! - [`merkle`]: the RFC 6962 Merkle tree over the audit log: roots, inclusion and consistency proofs;
//! - [`auditor`]: offline `audit verify` against a saved checkpoint, and `audit witness`;
//! - [`notify`]: notifications: the outbox, what falls due, webhook delivery and formats;
//! - [`guard`]: the host-side session guard's decisions (`sshjit-guard`);
//! - [`store`]: the only module that touches sled; one transaction per change, audit included;
//! - [`ca`]: key files, the certificate profile, signing, and host setup;
//! - [`commands`]: the command language (clap), shared by the server and its clients;
//! - [`broker`]: runs one command for one member at one time;
//! - [`contract`]: the `--json` objects, one set of serde types for the broker and its clients;
//! - [`views`]: records turned into contract objects and text for people;
//! - [`datadir`]: `init`, the data directory and its config file;
//! - [`dev`]: `serve --dev`, a throwaway broker with a walkthrough;
//! - [`server`]: the russh SSH server, its limits and graceful shutdown;
//! - [`client`]: the helper's side: settings, broker key pinning, the SSH client, local
//!   certificates, and the `sshjit` and `admin` commands.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod audit;
pub mod auditor;
pub mod broker;
pub mod ca;
pub mod checkpoint;
pub mod cli_docs;
pub mod client;
pub mod commands;
pub mod contract;
pub mod datadir;
pub mod dev;
pub mod error;
pub mod guard;
pub mod justify;
pub mod logline;
pub mod merkle;
pub mod migrate;
pub mod model;
pub mod notify;
pub mod policy;
pub mod rule;
pub mod server;
pub mod store;
pub mod target;
pub mod verdict;
pub mod views;

pub use error::{Error, Result};
