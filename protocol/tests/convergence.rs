//! A few nodes stepped in virtual time converge on catalog, site state and summaries, and a
//! partition heals by anti-entropy alone.

mod common;

use common::Harness;
use patchmesh_protocol::catalog::{AdminCommand, CatalogEntry, CommandAction};
use patchmesh_protocol::ids::{RolloutId, SiteId};
use patchmesh_protocol::node::{Command, Input};

fn command(n: u8, admin: &patchmesh_protocol::crypto::SecretKey) -> (String, Option<CatalogEntry>) {
    let c = CatalogEntry::Command(AdminCommand {
        rollout: RolloutId([n; 32]),
        action: CommandAction::Pause,
        issued_at: common::T0,
        admin: admin.public(),
    });
    (c.key(), Some(c))
}

#[test]
fn publish_reaches_every_node_and_sites_agree() {
    // Two sites; site a: 0,1,2 ; site b: 3,4. Links: a ring in a, one WAN link 2–3, 3–4.
    let mut h = Harness::new(&["a", "a", "a", "b", "b"]);
    for (x, y) in [(0, 1), (1, 2), (2, 0), (2, 3), (3, 4)] {
        h.connect(x, y);
    }
    h.run_for(10_000);
    let admin = h.keys.admins[0].clone();
    h.input(
        4,
        Input::Command(Command::Publish { admin: admin.clone(), edits: vec![command(1, &admin)] }),
    );
    h.settle();
    let cat: Vec<_> = h.nodes.iter().map(|n| n.catalog().state_hash()).collect();
    assert!(cat.windows(2).all(|w| w[0] == w[1]), "catalog diverged: {cat:?}");
    assert_eq!(h.nodes[0].catalog().entries().len(), 1);

    let hashes = h.state_hashes();
    assert_eq!(hashes[0], hashes[1]);
    assert_eq!(hashes[1], hashes[2]);
    assert_eq!(hashes[3], hashes[4]);
    assert_ne!(hashes[0], hashes[3], "different sites hold different site state");
    // Each node holds its own site's records only, and a summary of every site.
    assert_eq!(h.nodes[0].site().records().len(), 3);
    assert_eq!(h.nodes[4].site().records().len(), 2);
    for n in &h.nodes {
        let sites: Vec<&SiteId> = n.summaries().all().keys().collect();
        assert_eq!(
            sites,
            vec![&SiteId::from("a"), &SiteId::from("b")],
            "summaries at {:?}",
            n.id()
        );
    }
    // The summary node 0 holds for site b checks out against node 3's records.
    let b = h.nodes[0].summaries().all()[&SiteId::from("b")].summary();
    h.nodes[3].site().check_summary(b).unwrap();
}

#[test]
fn lying_summary_is_detected() {
    let mut h = Harness::new(&["a", "a"]);
    h.connect(0, 1);
    h.run_for(5_000);
    let mut s = h.nodes[0].summaries().all()[&SiteId::from("a")].summary().clone();
    h.nodes[1].site().check_summary(&s).unwrap();
    s.record_count += 1;
    assert!(h.nodes[1].site().check_summary(&s).is_err());
    let mut s2 = h.nodes[0].summaries().all()[&SiteId::from("a")].summary().clone();
    s2.counts
        .insert((RolloutId([1; 32]), 0, patchmesh_protocol::site::RolloutStatus::Succeeded), 2);
    assert!(h.nodes[1].site().check_summary(&s2).is_err());
}

#[test]
fn partition_heals_by_anti_entropy() {
    let mut h = Harness::new(&["a", "a", "b", "b"]);
    for (x, y) in [(0, 1), (1, 2), (2, 3)] {
        h.connect(x, y);
    }
    h.run_for(5_000);
    // Partition: every message is lost while two admins publish on both sides.
    h.cut = true;
    let (a0, a1) = (h.keys.admins[0].clone(), h.keys.admins[1].clone());
    h.input(
        0,
        Input::Command(Command::Publish { admin: a0.clone(), edits: vec![command(2, &a0)] }),
    );
    h.input(
        3,
        Input::Command(Command::Publish { admin: a1.clone(), edits: vec![command(3, &a1)] }),
    );
    h.run_for(3_000);
    assert_ne!(h.nodes[0].catalog().state_hash(), h.nodes[3].catalog().state_hash());
    h.cut = false;
    h.run_for(20_000);
    let cat: Vec<_> = h.nodes.iter().map(|n| n.catalog().state_hash()).collect();
    assert!(cat.windows(2).all(|w| w[0] == w[1]), "not healed: {cat:?}");
    assert_eq!(h.nodes[1].catalog().entries().len(), 2);
}

#[test]
fn restart_restores_verified_state() {
    let mut h = Harness::new(&["a", "a"]);
    h.connect(0, 1);
    let admin = h.keys.admins[0].clone();
    h.input(
        0,
        Input::Command(Command::Publish { admin: admin.clone(), edits: vec![command(4, &admin)] }),
    );
    h.run_for(5_000);
    // Collect node 1's persisted objects by replaying its outputs into a fresh node.
    let mut persisted = Vec::new();
    for env in h.nodes[1].catalog().envelopes() {
        persisted.push(patchmesh_protocol::node::Persist::CatalogChange(env.clone()));
    }
    for held in h.nodes[1].site().records().values() {
        persisted.push(patchmesh_protocol::node::Persist::SiteObject(held.bundle.clone()));
    }
    persisted.push(patchmesh_protocol::node::Persist::RecordVersionFloor(1));
    let before = h.nodes[1].state_hash();
    let mut config = h.keys.config(common::key(101), "a");
    config.seed = 1;
    let mut fresh = patchmesh_protocol::node::Node::new(config, h.now).unwrap();
    assert_eq!(fresh.restore(&persisted), 0);
    assert_eq!(fresh.catalog().state_hash(), h.nodes[1].catalog().state_hash());
    fresh.handle_input(h.now, Input::Start);
    assert_eq!(fresh.site().record_version(&fresh.id()), Some(1));
    assert_eq!(fresh.state_hash(), before);
    // A tampered store entry is refused on load, not trusted.
    let mut bad = h.nodes[1].catalog().envelopes().next().unwrap().clone();
    bad.signatures[0].signature.0[0] ^= 1;
    let mut config = h.keys.config(common::key(101), "a");
    config.seed = 1;
    let mut other = patchmesh_protocol::node::Node::new(config, h.now).unwrap();
    assert_eq!(other.restore(&[patchmesh_protocol::node::Persist::CatalogChange(bad)]), 1);
    assert!(other.catalog().is_empty());
}

#[test]
fn a_node_whose_store_lost_its_floor_signs_above_the_record_its_peers_hold() {
    let mut h = Harness::new(&["a", "a"]);
    h.connect(0, 1);
    h.run_for(2_000);
    for n in 1..=4u32 {
        let inventory =
            patchmesh_protocol::site::InventorySummary { package_count: n, ..Default::default() };
        h.input(0, Input::Command(Command::UpdateRecord { inventory }));
        h.run_for(500);
    }
    let id0 = h.nodes[0].id();
    let held = h.nodes[1].site().record_version(&id0).unwrap();
    assert!(held >= 5, "node 1 holds node 0's record v{held}");

    // Node 0 comes back with an empty store: floor 0, as after a lost or corrupted store.
    let mut config = h.keys.config(common::key(100), "a");
    config.seed = 9;
    h.nodes[0] = common::started(patchmesh_protocol::node::Node::new(config, h.now).unwrap());
    h.links.clear();
    h.connect(0, 1);
    h.run_for(5_000);
    let mine = h.nodes[0].site().record_version(&id0).unwrap();
    let theirs = h.nodes[1].site().record_version(&id0).unwrap();
    assert!(mine > held, "node 0 signed v{mine}, not above v{held} it had signed before");
    assert_eq!(mine, theirs, "node 1 took node 0's new record");
    assert_eq!(
        h.nodes[0].site().records()[&id0].body_hash(),
        h.nodes[1].site().records()[&id0].body_hash(),
        "both hold the same record"
    );
}
