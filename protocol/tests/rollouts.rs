//! Rollouts stepped in virtual time across a few real protocol nodes: rings, gates, halts,
//! approvals, conflicting admin commands, forged evidence and journal recovery.

mod common;

use common::{control, key, patch, publish, rollout, run, step, Harness, Keys, CONTENT, T0};
use patchmesh_protocol::catalog::{
    AdminCommand, CatalogEntry, CommandAction, RingSpec, RolloutEntry,
};
use patchmesh_protocol::crypto::{Domain, Ed25519, Envelope};
use patchmesh_protocol::ids::{Millis, NodeId, RolloutId, SiteId};
use patchmesh_protocol::mesh;
use patchmesh_protocol::node::{Command, Input, Node, PeerId};
use patchmesh_protocol::rollout::engine::{Live, Liveness, View};
use patchmesh_protocol::rollout::verdict::rollout_hash;
use patchmesh_protocol::rollout::{
    Action, Control, Engine, JournalEntry, Policies, RolloutEvent, Step,
};
use patchmesh_protocol::site::{
    Bundle, Evidence, EvidenceKind, InventorySummary, SiteState, Summaries,
};
use patchmesh_protocol::trust::Trust;
use patchmesh_protocol::wire::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// `n` nodes over sites `a`/`b`; nodes in `canaries` carry `ring=canary`. Fully connected.
fn fleet(keys: Keys, n: usize, canaries: &[usize]) -> Harness {
    let sites: Vec<&str> = (0..n).map(|i| if i % 2 == 0 { "a" } else { "b" }).collect();
    common::labelled(keys, &sites, canaries)
}

#[test]
fn a_failing_canary_halts_every_node_and_nothing_outside_the_canary_ring_installs() {
    let mut h = fleet(Keys::new(), 8, &[0, 1]);
    publish(
        &mut h,
        3,
        0,
        vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(rollout(1, 5_000))],
    );
    run(&mut h, 30_000, &|_| true);
    for i in 0..8 {
        assert!(
            matches!(control(&h, i, 1), Some(Control::Halted { ring: 0, .. })),
            "node {i}: {:?}",
            control(&h, i, 1)
        );
    }
    for i in [0, 1] {
        assert_eq!(step(&h, i, 1), Some(Step::RolledBack), "canary {i} rolled back");
    }
    for i in 2..8 {
        assert_eq!(step(&h, i, 1), None, "node {i} outside the canary ring never started");
    }
    let installs: BTreeSet<usize> = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, RolloutEvent::Step { step: Step::Installing, .. }))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(installs, [0, 1].into());
}

#[test]
fn a_good_patch_moves_ring_by_ring_after_each_gate() {
    let mut h = fleet(Keys::new(), 6, &[0, 1]);
    publish(
        &mut h,
        0,
        0,
        vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(rollout(2, 3_000))],
    );
    run(&mut h, 40_000, &|_| false);
    let journal = |i: usize| h.nodes[i].rollouts().journal()[&RolloutId([2; 32])].clone();
    for i in 0..6 {
        assert_eq!(journal(i).step, Step::Committed, "node {i}");
    }
    let canaries_done = journal(0).step_at.max(journal(1).step_at);
    for i in 2..6 {
        assert!(
            journal(i).started_at >= canaries_done,
            "node {i} started before the canary gate passed"
        );
    }
    assert_eq!(control(&h, 5, 2), Some(Control::Running));
}

#[test]
fn a_busy_site_reports_its_settled_canaries_at_once_and_the_next_ring_starts_within_seconds() {
    // Node 1 (site b) is the only canary. Site a's members can start only on site b's summary,
    // and site b never goes quiet: its other members re-sign their records every 300 ms. A
    // ring that settled is summarised without waiting for quiet (or for the fourth interval).
    let mut h = fleet(Keys::new(), 6, &[1]);
    publish(
        &mut h,
        0,
        0,
        vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(rollout(7, 3_000))],
    );
    let id = RolloutId([7; 32]);
    let mut canary_done = None;
    let mut first_a_start = None;
    for tick in 0..200u32 {
        for i in [3, 5] {
            let inventory =
                InventorySummary { package_count: tick * 10 + i as u32, ..Default::default() };
            h.input(i, Input::Command(Command::UpdateRecord { inventory }));
        }
        run(&mut h, 300, &|_| false);
        let j1 = h.nodes[1].rollouts().journal().get(&id).cloned();
        if canary_done.is_none() && j1.as_ref().is_some_and(|j| j.step == Step::Committed) {
            canary_done = j1.map(|j| j.step_at);
        }
        let starts =
            [0, 2, 4].map(|i| h.nodes[i].rollouts().journal().get(&id).map(|j| j.started_at));
        if let Some(t) = starts.into_iter().flatten().min() {
            first_a_start = Some(t);
            break;
        }
    }
    let (done, start) =
        (canary_done.expect("the canary committed"), first_a_start.expect("site a started"));
    assert!(start >= done, "site a started before the canary gate passed");
    // At worst one summary interval (2 s) plus a flush and an evaluation on arrival; waiting
    // for the busy site to go quiet instead took 3.7 s here (up to four intervals in general).
    assert!(
        start.since(done) <= 2_500,
        "the next ring started {} ms after the canary committed",
        start.since(done)
    );
}

/// Site b's summary carries when its canary began to soak, so site a starts the next ring when
/// that soak is over, with no word from site b after it: here site b is cut off from the moment
/// its summary arrived, and site a still starts, no earlier than the canary's soak ended.
#[test]
fn a_gate_passes_when_the_soaks_it_counts_end_without_another_summary() {
    let mut h = fleet(Keys::new(), 6, &[1]);
    let id = 8u8;
    publish(
        &mut h,
        0,
        0,
        vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(rollout(id, 10_000))],
    );
    let mut waited = 0;
    while step(&h, 1, id) != Some(Step::Soaking) {
        run(&mut h, 100, &|_| false);
        waited += 100;
        assert!(waited < 10_000, "the canary never started soaking");
    }
    run(&mut h, 1_500, &|_| false);
    let verdict =
        |h: &Harness, i: usize| h.nodes[i].rollouts().verdicts()[&RolloutId([id; 32])].clone();
    let before = verdict(&h, 0);
    assert_eq!(before.open_rings, 1, "site a opened the next ring during the canary's soak");
    assert!(
        before.waiting.contains("end their soak") && before.promotes_at.is_some(),
        "site a does not know when the canary's soak ends: {before:?}"
    );
    h.sides = Some((0..6).map(|i| (i % 2) as u8).collect());
    run(&mut h, 12_000, &|_| false);
    let soak_end = h.nodes[1].rollouts().journal()[&RolloutId([id; 32])]
        .soak_until
        .expect("the canary soaked");
    for i in [0, 2, 4] {
        let j = h.nodes[i].rollouts().journal().get(&RolloutId([id; 32])).cloned();
        let j = j.unwrap_or_else(|| panic!("node {i} never started: {:?}", verdict(&h, i)));
        assert!(j.started_at >= soak_end, "node {i} started before the canary's soak ended");
        assert!(
            j.started_at.since(soak_end) <= 2_000 + 250 + 500,
            "node {i} started {} ms after the soak ended",
            j.started_at.since(soak_end)
        );
    }
}

/// `n` nodes of one site `a`, each connected only to its neighbours in a line: no node sees
/// most of its site directly.
fn site_in_a_line(n: usize) -> Harness {
    let sites = vec!["a"; n];
    let mut h = Harness::new(&sites);
    for i in 0..n {
        let k = key(100 + i as u8);
        let mut c = h.keys.config(k, "a");
        c.seed = i as u64;
        h.nodes[i] = common::started(Node::new(c, T0).unwrap());
    }
    for i in 1..n {
        h.connect(i - 1, i);
    }
    h.run_for(3_000);
    h
}

#[test]
fn a_sparsely_connected_site_never_installs_on_more_members_than_its_limit() {
    // Eight members in a line, two slots: each member is connected to at most two others, so
    // ranking only among connected members would let most of them start at once.
    let n = 8;
    let mut h = site_in_a_line(n);
    let mut r = one_ring(9, 1_000);
    r.max_concurrent_per_site = 2;
    publish(&mut h, 0, 0, vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(r)]);
    let id = RolloutId([9; 32]);
    let mut steps: BTreeMap<usize, Step> = BTreeMap::new();
    let mut most = 0;
    for _ in 0..1_200 {
        run(&mut h, 100, &|_| false);
        for (i, e) in std::mem::take(&mut h.events) {
            if let RolloutEvent::Step { rollout, step, .. } = e {
                if rollout == id {
                    steps.insert(i, step);
                }
            }
            let holding =
                steps.values().filter(|s| !s.is_terminal() && **s != Step::Soaking).count();
            most = most.max(holding);
            assert!(holding <= 2, "{holding} members hold an install slot at once: {steps:?}");
        }
        if (0..n).all(|i| step(&h, i, 9) == Some(Step::Committed)) {
            break;
        }
    }
    assert!((0..n).all(|i| step(&h, i, 9) == Some(Step::Committed)), "{steps:?}");
    assert_eq!(most, 2, "both slots were used");
}

/// Members that ever started rollout `id` (any step of the journal), per site (`i % 2`).
fn started_per_site(h: &Harness, id: u8) -> [usize; 2] {
    let mut per = [0; 2];
    for i in 0..h.nodes.len() {
        if step(h, i, id).is_some() {
            per[i % 2] += 1;
        }
    }
    per
}

fn one_ring(id: u8, max_targets: u32) -> RolloutEntry {
    let mut r = rollout(id, 500);
    r.rings = vec![RingSpec {
        name: "all".into(),
        percent: 100,
        labels: BTreeMap::new(),
        gate: r.rings[1].gate.clone(),
    }];
    r.max_targets = max_targets;
    r
}

#[test]
fn max_targets_is_exact_within_a_site() {
    // Five members in one site, a limit of two: exactly two ever start.
    let mut h = site_in_a_line(5);
    publish(
        &mut h,
        0,
        0,
        vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(one_ring(10, 2))],
    );
    run(&mut h, 20_000, &|_| false);
    let started: Vec<usize> = (0..5).filter(|i| step(&h, *i, 10).is_some()).collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(started.iter().all(|i| step(&h, *i, 10) == Some(Step::Committed)));
}

#[test]
fn max_targets_across_a_partition_spends_what_was_left_on_each_side_and_no_more() {
    // Two sites of five, a limit of three, cut off from each other once the rollout reached
    // both: each side may spend the three (the documented bound), never more, and after the
    // heal nobody else starts.
    let mut h = fleet(Keys::new(), 10, &[]);
    publish(
        &mut h,
        0,
        0,
        vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(one_ring(11, 3))],
    );
    h.run_for(200);
    assert!(
        (0..10).all(|i| h.nodes[i].catalog().entries().len() >= 2),
        "the rollout reached every node"
    );
    h.sides = Some((0..10).map(|i| (i % 2) as u8).collect());
    run(&mut h, 20_000, &|_| false);
    let cut = started_per_site(&h, 11);
    assert!(cut.iter().all(|n| *n <= 3), "a side passed the limit alone: {cut:?}");
    assert!(cut.iter().all(|n| *n >= 1), "a side stood still: {cut:?}");
    h.sides = None;
    run(&mut h, 20_000, &|_| false);
    let healed = started_per_site(&h, 11);
    assert_eq!(healed, cut, "members started after the heal, over a spent limit");
}

#[test]
fn a_soaking_member_frees_its_install_slot() {
    // One install slot per site: members install one at a time, and the next starts while the
    // one before it soaks (a soak is judged by the ring's gate, not by holding the slot).
    let mut h = fleet(Keys::new(), 6, &[]);
    let mut r = rollout(8, 3_000);
    r.rings = vec![RingSpec {
        name: "all".into(),
        percent: 100,
        labels: BTreeMap::new(),
        gate: r.rings[1].gate.clone(),
    }];
    r.max_concurrent_per_site = 1;
    publish(&mut h, 0, 0, vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(r)]);
    let id = RolloutId([8; 32]);
    let mut steps: BTreeMap<usize, Step> = BTreeMap::new();
    let mut overlapped_with_a_soak = false;
    for _ in 0..300 {
        run(&mut h, 100, &|_| false);
        for (i, e) in std::mem::take(&mut h.events) {
            if let RolloutEvent::Step { rollout, step, .. } = e {
                if rollout == id {
                    steps.insert(i, step);
                }
            }
            for site in 0..2 {
                let in_site = |i: &&usize| **i % 2 == site;
                let holding = steps
                    .iter()
                    .filter(|(i, s)| in_site(i) && !s.is_terminal() && **s != Step::Soaking)
                    .count();
                let soaking =
                    steps.iter().filter(|(i, s)| in_site(i) && **s == Step::Soaking).count();
                assert!(
                    holding <= 1,
                    "site {site}: {holding} members hold an install slot at once: {steps:?}"
                );
                overlapped_with_a_soak |= holding == 1 && soaking > 0;
            }
        }
        if (0..6).all(|i| step(&h, i, 8) == Some(Step::Committed)) {
            break;
        }
    }
    assert!((0..6).all(|i| step(&h, i, 8) == Some(Step::Committed)), "{steps:?}");
    assert!(overlapped_with_a_soak, "no member installed while another soaked");
}

#[test]
fn an_empty_ring_holds_the_rollout_and_says_why() {
    // No node carries `ring=canary`: the canary ring is empty. Missing evidence never
    // promotes, so nobody installs; the verdict says the gate can never pass, not "0 of 1".
    let mut h = fleet(Keys::new(), 4, &[]);
    publish(
        &mut h,
        0,
        0,
        vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(rollout(4, 1_000))],
    );
    run(&mut h, 20_000, &|_| false);
    for i in 0..4 {
        assert_eq!(step(&h, i, 4), None, "node {i} installed past an empty canary ring");
        let v = &h.nodes[i].rollouts().verdicts()[&RolloutId([4; 32])];
        assert_eq!(v.open_rings, 1, "node {i}");
        assert!(v.waiting.contains("no node is in this ring"), "node {i}: {}", v.waiting);
    }
}

#[test]
fn large_rollouts_wait_for_k_of_n_approvals_of_exactly_their_content() {
    let keys = Keys::with_approval(mesh::Approval { threshold: 2, above_nodes: 3 });
    let mut h = fleet(keys, 4, &[0]);
    let r = rollout(3, 1_000);
    publish(&mut h, 0, 0, vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(r.clone())]);
    run(&mut h, 5_000, &|_| false);
    for i in 0..4 {
        assert_eq!(control(&h, i, 3), Some(Control::AwaitingApproval), "node {i}");
        assert_eq!(step(&h, i, 3), None);
    }
    // An approval of other content, and a command forged in the other admin's name, count for
    // nothing.
    let admin1 = h.keys.admins[1].public();
    let wrong = AdminCommand {
        rollout: r.id,
        action: CommandAction::Approve { rollout_hash: [0; 32] },
        issued_at: T0,
        admin: admin1,
    };
    publish(&mut h, 1, 1, vec![CatalogEntry::Command(wrong)]);
    let forged = AdminCommand {
        rollout: r.id,
        action: CommandAction::Approve { rollout_hash: rollout_hash(&r) },
        issued_at: T0,
        admin: admin1,
    };
    publish(&mut h, 1, 0, vec![CatalogEntry::Command(forged)]);
    run(&mut h, 3_000, &|_| false);
    assert_eq!(control(&h, 2, 3), Some(Control::AwaitingApproval));
    assert!(!h.nodes[2].policies().ignored.is_empty(), "the forged command is ignored");
    // The second admin approves this exact rollout.
    let approve = AdminCommand {
        rollout: r.id,
        action: CommandAction::Approve { rollout_hash: rollout_hash(&r) },
        issued_at: Millis(T0.0 + 1),
        admin: admin1,
    };
    publish(&mut h, 2, 1, vec![CatalogEntry::Command(approve)]);
    run(&mut h, 30_000, &|_| false);
    for i in 0..4 {
        assert_eq!(step(&h, i, 3), Some(Step::Committed), "node {i}");
    }
}

#[test]
fn conflicting_pause_and_resume_from_two_admins_in_a_partition_converge() {
    // Sides {0,2} and {1,3} (sites a and b), not connected to each other.
    let mut h = Harness::new(&["a", "b", "a", "b"]);
    h.connect(0, 2);
    h.connect(1, 3);
    h.run_for(2_000);
    let r = rollout(4, 1_000);
    publish(&mut h, 0, 0, vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(r.clone())]);
    publish(&mut h, 1, 0, vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(r.clone())]);
    h.run_for(1_000);
    let pause = AdminCommand {
        rollout: r.id,
        action: CommandAction::Pause,
        issued_at: h.now,
        admin: h.keys.admins[0].public(),
    };
    publish(&mut h, 0, 0, vec![CatalogEntry::Command(pause)]);
    h.run_for(1_000);
    let resume = AdminCommand {
        rollout: r.id,
        action: CommandAction::Resume { overrides: None },
        issued_at: h.now,
        admin: h.keys.admins[1].public(),
    };
    publish(&mut h, 1, 1, vec![CatalogEntry::Command(resume)]);
    h.run_for(2_000);
    assert_eq!(control(&h, 2, 4), Some(Control::Paused), "side a saw only the pause");
    assert_ne!(control(&h, 3, 4), Some(Control::Paused), "side b saw only the resume");
    h.connect(2, 3);
    h.run_for(10_000);
    let verdicts: Vec<Option<Control>> = (0..4).map(|i| control(&h, i, 4)).collect();
    assert!(verdicts.iter().all(|v| *v == verdicts[0]), "diverged: {verdicts:?}");
    assert_ne!(verdicts[0], Some(Control::Paused), "the later resume wins everywhere");
}

#[test]
fn an_abort_wins_over_resume_unless_the_resume_names_it() {
    let mut h = fleet(Keys::new(), 2, &[0]);
    let r = rollout(5, 1_000);
    publish(&mut h, 0, 0, vec![CatalogEntry::Patch(patch())]);
    let admin = h.keys.admins[0].public();
    let abort = AdminCommand { rollout: r.id, action: CommandAction::Abort, issued_at: T0, admin };
    let abort_key = CatalogEntry::Command(abort.clone()).key();
    let resume = AdminCommand {
        rollout: r.id,
        action: CommandAction::Resume { overrides: None },
        issued_at: Millis(T0.0 + 5),
        admin,
    };
    publish(
        &mut h,
        0,
        0,
        vec![
            CatalogEntry::Rollout(r.clone()),
            CatalogEntry::Command(abort),
            CatalogEntry::Command(resume),
        ],
    );
    run(&mut h, 3_000, &|_| false);
    assert_eq!(control(&h, 1, 5), Some(Control::Aborted));
    assert_eq!(step(&h, 0, 5), None, "nothing installs an aborted rollout");
    let lift = AdminCommand {
        rollout: r.id,
        action: CommandAction::Resume {
            overrides: Some(patchmesh_protocol::catalog::Override::Abort(abort_key)),
        },
        issued_at: Millis(T0.0 + 10),
        admin,
    };
    publish(&mut h, 1, 0, vec![CatalogEntry::Command(lift)]);
    run(&mut h, 20_000, &|_| false);
    assert_eq!(control(&h, 0, 5), Some(Control::Running));
    assert_eq!(step(&h, 0, 5), Some(Step::Committed));
}

#[test]
fn evidence_signed_by_another_node_or_not_a_failure_is_refused() {
    let mut h = fleet(Keys::new(), 3, &[0]);
    publish(
        &mut h,
        0,
        0,
        vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(rollout(6, 60_000))],
    );
    run(&mut h, 2_000, &|_| false);
    let liar = key(100);
    let victim = h.nodes[1].id();
    let ev = |node: NodeId, kind| Evidence {
        mesh: h.nodes[0].trust().mesh(),
        node,
        site: SiteId::from("b"),
        rollout: RolloutId([6; 32]),
        kind,
        at: h.now,
        detail: "made up".into(),
    };
    let admission = h.keys.admit(&liar, "a");
    // Node 0's key signs a failure in node 1's name.
    let forged = Arc::new(Bundle::new(
        Envelope::seal(Domain::Evidence, &ev(victim, EvidenceKind::InstallFailed), &[&liar]),
        admission.clone(),
    ));
    // A success report pushed as an alarm.
    let own = ev(NodeId(liar.public().0), EvidenceKind::InstallSucceeded);
    let mut own = own;
    own.site = SiteId::from("a");
    let success =
        Arc::new(Bundle::new(Envelope::seal(Domain::Evidence, &own, &[&liar]), admission));
    let before: u64 = h.nodes[2].stats().rejected.values().sum();
    for b in [forged, success] {
        h.nodes[2].handle_input(
            h.now,
            Input::Message {
                peer: PeerId(0),
                msg: Arc::new(Message::Alarms { bundles: vec![b], reply: false }),
            },
        );
    }
    h.drain_all();
    let after: u64 = h.nodes[2].stats().rejected.values().sum();
    assert_eq!(after - before, 2, "{:?}", h.nodes[2].stats().rejected);
    assert!(h.nodes[2].alarms().is_empty());
    run(&mut h, 2_000, &|_| false);
    assert!(!matches!(control(&h, 2, 6), Some(Control::Halted { .. })));
}

#[test]
fn a_restored_journal_re_runs_the_step_it_was_in() {
    let keys = Keys::new();
    let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
    let site = SiteState::new(SiteId::from("a"));
    let summaries = Summaries::default();
    let alarms = Default::default();
    let live = BTreeSet::new();
    let labels = BTreeMap::new();
    for (step, want) in [
        (Step::Fetching, Some(Action::Fetch)),
        (Step::Staging, Some(Action::Stage)),
        (Step::Installing, Some(Action::Install)),
        (Step::Verifying, Some(Action::Verify)),
        (Step::Soaking, Some(Action::Verify)),
        (Step::RollingBack, Some(Action::Rollback)),
        (Step::Committed, None),
        (Step::RolledBack, None),
    ] {
        let mut engine = Engine::default();
        engine.restore(JournalEntry {
            rollout: RolloutId([1; 32]),
            content_id: CONTENT,
            ring: 0,
            step,
            failed: false,
            failed_at: None,
            started_at: T0,
            step_at: T0,
            soak_until: None,
            checks: 0,
            detail: String::new(),
        });
        let view = View {
            me: NodeId([1; 32]),
            site_id: &SiteId::from("a"),
            labels: &labels,
            trust: &trust,
            site: &site,
            summaries: &summaries,
            alarms: &alarms,
            liveness: &Liveness::known(Live { members: live.clone(), young: Default::default() }),
            now: T0,
            hold: false,
        };
        let outs = engine.step(&Policies::default(), &view);
        let actions: Vec<Action> = outs
            .iter()
            .filter_map(|o| match o {
                patchmesh_protocol::rollout::engine::EngineOut::Effect(e) => Some(e.action),
                _ => None,
            })
            .collect();
        assert_eq!(actions, want.into_iter().collect::<Vec<_>>(), "{step:?}");
    }
}

/// A canary whose clock jumps mid-soak: three hours ahead, the skipped time does not count
/// toward its soak (the next ring does not start early anywhere); then four hours back, the
/// node does not stall until its clock catches up: its soak ends and the rollout moves on.
#[test]
fn clock_jumps_neither_cut_a_soak_short_nor_stall_the_node() {
    let mut h = fleet(Keys::new(), 4, &[0]);
    let id = 3;
    publish(
        &mut h,
        0,
        0,
        vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(rollout(id, 60_000))],
    );
    run(&mut h, 5_000, &|_| false);
    assert_eq!(step(&h, 0, id), Some(Step::Soaking), "the canary did not start soaking");

    h.skew[0] = 3 * 3_600_000;
    run(&mut h, 10_000, &|_| false);
    assert_eq!(step(&h, 0, id), Some(Step::Soaking), "three hours ahead ended the soak");
    for i in 1..4 {
        assert_eq!(step(&h, i, id), None, "node {i} started before the canary's soak ended");
    }

    h.skew[0] = -3_600_000;
    // About 45 s of soak are left, counted at half pace while the node's clock slews back.
    run(&mut h, 120_000, &|_| false);
    assert_eq!(
        step(&h, 0, id),
        Some(Step::Committed),
        "the node stalled after its clock went back"
    );
    for i in 1..4 {
        let v = h.nodes[i].rollouts().verdicts().get(&RolloutId([id; 32])).cloned();
        assert!(step(&h, i, id).is_some(), "node {i} never started after the canary's gate: {v:?}");
    }
}

/// Failure counts kept between steps and topped up with the reports merged since are the
/// counts worked out afresh, whatever order the reports came in.
#[test]
fn failures_counted_as_reports_arrive_match_a_fresh_count() {
    use patchmesh_protocol::rollout::alarms::{Alarm, Alarms};
    use patchmesh_protocol::rollout::verdict::count_failures;
    let entry = rollout(9, 1_000);
    let alarm = |node: u8, canary: bool| {
        let k = key(node);
        let evidence = Evidence {
            mesh: Default::default(),
            node: NodeId(k.public().0),
            site: SiteId::from("a"),
            rollout: entry.id,
            kind: EvidenceKind::InstallFailed,
            at: T0,
            detail: String::new(),
        };
        let env = Envelope::seal(Domain::Evidence, &evidence, &[&k]);
        let labels: BTreeMap<String, String> = if canary {
            [("ring".to_string(), "canary".to_string())].into()
        } else {
            BTreeMap::new()
        };
        Alarm { evidence, labels, bundle: Arc::new(Bundle::new(env.clone(), env)) }
    };
    let mut alarms = Alarms::default();
    let (mut kept, mut counted) = (Vec::new(), 0);
    for (i, node) in [40u8, 3, 77, 12, 5, 200, 9].into_iter().enumerate() {
        alarms.merge(alarm(node, i % 3 == 0)).expect("merged");
        if i % 2 == 0 {
            count_failures(&entry, &alarms, counted, &mut kept);
            counted = alarms.count_of(&entry.id);
        }
    }
    // A node's second report is no new failure.
    alarms.merge(alarm(3, false)).expect("a duplicate is not an error");
    count_failures(&entry, &alarms, counted, &mut kept);
    let mut fresh = Vec::new();
    count_failures(&entry, &alarms, 0, &mut fresh);
    assert_eq!(kept, fresh);
    assert_eq!(fresh.iter().sum::<u32>(), 7);
    assert_eq!(fresh[0], 3, "three canaries failed");
}
