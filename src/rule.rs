//! Owner-made auto-approval rules: the conditions a request must meet for a rule to approve
//! it, parsed so that an impossible rule cannot be stored. Matching is in `policy::rules`.

use std::str::FromStr;

use chrono::{Datelike, TimeZone, Timelike};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{GrantRole, IdentityId, Name, Role, Timestamp, printable};
use crate::verdict::MemberKind;

/// The most uses a rule's cap may allow per period: the rule keeps the time of each use in the
/// period, so this bounds its record.
pub const MAX_USES: u32 = 1_000;

/// An auto-approval rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: IdentityId,
    pub name: Name,
    /// Targets it covers by name (hosts, fleets, commands).
    pub targets: Vec<Name>,
    /// Or: every host of the request's scope carries one of these tags.
    pub tags: Vec<Name>,
    /// The highest effective role it approves (fleet commands carry none and are not held
    /// to it).
    pub role: GrantRole,
    pub max_duration_secs: u64,
    pub max_risk: u8,
    pub who: Who,
    pub cap: Option<UseCap>,
    pub window: Option<Window>,
    /// When it approved, within the last cap period (oldest first).
    #[serde(default)]
    pub uses: Vec<Timestamp>,
    pub added_at: Timestamp,
    pub added_by: String,
}

/// Whose requests a rule approves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "who", rename_all = "snake_case")]
pub enum Who {
    /// Any member (people and bots).
    Anyone,
    /// One member, by identity (a name added again is someone else).
    Member { name: Name, id: IdentityId },
    /// Members whose base role is at least this.
    BaseRole { role: Role },
    /// People only, or bots only.
    Kind { kind: MemberKind },
}

/// At most `max` approvals per `per_secs`, counted in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UseCap {
    pub max: u32,
    pub per_secs: u64,
}

impl Rule {
    /// The uses still counting at `now` (within the cap's period).
    pub fn uses_in_period(&self, now: Timestamp) -> usize {
        match self.cap {
            Some(cap) => self
                .uses
                .iter()
                .filter(|t| now.until(**t) > -(cap.per_secs as i64))
                .count(),
            None => 0,
        }
    }

    /// Records one use at `now`, forgetting those outside the period.
    pub fn record_use(&mut self, now: Timestamp) {
        if let Some(cap) = self.cap {
            self.uses.retain(|t| now.until(*t) > -(cap.per_secs as i64));
            self.uses.push(now);
        }
    }

    /// `uses left: 97 of 100 per 24h`, or `no cap`.
    pub fn uses_left(&self, now: Timestamp) -> Option<u32> {
        self.cap
            .map(|c| c.max.saturating_sub(self.uses_in_period(now) as u32))
    }
}

impl Rule {
    /// Each condition in words, as `rule show` and the audit log give them.
    pub fn conditions(&self) -> Vec<String> {
        let names = |v: &[Name]| v.iter().map(Name::as_str).collect::<Vec<_>>().join(", ");
        let mut c = Vec::new();
        if !self.targets.is_empty() {
            c.push(format!("target {}", names(&self.targets)));
        }
        if !self.tags.is_empty() {
            c.push(format!(
                "every host tagged {}",
                names(&self.tags).replace(", ", " or ")
            ));
        }
        c.push(format!("role at most {}", self.role));
        c.push(format!(
            "duration at most {}",
            crate::model::format_duration(self.max_duration_secs)
        ));
        c.push(format!("risk at most {}", self.max_risk));
        match &self.who {
            Who::Anyone => c.push("any member".into()),
            Who::Member { name, .. } => c.push(format!("requester {name}")),
            Who::BaseRole { role } => c.push(format!("base role {role} or higher")),
            Who::Kind { kind } => c.push(format!("{kind}s only")),
        }
        if let Some(cap) = self.cap {
            c.push(format!(
                "at most {} per {}",
                cap.max,
                crate::model::format_duration(cap.per_secs)
            ));
        }
        if let Some(w) = &self.window {
            c.push(format!("during {}", w.describe()));
        }
        c
    }
}

/// Days of the week and a time of day, in a time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Monday first.
    pub days: [bool; 7],
    /// Minutes after midnight: from (inclusive) to (exclusive).
    pub from_min: u16,
    pub to_min: u16,
    /// An IANA zone name, such as Europe/Berlin or UTC.
    pub tz: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Window {
    /// Parses `--days mon-fri` (or `mon,wed,fri`, `sat-sun`), `--hours 09:00-18:00` and
    /// `--tz ZONE`; any may be missing (every day, all day, UTC).
    pub fn parse(days: Option<&str>, hours: Option<&str>, tz: Option<&str>) -> Result<Window> {
        let tz = tz.unwrap_or("UTC");
        parse_tz(tz)?;
        let days = match days {
            None => [true; 7],
            Some(d) => parse_days(d)?,
        };
        let (from_min, to_min) = match hours {
            None => (0, 24 * 60),
            Some(h) => parse_hours(h)?,
        };
        Ok(Window {
            days,
            from_min,
            to_min,
            tz: tz.to_string(),
        })
    }

    /// Whether `now` falls inside, and the local day and time it is there (for the record).
    pub fn contains(&self, now: Timestamp) -> (bool, String) {
        let Ok(tz) = parse_tz(&self.tz) else {
            return (false, format!("unknown zone {}", self.tz));
        };
        let Some(local) = tz.timestamp_opt(now.unix(), 0).single() else {
            return (false, "a time that does not exist".into());
        };
        let day = local.weekday().num_days_from_monday() as usize;
        let minute = (local.hour() * 60 + local.minute()) as u16;
        let inside = self.days[day] && self.from_min <= minute && minute < self.to_min;
        (
            inside,
            format!(
                "{} {:02}:{:02} {}",
                DAYS[day],
                local.hour(),
                local.minute(),
                self.tz
            ),
        )
    }

    /// `mon-fri 09:00-18:00 Europe/Berlin`.
    pub fn describe(&self) -> String {
        let days: Vec<&str> = DAYS
            .iter()
            .zip(self.days)
            .filter(|(_, on)| *on)
            .map(|(d, _)| *d)
            .collect();
        format!(
            "{} {:02}:{:02}-{:02}:{:02} {}",
            days.join(","),
            self.from_min / 60,
            self.from_min % 60,
            self.to_min / 60,
            self.to_min % 60,
            self.tz
        )
    }
}

fn parse_tz(tz: &str) -> Result<chrono_tz::Tz> {
    chrono_tz::Tz::from_str(tz).map_err(|_| {
        Error::invalid(format!(
            "'{}' is not a time zone; use an IANA name such as UTC, Europe/Berlin or America/New_York",
            printable(tz, 40)
        ))
    })
}

fn parse_days(s: &str) -> Result<[bool; 7]> {
    let bad = || {
        Error::invalid(format!(
            "--days '{}' is not a set of days; use a range or list such as mon-fri, sat-sun or mon,wed,fri",
            printable(s, 40)
        ))
    };
    let day = |d: &str| {
        DAYS.iter()
            .position(|x| *x == d.trim().to_ascii_lowercase())
            .ok_or_else(bad)
    };
    let mut out = [false; 7];
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                if a > b {
                    return Err(bad());
                }
                out[a..=b].iter_mut().for_each(|d| *d = true);
            }
            None => out[day(part)?] = true,
        }
    }
    Ok(out)
}

fn parse_hours(s: &str) -> Result<(u16, u16)> {
    let bad = || {
        Error::invalid(format!(
            "--hours '{}' is not a time range; use HH:MM-HH:MM with the start first, such as 09:00-18:00 (24:00 for midnight at the end)",
            printable(s, 40)
        ))
    };
    let minute = |t: &str| -> Result<u16> {
        let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if m >= 60 || h > 24 || (h == 24 && m != 0) {
            return Err(bad());
        }
        Ok(h * 60 + m)
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b) = (minute(a)?, minute(b)?);
    if a >= b {
        return Err(bad());
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_hold_in_their_zone() {
        let w = Window::parse(Some("mon-fri"), Some("09:00-18:00"), Some("Europe/Berlin")).unwrap();
        assert_eq!(
            w.describe(),
            "mon,tue,wed,thu,fri 09:00-18:00 Europe/Berlin"
        );
        // 2026-11-23 is a Monday; Berlin is UTC+1 in November.
        let at = |rfc: &str| Timestamp::parse_rfc3339(rfc).unwrap();
        assert_eq!(
            w.contains(at("2026-11-23T08:00:00Z")),
            (true, "mon 09:00 Europe/Berlin".into())
        );
        assert!(!w.contains(at("2026-11-23T07:59:00Z")).0);
        assert!(!w.contains(at("2026-11-23T17:00:00Z")).0);
        assert!(w.contains(at("2026-11-23T16:59:00Z")).0);
        // Saturday.
        assert!(!w.contains(at("2026-11-28T10:00:00Z")).0);
        // In July Berlin is UTC+2.
        assert!(w.contains(at("2026-07-06T07:00:00Z")).0);
        assert!(!w.contains(at("2026-07-06T06:59:00Z")).0);
        let all = Window::parse(Some("sat,sun"), None, None).unwrap();
        assert!(all.contains(at("2026-11-28T23:59:00Z")).0);
    }

    #[test]
    fn impossible_windows_are_refused() {
        for (d, h, tz) in [
            (Some("fri-mon"), None, None),
            (Some("funday"), None, None),
            (None, Some("18:00-09:00"), None),
            (None, Some("9-17"), None),
            (None, Some("09:00-24:30"), None),
            (None, Some("09:60-10:00"), None),
            (None, None, Some("Mars/Olympus")),
        ] {
            assert!(Window::parse(d, h, tz).is_err(), "{d:?} {h:?} {tz:?}");
        }
        assert!(Window::parse(None, Some("00:00-24:00"), Some("UTC")).is_ok());
    }
}
