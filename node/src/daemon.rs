//! The daemon: a tokio driver feeding `protocol::Node` from the swarm, the clock, the control
//! socket and the inventory, and carrying out everything it asks.
//!
//! One task owns the core, the swarm and the store; nothing else touches them, so the core is
//! driven exactly as the drive contract says: one input, then drain every output. Time is the
//! wall clock in milliseconds since the Unix epoch (certificates expire in that clock) and the
//! core's RNG seed comes from the OS at start. Control connections are served by small tasks
//! that hand each request to the owner over a bounded channel and wait for the answer.
//!
//! Outputs: `Send` goes out over request-response, `Broadcast` over gossipsub, `Persist` into
//! sled before the next input is read, `GossipVerdict` back to gossipsub's validation,
//! `Penalize` lowers the peer's gossipsub application score (and disconnects it after
//! [`PENALTIES_MAX`]), `Disconnect` closes every connection to the peer.

mod install;
mod payload;

use crate::config::{LogFormat, NodeConfig};
use crate::content::{ContentStore, StoreLimits};
use crate::control::{self, Call, Request};
use crate::files;
use crate::inventory::{self, Inventory};
use crate::net::{self, Behaviour, BehaviourEvent, Topics};
use crate::store::{SledStore, Store};
use crate::transfer::{PeerView, ToDaemon, TransferConfig, Transfers};
use anyhow::{anyhow, Context};
use libp2p::futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, mdns, request_response, Multiaddr, PeerId, Swarm};
use patchmesh_protocol::catalog::CatalogEntry;
use patchmesh_protocol::crypto::{decode, encode, Ed25519, Envelope};
use patchmesh_protocol::ids::{KeyId, Millis, NodeId};
use patchmesh_protocol::node::{
    self as core, Command, Event, Input, Node, Output, RelayMode, Topic, Verdict,
};
use patchmesh_protocol::trust::AdmissionCert;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use crate::clock::now_ms;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Invalid objects a peer may send before it is disconnected.
pub const PENALTIES_MAX: u32 = 5;
/// Control requests waiting for the owner task.
const CONTROL_QUEUE: usize = 64;

/// Sets up `tracing` in the configured format.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PATCHMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

type Reply = oneshot::Sender<Value>;

struct Daemon {
    node: Node,
    swarm: Swarm<Behaviour>,
    store: SledStore,
    registry: libp2p::metrics::Registry,
    topics: Topics,
    cfg: NodeConfig,
    cert: AdmissionCert,
    mesh_name: String,
    ids: HashMap<PeerId, u64>,
    peers: HashMap<u64, PeerId>,
    next_peer: u64,
    admitted: HashSet<PeerId>,
    penalties: HashMap<PeerId, u32>,
    pending_gossip: HashMap<u64, (gossipsub::MessageId, PeerId)>,
    next_token: u64,
    inventory: Inventory,
    inventory_waiting: HashMap<request_response::OutboundRequestId, (NodeId, Reply)>,
    listen: Vec<Multiaddr>,
    started: Instant,
    /// Objects loaded from the store at start, and how many of them failed verification.
    restored: (usize, usize),
    transfers: Arc<Transfers>,
    view_tx: tokio::sync::watch::Sender<PeerView>,
    provider_queries: HashMap<kad::QueryId, patchmesh_protocol::ids::ContentId>,
    effects_tx: mpsc::Sender<patchmesh_protocol::rollout::EffectResult>,
    /// When this node first saw each rollout halted or aborted (its clock).
    rollout_stopped: BTreeMap<patchmesh_protocol::ids::RolloutId, Millis>,
    /// Protocol messages this node sent, by kind: (messages, bytes). Direct sends count once
    /// per peer; a gossip publish counts once (pubsub then forwards it to the mesh peers).
    sent_by_kind: BTreeMap<&'static str, (u64, u64)>,
    /// Set when the node must stop (a store write failed); the main loop returns it.
    fatal: Option<String>,
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    let key = files::read_key(&cfg.key).context("reading the node key")?;
    let genesis = files::read_envelope(&cfg.genesis).context("reading the genesis")?;
    let admission = files::read_envelope(&cfg.admission).context("reading the admission")?;
    let cert: AdmissionCert = admission.open("admission certificate")?;
    let g: patchmesh_protocol::trust::Genesis = genesis.open("genesis")?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    set_mode(&cfg.data_dir, 0o700)?;
    let store = SledStore::open(&cfg.data_dir.join("store"), &genesis, key.public())
        .context("opening the store")?;
    let loaded = store.load().context("loading the store")?;
    let floor = loaded
        .persisted
        .iter()
        .filter_map(|p| match p {
            core::Persist::RecordVersionFloor(v) => Some(*v),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    crate::clock::set_offset_ms(cfg.clock_offset_ms);
    let now = now_ms();
    let (effects_tx, mut effects_rx) = install::channel();
    let mut node = Node::new(
        core::Config {
            key: key.clone(),
            admission,
            genesis: genesis.clone(),
            anti_entropy_interval_ms: cfg.anti_entropy_interval_ms,
            summary_interval_ms: cfg.summary_interval_ms,
            gossip_flush_ms: cfg.gossip_flush_ms,
            summary_fanout: 4,
            seed: rand::random(),
            record_version_floor: floor,
            check: Arc::new(Ed25519),
            relay: RelayMode::Topics,
            rollout_eval_ms: cfg.rollout_eval_ms,
        },
        now,
    )
    .map_err(|e| anyhow!("starting the node: {e}"))?;
    let refused = node.restore(&loaded.persisted);
    tracing::info!(
        objects = loaded.persisted.len(),
        refused,
        unreadable = loaded.unreadable.len(),
        "store loaded and verified"
    );

    let mut registry = libp2p::metrics::Registry::default();
    let net_cfg = net::NetConfig {
        mesh: g.mesh_id(),
        mdns: cfg.mdns,
        relay_server: cfg.relay_server,
        connections_max: cfg.connections_max,
        psk: cfg.psk()?,
        idle_timeout_ms: 120_000,
    };
    let mut swarm = net::build(net::keypair_of(&key), &net_cfg, &mut registry)?;
    let content = Arc::new(
        ContentStore::open(
            &cfg.data_dir.join("content"),
            StoreLimits {
                payload_bytes_max: cfg.payload_bytes_max,
                store_bytes_max: cfg.store_bytes_max,
            },
        )
        .context("opening the content store")?,
    );
    let (view_tx, view_rx) = tokio::sync::watch::channel(PeerView::default());
    let (to_daemon, mut from_transfers) = mpsc::channel::<ToDaemon>(1024);
    let mut stream_control = swarm.behaviour().stream.new_control();
    let data_protocol = crate::transfer::protocol(&g.mesh_id());
    let incoming = stream_control
        .accept(data_protocol.clone())
        .map_err(|_| anyhow!("data protocol registered twice"))?;
    let transfers = Transfers::new(
        NodeId(key.public().0),
        cert.site.clone(),
        content,
        view_rx,
        stream_control,
        data_protocol,
        TransferConfig {
            rate_bytes_per_s: cfg.rate_bytes_per_s,
            wan_rate_bytes_per_s: cfg.wan_rate_bytes_per_s,
            params: patchmesh_protocol::transfer::plan::Params {
                min_rate_bytes_per_s: cfg.min_rate_bytes_per_s,
                ..Default::default()
            },
        },
        to_daemon,
    );
    tokio::spawn(transfers.clone().serve(incoming));
    let topics = Topics::new(&g.mesh_id(), &cert.site);
    for t in [&topics.control, &topics.site, &topics.summaries] {
        swarm.behaviour_mut().gossipsub.subscribe(t).map_err(|e| anyhow!("subscribe: {e}"))?;
    }
    for addr in &cfg.listen {
        let addr: Multiaddr = addr.parse()?;
        if net_cfg.psk.is_some()
            && addr.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1))
        {
            tracing::warn!(%addr, "QUIC cannot carry the private-network handshake; not listening on it");
            continue;
        }
        swarm.listen_on(addr.clone()).with_context(|| format!("listening on {addr}"))?;
    }
    for addr in &cfg.bootstrap {
        let addr: Multiaddr = addr.parse()?;
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "bootstrap dial failed");
        }
    }

    let inventory = read_inventory(&cfg.inventory_root);
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<(Request, Reply)>(CONTROL_QUEUE);
    let token = control_token(&cfg.token_path())?;
    let socket = cfg.control_socket();
    let listener = bind_control(&socket)?;
    tokio::spawn(serve_control(listener, token, ctl_tx));

    let mut d = Daemon {
        node,
        swarm,
        store,
        registry,
        topics,
        mesh_name: g.mesh_name.clone(),
        cert,
        cfg,
        ids: HashMap::new(),
        peers: HashMap::new(),
        next_peer: 1,
        admitted: HashSet::new(),
        penalties: HashMap::new(),
        pending_gossip: HashMap::new(),
        next_token: 1,
        inventory,
        inventory_waiting: HashMap::new(),
        listen: Vec::new(),
        started: Instant::now(),
        restored: (loaded.persisted.len(), refused + loaded.unreadable.len()),
        transfers,
        view_tx,
        provider_queries: HashMap::new(),
        effects_tx,
        rollout_stopped: BTreeMap::new(),
        sent_by_kind: BTreeMap::new(),
        fatal: None,
    };
    tracing::info!(node = %d.node.id(), peer = %d.swarm.local_peer_id(), site = %d.cert.site, "node started");
    // Start the core, then give it the real inventory if its record does not carry it yet.
    d.input(Input::Start);
    let summary = d.inventory.summary();
    let held = d.node.site().records().get(&d.node.id()).map(|r| r.record().inventory.clone());
    if held.as_ref() != Some(&summary) {
        d.input(Input::Command(Command::UpdateRecord { inventory: summary }));
    }

    d.set_facts();
    d.provide_all();
    d.on_catalog();
    let mut inventory_tick =
        tokio::time::interval(Duration::from_millis(d.cfg.inventory_interval_ms.max(1000)));
    inventory_tick.tick().await;
    let mut site_tick = tokio::time::interval(Duration::from_secs(5));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        if let Some(why) = d.fatal.take() {
            let _ = std::fs::remove_file(&socket);
            anyhow::bail!(why);
        }
        let deadline = d.deadline();
        tokio::select! {
            ev = d.swarm.select_next_some() => d.on_swarm(ev),
            () = tokio::time::sleep_until(deadline) => d.input(Input::Timer),
            Some((req, reply)) = ctl_rx.recv() => d.on_control(req, reply),
            Some(cmd) = from_transfers.recv() => d.on_transfer(cmd),
            Some(result) = effects_rx.recv() => d.on_effect_done(result),
            _ = inventory_tick.tick() => d.refresh_inventory(),
            _ = site_tick.tick() => d.connect_site(),
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    tracing::info!("shutting down");
    d.store.flush()?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn count_sent(by_kind: &mut BTreeMap<&'static str, (u64, u64)>, kind: &'static str, bytes: usize) {
    let e = by_kind.entry(kind).or_default();
    e.0 += 1;
    e.1 += bytes as u64;
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn read_inventory(root: &Path) -> Inventory {
    match inventory::collect(&inventory::Sources { root }) {
        Ok(inv) => inv,
        Err(e) => {
            tracing::warn!(error = %e, "inventory could not be read; reporting none");
            Inventory {
                hostname: "unknown".into(),
                os: "unknown".into(),
                kernel: "unknown".into(),
                arch: std::env::consts::ARCH.into(),
                cpus: 1,
                memory_bytes: 0,
                packages: Vec::new(),
            }
        }
    }
}

/// The control token: created once (random, mode 0600) and reused.
fn control_token(path: &Path) -> anyhow::Result<String> {
    if path.exists() {
        return Ok(control::read_token(path)?);
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    Ok(token)
}

fn bind_control(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if socket.exists() {
        // A socket left by a killed node is removed; a live one means a node already runs here.
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            anyhow::bail!("a node is already running with control socket {}", socket.display());
        }
        std::fs::remove_file(socket)?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    set_mode(socket, 0o600)?;
    Ok(listener)
}

async fn serve_control(
    listener: tokio::net::UnixListener,
    token: String,
    tx: mpsc::Sender<(Request, Reply)>,
) {
    let token = Arc::new(token);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (token, tx) = (token.clone(), tx.clone());
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
            let (read, mut write) = stream.into_split();
            let mut reader =
                tokio::io::BufReader::new(read.take(control::REQUEST_BYTES_MAX as u64));
            let mut line = String::new();
            let answer =
                match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
                    .await
                {
                    Ok(Ok(_)) => match serde_json::from_str::<Call>(&line) {
                        Ok(call) if call.token.as_bytes() == token.as_bytes() => {
                            let (reply_tx, reply_rx) = oneshot::channel();
                            if tx.send((call.request, reply_tx)).await.is_err() {
                                control::refused("the node is shutting down")
                            } else {
                                match tokio::time::timeout(Duration::from_secs(60), reply_rx).await
                                {
                                    Ok(Ok(v)) => v,
                                    _ => control::refused("the node did not answer in time"),
                                }
                            }
                        }
                        Ok(_) => control::refused("wrong control token"),
                        Err(e) => control::refused(format!("bad request: {e}")),
                    },
                    _ => control::refused("no request read"),
                };
            let mut out = answer.to_string().into_bytes();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

impl Daemon {
    fn deadline(&self) -> tokio::time::Instant {
        let now = now_ms();
        let wait = self.node.poll_timeout().map_or(60_000, |t| t.0.saturating_sub(now.0));
        tokio::time::Instant::now() + Duration::from_millis(wait.min(60_000))
    }

    fn input(&mut self, input: Input) {
        self.node.handle_input(now_ms(), input);
        while let Some(out) = self.node.poll_output() {
            // After a failed write, the rest is dropped: it may depend on what was not stored.
            if self.fatal.is_none() {
                self.output(out);
            }
        }
        // The core answers every gossip input at once; should a verdict ever be lost (a full
        // output queue), the message is ignored rather than left pending in gossipsub.
        for (_, (id, source)) in self.pending_gossip.drain() {
            self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                &id,
                &source,
                gossipsub::MessageAcceptance::Ignore,
            );
        }
    }

    fn output(&mut self, out: Output) {
        match out {
            Output::Send { peer, msg } => {
                if let Some(p) = self.peers.get(&peer.0) {
                    let bytes = msg.to_bytes();
                    count_sent(&mut self.sent_by_kind, msg.kind(), bytes.len());
                    self.swarm.behaviour_mut().msg.send_request(p, bytes);
                }
            }
            Output::Broadcast { topic, msg } => {
                let t = match topic {
                    Topic::Control => self.topics.control.clone(),
                    Topic::Site(_) => self.topics.site.clone(),
                    Topic::Summaries => self.topics.summaries.clone(),
                };
                let bytes = msg.to_bytes();
                count_sent(&mut self.sent_by_kind, msg.kind(), bytes.len());
                match self.swarm.behaviour_mut().gossipsub.publish(t, bytes) {
                    Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
                    // No peer yet: anti-entropy delivers it when peers come.
                    Err(e) => tracing::debug!(error = %e, "publish"),
                }
            }
            Output::GossipVerdict { token, verdict } => {
                if let Some((id, source)) = self.pending_gossip.remove(&token) {
                    let acceptance = match verdict {
                        Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                        Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                        Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                    };
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(&id, &source, acceptance);
                }
            }
            Output::Persist(p) => {
                if let Err(e) = self.store.persist(&p) {
                    // Losing durability silently would break the floors: nothing that depends
                    // on this write may go out, and the node stops.
                    tracing::error!(error = %e, "store write failed; stopping");
                    self.fatal = Some(format!("the store could not be written ({e}); the node stopped so that nothing it sends depends on a lost write"));
                    return;
                }
                self.crash_hook(&p);
            }
            Output::Disconnect { peer } => {
                if let Some(p) = self.peers.get(&peer.0).copied() {
                    tracing::info!(peer = %p, "disconnecting peer");
                    let _ = self.swarm.disconnect_peer_id(p);
                }
            }
            Output::Penalize { peer } => {
                if let Some(p) = self.peers.get(&peer.0).copied() {
                    self.penalize_peer(p);
                }
            }
            Output::Event(ev) => match ev {
                Event::PeerAdmitted { peer, node, site } => {
                    if let Some(p) = self.peers.get(&peer.0).copied() {
                        tracing::info!(peer = %p, %node, %site, "peer admitted");
                        self.admitted.insert(p);
                        let score = self
                            .penalties
                            .get(&p)
                            .map_or(0.0, |n| net::PENALTY_SCORE * f64::from(*n));
                        self.swarm.behaviour_mut().gossipsub.set_application_score(&p, score);
                        self.publish_view();
                    }
                }
                Event::CatalogChanged { state } => {
                    tracing::info!(%state, "catalog changed");
                    self.on_catalog();
                }
                Event::Rejected { peer, reason } => {
                    let p = peer.and_then(|p| self.peers.get(&p.0).copied());
                    tracing::warn!(peer = ?p, %reason, "refused");
                }
                Event::Rollout(ev) => self.on_rollout_event(ev),
            },
            Output::Effect(effect) => self.on_effect(effect),
        }
    }

    /// Lowers a peer's score; after [`PENALTIES_MAX`] offences it is disconnected.
    fn penalize_peer(&mut self, p: PeerId) {
        let n = self.penalties.entry(p).or_default();
        *n += 1;
        let score = net::PENALTY_SCORE * f64::from(*n);
        let n = *n;
        self.swarm.behaviour_mut().gossipsub.set_application_score(&p, score);
        if n >= PENALTIES_MAX {
            tracing::warn!(peer = %p, "too many offences; disconnecting");
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.listen.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => self.listen.retain(|a| *a != address),
            SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, .. } => {
                if num_established.get() > 1 {
                    return;
                }
                let Some(node) = net::node_of(&peer_id) else {
                    tracing::warn!(peer = %peer_id, "peer key is not ed25519; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                };
                let id = self.next_peer;
                self.next_peer += 1;
                self.ids.insert(peer_id, id);
                self.peers.insert(id, peer_id);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .set_application_score(&peer_id, net::UNADMITTED_SCORE);
                if endpoint.is_dialer() {
                    let addr = endpoint.get_remote_address().clone();
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                self.input(Input::Connected { peer: core::PeerId(id), node });
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                if num_established > 0 {
                    return;
                }
                self.admitted.remove(&peer_id);
                if let Some(id) = self.ids.remove(&peer_id) {
                    self.peers.remove(&id);
                    self.input(Input::Disconnected { peer: core::PeerId(id) });
                    self.publish_view();
                }
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour(ev),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let Some(id) = self.ids.get(&propagation_source).copied() else {
                    self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        gossipsub::MessageAcceptance::Ignore,
                    );
                    return;
                };
                let token = self.next_token;
                self.next_token += 1;
                self.pending_gossip.insert(token, (message_id, propagation_source));
                self.input(Input::Gossip { peer: core::PeerId(id), token, bytes: message.data });
            }
            BehaviourEvent::Msg(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request { request, channel, .. } => {
                        let _ = self.swarm.behaviour_mut().msg.send_response(channel, Vec::new());
                        if let Some(id) = self.ids.get(&peer).copied() {
                            self.input(Input::Bytes { peer: core::PeerId(id), bytes: request });
                        }
                    }
                    request_response::Message::Response { .. } => {}
                }
            }
            BehaviourEvent::Inventory(request_response::Event::Message {
                peer, message, ..
            }) => {
                match message {
                    request_response::Message::Request { channel, .. } => {
                        // The full list is for admitted peers only.
                        let body = if self.admitted.contains(&peer) {
                            serde_json::to_vec(&self.inventory).unwrap_or_default()
                        } else {
                            Vec::new()
                        };
                        let _ = self.swarm.behaviour_mut().inventory.send_response(channel, body);
                    }
                    request_response::Message::Response { request_id, response } => {
                        if let Some((node, reply)) = self.inventory_waiting.remove(&request_id) {
                            let _ = reply.send(self.remote_inventory(node, &response));
                        }
                    }
                }
            }
            BehaviourEvent::Inventory(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                if let Some((node, reply)) = self.inventory_waiting.remove(&request_id) {
                    let _ = reply.send(control::refused(format!(
                        "fetching the inventory of {node}: {error}"
                    )));
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. })
                if self.ids.len() < self.cfg.peers_target && !self.ids.contains_key(&peer) =>
            {
                let _ = self.swarm.dial(peer);
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => {
                if let kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) = result
                {
                    self.on_providers(id, providers.into_iter().collect());
                }
                if step.last {
                    self.query_done(id);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if self.ids.len() < self.cfg.peers_target && !self.ids.contains_key(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            _ => {}
        }
    }

    fn refresh_inventory(&mut self) {
        let inv = read_inventory(&self.cfg.inventory_root);
        let summary = inv.summary();
        let changed = summary != self.inventory.summary();
        self.inventory = inv;
        if changed {
            tracing::info!(
                packages = summary.package_count,
                "inventory changed; re-signing record"
            );
            self.input(Input::Command(Command::UpdateRecord { inventory: summary }));
            self.set_facts();
        }
    }

    /// Tells the core what rollout selectors and windows read: OS, packages, time zone.
    fn set_facts(&mut self) {
        let tz = match &self.cfg.time_zone {
            Some(name) => jiff::tz::TimeZone::get(name).unwrap_or_else(|e| {
                tracing::warn!(zone = %name, error = %e, "unknown time zone; using UTC");
                jiff::tz::TimeZone::UTC
            }),
            None => jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC),
        };
        let packages = self
            .inventory
            .packages
            .iter()
            .filter(|p| p.status == "installed")
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect();
        let facts = patchmesh_protocol::rollout::Facts { os: self.inventory.os.clone(), packages, tz };
        self.input(Input::Command(Command::SetFacts(facts)));
    }

    fn remote_inventory(&self, node: NodeId, bytes: &[u8]) -> Value {
        let inv: Inventory = match serde_json::from_slice(bytes) {
            Ok(inv) => inv,
            Err(e) => return control::refused(format!("node {node} sent no valid inventory: {e}")),
        };
        let signed = self.node.site().records().get(&node).map(|r| r.record().inventory.clone());
        let verified = signed.as_ref().map(|s| s.packages_digest == inv.summary().packages_digest);
        if verified == Some(false) {
            return control::refused(format!(
                "node {node} sent an inventory that does not match the digest in its signed record"
            ));
        }
        control::ok_view(&control::InventoryView {
            node: node.to_string(),
            verified_against_signed_record: verified.unwrap_or(false),
            inventory: inv,
        })
    }

    fn on_control(&mut self, req: Request, reply: Reply) {
        let answer = match req {
            Request::Status => control::ok_view(&self.status()),
            Request::Peers => control::ok_view(&self.peers_view()),
            Request::Catalog => control::ok_view(&self.catalog_view()),
            Request::Inventory { node: None } => control::ok_view(&control::InventoryView {
                node: self.node.id().to_string(),
                verified_against_signed_record: true,
                inventory: self.inventory.clone(),
            }),
            Request::Inventory { node: Some(hex_id) } => {
                let node = match parse_id(&hex_id) {
                    Ok(n) => NodeId(n),
                    Err(e) => return send(reply, control::refused(e)),
                };
                if node == self.node.id() {
                    return self.on_control(Request::Inventory { node: None }, reply);
                }
                let Some(peer) = net::peer_of(&node) else {
                    return send(reply, control::refused("not a valid node key"));
                };
                let id = self.swarm.behaviour_mut().inventory.send_request(&peer, Vec::new());
                self.inventory_waiting.insert(id, (node, reply));
                return;
            }
            Request::AdminState => {
                let trust = self.node.trust();
                let latest = trust.chain().last().map(|e| hex::encode(encode(e)));
                let history: BTreeMap<String, BTreeMap<String, u64>> = trust
                    .admins()
                    .admins
                    .iter()
                    .map(|k| {
                        let h = self.node.catalog().history_of(k);
                        (k.to_string(), h.into_iter().map(|(a, s)| (hex::encode(a), s)).collect())
                    })
                    .collect();
                control::ok_view(&control::AdminStateView {
                    genesis: hex::encode(encode(trust.genesis_envelope())),
                    latest_admin_set: latest,
                    version: trust.version(),
                    admins: trust.admins().admins.iter().map(|k| k.to_string()).collect(),
                    history,
                })
            }
            Request::Prepare { admin, edits } => self.prepare(&admin, &edits),
            Request::Submit { envelope } => self.submit(&envelope, false),
            Request::AdminSet { envelope } => self.submit(&envelope, true),
            r @ (Request::Import { .. }
            | Request::Fetch { .. }
            | Request::Content { .. }
            | Request::ContentList
            | Request::ContentGc { .. }) => self.content_control(r),
            Request::Rollouts => control::ok_view(&self.rollouts_view()),
        };
        send(reply, answer);
    }

    fn prepare(&mut self, admin: &str, edits: &str) -> Value {
        let admin = match parse_id(admin) {
            Ok(k) => KeyId(k),
            Err(e) => return control::refused(e),
        };
        let edits: Vec<(String, Option<CatalogEntry>)> =
            match hex::decode(edits).map_err(|e| e.to_string()).and_then(|b| {
                decode("edits", &b, control::REQUEST_BYTES_MAX).map_err(|e| e.to_string())
            }) {
                Ok(e) => e,
                Err(e) => return control::refused(format!("bad edits: {e}")),
            };
        let session: [u8; 8] = rand::random();
        match self.node.catalog().prepare(&admin, session, now_ms(), self.node.trust(), &edits) {
            Ok(body) => control::ok_view(&control::PreparedView { body: hex::encode(encode(&body)) }),
            Err(e) => control::refused(e),
        }
    }

    fn submit(&mut self, envelope: &str, admin_set: bool) -> Value {
        let env: Envelope = match hex::decode(envelope).map_err(|e| e.to_string()).and_then(|b| {
            decode("envelope", &b, control::REQUEST_BYTES_MAX).map_err(|e| e.to_string())
        }) {
            Ok(e) => e,
            Err(e) => return control::refused(format!("bad envelope: {e}")),
        };
        let mut reason = None;
        self.node.handle_input(
            now_ms(),
            Input::Command(if admin_set {
                Command::AdminSet(env.clone())
            } else {
                Command::Submit(env.clone())
            }),
        );
        while let Some(out) = self.node.poll_output() {
            if let Output::Event(Event::Rejected { peer: None, reason: r }) = &out {
                reason = Some(r.clone());
            }
            self.output(out);
        }
        match reason {
            Some(r) => control::refused(format!("refused: {r}")),
            None => {
                if let Err(e) = self.store.flush() {
                    return control::refused(format!("stored but not flushed: {e}"));
                }
                control::ok_view(&control::SubmittedView {
                    id: env.id().to_string(),
                    catalog_state: self.node.catalog().state_hash().to_string(),
                    trust_version: self.node.trust().version(),
                })
            }
        }
    }

    fn status(&mut self) -> control::StatusView {
        let (sent, received) = net::bandwidth(&self.registry);
        let local = *self.swarm.local_peer_id();
        let listen: Vec<String> = self
            .listen
            .iter()
            .map(|a| a.clone().with_p2p(local).map_or_else(|a| a.to_string(), |a| a.to_string()))
            .collect();
        let stats = self.node.stats().clone();
        let state_hash = self.node.state_hash();
        let gossip = &self.swarm.behaviour().gossipsub;
        control::StatusView {
            node: self.node.id().to_string(),
            peer_id: local.to_string(),
            site: self.cert.site.to_string(),
            labels: self.cert.labels.clone(),
            mesh: self.mesh_name.clone(),
            mesh_id: self.node.trust().mesh().to_string(),
            trust_version: self.node.trust().version(),
            catalog_changes: self.node.catalog().len(),
            catalog_state: self.node.catalog().state_hash().to_string(),
            state_hash: state_hash.to_string(),
            site_records: self.node.site().records().len(),
            site_summaries: self.node.summaries().all().len(),
            peers_connected: self.ids.len(),
            peers_admitted: self.admitted.len(),
            gossip_mesh: control::GossipMeshView {
                control: gossip.mesh_peers(&self.topics.control.hash()).count(),
                site: gossip.mesh_peers(&self.topics.site.hash()).count(),
                summaries: gossip.mesh_peers(&self.topics.summaries.hash()).count(),
            },
            listen,
            bytes_sent: sent,
            bytes_received: received,
            messages_sent: self
                .sent_by_kind
                .iter()
                .map(|(k, (n, b))| (k.to_string(), control::MessageCount { messages: *n, bytes: *b }))
                .collect(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            accepted: stats.accepted,
            rejected: stats.rejected.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            unadmitted_dropped: stats.unadmitted_dropped,
            pid: std::process::id(),
            restored_objects: self.restored.0,
            restore_refused: self.restored.1,
            payloads_held: self.transfers.store().list().iter().filter(|c| c.complete).count(),
            payload_bytes_held: self.transfers.store().held_bytes_total(),
        }
    }

    fn peers_view(&self) -> Vec<control::PeerView> {
        let admitted: BTreeMap<NodeId, String> =
            self.node.admitted_peers().map(|(_, n, s)| (n, s.to_string())).collect();
        let mut out: Vec<control::PeerView> = self
            .ids
            .keys()
            .map(|p| {
                let node = net::node_of(p);
                let site = node.and_then(|n| admitted.get(&n).cloned());
                control::PeerView {
                    peer_id: p.to_string(),
                    node: node.map(|n| n.to_string()),
                    admitted: site.is_some(),
                    site,
                    penalties: self.penalties.get(p).copied().unwrap_or(0),
                    score: self.swarm.behaviour().gossipsub.peer_score(p),
                }
            })
            .collect();
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        out
    }

    fn catalog_view(&self) -> control::CatalogView {
        use control::CatalogEntryView as E;
        let entries = self
            .node
            .catalog()
            .entries()
            .into_iter()
            .map(|(key, entry)| {
                let entry = match &entry {
                    CatalogEntry::Patch(p) => E::Patch {
                        name: p.name.clone(),
                        version: p.version.clone(),
                        content_id: p.content_id.to_string(),
                        size_bytes: p.size_bytes,
                        executor: p.executor.kind.clone(),
                    },
                    CatalogEntry::Rollout(r) => E::Rollout {
                        id: r.id.to_string(),
                        content_id: r.content_id.to_string(),
                        rings: r
                            .rings
                            .iter()
                            .map(|g| control::RingBrief { name: g.name.clone(), percent: g.percent })
                            .collect(),
                    },
                    CatalogEntry::Command(c) => E::Command {
                        rollout: c.rollout.to_string(),
                        action: format!("{:?}", c.action).to_lowercase(),
                        admin: c.admin.to_string(),
                    },
                };
                control::CatalogItemView { key, entry }
            })
            .collect();
        control::CatalogView {
            catalog_state: self.node.catalog().state_hash().to_string(),
            changes: self.node.catalog().len(),
            entries,
        }
    }
}

fn send(reply: Reply, value: Value) {
    let _ = reply.send(value);
}

fn parse_id(hex_id: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_id.trim(), &mut out)
        .map_err(|e| format!("{hex_id:?} is not a 64-character hex id: {e}"))?;
    Ok(out)
}
