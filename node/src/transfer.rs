//! Payload transfer over QUIC streams: the data protocol's server, and downloads driven by the
//! protocol core's planner ([`patchmesh_protocol::transfer::plan::Download`]).
//!
//! Streams are libp2p streams (`/patchmesh/<mesh>/data/1`) on the same QUIC connections the
//! node already holds, authenticated by the node key: no second endpoint, port or certificate.
//! `scripts/bench-transfer.sh` measures them against a raw quinn stream.
//!
//! One stream carries one request ([`DataRequest`]: `Have`, `Outboard` or `Range`), framed as a
//! little-endian `u32` length and a bounded postcard body; the answer is a [`DataReply`] frame
//! and, for `Range` and `Outboard`, exactly the bytes promised. Only admitted peers are served.
//!
//! A download is one task: it keeps the planner's sources in step with the connected admitted
//! peers (and DHT providers), sets its role from the site election, carries out the planner's
//! actions as small tasks, and reports faults (penalised through the daemon). Each group is
//! verified by the content store before it is written. Rates are capped by token buckets: one
//! for everything this node receives and serves, one for what it receives from other sites
//! (the WAN cap: only the elected node of a site fetches across the WAN, so it is the site's).

use crate::content::{ContentStore, StoreError};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use patchmesh_protocol::ids::{ContentId, Millis, NodeId, SiteId};
use patchmesh_protocol::limits;
use patchmesh_protocol::transfer::plan::{Action, Download, Fault, Params, Request};
use patchmesh_protocol::transfer::{
    check_range, group_count, group_span, role_of, Availability, DataReply, DataRequest, Role,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};

/// Time to open a stream and get a reply header.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time one group may take to arrive before the stream is abandoned (the planner's rate check
/// usually acts first).
const GROUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams served at once.
const SERVE_STREAMS_MAX: usize = 128;
/// Downloads at once.
const DOWNLOADS_MAX: usize = 16;
/// How long a download without any source waits before it gives up.
const NO_SOURCE_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes read from disk per write to a stream.
const SERVE_CHUNK_BYTES: usize = 256 * 1024;

/// The data protocol's name for a mesh.
pub fn protocol(mesh: &patchmesh_protocol::ids::MeshId) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/patchmesh/{}/data/1", mesh.short()))
        .expect("protocol names start with a slash")
}

/// Admitted, connected peers as the daemon sees them.
#[derive(Clone, Debug, Default)]
pub struct PeerView {
    /// node → (transport peer, site).
    pub peers: BTreeMap<NodeId, (PeerId, SiteId)>,
}

/// What the transfer service asks of the daemon (which owns the swarm).
#[derive(Debug)]
pub enum ToDaemon {
    /// A peer misbehaved on a data stream.
    Penalize(PeerId, &'static str),
    /// Announce in the DHT that we hold this content.
    Provide(ContentId),
    /// Look up holders of this content in the DHT.
    FindProviders(ContentId),
}

/// Rates and download tunables.
#[derive(Clone, Debug)]
pub struct TransferConfig {
    /// Cap on all payload bytes this node receives and serves (0: none).
    pub rate_bytes_per_s: u64,
    /// Cap on payload bytes received from other sites (0: none).
    pub wan_rate_bytes_per_s: u64,
    /// Planner tunables.
    pub params: Params,
}

/// A token bucket: `take` waits until the bytes fit the rate. Borrowing ahead is allowed (the
/// debt is slept off), so a single large take never deadlocks.
pub struct Bucket {
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// A bucket of `rate` bytes per second (0: unlimited) with a quarter second of burst.
    pub fn new(rate: u64) -> Bucket {
        Bucket { rate, state: Mutex::new((rate as f64 / 4.0, Instant::now())) }
    }
    /// Waits until `n` bytes may pass.
    pub async fn take(&self, n: u64) {
        if self.rate == 0 {
            return;
        }
        let wait = {
            let mut s = self.state.lock().expect("bucket lock");
            let now = Instant::now();
            let burst = self.rate as f64 / 4.0;
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate as f64).min(burst);
            s.1 = now;
            s.0 -= n as f64;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / self.rate as f64)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Where a download stands, for `patchmesh fetch` and `content list`.
#[derive(Clone, Debug, Serialize)]
pub struct Progress {
    /// The content id (hex).
    pub content: String,
    /// Signed size.
    pub size_bytes: u64,
    /// Verified bytes held.
    pub have_bytes: u64,
    /// Recent rate.
    pub rate_bytes_per_s: u64,
    /// Sources serving a range now.
    pub sources_active: usize,
    /// Sources known.
    pub sources_known: usize,
    /// "wan" if this node fetches for its site across the WAN, else "lan".
    pub role: &'static str,
    /// fetching, complete or failed.
    pub state: &'static str,
    /// Why it failed.
    pub error: Option<String>,
    /// Bytes received from this site / from other sites.
    pub lan_bytes: u64,
    /// Bytes received from other sites.
    pub wan_bytes: u64,
    /// Sources dropped, by fault.
    pub dropped: BTreeMap<&'static str, u32>,
    /// Verified bytes already held when this download started (a resume).
    pub resumed_bytes: u64,
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
}

/// The transfer service, shared by the daemon, the server and the download tasks.
pub struct Transfers {
    me: NodeId,
    site: SiteId,
    store: Arc<ContentStore>,
    view: watch::Receiver<PeerView>,
    control: libp2p_stream::Control,
    proto: StreamProtocol,
    cfg: TransferConfig,
    node_bucket: Bucket,
    wan_bucket: Bucket,
    to_daemon: mpsc::Sender<ToDaemon>,
    progress: Mutex<BTreeMap<ContentId, Progress>>,
    providers: Mutex<BTreeMap<ContentId, BTreeSet<NodeId>>>,
    downloads: Semaphore,
    serving: Arc<Semaphore>,
}

/// Events from a download's small tasks to its loop.
#[derive(Debug)]
enum Ev {
    Have(NodeId, Result<(u64, Availability), Option<Fault>>),
    Outboard(NodeId, Result<Vec<u8>, Option<Fault>>),
    /// Request id, first group, groups, from this site: verified and written.
    Groups(u64, u64, u64, bool),
    Done(u64),
    /// A finished range task with nothing more to say.
    Idle,
    Fault(NodeId, Fault),
    Broken(NodeId),
    Stop(StoreError),
}

impl Transfers {
    /// The service. Call [`Transfers::serve`] once with the incoming streams.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        site: SiteId,
        store: Arc<ContentStore>,
        view: watch::Receiver<PeerView>,
        control: libp2p_stream::Control,
        proto: StreamProtocol,
        cfg: TransferConfig,
        to_daemon: mpsc::Sender<ToDaemon>,
    ) -> Arc<Transfers> {
        Arc::new(Transfers {
            me,
            site,
            store,
            view,
            control,
            proto,
            node_bucket: Bucket::new(cfg.rate_bytes_per_s),
            wan_bucket: Bucket::new(cfg.wan_rate_bytes_per_s),
            cfg,
            to_daemon,
            progress: Mutex::new(BTreeMap::new()),
            providers: Mutex::new(BTreeMap::new()),
            downloads: Semaphore::new(DOWNLOADS_MAX),
            serving: Arc::new(Semaphore::new(SERVE_STREAMS_MAX)),
        })
    }

    /// The content store.
    pub fn store(&self) -> &Arc<ContentStore> {
        &self.store
    }

    /// Progress of every download this run.
    pub fn progress(&self) -> BTreeMap<ContentId, Progress> {
        self.progress.lock().expect("progress lock").clone()
    }

    /// Holders of a content found in the DHT.
    pub fn add_providers(&self, content: ContentId, nodes: impl IntoIterator<Item = NodeId>) {
        let mut p = self.providers.lock().expect("providers lock");
        let set = p.entry(content).or_default();
        for n in nodes {
            if n != self.me && set.len() < limits::SOURCES_PER_DOWNLOAD_MAX {
                set.insert(n);
            }
        }
    }

    /// Starts fetching `content` unless it is held or already being fetched. Returns false if
    /// it was already under way or complete.
    pub fn want(self: &Arc<Self>, content: ContentId, size_bytes: u64) -> bool {
        if self.store.complete_path(&content).is_some() {
            return false;
        }
        {
            let mut p = self.progress.lock().expect("progress lock");
            if p.get(&content).is_some_and(|x| x.state == "fetching") {
                return false;
            }
            p.insert(
                content,
                Progress {
                    content: content.to_string(),
                    size_bytes,
                    have_bytes: 0,
                    rate_bytes_per_s: 0,
                    sources_active: 0,
                    sources_known: 0,
                    role: "lan",
                    state: "fetching",
                    error: None,
                    lan_bytes: 0,
                    wan_bytes: 0,
                    dropped: BTreeMap::new(),
                    resumed_bytes: 0,
                    elapsed_ms: 0,
                },
            );
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _slot = me.downloads.acquire().await;
            let started = Instant::now();
            let result = me.download(content, size_bytes, started).await;
            let mut p = me.progress.lock().expect("progress lock");
            if let Some(x) = p.get_mut(&content) {
                x.elapsed_ms = started.elapsed().as_millis() as u64;
                match result {
                    Ok(()) => {
                        x.state = "complete";
                        x.have_bytes = size_bytes;
                        x.sources_active = 0;
                        tracing::info!(content = %content, size_bytes, ms = x.elapsed_ms, lan_bytes = x.lan_bytes, wan_bytes = x.wan_bytes, "payload complete");
                    }
                    Err(e) => {
                        tracing::warn!(content = %content, error = %e, "download stopped");
                        x.state = "failed";
                        x.error = Some(e);
                    }
                }
            }
        });
        true
    }

    fn penalize(&self, node: &NodeId, why: &'static str) {
        if let Some(peer) = crate::net::peer_of(node) {
            let _ = self.to_daemon.try_send(ToDaemon::Penalize(peer, why));
        }
    }

    /// Keeps the planner's sources and role in step with the peers and providers.
    fn sync_sources(&self, d: &mut Download, resting: &HashMap<NodeId, Instant>) {
        let view = self.view.borrow().clone();
        let live: Vec<NodeId> =
            view.peers.iter().filter(|(_, (_, s))| *s == self.site).map(|(n, _)| *n).collect();
        d.set_role(role_of(d.content(), &self.me, &live));
        let providers = self
            .providers
            .lock()
            .expect("providers lock")
            .get(d.content())
            .cloned()
            .unwrap_or_default();
        let mut wanted: BTreeSet<NodeId> = BTreeSet::new();
        for (n, (_, site)) in &view.peers {
            if resting.contains_key(n) {
                continue;
            }
            d.add_source(*n, *site == self.site);
            wanted.insert(*n);
        }
        for n in providers {
            if resting.contains_key(&n) {
                continue;
            }
            if !view.peers.contains_key(&n) {
                // A provider we are not connected to yet: its site is unknown, so only the
                // elected node uses it; opening a stream dials it.
                d.add_source(n, false);
            }
            wanted.insert(n);
        }
        let gone: Vec<NodeId> =
            d.sources().keys().filter(|n| !wanted.contains(n)).copied().collect();
        for n in gone {
            d.remove_source(&n);
        }
    }

    async fn download(
        self: &Arc<Self>,
        content: ContentId,
        size_bytes: u64,
        started: Instant,
    ) -> Result<(), String> {
        let have = self.store.begin(&content, size_bytes).map_err(|e| e.to_string())?;
        let mut d = Download::new(content, size_bytes, have, self.cfg.params.clone());
        if let Some(x) = self.progress.lock().expect("progress lock").get_mut(&content) {
            x.resumed_bytes = d.have_bytes();
        }
        let (tx, mut rx) = mpsc::channel::<Ev>(1024);
        let mut tasks: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
        let mut outboard_from: Option<NodeId> = None;
        // Sources whose stream broke (no offence) rest a moment before they are used again.
        let mut resting: HashMap<NodeId, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_check = Instant::now();
        let mut last_lookup: Option<Instant> = None;
        let mut no_source_since = Instant::now();
        let mut rate = RateMeter::new(d.have_bytes());
        let (mut lan_bytes, mut wan_bytes) = (0u64, 0u64);
        let mut dropped: BTreeMap<&'static str, u32> = BTreeMap::new();
        loop {
            if d.is_complete() {
                self.store.finish(&content).map_err(|e| e.to_string())?;
                let _ = self.to_daemon.try_send(ToDaemon::Provide(content));
                return Ok(());
            }
            resting.retain(|_, until| *until > Instant::now());
            self.sync_sources(&mut d, &resting);
            let now = crate::daemon::now_ms();
            let outboard = self.store.has_outboard(&content);
            // Without the outboard nothing can be verified: ask what sources hold, take the
            // outboard from one that holds something, and fetch nothing yet.
            let actions = if outboard { d.poll(Millis(now.0)) } else { d.poll_asks(Millis(now.0)) };
            for action in actions {
                tracing::debug!(content = %content, ?action, "download action");
                match action {
                    Action::AskHave(n) => {
                        self.spawn_have(n, content, tx.clone());
                    }
                    Action::Fetch(req) => {
                        let lan = d.sources().get(&req.source).is_some_and(|s| s.lan);
                        let id = req.id;
                        let h = self.spawn_range(req, content, size_bytes, lan, tx.clone());
                        tasks.insert(id, h);
                    }
                }
            }
            if !outboard && outboard_from.is_none() {
                let holder = d.sources().iter().find(|(_, s)| {
                    s.banned.is_none()
                        && (s.lan || d.role() == Role::Wan)
                        && s.have.as_ref().is_some_and(|a| *a != Availability::Nothing)
                });
                if let Some((n, _)) = holder {
                    outboard_from = Some(*n);
                    self.spawn_outboard(*n, content, size_bytes, tx.clone());
                }
            }
            let holders = d
                .sources()
                .values()
                .filter(|s| {
                    s.banned.is_none()
                        && s.have.as_ref().is_some_and(|a| *a != Availability::Nothing)
                })
                .count();
            if holders > 0 {
                no_source_since = Instant::now();
            } else if no_source_since.elapsed() > NO_SOURCE_TIMEOUT {
                return Err(format!(
                    "no admitted peer served {content} for {} s",
                    NO_SOURCE_TIMEOUT.as_secs()
                ));
            }
            // The elected node with nobody to fetch from looks in the DHT.
            if holders == 0
                && d.role() == Role::Wan
                && last_lookup.is_none_or(|t| t.elapsed() > Duration::from_secs(5))
            {
                last_lookup = Some(Instant::now());
                let _ = self.to_daemon.try_send(ToDaemon::FindProviders(content));
            }
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = tick.tick() => None,
            };
            let mut evs: Vec<Ev> = ev.into_iter().collect();
            while let Ok(more) = rx.try_recv() {
                evs.push(more);
            }
            for ev in evs {
                tracing::debug!(content = %content, event = ?ev, role = ?d.role(), "download event");
                match ev {
                    Ev::Have(n, r) => {
                        match r {
                            Ok((size, avail))
                                if size == size_bytes || avail == Availability::Nothing =>
                            {
                                if let Some(f) = d.on_have(&n, avail) {
                                    self.fault(&mut d, &mut tasks, &mut dropped, n, f);
                                }
                            }
                            Ok(_) => {
                                // Holds another size under this id: it cannot help this download.
                                self.fault(&mut d, &mut tasks, &mut dropped, n, Fault::Protocol);
                            }
                            Err(Some(f)) => self.fault(&mut d, &mut tasks, &mut dropped, n, f),
                            Err(None) => {
                                d.on_have_failed(&n);
                                d.remove_source(&n);
                                resting.insert(n, Instant::now() + Duration::from_secs(1));
                            }
                        }
                    }
                    Ev::Outboard(n, r) => {
                        outboard_from = None;
                        match r.map(|bytes| self.store.set_outboard(&content, &bytes)) {
                            Ok(Ok(())) => {
                                // The partial file may hold groups from before (a resume).
                                let have = self
                                    .store
                                    .begin(&content, size_bytes)
                                    .map_err(|e| e.to_string())?;
                                let mut fresh = Download::new(
                                    content,
                                    size_bytes,
                                    have,
                                    self.cfg.params.clone(),
                                );
                                for (node, s) in d.sources() {
                                    fresh.add_source(*node, s.lan);
                                    if let Some(f) = s.banned {
                                        fresh.on_fault(node, f);
                                    } else if let Some(a) = &s.have {
                                        fresh.on_have(node, a.clone());
                                    }
                                }
                                d = fresh;
                                rate = RateMeter::new(d.have_bytes());
                                if let Some(x) =
                                    self.progress.lock().expect("progress lock").get_mut(&content)
                                {
                                    x.resumed_bytes = d.have_bytes();
                                }
                                if d.have_bytes() > 0 {
                                    tracing::info!(content = %content, resumed_bytes = d.have_bytes(), "resuming a partial payload");
                                }
                            }
                            Ok(Err(StoreError::DiskFull(_))) => {
                                return Err(StoreError::DiskFull(content).to_string())
                            }
                            Ok(Err(_)) => {
                                self.fault(&mut d, &mut tasks, &mut dropped, n, Fault::Corrupt)
                            }
                            Err(Some(f)) => self.fault(&mut d, &mut tasks, &mut dropped, n, f),
                            Err(None) => {
                                self.fault(&mut d, &mut tasks, &mut dropped, n, Fault::Protocol)
                            }
                        }
                    }
                    Ev::Groups(id, first, count, lan) => {
                        for g in first..first + count {
                            // A group can arrive twice when a released range was handed to
                            // another source while the first was still sending; count it once.
                            if d.on_group(id, g) {
                                let (_, len) = group_span(size_bytes, g);
                                if lan {
                                    lan_bytes += len;
                                } else {
                                    wan_bytes += len;
                                }
                            }
                        }
                    }
                    Ev::Done(id) => {
                        tasks.remove(&id);
                        d.on_done(id);
                    }
                    Ev::Fault(n, f) => self.fault(&mut d, &mut tasks, &mut dropped, n, f),
                    Ev::Idle => {}
                    Ev::Broken(n) => {
                        // A dropped connection is no offence: the source's ranges go back and
                        // it is asked again after a rest, if it is still there.
                        if outboard_from == Some(n) {
                            outboard_from = None;
                        }
                        for id in d.remove_source(&n) {
                            if let Some(h) = tasks.remove(&id) {
                                h.abort();
                            }
                        }
                        resting.insert(n, Instant::now() + Duration::from_secs(1));
                    }
                    Ev::Stop(e) => {
                        for (_, h) in tasks.drain() {
                            h.abort();
                        }
                        return Err(match e {
                            StoreError::DiskFull(_) => StoreError::DiskFull(content).to_string(),
                            other => other.to_string(),
                        });
                    }
                }
            }
            if last_check.elapsed() >= Duration::from_secs(1) {
                last_check = Instant::now();
                for (n, ids) in d.check(crate::daemon::now_ms()) {
                    tracing::warn!(peer = %n, content = %content, "source below the minimum rate; dropped");
                    *dropped.entry(Fault::Slow.kind()).or_default() += 1;
                    self.penalize(&n, "slow");
                    for id in ids {
                        if let Some(h) = tasks.remove(&id) {
                            h.abort();
                        }
                    }
                }
            }
            let mut p = self.progress.lock().expect("progress lock");
            if let Some(x) = p.get_mut(&content) {
                x.have_bytes = d.have_bytes();
                x.rate_bytes_per_s = rate.update(d.have_bytes());
                x.sources_active = d.active_sources();
                x.sources_known = d.sources().len();
                x.role = if d.role() == Role::Wan { "wan" } else { "lan" };
                x.lan_bytes = lan_bytes;
                x.wan_bytes = wan_bytes;
                x.dropped = dropped.clone();
                x.elapsed_ms = started.elapsed().as_millis() as u64;
            }
        }
    }

    fn fault(
        &self,
        d: &mut Download,
        tasks: &mut HashMap<u64, tokio::task::AbortHandle>,
        dropped: &mut BTreeMap<&'static str, u32>,
        n: NodeId,
        f: Fault,
    ) {
        if d.sources().get(&n).is_some_and(|s| s.banned.is_some()) {
            return;
        }
        tracing::warn!(peer = %n, content = %d.content(), fault = f.kind(), "dropping a payload source");
        *dropped.entry(f.kind()).or_default() += 1;
        self.penalize(&n, f.kind());
        for id in d.on_fault(&n, f) {
            if let Some(h) = tasks.remove(&id) {
                h.abort();
            }
        }
    }

    async fn open(&self, node: &NodeId) -> Result<libp2p::Stream, ()> {
        let peer = crate::net::peer_of(node).ok_or(())?;
        let mut control = self.control.clone();
        match tokio::time::timeout(REPLY_TIMEOUT, control.open_stream(peer, self.proto.clone()))
            .await
        {
            Ok(Ok(s)) => Ok(s),
            _ => Err(()),
        }
    }

    /// Opens a stream to `n`, sends `req` and reads the reply header.
    async fn ask(
        &self,
        n: &NodeId,
        req: &DataRequest,
    ) -> Result<(libp2p::Stream, DataReply), Option<Fault>> {
        let mut s = self.open(n).await.map_err(|()| None)?;
        write_frame(&mut s, &req.to_bytes()).await.map_err(|_| None)?;
        let reply = read_reply(&mut s).await?;
        Ok((s, reply))
    }

    fn spawn_have(self: &Arc<Self>, n: NodeId, content: ContentId, tx: mpsc::Sender<Ev>) {
        let me = self.clone();
        tokio::spawn(async move {
            let r = match me.ask(&n, &DataRequest::Have { content }).await {
                Ok((_, DataReply::Have { size_bytes, availability })) => {
                    Ok((size_bytes, availability))
                }
                Ok(_) => Err(Some(Fault::Protocol)),
                Err(e) => Err(e),
            };
            let _ = tx.send(Ev::Have(n, r)).await;
        });
    }

    fn spawn_outboard(
        self: &Arc<Self>,
        n: NodeId,
        content: ContentId,
        size_bytes: u64,
        tx: mpsc::Sender<Ev>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let r = async {
                let mut s = match me.ask(&n, &DataRequest::Outboard { content }).await? {
                    (s, DataReply::Outboard { size_bytes: sz }) if sz == size_bytes => s,
                    (_, DataReply::Missing) => return Err(Some(Fault::Lied)),
                    _ => return Err(Some(Fault::Protocol)),
                };
                let mut bytes = vec![0u8; (group_count(size_bytes) * 32) as usize];
                tokio::time::timeout(GROUP_TIMEOUT, s.read_exact(&mut bytes))
                    .await
                    .map_err(|_| Some(Fault::Slow))?
                    .map_err(|_| None)?;
                Ok(bytes)
            }
            .await;
            let _ = tx.send(Ev::Outboard(n, r)).await;
        });
    }

    fn spawn_range(
        self: &Arc<Self>,
        req: Request,
        content: ContentId,
        size_bytes: u64,
        lan: bool,
        tx: mpsc::Sender<Ev>,
    ) -> tokio::task::AbortHandle {
        let me = self.clone();
        tokio::spawn(async move {
            let ev = me.fetch_range(&req, content, size_bytes, lan, &tx).await;
            let _ = tx.send(ev).await;
        })
        .abort_handle()
    }

    async fn fetch_range(
        &self,
        req: &Request,
        content: ContentId,
        size_bytes: u64,
        lan: bool,
        tx: &mpsc::Sender<Ev>,
    ) -> Ev {
        let n = req.source;
        let ask = DataRequest::Range { content, first: req.first, count: req.count };
        let mut s = match self.ask(&n, &ask).await {
            Ok((s, DataReply::Range { size_bytes: sz })) if sz == size_bytes => s,
            // The planner asks only for groups the source said it holds.
            Ok((_, DataReply::Missing)) => return Ev::Fault(n, Fault::Lied),
            Ok(_) => return Ev::Fault(n, Fault::Protocol),
            Err(Some(f)) => return Ev::Fault(n, f),
            Err(None) => return Ev::Broken(n),
        };
        // Read a batch of groups at once, then verify and write each: fewer wake-ups and one
        // event per batch.
        const BATCH: u64 = 16;
        let group = patchmesh_protocol::transfer::GROUP_BYTES;
        let mut buf = vec![0u8; (BATCH * group) as usize];
        let end = req.first + req.count;
        let mut g = req.first;
        while g < end {
            let n_groups = BATCH.min(end - g);
            let (start, _) = group_span(size_bytes, g);
            let (last_off, last_len) = group_span(size_bytes, g + n_groups - 1);
            let len = last_off + last_len - start;
            self.node_bucket.take(len).await;
            if !lan {
                self.wan_bucket.take(len).await;
            }
            let part = &mut buf[..len as usize];
            match tokio::time::timeout(GROUP_TIMEOUT, s.read_exact(part)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ev::Broken(n),
                Err(_) => return Ev::Fault(n, Fault::Slow),
            }
            let mut written = 0;
            for k in 0..n_groups {
                let (off, glen) = group_span(size_bytes, g + k);
                let at = (off - start) as usize;
                match self.store.write_group(&content, g + k, &part[at..at + glen as usize]) {
                    Ok(_) => written += 1,
                    Err(e) => {
                        if written > 0 {
                            let _ = tx.send(Ev::Groups(req.id, g, written, lan)).await;
                        }
                        return match e {
                            StoreError::Corrupt { .. } => Ev::Fault(n, Fault::Corrupt),
                            other => Ev::Stop(other),
                        };
                    }
                }
            }
            let _ = tx.send(Ev::Groups(req.id, g, n_groups, lan)).await;
            g += n_groups;
        }
        // The range is complete: the source may take the next one at once. Anything more on
        // this stream is past what was promised, and still costs the source its place.
        let _ = tx.send(Ev::Done(req.id)).await;
        let mut extra = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut extra)).await {
            Ok(Ok(n_read)) if n_read > 0 => Ev::Fault(n, Fault::Overrun),
            _ => Ev::Idle,
        }
    }

    /// Serves incoming data streams until the node stops.
    pub async fn serve(self: Arc<Self>, mut incoming: libp2p_stream::IncomingStreams) {
        while let Some((peer, stream)) = incoming.next().await {
            let Ok(permit) = self.serving.clone().try_acquire_owned() else {
                // Over the limit: the stream is dropped, the requester retries elsewhere.
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                me.serve_one(peer, stream).await;
            });
        }
    }

    fn admitted(&self, peer: &PeerId) -> bool {
        crate::net::node_of(peer).is_some_and(|n| self.view.borrow().peers.contains_key(&n))
    }

    async fn serve_one(&self, peer: PeerId, mut s: libp2p::Stream) {
        if !self.admitted(&peer) {
            return;
        }
        let req = match tokio::time::timeout(REPLY_TIMEOUT, read_frame(&mut s)).await {
            Ok(Ok(bytes)) => match DataRequest::from_bytes(&bytes) {
                Ok(r) => r,
                Err(_) => {
                    let _ =
                        self.to_daemon.try_send(ToDaemon::Penalize(peer, "malformed data request"));
                    return;
                }
            },
            _ => return,
        };
        let _ = self.answer(peer, &mut s, req).await;
        let _ = s.close().await;
    }

    async fn answer(
        &self,
        peer: PeerId,
        s: &mut libp2p::Stream,
        req: DataRequest,
    ) -> std::io::Result<()> {
        match req {
            DataRequest::Have { content } => {
                let (size_bytes, availability) = self.store.availability(&content);
                write_frame(s, &DataReply::Have { size_bytes, availability }.to_bytes()).await
            }
            DataRequest::Outboard { content } => match self.store.outboard(&content) {
                Some((size_bytes, bytes)) => {
                    write_frame(s, &DataReply::Outboard { size_bytes }.to_bytes()).await?;
                    s.write_all(&bytes).await
                }
                None => write_frame(s, &DataReply::Missing.to_bytes()).await,
            },
            DataRequest::Range { content, first, count } => {
                let Some(size_bytes) = self.store.size_of(&content) else {
                    return write_frame(s, &DataReply::Missing.to_bytes()).await;
                };
                let (offset, len) = match check_range(size_bytes, first, count) {
                    Ok(span) => span,
                    Err(e) => {
                        let _ =
                            self.to_daemon.try_send(ToDaemon::Penalize(peer, "bad range request"));
                        let reply = DataReply::Refused { reason: e.to_string() };
                        return write_frame(s, &reply.to_bytes()).await;
                    }
                };
                let Some((file, _)) = self.store.reader(&content, first, count) else {
                    return write_frame(s, &DataReply::Missing.to_bytes()).await;
                };
                write_frame(s, &DataReply::Range { size_bytes }.to_bytes()).await?;
                let mut buf = vec![0u8; SERVE_CHUNK_BYTES];
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(SERVE_CHUNK_BYTES as u64) as usize;
                    let at = offset + done;
                    let f = file.clone();
                    let mut b = std::mem::take(&mut buf);
                    let (b, r) = tokio::task::spawn_blocking(move || {
                        let r = std::os::unix::fs::FileExt::read_exact_at(&*f, &mut b[..n], at);
                        (b, r)
                    })
                    .await
                    .map_err(std::io::Error::other)?;
                    buf = b;
                    r?;
                    self.node_bucket.take(n as u64).await;
                    s.write_all(&buf[..n]).await?;
                    done += n as u64;
                }
                Ok(())
            }
        }
    }
}

/// Recent download rate over a few seconds.
struct RateMeter {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl RateMeter {
    fn new(bytes: u64) -> RateMeter {
        let mut samples = std::collections::VecDeque::new();
        samples.push_back((Instant::now(), bytes));
        RateMeter { samples }
    }
    fn update(&mut self, bytes: u64) -> u64 {
        let now = Instant::now();
        self.samples.push_back((now, bytes));
        while self.samples.len() > 2
            && now.duration_since(self.samples[0].0) > Duration::from_secs(3)
        {
            self.samples.pop_front();
        }
        let (t0, b0) = self.samples[0];
        let secs = now.duration_since(t0).as_secs_f64();
        if secs < 0.05 {
            return 0;
        }
        ((bytes.saturating_sub(b0)) as f64 / secs) as u64
    }
}

/// Writes one length-prefixed frame.
pub async fn write_frame<S: futures::AsyncWrite + Unpin>(
    s: &mut S,
    body: &[u8],
) -> std::io::Result<()> {
    s.write_all(&(body.len() as u32).to_le_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await
}

/// Reads one length-prefixed frame, refusing one over the limit before reading it.
pub async fn read_frame<S: futures::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limits::DATA_FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "data frame over the limit",
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(body)
}

/// Reads a reply header: `Err(Some(fault))` for a peer's fault, `Err(None)` for a lost stream.
async fn read_reply<S: futures::AsyncRead + Unpin>(s: &mut S) -> Result<DataReply, Option<Fault>> {
    match tokio::time::timeout(REPLY_TIMEOUT, read_frame(s)).await {
        Err(_) => Err(Some(Fault::Slow)),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Err(Some(Fault::Protocol)),
        Ok(Err(_)) => Err(None),
        Ok(Ok(bytes)) => DataReply::from_bytes(&bytes).map_err(|_| Some(Fault::Protocol)),
    }
}
