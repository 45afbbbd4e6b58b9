//! The daemon: a tokio driver feeding `protocol::Node` from the swarm, the clock, the control
//! socket and the inventory, and carrying out everything it asks.
//!
//! One task owns the core, the swarm and the store; nothing else touches them, so the core is
//! driven exactly as the drive contract says: one input, then drain every output. Time is the
//! wall clock in milliseconds since the Unix epoch (certificates expire in that clock) and the
//! core's RNG seed comes from the OS at start. Control connections are served by small tasks
//! that hand each request to the owner over a bounded channel and wait for the answer.
//!
//! Files by role: this one holds the daemon's state, its start and its loop, and carries out
//! the core's outputs; `swarm` turns swarm events into inputs; `requests` serves the control
//! socket; `payload` and `install` drive transfers and install steps; `facts` reads the
//! machine.
//!
//! Outputs: `Send` goes out over request-response, `Broadcast` over gossipsub, `Persist` into
//! sled before the next input is read, `GossipVerdict` back to gossipsub's validation,
//! `Penalize` lowers the peer's gossipsub application score (and disconnects it after
//! [`PENALTIES_MAX`]), `Disconnect` closes every connection to the peer.

mod audit;
mod discovery;
mod facts;
mod install;
mod integrations;
mod intel;
mod notice;
mod payload;
mod report;
mod requests;
mod swarm;

use facts::read_inventory;
use requests::{bind_control, control_token, parse_id, serve_control};

use crate::clock::now_ms;
use crate::config::{LogFormat, NodeConfig};
use crate::content::{ContentStore, StoreLimits};
use crate::control::{self, Call, Request};
use crate::files;
use crate::inventory::{self, Inventory};
use crate::net::{self, Behaviour, BehaviourEvent, Topics};
use crate::store::{SledStore, Store};
use crate::transfer::{PeerView, ToDaemon, TransferConfig, Transfers};
use libp2p::futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{
    gossipsub, identify, kad, mdns, ping, relay, request_response, Multiaddr, PeerId, Swarm,
};
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
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Invalid objects a peer may send before it is disconnected and banned.
pub const PENALTIES_MAX: u32 = 5;
/// The first ban of a peer; each further ban doubles it. Honest peers are never penalised for
/// being slow or congested, only for objects that fail verification, so a ban costs an honest
/// node nothing; a peer that keeps sending invalid objects reaches [`BAN_MAX`] after six bans.
pub const BAN_FIRST: Duration = Duration::from_secs(60);
/// The longest ban.
pub const BAN_MAX: Duration = Duration::from_secs(3600);
/// Control requests waiting for the owner task.
const CONTROL_QUEUE: usize = 64;
/// How long a peer's session outlives its last connection when that was a relayed one. The
/// two ends of a handover from relayed to direct (hole punching) see the connections open and
/// close at different moments: the end that closes the relayed connection holds the direct
/// one already, while the other end may be without any connection for a few milliseconds.
/// Ending the session there and then leaves the two ends disagreeing: one says hello again
/// while the other's session never ended (the core answers such a hello, but anything the
/// other end sent before the answer arrives gets it dropped for talking before its hello).
/// A peer that connects again within the grace keeps its session. The grace is not for a
/// direct connection (a peer that closes its last one ended the session: it shut down or
/// disconnected this node) nor for a peer this node disconnects on purpose.
pub(super) const SESSION_GRACE: Duration = Duration::from_secs(2);

/// Sets up `tracing` in the configured format.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PATCHMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn"));
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
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
    /// The node's own metric families (in `registry`).
    metrics: crate::metrics::Collector,
    /// The dashboard's shared state, when it serves one.
    dashboard: Option<Arc<crate::dashboard::Shared>>,
    topics: Topics,
    cfg: NodeConfig,
    cert: AdmissionCert,
    mesh_name: String,
    ids: HashMap<PeerId, u64>,
    peers: HashMap<u64, PeerId>,
    next_peer: u64,
    /// Incoming connections whose transport handshake failed (another mesh's node, a stranger).
    handshakes_refused: u64,
    admitted: HashSet<PeerId>,
    penalties: HashMap<PeerId, u32>,
    /// How busy this machine is per hour of the week (its quiet hours come from it).
    activity: patchmesh_protocol::rollout::activity::ActivityHistogram,
    /// The last ping round trip to each connected peer.
    rtt: HashMap<PeerId, Duration>,
    /// Peers banned after [`PENALTIES_MAX`] offences: until when, and how many bans so far
    /// (each doubles the last, from [`BAN_FIRST`] up to [`BAN_MAX`]).
    bans: HashMap<PeerId, (Instant, u32)>,
    /// Connections denied because the peer was banned.
    banned_refused: u64,
    /// Open connections per peer: remote address, and whether it runs through a relay.
    conns: HashMap<PeerId, BTreeMap<libp2p::swarm::ConnectionId, (Multiaddr, bool)>>,
    /// Relayed connections upgraded to direct ones by hole punching, and attempts that failed.
    hole_punches: (u64, u64),
    /// When this node, with fewer peers than it wants, next runs a DHT bootstrap.
    discover: discovery::Discovery<kad::QueryId>,
    /// Configured relays: address, and the listener through it once reserved.
    relays: HashMap<PeerId, (Multiaddr, Option<libp2p::core::transport::ListenerId>)>,
    /// Peers without a connection whose session ends at the given time ([`SESSION_GRACE`]).
    parting: HashMap<PeerId, Instant>,
    /// Peers this node is disconnecting on purpose: their session ends with their last
    /// connection, without a grace.
    dropping: HashSet<PeerId>,
    pending_gossip: HashMap<u64, (gossipsub::MessageId, PeerId)>,
    next_token: u64,
    inventory: Inventory,
    /// Free space where payloads are kept, rounded (what the record carries).
    free_disk: Option<u64>,
    inventory_waiting: HashMap<request_response::OutboundRequestId, (NodeId, Reply)>,
    /// Findings (`None`) or one CVE's advisories (`Some`) asked of another node.
    findings_waiting: HashMap<request_response::OutboundRequestId, (NodeId, Reply, Option<String>)>,
    /// Audit exports asked of another node.
    audit_waiting: HashMap<request_response::OutboundRequestId, (NodeId, Reply)>,
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
    /// The intel bundle in use and this machine's findings.
    intel: Option<intel::IntelState>,
    /// The bundle being fetched or read.
    intel_loading: Option<patchmesh_protocol::ids::ContentId>,
    intel_tx: mpsc::Sender<intel::Loaded>,
    /// Advance notices and deferrals (with `[notice]`).
    notices: Option<Arc<notice::Notices>>,
    /// The audit log and its bookkeeping.
    audit: audit::AuditState,
    /// This node's admission envelope (named in audit exports).
    admission: Envelope,
    /// When each finding here opened and closed.
    history: patchmesh_protocol::intel::history::History,
    /// Events for the integration sinks.
    integrations: integrations::IntegrationsState,
    /// Test events queued (test builds only).
    test_events_done: bool,
}

/// Opens and loads the store; returns it, what it held, and the record floor it kept.
fn open_store(
    cfg: &NodeConfig,
    genesis: &Envelope,
    key: &patchmesh_protocol::crypto::SecretKey,
) -> Result<(SledStore, crate::store::Loaded, u64), DaemonError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(io(format!("creating {}", cfg.data_dir.display())))?;
    set_mode(&cfg.data_dir, 0o700)?;
    let store_path = cfg.data_dir.join("store");
    let store =
        SledStore::open(&store_path, genesis, key.public()).map_err(|source| match source {
            crate::store::StoreError::Sled(_) => {
                DaemonError::StoreDamaged { path: store_path.display().to_string(), source }
            }
            other => DaemonError::Store(other),
        })?;
    let loaded = store.load().map_err(DaemonError::Store)?;
    let floor = loaded
        .persisted
        .iter()
        .filter_map(|p| match p {
            core::Persist::RecordVersionFloor(v) => Some(*v),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    Ok((store, loaded, floor))
}

/// The payload service, the peer view it reads, and what it asks of the daemon.
type TransferParts =
    (Arc<Transfers>, tokio::sync::watch::Sender<PeerView>, mpsc::Receiver<ToDaemon>);

/// The payload service: serves the data protocol and runs downloads. Returns it, the peer view
/// it reads, and what it asks of the daemon.
fn start_transfers(
    swarm: &mut Swarm<Behaviour>,
    cfg: &NodeConfig,
    key: &patchmesh_protocol::crypto::SecretKey,
    cert: &AdmissionCert,
    content: Arc<ContentStore>,
    mesh: &patchmesh_protocol::ids::MeshId,
) -> Result<TransferParts, DaemonError> {
    let (view_tx, view_rx) = tokio::sync::watch::channel(PeerView::default());
    let (to_daemon, from_transfers) = mpsc::channel::<ToDaemon>(1024);
    let mut stream_control = swarm.behaviour().stream.new_control();
    let data_protocol = crate::transfer::protocol(mesh);
    let incoming = stream_control
        .accept(data_protocol.clone())
        .map_err(|_| DaemonError::Setup("the data protocol was registered twice".into()))?;
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
    Ok((transfers, view_tx, from_transfers))
}

/// Subscribes to the mesh's topics, listens and dials the bootstrap peers.
fn join(
    swarm: &mut Swarm<Behaviour>,
    cfg: &NodeConfig,
    topics: &Topics,
    psk: bool,
) -> Result<(), DaemonError> {
    for t in [&topics.control, &topics.site, &topics.summaries] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(t)
            .map_err(|e| DaemonError::Setup(format!("subscribing to {t}: {e}")))?;
    }
    for addr in &cfg.listen {
        let addr: Multiaddr = parse_addr(addr)?;
        if psk && addr.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1)) {
            tracing::warn!(%addr, "QUIC cannot carry the private-network handshake; not listening on it");
            continue;
        }
        swarm
            .listen_on(addr.clone())
            .map_err(|e| DaemonError::Setup(format!("listening on {addr}: {e}")))?;
    }
    for addr in &cfg.bootstrap {
        let addr: Multiaddr = parse_addr(addr)?;
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "bootstrap dial failed");
        }
    }
    for addr in &cfg.external_addresses {
        swarm.add_external_address(parse_addr(addr)?);
    }
    // Behind a NAT: the relays are dialled here; once connected to one, the node reserves a
    // slot on it and listens through it (`Daemon::listen_through_relay`).
    for addr in relays(cfg)?.into_values() {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "relay dial failed");
        }
    }

    Ok(())
}

/// The configured relays by peer id (each address must end in `/p2p/<peer id>`).
fn relays(cfg: &NodeConfig) -> Result<HashMap<PeerId, Multiaddr>, DaemonError> {
    let mut out = HashMap::new();
    for addr in &cfg.relays {
        let relay = parse_addr(addr)?;
        let Some(libp2p::multiaddr::Protocol::P2p(peer)) = relay.iter().last() else {
            return Err(DaemonError::Setup(format!("relay {addr} does not end in /p2p/<peer id>")));
        };
        out.insert(peer, relay);
    }
    Ok(out)
}

impl Daemon {
    /// Behind a NAT, once connected to a configured relay: reserve a slot on it and listen
    /// through it, so peers can reach this node relayed; DCUtR then upgrades such connections
    /// to direct ones where the NATs allow hole punching. (Listening before the connection is
    /// up races the bootstrap dial to the same relay and loses the reservation.)
    pub(super) fn listen_through_relay(&mut self, peer: PeerId) {
        let Some((addr, listener)) = self.relays.get_mut(&peer) else { return };
        if listener.is_some() {
            return;
        }
        let circuit = addr.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(id) => *listener = Some(id),
            Err(e) => tracing::warn!(%circuit, error = %e, "cannot listen through the relay"),
        }
    }

    /// Runs a DHT bootstrap (a lookup of this node's own key, which also announces it) when
    /// the node has fewer peers than it wants and [`discovery::Discovery`] says it is due.
    pub(super) fn discover(&mut self) {
        let now = Instant::now();
        if !self.discover.due(now, self.ids.len(), self.cfg.peers_target) {
            return;
        }
        match self.swarm.behaviour_mut().kad.bootstrap() {
            Ok(q) => self.discover.started(now, q),
            Err(e) => {
                tracing::debug!(error = %e, "no DHT bootstrap");
                self.discover.failed(now);
            }
        }
    }

    /// Look again soon (a relay reservation just made this node reachable).
    pub(super) fn discover_soon(&mut self) {
        self.discover.soon(Instant::now());
        self.discover();
    }

    /// Closes every connection to `peer`; its session ends with the last one.
    pub(super) fn disconnect(&mut self, peer: PeerId) {
        self.dropping.insert(peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// The peer is gone: the core is told, and its admission and id are forgotten.
    pub(super) fn end_session(&mut self, peer: PeerId) {
        self.parting.remove(&peer);
        self.admitted.remove(&peer);
        if let Some(id) = self.ids.remove(&peer) {
            self.peers.remove(&id);
            self.discover.peer_lost(Instant::now());
            self.input(Input::Disconnected { peer: core::PeerId(id) });
            self.publish_view();
        }
    }

    /// When the first parted session's grace ends (far off when none is parting).
    fn parting_deadline(&self) -> tokio::time::Instant {
        let first = self.parting.values().min().copied();
        first.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)).into()
    }

    /// Ends the sessions of peers that did not connect again within [`SESSION_GRACE`].
    fn end_parted_sessions(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> =
            self.parting.iter().filter(|(_, at)| **at <= now).map(|(p, _)| *p).collect();
        for peer in due {
            self.end_session(peer);
        }
    }

    /// Once a direct connection to `peer` is up (hole punching succeeded, or a direct dial),
    /// its relayed connections are closed: streams would otherwise keep opening on them and
    /// every byte would cross the relay twice.
    pub(super) fn close_relayed(&mut self, peer: PeerId) {
        let relayed: Vec<_> = self
            .conns
            .get(&peer)
            .into_iter()
            .flat_map(|c| c.iter())
            .filter(|(_, (_, relayed))| *relayed)
            .map(|(id, _)| *id)
            .collect();
        for id in relayed {
            tracing::info!(%peer, "direct connection up; closing the relayed one");
            self.swarm.close_connection(id);
        }
    }

    /// A listener closed: if it was a relay's, listen through that relay again once connected.
    pub(super) fn relay_listener_closed(&mut self, id: libp2p::core::transport::ListenerId) {
        let mut again = None;
        for (peer, (_, listener)) in self.relays.iter_mut() {
            if *listener == Some(id) {
                *listener = None;
                again = Some(*peer);
            }
        }
        if let Some(peer) = again.filter(|p| self.swarm.is_connected(p)) {
            self.listen_through_relay(peer);
        }
    }
}

/// Runs a node until SIGINT or SIGTERM.
/// Opens the store, verifies it, builds the core and the swarm, and binds the control socket.
/// (About a hundred lines: the setup steps in the order they depend on each other.)
async fn start(cfg: NodeConfig) -> Result<(Daemon, Inbox), DaemonError> {
    let relay_list = relays(&cfg)?;
    let file = |what: &'static str| move |source| DaemonError::File { what, source };
    let key = files::read_key(&cfg.key).map_err(file("the node key"))?;
    let genesis = files::read_envelope(&cfg.genesis).map_err(file("the genesis"))?;
    let admission = files::read_envelope(&cfg.admission).map_err(file("the admission"))?;
    let cert: AdmissionCert = patchmesh_protocol::trust::admission_cert(&admission)?;
    let g: patchmesh_protocol::trust::Genesis = genesis.open("genesis")?;
    let (store, loaded, floor) = open_store(&cfg, &genesis, &key)?;
    // (Measured once the data directory exists.)
    let free_disk = facts::free_disk(&cfg.data_dir);
    let integrations = integrations::IntegrationsState::open(&cfg.data_dir)
        .map_err(io(format!("opening the outbox in {}", cfg.data_dir.display())))?;
    let (audit_log, torn) = crate::audit::AuditLog::open(
        &cfg.data_dir.join("audit"),
        key.clone(),
        cfg.audit_rotate_bytes,
    )
    .map_err(io(format!("opening the audit log in {}", cfg.data_dir.display())))?;
    crate::clock::set_offset_ms(cfg.clock_offset_ms);
    let now = now_ms();
    let (effects_tx, effects_rx) = install::channel();
    let (intel_tx, intel_rx) = intel::channel();
    let mut node = Node::new(
        core::Config {
            key: key.clone(),
            admission: admission.clone(),
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
    )?;
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
        .map_err(DaemonError::Content)?,
    );
    let (transfers, view_tx, from_transfers) =
        start_transfers(&mut swarm, &cfg, &key, &cert, content, &g.mesh_id())?;
    let topics = Topics::new(&g.mesh_id(), &cert.site);
    join(&mut swarm, &cfg, &topics, net_cfg.psk.is_some())?;

    let inventory = read_inventory(&cfg.inventory_root);
    let (ctl_tx, ctl_rx) = mpsc::channel::<(Request, Reply)>(CONTROL_QUEUE);
    let (basis_tx, basis_rx) = mpsc::channel::<crate::dashboard::BasisAsk>(CONTROL_QUEUE);
    let token = control_token(&cfg.token_path())?;
    let socket = cfg.control_socket();
    let listener = bind_control(&socket)?;
    let dashboard = match &cfg.dashboard {
        Some(dc) => {
            let bound = crate::dashboard::bind(dc.listen)
                .map_err(io(format!("binding the dashboard on {}", dc.listen)))?;
            let shared = Arc::new(crate::dashboard::Shared::new(
                dc.clone(),
                bound.addr,
                ctl_tx.clone(),
                basis_tx,
            ));
            tracing::info!(addr = %bound.addr, "dashboard listening (log in with `patchmesh dashboard`)");
            let s = shared.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::dashboard::serve(bound, s).await {
                    tracing::error!(error = %e, "the dashboard stopped");
                }
            });
            Some(shared)
        }
        None => None,
    };
    let metrics = crate::metrics::Collector::default();
    registry.register_collector(Box::new(metrics.clone()));
    if let Some(mc) = &cfg.metrics {
        let token_path =
            mc.token_file.clone().unwrap_or_else(|| cfg.data_dir.join("metrics.token"));
        let token = control_token(&token_path)?;
        let std_listener = std::net::TcpListener::bind(mc.listen)
            .map_err(io(format!("binding the metrics endpoint on {}", mc.listen)))?;
        std_listener.set_nonblocking(true).map_err(io("metrics listener".into()))?;
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(io("metrics listener".into()))?;
        tracing::info!(addr = %mc.listen, token = %token_path.display(), "metrics listening");
        let ctl = ctl_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, token, ctl).await {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        });
    }
    let user_tx = ctl_tx.clone();
    tokio::spawn(serve_control(listener, token, ctl_tx));

    let activity = crate::activity::load(&cfg.data_dir.join("activity.json"));
    let mut d = Daemon {
        node,
        swarm,
        store,
        registry,
        metrics,
        dashboard,
        topics,
        mesh_name: g.mesh_name.clone(),
        cert,
        cfg,
        ids: HashMap::new(),
        peers: HashMap::new(),
        next_peer: 1,
        handshakes_refused: 0,
        admitted: HashSet::new(),
        penalties: HashMap::new(),
        activity,
        rtt: HashMap::new(),
        bans: HashMap::new(),
        banned_refused: 0,
        conns: HashMap::new(),
        hole_punches: (0, 0),
        discover: discovery::Discovery::new(Instant::now()),
        relays: relay_list.into_iter().map(|(p, a)| (p, (a, None))).collect(),
        parting: HashMap::new(),
        dropping: HashSet::new(),
        pending_gossip: HashMap::new(),
        next_token: 1,
        inventory,
        free_disk,
        inventory_waiting: HashMap::new(),
        findings_waiting: HashMap::new(),
        audit_waiting: HashMap::new(),
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
        intel: None,
        intel_loading: None,
        intel_tx,
        audit: audit::AuditState::new(audit_log),
        notices: None,
        admission,
        history: Default::default(),
        integrations,
        test_events_done: false,
    };
    d.history = intel::load_history(&d.cfg.data_dir);
    if let (Some(nc), Some(path)) = (d.cfg.notice.clone(), d.cfg.user_socket()) {
        let listener = notice::bind_user(&path)
            .map_err(io(format!("binding the user socket {}", path.display())))?;
        tokio::spawn(notice::serve_user(listener, user_tx));
        d.notices = Some(Arc::new(notice::Notices::new(nc, &d.cfg.data_dir, d.audit.log.clone())));
    }
    integrations::spawn(
        d.integrations.shared.clone(),
        key.clone(),
        d.cfg.integration_credentials.clone(),
        d.inventory.hostname.clone(),
    );
    d.audit(patchmesh_protocol::audit::Event::NodeStarted {
        version: env!("CARGO_PKG_VERSION").to_string(),
        torn_tail_bytes: torn,
    });
    if let Err(e) = d.audit.log.lock().unwrap_or_else(|p| p.into_inner()).checkpoint(now.0) {
        tracing::error!(error = %e, "audit checkpoint failed");
    }
    tracing::info!(node = %d.node.id(), peer = %d.swarm.local_peer_id(), site = %d.cert.site, "node started");
    // Start the core, then give it the real inventory if its record does not carry it yet.
    d.input(Input::Start);
    d.sync_audit_head();
    audit::flood_hook(&d.audit.log);
    let summary = d.inventory_summary();
    let held = d.node.site().records().get(&d.node.id()).map(|r| r.record().inventory.clone());
    if held.as_ref() != Some(&summary) {
        d.input(Input::Command(Command::UpdateRecord { inventory: summary }));
    }
    Ok((d, Inbox { ctl_rx, basis_rx, from_transfers, effects_rx, intel_rx, socket }))
}

pub async fn run(cfg: NodeConfig) -> Result<(), DaemonError> {
    let (mut d, mut inbox) = start(cfg).await?;
    let socket = inbox.socket.clone();
    let result = d.run(&mut inbox).await;
    let _ = std::fs::remove_file(&socket);
    result
}

/// What the owner task receives besides swarm events.
struct Inbox {
    ctl_rx: mpsc::Receiver<(Request, Reply)>,
    basis_rx: mpsc::Receiver<crate::dashboard::BasisAsk>,
    from_transfers: mpsc::Receiver<ToDaemon>,
    effects_rx: mpsc::Receiver<patchmesh_protocol::rollout::EffectResult>,
    intel_rx: mpsc::Receiver<intel::Loaded>,
    socket: std::path::PathBuf,
}

impl Daemon {
    /// The owner task's loop: one event, one input, every output carried out, until a signal
    /// or a failed store write.
    async fn run(&mut self, inbox: &mut Inbox) -> Result<(), DaemonError> {
        let d = self;
        d.set_facts();
        d.provide_all();
        d.on_catalog();
        let mut inventory_tick =
            tokio::time::interval(Duration::from_millis(d.cfg.inventory_interval_ms.max(1000)));
        inventory_tick.tick().await;
        let mut activity_tick =
            tokio::time::interval(Duration::from_millis(d.cfg.activity_interval_ms.max(1000)));
        let mut site_tick = tokio::time::interval(Duration::from_secs(5));
        let delivered = d.integrations.shared.delivered_wake.clone();
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm = signal(SignalKind::terminate()).map_err(io("handling SIGTERM".into()))?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(io("handling SIGINT".into()))?;
        loop {
            if let Some(why) = d.fatal.take() {
                return Err(DaemonError::Stopped(why));
            }
            let deadline = d.deadline();
            let (parting, parting_at) = (!d.parting.is_empty(), d.parting_deadline());
            tokio::select! {
                ev = d.swarm.select_next_some() => d.on_swarm(ev),
                () = tokio::time::sleep_until(deadline) => d.input(Input::Timer),
                Some((req, reply)) = inbox.ctl_rx.recv() => d.on_control(req, reply),
                Some(reply) = inbox.basis_rx.recv() => {
                    let _ = reply.send(Arc::new(d.report_basis()));
                }
                Some(cmd) = inbox.from_transfers.recv() => d.on_transfer(cmd),
                Some(result) = inbox.effects_rx.recv() => d.on_effect_done(result),
                Some(loaded) = inbox.intel_rx.recv() => d.on_intel_loaded(loaded),
                _ = inventory_tick.tick() => d.refresh_inventory(),
                _ = activity_tick.tick() => d.sample_activity(),
                _ = site_tick.tick() => {
                    d.expire_bans();
                    d.discover();
                    d.connect_site();
                    d.audit_tick();
                    d.integrations_tick();
                    if !d.test_events_done {
                        d.test_events_done = integrations::test_events(d);
                    }
                }
                () = delivered.notified() => d.flush_delivery_notices(),
                () = tokio::time::sleep_until(parting_at), if parting => {
                    d.end_parted_sessions();
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
            d.sync_audit_head();
        }
        tracing::info!("shutting down");
        d.audit(patchmesh_protocol::audit::Event::NodeStopping { reason: "signal".into() });
        if let Err(e) = d.audit.log.lock().unwrap_or_else(|p| p.into_inner()).checkpoint(now_ms().0)
        {
            tracing::error!(error = %e, "audit checkpoint failed");
        }
        d.store.flush().map_err(DaemonError::Store)?;
        Ok(())
    }
}

fn count_sent(by_kind: &mut BTreeMap<&'static str, (u64, u64)>, kind: &'static str, bytes: usize) {
    let e = by_kind.entry(kind).or_default();
    e.0 += 1;
    e.1 += bytes as u64;
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {}", path.display())))
}

/// An I/O error with what was being done.
fn io(what: String) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Io { what, source }
}

fn parse_addr(addr: &str) -> Result<Multiaddr, DaemonError> {
    addr.parse().map_err(|e| DaemonError::Setup(format!("address {addr:?}: {e}")))
}

/// Why a node could not start, or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A key, genesis or certificate file.
    #[error("reading {what}: {source}")]
    File {
        /// Which file.
        what: &'static str,
        /// Why.
        source: files::FileError,
    },
    /// A trust file that does not decode.
    #[error(transparent)]
    Decode(#[from] patchmesh_protocol::crypto::DecodeError),
    /// The core refused its own configuration (genesis or certificate).
    #[error("starting the node: {0}")]
    Start(#[from] core::StartError),
    /// The state store.
    #[error("the store: {0}")]
    Store(crate::store::StoreError),
    /// The state store cannot be opened.
    #[error(
        "cannot open the store at {path} ({source}): it is damaged, or was written by another \
         version. Nothing was changed. To recover, move {path} aside and start the node again: \
         it fetches the mesh's state from its peers, signs its records above the versions they \
         hold, and starts again any install it had in progress"
    )]
    StoreDamaged {
        /// The store directory.
        path: String,
        /// What sled said.
        source: crate::store::StoreError,
    },
    /// The content store.
    #[error("the content store: {0}")]
    Content(crate::content::StoreError),
    /// The configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The network stack.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// The control API.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// Setting up the swarm (addresses, topics, protocols).
    #[error("{0}")]
    Setup(String),
    /// Another node already serves this data directory.
    #[error("a node is already running with control socket {0}")]
    AlreadyRunning(std::path::PathBuf),
    /// A system call.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The node stopped itself (a store write failed).
    #[error("{0}")]
    Stopped(String),
}

impl Daemon {
    pub(super) fn deadline(&self) -> tokio::time::Instant {
        let now = now_ms();
        let wait = self.node.poll_timeout().map_or(60_000, |t| t.0.saturating_sub(now.0));
        tokio::time::Instant::now() + Duration::from_millis(wait.min(60_000))
    }

    pub(super) fn input(&mut self, input: Input) {
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

    pub(super) fn output(&mut self, out: Output) {
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
                self.audit_applied(&p);
                self.crash_hook(&p);
            }
            Output::Disconnect { peer } => {
                if let Some(p) = self.peers.get(&peer.0).copied() {
                    tracing::info!(peer = %p, "disconnecting peer");
                    self.disconnect(p);
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
                    let what = if peer.is_some() { "object from a peer" } else { "local command" };
                    self.audit_refusal(what, &reason, p.map(|p| p.to_string()));
                }
                Event::Rollout(ev) => self.on_rollout_event(ev),
                Event::Reach(reach) => {
                    if reach.holds_installs() {
                        tracing::warn!(state = reach.name(), "{reach}");
                    } else {
                        tracing::info!(state = reach.name(), "{reach}");
                    }
                    self.publish_view();
                }
            },
            Output::Effect(effect) => self.on_effect(effect),
        }
    }

    /// Lowers a peer's score; after [`PENALTIES_MAX`] offences it is disconnected.
    pub(super) fn penalize_peer(&mut self, p: PeerId) {
        let n = self.penalties.entry(p).or_default();
        *n += 1;
        let score = net::PENALTY_SCORE * f64::from(*n);
        let n = *n;
        self.swarm.behaviour_mut().gossipsub.set_application_score(&p, score);
        if n >= PENALTIES_MAX {
            // A fresh count after the ban; the next ban is twice as long.
            self.penalties.remove(&p);
            let bans = self.bans.get(&p).map_or(0, |b| b.1) + 1;
            let long = BAN_FIRST.saturating_mul(1 << (bans - 1).min(16)).min(BAN_MAX);
            self.bans.insert(p, (Instant::now() + long, bans));
            self.swarm.behaviour_mut().blocked.block_peer(p);
            tracing::warn!(peer = %p, ban_s = long.as_secs(), "too many offences; disconnected and banned");
            self.disconnect(p);
        }
    }

    /// Lifts the bans that have run out.
    fn expire_bans(&mut self) {
        let now = Instant::now();
        for (p, (until, _)) in &self.bans {
            if *until <= now && self.swarm.behaviour().blocked.blocked_peers().contains(p) {
                tracing::info!(peer = %p, "ban over");
                self.swarm.behaviour_mut().blocked.unblock_peer(*p);
            }
        }
        // The count is kept for a day after the last ban, so a returning offender's next ban
        // is longer.
        self.bans.retain(|_, (until, _)| {
            now.saturating_duration_since(*until) < Duration::from_secs(86_400)
        });
    }
}
