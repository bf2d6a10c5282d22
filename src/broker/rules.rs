//! The `rule` commands: owners add and remove auto-approval rules; owners and admins list
//! them with the uses left. Every change is an audit entry that spells out the conditions.

use super::{Broker, Call, Reply, require_manager};
use crate::audit::AuditEvent;
use crate::commands::{RuleArgs, RuleOp};
use crate::error::{Error, Result};
use crate::model::{GrantRole, IdentityId, Member, Name, Role, parse_duration, printable};
use crate::rule::{MAX_USES, Rule, UseCap, Who, Window};
use crate::target::TargetKind;
use crate::verdict::MemberKind;
use crate::views;

/// The shortest and longest `--per` of a use cap.
const PER_RANGE: std::ops::RangeInclusive<u64> = 60..=366 * 86400;

impl Broker {
    pub(super) fn rule(&self, actor: &Member, op: &RuleOp, cx: &Call) -> Result<Reply> {
        let now = cx.now;
        match op {
            RuleOp::List => {
                require_manager(actor, "list rules")?;
                let rules = self.store.rules()?;
                let v: Vec<_> = rules.iter().map(|r| views::rule_view(r, now)).collect();
                Reply::of(&v, views::rules_table(&rules, now))
            }
            RuleOp::Show { name } => {
                require_manager(actor, "read rules")?;
                let r = self.named_rule(name)?;
                let text = format!(
                    "rule {}: approves when\n  {}\n{}",
                    r.name,
                    r.conditions().join("\n  "),
                    match r.uses_left(now) {
                        Some(n) => format!("uses left in this period: {n}\n"),
                        None => String::new(),
                    }
                );
                Reply::of(&views::rule_view(&r, now), text)
            }
            RuleOp::Remove { name } => {
                require_owner(actor)?;
                let r = self.named_rule(name)?;
                self.apply(cx, actor, |tx| {
                    if tx.rule(&r.name)?.is_none() {
                        return Err(
                            Error::NotFound(format!("there is no rule named {}", r.name)).into(),
                        );
                    }
                    tx.remove_rule(&r.name)?;
                    Ok((
                        (),
                        vec![AuditEvent::RuleRemoved {
                            name: r.name.to_string(),
                        }],
                    ))
                })?;
                tracing::info!(rule = %r.name, by = %actor.name, "rule removed");
                Reply::of(
                    &views::rule_view(&r, now),
                    format!("removed rule {}", r.name),
                )
            }
            RuleOp::Add(args) => {
                require_owner(actor)?;
                let rule = self.new_rule(actor, args, cx)?;
                let rule = self.apply(cx, actor, |tx| {
                    if tx.rule(&rule.name)?.is_some() {
                        return Err(Error::AlreadyExists(format!(
                            "rule {} already exists; remove it first to change it",
                            rule.name
                        ))
                        .into());
                    }
                    let mut r = rule.clone();
                    r.id = tx.new_identity()?;
                    tx.put_rule(&r)?;
                    let event = AuditEvent::RuleAdded {
                        name: r.name.to_string(),
                        conditions: r.conditions(),
                    };
                    Ok((r, vec![event]))
                })?;
                tracing::info!(rule = %rule.name, by = %actor.name, "rule added");
                Reply::of(
                    &views::rule_view(&rule, now),
                    format!(
                        "added rule {}: it approves, without people, requests that meet all of:\n  {}\nit never approves a target that needs two or more approvals",
                        rule.name,
                        rule.conditions().join("\n  ")
                    ),
                )
            }
        }
    }

    fn named_rule(&self, name: &str) -> Result<Rule> {
        let name: Name = name.parse()?;
        self.store.rule(&name)?.ok_or_else(|| {
            Error::NotFound(format!(
                "there is no rule named {name}; 'rule list' shows them"
            ))
        })
    }

    /// Builds a rule from `rule add`'s arguments, refusing impossible or unknown conditions.
    fn new_rule(&self, actor: &Member, args: &RuleArgs, cx: &Call) -> Result<Rule> {
        let RuleArgs {
            name,
            targets,
            tags,
            role,
            commands,
            max_duration,
            max_risk,
            requester,
            base_role,
            kind,
            max_uses,
            per,
            days,
            hours,
            tz,
        } = args;
        let mut covered: Vec<Name> = Vec::new();
        for (t, want) in targets
            .iter()
            .map(|t| (t, None))
            .chain(commands.iter().map(|c| (c, Some(TargetKind::Command))))
        {
            let t: Name = t.parse()?;
            match (self.store.kind_of(&t)?, want) {
                (None, _) => return Err(self.unknown_target(&t, None)?),
                (Some(k), Some(w)) if k != w => {
                    return Err(Error::invalid(format!(
                        "--command {t}: {t} is a {k}, not a command; use --target {t}"
                    )));
                }
                _ => covered.push(t),
            }
        }
        let tags = tags
            .iter()
            .map(|t| t.parse())
            .collect::<Result<Vec<Name>>>()?;
        if covered.is_empty() && tags.is_empty() {
            return Err(Error::invalid(
                "a rule needs what it covers: give --target NAME, --command NAME or --tag T (repeat for more)",
            ));
        }
        let role: GrantRole = role.parse()?;
        let max_duration_secs = match max_duration {
            Some(d) => {
                let secs = parse_duration(d)?;
                if !(self.policy.min_duration_secs..=self.policy.max_duration_secs).contains(&secs)
                {
                    return Err(Error::invalid(format!(
                        "--max-duration {} is out of range; grants last {} to {}",
                        printable(d, 20),
                        crate::model::format_duration(self.policy.min_duration_secs),
                        crate::model::format_duration(self.policy.max_duration_secs)
                    )));
                }
                secs
            }
            None => self.policy.max_duration_secs,
        };
        let max_risk = max_risk.unwrap_or(100);
        if max_risk > 100 {
            return Err(Error::invalid(format!(
                "--max-risk {max_risk} is out of range; risk scores run from 0 to 100"
            )));
        }
        let who = match (requester, base_role, kind) {
            (Some(n), _, _) => {
                let n: Name = n.parse()?;
                let m = self.store.member(&n)?.ok_or_else(|| {
                    Error::NotFound(format!(
                        "there is no member named {n}; 'member list' shows them"
                    ))
                })?;
                Who::Member { name: n, id: m.id }
            }
            (_, Some(r), _) => Who::BaseRole {
                role: r.parse::<Role>()?,
            },
            (_, _, Some(k)) => Who::Kind {
                kind: k.parse::<MemberKind>()?,
            },
            _ => Who::Anyone,
        };
        let cap = match (max_uses, per) {
            (Some(max), Some(per)) => {
                let per_secs = parse_duration(per)?;
                if !(1..=MAX_USES).contains(max) || !PER_RANGE.contains(&per_secs) {
                    return Err(Error::invalid(format!(
                        "--max-uses {max} --per {} is out of range; use 1 to {MAX_USES} uses per 1m to 366d",
                        printable(per, 20)
                    )));
                }
                Some(UseCap {
                    max: *max,
                    per_secs,
                })
            }
            _ => None,
        };
        let window = if days.is_some() || hours.is_some() || tz.is_some() {
            Some(Window::parse(
                days.as_deref(),
                hours.as_deref(),
                tz.as_deref(),
            )?)
        } else {
            None
        };
        Ok(Rule {
            id: IdentityId(0),
            name: name.parse()?,
            targets: covered,
            tags,
            role,
            max_duration_secs,
            max_risk,
            who,
            cap,
            window,
            uses: Vec::new(),
            added_at: cx.now,
            added_by: actor.name.to_string(),
        })
    }
}

/// Refuses unless `actor` is an OWNER: a rule approves in people's place, so only the root
/// of trust makes one.
fn require_owner(actor: &Member) -> Result<()> {
    if actor.role == Role::Owner {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "only owners add or remove rules: a rule approves in people's place; you are {}",
            actor.role
        )))
    }
}
