//! The libp2p swarm a node runs: transports, protocols and how each maps onto the protocol core.
//!
//! ## Transports
//! QUIC first (`/udp/…/quic-v1`), TCP + noise + yamux as the fallback, and relayed circuits
//! (`/p2p-circuit`) for nodes behind NAT. With a mesh pre-shared key (`psk_file`) every
//! connection is wrapped in libp2p's private-network handshake, so a machine without the key
//! cannot even complete a handshake; QUIC cannot carry that wrapper, so a node with a PSK speaks
//! TCP only.
//!
//! ## One mesh per handshake
//! Every transport handshake is bound to the mesh id, so nodes of two meshes on one LAN (an
//! MSP's tenants, found by each other's mDNS) never complete a connection: QUIC offers the ALPN
//! id `patchmesh/<mesh id>` (a mismatch fails TLS with `no_application_protocol`), and noise
//! (TCP, relayed circuits) carries the mesh id as its prologue (a mismatch fails the first
//! handshake message's authentication).
//!
//! ## Identity
//! The libp2p identity *is* the node's ed25519 key, so the transport's authenticated `PeerId`
//! names exactly the key an admission certificate admits: the core is told which node key the
//! transport authenticated ([`node_of`]) and refuses a hello carrying anyone else's certificate.
//! libp2p signs its handshakes under its own prefixes and patchmesh signs under
//! `patchmesh/v1/<kind>`, so no signature made for one can be passed off as the other.
//!
//! ## Protocols
//! - gossipsub carries small signed objects on three topics per mesh (control, this site,
//!   summaries). The message id is the BLAKE3 of the bytes, messages are anonymous (authority is
//!   in the signatures inside), and every message is validated by the core before it is
//!   forwarded: Accept, Reject (score drops) or Ignore.
//! - request-response `/patchmesh/<mesh>/msg/1` carries the core's point-to-point messages
//!   (hello, digests, repair exchanges); the response is an empty acknowledgement.
//! - request-response `/patchmesh/<mesh>/inventory/1` serves this node's full package list to
//!   admitted peers.
//! - Kademlia under `/patchmesh/<mesh>/kad/1`, never the public IPFS DHT; mDNS on the LAN
//!   (optional); identify; ping; connection limits.
//! - autonat (are we reachable?), relay client and dcutr (hole punching through a relay), and
//!   optionally a relay server. These are wired in but only exercised on loopback.
//!
//! ## Admission in gossipsub
//! A peer that has not shown a valid certificate gets an application score below gossipsub's
//! publish and gossip thresholds (but above the graylist, so its subscriptions are still
//! recorded): nothing is published, forwarded or gossiped to it, and it is never grafted into a
//! mesh. Its messages are judged Ignore without being read, and the core disconnects it when its
//! hello fails or never comes.

use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    autonat, connection_limits, dcutr, gossipsub, identify, identity, kad, mdns, noise, ping,
    relay, request_response, tcp, yamux, PeerId, StreamProtocol, Swarm,
};
use patchmesh_protocol::crypto::SecretKey;
use patchmesh_protocol::ids::{MeshId, NodeId, SiteId};
use patchmesh_protocol::limits;
use std::io;
use std::time::Duration;

/// Largest request on the inventory protocol (a delivery notice of integration events is the
/// largest kind).
pub const INVENTORY_REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Largest full inventory served or accepted.
pub const INVENTORY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Application score of a connected peer that has not been admitted (see the module docs).
pub const UNADMITTED_SCORE: f64 = -60.0;
/// Score lost per invalid object a peer sends.
pub const PENALTY_SCORE: f64 = -20.0;

/// A relay's limits. libp2p's defaults end a circuit after 2 minutes or 128 KiB, enough to
/// set up hole punching; a site whose NAT cannot be punched (symmetric mappings) fetches
/// payloads through the relay, so a circuit here carries up to 1 GiB over up to an hour, for
/// at most 64 circuits (4 per peer).
fn relay_config() -> relay::Config {
    relay::Config {
        max_circuits: 64,
        max_circuits_per_peer: 4,
        max_circuit_duration: std::time::Duration::from_secs(3600),
        max_circuit_bytes: 1 << 30,
        ..Default::default()
    }
}

/// The swarm's protocols.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Peers banned for repeated offences: their connections are denied before any protocol
    /// runs (see `Daemon::penalize_peer`).
    pub blocked: libp2p::allow_block_list::Behaviour<libp2p::allow_block_list::BlockedPeers>,
    /// Limits on connections.
    pub limits: connection_limits::Behaviour,
    /// Pubsub for fresh signed objects.
    pub gossipsub: gossipsub::Behaviour,
    /// Point-to-point core messages.
    pub msg: request_response::Behaviour<BytesCodec>,
    /// Full inventory on request.
    pub inventory: request_response::Behaviour<BytesCodec>,
    /// Peer information exchange.
    pub identify: identify::Behaviour,
    /// Liveness.
    pub ping: ping::Behaviour,
    /// Private-protocol DHT for discovery.
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// LAN discovery.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Reachability probes.
    pub autonat: autonat::Behaviour,
    /// Relayed connections through another node.
    pub relay_client: relay::client::Behaviour,
    /// Hole punching over a relayed connection.
    pub dcutr: dcutr::Behaviour,
    /// Acting as a relay for others (off unless configured).
    pub relay: Toggle<relay::Behaviour>,
    /// Raw streams for payload transfer.
    pub stream: libp2p_stream::Behaviour,
}

/// A length-prefixed byte codec with a size limit per direction.
#[derive(Clone, Debug)]
pub struct BytesCodec {
    /// Largest request accepted.
    pub request_bytes_max: usize,
    /// Largest response accepted.
    pub response_bytes_max: usize,
}

async fn read_frame<T: libp2p::futures::AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: libp2p::futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

impl request_response::Codec for BytesCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        read_frame(io, self.request_bytes_max).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        read_frame(io, self.response_bytes_max).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

/// The libp2p keypair of a node key (the same ed25519 key).
pub fn keypair_of(key: &SecretKey) -> identity::Keypair {
    let mut seed = key.seed();
    identity::Keypair::ed25519_from_bytes(&mut seed).expect("32-byte ed25519 seed")
}

/// The node key a transport-authenticated peer id carries, if it is an ed25519 key.
pub fn node_of(peer: &PeerId) -> Option<NodeId> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let public = identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(NodeId(public.try_into_ed25519().ok()?.to_bytes()))
}

/// The peer id of a node key.
pub fn peer_of(node: &NodeId) -> Option<PeerId> {
    let public = identity::ed25519::PublicKey::try_from_bytes(&node.0).ok()?;
    Some(PeerId::from_public_key(&identity::PublicKey::from(public)))
}

/// Topic names of a mesh.
#[derive(Clone, Debug)]
pub struct Topics {
    /// Admin sets and catalog changes.
    pub control: gossipsub::IdentTopic,
    /// This node's site.
    pub site: gossipsub::IdentTopic,
    /// Site summaries.
    pub summaries: gossipsub::IdentTopic,
}

impl Topics {
    /// The topics of `mesh` for a node of `site`.
    pub fn new(mesh: &MeshId, site: &SiteId) -> Topics {
        let m = short(mesh);
        Topics {
            control: gossipsub::IdentTopic::new(format!("patchmesh/{m}/control")),
            site: gossipsub::IdentTopic::new(format!("patchmesh/{m}/site/{}", site_topic(site))),
            summaries: gossipsub::IdentTopic::new(format!("patchmesh/{m}/summaries")),
        }
    }
}

/// A site name as a topic-safe string (its hash: names may hold any character).
fn site_topic(site: &SiteId) -> String {
    hex::encode(&blake3::hash(site.to_string().as_bytes()).as_bytes()[..8])
}

fn short(mesh: &MeshId) -> String {
    hex::encode(&mesh.0[..8])
}

/// Everything needed to build the swarm.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The mesh.
    pub mesh: MeshId,
    /// Run mDNS on the LAN.
    pub mdns: bool,
    /// Act as a relay for other nodes.
    pub relay_server: bool,
    /// Most established connections.
    pub connections_max: u32,
    /// Private-network key, if the mesh uses one.
    pub psk: Option<[u8; 32]>,
    /// Idle connections close after this long.
    pub idle_timeout_ms: u64,
}

/// Why the swarm could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A transport could not be set up.
    #[error("transport: {0}")]
    Transport(String),
    /// A protocol could not be set up.
    #[error("protocol: {0}")]
    Behaviour(String),
}

/// Every libp2p behaviour the node runs, configured. (About a hundred lines: one block per
/// behaviour.)
fn behaviour(
    key: &identity::Keypair,
    relay_client: relay::client::Behaviour,
    cfg: &NetConfig,
) -> Result<Behaviour, NetError> {
    let peer_id = key.public().to_peer_id();
    let m = short(&cfg.mesh);
    let gcfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(700))
        // Mesh degree 4 (between 3 and 8) instead of gossipsub's 6 (5 to 12): a message
        // reaches a node about once per mesh peer, and in a mesh at rest those duplicates are
        // most of its traffic (bench-mesh: 545 -> 494 B/s per node idle, 681 -> 625 waiting;
        // without flood publish too, 417 and 589). Delivery does not rest on gossip alone
        // (anti-entropy repairs what it misses), and a node still publishes its own messages
        // to every peer (flood publish, kept on: an eclipsing mesh neighbourhood cannot
        // swallow them, and a halt leaves at once).
        .mesh_n(4)
        .mesh_n_low(3)
        .mesh_n_high(8)
        .gossip_lazy(4)
        // A GRAFT that races a peer's admission is refused (its score is still negative) and
        // pruned; in a private mesh of admitted nodes a short backoff lets it retry at once
        // instead of a minute later.
        .prune_backoff(Duration::from_secs(2))
        .graft_flood_threshold(Duration::from_secs(1))
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .max_transmit_size(limits::MESSAGE_BYTES_MAX)
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
        })
        .protocol_id_prefix(format!("/patchmesh/{m}/meshsub"))
        .build()
        .map_err(|e| NetError::Behaviour(e.to_string()))?;
    let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gcfg)
        .map_err(|e| NetError::Behaviour(e.to_string()))?;
    // Sybil resistance comes from admission certificates, not addresses, and the nodes of a
    // branch office usually share one NAT address: IP colocation must not cost score (with it,
    // ten nodes behind one address would stop hearing each other).
    let params = gossipsub::PeerScoreParams {
        app_specific_weight: 1.0,
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 5.0,
    };
    gossipsub.with_peer_score(params, thresholds).map_err(NetError::Behaviour)?;

    let msg_codec =
        BytesCodec { request_bytes_max: limits::MESSAGE_BYTES_MAX, response_bytes_max: 16 };
    let rr_cfg = request_response::Config::default().with_request_timeout(Duration::from_secs(30));
    let msg = request_response::Behaviour::with_codec(
        msg_codec,
        [(
            StreamProtocol::try_from_owned(format!("/patchmesh/{m}/msg/1"))
                .map_err(|e| NetError::Behaviour(e.to_string()))?,
            request_response::ProtocolSupport::Full,
        )],
        rr_cfg.clone(),
    );
    let inv_codec = BytesCodec {
        request_bytes_max: INVENTORY_REQUEST_BYTES_MAX,
        response_bytes_max: INVENTORY_BYTES_MAX,
    };
    let inventory = request_response::Behaviour::with_codec(
        inv_codec,
        [(
            StreamProtocol::try_from_owned(format!("/patchmesh/{m}/inventory/1"))
                .map_err(|e| NetError::Behaviour(e.to_string()))?,
            request_response::ProtocolSupport::Full,
        )],
        rr_cfg,
    );
    let identify = identify::Behaviour::new(
        identify::Config::new(format!("/patchmesh/{m}/1"), key.public())
            // A node behind NAT gains its relayed address after it connected to the relay;
            // its peers (and the relay's DHT, which tells others) must learn it.
            .with_push_listen_addr_updates(true),
    );
    let kad_proto = StreamProtocol::try_from_owned(format!("/patchmesh/{m}/kad/1"))
        .map_err(|e| NetError::Behaviour(e.to_string()))?;
    let mut kad_cfg = kad::Config::new(kad_proto);
    // A bootstrap walks every bucket: in a 30-node mesh each node answers 120-160 FIND_NODE
    // requests of up to 2 KB in a bootstrap round, which every 2 minutes was most of a
    // waiting mesh's traffic (`scripts/bench-mesh.sh`). Membership is stable, a node short of
    // peers bootstraps by itself (`Daemon::discover`), and look-ups refresh the buckets they
    // pass through.
    kad_cfg.set_periodic_bootstrap_interval(Some(Duration::from_secs(600)));
    // Partial holders announce themselves: keep enough records per payload that they spread
    // over the sites fetching it, not only the first (origin-site) holders.
    let store_cfg = kad::store::MemoryStoreConfig {
        max_providers_per_key: patchmesh_protocol::limits::DHT_PROVIDERS_PER_KEY,
        ..kad::store::MemoryStoreConfig::default()
    };
    let store = kad::store::MemoryStore::with_config(peer_id, store_cfg);
    let mut kad = kad::Behaviour::with_config(peer_id, store, kad_cfg);
    // Every node serves the DHT: the mesh is private, and on a LAN or loopback there is no
    // confirmed external address to switch it on by itself.
    kad.set_mode(Some(kad::Mode::Server));
    let mdns = if cfg.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                .map_err(|e| NetError::Behaviour(e.to_string()))?,
        )
    } else {
        None
    };
    let relay = cfg.relay_server.then(|| relay::Behaviour::new(peer_id, relay_config()));
    Ok(Behaviour {
        blocked: Default::default(),
        limits: connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(cfg.connections_max))
                .with_max_established_per_peer(Some(2)),
        ),
        gossipsub,
        msg,
        inventory,
        identify,
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(30))),
        kad,
        mdns: mdns.into(),
        autonat: autonat::Behaviour::new(peer_id, Default::default()),
        relay_client,
        dcutr: dcutr::Behaviour::new(peer_id),
        relay: relay.into(),
        stream: libp2p_stream::Behaviour::new(),
    })
}

/// QUIC ACK frequency a node asks of its peers (the QUIC ACK frequency extension, through
/// `vendor/libp2p-quic`): acknowledge every 8th ack-eliciting packet instead of every 2nd, or
/// within about a round trip. A site that serves a payload to other sites receives those ACKs
/// over its own WAN link; with the default every-other-packet ACKs they were about 1.5 % of
/// the payload on each site's link (`scripts/bench-wan.sh`: 1.084 -> 1.072-1.073 payload
/// sizes per site, 49,700 -> 42,500 datagrams into a site; every 16th packet slowed the
/// download by 15 %, as the senders' congestion control hears less often).
const ACK_ELICITING_THRESHOLD: u32 = 7;
/// Longest a peer may hold back an ACK (quinn caps it at the path's round trip, or 25 ms if
/// that is longer).
const ACK_DELAY_MAX: Duration = Duration::from_millis(100);
/// UDP socket buffers asked of the kernel for the QUIC socket, each way (a patch in
/// `vendor/libp2p-quic`). With the usual 208 KiB default, a node receiving a payload at LAN
/// speed overflows its receive buffer whenever it is busy verifying and writing for a moment,
/// and QUIC reads each dropped datagram as congestion: `scripts/bench-transfer.sh` (1 GiB, one
/// source) went from 247–269 to 282–325 MiB/s with these buffers. Linux caps the request at
/// `net.core.rmem_max` / `wmem_max`; the Debian package raises both to this size
/// (`/usr/lib/sysctl.d/60-patchmesh.conf`).
pub const UDP_BUFFER_BYTES: usize = 4 << 20;
/// Length of the QUIC connection IDs a node issues (a patch in `vendor/libp2p-quic`; quinn's
/// default is 8). Every datagram sent to the node carries one, so on a payload that is 4 bytes
/// of every ~1,490 that cross a site's WAN link. Four random bytes still tell a node's few
/// hundred connections apart (quinn draws again on a collision), and the transport already
/// turns connection migration off, so the ID does nothing else here.
const CONNECTION_ID_BYTES: usize = 4;

/// Builds the swarm; bandwidth counters are registered in `registry`.
pub fn build(
    key: identity::Keypair,
    cfg: &NetConfig,
    registry: &mut libp2p::metrics::Registry,
) -> Result<Swarm<Behaviour>, NetError> {
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let tr = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    let binding = mesh_binding(&cfg.mesh);
    if !libp2p_tls::set_alpn(binding.clone()) {
        return Err(NetError::Transport("this process already runs a node of another mesh".into()));
    }
    let noise = move |k: &identity::Keypair| {
        noise::Config::new(k).map(|c| c.with_prologue(binding.clone()))
    };
    let builder = libp2p::SwarmBuilder::with_existing_identity(key).with_tokio();
    let swarm = match cfg.psk {
        None => builder
            .with_tcp(tcp::Config::default().nodelay(true), noise.clone(), yamux::Config::default)
            .map_err(|e| tr(&e))?
            .with_quic_config(|c| {
                c.ack_frequency(ACK_ELICITING_THRESHOLD, ACK_DELAY_MAX)
                    .socket_buffer_bytes(UDP_BUFFER_BYTES)
                    .connection_id_bytes(CONNECTION_ID_BYTES)
            })
            .with_relay_client(noise, yamux::Config::default)
            .map_err(|e| tr(&e))?
            .with_bandwidth_metrics(registry)
            .with_behaviour(|k, relay_client| boxed(behaviour(k, relay_client, cfg)))
            .map_err(|e| tr(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build(),
        Some(psk) => builder
            .with_other_transport(|k| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                use libp2p::core::upgrade::Version;
                use libp2p::Transport;
                let psk = libp2p::pnet::PreSharedKey::new(psk);
                let noise = noise(k)?;
                Ok(libp2p::tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| libp2p::pnet::PnetConfig::new(psk).handshake(socket))
                    .upgrade(Version::V1)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(Duration::from_secs(20)))
            })
            .map_err(|e| tr(&e))?
            .with_relay_client(noise, yamux::Config::default)
            .map_err(|e| tr(&e))?
            .with_bandwidth_metrics(registry)
            .with_behaviour(|k, relay_client| boxed(behaviour(k, relay_client, cfg)))
            .map_err(|e| tr(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build(),
    };
    Ok(swarm)
}

/// The bytes every handshake is bound to: `patchmesh/` and the mesh id in hex.
fn mesh_binding(mesh: &MeshId) -> Vec<u8> {
    format!("patchmesh/{}", hex::encode(mesh.0)).into_bytes()
}

fn boxed<T>(r: Result<T, NetError>) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
    r.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
}

/// Total bytes the swarm's transports sent and received, from its bandwidth counters.
pub fn bandwidth(registry: &libp2p::metrics::Registry) -> (u64, u64) {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return (0, 0);
    }
    let (mut sent, mut received) = (0u64, 0u64);
    for line in text.lines().filter(|l| l.starts_with("libp2p_bandwidth_bytes_total")) {
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if line.contains("direction=\"Outbound\"") {
            sent += value as u64;
        } else if line.contains("direction=\"Inbound\"") {
            received += value as u64;
        }
    }
    (sent, received)
}

#[cfg(test)]
mod tests {
    /// The Debian package raises the kernel's cap to exactly what the node asks for.
    #[test]
    fn the_package_sysctl_allows_the_buffers_the_node_asks_for() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/debian/sysctl.conf");
        let text = std::fs::read_to_string(path).expect("cli/debian/sysctl.conf");
        for key in ["net.core.rmem_max", "net.core.wmem_max"] {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(key)?.trim().strip_prefix('=')?.trim().parse().ok());
            assert_eq!(value, Some(super::UDP_BUFFER_BYTES), "{key} in {path}");
        }
    }
}
