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
use patchmesh_protocol::transfer::fetch::{Failure, Fetch, FetchInput, FetchOutput};
use patchmesh_protocol::transfer::plan::{Fault, Params, Request};
use patchmesh_protocol::transfer::{
    check_range, group_count, group_span, DataReply, DataRequest, Role,
};
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
/// Streams served at once to one peer: a quarter of the whole, so a peer that opens streams
/// and never asks (or asks slowly) cannot take every slot from the others. An honest peer
/// has at most `requests_per_source` ranges per download in flight to one source.
const SERVE_STREAMS_PER_PEER: usize = SERVE_STREAMS_MAX / 4;
/// Downloads at once.
const DOWNLOADS_MAX: usize = 16;
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
pub type Progress = crate::control::ContentView;

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
    /// Streams being served, per peer (entries leave at zero).
    serving_by_peer: Arc<Mutex<HashMap<PeerId, usize>>>,
}

/// A peer's place among the streams served; gives it back when dropped.
struct PeerSlot {
    peer: PeerId,
    by_peer: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl PeerSlot {
    fn take(by_peer: &Arc<Mutex<HashMap<PeerId, usize>>>, peer: PeerId) -> Option<PeerSlot> {
        let mut m = by_peer.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(peer).or_default();
        if *n >= SERVE_STREAMS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot { peer, by_peer: by_peer.clone() })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.by_peer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

/// Events from a download's stream tasks to its loop.
#[derive(Debug)]
enum Ev {
    /// Something for the core, as is.
    Input(FetchInput),
    /// Outboard bytes from a source (checked and stored by the loop), or how asking failed.
    Outboard(NodeId, Result<Vec<u8>, Failure>),
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
            serving_by_peer: Arc::new(Mutex::new(HashMap::new())),
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

    /// Holders of a content found in the DHT, as many as the DHT keeps: the download's
    /// [`Fetch`] keeps the best-ranked for this node among them.
    pub fn add_providers(&self, content: ContentId, nodes: impl IntoIterator<Item = NodeId>) {
        let mut p = self.providers.lock().expect("providers lock");
        let set = p.entry(content).or_default();
        for n in nodes {
            if n != self.me && set.len() < limits::DHT_PROVIDERS_PER_KEY {
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
                    role: "lan".into(),
                    state: "fetching".into(),
                    ..Default::default()
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
                        x.state = "complete".into();
                        x.have_bytes = size_bytes;
                        x.sources_active = 0;
                        tracing::info!(content = %content, size_bytes, ms = x.elapsed_ms, lan_bytes = x.lan_bytes, wan_bytes = x.wan_bytes, "payload complete");
                    }
                    Err(e) => {
                        tracing::warn!(content = %content, error = %e, "download stopped");
                        x.state = "failed".into();
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

    /// Connected admitted peers, each with its site (`None`: this node's).
    fn peers_input(&self) -> Vec<(NodeId, Option<SiteId>)> {
        let view = self.view.borrow();
        view.peers
            .iter()
            .map(|(n, (_, site))| (*n, (*site != self.site).then(|| site.clone())))
            .collect()
    }

    fn providers_of(&self, content: &ContentId) -> Vec<NodeId> {
        let p = self.providers.lock().expect("providers lock");
        p.get(content).map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    /// One download: feeds the core's [`Fetch`] with peers, providers and what the stream
    /// tasks report, and carries out its outputs. Every decision is the core's; this loop
    /// moves bytes and time. Time is monotonic milliseconds since the download started.
    async fn download(
        self: &Arc<Self>,
        content: ContentId,
        size_bytes: u64,
        started: Instant,
    ) -> Result<(), String> {
        let have = self.store.begin(&content, size_bytes).map_err(|e| e.to_string())?;
        let now = || Millis(started.elapsed().as_millis() as u64);
        let has_outboard = self.store.has_outboard(&content);
        let params = self.cfg.params.clone();
        let mut f = Fetch::new(self.me, content, size_bytes, have, has_outboard, params, now());
        if let Some(x) = self.progress.lock().expect("progress lock").get_mut(&content) {
            x.resumed_bytes = f.download().have_bytes();
        }
        let (tx, mut rx) = mpsc::channel::<Ev>(1024);
        let mut tasks: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
        let mut view = self.view.clone();
        f.handle_input(now(), FetchInput::Site(self.site.clone()));
        f.handle_input(now(), FetchInput::Peers(self.peers_input()));
        let mut providers_known = 0;
        let mut rate = RateMeter::new(f.download().have_bytes());
        // A site's elected fetcher announces itself in the DHT once it holds a verified group,
        // not only when complete: other sites' fetchers find the site and the parts it has,
        // and feed each other. One record a site (its members announce when complete) keeps
        // the DHT's records spread over the sites fetching.
        let mut announced = false;
        loop {
            let elected = f.download().role() == Role::Wan;
            if !announced && elected && f.has_outboard() && f.download().have_bytes() > 0 {
                announced = true;
                let _ = self.to_daemon.try_send(ToDaemon::Provide(content));
            }
            while let Some(out) = f.poll_output() {
                tracing::trace!(content = %content, ?out, "download output");
                match out {
                    FetchOutput::AskHave(n) => self.spawn_have(n, content, tx.clone()),
                    FetchOutput::GetOutboard(n) => {
                        self.spawn_outboard(n, content, size_bytes, tx.clone())
                    }
                    FetchOutput::FetchRange { request, lan } => {
                        let id = request.id;
                        let h = self.spawn_range(request, content, size_bytes, lan, tx.clone());
                        tasks.insert(id, h);
                    }
                    FetchOutput::Cancel(id) => {
                        if let Some(h) = tasks.remove(&id) {
                            h.abort();
                        }
                    }
                    FetchOutput::FindProviders => {
                        let _ = self.to_daemon.try_send(ToDaemon::FindProviders(content));
                    }
                    FetchOutput::Penalize(n, fault) => {
                        tracing::warn!(peer = %n, content = %content, fault = fault.kind(), "payload source misbehaved");
                        self.penalize(&n, fault.kind());
                    }
                    FetchOutput::Complete => {
                        for (_, h) in tasks.drain() {
                            h.abort();
                        }
                        // The final flush blocks: off the async workers.
                        let store = self.store.clone();
                        tokio::task::spawn_blocking(move || store.finish(&content))
                            .await
                            .map_err(|e| e.to_string())?
                            .map_err(|e| e.to_string())?;
                        let _ = self.to_daemon.try_send(ToDaemon::Provide(content));
                        self.update_progress(&f, &mut rate, started);
                        return Ok(());
                    }
                    FetchOutput::Failed(reason) => {
                        for (_, h) in tasks.drain() {
                            h.abort();
                        }
                        return Err(reason);
                    }
                }
            }
            self.update_progress(&f, &mut rate, started);
            let wait = f
                .poll_timeout()
                .map_or(Duration::from_secs(1), |at| Duration::from_millis(at.since(now())));
            tokio::select! {
                ev = rx.recv() => {
                    let mut evs: Vec<Ev> = ev.into_iter().collect();
                    while let Ok(more) = rx.try_recv() {
                        evs.push(more);
                    }
                    for ev in evs {
                        let input = self.input_of(ev, &content, size_bytes, &mut tasks);
                        f.handle_input(now(), input);
                    }
                }
                changed = view.changed() => {
                    if changed.is_ok() {
                        f.handle_input(now(), FetchInput::Peers(self.peers_input()));
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
            // The deadline is checked here, not only when the sleep wins: while events keep
            // coming (a fast transfer reports groups every millisecond) the sleep is made anew
            // each turn and would never fire, and the core's rate checks would never run.
            if f.poll_timeout().is_some_and(|at| now() >= at) {
                let providers = self.providers_of(&content);
                if providers.len() != providers_known {
                    providers_known = providers.len();
                    f.handle_input(now(), FetchInput::Providers(providers));
                }
                f.handle_timeout(now());
            }
        }
    }

    /// Turns what a stream task reports into the core's input; the outboard is checked and
    /// stored here, before the core hears of it.
    fn input_of(
        &self,
        ev: Ev,
        content: &ContentId,
        size_bytes: u64,
        tasks: &mut HashMap<u64, tokio::task::AbortHandle>,
    ) -> FetchInput {
        match ev {
            Ev::Input(input) => {
                if let FetchInput::RangeEnded { request, .. } = &input {
                    tasks.remove(request);
                }
                input
            }
            Ev::Outboard(source, Err(failure)) => {
                FetchInput::Outboard { source, result: Err(failure) }
            }
            Ev::Outboard(source, Ok(bytes)) => match self.store.set_outboard(content, &bytes) {
                Ok(()) => match self.store.begin(content, size_bytes) {
                    Ok(have) => FetchInput::Outboard { source, result: Ok(have) },
                    Err(e) => FetchInput::Stop(e.to_string()),
                },
                Err(StoreError::DiskFull(_)) => {
                    FetchInput::Stop(StoreError::DiskFull(*content).to_string())
                }
                Err(_) => {
                    FetchInput::Outboard { source, result: Err(Failure::Fault(Fault::Corrupt)) }
                }
            },
        }
    }

    fn update_progress(&self, f: &Fetch, rate: &mut RateMeter, started: Instant) {
        let d = f.download();
        let mut p = self.progress.lock().expect("progress lock");
        if let Some(x) = p.get_mut(d.content()) {
            let stats = f.stats();
            x.have_bytes = d.have_bytes();
            x.rate_bytes_per_s = rate.update(d.have_bytes());
            x.sources_active = d.active_sources();
            x.sources_known = d.sources().len();
            x.sources_resting = f.resting();
            x.role = if d.role() == Role::Wan { "wan" } else { "lan" }.into();
            x.lan_bytes = stats.lan_bytes;
            x.wan_bytes = stats.wan_bytes;
            x.dropped = stats.dropped.iter().map(|(k, n)| (k.to_string(), *n)).collect();
            x.penalised = stats.penalised;
            x.duplicate_groups = stats.duplicate_groups;
            x.waiting_ms = f.waiting_ms(Millis(started.elapsed().as_millis() as u64));
            x.elapsed_ms = started.elapsed().as_millis() as u64;
        }
    }

    async fn open(&self, node: &NodeId) -> Result<libp2p::Stream, Failure> {
        let peer = crate::net::peer_of(node).ok_or(Failure::Lost)?;
        let mut control = self.control.clone();
        match tokio::time::timeout(REPLY_TIMEOUT, control.open_stream(peer, self.proto.clone()))
            .await
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                tracing::debug!(peer = %node, error = %e, "opening a data stream failed");
                Err(Failure::Lost)
            }
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// Opens a stream to `n`, sends `req` and reads the reply header.
    async fn ask(
        &self,
        n: &NodeId,
        req: &DataRequest,
    ) -> Result<(libp2p::Stream, DataReply), Failure> {
        let mut s = self.open(n).await?;
        // A stream the server drops unread fails here or at the reply header: the server's
        // stream acceptor holds one new stream at a time and drops the rest while busy
        // (libp2p-stream), which is no failure of the source. A lost connection fails at
        // `open` instead.
        write_frame(&mut s, &req.to_bytes()).await.map_err(|e| {
            tracing::debug!(peer = %n, error = %e, "a data request was turned away");
            Failure::Busy
        })?;
        let reply = match read_reply(&mut s).await {
            Err(Failure::Lost) => Err(Failure::Busy),
            other => other,
        }?;
        Ok((s, reply))
    }

    fn spawn_have(self: &Arc<Self>, n: NodeId, content: ContentId, tx: mpsc::Sender<Ev>) {
        let me = self.clone();
        tokio::spawn(async move {
            let reply = match me.ask(&n, &DataRequest::Have { content }).await {
                Ok((_, DataReply::Have { size_bytes, availability })) => {
                    Ok((size_bytes, availability))
                }
                Ok(_) => Err(Failure::Fault(Fault::Protocol)),
                Err(e) => Err(e),
            };
            let _ = tx.send(Ev::Input(FetchInput::Have { source: n, reply })).await;
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
                    (_, DataReply::Missing) => return Err(Failure::Fault(Fault::Lied)),
                    _ => return Err(Failure::Fault(Fault::Protocol)),
                };
                let mut bytes = vec![0u8; (group_count(size_bytes) * 32) as usize];
                tokio::time::timeout(GROUP_TIMEOUT, s.read_exact(&mut bytes))
                    .await
                    .map_err(|_| Failure::Timeout)?
                    .map_err(|_| Failure::Lost)?;
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
            let request = req.id;
            let (result, stream) = match me.fetch_range(&req, content, size_bytes, lan, &tx).await {
                Ok(s) => (Ok(()), Some(s)),
                Err(e) => (Err(e), None),
            };
            let _ = tx.send(Ev::Input(FetchInput::RangeEnded { request, result })).await;
            // The range is complete: the source may take the next one at once. Anything more
            // on this stream is past what was promised, and still costs the source.
            if let Some(mut s) = stream {
                let mut extra = [0u8; 1];
                let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut extra)).await;
                if matches!(read, Ok(Ok(n)) if n > 0) {
                    let input = FetchInput::Fault { source: req.source, fault: Fault::Overrun };
                    let _ = tx.send(Ev::Input(input)).await;
                }
            }
        })
        .abort_handle()
    }

    /// Reports verified groups at once (`try_send` has no await point, so a cancel that
    /// aborts the task after a write cannot lose the report of what was written).
    async fn report(tx: &mpsc::Sender<Ev>, request: u64, first: u64, count: u64) {
        let ev = Ev::Input(FetchInput::Groups { request, first, count });
        if let Err(mpsc::error::TrySendError::Full(ev)) = tx.try_send(ev) {
            let _ = tx.send(ev).await;
        }
    }

    async fn fetch_range(
        &self,
        req: &Request,
        content: ContentId,
        size_bytes: u64,
        lan: bool,
        tx: &mpsc::Sender<Ev>,
    ) -> Result<libp2p::Stream, Failure> {
        let n = req.source;
        let ask = DataRequest::Range { content, first: req.first, count: req.count };
        let mut s = match self.ask(&n, &ask).await? {
            (s, DataReply::Range { size_bytes: sz }) if sz == size_bytes => s,
            // The planner asks only for groups the source said it holds.
            (_, DataReply::Missing) => return Err(Failure::Fault(Fault::Lied)),
            _ => return Err(Failure::Fault(Fault::Protocol)),
        };
        // Batches of groups, pipelined: while one batch is verified and written on a blocking
        // thread (a direct write waits for the disk), the next is read from the stream. The
        // runtime's workers stay free for the QUIC connection, which must keep draining its
        // socket: a receive buffer that overflows drops datagrams, and QUIC slows down for
        // each as if the path were congested.
        const BATCH: u64 = 16;
        let group = patchmesh_protocol::transfer::GROUP_BYTES;
        // Aligned, so the store can write a batch past the page cache.
        let new_buffer = || crate::content::aligned_buffer((BATCH * group) as usize);
        let mut spare = Some(new_buffer());
        let mut writing: Option<tokio::task::JoinHandle<Written>> = None;
        let end = req.first + req.count;
        let mut g = req.first;
        while g < end {
            let n_groups = BATCH.min(end - g);
            let (start, _) = group_span(size_bytes, g);
            let (last_off, last_len) = group_span(size_bytes, g + n_groups - 1);
            let len = (last_off + last_len - start) as usize;
            self.node_bucket.take(len as u64).await;
            if !lan {
                self.wan_bucket.take(len as u64).await;
            }
            let (mut buf, at) = spare.take().unwrap_or_else(new_buffer);
            let read =
                tokio::time::timeout(GROUP_TIMEOUT, s.read_exact(&mut buf[at..at + len])).await;
            // The batch before this one is stored (or not) whatever this read gave.
            if let Some(w) = writing.take() {
                spare = Some(self.stored(w, req.id, &content, tx).await?);
            }
            match read {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(peer = %n, error = %e, "reading a range failed");
                    return Err(Failure::Lost);
                }
                // Nothing for this long: the range goes back (a source that stays this slow is
                // rested by the core's rate check; never penalised).
                Err(_) => return Err(Failure::Timeout),
            }
            let store = self.store.clone();
            writing = Some(tokio::task::spawn_blocking(move || {
                // Verified and written in one go; the groups before a bad one are kept.
                let (written, result) = store.write_groups(&content, g, &buf[at..at + len]);
                Written { buf: (buf, at), first: g, written, result }
            }));
            g += n_groups;
        }
        if let Some(w) = writing.take() {
            self.stored(w, req.id, &content, tx).await?;
        }
        Ok(s)
    }

    /// Waits for a batch's verify-and-write, reports the groups stored and hands the buffer
    /// back; a corrupt group is the source's fault, a store error stops the download.
    async fn stored(
        &self,
        w: tokio::task::JoinHandle<Written>,
        request: u64,
        content: &ContentId,
        tx: &mpsc::Sender<Ev>,
    ) -> Result<(Vec<u8>, usize), Failure> {
        let Written { buf, first, written, result } = w.await.map_err(|_| Failure::Lost)?;
        if written > 0 {
            Self::report(tx, request, first, written).await;
        }
        if let Some(flush) = self.store.writeback_due(content) {
            drop(tokio::task::spawn_blocking(flush));
        }
        match result {
            Ok(()) => Ok(buf),
            Err(StoreError::Corrupt { .. }) => Err(Failure::Fault(Fault::Corrupt)),
            Err(other) => {
                let stop = match other {
                    StoreError::DiskFull(_) => StoreError::DiskFull(*content).to_string(),
                    other => other.to_string(),
                };
                let _ = tx.send(Ev::Input(FetchInput::Stop(stop))).await;
                Err(Failure::Lost)
            }
        }
    }

    /// Serves incoming data streams until the node stops.
    pub async fn serve(self: Arc<Self>, mut incoming: libp2p_stream::IncomingStreams) {
        while let Some((peer, stream)) = incoming.next().await {
            // Over either limit: the stream is dropped, the requester retries elsewhere.
            let Some(slot) = PeerSlot::take(&self.serving_by_peer, peer) else { continue };
            let Ok(permit) = self.serving.clone().try_acquire_owned() else { continue };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = (permit, slot);
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

/// A batch verified and written on a blocking thread: its buffer (and the aligned start in
/// it), to be reused, and what [`ContentStore::write_groups`] said.
struct Written {
    buf: (Vec<u8>, usize),
    first: u64,
    written: u64,
    result: Result<(), StoreError>,
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

/// Reads a reply header. A reply that does not come in time is the path's doing (a congested
/// link queues it behind other streams), not an offence.
async fn read_reply<S: futures::AsyncRead + Unpin>(s: &mut S) -> Result<DataReply, Failure> {
    let protocol = Failure::Fault(Fault::Protocol);
    match tokio::time::timeout(REPLY_TIMEOUT, read_frame(s)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Err(protocol),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "reading a data reply failed");
            Err(Failure::Lost)
        }
        Ok(Ok(bytes)) => DataReply::from_bytes(&bytes).map_err(|_| protocol),
    }
}
