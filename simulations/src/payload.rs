//! # Payload transfer model
//!
//! Every honest node fetches one patch payload with the protocol core's [`Fetch`] machine, the
//! same one the real node's download loop drives: the site election, the WAN source slots and
//! their rotation, piece order, rests and their backoff, slowness judged against the other
//! sources, in-flight sized to each source's rate, provider look-ups and the no-source
//! deadline are all the core's. This module only moves bytes and time: it feeds the machine
//! what a real node's swarm would (peers, provider records, answers, verified groups, ended
//! ranges) and carries out its outputs with modelled timing.
//!
//! ## Peers and providers
//! - **Site members**: every live member of the node's site as the site sees it (a site LAN is
//!   fully meshed for the data plane). A member that crashed is seen as gone after
//!   [`DETECT_MS`]; a restarted member is seen again as soon as it is up. The machine elects
//!   the site's WAN fetcher from this view, so the next member in rank takes over when the
//!   elected one crashes, and hands back on its return.
//! - **Other sites**: each node is connected to [`WAN_PEERS`] random nodes of other sites (what
//!   a real node's DHT routing and bootstrap connections give it; a connection across a cut
//!   fails like any stream), and learns holders from provider records (`FindProviders`): a
//!   node is listed once
//!   it holds a verified group, visible one WAN round trip later; a crashed node's record stays
//!   (records expire in hours, not seconds). A look-up answers after one WAN round trip with
//!   up to [`PROVIDERS_PER_LOOKUP`] visible providers, those nearest the content id (a
//!   rendezvous hash), as a DHT's provider store keeps a bounded set per key.
//!
//! ## Timing
//! - A question (`AskHave`) reaches the source after one one-way delay and is answered from
//!   what the source holds then (`Complete`, `Partial` with its bitfield, or `Nothing`); the
//!   answer takes another one-way delay. The outboard is answered the same way (its bytes are
//!   counted on the WAN). Questions to a source that is down or behind a partition fail after
//!   [`DETECT_MS`].
//! - A range is a flow whose bytes cross every bottleneck on the path: the source node's
//!   uplink and the destination node's downlink (LAN bandwidth) and, between sites, the source
//!   site's WAN uplink and the destination site's WAN downlink (WAN bandwidth, **shared by
//!   every flow of the site**). Each link has a "free at" time. A flow sends a slice
//!   ([`WAN_SLICE_GROUPS`] or [`LAN_SLICE_GROUPS`]) and reserves the next only when the slice
//!   has cleared its links, so flows sharing a link take turns: fair sharing at slice
//!   granularity, like the streams of a congestion-controlled transport. The groups of a slice
//!   are verified one one-way delay after it cleared; the range ends with the last.
//! - A source sends only groups it holds as each slice leaves. A flow whose source went down
//!   or whose path is cut stops, and the requester hears it as a lost stream after
//!   [`DETECT_MS`]. A cancelled range stops at its next slice; slices already sent still
//!   arrive and count. WAN loss is left to the transport: WAN bandwidth is taken as goodput.
//! - The machine is woken at its `poll_timeout` and after every input.
//!
//! ## Crashes
//! A crashed node's download stops; its verified groups persist (the real node keeps them on
//! disk) and it resumes on restart with the groups it holds.
//!
//! ## Measured
//! Payload bytes, outboards and `Have` replies entering each site over the WAN (the design
//! promises about one payload per site), and the time from publication to each node holding
//! the whole payload verified.

use crate::scenario::{Link, PayloadSpec};
use crate::world::Percentiles;
use patchmesh_protocol::ids::{ContentId, Millis, NodeId};
use patchmesh_protocol::transfer::fetch::{Failure, Fetch, FetchInput, FetchOutput};
use patchmesh_protocol::transfer::plan::{Params, Request};
use patchmesh_protocol::transfer::{
    self, group_count, Availability, Bitfield, DataReply, Role, GROUP_BYTES,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Failure detection: a crashed peer (or one behind a new partition) is seen as gone this
/// long after it went, the time a transport's keep-alive takes to notice a silent peer. Open
/// questions and ranges to it fail at the same time.
pub const DETECT_MS: u64 = 2_000;
/// Providers one look-up returns (a DHT keeps a bounded set of provider records per key).
pub const PROVIDERS_PER_LOOKUP: usize = 20;
/// Nodes of other sites each node holds connections to (the real node's DHT routing and
/// bootstrap connections), chosen at random per run.
pub const WAN_PEERS: usize = 8;
/// Groups a flow sends per slice across the WAN: the granularity of link sharing. One group
/// (16 KiB, 6.5 ms at 20 Mbit/s) keeps a flow's progress smooth enough for the planner's
/// rate check even when a hundred flows share one site's uplink.
pub const WAN_SLICE_GROUPS: u64 = 1;
/// Groups per slice inside a site (128 KiB, 1 ms at 1 Gbit/s).
pub const LAN_SLICE_GROUPS: u64 = 8;

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
    /// A node's fetch machine reached its timeout (deduplicated by `Holder::tick_at`).
    Tick { node: u32 },
    /// `AskHave`s arrive at their sources.
    HaveQuery { node: u32, epoch: u32, asked_us: u64, sources: Vec<u32> },
    /// Their answers arrive back.
    HaveReply { node: u32, epoch: u32, answers: Vec<(u32, Availability)> },
    /// Questions that reached no one time out.
    HaveFailed { node: u32, epoch: u32, sources: Vec<u32> },
    /// An outboard arrives (`true`) or the question failed.
    Outboard { node: u32, epoch: u32, source: u32, ok: bool },
    /// A provider look-up answers.
    Providers { node: u32, epoch: u32 },
    /// A flow's source may send its next slice.
    FlowNext { flow: u64 },
    /// A slice reaches the requester.
    Arrive(Box<Arrival>),
    /// A flow that stopped (source gone, path cut) is noticed by its requester.
    FlowFailed { node: u32, epoch: u32, req: u64 },
    /// A crashed node is seen as gone by its site.
    SeenGone { node: u32, epoch: u32 },
}

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
    fetch: Option<Fetch>,
    complete_us: Option<u64>,
    /// The earliest tick queued for this node (`u64::MAX`: none).
    tick_at: u64,
}

/// A range being sent.
#[derive(Clone, Debug)]
struct Flow {
    source: u32,
    source_epoch: u32,
    node: u32,
    epoch: u32,
    req: u64,
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
    /// Nodes that should have completed and did not.
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
    members: Vec<Vec<u32>>,
    holders: Vec<Holder>,
    /// Per site: the members its nodes see as live.
    seen: Vec<BTreeSet<u32>>,
    /// Per node: the nodes of other sites it holds connections to.
    wan_peers: Vec<Vec<u32>>,
    partitioned: Vec<bool>,
    /// The directory: provider → when its record became visible.
    providers: BTreeMap<u32, u64>,
    flows: BTreeMap<u64, Flow>,
    next_flow: u64,
    node_up_free: Vec<u64>,
    node_down_free: Vec<u64>,
    site_up_free: Vec<u64>,
    site_down_free: Vec<u64>,
    /// Payload bytes (and `Have` replies, outboards) entering each site over the WAN.
    wan_in: Vec<u64>,
    published_us: Option<u64>,
    /// Times a downloading node took over its site's WAN fetch.
    failovers: usize,
}

impl PayloadModel {
    /// A model for honest nodes `ids` in sites `site_of`, all up at time zero.
    pub(crate) fn new(
        spec: PayloadSpec,
        seed: u64,
        ids: Vec<NodeId>,
        site_of: Vec<u32>,
        sites: usize,
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
        let seen = members.iter().map(|m| m.iter().copied().collect()).collect();
        let holders = (0..ids.len())
            .map(|_| Holder {
                up: true,
                epoch: 0,
                up_since_us: 0,
                held: Bitfield::new(groups),
                held_count: 0,
                fetch: None,
                complete_us: None,
                tick_at: u64::MAX,
            })
            .collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i as u32)).collect();
        let n = ids.len();
        let mut rng = rng;
        let wan_peers = (0..n)
            .map(|i| {
                let mut peers = Vec::new();
                for _ in 0..WAN_PEERS * 4 {
                    if peers.len() == WAN_PEERS || sites < 2 {
                        break;
                    }
                    let p = rng.gen_range(0..n as u32);
                    if site_of[p as usize] != site_of[i] && !peers.contains(&p) {
                        peers.push(p);
                    }
                }
                peers
            })
            .collect();
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
            members,
            holders,
            seen,
            wan_peers,
            partitioned: vec![false; sites],
            providers: BTreeMap::new(),
            flows: BTreeMap::new(),
            next_flow: 1,
            node_up_free: vec![0; n],
            node_down_free: vec![0; n],
            site_up_free: vec![0; sites],
            site_down_free: vec![0; sites],
            wan_in: vec![0; sites],
            published_us: None,
            failovers: 0,
        }
    }

    /// Carries out one payload event.
    pub(crate) fn step(&mut self, host: &mut impl Host, ev: PayloadEv) {
        match ev {
            PayloadEv::Publish => self.publish(host),
            PayloadEv::Tick { node } => self.tick(host, node),
            PayloadEv::HaveQuery { node, epoch, asked_us, sources } => {
                self.have_query(host, node, epoch, asked_us, sources)
            }
            PayloadEv::HaveReply { node, epoch, answers } => {
                self.have_reply(host, node, epoch, answers)
            }
            PayloadEv::HaveFailed { node, epoch, sources } => {
                for s in sources {
                    let input = FetchInput::Have {
                        source: self.ids[s as usize],
                        reply: Err(Failure::Lost),
                    };
                    self.feed(host, node, epoch, input);
                }
            }
            PayloadEv::Outboard { node, epoch, source, ok } => {
                let held = self.holders[node as usize].held.clone();
                let result = if ok { Ok(held) } else { Err(Failure::Lost) };
                let input = FetchInput::Outboard { source: self.ids[source as usize], result };
                self.feed(host, node, epoch, input);
            }
            PayloadEv::Providers { node, epoch } => {
                let list = self.lookup(node, host.now_us());
                self.feed(host, node, epoch, FetchInput::Providers(list));
            }
            PayloadEv::FlowNext { flow } => self.flow_next(host, flow),
            PayloadEv::Arrive(a) => self.arrive(host, *a),
            PayloadEv::FlowFailed { node, epoch, req } => {
                let input = FetchInput::RangeEnded { request: req, result: Err(Failure::Lost) };
                self.feed(host, node, epoch, input);
            }
            PayloadEv::SeenGone { node, epoch } => {
                let h = &self.holders[node as usize];
                if !h.up && h.epoch == epoch {
                    let site = self.site_of[node as usize];
                    self.seen[site as usize].remove(&node);
                    host.trace_payload(25, node, site, 0);
                    self.site_changed(host, site);
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
        } else if h.held_count == 0 {
            Availability::Nothing
        } else {
            Availability::Partial(h.held.clone())
        }
    }

    fn now_ms(host: &impl Host) -> Millis {
        Millis(host.now_us() / 1000)
    }

    /// The site members node `n` sees, as the machine's peer view.
    fn peers_of(&self, n: u32) -> Vec<(NodeId, bool)> {
        let site = self.site_of[n as usize] as usize;
        let members = self.seen[site].iter().filter(|m| **m != n);
        let remote = self.wan_peers[n as usize].iter().map(|p| (self.ids[*p as usize], false));
        members.map(|m| (self.ids[*m as usize], true)).chain(remote).collect()
    }

    /// Feeds one input to node `n`'s machine (if it is the same life and still fetching) and
    /// carries out what it asks.
    fn feed(&mut self, host: &mut impl Host, n: u32, epoch: u32, input: FetchInput) {
        if !self.alive(n, epoch) {
            return;
        }
        let now = Self::now_ms(host);
        let Some(f) = self.holders[n as usize].fetch.as_mut() else { return };
        f.handle_input(now, input);
        self.drain(host, n);
    }

    fn tick(&mut self, host: &mut impl Host, n: u32) {
        let now = host.now_us();
        let h = &mut self.holders[n as usize];
        if h.tick_at != now || !h.up {
            return;
        }
        h.tick_at = u64::MAX;
        let Some(f) = h.fetch.as_mut() else { return };
        f.handle_timeout(Millis(now / 1000));
        self.drain(host, n);
    }

    /// Carries out every output of node `n`'s machine, then schedules its next tick.
    fn drain(&mut self, host: &mut impl Host, n: u32) {
        let now = host.now_us();
        let epoch = self.holders[n as usize].epoch;
        let (mut lan, mut wan, mut fetches) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let Some(f) = self.holders[n as usize].fetch.as_mut() else { break };
            let Some(out) = f.poll_output() else { break };
            match out {
                FetchOutput::AskHave(id) => {
                    let s = self.index[&id];
                    if self.cross(n, s) {
                        wan.push(s);
                    } else {
                        lan.push(s);
                    }
                }
                FetchOutput::GetOutboard(id) => {
                    let s = self.index[&id];
                    let ok = self.reachable(s, n) && self.holders[s as usize].held_count > 0;
                    let at =
                        if ok { now + 2 * self.one_way_us(n, s) } else { now + DETECT_MS * 1000 };
                    if ok && self.cross(n, s) {
                        self.wan_in[self.site_of[n as usize] as usize] += self.groups * 32;
                    }
                    host.schedule_payload(
                        at,
                        PayloadEv::Outboard { node: n, epoch, source: s, ok },
                    );
                }
                FetchOutput::FetchRange { request, .. } => fetches.push(request),
                // The flow stops at its next slice (its request is gone).
                FetchOutput::Cancel(req) => host.trace_payload(29, n, 0, req),
                FetchOutput::FindProviders => {
                    let cut = self.partitioned[self.site_of[n as usize] as usize];
                    let at = now + if cut { DETECT_MS * 1000 } else { 2 * self.wan.one_way_us() };
                    host.schedule_payload(at, PayloadEv::Providers { node: n, epoch });
                }
                FetchOutput::Penalize(id, _) => host.trace_payload(27, n, self.index[&id], 0),
                FetchOutput::Complete => {
                    let h = &mut self.holders[n as usize];
                    h.fetch = None;
                    h.complete_us.get_or_insert(now);
                    host.trace_payload(23, n, 0, 0);
                }
                FetchOutput::Failed(_) => {
                    self.holders[n as usize].fetch = None;
                    host.trace_payload(30, n, 0, 0);
                }
            }
        }
        for (batch, delay) in [(lan, self.lan.one_way_us()), (wan, self.wan.one_way_us())] {
            if !batch.is_empty() {
                let ev = PayloadEv::HaveQuery { node: n, epoch, asked_us: now, sources: batch };
                host.schedule_payload(now + delay, ev);
            }
        }
        for req in fetches {
            self.start_flow(host, n, req);
        }
        let h = &mut self.holders[n as usize];
        let next = h.fetch.as_ref().and_then(|f| f.poll_timeout());
        if let Some(at) = next {
            let at_us = (at.0 * 1000).max(now);
            if at_us < h.tick_at {
                h.tick_at = at_us;
                host.schedule_payload(at_us, PayloadEv::Tick { node: n });
            }
        }
    }

    /// Visible providers nearest the content (the bounded set a DHT keeps per key).
    fn lookup(&self, n: u32, now_us: u64) -> Vec<NodeId> {
        if self.partitioned[self.site_of[n as usize] as usize] {
            return Vec::new();
        }
        let mut near: Vec<([u8; 32], u32)> = self
            .providers
            .iter()
            .filter(|(p, at)| **at <= now_us && **p != n)
            .map(|(p, _)| (transfer::rendezvous(&self.content, &self.ids[*p as usize]), *p))
            .collect();
        near.sort_unstable_by(|a, b| b.cmp(a));
        near.into_iter().take(PROVIDERS_PER_LOOKUP).map(|(_, p)| self.ids[p as usize]).collect()
    }

    fn publish(&mut self, host: &mut impl Host) {
        let now = host.now_us();
        let count = self.holders.len() as u32;
        let mut origin = self.rng.gen_range(0..count);
        for _ in 0..count {
            if self.holders[origin as usize].up {
                break;
            }
            origin = (origin + 1) % count;
        }
        if !self.holders[origin as usize].up {
            return;
        }
        self.published_us = Some(now);
        host.trace_payload(20, origin, 0, self.spec.size_bytes);
        let h = &mut self.holders[origin as usize];
        h.held = Bitfield::full(self.groups);
        h.held_count = self.groups;
        h.complete_us = Some(now);
        self.list_provider(origin, now);
        for n in 0..count {
            if self.holders[n as usize].up && n != origin {
                self.start_download(host, n);
            }
        }
    }

    fn list_provider(&mut self, n: u32, now_us: u64) {
        let visible = now_us + (self.wan.rtt_ms * 1000.0) as u64;
        self.providers.entry(n).or_insert(visible);
    }

    fn start_download(&mut self, host: &mut impl Host, n: u32) {
        let now = Self::now_ms(host);
        let h = &self.holders[n as usize];
        // A node that holds groups from before a crash has the outboard on disk too.
        let has_outboard = h.held_count > 0;
        let mut f = Fetch::new(
            self.ids[n as usize],
            self.content,
            self.spec.size_bytes,
            h.held.clone(),
            has_outboard,
            self.params.clone(),
            now,
        );
        f.handle_input(now, FetchInput::Peers(self.peers_of(n)));
        let h = &mut self.holders[n as usize];
        h.fetch = Some(f);
        h.tick_at = u64::MAX;
        self.drain(host, n);
    }

    fn have_query(
        &mut self,
        host: &mut impl Host,
        n: u32,
        epoch: u32,
        asked_us: u64,
        sources: Vec<u32>,
    ) {
        let now = host.now_us();
        let (mut answers, mut failed) = (Vec::new(), Vec::new());
        for s in sources {
            if self.reachable(s, n) {
                answers.push((s, self.availability(s)));
            } else {
                failed.push(s);
            }
        }
        if let Some((s, _)) = answers.first() {
            let at = now + self.one_way_us(n, *s);
            host.schedule_payload(at, PayloadEv::HaveReply { node: n, epoch, answers });
        }
        if !failed.is_empty() {
            let at = (asked_us + DETECT_MS * 1000).max(now);
            host.schedule_payload(at, PayloadEv::HaveFailed { node: n, epoch, sources: failed });
        }
    }

    fn have_reply(
        &mut self,
        host: &mut impl Host,
        n: u32,
        epoch: u32,
        answers: Vec<(u32, Availability)>,
    ) {
        let site = self.site_of[n as usize] as usize;
        host.trace_payload(22, n, answers.len() as u32, 0);
        for (s, availability) in answers {
            let size = if availability == Availability::Nothing { 0 } else { self.spec.size_bytes };
            let reply = DataReply::Have { size_bytes: size, availability };
            if self.cross(n, s) {
                // What the reply costs on the wire, counted against the site's WAN.
                self.wan_in[site] += reply.to_bytes().len() as u64;
            }
            let DataReply::Have { size_bytes, availability } = reply else {
                unreachable!("built above")
            };
            let input = FetchInput::Have {
                source: self.ids[s as usize],
                reply: Ok((size_bytes, availability)),
            };
            self.feed(host, n, epoch, input);
        }
    }

    fn start_flow(&mut self, host: &mut impl Host, n: u32, req: Request) {
        let source = self.index[&req.source];
        let id = self.next_flow;
        self.next_flow += 1;
        let flow = Flow {
            source,
            source_epoch: self.holders[source as usize].epoch,
            node: n,
            epoch: self.holders[n as usize].epoch,
            req: req.id,
            next: req.first,
            end: req.first + req.count,
        };
        self.flows.insert(id, flow);
        // The request reaches the source one one-way delay later.
        let at = host.now_us() + self.one_way_us(n, source);
        host.schedule_payload(at, PayloadEv::FlowNext { flow: id });
    }

    fn request_active(&self, n: u32, epoch: u32, req: u64) -> bool {
        self.alive(n, epoch)
            && self.holders[n as usize]
                .fetch
                .as_ref()
                .is_some_and(|f| f.download().requests().any(|r| r.id == req))
    }

    /// Bytes of groups `first .. first + count`.
    fn span_bytes(&self, first: u64, count: u64) -> u64 {
        let end = ((first + count) * GROUP_BYTES).min(self.spec.size_bytes);
        end.saturating_sub(first * GROUP_BYTES)
    }

    fn flow_next(&mut self, host: &mut impl Host, id: u64) {
        let now = host.now_us();
        let Some(f) = self.flows.get(&id).cloned() else { return };
        if !self.request_active(f.node, f.epoch, f.req) {
            self.flows.remove(&id);
            return;
        }
        if !self.reachable(f.source, f.node)
            || self.holders[f.source as usize].epoch != f.source_epoch
        {
            self.flows.remove(&id);
            let ev = PayloadEv::FlowFailed { node: f.node, epoch: f.epoch, req: f.req };
            host.schedule_payload(now + DETECT_MS * 1000, ev);
            return;
        }
        let held = &self.holders[f.source as usize].held;
        let mut count = 0;
        let slice = if self.cross(f.source, f.node) { WAN_SLICE_GROUPS } else { LAN_SLICE_GROUPS };
        while count < slice && f.next + count < f.end && held.get(f.next + count) {
            count += 1;
        }
        // A source that lacks the next group ends the range there (the machine puts the rest
        // back and asks again); an honest source only lacks groups it never claimed.
        let last = count == 0 || f.next + count >= f.end;
        let bytes = self.span_bytes(f.next, count);
        let end = self.reserve(f.source, f.node, bytes, now);
        if last {
            self.flows.remove(&id);
        } else {
            self.flows.get_mut(&id).expect("present").next += count;
            host.schedule_payload(end, PayloadEv::FlowNext { flow: id });
        }
        let arrival = Arrival {
            node: f.node,
            epoch: f.epoch,
            source: f.source,
            req: f.req,
            first: f.next,
            count,
            bytes,
            last,
        };
        let delay = self.one_way_us(f.source, f.node);
        host.schedule_payload(end + delay, PayloadEv::Arrive(Box::new(arrival)));
    }

    /// Reserves the links a slice of `bytes` crosses from `src` to `dst`, hop by hop: the
    /// source node's uplink, the WAN path (source site's uplink and destination site's
    /// downlink together) and the destination node's downlink. A hop starts no earlier than
    /// the one before it and when it is free; each is then busy for the slice's transmission
    /// time at its own bandwidth, so a slow WAN queue does not hold the source's LAN uplink.
    /// Returns when the slice has cleared every hop.
    fn reserve(&mut self, src: u32, dst: u32, bytes: u64, now: u64) -> u64 {
        let (src, dst) = (src as usize, dst as usize);
        let (ss, ds) = (self.site_of[src] as usize, self.site_of[dst] as usize);
        let lan_tx = self.lan.transmit_us(bytes as usize);
        let start = now.max(self.node_up_free[src]);
        self.node_up_free[src] = start + lan_tx;
        let (mut ready, mut done) = (start, start + lan_tx);
        if ss != ds {
            let wan_tx = self.wan.transmit_us(bytes as usize);
            let w = ready.max(self.site_up_free[ss]).max(self.site_down_free[ds]);
            self.site_up_free[ss] = w + wan_tx;
            self.site_down_free[ds] = w + wan_tx;
            ready = w;
            done = done.max(w + wan_tx);
        }
        let d = ready.max(self.node_down_free[dst]);
        self.node_down_free[dst] = d + lan_tx;
        done.max(d + lan_tx)
    }

    fn arrive(&mut self, host: &mut impl Host, a: Arrival) {
        let now = host.now_us();
        if self.cross(a.source, a.node) {
            self.wan_in[self.site_of[a.node as usize] as usize] += a.bytes;
        }
        host.trace_payload(21, a.source, a.node, a.bytes);
        if !self.alive(a.node, a.epoch) || self.holders[a.node as usize].fetch.is_none() {
            return;
        }
        let h = &mut self.holders[a.node as usize];
        let before = h.held_count;
        for g in a.first..a.first + a.count {
            if h.held.set(g) {
                h.held_count += 1;
            }
        }
        if before == 0 && h.held_count > 0 {
            self.list_provider(a.node, now);
        }
        // Groups of a cancelled range still count (the real node reports what it verified
        // before the abort); only a live range ends.
        let active = self.request_active(a.node, a.epoch, a.req);
        if a.count > 0 {
            let input = FetchInput::Groups { request: a.req, first: a.first, count: a.count };
            self.feed(host, a.node, a.epoch, input);
        }
        if a.last && active {
            let input = FetchInput::RangeEnded { request: a.req, result: Ok(()) };
            self.feed(host, a.node, a.epoch, input);
        }
    }

    /// The site's view changed: every member's machine hears it (and re-elects).
    fn site_changed(&mut self, host: &mut impl Host, site: u32) {
        let now = Self::now_ms(host);
        for m in self.members[site as usize].clone() {
            if !self.holders[m as usize].up || self.holders[m as usize].fetch.is_none() {
                continue;
            }
            let peers = self.peers_of(m);
            let f = self.holders[m as usize].fetch.as_mut().expect("checked");
            let was = f.download().role();
            f.handle_input(now, FetchInput::Peers(peers));
            if f.download().role() == Role::Wan && was != Role::Wan {
                host.trace_payload(28, m, site, 0);
                self.failovers += 1;
            }
            self.drain(host, m);
        }
    }

    /// Hook: node `n` crashed.
    pub(crate) fn on_crash(&mut self, host: &mut impl Host, n: u32) {
        let h = &mut self.holders[n as usize];
        h.up = false;
        h.epoch += 1;
        h.fetch = None;
        h.tick_at = u64::MAX;
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
        self.site_changed(host, site);
    }

    /// Hook: a site's WAN links were cut (`true`) or restored. Flows and questions across the
    /// cut fail on their own (after [`DETECT_MS`]); look-ups from inside find nothing.
    pub(crate) fn on_partition(&mut self, _host: &mut impl Host, site: u32, cut: bool) {
        self.partitioned[site as usize] = cut;
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
                .map(|i| format!("{i} ({}/{} groups)", self.holders[*i].held_count, self.groups))
                .collect();
            violations.push(format!(
                "{} live nodes never completed the payload: {}",
                missing.len(),
                shown.join(", ")
            ));
        }
        PayloadFigures {
            wan_bytes_per_site_ratio: (worst / size * 1000.0).round() / 1000.0,
            complete_nodes: times.len(),
            complete_ms: Percentiles::of(times),
            failovers: self.failovers,
            violations,
        }
    }
}
