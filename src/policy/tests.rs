//! Unit tests of the access rules, with `now` given.

use std::collections::BTreeMap;

use super::*;
use crate::model::{Host, IdentityId, Name, RequestState};
use crate::verdict::ReviewVerdict;

pub(crate) fn member(name: &str, role: Role) -> Member {
    Member {
        id: IdentityId(name.bytes().fold(7, |a, b| a * 31 + u64::from(b))),
        name: name.parse().unwrap(),
        role,
        kind: MemberKind::Human,
        key_added_by: vec![],
        keys: vec![],
        key_fingerprints: vec![],
        added_at: Timestamp::from_unix(0),
        added_by: "test".into(),
    }
}

fn host(approvals: u32, tags: &[&str]) -> Found {
    Found::host(&Host {
        id: IdentityId(1),
        name: "web-01".parse().unwrap(),
        address: "10.0.0.5".into(),
        port: 22,
        tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
        logins: BTreeMap::from([
            (GrantRole::Viewer, "readonly".to_string()),
            (GrantRole::Editor, "deploy".to_string()),
        ]),
        approvals_required: approvals,
        break_glass: false,
        escalate_after_secs: None,
        added_at: Timestamp::from_unix(0),
        added_by: "test".into(),
    })
}

/// `Policy::open` with no history and no rules.
#[allow(clippy::too_many_arguments)]
fn open_with(
    p: &Policy,
    id: u64,
    requester: &Member,
    found: &Found,
    ask: &Ask<'_>,
    open: &[OpenEntry],
    approvers: usize,
    now: Timestamp,
) -> Result<Request> {
    let asking = Asking {
        requester,
        found,
        ask,
        open,
        approvers,
        history: &History::default(),
        rules: &[],
        written: None,
    };
    p.open(id, &asking, now)
}

/// Approves as `approver`, the requester (same identity) having base role `base`.
fn yes(r: &mut Request, approver: &Member, base: Role, now: Timestamp) -> Result<Approved> {
    let mut requester = member(r.requester.as_str(), base);
    requester.id = r.requester_id;
    approve(
        r,
        approver,
        Some(&requester),
        Some(&host(1, &[])),
        &[],
        None,
        now,
    )
}

const T0: Timestamp = Timestamp::from_unix(1_800_000_000);

fn ask(role: GrantRole, secs: u64) -> Ask<'static> {
    Ask {
        role: Some(role),
        duration_secs: secs,
        reason: "INC-42 restart the stuck worker",
        start: None,
        break_glass: false,
    }
}

fn open(approvals: u32) -> Request {
    open_with(
        &Policy::default(),
        1,
        &member("alice", Role::Viewer),
        &host(approvals, &[]),
        &ask(GrantRole::Editor, 7200),
        &[],
        5,
        T0,
    )
    .unwrap()
}

#[test]
fn duration_is_bounded_on_both_ends() {
    let p = Policy::default();
    let (a, h) = (member("alice", Role::Viewer), host(1, &[]));
    for secs in [60, 299, 86401, 25 * 3600] {
        assert!(open_with(&p, 1, &a, &h, &ask(GrantRole::Viewer, secs), &[], 5, T0).is_err());
    }
    for secs in [300, 3600, 86400] {
        assert!(open_with(&p, 1, &a, &h, &ask(GrantRole::Viewer, secs), &[], 5, T0).is_ok());
    }
}

#[test]
fn deployments_may_tighten_but_not_widen() {
    let mut p = Policy {
        max_duration_secs: 3600,
        ..Policy::default()
    };
    assert!(p.validate().is_ok());
    let (a, h) = (member("alice", Role::Viewer), host(1, &[]));
    assert!(open_with(&p, 1, &a, &h, &ask(GrantRole::Viewer, 7200), &[], 5, T0).is_err());
    p.max_duration_secs = 90_000;
    assert!(p.validate().is_err());
    p.max_duration_secs = 3600;
    p.min_duration_secs = 60;
    assert!(p.validate().is_err());
}

#[test]
fn reasons_are_checked() {
    assert!(check_reason("").is_err());
    assert!(check_reason("   ").is_err());
    assert!(check_reason(&"x".repeat(1001)).is_err());
    assert!(check_reason("fix\u{7}bell").is_err());
    assert!(check_reason("line\nbreak").is_err());
    assert!(check_reason("INC-1 fix it").is_ok());
}

#[test]
fn nobody_approves_their_own_request() {
    let mut r = open(1);
    let err = yes(&mut r, &member("alice", Role::Owner), Role::Owner, T0);
    assert!(matches!(err, Err(Error::PermissionDenied(_))));
    assert_eq!(r.state_at(T0), RequestState::Pending);
}

#[test]
fn only_owners_and_admins_approve() {
    let mut r = open(1);
    for role in [Role::Viewer, Role::Editor] {
        assert!(yes(&mut r, &member("bob", role), Role::Viewer, T0).is_err());
    }
    assert!(yes(&mut r, &member("adam", Role::Admin), Role::Viewer, T0).is_ok());
}

#[test]
fn window_starts_at_final_approval_and_lasts_the_duration() {
    let mut r = open(1);
    let now = T0.plus(100);
    let out = yes(&mut r, &member("olga", Role::Owner), Role::Viewer, now).unwrap();
    let Approved::Granted(g) = out else {
        panic!("not granted")
    };
    assert_eq!((g.start, g.end), (now, now.plus(7200)));
    assert_eq!(g.scope.principals(), ["deploy@web-01".to_string()]);
    assert_eq!(r.state_at(now), RequestState::Approved);
}

#[test]
fn requested_start_wins_when_later() {
    let p = Policy::default();
    let mut a = ask(GrantRole::Viewer, 600);
    a.start = Some(T0.plus(3600));
    let mut r = open_with(
        &p,
        1,
        &member("alice", Role::Viewer),
        &host(1, &[]),
        &a,
        &[],
        5,
        T0,
    )
    .unwrap();
    yes(
        &mut r,
        &member("olga", Role::Owner),
        Role::Viewer,
        T0.plus(5),
    )
    .unwrap();
    let g = r.grant().unwrap();
    assert_eq!((g.start, g.end), (T0.plus(3600), T0.plus(4200)));
    let alice = member("alice", Role::Viewer);
    let refused = |a: &Ask<'_>| open_with(&p, 1, &alice, &host(1, &[]), a, &[], 5, T0).is_err();
    a.start = Some(Timestamp::from_unix(T0.unix() - 10));
    assert!(refused(&a), "a start in the past");
    a.start = Some(T0.plus(8 * 86400));
    assert!(refused(&a), "a start too far ahead");
}

#[test]
fn dual_authorization_needs_distinct_approvers() {
    let mut r = open(2);
    let olga = member("olga", Role::Owner);
    assert_eq!(
        yes(&mut r, &olga, Role::Viewer, T0).unwrap(),
        Approved::Recorded { have: 1, need: 2 }
    );
    assert!(yes(&mut r, &olga, Role::Viewer, T0).is_err());
    assert_eq!(r.state_at(T0), RequestState::Pending);
    let out = yes(&mut r, &member("adam", Role::Admin), Role::Viewer, T0).unwrap();
    assert!(matches!(out, Approved::Granted(_)));
}

#[test]
fn any_one_denial_vetoes() {
    let mut r = open(2);
    yes(&mut r, &member("olga", Role::Owner), Role::Viewer, T0).unwrap();
    deny(&mut r, &member("adam", Role::Admin), "not now", T0).unwrap();
    assert_eq!(r.state_at(T0), RequestState::Denied);
    assert!(yes(&mut r, &member("zed", Role::Admin), Role::Viewer, T0).is_err());
}

#[test]
fn pending_requests_expire_by_the_clock() {
    let mut r = open(1);
    let ttl = Policy::default().pending_ttl_secs;
    assert_eq!(r.state_at(T0.plus(ttl - 1)), RequestState::Pending);
    assert_eq!(r.state_at(T0.plus(ttl)), RequestState::Expired);
    let late = yes(
        &mut r,
        &member("olga", Role::Owner),
        Role::Viewer,
        T0.plus(ttl),
    );
    assert!(matches!(late, Err(Error::InvalidState(_))));
    assert!(cancel(&mut r, &member("alice", Role::Viewer), T0.plus(ttl)).is_err());
}

#[test]
fn only_the_requester_cancels_and_only_while_pending() {
    let mut r = open(1);
    assert!(cancel(&mut r, &member("bob", Role::Viewer), T0).is_err());
    cancel(&mut r, &member("alice", Role::Viewer), T0).unwrap();
    assert_eq!(r.state_at(T0), RequestState::Cancelled);
    assert!(cancel(&mut r, &member("alice", Role::Viewer), T0).is_err());
}

#[test]
fn effective_role_elevates_never_downgrades_and_caps_at_editor() {
    use GrantRole::*;
    assert_eq!(effective_role(Role::Viewer, Viewer), Viewer);
    assert_eq!(effective_role(Role::Viewer, Editor), Editor);
    assert_eq!(effective_role(Role::Editor, Viewer), Editor);
    assert_eq!(effective_role(Role::Owner, Viewer), Editor);
    assert_eq!(effective_role(Role::Admin, Editor), Editor);
}

#[test]
fn elevation_never_lends_editor_rights_to_a_viewer_login() {
    let mut h = host(1, &[]);
    h.hosts[0].logins.remove(&GrantRole::Editor);
    let p = Policy::default();
    let mut r = open_with(
        &p,
        1,
        &member("ed", Role::Editor),
        &h,
        &ask(GrantRole::Viewer, 600),
        &[],
        5,
        T0,
    )
    .unwrap();
    let mut ed = member("ed", Role::Editor);
    ed.id = r.requester_id;
    approve(
        &mut r,
        &member("olga", Role::Owner),
        Some(&ed),
        Some(&h),
        &[],
        None,
        T0,
    )
    .unwrap();
    let g = r.grant().unwrap();
    assert_eq!(g.effective_role, Some(GrantRole::Viewer));
    assert_eq!(g.scope.principals(), ["readonly@web-01".to_string()]);
}

#[test]
fn certificates_only_for_the_requester_inside_the_window() {
    let mut r = open(1);
    let p = Policy::default();
    let cert = |r: &Request, who: &Member, at| p.authorize_cert(r, who, |_| true, at).map(|_| ());
    let alice = member("alice", Role::Viewer);
    assert!(matches!(cert(&r, &alice, T0), Err(Error::InvalidState(_))));
    yes(&mut r, &member("olga", Role::Owner), Role::Viewer, T0).unwrap();
    let bob = member("bob", Role::Viewer);
    assert!(matches!(
        cert(&r, &bob, T0),
        Err(Error::PermissionDenied(_))
    ));
    assert!(cert(&r, &alice, T0).is_ok());
    assert!(cert(&r, &alice, T0.plus(7199)).is_ok());
    assert!(matches!(
        cert(&r, &alice, T0.plus(7200)),
        Err(Error::GrantNotCurrent(_))
    ));
}

#[test]
fn production_editor_requests_are_flagged() {
    let r = open_with(
        &Policy::default(),
        1,
        &member("alice", Role::Viewer),
        &host(1, &["prod"]),
        &ask(GrantRole::Editor, 7200),
        &[],
        5,
        T0,
    )
    .unwrap();
    assert!(
        r.justification
            .flags
            .iter()
            .any(|f| f == "editor_on_production")
    );
}

#[test]
fn only_owners_touch_owners_and_admins() {
    let (olga, adam, ed) = (
        member("olga", Role::Owner),
        member("adam", Role::Admin),
        member("ed", Role::Editor),
    );
    let zoe = member("zoe", Role::Admin);
    let denied = |actor: &Member, change| {
        matches!(
            check_team_change(actor, change, 2),
            Err(Error::PermissionDenied(_))
        )
    };
    for change in [
        TeamChange::Add {
            role: Role::Admin,
            kind: MemberKind::Human,
        },
        TeamChange::Add {
            role: Role::Owner,
            kind: MemberKind::Human,
        },
        TeamChange::Remove { target: &zoe },
        TeamChange::Keys { target: &zoe },
        TeamChange::SetRole {
            target: &ed,
            to: Role::Admin,
        },
        TeamChange::SetRole {
            target: &zoe,
            to: Role::Viewer,
        },
    ] {
        assert!(denied(&adam, change), "{change:?}");
        assert!(check_team_change(&olga, change, 2).is_ok(), "{change:?}");
    }
    // Admins manage editors and viewers; everyone manages their own keys.
    assert!(
        check_team_change(
            &adam,
            TeamChange::Add {
                role: Role::Editor,
                kind: MemberKind::Human
            },
            2
        )
        .is_ok()
    );
    assert!(check_team_change(&adam, TeamChange::Keys { target: &ed }, 2).is_ok());
    assert!(check_team_change(&ed, TeamChange::Keys { target: &ed }, 2).is_ok());
    assert!(check_team_change(&adam, TeamChange::Keys { target: &adam }, 2).is_ok());
    assert!(denied(&ed, TeamChange::Keys { target: &adam }));
    assert!(denied(
        &ed,
        TeamChange::Add {
            role: Role::Viewer,
            kind: MemberKind::Human
        }
    ));
    // The last owner stays.
    for change in [
        TeamChange::Remove { target: &olga },
        TeamChange::SetRole {
            target: &olga,
            to: Role::Admin,
        },
    ] {
        assert!(matches!(
            check_team_change(&olga, change, 1),
            Err(Error::InvalidState(_))
        ));
    }
}

#[test]
fn the_rate_allows_a_burst_then_a_steady_pace() {
    let rate = RateLimit {
        burst: 3,
        per_minute: 6,
    };
    let mut tat = 0;
    for _ in 0..3 {
        rate.take("cert", &mut tat, T0).unwrap();
    }
    let Err(Error::RateLimited {
        retry_after_secs, ..
    }) = rate.take("cert", &mut tat, T0)
    else {
        panic!("not limited")
    };
    assert_eq!(retry_after_secs, 10);
    assert!(rate.take("cert", &mut tat, T0.plus(9)).is_err());
    rate.take("cert", &mut tat, T0.plus(10)).unwrap();
    // A long pause refills the burst, never more.
    for _ in 0..3 {
        rate.take("cert", &mut tat, T0.plus(1000)).unwrap();
    }
    assert!(rate.take("cert", &mut tat, T0.plus(1000)).is_err());
    // A use given back can be taken again.
    let (before, after) = (tat - 10_000_000, tat);
    tat = rate.give_back(tat, before, after);
    assert_eq!(tat, before);
    rate.take("cert", &mut tat, T0.plus(1000)).unwrap();
    // A clock stepped back makes the member wait at most one interval.
    let mut tat = 0;
    rate.take("cert", &mut tat, T0.plus(3600)).unwrap();
    assert!(matches!(
        rate.take("cert", &mut tat, T0),
        Err(Error::RateLimited {
            retry_after_secs: 10,
            ..
        })
    ));
    rate.take("cert", &mut tat, T0.plus(10)).unwrap();
}

#[test]
fn removal_cancels_pending_and_ends_current_grants_only() {
    let by: Name = "olga".parse().unwrap();
    let mut pending = open(1);
    assert_eq!(
        close_for_removal(&mut pending, &by, "gone", T0),
        Closed::Cancelled
    );
    assert_eq!(pending.state_at(T0), RequestState::Cancelled);
    let mut granted = open(1);
    yes(&mut granted, &member("adam", Role::Admin), Role::Viewer, T0).unwrap();
    assert_eq!(
        close_for_removal(&mut granted, &by, "gone", T0.plus(10)),
        Closed::Ended
    );
    let p = Policy::default();
    let alice = member("alice", Role::Viewer);
    assert!(matches!(
        p.authorize_cert(&granted, &alice, |_| true, T0.plus(20)),
        Err(Error::GrantNotCurrent(m)) if m.contains("was ended")
    ));
    assert_eq!(
        close_for_removal(&mut granted, &by, "again", T0.plus(30)),
        Closed::Untouched
    );
    let mut over = open(1);
    yes(&mut over, &member("adam", Role::Admin), Role::Viewer, T0).unwrap();
    assert_eq!(
        close_for_removal(&mut over, &by, "late", T0.plus(7200)),
        Closed::Untouched
    );
}

#[test]
fn requests_belong_to_identities_not_names() {
    let mut r = open(1);
    let mut impostor = member("alice", Role::Viewer);
    impostor.id = IdentityId(999);
    assert!(!may_read(&r, &impostor));
    assert!(cancel(&mut r, &impostor, T0).is_err());
    // The requester's name now belongs to someone else: no approval.
    let out = approve(
        &mut r,
        &member("olga", Role::Owner),
        Some(&impostor),
        Some(&host(1, &[])),
        &[],
        None,
        T0,
    );
    assert!(matches!(out, Err(Error::InvalidState(m)) if m.contains("no longer a member")));
    let mut other_host = host(1, &[]);
    other_host.id = IdentityId(2);
    other_host.hosts[0].id = IdentityId(2);
    let out = approve(
        &mut r,
        &member("olga", Role::Owner),
        Some(&member("alice", Role::Viewer)),
        Some(&other_host),
        &[],
        None,
        T0,
    );
    assert!(matches!(out, Err(Error::InvalidState(m)) if m.contains("was removed")));
}

#[test]
fn the_scope_is_fixed_at_final_approval_and_needs_what_its_hosts_need() {
    let fleet = |hosts: Vec<Host>| Found {
        kind: crate::target::TargetKind::Fleet,
        name: "web".parse().unwrap(),
        id: IdentityId(50),
        approvals_required: 1,
        max_hosts: 256,
        hosts,
        command: None,
        why_empty: "none".into(),
        break_glass: false,
        escalate_after_secs: None,
    };
    let web = |id: u64, name: &str, approvals: u32| {
        let mut h = host(approvals, &["web"]).hosts.remove(0);
        h.id = IdentityId(id);
        h.name = name.parse().unwrap();
        h
    };
    let alice = member("alice", Role::Viewer);
    let p = Policy::default();
    let mut r = open_with(
        &p,
        1,
        &alice,
        &fleet(vec![web(1, "web-01", 1)]),
        &ask(GrantRole::Viewer, 600),
        &[],
        5,
        T0,
    )
    .unwrap();
    assert_eq!(r.approvals_required, 1);
    // A host needing two approvals joined the fleet before approval: one is not enough.
    let now_fleet = fleet(vec![web(1, "web-01", 1), web(2, "web-02", 2)]);
    let olga = member("olga", Role::Owner);
    let out = approve(&mut r, &olga, Some(&alice), Some(&now_fleet), &[], None, T0).unwrap();
    assert_eq!(out, Approved::Recorded { have: 1, need: 2 });
    let out = approve(
        &mut r,
        &member("adam", Role::Admin),
        Some(&alice),
        Some(&now_fleet),
        &[],
        None,
        T0,
    );
    let Ok(Approved::Granted(g)) = out else {
        panic!("not granted: {out:?}")
    };
    assert_eq!(g.scope.host_list(10), "web-01, web-02");
    // A removed host gets no certificate; with all gone, none is issued.
    let (_, hosts) = p
        .authorize_cert(
            &r,
            &alice,
            |h| h.is_none_or(|h| h.name.as_str() != "web-02"),
            T0,
        )
        .unwrap();
    assert_eq!(hosts.len(), 1);
    assert!(matches!(
        p.authorize_cert(&r, &alice, |h| h.is_none(), T0),
        Err(Error::GrantNotCurrent(m)) if m.contains("every host")
    ));
    // The fleet itself removed: nothing more, even with its hosts there.
    assert!(matches!(
        p.authorize_cert(&r, &alice, |h| h.is_some(), T0),
        Err(Error::GrantNotCurrent(m)) if m.contains("fleet web was removed")
    ));
}

#[test]
fn break_glass_needs_a_person_a_reference_a_short_window_and_no_overdue_review() {
    let p = Policy::default();
    let mut found = host(2, &[]);
    found.break_glass = true;
    let ed = member("ed", Role::Editor);
    let glass_on =
        |found: &Found, who: &Member, secs: u64, reason: &'static str, history: &History| {
            let ask = Ask {
                role: Some(GrantRole::Editor),
                duration_secs: secs,
                reason,
                start: None,
                break_glass: true,
            };
            let asking = Asking {
                requester: who,
                found,
                ask: &ask,
                open: &[],
                approvers: 0,
                history,
                rules: &[],
                written: None,
            };
            p.open(1, &asking, T0)
        };
    let glass = |who: &Member, secs: u64, reason: &'static str, history: &History| {
        glass_on(&found, who, secs, reason, history)
    };
    let clean = History::default();
    let r = glass(&ed, 1800, "INC-9 disk full", &clean).unwrap();
    // Granted at once, with no approvers, though the host needs two and none exist.
    assert_eq!(r.state_at(T0), RequestState::Approved);
    assert_eq!(r.review_due, Some(T0.plus(p.review_within_secs)));
    assert!(r.approvals.is_empty());
    let err = |e: Result<Request>| e.unwrap_err();
    assert!(matches!(
        err(glass(
            &member("vic", Role::Viewer),
            1800,
            "INC-9 disk full",
            &clean
        )),
        Error::BreakGlassWho { .. }
    ));
    let mut bot = member("robo", Role::Editor);
    bot.kind = MemberKind::Bot;
    assert!(matches!(
        err(glass(&bot, 1800, "INC-9 disk full", &clean)),
        Error::BreakGlassWho { .. }
    ));
    assert!(matches!(
        err(glass(&ed, 3601, "INC-9 disk full", &clean)),
        Error::BreakGlassTooLong { .. }
    ));
    assert!(matches!(
        err(glass(&ed, 1800, "the disk is full", &clean)),
        Error::BreakGlassNoReference
    ));
    let overdue = History {
        overdue_break_glass: vec![4],
        ..History::default()
    };
    assert!(
        matches!(err(glass(&ed, 1800, "INC-9 disk full", &overdue)), Error::ReviewOverdue { ids } if ids == [4])
    );
    let mut closed = found.clone();
    closed.break_glass = false;
    assert!(matches!(
        err(glass_on(&closed, &ed, 1800, "INC-9 disk full", &clean)),
        Error::BreakGlassNotAllowed { .. }
    ));
}

#[test]
fn a_review_is_once_by_another_approver_and_marks_lateness() {
    let p = Policy::default();
    let mut found = host(1, &[]);
    found.break_glass = true;
    let ed = member("ed", Role::Editor);
    let ask = Ask {
        break_glass: true,
        ..ask(GrantRole::Editor, 1800)
    };
    let asking = Asking {
        requester: &ed,
        found: &found,
        ask: &ask,
        open: &[],
        approvers: 1,
        history: &History::default(),
        rules: &[],
        written: None,
    };
    let mut r = p.open(1, &asking, T0).unwrap();
    let adam = member("adam", Role::Admin);
    let ok = ReviewVerdict::Ok;
    assert!(review(&mut r, &ed, Some(&ed), ok, "mine", T0).is_err());
    assert!(review(&mut r, &member("vic", Role::Viewer), Some(&ed), ok, "x", T0).is_err());
    let late = T0.plus(p.review_within_secs);
    assert!(r.review_overdue(late));
    review(
        &mut r,
        &adam,
        Some(&ed),
        ReviewVerdict::Flagged,
        "INC-9 follow up",
        late,
    )
    .unwrap();
    let rv = r.review.clone().unwrap();
    assert_eq!((rv.verdict, rv.late), (ReviewVerdict::Flagged, true));
    assert!(!r.review_overdue(late));
    assert!(
        review(
            &mut r,
            &member("olga", Role::Owner),
            Some(&ed),
            ok,
            "again",
            late
        )
        .is_err()
    );
    // An admin who added a key of the requester's cannot review for them.
    let mut r2 = p.open(2, &asking, T0).unwrap();
    let mut keyed = ed.clone();
    keyed.key_added_by = vec![adam.id];
    assert!(matches!(
        review(&mut r2, &adam, Some(&keyed), ok, "x", T0),
        Err(Error::PermissionDenied(m)) if m.contains("you added ed")
    ));
}

#[test]
fn the_new_knobs_are_bounded() {
    for (knob, bad) in [
        ("break_glass_max_secs", 90_000u64),
        ("review_within_secs", 30),
        ("bot_max_duration_secs", 60),
    ] {
        let mut p = Policy::default();
        match knob {
            "break_glass_max_secs" => p.break_glass_max_secs = bad,
            "review_within_secs" => p.review_within_secs = bad,
            _ => p.bot_max_duration_secs = bad,
        }
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains(knob), "{err}");
    }
    assert!(Policy::default().validate().is_ok());
}

#[test]
fn hidden_characters_are_refused_in_text() {
    for bad in [
        "a\u{202E}b",
        "a\u{2066}b",
        "a\u{200B}b",
        "a\u{2028}b",
        "\u{FEFF}a",
        "a\u{E0041}",
        "a\u{00A0}b",
        "/opt/app\u{FE0F}/restart.sh",
        "a\u{E0100}b",
        "a\u{180E}b",
        "a\u{17B4}b",
        "a\u{2800}b",
    ] {
        assert!(check_reason(bad).is_err(), "{bad:?}");
    }
    assert!(check_reason("INC-1 réparer le café ☕").is_ok());
}
