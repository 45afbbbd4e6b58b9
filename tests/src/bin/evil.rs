//! An *admitted* peer that misbehaves on the data protocol, for the multi-process tests.
//!
//! It holds a genuine node key and admission certificate, connects to `TARGET`, says a valid
//! hello (so the target admits it), and then answers data streams in one of these modes:
//! - `corrupt`: claims the payload and serves ranges with one byte flipped in each;
//! - `lie`: claims the payload and answers every range with `Missing`;
//! - `slow`: claims the payload and sends ranges at one byte per second;
//! - `overrun`: serves ranges correctly, then keeps sending bytes past the range;
//! - `big-range`: serves nothing; asks the target for a range larger than the protocol allows
//!   and prints the reply.
//!
//! Usage: `evil GENESIS KEY ADMISSION TARGET_ADDR PAYLOAD_FILE MODE RUN_MS`
//! Prints one JSON object: what it was asked and whether it was disconnected.

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::Multiaddr;
use patchmesh_node::transfer::{read_frame, write_frame};
use patchmesh_protocol::crypto::Ed25519;
use patchmesh_protocol::ids::ContentId;
use patchmesh_protocol::transfer::{
    check_range, group_count, group_cv, group_span, Availability, DataReply, DataRequest,
};
use patchmesh_protocol::trust::Genesis;
use patchmesh_protocol::wire::Message;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Payload {
    id: ContentId,
    data: Vec<u8>,
    outboard: Vec<u8>,
}

#[derive(Default)]
struct Counts {
    have: AtomicU32,
    ranges: AtomicU32,
    outboards: AtomicU32,
}

async fn serve(
    mode: String,
    p: Arc<Payload>,
    counts: Arc<Counts>,
    mut s: libp2p::Stream,
) -> std::io::Result<()> {
    let req = DataRequest::from_bytes(&read_frame(&mut s).await?)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let size = p.data.len() as u64;
    match req {
        DataRequest::Have { .. } => {
            counts.have.fetch_add(1, Ordering::Relaxed);
            let reply = DataReply::Have { size_bytes: size, availability: Availability::Complete };
            write_frame(&mut s, &reply.to_bytes()).await?;
        }
        DataRequest::Outboard { .. } => {
            counts.outboards.fetch_add(1, Ordering::Relaxed);
            write_frame(&mut s, &DataReply::Outboard { size_bytes: size }.to_bytes()).await?;
            s.write_all(&p.outboard).await?;
        }
        DataRequest::Range { first, count, .. } => {
            counts.ranges.fetch_add(1, Ordering::Relaxed);
            let Ok((offset, len)) = check_range(size, first, count) else { return Ok(()) };
            if mode == "lie" {
                write_frame(&mut s, &DataReply::Missing.to_bytes()).await?;
                return s.close().await;
            }
            write_frame(&mut s, &DataReply::Range { size_bytes: size }.to_bytes()).await?;
            let mut bytes = p.data[offset as usize..(offset + len) as usize].to_vec();
            match mode.as_str() {
                "corrupt" => {
                    let at = bytes.len() / 2;
                    bytes[at] ^= 0x55;
                    s.write_all(&bytes).await?;
                }
                "slow" => {
                    for b in bytes {
                        s.write_all(&[b]).await?;
                        s.flush().await?;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                "overrun" => {
                    s.write_all(&bytes).await?;
                    s.write_all(&vec![0xAA; 64 * 1024]).await?;
                }
                _ => s.write_all(&bytes).await?,
            }
        }
    }
    s.close().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 8,
        "usage: evil GENESIS KEY ADMISSION TARGET_ADDR PAYLOAD_FILE MODE RUN_MS"
    );
    let genesis_env = patchmesh_node::files::read_envelope(args[1].as_ref())?;
    let genesis = Genesis::verify(&genesis_env, &Ed25519)?;
    let key = patchmesh_node::files::read_key(args[2].as_ref())?;
    let admission = patchmesh_node::files::read_envelope(args[3].as_ref())?;
    let target: Multiaddr = args[4].parse()?;
    let data = std::fs::read(&args[5])?;
    let mode = args[6].clone();
    let run_for = Duration::from_millis(args[7].parse()?);

    let size = data.len() as u64;
    let outboard: Vec<u8> = (0..group_count(size))
        .flat_map(|g| {
            let (o, l) = group_span(size, g);
            group_cv(size, g, &data[o as usize..(o + l) as usize])
        })
        .collect();
    let payload =
        Arc::new(Payload { id: ContentId(*blake3::hash(&data).as_bytes()), data, outboard });

    let mut swarm = patchmesh_tests::test_swarm(genesis.mesh_id(), &key)?;
    let proto = patchmesh_node::transfer::protocol(&genesis.mesh_id());
    let mut control = swarm.behaviour().stream.new_control();
    let mut incoming = control.accept(proto.clone()).map_err(|_| anyhow::anyhow!("accept"))?;
    let counts = Arc::new(Counts::default());
    {
        let (mode, payload, counts) = (mode.clone(), payload.clone(), counts.clone());
        tokio::spawn(async move {
            while let Some((_, s)) = incoming.next().await {
                tokio::spawn(serve(mode.clone(), payload.clone(), counts.clone(), s));
            }
        });
    }
    swarm.dial(target)?;

    let start = Instant::now();
    let mut target_peer = None;
    let mut disconnected_ms = None;
    let mut big_range_reply: Option<String> = None;
    let (reply_tx, mut reply_rx) = tokio::sync::mpsc::channel::<String>(1);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while start.elapsed() < run_for {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if target_peer.is_none() => {
                    target_peer = Some(peer_id);
                    let hello = Message::Hello { mesh: genesis.mesh_id(), admission: admission.clone(), trust_version: 1 };
                    swarm.behaviour_mut().msg.send_request(&peer_id, hello.to_bytes());
                    if mode == "big-range" {
                        let (mut c, proto, id, tx) = (control.clone(), proto.clone(), payload.id, reply_tx.clone());
                        tokio::spawn(async move {
                            // Let the target admit us first.
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            let reply = async {
                                let mut s = c.open_stream(peer_id, proto).await.map_err(|e| e.to_string())?;
                                let ask = DataRequest::Range { content: id, first: 0, count: patchmesh_protocol::limits::RANGE_GROUPS_MAX + 1 };
                                write_frame(&mut s, &ask.to_bytes()).await.map_err(|e| e.to_string())?;
                                let bytes = read_frame(&mut s).await.map_err(|e| e.to_string())?;
                                let mut rest = Vec::new();
                                let _ = s.read_to_end(&mut rest).await;
                                Ok::<String, String>(format!("{:?} +{} bytes", DataReply::from_bytes(&bytes), rest.len()))
                            }.await;
                            let _ = tx.send(reply.unwrap_or_else(|e| format!("error: {e}"))).await;
                        });
                    }
                }
                SwarmEvent::ConnectionClosed { num_established: 0, peer_id, .. } if Some(peer_id) == target_peer => {
                    disconnected_ms.get_or_insert(start.elapsed().as_millis() as u64);
                }
                _ => {}
            },
            Some(r) = reply_rx.recv() => big_range_reply = Some(r),
            _ = tick.tick() => {}
        }
    }
    let report = patchmesh_tests::EvilReport {
        peer_id: swarm.local_peer_id().to_string(),
        mode: mode.to_string(),
        have_asked: counts.have.load(Ordering::Relaxed),
        outboards_asked: counts.outboards.load(Ordering::Relaxed),
        ranges_asked: counts.ranges.load(Ordering::Relaxed),
        disconnected_ms,
        big_range_reply,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
