//! # Payload transfer model
//!
//! Every honest node fetches one patch payload with the protocol core's download machine,
//! [`Fetch`], exactly as the real node's transfer task does (`node/src/transfer.rs`): the
//! same source policy (site election, WAN sources, rests, rotation, provider look-ups, piece
//! order), the same planner and the same timings from `limits.rs`. This module is only the
//! driver: it tells each `Fetch` what a real node's connections, DHT and streams would tell
//! it, carries out its outputs over modelled links, and moves simulated time. Nothing here
//! chooses a source, a range or a wait.
//!
//! ## What a node sees
//! - **Peers** ([`FetchInput::Peers`]): the live members of its site as the site sees them
//!   (the node dials every site member; a crashed member is seen gone [`DETECT_MS`] after it
//!   went, a restarted one at once) and its WAN links of the scenario's topology whose far
//!   end is up and not behind a partition (seen [`DETECT_MS`] after the cut, at once on the
//!   heal). The view is pushed again whenever it changes.
//! - **Providers** ([`FetchOutput::FindProviders`]): a directory modelling the Kademlia
//!   provider records the real node publishes. A node announces itself once it holds its
//!   first verified group (as the real node does), the record is visible one WAN round trip
//!   later, and the directory keeps the first [`limits::DHT_PROVIDERS_PER_KEY`] records of the
//!   content, as libp2p's record store does (later announcements are ignored, a defence against
//!   record flooding); a crashed node's record stays (records expire in hours). A look-up is
//!   answered two WAN round trips after it is made, sorted by node id like the node's set.
//!
//! ## Timing
//! - A question (`AskHave`) reaches the source after one one-way delay and is answered from
//!   what the source holds then (`Complete`, `Partial` with its bitfield, or `Nothing`); the
//!   answer takes another one-way delay. Questions to a source that is down or behind a
//!   partition fail as `Lost` after [`DETECT_MS`].
//! - The outboard (32 bytes per group) is sent like a range: its bytes cross every link on
//!   the path, and the WAN bytes count against the requester's site.
//! - A range is a flow whose bytes cross every bottleneck on the path: the source node's
//!   uplink and the destination node's downlink (LAN bandwidth) and, between sites, the source
//!   site's WAN uplink and the destination site's WAN downlink (WAN bandwidth, shared by every
//!   transfer of the site). Each link is a FIFO queue with a "free at" time. A flow sends a
//!   slice ([`WAN_SLICE_GROUPS`] or [`LAN_SLICE_GROUPS`]) through the source's hops and sends
//!   the next once it has left them, so flows sharing an uplink take turns: fair sharing at
//!   slice granularity, like the streams of a congestion-controlled transport. One one-way
//!   delay later the slice queues for the destination's hops (reserved only then, as a router
//!   queues what reached it), and its groups are verified when it has cleared them
//!   (`FetchInput::Groups`); `RangeEnded` follows the last.
//! - A source sends only groups it holds as each slice leaves. A flow whose source went down
//!   or whose path is cut stops, and the requester hears `RangeEnded(Lost)` after
//!   [`DETECT_MS`]. A cancelled flow sends nothing more, but slices already on the wire still
//!   arrive and are kept (the machine's contract: WAN bytes are never thrown away). WAN loss is
//!   left to the transport's retransmission: WAN bandwidth is taken as goodput.
//! - Each node's `Fetch` is woken at its [`Fetch::poll_timeout`] (in whole milliseconds, as
//!   the real node's timer), and after every input.
//!
//! ## Crashes
//! A crashed node's download stops; its verified groups and outboard persist (the real node
//! keeps them on disk) and it resumes on restart with a new `Fetch` from what it holds.
//!
//! ## Measured
//! Payload bytes, outboards and `Have` replies entering each site over the WAN (the design
//! promises about one payload per site), the time from publication to each node holding the
//! whole payload verified, take-overs of the WAN role, and peers penalised (an honest fleet
//! must penalise no one: a penalty is a violation).

use crate::scenario::{Link, PayloadSpec};
use crate::stats::Percentiles;
use patchmesh_protocol::ids::{ContentId, Millis, NodeId, SiteId};
use patchmesh_protocol::limits;
use patchmesh_protocol::transfer::fetch::{Failure, Fetch, FetchInput, FetchOutput};
use patchmesh_protocol::transfer::plan::{Params, Request};
use patchmesh_protocol::transfer::{
    self, group_count, Availability, Bitfield, DataReply, Role, GROUP_BYTES,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};

mod drive;
mod flows;
mod view;

/// Failure detection: a crashed peer (or one behind a new partition) is seen as gone this
/// long after it went, the time a transport's keep-alive takes to notice a silent peer. Open
/// questions and ranges to it fail at the same time.
pub const DETECT_MS: u64 = 2_000;
/// Groups a flow sends per slice across the WAN: the granularity of link sharing. One group
/// (16 KiB, 6.5 ms at 20 Mbit/s) keeps a flow's progress smooth enough for the machine's
/// rate checks even when a hundred flows share one site's uplink.
pub const WAN_SLICE_GROUPS: u64 = 1;
/// Groups per slice inside a site (128 KiB, 1 ms at 1 Gbit/s).
pub const LAN_SLICE_GROUPS: u64 = 8;
/// Bytes of outboard per group (one chaining value).
const OUTBOARD_BYTES_PER_GROUP: u64 = 32;

/// A node must have been up this long at the end of a run to be required to hold the
/// payload: a node restarted just before the end may still be catching up from its LAN.
pub const COMPLETE_GRACE_MS: u64 = 10_000;

/// What the world provides the model: time, the shared event queue and the trace.
pub(crate) trait Host {
    /// Simulated time, microseconds.
    fn now_us(&self) -> u64;
    /// Queues a payload event.
    fn schedule_payload(&mut self, at_us: u64, ev: PayloadEv);
    /// Adds a record to the run's trace hash.
    fn trace_payload(&mut self, code: u8, a: u32, b: u32, extra: u64);
}

/// Events of the payload model, ordered in the world's queue with every other event.
#[derive(Debug)]
pub(crate) enum PayloadEv {
    /// The payload is published at a random up node.
    Publish,
    /// A node's `Fetch` timer (deduplicated by `Holder::timer_at`).
    Timeout { node: u32, epoch: u32 },
    /// `AskHave`s arrive at their sources.
    HaveQuery { node: u32, epoch: u32, asked_us: u64, sources: Vec<u32> },
    /// Their answers arrive back.
    HaveReply { node: u32, epoch: u32, answers: Vec<(u32, Availability)> },
    /// Questions that reached no one fail.
    HaveFailed { node: u32, epoch: u32, sources: Vec<u32> },
    /// The outboard from `source` arrived (`ok`) or the source could not be reached.
    Outboard { node: u32, epoch: u32, source: u32, ok: bool },
    /// A provider look-up is answered.
    Providers { node: u32, epoch: u32 },
    /// A flow's source may send its next slice.
    FlowNext { key: FlowKey },
    /// A slice reaches the requester's side of the path (its downlinks).
    Downlink(Box<Arrival>),
    /// A slice reaches the requester.
    Arrive(Box<Arrival>),
    /// A flow that stopped (source gone, path cut) is noticed by its requester.
    FlowFailed { node: u32, epoch: u32, source: u32, req: u64 },
    /// A crashed node is seen as gone by its peers.
    SeenGone { node: u32, epoch: u32 },
    /// A site's cut from the WAN is noticed.
    CutSeen { site: u32 },
}

/// A flow: (requester, its epoch, request id).
pub(crate) type FlowKey = (u32, u32, u64);

/// One slice of a range arriving.
#[derive(Debug)]
pub(crate) struct Arrival {
    node: u32,
    epoch: u32,
    source: u32,
    req: u64,
    first: u64,
    count: u64,
    bytes: u64,
    last: bool,
}

/// What the model knows of one honest node.
struct Holder {
    up: bool,
    /// Incremented at each crash: events of an earlier life are dropped.
    epoch: u32,
    up_since_us: u64,
    /// Verified groups: what the node has on disk, kept across crashes.
    held: Bitfield,
    held_count: u64,
    /// Whether the outboard is on disk (kept across crashes).
    has_outboard: bool,
    fetch: Option<Fetch>,
    complete_us: Option<u64>,
    /// Why the download stopped, when it failed.
    failed: Option<String>,
    /// The earliest `Timeout` queued for this node (`u64::MAX`: none).
    timer_at: u64,
    /// The peers last given to its `Fetch`.
    peers: Vec<(NodeId, Option<SiteId>)>,
    /// Providers it was told of, which the real node dials: connected peers from then on.
    dialled: BTreeSet<u32>,
    /// Whether it announced itself in the DHT (once; the record outlives a crash).
    listed: bool,
}

/// A range being sent.
#[derive(Clone, Debug)]
struct Flow {
    source: u32,
    source_epoch: u32,
    next: u64,
    end: u64,
}

/// Figures for the report.
#[derive(Debug, Default)]
pub(crate) struct PayloadFigures {
    /// Max over sites of payload bytes entering the site over the WAN / payload size.
    pub wan_bytes_per_site_ratio: f64,
    /// Publication → complete, over nodes live at the end.
    pub complete_ms: Percentiles,
    /// Nodes counted in `complete_ms`.
    pub complete_nodes: usize,
    /// Times a downloading node took over its site's WAN fetch from a member seen gone.
    pub failovers: usize,
    /// Peers penalised by honest downloads (should be none).
    pub penalties: u32,
    /// Payload bytes that left the origin's site over the WAN / payload size: how many
    /// copies its uplink carried.
    pub origin_copies: f64,
    /// Nodes that should have completed and did not, and honest peers penalised.
    pub violations: Vec<String>,
}

/// The payload transfer model.
pub(crate) struct PayloadModel {
    spec: PayloadSpec,
    content: ContentId,
    groups: u64,
    params: Params,
    lan: Link,
    wan: Link,
    rng: ChaCha8Rng,
    ids: Vec<NodeId>,
    index: HashMap<NodeId, u32>,
    site_of: Vec<u32>,
    site_ids: Vec<SiteId>,
    /// Each node's WAN links (the scenario's topology, honest nodes only).
    wan_links: Vec<Vec<u32>>,
    holders: Vec<Holder>,
    /// Per site: the members its nodes see as live.
    seen: Vec<BTreeSet<u32>>,
    /// Sites cut from the WAN now (reachability) and as their peers see it (views).
    partitioned: Vec<bool>,
    cut_seen: Vec<bool>,
    /// The DHT's provider records: node → when its record became visible, in order of
    /// announcement, at most `DHT_PROVIDERS_PER_KEY`.
    providers: Vec<(u32, u64)>,
    flows: BTreeMap<FlowKey, Flow>,
    node_up_free: Vec<u64>,
    node_down_free: Vec<u64>,
    site_up_free: Vec<u64>,
    site_down_free: Vec<u64>,
    /// Payload bytes (and outboards and `Have` replies) entering each site over the WAN.
    wan_in: Vec<u64>,
    /// Payload bytes (and outboards) leaving each site over the WAN.
    wan_out: Vec<u64>,
    published_us: Option<u64>,
    /// The origin's site (set at publication).
    origin_site: usize,
    /// Times a downloading node took over its site's WAN fetch.
    failovers: usize,
    /// Peers penalised, as (penaliser, peer, fault).
    penalties: Vec<(u32, u32, &'static str)>,
}

impl PayloadModel {
    /// A model for honest nodes `ids` in sites `site_of`, all up at time zero, with the
    /// scenario's links `links` (only those between honest nodes of different sites count).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        spec: PayloadSpec,
        seed: u64,
        ids: Vec<NodeId>,
        site_of: Vec<u32>,
        sites: usize,
        links: &[BTreeSet<u32>],
        lan: Link,
        wan: Link,
    ) -> PayloadModel {
        let mut h = blake3::Hasher::new();
        h.update(b"patchmesh-sim payload");
        h.update(&seed.to_le_bytes());
        let content = ContentId(*h.finalize().as_bytes());
        let rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7061_796c_6f61_6473);
        let groups = group_count(spec.size_bytes);
        let mut members = vec![Vec::new(); sites];
        for (i, s) in site_of.iter().enumerate() {
            members[*s as usize].push(i as u32);
        }
        let n = ids.len();
        let wan_links = (0..n)
            .map(|i| {
                let l = links.get(i).into_iter().flatten().copied();
                l.filter(|j| (*j as usize) < n && site_of[*j as usize] != site_of[i]).collect()
            })
            .collect();
        let seen = members.iter().map(|m| m.iter().copied().collect()).collect();
        let holders = (0..n)
            .map(|_| Holder {
                up: true,
                epoch: 0,
                up_since_us: 0,
                held: Bitfield::new(groups),
                held_count: 0,
                has_outboard: false,
                fetch: None,
                complete_us: None,
                failed: None,
                timer_at: u64::MAX,
                peers: Vec::new(),
                dialled: BTreeSet::new(),
                listed: false,
            })
            .collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i as u32)).collect();
        PayloadModel {
            spec,
            content,
            groups,
            params: Params::default(),
            lan,
            wan,
            rng,
            ids,
            index,
            site_of,
            site_ids: (0..sites).map(|s| SiteId::from(format!("site-{s:04}").as_str())).collect(),
            wan_links,
            holders,
            seen,
            partitioned: vec![false; sites],
            cut_seen: vec![false; sites],
            providers: Vec::new(),
            flows: BTreeMap::new(),
            node_up_free: vec![0; n],
            node_down_free: vec![0; n],
            site_up_free: vec![0; sites],
            site_down_free: vec![0; sites],
            wan_in: vec![0; sites],
            wan_out: vec![0; sites],
            published_us: None,
            origin_site: 0,
            failovers: 0,
            penalties: Vec::new(),
        }
    }

    /// Carries out one payload event.
    pub(crate) fn step(&mut self, host: &mut impl Host, ev: PayloadEv) {
        match ev {
            PayloadEv::Publish => self.publish(host),
            PayloadEv::Timeout { node, epoch } => self.timeout(host, node, epoch),
            PayloadEv::HaveQuery { node, epoch, asked_us, sources } => {
                self.have_query(host, node, epoch, asked_us, sources)
            }
            PayloadEv::HaveReply { node, epoch, answers } => {
                self.have_reply(host, node, epoch, answers)
            }
            PayloadEv::HaveFailed { node, epoch, sources } => {
                for s in sources {
                    let source = self.ids[s as usize];
                    let reply = Err(Failure::Lost);
                    self.input(host, node, epoch, FetchInput::Have { source, reply });
                }
            }
            PayloadEv::Outboard { node, epoch, source, ok } => {
                self.outboard_arrived(host, node, epoch, source, ok)
            }
            PayloadEv::Providers { node, epoch } => {
                let now = host.now_us();
                let mut found: Vec<NodeId> = self
                    .providers
                    .iter()
                    .filter(|(p, visible)| *visible <= now && *p != node)
                    .map(|(p, _)| self.ids[*p as usize])
                    .collect();
                found.sort_unstable();
                host.trace_payload(26, node, found.len() as u32, 0);
                if !self.alive(node, epoch) {
                    return;
                }
                // The node dials the providers it was told of: they join its peers.
                let dialled = found.iter().map(|id| self.index[id]);
                self.holders[node as usize].dialled.extend(dialled);
                self.view_changed(host, node);
                self.input(host, node, epoch, FetchInput::Providers(found));
            }
            PayloadEv::FlowNext { key } => self.flow_next(host, key),
            PayloadEv::Downlink(a) => self.downlink(host, *a),
            PayloadEv::Arrive(a) => self.arrive(host, *a),
            PayloadEv::FlowFailed { node, epoch, source, req } => {
                host.trace_payload(24, source, node, req);
                let input = FetchInput::RangeEnded { request: req, result: Err(Failure::Lost) };
                self.input(host, node, epoch, input);
            }
            PayloadEv::SeenGone { node, epoch } => {
                let h = &self.holders[node as usize];
                if !h.up && h.epoch == epoch {
                    let site = self.site_of[node as usize];
                    self.seen[site as usize].remove(&node);
                    host.trace_payload(25, node, site, 0);
                    self.views_changed(host);
                }
            }
            PayloadEv::CutSeen { site } => {
                if self.partitioned[site as usize] {
                    self.cut_seen[site as usize] = true;
                    self.views_changed(host);
                }
            }
        }
    }

    /// The time of publication, the first time to schedule.
    pub(crate) fn at_us(&self) -> u64 {
        self.spec.at_ms * 1000
    }

    fn alive(&self, node: u32, epoch: u32) -> bool {
        let h = &self.holders[node as usize];
        h.up && h.epoch == epoch
    }

    fn cross(&self, a: u32, b: u32) -> bool {
        self.site_of[a as usize] != self.site_of[b as usize]
    }

    fn one_way_us(&self, a: u32, b: u32) -> u64 {
        if self.cross(a, b) {
            self.wan.one_way_us()
        } else {
            self.lan.one_way_us()
        }
    }

    /// Whether `b` can reach `a` now: `a` is up and no partition cuts them apart.
    fn reachable(&self, a: u32, b: u32) -> bool {
        self.holders[a as usize].up
            && !(self.cross(a, b)
                && (self.partitioned[self.site_of[a as usize] as usize]
                    || self.partitioned[self.site_of[b as usize] as usize]))
    }

    fn availability(&self, s: u32) -> Availability {
        let h = &self.holders[s as usize];
        if h.held_count == self.groups {
            Availability::Complete
        } else if h.held_count == 0 || !h.has_outboard {
            Availability::Nothing
        } else {
            Availability::Partial(h.held.clone())
        }
    }

    /// Hook: node `n` crashed.
    pub(crate) fn on_crash(&mut self, host: &mut impl Host, n: u32) {
        let h = &mut self.holders[n as usize];
        h.up = false;
        h.epoch += 1;
        h.fetch = None;
        h.timer_at = u64::MAX;
        h.peers.clear();
        h.dialled.clear();
        let epoch = h.epoch;
        let at = host.now_us() + DETECT_MS * 1000;
        host.schedule_payload(at, PayloadEv::SeenGone { node: n, epoch });
    }

    /// Hook: node `n` restarted from its store.
    pub(crate) fn on_restart(&mut self, host: &mut impl Host, n: u32) {
        let now = host.now_us();
        let h = &mut self.holders[n as usize];
        if h.up {
            return;
        }
        h.up = true;
        h.up_since_us = now;
        let resume = self.published_us.is_some() && h.complete_us.is_none();
        let site = self.site_of[n as usize];
        self.seen[site as usize].insert(n);
        if resume {
            self.start_download(host, n);
        }
        self.views_changed(host);
    }

    /// Hook: a site's WAN links were cut (`true`) or restored.
    pub(crate) fn on_partition(&mut self, host: &mut impl Host, site: u32, cut: bool) {
        self.partitioned[site as usize] = cut;
        if cut {
            let at = host.now_us() + DETECT_MS * 1000;
            host.schedule_payload(at, PayloadEv::CutSeen { site });
        } else {
            self.cut_seen[site as usize] = false;
            self.views_changed(host);
        }
    }

    /// The elected fetchers of up to `count` sites that are mid-transfer (holding part of the
    /// payload), in site order: the nodes a scenario's fetcher crash takes down.
    pub(crate) fn fetchers(&self, count: usize) -> Vec<u32> {
        let mut out = Vec::new();
        for site in 0..self.seen.len() {
            if out.len() == count {
                break;
            }
            let ids = self.seen[site].iter().map(|m| &self.ids[*m as usize]);
            let Some(winner) = transfer::elect(&self.content, ids) else { continue };
            let w = self.index[&winner];
            let h = &self.holders[w as usize];
            if h.up && h.fetch.is_some() && h.held_count > 0 {
                out.push(w);
            }
        }
        out
    }

    /// The figures and violations at the end of a run at `end_us`.
    pub(crate) fn finish(&self, end_us: u64) -> PayloadFigures {
        let Some(at) = self.published_us else {
            return PayloadFigures {
                violations: vec!["the payload was never published".into()],
                ..PayloadFigures::default()
            };
        };
        let size = self.spec.size_bytes.max(1) as f64;
        let worst = self.wan_in.iter().copied().max().unwrap_or(0) as f64;
        let mut times = Vec::new();
        let mut missing = Vec::new();
        for (i, h) in self.holders.iter().enumerate() {
            if !h.up {
                continue;
            }
            match h.complete_us {
                Some(t) => times.push((t - at) / 1000),
                None if h.up_since_us + COMPLETE_GRACE_MS * 1000 <= end_us => missing.push(i),
                None => {}
            }
        }
        let mut violations = Vec::new();
        if !missing.is_empty() {
            let shown: Vec<String> = missing
                .iter()
                .take(8)
                .map(|i| {
                    let h = &self.holders[*i];
                    let why = h.failed.as_deref().map(|r| format!(", failed: {r}"));
                    format!(
                        "{i} ({}/{} groups{})",
                        h.held_count,
                        self.groups,
                        why.unwrap_or_default()
                    )
                })
                .collect();
            violations.push(format!(
                "{} live nodes never completed the payload: {}",
                missing.len(),
                shown.join(", ")
            ));
        }
        if let Some((by, peer, fault)) = self.penalties.first() {
            violations.push(format!(
                "honest nodes penalised {} times: the first, node {by} penalised node {peer} ({fault})",
                self.penalties.len()
            ));
        }
        PayloadFigures {
            wan_bytes_per_site_ratio: (worst / size * 1000.0).round() / 1000.0,
            complete_nodes: times.len(),
            complete_ms: Percentiles::of(times),
            failovers: self.failovers,
            penalties: self.penalties.len() as u32,
            origin_copies: (self.wan_out[self.origin_site] as f64 / size * 1000.0).round() / 1000.0,
            violations,
        }
    }
}
