//! Who may hold a connection. Connections that have not authenticated yet have their own,
//! smaller budget, global and per source address (as sshd's `MaxStartups` and
//! `PerSourceMaxStartups`), so a flood of silent sockets cannot take the seats members use;
//! authenticated connections take a seat, within a global cap and a per-member cap.
//!
//! Each place is a guard that gives itself back when dropped, so no path can leak one.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::datadir::Limits;

/// The budgets of one server.
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    startups: usize,
    per_source: HashMap<IpAddr, usize>,
    seats: usize,
    per_member: HashMap<String, usize>,
}

/// Why a connection was not admitted, in words for the log and the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Too many connections are authenticating at once.
    Startups { limit: usize },
    /// Too many connections from one address are authenticating at once.
    PerSource { ip: IpAddr, limit: usize },
    /// Every seat for authenticated connections is taken.
    Full { limit: usize },
    /// The member has as many connections as they may.
    PerMember { member: String, limit: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Startups { limit } => write!(
                f,
                "too many connections are logging in at once (limit {limit}); try again in a moment"
            ),
            Refusal::PerSource { ip, limit } => write!(
                f,
                "too many connections from {ip} are logging in at once (limit {limit}); try again in a moment"
            ),
            Refusal::Full { limit } => write!(
                f,
                "the broker has as many connections as it takes (limit {limit}); try again in a moment"
            ),
            Refusal::PerMember { member, limit } => write!(
                f,
                "too many connections for {member} (limit {limit}); close some and retry"
            ),
        }
    }
}

/// A place for a connection that has not authenticated yet.
pub struct Startup {
    admission: Arc<Admission>,
    ip: IpAddr,
}

/// A seat for an authenticated member's connection.
pub struct Seat {
    admission: Arc<Admission>,
    member: String,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection from `ip` until it authenticates.
    pub fn startup(self: &Arc<Self>, ip: IpAddr) -> Result<Startup, Refusal> {
        let ip = source(ip);
        let mut st = self.lock();
        if st.startups >= self.limits.max_startups {
            return Err(Refusal::Startups {
                limit: self.limits.max_startups,
            });
        }
        let from_ip = st.per_source.entry(ip).or_insert(0);
        if *from_ip >= self.limits.max_startups_per_source {
            return Err(Refusal::PerSource {
                ip,
                limit: self.limits.max_startups_per_source,
            });
        }
        *from_ip += 1;
        st.startups += 1;
        Ok(Startup {
            admission: self.clone(),
            ip,
        })
    }

    /// A seat for `member`'s authenticated connection.
    pub fn seat(self: &Arc<Self>, member: &str) -> Result<Seat, Refusal> {
        let mut st = self.lock();
        if st.seats >= self.limits.max_connections {
            return Err(Refusal::Full {
                limit: self.limits.max_connections,
            });
        }
        let mine = st.per_member.entry(member.to_string()).or_insert(0);
        if *mine >= self.limits.max_connections_per_member {
            return Err(Refusal::PerMember {
                member: member.to_string(),
                limit: self.limits.max_connections_per_member,
            });
        }
        *mine += 1;
        st.seats += 1;
        Ok(Seat {
            admission: self.clone(),
            member: member.to_string(),
        })
    }

    /// Connections authenticating now, and seats taken (for tests and the log).
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.startups, st.seats)
    }
}

/// The source a connection counts against: an IPv4 address (also when IPv4-mapped), or an
/// IPv6 /64, since one IPv6 host commonly holds a whole /64.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Takes one from `map[key]`, forgetting keys that reach zero.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for Startup {
    fn drop(&mut self) {
        let mut st = self.admission.lock();
        st.startups = st.startups.saturating_sub(1);
        release(&mut st.per_source, &self.ip);
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut st = self.admission.lock();
        st.seats = st.seats.saturating_sub(1);
        release(&mut st.per_member, &self.member);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_startups: 3,
            max_startups_per_source: 2,
            max_connections: 2,
            max_connections_per_member: 1,
            ..Limits::default()
        }
    }

    #[test]
    fn one_source_cannot_take_every_startup() {
        let a = Admission::new(limits());
        let (x, y, z): (IpAddr, IpAddr, IpAddr) = (
            "127.0.0.1".parse().unwrap(),
            "127.0.0.2".parse().unwrap(),
            "127.0.0.3".parse().unwrap(),
        );
        let s1 = a.startup(x).unwrap();
        let _s2 = a.startup(x).unwrap();
        assert!(matches!(a.startup(x), Err(Refusal::PerSource { .. })));
        let _s3 = a.startup(y).unwrap();
        assert!(matches!(a.startup(z), Err(Refusal::Startups { .. })));
        drop(s1);
        assert_eq!(a.counts(), (2, 0));
        let _s4 = a.startup(z).unwrap();
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64_and_mapped_addresses_as_ipv4() {
        let a = Admission::new(limits());
        let _x = a.startup("2001:db8::1".parse().unwrap()).unwrap();
        let _y = a.startup("2001:db8::ffff:2".parse().unwrap()).unwrap();
        assert!(matches!(
            a.startup("2001:db8::3".parse().unwrap()),
            Err(Refusal::PerSource { .. })
        ));
        let _m = a.startup("::ffff:10.0.0.1".parse().unwrap()).unwrap();
        let _v4 = a.startup("10.0.0.1".parse().unwrap());
        assert!(matches!(
            a.startup("10.0.0.1".parse().unwrap()),
            Err(Refusal::Startups { .. } | Refusal::PerSource { .. })
        ));
    }

    #[test]
    fn seats_are_capped_per_member_and_given_back() {
        let a = Admission::new(limits());
        let alice = a.seat("alice").unwrap();
        let err = a.seat("alice").err().unwrap();
        assert_eq!(
            err.to_string(),
            "too many connections for alice (limit 1); close some and retry"
        );
        let _bob = a.seat("bob").unwrap();
        assert!(matches!(a.seat("carol"), Err(Refusal::Full { .. })));
        drop(alice);
        assert_eq!(a.counts(), (0, 1));
        let _alice = a.seat("alice").unwrap();
    }
}
