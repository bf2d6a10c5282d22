//! Members, hosts and requests decoded lately, remembered per thread by their stored bytes:
//! every command finds its member, and every certificate checks its hosts and reads its
//! request, while all three change rarely.
//!
//! Decoding is a function of the bytes alone, so what is remembered is never stale: a changed
//! record is other bytes, and those are decoded afresh. Nothing here knows keys or tables.

use std::cell::RefCell;
use std::thread::LocalKey;

use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::model::{Host, Member, Request};

/// How many members and hosts a thread remembers (a team's members, a fleet's hosts).
const REMEMBERED: usize = 64;
/// How many requests a thread remembers: certificates come for a few grants at a time.
const REMEMBERED_REQUESTS: usize = 16;
/// Records longer than this (a grant over a large fleet) are decoded each time, so what a
/// thread remembers stays small.
const REMEMBERED_BYTES: usize = 8 * 1024;

type Seen<T> = RefCell<Vec<(Box<[u8]>, T)>>;

thread_local! {
    static MEMBERS: Seen<Member> = const { RefCell::new(Vec::new()) };
    static HOSTS: Seen<Host> = const { RefCell::new(Vec::new()) };
    static REQUESTS: Seen<Request> = const { RefCell::new(Vec::new()) };
}

/// A stored member record, decoded.
pub(super) fn member(raw: &[u8]) -> Result<Member> {
    remembered(&MEMBERS, REMEMBERED, raw)
}

/// A stored host record, decoded.
pub(super) fn host(raw: &[u8]) -> Result<Host> {
    remembered(&HOSTS, REMEMBERED, raw)
}

/// A stored request record, decoded.
pub(super) fn request(raw: &[u8]) -> Result<Request> {
    remembered(&REQUESTS, REMEMBERED_REQUESTS, raw)
}

fn remembered<T: DeserializeOwned + Clone>(
    seen: &'static LocalKey<Seen<T>>,
    most: usize,
    raw: &[u8],
) -> Result<T> {
    let hit = seen.with(|seen| {
        let seen = seen.borrow();
        seen.iter()
            .find(|(r, _)| **r == *raw)
            .map(|(_, v)| v.clone())
    });
    if let Some(v) = hit {
        return Ok(v);
    }
    let v: T = serde_json::from_slice(raw)?;
    if raw.len() > REMEMBERED_BYTES {
        return Ok(v);
    }
    seen.with(|seen| {
        let mut seen = seen.borrow_mut();
        if seen.len() >= most {
            seen.remove(0);
        }
        seen.push((raw.into(), v.clone()));
    });
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Role, Timestamp};

    fn record(name: &str, role: Role) -> Vec<u8> {
        let key = crate::ca::generate_key("t").unwrap();
        let public = key.public_key().to_openssh().unwrap();
        let m = crate::ca::member_with_key(
            name.parse().unwrap(),
            role,
            &public,
            "t",
            Timestamp::from_unix(0),
        )
        .unwrap();
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn each_record_decodes_to_what_its_bytes_say() {
        let viewer = record("ann", Role::Viewer);
        let admin = String::from_utf8(viewer.clone())
            .unwrap()
            .replace("\"viewer\"", "\"admin\"")
            .into_bytes();
        for _ in 0..2 {
            assert_eq!(member(&viewer).unwrap().role, Role::Viewer);
            assert_eq!(member(&admin).unwrap().role, Role::Admin);
        }
        // More records than are remembered: the first is decoded again, still right.
        let many: Vec<Vec<u8>> = (0..REMEMBERED + 5)
            .map(|i| record(&format!("m{i}"), Role::Viewer))
            .collect();
        for (i, raw) in many.iter().enumerate() {
            assert_eq!(member(raw).unwrap().name.as_str(), format!("m{i}"));
        }
        assert!(MEMBERS.with(|s| s.borrow().len()) <= REMEMBERED);
        assert_eq!(member(&admin).unwrap().role, Role::Admin);
        // Bytes that do not decode are refused, and not remembered as anything.
        for _ in 0..2 {
            assert!(member(b"{\"name\":").is_err());
        }
        // A record over the size limit decodes, and is not kept.
        let before = MEMBERS.with(|s| s.borrow().len());
        let mut big = record("big", Role::Viewer);
        let pad = " ".repeat(REMEMBERED_BYTES);
        big.splice(1..1, pad.bytes());
        assert_eq!(member(&big).unwrap().name.as_str(), "big");
        assert_eq!(MEMBERS.with(|s| s.borrow().len()), before);
    }
}
