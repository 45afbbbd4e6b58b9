//! Topic relay mode (the real node over gossipsub): fresh objects are broadcast once per topic,
//! and every pubsub message gets a verdict — Accept (valid and new: forward it), Reject
//! (invalid) or Ignore (already held, or from a peer that has not been admitted).

mod common;

use common::{key, Keys, T0};
use patchmesh_protocol::catalog::{CatalogEntry, ExecutorSpec, PatchEntry};
use patchmesh_protocol::crypto::{Domain, Envelope};
use patchmesh_protocol::ids::{ContentId, NodeId};
use patchmesh_protocol::node::{Command, Input, Node, Output, PeerId, RelayMode, Topic, Verdict};
use patchmesh_protocol::wire::Message;
use std::sync::Arc;

fn patch(n: u8) -> CatalogEntry {
    CatalogEntry::Patch(PatchEntry {
        content_id: ContentId([n; 32]),
        size_bytes: 1,
        name: format!("p{n}"),
        version: "1".into(),
        executor: ExecutorSpec {
            kind: "file".into(),
            install: None,
            verify: None,
            rollback: None,
            timeout_ms: 1,
        },
    })
}

fn node(keys: &Keys, k: u8) -> Node {
    let mut cfg = keys.config(key(k), "site-a");
    cfg.relay = RelayMode::Topics;
    common::started(Node::new(cfg, T0).unwrap())
}

fn drain(n: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

fn verdict(outs: &[Output], token: u64) -> Verdict {
    outs.iter()
        .find_map(|o| match o {
            Output::GossipVerdict { token: t, verdict } if *t == token => Some(*verdict),
            _ => None,
        })
        .expect("a verdict for every gossip input")
}

/// Connects `peer` to `n` and admits it with its hello.
fn admit(keys: &Keys, n: &mut Node, peer: u64, k: u8) {
    n.handle_input(T0, Input::Connected { peer: PeerId(peer), node: NodeId(key(k).public().0) });
    let hello = Message::Hello {
        mesh: n.trust().mesh(),
        admission: keys.admit(&key(k), "site-a"),
        trust_version: 1,
    };
    n.handle_input(T0, Input::Message { peer: PeerId(peer), msg: Arc::new(hello) });
    drain(n);
}

#[test]
fn a_local_publish_is_broadcast_once_on_the_control_topic() {
    let keys = Keys::new();
    let mut a = node(&keys, 10);
    admit(&keys, &mut a, 1, 11);
    admit(&keys, &mut a, 2, 12);
    a.handle_input(
        T0,
        Input::Command(Command::Publish {
            admin: keys.admins[0].clone(),
            edits: vec![(patch(1).key(), Some(patch(1)))],
        }),
    );
    let outs = drain(&mut a);
    let broadcasts: Vec<&Topic> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Broadcast { topic, msg }
                if matches!(msg.as_ref(), Message::CatalogChange(_)) =>
            {
                Some(topic)
            }
            _ => None,
        })
        .collect();
    assert_eq!(broadcasts, [&Topic::Control]);
    assert!(!outs.iter().any(|o| matches!(o, Output::Send { msg, .. } if matches!(msg.as_ref(), Message::CatalogChange(_)))));
}

#[test]
fn gossip_gets_accept_reject_or_ignore_and_is_never_re_sent_by_the_node() {
    let keys = Keys::new();
    let mut author = node(&keys, 20);
    author.handle_input(
        T0,
        Input::Command(Command::Publish {
            admin: keys.admins[0].clone(),
            edits: vec![(patch(2).key(), Some(patch(2)))],
        }),
    );
    let change = drain(&mut author)
        .into_iter()
        .find_map(|o| match o {
            Output::Broadcast { msg, .. } => Some(msg),
            _ => None,
        })
        .unwrap();
    let good = change.to_bytes();

    let mut b = node(&keys, 21);
    admit(&keys, &mut b, 1, 22);
    b.handle_input(T0, Input::Connected { peer: PeerId(9), node: NodeId(key(99).public().0) });
    drain(&mut b);

    // From a peer that never showed a certificate: not even read.
    b.handle_input(T0, Input::Gossip { peer: PeerId(9), token: 1, bytes: good.clone() });
    let outs = drain(&mut b);
    assert_eq!(verdict(&outs, 1), Verdict::Ignore);
    assert_eq!(b.catalog().len(), 0);
    assert_eq!(b.stats().unadmitted_dropped, 1);

    // Valid and new: accepted, stored, and left to pubsub to forward.
    b.handle_input(T0, Input::Gossip { peer: PeerId(1), token: 2, bytes: good.clone() });
    let outs = drain(&mut b);
    assert_eq!(verdict(&outs, 2), Verdict::Accept);
    assert_eq!(b.catalog().len(), 1);
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Broadcast { .. } | Output::Send { .. })),
        "{outs:?}"
    );

    // The same again: ignored, no penalty.
    b.handle_input(T0, Input::Gossip { peer: PeerId(1), token: 3, bytes: good });
    let outs = drain(&mut b);
    assert_eq!(verdict(&outs, 3), Verdict::Ignore);
    assert!(!outs.iter().any(|o| matches!(o, Output::Penalize { .. })));

    // A different change, re-signed by a node key (not an admin): rejected and penalised. (A
    // copy of a body already held is simply a duplicate, whoever signed it.)
    author.handle_input(
        T0,
        Input::Command(Command::Publish {
            admin: keys.admins[0].clone(),
            edits: vec![(patch(3).key(), Some(patch(3)))],
        }),
    );
    let other = drain(&mut author)
        .into_iter()
        .find_map(|o| match o {
            Output::Broadcast { msg, .. } => Some(msg),
            _ => None,
        })
        .unwrap();
    let Message::CatalogChange(env) = other.as_ref() else { unreachable!() };
    let forged = Envelope::seal(
        Domain::CatalogChange,
        &env.open::<patchmesh_protocol::catalog::ChangeBody>("c").unwrap(),
        &[&key(22)],
    );
    let bytes = Message::CatalogChange(Arc::new(forged)).to_bytes();
    b.handle_input(T0, Input::Gossip { peer: PeerId(1), token: 4, bytes });
    let outs = drain(&mut b);
    assert_eq!(verdict(&outs, 4), Verdict::Reject);
    assert!(outs.iter().any(|o| matches!(o, Output::Penalize { peer } if *peer == PeerId(1))));

    // Garbage, and a point-to-point message kind on a topic: rejected.
    b.handle_input(T0, Input::Gossip { peer: PeerId(1), token: 5, bytes: vec![0xff; 40] });
    assert_eq!(verdict(&drain(&mut b), 5), Verdict::Reject);
    let digest_like = Message::SiteKeys { keys: Vec::new(), reply: true }.to_bytes();
    b.handle_input(T0, Input::Gossip { peer: PeerId(1), token: 6, bytes: digest_like });
    assert_eq!(verdict(&drain(&mut b), 6), Verdict::Reject);
    assert_eq!(b.stats().rejected.get("not_gossip"), Some(&1));
    assert_eq!(b.catalog().len(), 1);
}

#[test]
fn a_peer_that_never_says_hello_is_dropped_after_the_timeout() {
    let keys = Keys::new();
    let mut a = node(&keys, 30);
    a.handle_input(T0, Input::Connected { peer: PeerId(5), node: NodeId(key(31).public().0) });
    drain(&mut a);
    let mut now = T0;
    let mut dropped = false;
    for _ in 0..100 {
        now = now.plus(1000);
        a.handle_input(now, Input::Timer);
        let outs = drain(&mut a);
        if outs.iter().any(|o| matches!(o, Output::Disconnect { peer } if *peer == PeerId(5))) {
            // A hello that never came may be a slow link: dropped, never penalised.
            assert!(!outs.iter().any(|o| matches!(o, Output::Penalize { .. })), "{outs:?}");
            dropped = true;
            break;
        }
    }
    assert!(dropped, "an unadmitted peer stayed connected");
    assert!(now.since(T0) >= patchmesh_protocol::limits::HELLO_TIMEOUT_MS);
    assert_eq!(a.stats().rejected.get("hello_timeout"), Some(&1));
}
