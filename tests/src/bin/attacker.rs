//! An *admitted* peer that attacks the mesh, for the multi-process tests and
//! `scripts/bench-hostile.sh`.
//!
//! It holds a genuine node key and admission certificate (a stolen laptop), dials every target
//! (`ADDR/p2p/PEER_ID`, comma-separated), says a valid hello, and then attacks in one mode.
//!
//! Data modes (it claims `PAYLOAD_FILE` and answers data streams):
//! - `corrupt`: serves ranges with one byte flipped in each;
//! - `lie`: answers every range with `Missing`;
//! - `slow`: sends ranges at one byte per second;
//! - `overrun`: serves ranges correctly, then keeps sending bytes past the range;
//! - `big-range`: asks the first target for a range larger than the protocol allows and prints
//!   the reply.
//!
//! Mesh modes (`PAYLOAD_FILE` may be `-`):
//! - `flood`: catalog changes with forged signatures at line rate, over request-response to
//!   every target and over gossipsub; after a target drops it, it redials every second (a ban
//!   should refuse it);
//! - `replay`: keeps the first copy of every admin set, record, summary and catalog change it
//!   is sent, and from half of `RUN_MS` on sends those old copies back to every target every
//!   two seconds (a node must never go back to older trust or an older record);
//! - `equivocate`: signs two different records of itself at one version and sends one to the
//!   first half of the targets, the other to the rest, every two seconds;
//! - `summary`: signs a summary of its own site that no record supports (50 members, all
//!   succeeded in a canary ring, a version sum no honest summary reaches) and sends it every
//!   two seconds to every target, as a summary and as a proposal to its site;
//! - `streams`: opens data streams to every target and never finishes the request (up to
//!   `STREAMS` per target, renewing them as they close), and asks for ranges of content the
//!   target lacks, as fast as answers come;
//! - `eclipse`: TARGETS is `ECLIPSED;OTHERS` (each comma-separated): the nodes of one site
//!   whose every other link the test has cut, and nodes of the other sites. It asks the others
//!   for their beacons every second and forwards to the eclipsed nodes every beacon the others
//!   send, and nothing else: the eclipsed site hears that the mesh holds more than it does
//!   (a halt, a new change) but never receives it.
//!
//! Usage: `attacker GENESIS KEY ADMISSION TARGETS PAYLOAD_FILE MODE RUN_MS`
//! Prints one JSON object ([`patchmesh_tests::AttackReport`]).

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, Multiaddr, PeerId};
use patchmesh_node::net::{BehaviourEvent, Topics};
use patchmesh_node::transfer::{read_frame, write_frame};
use patchmesh_protocol::crypto::{Domain, Ed25519, Envelope, SecretKey, Sig};
use patchmesh_protocol::ids::{ContentId, Millis, NodeId};
use patchmesh_protocol::site::{Bundle, NodeRecord};
use patchmesh_protocol::transfer::{
    check_range, group_count, group_cv, group_span, Availability, DataReply, DataRequest,
};
use patchmesh_protocol::trust::{AdmissionCert, Genesis};
use patchmesh_protocol::wire::Message;
use patchmesh_tests::{AttackReport, TargetReport};
use rand::RngCore;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Half-open data streams held per target in `streams` mode.
const STREAMS: usize = 2_000;
/// Flood requests in flight per target.
const FLOOD_IN_FLIGHT: usize = 64;

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
    streams_opened: AtomicU32,
    streams_refused: AtomicU32,
    missing_asked: AtomicU32,
    missing_answered: AtomicU32,
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

/// The body signed by the attacker, with the signature replaced by random bytes: every copy
/// is distinct (no de-duplication saves the target) and costs a signature check to refuse.
fn forged(sealed: &Envelope) -> Envelope {
    let mut env = sealed.clone();
    let mut sig = [0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut sig);
    env.signatures[0].signature = Sig(sig);
    env
}

/// Two records of the attacker itself at one version that differ in their body.
fn twin_records(
    genesis: &Genesis,
    key: &SecretKey,
    admission: &Envelope,
    cert: &AdmissionCert,
) -> [Message; 2] {
    let now = patchmesh_node::clock::now_ms();
    [0u64, 1].map(|i| {
        let rec = NodeRecord {
            mesh: genesis.mesh_id(),
            node: NodeId(key.public().0),
            site: cert.site.clone(),
            version: 1_000,
            written_at: Millis(now.0 + i),
            inventory: Default::default(),
            rollouts: Default::default(),
            exposure: None,
            audit: None,
        };
        let env = Envelope::seal(Domain::NodeRecord, &rec, &[key]);
        Message::SiteObjects(vec![Arc::new(Bundle::new(env, admission.clone()))])
    })
}

/// Members a lying summary claims for the attacker's site, every one succeeded in a canary ring.
const LIE_MEMBERS: u32 = 50;

/// A summary of the attacker's own site, signed by it, whose counts no record supports: every
/// one of [`LIE_MEMBERS`] members succeeded in a rollout's canary ring, and a version sum no
/// honest summary reaches. Sent to other sites as a summary and to its own as a proposal.
fn lying_summary(
    genesis: &Genesis,
    key: &SecretKey,
    admission: &Envelope,
    cert: &AdmissionCert,
) -> [Message; 2] {
    use patchmesh_protocol::ids::RolloutId;
    use patchmesh_protocol::site::{RolloutStatus, SiteSummary};
    let lie = SiteSummary {
        mesh: genesis.mesh_id(),
        site: cert.site.clone(),
        author: NodeId(key.public().0),
        record_count: LIE_MEMBERS,
        evidence_count: 0,
        version_sum: u64::MAX / 2,
        records_root: [7; 32],
        evidence_root: [7; 32],
        counts: [((RolloutId([0x5a; 32]), 0, RolloutStatus::Succeeded), LIE_MEMBERS)].into(),
        evidence: Default::default(),
        exposure: Default::default(),
        shape: Default::default(),
        soaking: Default::default(),
    };
    let env = Envelope::seal(Domain::SiteSummary, &lie, &[key]);
    let bundle = Arc::new(Bundle::new(env, admission.clone()));
    [Message::Summaries(vec![bundle.clone()]), Message::SiteObjects(vec![bundle])]
}

/// What the `replay` mode keeps: the first copy of each kind of object it is sent.
#[derive(Default)]
struct Captured {
    admin_sets: Vec<Envelope>,
    records: BTreeMap<Vec<u8>, Arc<Bundle>>,
    summaries: BTreeMap<Vec<u8>, Arc<Bundle>>,
    changes: Vec<Arc<Envelope>>,
}

impl Captured {
    fn keep(&mut self, msg: Message) {
        match msg {
            Message::AdminSets(sets) => {
                for s in sets {
                    if !self.admin_sets.iter().any(|h| h.id() == s.id()) {
                        self.admin_sets.push(s);
                    }
                }
            }
            Message::SiteObjects(bundles) => {
                for b in bundles {
                    let _ = b.precheck(&Ed25519);
                    if let (Some(_), Some(sig)) = (b.record(), b.object().signatures.first()) {
                        self.records.entry(sig.key.0.to_vec()).or_insert(b);
                    }
                }
            }
            Message::Summaries(bundles) => {
                for b in bundles {
                    let _ = b.precheck(&Ed25519);
                    if let Some(s) = b.summary() {
                        self.summaries.entry(s.site.0.as_bytes().to_vec()).or_insert(b);
                    }
                }
            }
            Message::CatalogChange(c) if self.changes.len() < 64 => self.changes.push(c),
            _ => {}
        }
    }

    fn messages(&self) -> Vec<Message> {
        let mut out = Vec::new();
        if !self.admin_sets.is_empty() {
            out.push(Message::AdminSets(self.admin_sets.clone()));
        }
        if !self.records.is_empty() {
            out.push(Message::SiteObjects(self.records.values().cloned().collect()));
        }
        if !self.summaries.is_empty() {
            out.push(Message::Summaries(self.summaries.values().cloned().collect()));
        }
        out.extend(self.changes.iter().map(|c| Message::CatalogChange(c.clone())));
        out
    }
}

struct Target {
    addr: Multiaddr,
    peer: PeerId,
    report: TargetReport,
    connected: bool,
    hello_at: Option<Instant>,
    in_flight: usize,
    last_dial: Instant,
    /// `eclipse`: a node of the eclipsed site (else one of the others).
    eclipsed: bool,
}

impl Target {
    /// Connected and past its hello for long enough to be admitted.
    fn ready(&self) -> bool {
        self.connected && self.hello_at.is_some_and(|t| t.elapsed() > Duration::from_millis(500))
    }
}

fn parse_target(s: &str) -> anyhow::Result<(Multiaddr, PeerId)> {
    let addr: Multiaddr = s.parse()?;
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Ok((addr, peer)),
        _ => anyhow::bail!("target {s} lacks /p2p/PEER_ID"),
    }
}

/// Holds half-open data streams to `peer` (a length prefix promising a request that never
/// comes), renewing each as the target drops it.
async fn hold_streams(
    mut control: libp2p_stream::Control,
    proto: libp2p::StreamProtocol,
    peer: PeerId,
    counts: Arc<Counts>,
) {
    let mut held = Vec::new();
    loop {
        held.retain(|(_, opened): &(libp2p::Stream, Instant)| {
            opened.elapsed() < Duration::from_secs(30)
        });
        while held.len() < STREAMS {
            match tokio::time::timeout(
                Duration::from_secs(2),
                control.open_stream(peer, proto.clone()),
            )
            .await
            {
                Ok(Ok(mut s)) => {
                    counts.streams_opened.fetch_add(1, Ordering::Relaxed);
                    let _ = s.write_all(&[0, 0]).await;
                    held.push((s, Instant::now()));
                }
                _ => {
                    counts.streams_refused.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks `peer` for ranges of content it does not hold, one after another.
async fn ask_missing(
    mut control: libp2p_stream::Control,
    proto: libp2p::StreamProtocol,
    peer: PeerId,
    counts: Arc<Counts>,
) {
    loop {
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let ask = DataRequest::Range { content: ContentId(id), first: 0, count: 1 };
        counts.missing_asked.fetch_add(1, Ordering::Relaxed);
        let answered = async {
            let mut s = control.open_stream(peer, proto.clone()).await.ok()?;
            write_frame(&mut s, &ask.to_bytes()).await.ok()?;
            read_frame(&mut s).await.ok()
        };
        match tokio::time::timeout(Duration::from_secs(2), answered).await {
            Ok(Some(_)) => {
                counts.missing_answered.fetch_add(1, Ordering::Relaxed);
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `eclipse`: a beacon from one of the others goes on to every eclipsed node; returns how
/// many it sent. Anything else, or anything from the eclipsed site, goes nowhere.
fn forward_beacon(
    swarm: &mut libp2p::Swarm<patchmesh_node::net::Behaviour>,
    targets: &mut [Target],
    from: PeerId,
    m: &Message,
) -> u64 {
    let from_others = targets.iter().any(|t| t.peer == from && !t.eclipsed);
    if !from_others || !matches!(m, Message::Beacon(_)) {
        return 0;
    }
    let mut sent = 0;
    for t in targets.iter_mut().filter(|t| t.eclipsed && t.ready()) {
        swarm.behaviour_mut().msg.send_request(&t.peer, m.to_bytes());
        t.report.sent += 1;
        sent += 1;
    }
    sent
}

fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 8,
        "usage: attacker GENESIS KEY ADMISSION TARGETS PAYLOAD_FILE MODE RUN_MS"
    );
    let genesis_env = patchmesh_node::files::read_envelope(args[1].as_ref())?;
    let genesis = Genesis::verify(&genesis_env, &Ed25519)?;
    let key = patchmesh_node::files::read_key(args[2].as_ref())?;
    let admission = patchmesh_node::files::read_envelope(args[3].as_ref())?;
    let cert: AdmissionCert = admission.open("admission")?;
    let (eclipsed, others) = args[4].split_once(';').unwrap_or(("", &args[4]));
    let mut targets = Vec::new();
    let listed = |list: &str, eclipsed: bool| -> Vec<(String, bool)> {
        list.split(',').filter(|t| !t.is_empty()).map(|t| (t.to_string(), eclipsed)).collect()
    };
    for (t, eclipsed) in listed(eclipsed, true).into_iter().chain(listed(others, false)) {
        let (addr, peer) = parse_target(&t)?;
        targets.push(Target {
            addr,
            peer,
            eclipsed,
            report: TargetReport { peer_id: peer.to_string(), ..Default::default() },
            connected: false,
            hello_at: None,
            in_flight: 0,
            last_dial: Instant::now(),
        });
    }
    anyhow::ensure!(!targets.is_empty(), "no target");
    let data = if args[5] == "-" { Vec::new() } else { std::fs::read(&args[5])? };
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
    let topics = Topics::new(&genesis.mesh_id(), &cert.site);
    for t in [&topics.control, &topics.site, &topics.summaries] {
        swarm.behaviour_mut().gossipsub.subscribe(t)?;
    }
    let proto = patchmesh_node::transfer::protocol(&genesis.mesh_id());
    let mut control = swarm.behaviour().stream.new_control();
    let mut incoming = control.accept(proto.clone()).map_err(|_| anyhow::anyhow!("accept"))?;
    let counts = Arc::new(Counts::default());
    let data_mode = ["corrupt", "lie", "slow", "overrun", "big-range"].contains(&mode.as_str());
    {
        let (mode, payload, counts) = (mode.clone(), payload.clone(), counts.clone());
        tokio::spawn(async move {
            while let Some((_, s)) = incoming.next().await {
                // Mesh modes hold no payload and serve nothing (the stream is dropped).
                if data_mode {
                    tokio::spawn(serve(mode.clone(), payload.clone(), counts.clone(), s));
                }
            }
        });
    }
    for t in &targets {
        swarm.dial(t.addr.clone())?;
    }

    let sealed = Envelope::seal(
        Domain::CatalogChange,
        &patchmesh_tests::foreign_change_body(&genesis, &key, "flood", "true"),
        &[&key],
    );
    let twins = twin_records(&genesis, &key, &admission, &cert);
    let lie = lying_summary(&genesis, &key, &admission, &cert);
    let mut captured = Captured::default();
    let mut sent = 0u64;
    let mut big_range_reply: Option<String> = None;
    let mut started_streams = false;
    let (reply_tx, mut reply_rx) = tokio::sync::mpsc::channel::<String>(1);
    let start = Instant::now();
    let mut last_burst = Instant::now();
    let period = if mode == "flood" { 2 } else { 100 };
    let mut tick = tokio::time::interval(Duration::from_millis(period));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while start.elapsed() < run_for {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    let Some(t) = targets.iter_mut().find(|t| t.peer == peer_id) else { continue };
                    if t.connected {
                        continue;
                    }
                    t.connected = true;
                    t.in_flight = 0;
                    if t.report.connected_ms.is_none() {
                        t.report.connected_ms = Some(ms(start));
                    } else {
                        t.report.reconnects += 1;
                    }
                    t.hello_at = Some(Instant::now());
                    let hello = Message::Hello { mesh: genesis.mesh_id(), admission: admission.clone(), trust_version: 1 };
                    swarm.behaviour_mut().msg.send_request(&peer_id, hello.to_bytes());
                    if mode == "big-range" && t.report.reconnects == 0 {
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
                SwarmEvent::ConnectionClosed { num_established: 0, peer_id, .. } => {
                    if let Some(t) = targets.iter_mut().find(|t| t.peer == peer_id) {
                        t.connected = false;
                        t.report.disconnected_ms.get_or_insert(ms(start));
                        t.report.disconnects += 1;
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer_id), .. } => {
                    if let Some(t) = targets.iter_mut().find(|t| t.peer == peer_id) {
                        t.report.dials_failed += 1;
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Msg(ev)) => match ev {
                    request_response::Event::Message { peer, message: request_response::Message::Request { request, channel, .. }, .. } => {
                        let _ = swarm.behaviour_mut().msg.send_response(channel, Vec::new());
                        if let Ok(m) = Message::from_bytes(&request) {
                            if mode == "eclipse" {
                                sent += forward_beacon(&mut swarm, &mut targets, peer, &m);
                            }
                            captured.keep(m);
                        }
                    }
                    request_response::Event::Message { peer, message: request_response::Message::Response { .. }, .. }
                    | request_response::Event::OutboundFailure { peer, .. } => {
                        if let Some(t) = targets.iter_mut().find(|t| t.peer == peer) {
                            t.in_flight = t.in_flight.saturating_sub(1);
                        }
                    }
                    _ => {}
                },
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message_id, propagation_source, message })) => {
                    if let Ok(m) = Message::from_bytes(&message.data) {
                        if mode == "eclipse" {
                            sent += forward_beacon(&mut swarm, &mut targets, propagation_source, &m);
                        }
                        captured.keep(m);
                    }
                    swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id, &propagation_source, gossipsub::MessageAcceptance::Ignore);
                }
                _ => {}
            },
            Some(r) = reply_rx.recv() => big_range_reply = Some(r),
            _ = tick.tick() => {
                // Redial dropped targets every second (a banned attacker is refused).
                for t in targets.iter_mut().filter(|t| !t.connected && t.last_dial.elapsed() > Duration::from_secs(1)) {
                    t.last_dial = Instant::now();
                    t.report.redials += 1;
                    let _ = swarm.dial(t.addr.clone());
                }
                let n = targets.len();
                match mode.as_str() {
                    "flood" => {
                        for i in 0..n {
                            while targets[i].ready() && targets[i].in_flight < FLOOD_IN_FLIGHT {
                                let msg = Message::CatalogChange(Arc::new(forged(&sealed)));
                                swarm.behaviour_mut().msg.send_request(&targets[i].peer, msg.to_bytes());
                                targets[i].in_flight += 1;
                                targets[i].report.sent += 1;
                                sent += 1;
                            }
                        }
                        let msg = Message::CatalogChange(Arc::new(forged(&sealed)));
                        if swarm.behaviour_mut().gossipsub.publish(topics.control.clone(), msg.to_bytes()).is_ok() {
                            sent += 1;
                        }
                    }
                    "replay" if start.elapsed() < run_for / 2 && last_burst.elapsed() >= Duration::from_secs(1) => {
                        // Collecting: ask every target for all it holds, as a fresh member
                        // would (it answers with every record and summary we lack).
                        last_burst = Instant::now();
                        for t in targets.iter().filter(|t| t.ready()) {
                            for ask in [
                                Message::SiteKeys { keys: Vec::new(), reply: true },
                                Message::SummaryRanks { ranks: Vec::new(), reply: true },
                            ] {
                                swarm.behaviour_mut().msg.send_request(&t.peer, ask.to_bytes());
                            }
                        }
                    }
                    "replay" if start.elapsed() >= run_for / 2 && last_burst.elapsed() >= Duration::from_secs(2) => {
                        last_burst = Instant::now();
                        for m in captured.messages() {
                            for t in targets.iter_mut().filter(|t| t.ready()) {
                                swarm.behaviour_mut().msg.send_request(&t.peer, m.to_bytes());
                                t.report.sent += 1;
                                sent += 1;
                            }
                        }
                    }
                    "equivocate" if last_burst.elapsed() >= Duration::from_secs(2) => {
                        last_burst = Instant::now();
                        for (i, t) in targets.iter_mut().enumerate().filter(|(_, t)| t.ready()) {
                            let twin = &twins[usize::from(i >= n / 2)];
                            swarm.behaviour_mut().msg.send_request(&t.peer, twin.to_bytes());
                            t.report.sent += 1;
                            sent += 1;
                        }
                    }
                    "summary" if last_burst.elapsed() >= Duration::from_secs(2) => {
                        last_burst = Instant::now();
                        for t in targets.iter_mut().filter(|t| t.ready()) {
                            for m in &lie {
                                swarm.behaviour_mut().msg.send_request(&t.peer, m.to_bytes());
                                t.report.sent += 1;
                                sent += 1;
                            }
                        }
                    }
                    "eclipse" if last_burst.elapsed() >= Duration::from_secs(1) => {
                        last_burst = Instant::now();
                        for t in targets.iter().filter(|t| !t.eclipsed && t.ready()) {
                            swarm.behaviour_mut().msg.send_request(&t.peer, Message::BeaconsAsk.to_bytes());
                        }
                    }
                    "streams" if !started_streams && targets.iter().all(|t| t.ready()) => {
                        started_streams = true;
                        for t in &targets {
                            tokio::spawn(hold_streams(control.clone(), proto.clone(), t.peer, counts.clone()));
                            tokio::spawn(ask_missing(control.clone(), proto.clone(), t.peer, counts.clone()));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let report = AttackReport {
        peer_id: swarm.local_peer_id().to_string(),
        node: NodeId(key.public().0).to_string(),
        mode,
        have_asked: counts.have.load(Ordering::Relaxed),
        outboards_asked: counts.outboards.load(Ordering::Relaxed),
        ranges_asked: counts.ranges.load(Ordering::Relaxed),
        disconnected_ms: targets.iter().filter_map(|t| t.report.disconnected_ms).min(),
        big_range_reply,
        sent,
        captured: [
            captured.admin_sets.len(),
            captured.records.len(),
            captured.summaries.len(),
            captured.changes.len(),
        ],
        streams_opened: counts.streams_opened.load(Ordering::Relaxed),
        streams_refused: counts.streams_refused.load(Ordering::Relaxed),
        missing_asked: counts.missing_asked.load(Ordering::Relaxed),
        missing_answered: counts.missing_answered.load(Ordering::Relaxed),
        targets: targets.into_iter().map(|t| t.report).collect(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
