//! A few nodes stepped in virtual time converge on catalog, site state and summaries, and a
//! partition heals by anti-entropy alone.

mod common;

use common::Harness;
use patchmesh_protocol::catalog::{AdminCommand, CatalogEntry, CommandAction};
use patchmesh_protocol::ids::{RolloutId, SiteId};
use patchmesh_protocol::node::{Command, Input, PeerId};
use patchmesh_protocol::wire::Message;

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
fn a_member_vouches_only_for_what_its_records_show() {
    use patchmesh_protocol::site::RolloutStatus as S;
    let mut h = Harness::new(&["a", "a"]);
    h.connect(0, 1);
    let rollout = RolloutId([1; 32]);
    for i in 0..2 {
        h.input(i, Input::Command(Command::UpdateRecord { inventory: Default::default() }));
    }
    h.run_for(5_000);
    let honest = h.nodes[0].summaries().all()[&SiteId::from("a")].summary().clone();
    let site = h.nodes[1].site();
    site.supports(&honest).unwrap();
    let lie = |f: &dyn Fn(&mut patchmesh_protocol::site::SiteSummary)| {
        let mut s = honest.clone();
        f(&mut s);
        site.supports(&s).map_err(|e| e.to_string())
    };
    // Successes that never happened, a member hidden from its ring, a rank above every later
    // summary: refused.
    let err = lie(&|s| {
        s.counts.insert((rollout, 0, S::Succeeded), 2);
    })
    .unwrap_err();
    assert!(err.contains("finished"), "{err}");
    let mut with_ring = honest.clone();
    with_ring.counts.insert((rollout, 0, S::Pending), 2);
    let err = site.supports(&with_ring).unwrap_err().to_string();
    assert!(err.contains("members in a ring"), "members the records do not show: {err}");
    assert!(lie(&|s| s.version_sum += 1).unwrap_err().contains("ahead"));
    assert!(lie(&|s| s.evidence_count += 1).unwrap_err().contains("ahead"));
    // A summary behind the records (an older version sum) is fine: its gates are only slower.
    lie(&|s| s.version_sum -= 1).unwrap();
}

#[test]
fn a_lying_member_cannot_make_other_sites_count_its_summary() {
    use patchmesh_protocol::crypto::{Domain, Envelope};
    use patchmesh_protocol::site::{Bundle, Endorsement, RolloutStatus as S};
    use patchmesh_protocol::wire::Message;
    use std::sync::Arc;
    // Site a: 0 (the liar), 1, 2 in a ring; site b: 3, 4, linked to a by 0–3 and 2–3.
    let mut h = Harness::new(&["a", "a", "a", "b", "b"]);
    for (x, y) in [(0, 1), (1, 2), (2, 0), (0, 3), (2, 3), (3, 4)] {
        h.connect(x, y);
    }
    h.run_for(10_000);
    let a = SiteId::from("a");
    let held = h.nodes[3].summaries().all()[&a].clone();
    assert!(held.endorsed(), "site a's summary reached site b endorsed");
    assert_ne!(held.bundle.endorser(), Some(held.summary().author));

    // The liar signs a summary of its site claiming three successes in a rollout's canary ring
    // and a version sum no honest summary will ever reach.
    let liar = h.nodes[0].id();
    let admission = h.nodes[1].site().records()[&liar].bundle.admission().clone();
    let mut lie = held.summary().clone();
    lie.author = liar;
    lie.version_sum = u64::MAX / 2;
    lie.counts.insert((RolloutId([9; 32]), 0, S::Succeeded), 3);
    let lie_env = Envelope::seal(Domain::SiteSummary, &lie, &[&common::key(100)]);
    let lie_bundle = Arc::new(Bundle::new(lie_env.clone(), admission.clone()));

    // 1. Straight to another site: refused as unendorsed, the sender penalised.
    h.queue.push_back((0, 3, Arc::new(Message::Summaries(vec![lie_bundle.clone()]))));
    h.settle();
    assert_eq!(h.nodes[3].stats().rejected.get("unendorsed_summary"), Some(&1));
    assert!(h.penalized.contains(&(3, PeerId(0))), "{:?}", h.penalized);

    // 2. Endorsed by itself: refused.
    let own = Endorsement {
        mesh: lie.mesh,
        site: a.clone(),
        endorser: liar,
        summary: lie_env.clone(),
        admission: admission.clone(),
    };
    let own = Bundle::new(
        Envelope::seal(Domain::SummaryEndorsement, &own, &[&common::key(100)]),
        admission.clone(),
    );
    h.queue.push_back((0, 3, Arc::new(Message::Summaries(vec![Arc::new(own)]))));
    h.settle();
    assert_eq!(h.nodes[3].stats().rejected.get("bad_site_object"), Some(&1));

    // 3. Proposed to its own site's members: they hold it, and none endorses it.
    for to in [1, 2] {
        h.queue.push_back((0, to, Arc::new(Message::SiteObjects(vec![lie_bundle.clone()]))));
    }
    h.run_for(15_000);
    for i in 0..5 {
        let s = h.nodes[i].summaries().all()[&a].summary();
        assert!(s.version_sum < u64::MAX / 2, "node {i} holds the lie");
        assert!(!s.counts.contains_key(&(RolloutId([9; 32]), 0, S::Succeeded)));
    }

    // Site a keeps summarising truthfully: a change other sites read (node 1's exposure) is
    // endorsed and reaches site b.
    let before = h.nodes[3].summaries().all()[&a].rank();
    let exposure = patchmesh_protocol::intel::report::ExposureSummary {
        bundle: patchmesh_protocol::ids::ContentId([4; 32]),
        bundle_created_at: common::T0,
        counts: Default::default(),
        kev: 1,
        excepted: 0,
        severity: Default::default(),
        top: Vec::new(),
        findings_digest: [0; 32],
    };
    h.input(1, Input::Command(Command::SetExposure(Some(exposure))));
    h.run_for(15_000);
    let after = &h.nodes[3].summaries().all()[&a];
    assert!(after.endorsed() && after.rank() > before, "site a's next summary did not arrive");
    h.nodes[1].site().check_summary(after.summary()).unwrap();
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

#[test]
fn a_node_handed_back_its_own_current_record_does_not_sign_again() {
    // Repair exchanges cross: a peer that has just taken this node's newest record can still
    // answer a key list sent before it did, and send the record back. That copy is no sign of
    // an earlier life; signing again would put the new version in the same race, forever.
    let mut h = Harness::new(&["a", "a"]);
    h.connect(0, 1);
    h.run_for(2_000);
    let id0 = h.nodes[0].id();
    let version = h.nodes[0].site().record_version(&id0).unwrap();
    assert_eq!(h.nodes[1].site().record_version(&id0), Some(version));
    // Off the wire, as repair sends it: decoded, not yet verified.
    let held = h.nodes[1].site().records()[&id0].bundle.clone();
    let bytes = Message::SiteObjects(vec![held]).to_bytes();
    for _ in 0..3 {
        h.input(0, Input::Bytes { peer: PeerId(1), bytes: bytes.clone() });
        h.run_for(1_000);
    }
    assert_eq!(h.nodes[0].site().record_version(&id0), Some(version), "node 0 signed again");
    assert_eq!(h.nodes[1].site().record_version(&id0), Some(version));
}

#[test]
fn records_re_signed_with_nothing_new_for_other_sites_publish_no_summary() {
    let mut h = Harness::new(&["a", "a", "b"]);
    for (x, y) in [(0, 1), (1, 2)] {
        h.connect(x, y);
    }
    h.run_for(10_000);
    let a = SiteId::from("a");
    let before = h.nodes[2].summaries().all()[&a].rank();
    // An inventory change (or an audit checkpoint) re-signs node 0's record: site a's records
    // root and version sum move, what other sites read does not.
    let inventory =
        patchmesh_protocol::site::InventorySummary { package_count: 5, ..Default::default() };
    h.input(0, Input::Command(Command::UpdateRecord { inventory }));
    h.run_for(20_000);
    assert_eq!(h.nodes[2].summaries().all()[&a].rank(), before, "a summary with nothing new");
    assert!(h.nodes[1].site().records()[&h.nodes[0].id()].record().inventory.package_count == 5);
}

#[test]
fn nodes_restoring_one_store_share_what_it_verified_and_nothing_else() {
    use patchmesh_protocol::node::{Node, Persist, RestoreMemo};
    use std::sync::Arc;
    let mut h = Harness::new(&["a", "a", "b", "b"]);
    h.connect_all();
    h.run_for(15_000);
    // Node 1's store: its site's records and every site's summary.
    let mut store: Vec<Persist> = h.nodes[1]
        .site()
        .records()
        .values()
        .map(|held| Persist::SiteObject(held.bundle.clone()))
        .collect();
    store.extend(h.nodes[1].summaries().all().values().map(|s| Persist::Summary(s.bundle.clone())));
    assert_eq!(store.len(), 4, "two records of site a and two summaries: {}", store.len());
    let node = |n: u8, site: &str, now| {
        let mut config = h.keys.config(common::key(n), site);
        config.seed = u64::from(n);
        Node::new(config, now).unwrap()
    };
    let memo = RestoreMemo::default();
    let mut first = node(101, "a", h.now);
    assert_eq!(first.restore_shared(&store, Some(&memo)), 0);
    assert_eq!(memo.hits(), 0, "the first restore verifies everything itself");
    let mut second = node(102, "a", h.now);
    assert_eq!(second.restore_shared(&store, Some(&memo)), 0);
    assert_eq!(memo.hits(), 1, "the second restore of the same store shares it");
    let mut alone = node(103, "a", h.now);
    assert_eq!(alone.restore(&store), 0);
    assert_eq!(second.state_hash(), alone.state_hash());
    assert_eq!(second.state_hash(), first.state_hash());
    assert_eq!(second.summaries().all().len(), 2);
    assert_eq!(second.summaries().ranks(), alone.summaries().ranks());
    assert_eq!(second.site().records().len(), 2);

    // Another site, or the same objects in other bundles, share nothing.
    let mut other_site = node(104, "b", h.now);
    assert_eq!(other_site.restore_shared(&store, Some(&memo)), 0);
    assert!(other_site.site().records().is_empty(), "site a's records are not site b's");
    let copied: Vec<Persist> = store
        .iter()
        .map(|p| match p {
            Persist::SiteObject(b) => Persist::SiteObject(Arc::new((**b).clone())),
            Persist::Summary(b) => Persist::Summary(Arc::new((**b).clone())),
            other => other.clone(),
        })
        .collect();
    let mut from_copies = node(105, "a", h.now);
    assert_eq!(from_copies.restore_shared(&copied, Some(&memo)), 0);
    assert_eq!(memo.hits(), 1, "other bundles are verified, not taken on trust");
    assert_eq!(from_copies.state_hash(), alone.state_hash());

    // A node whose clock is past the certificates the store rests on verifies for itself and
    // refuses them, though the memo holds the verdict of a node whose clock was before.
    let later = patchmesh_protocol::ids::Millis(common::T0.0 + 366 * common::DAY_MS);
    let key = common::key(106);
    let mut config = h.keys.config(key.clone(), "a");
    config.admission = patchmesh_protocol::mesh::admit(
        &h.keys.admins[0],
        &h.keys.genesis_body,
        patchmesh_protocol::ids::NodeId(key.public().0),
        &SiteId::from("a"),
        Default::default(),
        common::T0,
        400 * common::DAY_MS,
    );
    let mut late = Node::new(config, later).unwrap();
    assert_eq!(late.restore_shared(&store, Some(&memo)), 4, "every object's certificate expired");
    assert_eq!(memo.hits(), 1);
    assert!(late.site().records().is_empty());
}

#[test]
fn a_summary_exchange_answers_alike_whether_the_peer_lists_its_sites_in_order_or_not() {
    let mut h = Harness::new(&["a", "a", "b", "b", "c"]);
    h.connect_all();
    h.run_for(15_000);
    let table = h.nodes[0].summaries();
    let ours = table.ranks();
    assert_eq!(ours.len(), 3, "one summary per site");
    let ids = |bundles: Vec<std::sync::Arc<patchmesh_protocol::site::Bundle>>| {
        bundles.iter().map(|b| b.id()).collect::<Vec<_>>()
    };
    // A peer holding the same: nothing to send, in either order.
    let mut reversed = ours.clone();
    reversed.reverse();
    assert!(table.newer_than(&ours, 10).is_empty());
    assert!(table.newer_than(&reversed, 10).is_empty());
    // A peer lacking the middle site and holding nothing newer: that site's summary alone.
    let lacking: Vec<_> =
        ours.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, r)| r.clone()).collect();
    let middle = table.all()[&ours[1].0].bundle.id();
    assert_eq!(ids(table.newer_than(&lacking, 10)), vec![middle]);
    let mut lacking_reversed = lacking.clone();
    lacking_reversed.reverse();
    assert_eq!(ids(table.newer_than(&lacking_reversed, 10)), vec![middle]);
    // A peer listing a site twice (out of order by definition) is answered as by a table.
    let mut doubled = lacking.clone();
    doubled.push(lacking[0].clone());
    assert_eq!(ids(table.newer_than(&doubled, 10)), vec![middle]);
    // Nothing held by the peer: everything, at most `max`.
    assert_eq!(table.newer_than(&[], 10).len(), 3);
    assert_eq!(table.newer_than(&[], 2).len(), 2);
}

#[test]
fn a_peer_that_begins_a_new_session_is_answered_and_both_ends_keep_talking() {
    // Two nodes, connected and admitted both ways.
    let mut h = Harness::new(&["a", "b"]);
    h.connect(0, 1);
    h.run_for(3_000);
    let admitted = |h: &Harness, i: usize| h.nodes[i].admitted_peers().count();
    assert_eq!((admitted(&h, 0), admitted(&h, 1)), (1, 1));

    // Node 1 lost its last connection to node 0 and got a new one a moment later (a restart,
    // or a relayed connection closed before the direct one came up on its side); node 0 never
    // saw a gap. Node 1 says hello again; node 0 must answer, or node 1 would hold node 0
    // unadmitted and drop it for the next thing it sends.
    h.input(1, Input::Disconnected { peer: PeerId(0) });
    assert_eq!(admitted(&h, 1), 0);
    let id0 = h.nodes[0].id();
    h.input(1, Input::Connected { peer: PeerId(0), node: id0 });
    h.run_for(10_000);
    assert_eq!((admitted(&h, 0), admitted(&h, 1)), (1, 1));
    assert!(h.disconnected.is_empty(), "a peer was dropped: {:?}", h.disconnected);
    let hellos = h.sent.iter().filter(|(_, _, m)| matches!(**m, Message::Hello { .. })).count();
    assert_eq!(hellos, 4, "two at connect, node 1's new one and node 0's answer (no echo)");

    // And they still converge: a change published at node 1 reaches node 0.
    let admin = h.keys.admins[0].clone();
    h.input(
        1,
        Input::Command(Command::Publish { admin: admin.clone(), edits: vec![command(1, &admin)] }),
    );
    h.settle();
    assert_eq!(h.nodes[0].catalog().state_hash(), h.nodes[1].catalog().state_hash());
    assert_eq!(h.nodes[0].catalog().entries().len(), 1);
}
