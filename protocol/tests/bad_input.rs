//! Every kind of bad input is refused with a typed error, counted, never stored or relayed.

mod common;

use common::{key, Harness, Keys, T0};
use patchmesh_protocol::catalog::{
    Catalog, CatalogEntry, CatalogError, ChangeBody, ExecutorSpec, PatchEntry,
};
use patchmesh_protocol::crypto::{Domain, Ed25519, Envelope, SignatureError};
use patchmesh_protocol::ids::{ContentId, Millis, ObjectId};
use patchmesh_protocol::limits;
use patchmesh_protocol::mesh;
use patchmesh_protocol::node::{Command, Input, PeerId};
use patchmesh_protocol::trust::{Revocation, Trust, TrustError};
use patchmesh_protocol::wire::Message;
use std::collections::BTreeMap;
use std::sync::Arc;

fn patch(n: u8) -> CatalogEntry {
    CatalogEntry::Patch(PatchEntry {
        content_id: ContentId([n; 32]),
        size_bytes: 1000 + u64::from(n),
        name: format!("patch-{n}"),
        version: "1.0".into(),
        executor: ExecutorSpec {
            kind: "file".into(),
            install: Some("/opt/x".into()),
            verify: None,
            rollback: None,
            timeout_ms: 1000,
        },
    })
}

/// A change authored on a scratch catalog by `signer` (which may not be an admin).
fn change_signed_by(
    keys: &Keys,
    signer: &patchmesh_protocol::crypto::SecretKey,
    n: u8,
) -> Envelope {
    let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
    let mut scratch = Catalog::new(trust.mesh());
    // Author as a real admin, then re-sign the same change bytes with `signer`.
    let env = scratch
        .author(&keys.admins[0], [1; 8], T0, &trust, &[(patch(n).key(), Some(patch(n)))])
        .unwrap();
    let body: ChangeBody = env.open("c").unwrap();
    Envelope::seal(Domain::CatalogChange, &body, &[signer])
}

/// Three nodes in a line: 0 – 1 – 2. Node 0 is the attacker's entry point into node 1.
fn line() -> Harness {
    let mut h = Harness::new(&["a", "a", "a"]);
    h.connect(0, 1);
    h.connect(1, 2);
    h.run_for(3000);
    h.sent.clear();
    h.penalized.clear();
    h
}

/// Delivers `msg` from node 0 to node 1 and checks it was refused as `kind`, penalised, and
/// that node 1 relayed nothing to node 2.
fn assert_refused(h: &mut Harness, msg: Message, kind: &str) {
    let before = h.nodes[1].stats().rejected.get(kind).copied().unwrap_or(0);
    let state_before = h.nodes[1].state_hash();
    h.queue.push_back((0, 1, Arc::new(msg)));
    h.settle();
    let after = h.nodes[1].stats().rejected.get(kind).copied().unwrap_or(0);
    assert_eq!(after, before + 1, "expected one {kind} rejection, stats {:?}", h.nodes[1].stats());
    assert_eq!(h.nodes[1].state_hash(), state_before, "refused object changed state");
    assert!(
        !h.sent.iter().any(|(from, to, _)| *from == 1 && *to == 2),
        "node 1 relayed something after a refused object"
    );
}

#[test]
fn forged_signature_is_refused() {
    let mut h = line();
    let mut env = change_signed_by(&h.keys, &h.keys.admins[0], 1);
    env.signatures[0].signature.0[5] ^= 0x40;
    let id = env.id();
    assert_refused(&mut h, Message::CatalogChange(Arc::new(env)), "bad_signature");
    assert!(!h.nodes[1].catalog_change_ids().contains(&id));
    assert!(h.penalized.contains(&(1, PeerId(0))));
}

#[test]
fn signature_for_another_domain_is_refused() {
    let mut h = line();
    let good = change_signed_by(&h.keys, &h.keys.admins[0], 2);
    // The same body signed under the admission domain, relabelled as a catalog change.
    let sig = h.keys.admins[0].sign(Domain::Admission, &good.body);
    let relabelled =
        Envelope { domain: Domain::CatalogChange, body: good.body.clone(), signatures: vec![sig] };
    assert_refused(&mut h, Message::CatalogChange(Arc::new(relabelled)), "bad_signature");
    // And an envelope that says what it is, but is the wrong kind for the message.
    let wrong = Envelope { domain: Domain::Admission, ..good };
    assert_refused(&mut h, Message::CatalogChange(Arc::new(wrong)), "wrong_domain");
}

#[test]
fn unknown_key_is_refused() {
    let mut h = line();
    let stranger = key(77);
    let env = change_signed_by(&h.keys, &stranger, 3);
    assert_refused(&mut h, Message::CatalogChange(Arc::new(env)), "unknown_key");
}

#[test]
fn actor_not_bound_to_signer_is_refused() {
    let keys = Keys::new();
    let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
    // admin 1 re-signs a change whose actor is admin 0's.
    let env = change_signed_by(&keys, &keys.admins[1], 4);
    let catalog = Catalog::new(trust.mesh());
    let err = catalog.verify(&env, &trust, &Ed25519).unwrap_err();
    assert_eq!(err, CatalogError::ActorMismatch(keys.admins[1].public()));
}

#[test]
fn admin_set_below_threshold_and_duplicate_signer_are_refused() {
    let mut h = line();
    let current = h.nodes[1].trust().admins().clone();
    let one = mesh::next_admin_set(
        &current,
        vec![h.keys.admins[0].public()],
        vec![],
        &[&h.keys.roots[0]],
    );
    assert_refused(&mut h, Message::AdminSets(vec![one]), "below_threshold");
    let mut twice = mesh::next_admin_set(
        &current,
        vec![h.keys.admins[0].public()],
        vec![],
        &[&h.keys.roots[0]],
    );
    let dup = twice.signatures[0];
    twice.signatures.push(dup);
    assert_refused(&mut h, Message::AdminSets(vec![twice.clone()]), "duplicate_signer");
    let trust = h.nodes[1].trust();
    assert_eq!(
        trust.check_admin_set(&twice, &Ed25519).unwrap_err(),
        TrustError::Signature(SignatureError::Duplicate(h.keys.roots[0].public()))
    );
    assert_eq!(trust.version(), 1);
}

#[test]
fn revoked_admin_and_replayed_admin_set_are_refused() {
    let mut h = line();
    let (r0, r2) = (h.keys.roots[0].clone(), h.keys.roots[2].clone());
    let roots = [&r0, &r2];
    let v1 = h.nodes[1].trust().admins().clone();
    // v2 revokes admin 1, keeping none of its history.
    let v2 = mesh::next_admin_set(
        &v1,
        vec![h.keys.admins[0].public()],
        vec![Revocation { key: h.keys.admins[1].public(), kept_seq: BTreeMap::new() }],
        &roots,
    );
    h.input(1, Input::Command(Command::AdminSet(v2.clone())));
    h.settle();
    assert!(h.nodes.iter().all(|n| n.trust().version() == 2), "admin set v2 did not spread");
    h.sent.clear();

    // A change by the revoked admin (its own actor, valid signature).
    let trust = Trust::new(h.keys.genesis.clone(), &Ed25519).unwrap();
    let mut scratch = Catalog::new(trust.mesh());
    let env = scratch
        .author(&h.keys.admins[1], [2; 8], T0, &trust, &[(patch(5).key(), Some(patch(5)))])
        .unwrap();
    assert_refused(&mut h, Message::CatalogChange(Arc::new(env)), "revoked");

    // v3, then a replay of a different v2.
    let v2_set = h.nodes[1].trust().admins().clone();
    let v3 = mesh::next_admin_set(&v2_set, vec![h.keys.admins[0].public()], vec![], &roots);
    h.input(1, Input::Command(Command::AdminSet(v3)));
    h.settle();
    h.sent.clear();
    let other_v2 = mesh::next_admin_set(&v1, vec![h.keys.admins[1].public()], vec![], &roots);
    assert_refused(&mut h, Message::AdminSets(vec![other_v2]), "replay");
    assert_eq!(h.nodes[1].trust().version(), 3);
}

#[test]
fn a_revocation_ends_with_the_same_catalog_whatever_the_arrival_order() {
    // Two nodes that never talk: node 0 applies admin 1's change and then hears of admin 1's
    // revocation; node 1 hears of the revocation first and then gets the change. Admin 0 made
    // a later change on a replica holding admin 1's (so it depends on it).
    let mut h = Harness::new(&["a", "b"]);
    let trust = Trust::new(h.keys.genesis.clone(), &Ed25519).unwrap();
    let mut author = Catalog::new(trust.mesh());
    let revoked = author
        .author(&h.keys.admins[1], [3; 8], T0, &trust, &[(patch(6).key(), Some(patch(6)))])
        .unwrap();
    let dependent = author
        .author(&h.keys.admins[0], [4; 8], T0, &trust, &[(patch(7).key(), Some(patch(7)))])
        .unwrap();
    let honest = Catalog::new(trust.mesh())
        .author(&h.keys.admins[0], [5; 8], T0, &trust, &[(patch(8).key(), Some(patch(8)))])
        .unwrap();
    let (r0, r2) = (h.keys.roots[0].clone(), h.keys.roots[2].clone());
    let v2 = mesh::next_admin_set(
        trust.admins(),
        vec![h.keys.admins[0].public()],
        vec![Revocation { key: h.keys.admins[1].public(), kept_seq: BTreeMap::new() }],
        &[&r0, &r2],
    );
    let changes = [revoked, dependent, honest];
    for env in &changes {
        h.input(0, Input::Command(Command::Submit(env.clone())));
    }
    assert!(
        h.nodes[0].catalog().entries().contains_key(&patch(6).key()),
        "applied before the revocation"
    );
    h.input(0, Input::Command(Command::AdminSet(v2.clone())));
    h.input(1, Input::Command(Command::AdminSet(v2)));
    for env in &changes {
        h.input(1, Input::Command(Command::Submit(env.clone())));
    }
    let entries: Vec<Vec<String>> =
        (0..2).map(|i| h.nodes[i].catalog().entries().into_keys().collect()).collect();
    assert_eq!(entries[0], entries[1]);
    assert_eq!(entries[0], vec![patch(8).key()], "only the honest, independent change is visible");
    assert_eq!(h.nodes[0].catalog().state_hash(), h.nodes[1].catalog().state_hash());
    assert_eq!(
        h.nodes[0].catalog().len(),
        2,
        "the dependent change is held, waiting, as on node 1"
    );
}

#[test]
fn replayed_record_is_refused() {
    let mut h = line();
    // Capture node 0's current record bundle, then make it write a newer one.
    let old = h.nodes[1].site().records()[&h.nodes[0].id()].bundle.clone();
    h.input(0, Input::Command(Command::UpdateRecord { inventory: Default::default() }));
    h.run_for(500);
    assert_eq!(h.nodes[1].site().record_version(&h.nodes[0].id()), Some(2));
    h.sent.clear();
    assert_refused(&mut h, Message::SiteObjects(vec![old]), "replay");
    assert_eq!(h.nodes[1].site().record_version(&h.nodes[0].id()), Some(2));
}

#[test]
fn oversized_truncated_and_garbage_bytes_are_refused() {
    let mut h = line();
    for (bytes, kind) in [
        (vec![0u8; limits::MESSAGE_BYTES_MAX + 1], "oversized"),
        (vec![0xff; 64], "malformed"),
        (
            Message::CatalogChange(Arc::new(change_signed_by(&h.keys, &h.keys.admins[0], 6)))
                .to_bytes()[..40]
                .to_vec(),
            "malformed",
        ),
    ] {
        let before = h.nodes[1].stats().rejected.get(kind).copied().unwrap_or(0);
        h.input(1, Input::Bytes { peer: PeerId(0), bytes });
        h.settle();
        assert_eq!(
            h.nodes[1].stats().rejected.get(kind).copied().unwrap_or(0),
            before + 1,
            "{kind}"
        );
    }
    // A well-formed message round-trips through bytes and is accepted.
    let env = change_signed_by(&h.keys, &h.keys.admins[0], 7);
    let id = env.id();
    h.input(
        1,
        Input::Bytes { peer: PeerId(0), bytes: Message::CatalogChange(Arc::new(env)).to_bytes() },
    );
    h.settle();
    assert!(h.nodes[2].catalog_change_ids().contains(&id));
}

#[test]
fn forged_record_for_another_node_is_refused() {
    let mut h = line();
    // Node 0 signs a record that claims to be node 2's.
    let mut rec: patchmesh_protocol::site::NodeRecord =
        h.nodes[1].site().records()[&h.nodes[2].id()].record().clone();
    rec.version = 99;
    let forged = patchmesh_protocol::site::Bundle::new(
        Envelope::seal(Domain::NodeRecord, &rec, &[&key(100)]),
        h.keys.admit(&key(100), "a"),
    );
    assert_refused(&mut h, Message::SiteObjects(vec![Arc::new(forged)]), "bad_site_object");
    assert_eq!(h.nodes[1].site().record_version(&h.nodes[2].id()), Some(1));
}

#[test]
fn peer_without_admission_gets_nothing_and_is_dropped() {
    let mut h = line();
    // A stranger connects to node 1 and pushes a valid admin-signed change without a hello.
    let stranger = key(99);
    let env = change_signed_by(&h.keys, &h.keys.admins[0], 8);
    let id = env.id();
    h.input(
        1,
        Input::Connected {
            peer: PeerId(9),
            node: patchmesh_protocol::ids::NodeId(stranger.public().0),
        },
    );
    h.queue.retain(|(_, to, _)| *to != 9);
    h.nodes[1].handle_input(
        h.now,
        Input::Message { peer: PeerId(9), msg: Arc::new(Message::CatalogChange(Arc::new(env))) },
    );
    h.drain(1);
    assert!(h.disconnected.contains(&(1, PeerId(9))));
    assert!(!h.nodes[1].catalog_change_ids().contains(&id));
    assert_eq!(h.nodes[1].stats().unadmitted_dropped, 1);

    // A hello with a certificate for a different key is refused too.
    let cert_for_other = h.keys.admit(&key(98), "a");
    h.input(
        1,
        Input::Connected {
            peer: PeerId(10),
            node: patchmesh_protocol::ids::NodeId(stranger.public().0),
        },
    );
    let mesh_id = h.nodes[1].trust().mesh();
    h.nodes[1].handle_input(
        h.now,
        Input::Message {
            peer: PeerId(10),
            msg: Arc::new(Message::Hello {
                mesh: mesh_id,
                admission: cert_for_other,
                trust_version: 1,
            }),
        },
    );
    h.drain(1);
    assert!(h.disconnected.contains(&(1, PeerId(10))));
    assert_eq!(h.nodes[1].stats().rejected.get("hello_mismatch"), Some(&1));
}

#[test]
fn expired_admission_is_refused() {
    let keys = Keys::new();
    let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
    let cert = keys.admit(&key(50), "a");
    let later = Millis(T0.0 + 366 * common::DAY_MS);
    assert!(matches!(
        trust.check_admission(&cert, later, &Ed25519),
        Err(TrustError::Expired { .. })
    ));
    // A node clock a day behind still accepts a fresh certificate.
    assert!(trust.check_admission(&cert, Millis(T0.0 - common::DAY_MS), &Ed25519).is_ok());
}

#[test]
fn too_many_sync_changes_are_refused() {
    let keys = Keys::new();
    let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
    let mut catalog = Catalog::new(trust.mesh());
    let env = change_signed_by(&keys, &keys.admins[0], 9);
    let sync = patchmesh_protocol::catalog::CatalogSync {
        sync: vec![],
        changes: vec![env; limits::CATALOG_CHANGES_PER_SYNC_MAX + 1],
    };
    let mut peer = Default::default();
    assert_eq!(
        catalog.receive_sync(&mut peer, &sync, &trust, &Ed25519).unwrap_err(),
        CatalogError::TooManyChanges(limits::CATALOG_CHANGES_PER_SYNC_MAX + 1)
    );
    let _ = ObjectId::default();
}

#[test]
fn a_local_command_returns_what_it_did_or_why_it_was_refused() {
    use patchmesh_protocol::node::{Offence, Outcome, Refusal};
    let mut h = Harness::new(&["a"]);
    let trust = Trust::new(h.keys.genesis.clone(), &Ed25519).unwrap();
    let change = Catalog::new(trust.mesh())
        .author(&h.keys.admins[0], [9; 8], T0, &trust, &[(patch(1).key(), Some(patch(1)))])
        .unwrap();
    let now = h.now;
    let node = &mut h.nodes[0];
    assert_eq!(
        node.command(now, Command::Submit(change.clone())).unwrap(),
        Outcome::Applied(change.id())
    );
    assert_eq!(node.command(now, Command::Submit(change.clone())).unwrap(), Outcome::Unchanged);
    // Signed by a key that is no admin: refused with the typed reason, nothing stored.
    let forged = change_signed_by(&h.keys, &key(77), 2);
    let node = &mut h.nodes[0];
    let refused = node.command(now, Command::Submit(forged)).unwrap_err();
    assert!(matches!(refused, Refusal::Catalog(_) | Refusal::Trust(_)), "{refused:?}");
    assert_eq!(refused.offence(), Offence::Invalid);
    assert!(!node.catalog().entries().contains_key(&patch(2).key()));
    assert!(node.catalog().entries().contains_key(&patch(1).key()));
    assert_eq!(
        node.command(now, Command::UpdateRecord { inventory: Default::default() }).unwrap(),
        Outcome::Done
    );
}

/// A node that signed two different records of one version is blamed and penalised (the two
/// signed records are the proof); the site keeps the evidence and every replica keeps the
/// same record.
#[test]
fn a_node_sending_two_records_of_one_version_is_blamed() {
    let mut h = line();
    let held = h.nodes[1].site().records()[&h.nodes[0].id()].clone();
    let mut twin = held.record().clone();
    twin.written_at = Millis(twin.written_at.0 + 1);
    let bundle = patchmesh_protocol::site::Bundle::new(
        Envelope::seal(Domain::NodeRecord, &twin, &[&key(100)]),
        held.bundle.admission().clone(),
    );
    h.queue.push_back((0, 1, Arc::new(Message::SiteObjects(vec![Arc::new(bundle)]))));
    h.settle();
    assert_eq!(h.nodes[1].stats().rejected.get("equivocation"), Some(&1));
    assert!(h.penalized.contains(&(1, PeerId(0))), "{:?}", h.penalized);
    assert_eq!(h.nodes[1].site().equivocations().len(), 1);
    h.run_for(3000);
    let ours = |i: usize| h.nodes[i].site().records()[&h.nodes[0].id()].body_hash();
    assert_eq!(ours(1), ours(2), "the replicas kept different records");
}

#[test]
fn a_node_back_after_a_week_offline_refuses_older_trust_and_ends_where_the_others_are() {
    use patchmesh_protocol::node::{Node, Persist};
    // Node 2 (site b) is off for a week. Meanwhile the root quorum adds admin K (v2), K
    // publishes a patch, K is revoked with all its changes (v3), and admin 0 publishes one.
    let mut h = Harness::new(&["a", "a", "b"]);
    h.connect(0, 1);
    h.connect(1, 2);
    let a0 = h.keys.admins[0].clone();
    let publish = |h: &mut Harness, admin: &patchmesh_protocol::crypto::SecretKey, n: u8| {
        let edits = vec![(patch(n).key(), Some(patch(n)))];
        h.input(0, Input::Command(Command::Publish { admin: admin.clone(), edits }));
        h.settle();
    };
    publish(&mut h, &a0, 1);
    h.run_for(3_000);
    // Node 2's store as it shuts down.
    let n2 = &h.nodes[2];
    let mut store: Vec<Persist> =
        n2.trust().chain().iter().cloned().map(Persist::AdminSet).collect();
    store.extend(n2.catalog().envelopes().cloned().map(Persist::CatalogChange));
    store.extend(n2.site().records().values().map(|r| Persist::SiteObject(r.bundle.clone())));
    store.push(Persist::RecordVersionFloor(n2.site().record_version(&n2.id()).unwrap()));
    h.sides = Some(vec![0, 0, 1]);

    let (r0, r2) = (h.keys.roots[0].clone(), h.keys.roots[2].clone());
    let k = key(77);
    let both = vec![a0.public(), h.keys.admins[1].public()];
    let v1 = h.nodes[0].trust().admins().clone();
    let v2 =
        mesh::next_admin_set(&v1, [both.clone(), vec![k.public()]].concat(), vec![], &[&r0, &r2]);
    h.input(0, Input::Command(Command::AdminSet(v2.clone())));
    h.settle();
    publish(&mut h, &k, 2);
    let k_change = h.nodes[0]
        .catalog()
        .envelopes()
        .find(|e| e.signatures.iter().any(|s| s.key == k.public()))
        .cloned()
        .expect("K's change applied at node 0");
    let v2_set = h.nodes[0].trust().admins().clone();
    let revoke = Revocation { key: k.public(), kept_seq: BTreeMap::new() };
    let v3 = mesh::next_admin_set(&v2_set, both.clone(), vec![revoke], &[&r0, &r2]);
    h.input(0, Input::Command(Command::AdminSet(v3)));
    h.settle();
    publish(&mut h, &a0, 3);
    h.run_for(2_000);
    assert_eq!(h.nodes[1].trust().version(), 3);
    assert_eq!(h.nodes[1].catalog().entries().len(), 2, "K's patch went with its key");

    // A week later node 2 starts from its store.
    h.now = h.now.plus(7 * common::DAY_MS);
    let mut config = h.keys.config(key(102), "b");
    config.seed = 2;
    let mut back = Node::new(config, h.now).unwrap();
    assert_eq!(back.restore(&store), 0, "its own store verifies a week later");
    back.handle_input(h.now, Input::Start);
    h.nodes[2] = back;
    h.drain(2);
    assert_eq!(h.nodes[2].trust().version(), 1);

    // A replayer reaches it first with the history out of date: v2 and K's change (genuine,
    // and valid when signed).
    h.sides = None;
    h.links.retain(|l| *l != (1, 2));
    h.connect(0, 2);
    // (Queued behind the hellos, ahead of every honest answer.)
    h.queue.push_back((0, 2, Arc::new(Message::AdminSets(vec![v2.clone()]))));
    h.queue.push_back((0, 2, Arc::new(Message::CatalogChange(Arc::new(k_change.clone())))));
    let (mut versions, mut had_k) = (Vec::new(), false);
    while let Some((from, to, msg)) = h.queue.pop_front() {
        let t = h.clock(to);
        h.nodes[to].handle_input(t, Input::Message { peer: PeerId(from as u64), msg });
        h.drain(to);
        versions.push(h.nodes[2].trust().version());
        had_k |= h.nodes[2]
            .catalog()
            .envelopes()
            .any(|e| e.signatures.iter().any(|s| s.key == k.public()));
    }
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "trust went back: {versions:?}");
    assert!(versions.contains(&2) && had_k, "the replayed v2 and K's change were taken first");
    h.run_for(5_000);
    // It ends where the others are: v3, K's change dropped, the same catalog.
    assert_eq!(h.nodes[2].trust().version(), 3);
    assert_eq!(h.nodes[2].catalog().state_hash(), h.nodes[0].catalog().state_hash());
    assert!(h.nodes[2]
        .catalog()
        .envelopes()
        .all(|e| e.signatures.iter().all(|s| s.key != k.public())));

    // Older trust than it now holds is refused: a different v2 (genuine root signatures) and
    // K's change again.
    let other_v2 = mesh::next_admin_set(&v1, vec![k.public()], vec![], &[&r0, &r2]);
    let before = h.nodes[2].stats().rejected.clone();
    h.queue.push_back((0, 2, Arc::new(Message::AdminSets(vec![other_v2]))));
    h.queue.push_back((0, 2, Arc::new(Message::CatalogChange(Arc::new(k_change)))));
    h.settle();
    let after = &h.nodes[2].stats().rejected;
    let grew =
        |kind: &str| after.get(kind).copied().unwrap_or(0) > before.get(kind).copied().unwrap_or(0);
    assert!(grew("replay"), "the older admin set was not refused as a replay: {after:?}");
    assert!(grew("revoked"), "the revoked key's change was not refused: {after:?}");
    assert_eq!(h.nodes[2].trust().version(), 3);
    assert_eq!(h.nodes[2].catalog().state_hash(), h.nodes[0].catalog().state_hash());
}
