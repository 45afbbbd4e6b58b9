//! Merge laws: record, evidence and catalog merges are commutative, associative and idempotent;
//! any delivery order or duplication of the same messages gives the same state hash.

mod common;

use common::{key, Keys, T0};
use patchmesh_protocol::catalog::{AdminCommand, Catalog, CatalogEntry, CommandAction};
use patchmesh_protocol::crypto::{Domain, Ed25519, Envelope};
use patchmesh_protocol::ids::{Millis, NodeId, RolloutId, SiteId};
use patchmesh_protocol::node::{Input, Node, PeerId};
use patchmesh_protocol::site::{self, Bundle, NodeRecord, RolloutStatus, SiteState};
use patchmesh_protocol::trust::Trust;
use patchmesh_protocol::wire::Message;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Records of 3 nodes at versions 1..=4, all signed and admitted.
fn record_bundles(keys: &Keys) -> Vec<Arc<Bundle>> {
    let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
    let mut out = Vec::new();
    for n in 0..3u8 {
        let k = key(40 + n);
        let admission = keys.admit(&k, "s");
        for v in 1..=4u64 {
            let mut rollouts = BTreeMap::new();
            rollouts.insert(
                RolloutId([v as u8; 32]),
                site::Standing { ring: 0, status: RolloutStatus::Pending },
            );
            let rec = NodeRecord {
                mesh: trust.mesh(),
                node: NodeId(k.public().0),
                site: SiteId::from("s"),
                version: v,
                written_at: Millis(T0.0 + v),
                inventory: Default::default(),
                rollouts,
                exposure: None,
                audit: None,
            };
            out.push(Arc::new(Bundle::new(
                Envelope::seal(Domain::NodeRecord, &rec, &[&k]),
                admission.clone(),
            )));
        }
    }
    out
}

fn merged(
    trust: &Trust,
    bundles: &[Arc<Bundle>],
    order: &[usize],
) -> patchmesh_protocol::ids::StateHash {
    let mut state = SiteState::new(SiteId::from("s"));
    for &i in order {
        let held = site::verify_record(&bundles[i], trust, T0, &Ed25519).unwrap();
        // Stale versions are refused as replays; either way the state is unchanged by them.
        let _ = state.merge_record(held);
    }
    state.digest()
}

#[test]
fn the_site_digest_tells_states_apart_and_the_bulk_restore_agrees() {
    // The digest is kept as a running sum: each change must move it, undoing a change must move
    // it back, and a store restored in one pass must give what merging one by one gives.
    let keys = Keys::new();
    let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
    let bundles = record_bundles(&keys);
    let held = |i: usize| site::verify_record(&bundles[i], &trust, T0, &Ed25519).unwrap();
    let mut state = SiteState::new(SiteId::from("s"));
    let empty = state.digest();
    let mut seen = vec![empty];
    // Node 0 at versions 1 to 4, then node 1 at version 1: every step is a new state.
    for i in [0, 1, 2, 3, 4] {
        state.merge_record(held(i)).unwrap();
        let d = state.digest();
        assert!(!seen.contains(&d), "step {i} left the digest at an earlier state's");
        seen.push(d);
    }
    let node1 = held(4).record().node;
    assert!(state.remove_record(&node1));
    assert_eq!(state.digest(), seen[4], "removing node 1 gives back the state before it");
    assert!(state.remove_record(&held(0).record().node));
    assert_eq!(state.digest(), empty, "removing every record gives back the empty state");

    let all: Vec<usize> = (0..bundles.len()).collect();
    let mut bulk = SiteState::new(SiteId::from("s"));
    assert_eq!(bulk.merge_records(all.iter().map(|&i| held(i)).collect()), 9, "superseded");
    assert_eq!(bulk.digest(), merged(&trust, &bundles, &all));
}

/// Catalog changes by two admins on two diverging replicas (so they have concurrent heads).
fn catalog_changes(keys: &Keys) -> Vec<Envelope> {
    let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
    let mut a = Catalog::new(trust.mesh());
    let mut b = Catalog::new(trust.mesh());
    let mut out = Vec::new();
    for i in 0..4u8 {
        for (cat, admin, session) in
            [(&mut a, &keys.admins[0], [1u8; 8]), (&mut b, &keys.admins[1], [2u8; 8])]
        {
            let c = CatalogEntry::Command(AdminCommand {
                rollout: RolloutId([i; 32]),
                action: if i % 2 == 0 {
                    CommandAction::Pause
                } else {
                    CommandAction::Resume { overrides: None }
                },
                issued_at: Millis(T0.0 + u64::from(i)),
                admin: admin.public(),
            });
            // Both write the same key sometimes, to exercise conflict resolution.
            let key = if i == 3 { "command/shared".to_string() } else { c.key() };
            out.push(cat.author(admin, session, T0, &trust, &[(key, Some(c))]).unwrap());
        }
    }
    out
}

fn order_strategy(n: usize) -> impl Strategy<Value = Vec<usize>> {
    // A permutation of all items followed by random duplicates.
    (Just((0..n).collect::<Vec<_>>()).prop_shuffle(), prop::collection::vec(0..n, 0..n)).prop_map(
        |(mut perm, dups)| {
            perm.extend(dups);
            perm
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn record_merge_is_order_and_duplicate_insensitive(a in order_strategy(12), b in order_strategy(12)) {
        let keys = Keys::new();
        let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
        let bundles = record_bundles(&keys);
        prop_assert_eq!(merged(&trust, &bundles, &a), merged(&trust, &bundles, &b));
    }

    #[test]
    fn record_merge_is_associative(split in 0usize..12, order in order_strategy(12)) {
        // (x ⊔ y) ⊔ z == x ⊔ (y ⊔ z): merge a prefix and suffix into separate states, then one
        // into the other, and compare with merging everything into one.
        let keys = Keys::new();
        let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
        let bundles = record_bundles(&keys);
        let (x, rest) = order.split_at(split.min(order.len()));
        let mut left = SiteState::new(SiteId::from("s"));
        for &i in x { let _ = left.merge_record(site::verify_record(&bundles[i], &trust, T0, &Ed25519).unwrap()); }
        let mut right = SiteState::new(SiteId::from("s"));
        for &i in rest { let _ = right.merge_record(site::verify_record(&bundles[i], &trust, T0, &Ed25519).unwrap()); }
        for held in right.records().values() { let _ = left.merge_record(held.clone()); }
        let all: Vec<usize> = (0..12).collect();
        prop_assert_eq!(left.digest(), merged(&trust, &bundles, &all));
    }

    #[test]
    fn catalog_merge_is_order_and_duplicate_insensitive(a in order_strategy(8), b in order_strategy(8)) {
        let keys = Keys::new();
        let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
        let changes = catalog_changes(&keys);
        let apply = |order: &[usize]| {
            let mut c = Catalog::new(trust.mesh());
            for &i in order { c.offer(&changes[i], &trust, &Ed25519).unwrap(); }
            (c.state_hash(), c.entries())
        };
        let (ha, ea) = apply(&a);
        let (hb, eb) = apply(&b);
        prop_assert_eq!(ha, hb);
        prop_assert_eq!(ea.len(), 7);
        prop_assert_eq!(ea, eb);
    }

    #[test]
    fn node_state_is_delivery_order_insensitive(a in order_strategy(8), b in order_strategy(8)) {
        // The same messages (catalog changes and records) delivered to a node in any order,
        // with duplicates, give the same state hash.
        let keys = Keys::new();
        let mut msgs: Vec<Message> = catalog_changes(&keys).into_iter().take(4)
            .map(|e| Message::CatalogChange(Arc::new(e))).collect();
        let bundles = record_bundles(&keys);
        for chunk in bundles.chunks(3) {
            msgs.push(Message::SiteObjects(chunk.to_vec()));
        }
        let run = |order: &[usize]| {
            let mut node = Node::new(keys.config(key(90), "s"), T0).unwrap();
            node.handle_input(T0, Input::Start);
            node.handle_input(T0, Input::Connected { peer: PeerId(1), node: NodeId(key(40).public().0) });
            node.handle_input(T0, Input::Message { peer: PeerId(1), msg: Arc::new(Message::Hello {
                mesh: node.trust().mesh(), admission: keys.admit(&key(40), "s"), trust_version: 1 }) });
            for &i in order {
                node.handle_input(T0, Input::Message { peer: PeerId(1), msg: Arc::new(msgs[i % msgs.len()].clone()) });
            }
            while node.poll_output().is_some() {}
            node.state_hash()
        };
        prop_assert_eq!(run(&a), run(&b));
    }
}

#[test]
fn a_record_zone_must_be_a_zone_name_and_a_summary_carries_its_sites_shape() {
    let keys = Keys::new();
    let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
    let signed = |n: u8, zone: &str| {
        let k = key(60 + n);
        let free = [Some(40 << 30), Some(6 << 30), None][usize::from(n) % 3];
        let rec = NodeRecord {
            mesh: trust.mesh(),
            node: NodeId(k.public().0),
            site: SiteId::from("s"),
            version: 1,
            written_at: T0,
            inventory: site::InventorySummary {
                os: "Debian GNU/Linux 12".into(),
                zone: zone.into(),
                free_disk_bytes: free,
                ..Default::default()
            },
            rollouts: BTreeMap::new(),
            exposure: None,
            audit: None,
        };
        let b = Arc::new(Bundle::new(
            Envelope::seal(Domain::NodeRecord, &rec, &[&k]),
            keys.admit(&k, "s"),
        ));
        site::verify_record(&b, &trust, T0, &Ed25519)
    };
    // A terminal escape or an overlong name is refused before anything is stored or shown.
    assert!(signed(0, "\u{1b}[31mEurope/Paris").is_err());
    assert!(signed(0, &"A".repeat(65)).is_err());
    let mut state = SiteState::new(SiteId::from("s"));
    for (n, zone) in [(0, "Europe/Paris"), (1, "Europe/Paris"), (2, "America/Port-au-Prince")] {
        state.merge_record(signed(n, zone).unwrap()).unwrap();
    }
    let summary = state.summarise(trust.mesh(), NodeId(key(60).public().0));
    let kinds: Vec<(&str, u32)> =
        summary.shape.kinds.iter().map(|(k, n)| (k.zone.as_str(), *n)).collect();
    assert_eq!(kinds, [("Europe/Paris", 2), ("America/Port-au-Prince", 1)]);
    assert_eq!(summary.shape.other, 0);
    // The least free disk among the members that report one.
    assert_eq!(summary.shape.min_free_disk_bytes, Some(6 << 30));
    state.check_summary(&summary).unwrap();
    // A summary whose shape differs from the records is caught by the site's own members: its
    // kinds, or a roomier least free disk than the records say.
    let mut lie = summary.clone();
    lie.shape.kinds[0].1 = 3;
    let mut roomy = summary.clone();
    roomy.shape.min_free_disk_bytes = Some(40 << 30);
    for lie in [lie, roomy] {
        assert!(matches!(
            state.check_summary(&lie),
            Err(site::SiteError::SummaryMismatch { reason: "shape", .. })
        ));
    }
}

#[test]
fn free_disk_is_rounded_down_by_under_a_quarter_and_rounding_is_stable() {
    for b in [0u64, 1, 7, 8, 9, 1000, 123_456_789, 6 << 30, u64::MAX] {
        let r = site::round_free_disk(b);
        assert!(r <= b, "{b} rounds up to {r}");
        assert!(b - r <= b / 4, "{b} rounds to {r}: more than a quarter off");
        assert_eq!(site::round_free_disk(r), r, "rounding {b} twice moves it");
    }
    // Writing a few files does not move it; losing a quarter does.
    let free = 50_000_000_000u64;
    assert_eq!(site::round_free_disk(free), site::round_free_disk(free - 100_000_000));
    assert_ne!(site::round_free_disk(free), site::round_free_disk(free * 3 / 4));
}

#[test]
fn a_site_shape_keeps_its_most_common_kinds_within_its_bounds_and_counts_the_rest() {
    use patchmesh_protocol::limits::{SITE_SHAPE_BYTES_MAX, SITE_SHAPE_KINDS_MAX};
    use patchmesh_protocol::site::{MemberKind, SiteShape};
    let kind = |i: usize, label_bytes: usize| MemberKind {
        zone: "UTC".into(),
        os: "Debian".into(),
        labels: [("host".to_string(), format!("{i:0label_bytes$}"))].into(),
        quiet: None,
    };
    // 40 kinds, kind i held by i+1 members: the 16 largest are kept, largest first.
    let members: Vec<MemberKind> = (0..40).flat_map(|i| vec![kind(i, 8); i + 1]).collect();
    let shape = SiteShape::of(members);
    assert_eq!(shape.kinds.len(), SITE_SHAPE_KINDS_MAX);
    assert_eq!(shape.kinds[0].1, 40);
    assert_eq!(shape.members(), (1..=40).sum::<u64>());
    // Kinds of ten 62-byte labels (629 bytes with zone and OS): the byte budget binds before
    // the kind count, and what does not fit is counted in `other`.
    let big = |i: usize| MemberKind {
        labels: (0..10).map(|j| (format!("k{j}"), format!("{i:060}"))).collect(),
        ..kind(i, 1)
    };
    let shape = SiteShape::of((0..16).map(big));
    let size = |k: &MemberKind| {
        k.zone.len() + k.os.len() + k.labels.iter().map(|(a, b)| a.len() + b.len()).sum::<usize>()
    };
    assert_eq!(size(&big(0)), 629);
    assert_eq!(shape.kinds.len(), SITE_SHAPE_BYTES_MAX / 629);
    assert!(shape.kinds.iter().map(|(k, _)| size(k)).sum::<usize>() <= SITE_SHAPE_BYTES_MAX);
    assert_eq!(u64::from(shape.other), 16 - shape.kinds.len() as u64);
    assert_eq!(shape.members(), 16);
}
