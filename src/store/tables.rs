//! Every table of the database, registered once: the engines' table numbers and names, the
//! store's handles and a transaction's view all come from this one list.

use std::sync::Arc;

use super::engine::{Engine, Table, TxEngine, TxTable};

macro_rules! tables {
    ($($(#[$doc:meta])* $field:ident: $variant:ident = $name:literal,)+) => {
        /// A table, as an engine knows it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub(super) enum TableId {
            $($variant,)+
        }

        impl TableId {
            /// Every table, in the order of their numbers.
            pub(super) const ALL: &[TableId] = &[$(TableId::$variant),+];

            /// The table's name in the database.
            pub(super) fn name(self) -> &'static str {
                match self {
                    $(TableId::$variant => $name,)+
                }
            }
        }

        /// The store's tables. (Some are only ever written inside transactions; they are
        /// here so that the list stays one list.)
        #[allow(dead_code)]
        pub(super) struct Tables {
            $($(#[$doc])* pub(super) $field: Table,)+
        }

        /// The same tables inside one transaction. (`deliveries` is bookkeeping written
        /// outside transactions; it is here so that the list stays one list.)
        #[allow(dead_code)]
        pub(super) struct TxTables<'a> {
            $($(#[$doc])* pub(super) $field: TxTable<'a>,)+
        }

        impl Tables {
            pub(super) fn new(engine: &Arc<dyn Engine>) -> Tables {
                Tables { $($field: Table::new(TableId::$variant, engine.clone()),)+ }
            }
        }

        impl<'a> TxTables<'a> {
            pub(super) fn new(tx: &'a dyn TxEngine) -> TxTables<'a> {
                TxTables { $($field: TxTable::new(TableId::$variant, tx),)+ }
            }
        }
    };
}

// A table's number is its place in this list, and redo records (`sled_redo.rs`) store it:
// a record a crash left behind is applied by the next start, which may be a newer version.
// Add new tables at the end; never reorder or remove one.
tables! {
    /// Counters, the audit head and the owner count.
    meta: Meta = "meta",
    members: Members = "members",
    /// Key fingerprint -> member name.
    keys: Keys = "member_keys",
    hosts: Hosts = "hosts",
    targets: Targets = "fleets_and_commands",
    rules: Rules = "rules",
    /// Break-glass grants waiting for review, by due time.
    reviews: Reviews = "reviews_by_deadline",
    requests: Requests = "requests",
    /// Undecided requests by the end of their pending time.
    pending: Pending = "pending_by_deadline",
    /// Requests by requester (a denial keeps its time as the value).
    by_member: ByMember = "requests_by_member",
    /// Each member's pending requests, in one record.
    open: Open = "pending_by_requester",
    /// Granted requests by requester and by resource.
    grants: Grants = "grants_by_identity",
    certs: Certs = "certs",
    audit: Audit = "audit",
    /// The audit log's Merkle tree as written before tiles, node by node (level 1 and up, by
    /// level and index). No longer read: a database from then gets `tiles` built once.
    tree: Tree = "audit_tree",
    /// Notifications to send, by the sequence number of the audit entry that records them.
    outbox: Outbox = "outbox",
    /// What falls due at a time (expiry, escalation, a window's end, a review): by time.
    timers: Timers = "timers_by_due",
    /// Each notification endpoint's progress through the outbox (bookkeeping, not audited).
    deliveries: Deliveries = "deliveries",
    /// Denials by requester, then time, then request: recent denials are one short range.
    denials: Denials = "denials_by_member",
    /// Certificates issued per request, apart from its record: a certificate then leaves the
    /// record as it was (its bytes, and what they decode to, stay the same).
    issued: Issued = "certs_per_request",
    /// The audit log's Merkle tree in tiles: the nodes of one level (1 and up) with indexes
    /// [16t, 16t + 16) in one value, by level and t.
    tiles: Tiles = "audit_tiles",
}

#[cfg(test)]
mod tests {
    use super::TableId;

    /// Redo records written by an earlier version name tables by these numbers.
    #[test]
    fn table_numbers_never_move() {
        let names: Vec<&str> = TableId::ALL.iter().map(|t| t.name()).collect();
        let v1 = [
            "meta",
            "members",
            "member_keys",
            "hosts",
            "fleets_and_commands",
            "rules",
            "reviews_by_deadline",
            "requests",
            "pending_by_deadline",
            "requests_by_member",
            "pending_by_requester",
            "grants_by_identity",
            "certs",
            "audit",
            "audit_tree",
            "outbox",
            "timers_by_due",
            "deliveries",
            "denials_by_member",
            "certs_per_request",
            "audit_tiles",
        ];
        assert_eq!(names, v1);
        for (i, t) in TableId::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i);
        }
    }
}
