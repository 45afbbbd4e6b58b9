//! Eclipse: every link of one site to the rest of the mesh goes to attackers. The site must
//! not go on as if nothing happened: it learns of a halt through its own members' other links,
//! or it reports that it is behind or cut off, and starts no new install meanwhile.

mod common;

use common::{control, key, patch, publish, run, step, Harness, Keys, T0};
use patchmesh_protocol::catalog::{CatalogEntry, RolloutEntry};
use patchmesh_protocol::ids::{NodeId, RolloutId, SiteId};
use patchmesh_protocol::node::{Input, Node, Reach};
use patchmesh_protocol::rollout::{Action, Control, EffectResult, Step};
use patchmesh_protocol::wire::Message;

/// Six nodes over sites a, b, v (node i in site `i % 3`: v holds nodes 2 and 5), fully
/// connected; nodes in `canaries` carry `ring=canary`. Run until every site knows the others.
fn mesh(canaries: &[usize]) -> Harness {
    let sites: Vec<&str> = (0..6).map(|i| ["a", "b", "v"][i % 3]).collect();
    let mut h = common::labelled(Keys::new(), &sites, canaries);
    h.run_for(3_000);
    for n in &h.nodes {
        assert_eq!(n.summaries().all().len(), 3, "every site knows the others before the attack");
    }
    h
}

/// Cuts site v off; `beacons` says whether the attackers forward beacons (and nothing else).
fn eclipse(h: &mut Harness, beacons: bool) {
    h.sides = Some(vec![0, 0, 1, 0, 0, 1]);
    h.passes = if beacons { |m| matches!(m, Message::Beacon(_)) } else { |_| false };
}

fn heal(h: &mut Harness) {
    h.sides = None;
}

/// Canary in a and v; the gate passes on half the canaries succeeding and halts on any failure.
fn rollout() -> RolloutEntry {
    let mut r = common::rollout(1, 15_000);
    for ring in &mut r.rings {
        ring.gate.min_success_permille = 500;
    }
    r
}

#[test]
fn an_eclipse_that_forwards_only_beacons_leaves_the_site_behind_and_it_starts_nothing_new() {
    let mut h = mesh(&[0, 2]);
    publish(&mut h, 1, 0, vec![CatalogEntry::Patch(patch()), CatalogEntry::Rollout(rollout())]);
    // Canary 0 (site a) is slow to verify: every site summarises the rollout with it still
    // installing, and canary 2 (site v) succeeds.
    let mut slow = Vec::new();
    let end = h.now.plus(5_000);
    while h.now < end {
        h.run_for(100);
        for (i, e) in std::mem::take(&mut h.effects) {
            if i == 0 && e.action == Action::Verify {
                slow.push(e);
                continue;
            }
            let done = EffectResult { id: e.id, ok: true, detail: String::new() };
            h.input(i, Input::EffectDone(done));
        }
    }
    let canary = |n: &Node| n.rollouts().verdicts()[&RolloutId([1; 32])].rings[0].clone();
    assert_eq!((canary(&h.nodes[5]).installing, canary(&h.nodes[5]).unsummarised_sites), (1, 0));
    // From now on site v hears only what the attackers forward: beacons. Canary 0 fails; on
    // v's own view (one canary succeeded, one still installing) the gate passes after the soak.
    eclipse(&mut h, true);
    for e in slow {
        h.input(0, Input::EffectDone(EffectResult { id: e.id, ok: false, detail: "bad".into() }));
    }
    run(&mut h, 45_000, &|i| i == 0);
    for i in [0, 1, 3, 4] {
        assert!(matches!(control(&h, i, 1), Some(Control::Halted { .. })), "node {i} halted");
    }
    assert_eq!(step(&h, 2, 1), Some(Step::Committed), "v's canary ran and passed its soak");
    for i in [2, 5] {
        assert_eq!(control(&h, i, 1), Some(Control::Running), "node {i} never heard the halt");
        let r = h.nodes[i].reach().clone();
        let Reach::Behind { sites, theirs, ours, .. } = &r else { panic!("node {i}: {r:?}") };
        assert_eq!(sites, &[SiteId::from("a"), SiteId::from("b")], "node {i}");
        assert!(theirs.alarms > ours.alarms, "node {i}: {r}");
        assert!(r.holds_installs());
    }
    assert_eq!(step(&h, 5, 1), None, "v's next ring never started while behind");
    // The attackers go: the halt arrives, v is in touch again, and node 5 never installs.
    heal(&mut h);
    run(&mut h, 10_000, &|i| i == 0);
    for i in [2, 5] {
        assert!(matches!(control(&h, i, 1), Some(Control::Halted { .. })), "node {i} halted");
        assert!(!h.nodes[i].reach().holds_installs(), "node {i}: {}", h.nodes[i].reach());
    }
    assert_eq!(step(&h, 5, 1), None);
}

#[test]
fn a_site_that_hears_nothing_reports_it_is_cut_off_until_it_hears_again() {
    let mut h = mesh(&[]);
    // The listening window: 48 summary intervals (96 s here).
    h.run_for(100_000);
    for (i, n) in h.nodes.iter().enumerate() {
        assert!(
            matches!(n.reach(), Reach::InTouch { heard: 2, sites: 2 }),
            "node {i}: {:?}",
            n.reach()
        );
    }
    eclipse(&mut h, false);
    h.run_for(110_000);
    for i in [2, 5] {
        let r = h.nodes[i].reach();
        assert!(matches!(r, Reach::CutOff { heard: 0, sites: 2, .. }), "node {i}: {r:?}");
        assert!(r.to_string().contains("no new install starts here"), "{r}");
    }
    for i in [0, 1, 3, 4] {
        assert!(matches!(h.nodes[i].reach(), Reach::InTouch { heard: 1, .. }), "node {i}");
    }
    heal(&mut h);
    h.run_for(20_000);
    for (i, n) in h.nodes.iter().enumerate() {
        assert!(matches!(n.reach(), Reach::InTouch { .. }), "node {i}: {:?}", n.reach());
    }
}

#[test]
fn a_forged_or_foreign_beacon_is_refused_and_not_relayed() {
    use patchmesh_protocol::crypto::{Domain, Envelope};
    use patchmesh_protocol::ids::Millis;
    use patchmesh_protocol::site::{Beacon, Bundle};
    use std::sync::Arc;
    let mut h = mesh(&[]);
    let honest = h.nodes[0].id();
    // Node 1 (site b) signs a beacon claiming to be site a's, and one naming node 0.
    let k1 = key(101);
    let cert1 = h.keys.config(k1.clone(), "b").admission;
    let lie = |site: &str, node: NodeId| Beacon {
        mesh: h.keys.genesis_body.mesh_id(),
        site: SiteId::from(site),
        node,
        at: Millis(T0.0 + 6_000),
        catalog_changes: 99,
        alarms: 99,
        trust_version: 1,
    };
    for b in [lie("a", NodeId(k1.public().0)), lie("b", honest)] {
        let bundle =
            Arc::new(Bundle::new(Envelope::seal(Domain::Beacon, &b, &[&k1]), cert1.clone()));
        h.sent.clear();
        let before = h.nodes[3].stats().rejected.values().sum::<u64>();
        h.nodes[3].handle_input(
            h.now,
            patchmesh_protocol::node::Input::Message {
                peer: patchmesh_protocol::node::PeerId(1),
                msg: Arc::new(Message::Beacon(bundle)),
            },
        );
        h.drain(3);
        assert_eq!(h.nodes[3].stats().rejected.values().sum::<u64>(), before + 1);
        assert!(h.penalized.iter().any(|(i, p)| *i == 3 && p.0 == 1), "the sender is penalised");
        assert!(!h.sent.iter().any(|(_, _, m)| matches!(**m, Message::Beacon(_))), "not relayed");
    }
}
