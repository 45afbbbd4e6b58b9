//! A peer with no admission certificate, for the multi-process tests.
//!
//! It speaks the mesh's real protocols (same protocol names and topics, built from the genesis)
//! and tries to get state in and out of an honest node:
//! 1. connects to `--target`, subscribes to the mesh topics and, as soon as the target announces
//!    its subscriptions, publishes a well-formed catalog change signed by its own (non-admin)
//!    key and an unsigned one;
//! 2. after `--hello-after-ms`, sends a hello carrying a certificate it signed itself.
//!
//! It prints one JSON object: how many pubsub messages it received from the mesh, whether and
//! when it was disconnected, and what it sent.
//!
//! Usage: `rogue GENESIS SITE TARGET_ADDR HELLO_AFTER_MS RUN_MS`

use libp2p::futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, Multiaddr};
use patchmesh_node::net::{BehaviourEvent, Topics};
use patchmesh_protocol::crypto::{Domain, Ed25519, Envelope, SecretKey};
use patchmesh_protocol::ids::{Millis, NodeId, SiteId};
use patchmesh_protocol::mesh;
use patchmesh_protocol::trust::Genesis;
use patchmesh_protocol::wire::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn forged_change(genesis: &Genesis, key: &SecretKey) -> (Envelope, Envelope) {
    let body = patchmesh_tests::foreign_change_body(genesis, key, "rogue", "rm -rf /");
    let signed = Envelope::seal(Domain::CatalogChange, &body, &[key]);
    let mut unsigned = signed.clone();
    unsigned.signatures.clear();
    (signed, unsigned)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 6, "usage: rogue GENESIS SITE TARGET_ADDR HELLO_AFTER_MS RUN_MS");
    let genesis_env = patchmesh_node::files::read_envelope(args[1].as_ref())?;
    let genesis = Genesis::verify(&genesis_env, &Ed25519)?;
    let site = SiteId::from(args[2].as_str());
    let target: Multiaddr = args[3].parse()?;
    let hello_after = Duration::from_millis(args[4].parse()?);
    let run_for = Duration::from_millis(args[5].parse()?);

    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    let (forged, unsigned) = forged_change(&genesis, &key);
    let mut swarm = patchmesh_tests::test_swarm(genesis.mesh_id(), &key)?;
    let topics = Topics::new(&genesis.mesh_id(), &site);
    for t in [&topics.control, &topics.site, &topics.summaries] {
        swarm.behaviour_mut().gossipsub.subscribe(t)?;
    }
    swarm.dial(target)?;

    let start = Instant::now();
    let mut target_peer = None;
    let mut connected_ms = None;
    let mut disconnected_ms = None;
    let mut gossip_received = 0u32;
    let mut published = 0u32;
    let mut hello_sent = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while start.elapsed() < run_for {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    target_peer.get_or_insert(peer_id);
                    connected_ms.get_or_insert(start.elapsed().as_millis() as u64);
                }
                SwarmEvent::ConnectionClosed { num_established: 0, .. } => {
                    disconnected_ms.get_or_insert(start.elapsed().as_millis() as u64);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { topic, .. }))
                    if topic == topics.control.hash() && published == 0 =>
                {
                    for env in [&forged, &unsigned] {
                        let bytes = Message::CatalogChange(Arc::new(env.clone())).to_bytes();
                        if swarm.behaviour_mut().gossipsub.publish(topics.control.clone(), bytes).is_ok() {
                            published += 1;
                        }
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message_id, propagation_source, .. })) => {
                    gossip_received += 1;
                    swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id, &propagation_source, gossipsub::MessageAcceptance::Ignore);
                }
                _ => {}
            },
            _ = tick.tick() => {
                if let (false, Some(peer), true) = (hello_sent, target_peer, start.elapsed() >= hello_after) {
                    hello_sent = true;
                    // A certificate the rogue signed for itself.
                    let cert = mesh::admit(&key, &genesis, NodeId(key.public().0), &site,
                        Default::default(), Millis(0), u64::MAX / 2);
                    let hello = Message::Hello { mesh: genesis.mesh_id(), admission: cert, trust_version: 1 };
                    swarm.behaviour_mut().msg.send_request(&peer, hello.to_bytes());
                }
            }
        }
    }
    let report = patchmesh_tests::RogueReport {
        peer_id: swarm.local_peer_id().to_string(),
        connected_ms,
        disconnected_ms,
        connected_at_end: swarm.is_connected(&target_peer.unwrap_or(*swarm.local_peer_id())),
        connections_at_end: swarm.connected_peers().count(),
        gossip_received,
        gossip_published: published,
        hello_sent,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
