//! Every table of the database, registered once: the store, a transaction's view and the
//! list that a transaction spans all come from this one list.

use sled::Tree;
use sled::transaction::TransactionalTree;

use crate::error::Result;

macro_rules! tables {
    ($($(#[$doc:meta])* $field:ident: $name:literal,)+) => {
        /// The open trees, one per table.
        pub(super) struct Tables {
            $($(#[$doc])* pub(super) $field: Tree,)+
        }

        /// The same tables inside one transaction. (`deliveries` is bookkeeping written
        /// outside transactions; it is here so that the list stays one list.)
        #[allow(dead_code)]
        pub(super) struct TxTables<'a> {
            $($(#[$doc])* pub(super) $field: &'a TransactionalTree,)+
        }

        impl Tables {
            pub(super) fn open(db: &sled::Db) -> Result<Tables> {
                Ok(Tables { $($field: db.open_tree($name)?,)+ })
            }

            /// Every tree, in the order [`TxTables::new`] takes their transactional views.
            pub(super) fn all(&self) -> Vec<&Tree> {
                vec![$(&self.$field),+]
            }
        }

        impl<'a> TxTables<'a> {
            /// The views of a transaction over [`Tables::all`], in the same order.
            pub(super) fn new(views: &'a [TransactionalTree]) -> Option<TxTables<'a>> {
                let mut it = views.iter();
                Some(TxTables { $($field: it.next()?,)+ })
            }
        }
    };
}

tables! {
    /// Counters, the audit head and the owner count.
    meta: "meta",
    members: "members",
    /// Key fingerprint -> member name.
    keys: "member_keys",
    hosts: "hosts",
    targets: "fleets_and_commands",
    rules: "rules",
    /// Break-glass grants waiting for review, by due time.
    reviews: "reviews_by_deadline",
    requests: "requests",
    /// Undecided requests by the end of their pending time.
    pending: "pending_by_deadline",
    /// Requests by requester (a denial keeps its time as the value).
    by_member: "requests_by_member",
    /// Each member's pending requests, in one record.
    open: "pending_by_requester",
    /// Granted requests by requester and by resource.
    grants: "grants_by_identity",
    certs: "certs",
    audit: "audit",
    /// The audit log's Merkle tree: nodes of level 1 and up, by level and index.
    tree: "audit_tree",
    /// Notifications to send, by the sequence number of the audit entry that records them.
    outbox: "outbox",
    /// What falls due at a time (expiry, escalation, a window's end, a review): by time.
    timers: "timers_by_due",
    /// Each notification endpoint's progress through the outbox (bookkeeping, not audited).
    deliveries: "deliveries",
}
