//! Enrolment by voucher in a stepped mesh: a voucher for two admits the first two machines
//! that enrol, everywhere, and the third nowhere, whatever order they connect in.

mod common;

use common::{key, started, Harness, T0};
use patchmesh_protocol::catalog::CatalogEntry;
use patchmesh_protocol::crypto::{Domain, Envelope};
use patchmesh_protocol::enrol::ReservedLabels;
use patchmesh_protocol::enrol::{enrol, Voucher};
use patchmesh_protocol::ids::{Millis, NodeId, SiteId};
use patchmesh_protocol::node::{Command, Input, Node};

#[test]
fn a_voucher_for_two_admits_the_first_two_enrolments_everywhere_and_the_third_nowhere() {
    // Nodes 0 and 1 hold certificates; 2, 3 and 4 enrol with one voucher for two, in that
    // order of enrolment time, and connect in the reverse order.
    let mut h = Harness::new(&["a", "a", "a", "a", "a"]);
    let voucher = Voucher {
        mesh: h.keys.genesis_body.mesh_id(),
        id: [7; 16],
        site: SiteId::from("a"),
        labels: Default::default(),
        max_nodes: 2,
        issued_at: T0,
        expires_at: Millis(T0.0 + 3_600_000),
        valid_for_ms: 86_400_000,
        require_approval: false,
    };
    let voucher = Envelope::seal(Domain::Voucher, &voucher, &[&h.keys.admins[0]]);
    let mut enrolled = Vec::new();
    for i in 2..5 {
        let k = key(100 + i as u8);
        let mut c = h.keys.config(k.clone(), "a");
        c.admission = enrol(voucher.clone(), &k, Millis(T0.0 + i as u64));
        c.seed = i as u64;
        h.nodes[i] = started(Node::new(c, T0).unwrap());
        enrolled.push(NodeId(k.public().0));
    }
    for (a, b) in [(0, 4), (1, 4), (0, 3), (1, 3), (0, 2), (1, 2), (0, 1), (2, 3), (3, 4), (2, 4)] {
        h.connect(a, b);
    }
    h.run_for(30_000);
    let admitted = |h: &Harness, i: usize| -> Vec<NodeId> {
        h.nodes[i].admitted_peers().map(|(_, n, _)| n).collect()
    };
    for i in 0..5 {
        let seen = admitted(&h, i);
        assert!(!seen.contains(&enrolled[2]), "node {i} admits the third enrolment: {seen:?}");
        for e in &enrolled[..2] {
            if NodeId(h.nodes[i].id().0) != *e {
                assert!(seen.contains(e), "node {i} does not admit {e:?}");
            }
        }
    }
    // Nodes that held the third machine's record before they saw the earlier two dropped it.
    for i in 0..2 {
        let records = h.nodes[i].site().records();
        assert!(!records.contains_key(&enrolled[2]), "node {i} keeps the refused machine's record");
        assert!(records.contains_key(&enrolled[0]) && records.contains_key(&enrolled[1]));
    }
    let over: u64 = (0..4)
        .map(|i| h.nodes[i].stats().rejected.get("voucher_over_limit").copied().unwrap_or(0))
        .sum();
    assert!(over > 0, "no node counted the refusal");
}

/// Once the mesh reserves `ring=canary`, a machine that enrolled with a voucher granting it is
/// refused and dropped by every node, and a publisher whose role lacks `admit` everywhere
/// cannot lift the reservation.
#[test]
fn a_reserved_label_refuses_machines_whose_voucher_grants_it() {
    let mut h = Harness::new(&["a", "a", "a"]);
    let voucher = Voucher {
        mesh: h.keys.genesis_body.mesh_id(),
        id: [8; 16],
        site: SiteId::from("a"),
        labels: [("ring".to_string(), "canary".to_string())].into(),
        max_nodes: 5,
        issued_at: T0,
        expires_at: Millis(T0.0 + 3_600_000),
        valid_for_ms: 86_400_000,
        require_approval: false,
    };
    let voucher = Envelope::seal(Domain::Voucher, &voucher, &[&h.keys.admins[0]]);
    let k = key(120);
    let mut c = h.keys.config(k.clone(), "a");
    c.admission = enrol(voucher, &k, Millis(T0.0 + 5));
    c.seed = 9;
    h.nodes[2] = started(Node::new(c, T0).unwrap());
    let machine = NodeId(k.public().0);
    h.connect_all();
    h.run_for(10_000);
    for i in 0..2 {
        assert!(h.nodes[i].admitted_peers().any(|(_, n, _)| n == machine), "node {i}");
        assert!(h.nodes[i].site().records().contains_key(&machine), "node {i}");
    }
    let policy =
        ReservedLabels { labels: [("ring".to_string(), vec!["canary".to_string()])].into() };
    let edits = vec![(ReservedLabels::KEY.to_string(), Some(CatalogEntry::ReservedLabels(policy)))];
    h.input(0, Input::Command(Command::Publish { admin: h.keys.admins[0].clone(), edits }));
    h.run_for(10_000);
    for i in 0..2 {
        assert!(!h.nodes[i].admitted_peers().any(|(_, n, _)| n == machine), "node {i} admits it");
        assert!(!h.nodes[i].site().records().contains_key(&machine), "node {i} keeps its record");
        let refused = h.nodes[i].stats().rejected.get("voucher_reserved_label").copied();
        assert!(refused.unwrap_or(0) > 0, "node {i} counted no refusal");
    }
}

/// Revoking one machine's admission (a certificate here): every node disconnects it, drops
/// its record and refuses it when it comes back. A revocation naming another site than the
/// machine's admission does nothing.
#[test]
fn a_revoked_machine_is_disconnected_dropped_and_refused_everywhere() {
    use patchmesh_protocol::enrol::NodeRevocation;
    let mut h = Harness::new(&["a", "a", "a"]);
    h.connect_all();
    h.run_for(10_000);
    let target = NodeId(h.nodes[2].id().0);
    let revoke = |h: &mut Harness, site: &str| {
        let r = NodeRevocation {
            node: target,
            site: SiteId::from(site),
            reason: "laptop stolen".into(),
            revoked_at: Millis(T0.0 + 1),
        };
        let edits = vec![(NodeRevocation::key_of(&target), Some(CatalogEntry::NodeRevocation(r)))];
        h.input(0, Input::Command(Command::Publish { admin: h.keys.admins[0].clone(), edits }));
        h.run_for(10_000);
    };
    let admitted = |h: &Harness, i: usize| h.nodes[i].admitted_peers().any(|(_, n, _)| n == target);
    // Named with the wrong site: no effect.
    revoke(&mut h, "b");
    for i in 0..2 {
        assert!(admitted(&h, i), "node {i} dropped a machine revoked under another site");
    }
    revoke(&mut h, "a");
    for i in 0..2 {
        assert!(!admitted(&h, i), "node {i} still admits the revoked machine");
        assert!(!h.nodes[i].site().records().contains_key(&target), "node {i} keeps its record");
    }
    // It comes back: refused at the hello.
    h.connect(0, 2);
    h.run_for(5_000);
    assert!(!admitted(&h, 0));
    let refused = h.nodes[0].stats().rejected.get("node_revoked").copied().unwrap_or(0);
    assert!(refused >= 2, "node 0 counted {refused} refusals");
}

/// A certificate that expires while its node is connected ends the connection everywhere.
#[test]
fn a_certificate_expiring_mid_run_ends_its_connections() {
    let mut h = Harness::new(&["a", "a", "a"]);
    let k = key(102);
    let mut c = h.keys.config(k.clone(), "a");
    c.admission = patchmesh_protocol::mesh::admit(
        &h.keys.admins[0],
        &h.keys.genesis_body,
        NodeId(k.public().0),
        &SiteId::from("a"),
        Default::default(),
        T0,
        20_000,
    );
    c.seed = 2;
    h.nodes[2] = started(Node::new(c, T0).unwrap());
    let target = NodeId(k.public().0);
    h.connect_all();
    h.run_for(10_000);
    let admitted = |h: &Harness, i: usize| h.nodes[i].admitted_peers().any(|(_, n, _)| n == target);
    assert!(admitted(&h, 0) && admitted(&h, 1), "not admitted while valid");
    h.run_for(15_000);
    for i in 0..2 {
        assert!(!admitted(&h, i), "node {i} still admits a node whose certificate expired");
        assert!(h.nodes[i].stats().rejected.get("expired").copied().unwrap_or(0) > 0, "node {i}");
    }
}

/// A machine moved to another site: the admin revokes its admission in the old site and
/// admits it to the new one (the same key). The old site drops its record; the machine comes
/// back as a member of the new site, whose members hold its record, and the old site sees it
/// as a peer of the new site, not a member of its own.
#[test]
fn a_machine_moved_to_another_site_leaves_the_old_site_and_joins_the_new() {
    use patchmesh_protocol::enrol::NodeRevocation;
    use patchmesh_protocol::node::PeerId;
    let mut h = Harness::new(&["a", "a", "b", "b"]);
    h.connect_all();
    h.run_for(10_000);
    let mover = h.nodes[1].id();
    assert!(h.nodes[0].site().records().contains_key(&mover), "site a never held its record");
    let r = NodeRevocation {
        node: mover,
        site: SiteId::from("a"),
        reason: "moved to site b".into(),
        revoked_at: h.now,
    };
    let edits = vec![(NodeRevocation::key_of(&mover), Some(CatalogEntry::NodeRevocation(r)))];
    h.input(0, Input::Command(Command::Publish { admin: h.keys.admins[0].clone(), edits }));
    h.run_for(10_000);
    assert!(!h.nodes[0].site().records().contains_key(&mover), "site a keeps its record");
    // It starts again with a certificate for site b.
    for j in [0, 2, 3] {
        let t = h.clock(j);
        h.nodes[j].handle_input(t, Input::Disconnected { peer: PeerId(1) });
    }
    h.links.retain(|(a, b)| *a != 1 && *b != 1);
    let mut c = h.keys.config(key(101), "b");
    c.seed = 11;
    let mut moved = Node::new(c, h.now).unwrap();
    moved.handle_input(h.now, Input::Start);
    h.nodes[1] = moved;
    for j in [0, 2, 3] {
        h.connect(1, j);
    }
    h.run_for(20_000);
    let b = SiteId::from("b");
    assert!(!h.nodes[0].site().records().contains_key(&mover), "site a took its record back");
    let seen_by_a: Vec<_> = h.nodes[0].admitted_peers().filter(|(_, n, _)| *n == mover).collect();
    assert!(!seen_by_a.is_empty() && seen_by_a.iter().all(|(_, _, s)| **s == b), "{seen_by_a:?}");
    for j in [2, 3] {
        assert!(h.nodes[j].site().records().contains_key(&mover), "node {j} lacks its record");
    }
    assert_eq!(h.nodes[1].site().site(), &b);
    assert!(h.nodes[1].site().records().contains_key(&h.nodes[2].id()));
}
