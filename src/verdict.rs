//! What a request records about how it was weighed and decided beyond people's approvals:
//! its risk score, the rule that approved it, and the review a break-glass grant owes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Name, Timestamp, printable};

/// A deterministic score 0-100 and the factors that make it up.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Risk {
    pub score: u8,
    pub factors: Vec<RiskFactor>,
}

/// One reason a request is riskier, and how much it adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskFactor {
    pub factor: String,
    pub points: u8,
}

impl Risk {
    /// `35 (production hosts +25, editor +10)`.
    pub fn explain(&self) -> String {
        if self.factors.is_empty() {
            return format!("{} (no risk factors)", self.score);
        }
        let parts: Vec<String> = self
            .factors
            .iter()
            .map(|f| format!("{} +{}", f.factor, f.points))
            .collect();
        format!("{} ({})", self.score, parts.join(", "))
    }
}

/// A rule's approval: which rule, and the values that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleApproval {
    pub rule: Name,
    pub matched: Vec<String>,
    pub at: Timestamp,
}

/// An owner's or admin's review of a break-glass grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub by: Name,
    pub at: Timestamp,
    pub verdict: ReviewVerdict,
    pub comment: String,
    /// Whether it came after the review was due.
    pub late: bool,
}

/// What the reviewer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewVerdict {
    /// The emergency was real and the access fitting.
    Ok,
    /// Something needs a follow-up.
    Flagged,
}

impl fmt::Display for ReviewVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReviewVerdict::Ok => "ok",
            ReviewVerdict::Flagged => "flagged",
        })
    }
}

/// Whether a member is a person or a machine (a pipeline, an agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberKind {
    #[default]
    Human,
    /// Never approves, reviews or manages; its requests are decided by rules alone.
    Bot,
}

impl MemberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::Human => "human",
            MemberKind::Bot => "bot",
        }
    }
}

impl fmt::Display for MemberKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MemberKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "human" => Ok(MemberKind::Human),
            "bot" => Ok(MemberKind::Bot),
            _ => Err(Error::invalid(format!(
                "'{}' is not a member kind; use human or bot",
                printable(s, 40)
            ))),
        }
    }
}
