//! # Payload transfer model
//!
//! Every honest node fetches one patch payload with the protocol core's download planner
//! ([`Download`]), as the real node does. This module is the driver around the planners: it
//! decides who the candidate sources are (what site membership and DHT provider records give a
//! real node), carries out the planners' actions and answers them with modelled timing. Every
//! choice of *what* to fetch from *whom*, when to ask again and whom to drop is the planner's.
//!
//! ## Sources and roles
//! - **LAN**: every live member of the node's site as the site sees it (a site LAN is fully
//!   meshed for the data plane). A member that crashed is seen as gone after [`DETECT_MS`]
//!   (then `remove_source`, which returns its ranges to the pool); a restarted member is seen
//!   again as soon as it is up.
//! - **Role**: [`transfer::role_of`] over that view, recomputed whenever it changes, so the
//!   next member in rank takes over when the elected one crashes, and hands back on return.
//! - **WAN** (used only while elected): providers from a directory that models DHT provider
//!   records. A node is listed once it holds a verified group, visible to others one WAN round
//!   trip later; a crashed node's record stays (records expire in hours, not seconds). An
//!   elected node takes up to [`REMOTE_SOURCES`] providers of one site: the nearest ancestor
//!   of its own site in a [`TREE_FANOUT`]-ary tree over the sites, rooted at the origin's site
//!   and ordered by a rendezvous hash of (content, site), so every node computes the same tree.
//!   It passes over an ancestor that is cut off, has no member up, or whose every provider
//!   failed, but waits for one that simply holds nothing yet. Sources are re-chosen every
//!   [`CHECK_MS`]; a provider that cannot be reached is dropped and left out for [`AVOID_MS`].
//!
//! Why a tree: the planner asks each source for the *lowest* missing run it holds, so every
//! site fetching from one source asks it for the same ranges, and that source's uplink is
//! divided among them; nodes that started together also hold the same prefix, so they have
//! nothing to give each other. With "any providers", all sites start on the origin's site
//! (the only provider at first), its 20 Mbit/s is shared by every site, each source's rate
//! falls under the planner's 16 KiB/s minimum and the origin's site is dropped as `Slow` for
//! the rest of the download: on branch-offices, sites stall with a few percent of the payload.
//! In a tree each site's uplink feeds at most [`TREE_FANOUT`] sites, and a site streams from
//! its parent while the parent is still receiving.
//!
//! ## Timing
//! - A question (`AskHave`) reaches the source after one one-way delay and is answered from
//!   what the source holds then (`Complete`, `Partial` with its bitfield, or `Nothing`); the
//!   answer takes another one-way delay. Questions to a source that is down or behind a
//!   partition fail after [`DETECT_MS`].
//! - A range is a flow whose bytes cross every bottleneck on the path: the source node's
//!   uplink and the destination node's downlink (LAN bandwidth) and, between sites, the source
//!   site's WAN uplink and the destination site's WAN downlink (WAN bandwidth, shared by every
//!   transfer of the site). Each link has a "free at" time. A flow sends a slice
//!   ([`WAN_SLICE_GROUPS`] or [`LAN_SLICE_GROUPS`]) and reserves the next only when the slice
//!   has cleared its links, so flows sharing a link take turns: fair sharing at slice
//!   granularity, like the streams of a congestion-controlled transport. The groups of a slice
//!   are verified (`on_group`) one one-way delay after it cleared; `on_done` follows the last.
//! - A source sends only groups it holds as each slice leaves. A flow whose source went down
//!   or whose path is cut stops, and the requester hears `on_done` after [`DETECT_MS`]. WAN
//!   loss is left to the transport's retransmission: WAN bandwidth is taken as goodput.
//! - The planner is polled after every change that reaches it (at most once per simulated
//!   instant per node) and every `have_refresh_ms` while the download is incomplete (the real
//!   node's timer); `check` runs every [`CHECK_MS`]. `poll` is `poll_asks` then
//!   `poll_fetches`; the latter plans until nothing more can be planned, so it is skipped when
//!   no source it could use has changed since (`PayloadModel::has_work`): the same
//!   decisions, without the planner's linear scans on polls that would plan nothing.
//!
//! ## Crashes
//! A crashed node's download stops; its verified groups persist (the real node keeps them on
//! disk) and it resumes on restart with `Download::new(.., have, ..)`.
//!
//! ## Measured
//! Payload bytes and `Have` replies entering each site over the WAN (the design promises
//! about one payload per site), and the time from publication to each node holding the whole
//! payload verified.

use crate::scenario::{Link, PayloadSpec};
use crate::stats::Percentiles;
use patchmesh_protocol::ids::{ContentId, Millis, NodeId};
use patchmesh_protocol::transfer::plan::{Action, Download, Params, Request};
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
/// How often `Download::check` (slow-source detection) runs and remote sources are re-chosen.
pub const CHECK_MS: u64 = 1_000;
/// Providers (of one other site) an elected node fetches from at once.
pub const REMOTE_SOURCES: usize = 2;
/// How long an unreachable provider is left out: the real node rests a source whose stream
/// broke for a second before it is used again.
pub const AVOID_MS: u64 = 1_000;
/// Groups a flow sends per slice across the WAN: the granularity of link sharing. One group
/// (16 KiB, 6.5 ms at 20 Mbit/s) keeps a flow's progress smooth enough for the planner's
/// rate check even when a hundred flows share one site's uplink.
pub const WAN_SLICE_GROUPS: u64 = 1;
/// Groups per slice inside a site (128 KiB, 1 ms at 1 Gbit/s).
pub const LAN_SLICE_GROUPS: u64 = 8;

/// Children per site in the distribution tree: each site's WAN uplink feeds at most this
/// many sites, each at its share of the uplink, so 2 trades half the rate per edge for a tree
/// depth of log2(sites) rather than a chain through every site.
pub const TREE_FANOUT: usize = 2;

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
    /// Poll a node's planner (deduplicated by `Holder::poll_at`).
    Poll { node: u32 },
    /// Periodic `check` and re-ranking of remote sources.
    Check { node: u32, epoch: u32 },
    /// `AskHave`s arrive at their sources.
    HaveQuery { node: u32, epoch: u32, asked_us: u64, sources: Vec<u32> },
    /// Their answers arrive back.
    HaveReply { node: u32, epoch: u32, answers: Vec<(u32, Availability)> },
    /// Questions that reached no one time out.
    HaveFailed { node: u32, epoch: u32, sources: Vec<u32> },
    /// A flow's source may send its next slice.
    FlowNext { flow: u64 },
    /// A slice reaches the requester.
    Arrive(Box<Arrival>),
    /// A flow that stopped (source gone, path cut) is noticed by its requester.
    FlowFailed { node: u32, epoch: u32, source: u32, req: u64 },
    /// A crashed node is seen as gone by its site.
    SeenGone { node: u32, epoch: u32 },
    /// Peers across a new partition are seen as gone.
    CutSeen,
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
    download: Option<Download>,
    complete_us: Option<u64>,
    /// The earliest poll queued for this node (`u64::MAX`: none).
    poll_at: u64,
    /// Whether the planner's state changed since it last planned ranges in a way that may
    /// let any source serve more.
    dirty: bool,
    /// Sources whose answer or finished range may let them serve more.
    dirty_sources: Vec<u32>,
    /// Providers found unreachable, and until when they are left out.
    avoid: BTreeMap<u32, u64>,
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
    salt: u64,
    ids: Vec<NodeId>,
    index: HashMap<NodeId, u32>,
    site_of: Vec<u32>,
    members: Vec<Vec<u32>>,
    holders: Vec<Holder>,
    /// Per site: the members its nodes see as live.
    seen: Vec<BTreeSet<u32>>,
    partitioned: Vec<bool>,
    /// The directory: per site, provider → when its record became visible.
    providers: BTreeMap<u32, BTreeMap<u32, u64>>,
    /// Per site, its parent in the distribution tree (the root: itself).
    parent: Vec<u32>,
    flows: BTreeMap<u64, Flow>,
    next_flow: u64,
    node_up_free: Vec<u64>,
    node_down_free: Vec<u64>,
    site_up_free: Vec<u64>,
    site_down_free: Vec<u64>,
    /// Payload bytes (and `Have` replies) entering each site over the WAN.
    wan_in: Vec<u64>,
    published_us: Option<u64>,
    /// Times a downloading node took over its site's WAN fetch.
    failovers: usize,
}

/// Sets bits `from .. to` of a bitfield's words.
fn set_range(words: &mut [u64], from: u64, to: u64) {
    let mut g = from;
    while g < to {
        let (w, bit) = ((g / 64) as usize, g % 64);
        let n = (64 - bit).min(to - g);
        let mask = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << bit };
        words[w] |= mask;
        g += n;
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7061_796c_6f61_6473);
        let salt = rng.gen();
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
                download: None,
                complete_us: None,
                poll_at: u64::MAX,
                dirty: false,
                dirty_sources: Vec::new(),
                avoid: BTreeMap::new(),
            })
            .collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i as u32)).collect();
        let n = ids.len();
        PayloadModel {
            spec,
            content,
            groups,
            params: Params::default(),
            lan,
            wan,
            rng,
            salt,
            ids,
            index,
            site_of,
            members,
            holders,
            seen,
            partitioned: vec![false; sites],
            providers: BTreeMap::new(),
            parent: (0..sites as u32).collect(),
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
            PayloadEv::Poll { node } => self.poll(host, node),
            PayloadEv::Check { node, epoch } => self.check(host, node, epoch),
            PayloadEv::HaveQuery { node, epoch, asked_us, sources } => {
                self.have_query(host, node, epoch, asked_us, sources)
            }
            PayloadEv::HaveReply { node, epoch, answers } => {
                self.have_reply(host, node, epoch, answers)
            }
            PayloadEv::HaveFailed { node, epoch, sources } => {
                if !self.alive(node, epoch) {
                    return;
                }
                for s in sources {
                    if let Some(d) = self.holders[node as usize].download.as_mut() {
                        d.on_have_failed(&self.ids[s as usize]);
                    }
                    self.drop_if_unreachable(host, node, s);
                }
            }
            PayloadEv::FlowNext { flow } => self.flow_next(host, flow),
            PayloadEv::Arrive(a) => self.arrive(host, *a),
            PayloadEv::FlowFailed { node, epoch, source, req } => {
                if !self.alive(node, epoch) {
                    return;
                }
                if let Some(d) = self.holders[node as usize].download.as_mut() {
                    d.on_done(req);
                }
                host.trace_payload(24, source, node, req);
                self.drop_if_unreachable(host, node, source);
                self.request_poll(host, node, host.now_us());
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
            PayloadEv::CutSeen => {
                for n in 0..self.holders.len() as u32 {
                    let remote: Vec<u32> = match self.holders[n as usize].download.as_ref() {
                        Some(d) => d
                            .sources()
                            .iter()
                            .filter(|(_, s)| !s.lan)
                            .map(|(id, _)| self.index[id])
                            .collect(),
                        None => continue,
                    };
                    for s in remote {
                        self.drop_if_unreachable(host, n, s);
                    }
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

    fn role(&self, n: u32) -> Role {
        let site = self.site_of[n as usize] as usize;
        transfer::role_of(
            &self.content,
            &self.ids[n as usize],
            self.seen[site].iter().map(|m| &self.ids[*m as usize]),
        )
    }

    /// The planner's state changed: poll it soon.
    fn request_poll(&mut self, host: &mut impl Host, n: u32, at_us: u64) {
        let h = &mut self.holders[n as usize];
        h.dirty = true;
        self.schedule_poll(host, n, at_us);
    }

    /// Only source `s` may serve more than at the last poll (it answered, or a range from it
    /// ended complete): poll soon.
    fn source_changed(&mut self, host: &mut impl Host, n: u32, s: u32, at_us: u64) {
        let h = &mut self.holders[n as usize];
        h.dirty_sources.push(s);
        self.schedule_poll(host, n, at_us);
    }

    /// Whether the planner could start a range from one of `changed` now: the source is
    /// usable, has a free slot and claims a group that is neither held nor in flight. The test
    /// `poll_fetches` makes, for these sources only.
    fn has_work(&self, d: &Download, mut changed: Vec<u32>) -> bool {
        changed.sort_unstable();
        changed.dedup();
        let mut busy: Option<Vec<u64>> = None;
        for s in changed {
            let id = &self.ids[s as usize];
            let Some(src) = d.sources().get(id) else { continue };
            let Some(avail) = src.have.as_ref() else { continue };
            if src.banned.is_some() || !(src.lan || d.role() == Role::Wan) {
                continue;
            }
            let active = d.requests().filter(|r| r.source == *id).count();
            if active >= self.params.requests_per_source as usize {
                continue;
            }
            let busy = busy.get_or_insert_with(|| {
                let mut b = d.have().words().to_vec();
                for r in d.requests() {
                    set_range(&mut b, r.first, r.first + r.count);
                }
                b
            });
            let open = |w: usize| {
                let tail = self.groups - w as u64 * 64;
                let valid = if tail >= 64 { u64::MAX } else { (1u64 << tail) - 1 };
                !busy[w] & valid
            };
            let found = match avail {
                Availability::Nothing => false,
                Availability::Complete => (0..busy.len()).any(|w| open(w) != 0),
                Availability::Partial(b) => {
                    b.words().iter().enumerate().any(|(w, x)| open(w) & x != 0)
                }
            };
            if found {
                return true;
            }
        }
        false
    }

    fn schedule_poll(&mut self, host: &mut impl Host, n: u32, at_us: u64) {
        let h = &mut self.holders[n as usize];
        if h.up && h.download.is_some() && h.poll_at > at_us {
            h.poll_at = at_us;
            host.schedule_payload(at_us, PayloadEv::Poll { node: n });
        }
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
        self.build_tree(self.site_of[origin as usize]);
        for n in 0..count {
            if self.holders[n as usize].up && n != origin {
                self.start_download(host, n);
            }
        }
    }

    fn list_provider(&mut self, n: u32, now_us: u64) {
        let visible = now_us + (self.wan.rtt_ms * 1000.0) as u64;
        let site = self.site_of[n as usize];
        self.providers.entry(site).or_default().entry(n).or_insert(visible);
    }

    fn start_download(&mut self, host: &mut impl Host, n: u32) {
        let now = host.now_us();
        let h = &self.holders[n as usize];
        let mut d =
            Download::new(self.content, self.spec.size_bytes, h.held.clone(), self.params.clone());
        let site = self.site_of[n as usize] as usize;
        for m in &self.seen[site] {
            if *m != n {
                d.add_source(self.ids[*m as usize], true);
            }
        }
        let role = self.role(n);
        d.set_role(role);
        let epoch = h.epoch;
        self.holders[n as usize].download = Some(d);
        if role == Role::Wan {
            self.refresh_remote(host, n);
        }
        self.request_poll(host, n, now);
        host.schedule_payload(now + CHECK_MS * 1000, PayloadEv::Check { node: n, epoch });
    }

    /// Orders the sites into a [`TREE_FANOUT`]-ary tree rooted at `root` (the origin's site):
    /// the others by a rendezvous hash of (content, site name), so every node computes the
    /// same tree and each content spreads its load differently.
    fn build_tree(&mut self, root: u32) {
        let mut order: Vec<([u8; 32], u32)> = (0..self.parent.len() as u32)
            .filter(|s| *s != root)
            .map(|s| {
                let mut h = blake3::Hasher::new();
                h.update(&self.content.0);
                h.update(format!("site-{s:04}").as_bytes());
                (*h.finalize().as_bytes(), s)
            })
            .collect();
        order.sort_unstable();
        let mut sites = vec![root];
        sites.extend(order.into_iter().map(|(_, s)| s));
        let fanout = TREE_FANOUT;
        for (pos, s) in sites.iter().enumerate().skip(1) {
            self.parent[*s as usize] = sites[(pos - 1) / fanout];
        }
    }

    /// Keeps the node's remote sources at up to [`REMOTE_SOURCES`] providers of the nearest
    /// ancestor site that can serve it: past ancestors that are cut off or whose every
    /// provider failed, but not past one that simply holds nothing yet (its children wait for
    /// it rather than crowd the sites above).
    fn refresh_remote(&mut self, host: &mut impl Host, n: u32) {
        let now = host.now_us();
        let site = self.site_of[n as usize];
        if self.partitioned[site as usize] {
            return;
        }
        let h = &self.holders[n as usize];
        let Some(d) = h.download.as_ref() else { return };
        if d.role() != Role::Wan {
            return;
        }
        let usable = |p: u32| {
            h.avoid.get(&p).is_none_or(|until| *until <= now)
                && d.sources().get(&self.ids[p as usize]).is_none_or(|s| s.banned.is_none())
        };
        let mut candidates: Vec<u32> = Vec::new();
        let mut at = site;
        while self.parent[at as usize] != at {
            at = self.parent[at as usize];
            if self.partitioned[at as usize] {
                continue;
            }
            let listed = self.providers.get(&at);
            let visible: Vec<u32> =
                listed.into_iter().flatten().filter(|(_, v)| **v <= now).map(|(p, _)| *p).collect();
            if visible.is_empty() {
                if self.seen[at as usize].is_empty() {
                    continue;
                }
                break;
            }
            candidates = visible.into_iter().filter(|p| usable(*p)).collect();
            if !candidates.is_empty() {
                break;
            }
        }
        // Keep current sources that are still candidates; fill up by rank.
        let current: BTreeSet<u32> = d
            .sources()
            .iter()
            .filter(|(_, s)| !s.lan && s.banned.is_none())
            .map(|(id, _)| self.index[id])
            .collect();
        let mine = u64::from(n) << 32;
        let mut want: BTreeSet<u32> =
            candidates.iter().copied().filter(|p| current.contains(p)).collect();
        let mut ranked: Vec<(u64, u32)> = candidates
            .iter()
            .filter(|p| !want.contains(p))
            .map(|p| (splitmix(self.salt ^ mine ^ u64::from(*p)), *p))
            .collect();
        ranked.sort_unstable();
        for (_, p) in ranked {
            if want.len() >= REMOTE_SOURCES {
                break;
            }
            want.insert(p);
        }
        if want == current {
            return;
        }
        let d = self.holders[n as usize].download.as_mut().expect("checked above");
        for gone in current.difference(&want) {
            d.remove_source(&self.ids[*gone as usize]);
        }
        for new in want.difference(&current) {
            d.add_source(self.ids[*new as usize], false);
        }
        host.trace_payload(26, n, want.len() as u32, u64::from(at));
        self.request_poll(host, n, now);
    }

    fn drop_if_unreachable(&mut self, host: &mut impl Host, n: u32, s: u32) {
        if !self.cross(n, s) || self.reachable(s, n) {
            return;
        }
        let now = host.now_us();
        let h = &mut self.holders[n as usize];
        if let Some(d) = h.download.as_mut() {
            d.remove_source(&self.ids[s as usize]);
            h.avoid.insert(s, now + AVOID_MS * 1000);
            self.request_poll(host, n, now);
        }
    }

    fn poll(&mut self, host: &mut impl Host, n: u32) {
        let now = host.now_us();
        let h = &mut self.holders[n as usize];
        if h.poll_at != now {
            return;
        }
        h.poll_at = u64::MAX;
        let epoch = h.epoch;
        let Some(d) = h.download.as_mut() else { return };
        // `poll` is `poll_asks` then `poll_fetches`. The latter plans until nothing more can
        // be planned, so with no change since its last call it plans nothing: it is skipped
        // then, which saves the planner's linear scans on every refresh tick.
        let mut actions = d.poll_asks(Millis(now / 1000));
        let dirty = std::mem::take(&mut h.dirty);
        let changed = std::mem::take(&mut h.dirty_sources);
        let d = self.holders[n as usize].download.as_ref().expect("checked above");
        let work = dirty || self.has_work(d, changed);
        let h = &mut self.holders[n as usize];
        let d = h.download.as_mut().expect("checked above");
        if work {
            actions.extend(d.poll_fetches(Millis(now / 1000)));
        }
        let (mut lan, mut wan, mut fetches) = (Vec::new(), Vec::new(), Vec::new());
        for a in actions {
            match a {
                Action::AskHave(id) => {
                    let s = self.index[&id];
                    if self.cross(n, s) {
                        wan.push(s);
                    } else {
                        lan.push(s);
                    }
                }
                Action::Fetch(req) => fetches.push(req),
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
        self.schedule_poll(host, n, now + self.params.have_refresh_ms * 1000);
    }

    fn check(&mut self, host: &mut impl Host, n: u32, epoch: u32) {
        if !self.alive(n, epoch) {
            return;
        }
        let now = host.now_us();
        let Some(d) = self.holders[n as usize].download.as_mut() else { return };
        let slow = d.check(Millis(now / 1000));
        for (s, _) in &slow {
            host.trace_payload(27, n, self.index[s], 0);
        }
        if !slow.is_empty() {
            self.request_poll(host, n, now);
        }
        self.refresh_remote(host, n);
        host.schedule_payload(now + CHECK_MS * 1000, PayloadEv::Check { node: n, epoch });
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
        let alive = self.alive(n, epoch);
        for (s, availability) in answers {
            let availability = if self.cross(n, s) {
                // What the reply costs on the wire, counted against the site's WAN.
                let reply = DataReply::Have { size_bytes: self.spec.size_bytes, availability };
                self.wan_in[site] += reply.to_bytes().len() as u64;
                match reply {
                    DataReply::Have { availability, .. } => availability,
                    _ => unreachable!("built above"),
                }
            } else {
                availability
            };
            if !alive {
                continue;
            }
            if let Some(d) = self.holders[n as usize].download.as_mut() {
                if d.on_have(&self.ids[s as usize], availability).is_some() {
                    self.request_poll(host, n, host.now_us());
                } else {
                    self.source_changed(host, n, s, host.now_us());
                }
            }
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
                .download
                .as_ref()
                .is_some_and(|d| d.requests().any(|r| r.id == req))
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
            let ev = PayloadEv::FlowFailed {
                node: f.node,
                epoch: f.epoch,
                source: f.source,
                req: f.req,
            };
            host.schedule_payload(now + DETECT_MS * 1000, ev);
            return;
        }
        let held = &self.holders[f.source as usize].held;
        let mut count = 0;
        let slice = if self.cross(f.source, f.node) { WAN_SLICE_GROUPS } else { LAN_SLICE_GROUPS };
        while count < slice && f.next + count < f.end && held.get(f.next + count) {
            count += 1;
        }
        // A source that lacks the next group ends the range there (the planner hears
        // `on_done` and asks again elsewhere); an honest source only lacks groups it never
        // claimed.
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
    /// source node's uplink, the source site's WAN uplink, the destination site's WAN downlink
    /// and the destination node's downlink. A hop starts no earlier than the one before it and
    /// when it is free; each is then busy for the slice's transmission time at its own
    /// bandwidth. Queues are per hop, as in routers: a busy downlink delays the slice after it
    /// left the uplink, it does not hold the uplink idle (reserving both at the later free
    /// time did, and left shared uplinks idle whenever one of their destinations was busy).
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
            let up = ready.max(self.site_up_free[ss]);
            self.site_up_free[ss] = up + wan_tx;
            let down = (up + wan_tx).max(self.site_down_free[ds]);
            self.site_down_free[ds] = down + wan_tx;
            ready = down;
            done = done.max(down + wan_tx);
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
        if !self.request_active(a.node, a.epoch, a.req) {
            return;
        }
        let h = &mut self.holders[a.node as usize];
        let d = h.download.as_mut().expect("active request");
        let before = h.held_count;
        for g in a.first..a.first + a.count {
            if d.on_group(a.req, g) && h.held.set(g) {
                h.held_count += 1;
            }
        }
        // A range that ended short returns groups to the pool that any source may serve.
        let short = d.requests().any(|r| r.id == a.req && a.first + a.count < r.first + r.count);
        if a.last {
            d.on_done(a.req);
        }
        let complete = d.is_complete();
        if before == 0 && h.held_count > 0 {
            self.list_provider(a.node, now);
        }
        if complete {
            let h = &mut self.holders[a.node as usize];
            h.download = None;
            h.complete_us.get_or_insert(now);
            host.trace_payload(23, a.node, 0, 0);
        } else if a.last && short {
            self.request_poll(host, a.node, now);
        } else if a.last {
            self.source_changed(host, a.node, a.source, now);
        }
    }

    /// The site's view changed: LAN sources follow it, and roles are recomputed.
    fn site_changed(&mut self, host: &mut impl Host, site: u32) {
        let now = host.now_us();
        for m in self.members[site as usize].clone() {
            if !self.holders[m as usize].up || self.holders[m as usize].download.is_none() {
                continue;
            }
            let role = self.role(m);
            let seen = &self.seen[site as usize];
            let d = self.holders[m as usize].download.as_mut().expect("checked");
            let gone: Vec<NodeId> = d
                .sources()
                .iter()
                .filter(|(id, s)| s.lan && !seen.contains(&self.index[*id]))
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                d.remove_source(&id);
            }
            for p in seen {
                if *p != m {
                    d.add_source(self.ids[*p as usize], true);
                }
            }
            let was = d.role();
            d.set_role(role);
            if role == Role::Wan && was != Role::Wan {
                host.trace_payload(28, m, site, 0);
                self.failovers += 1;
                self.refresh_remote(host, m);
            }
            self.request_poll(host, m, now);
        }
    }

    /// Hook: node `n` crashed.
    pub(crate) fn on_crash(&mut self, host: &mut impl Host, n: u32) {
        let h = &mut self.holders[n as usize];
        h.up = false;
        h.epoch += 1;
        h.download = None;
        h.poll_at = u64::MAX;
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

    /// Hook: a site's WAN links were cut (`true`) or restored.
    pub(crate) fn on_partition(&mut self, host: &mut impl Host, site: u32, cut: bool) {
        self.partitioned[site as usize] = cut;
        if cut {
            host.schedule_payload(host.now_us() + DETECT_MS * 1000, PayloadEv::CutSeen);
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
            if h.up && h.download.is_some() && h.held_count > 0 {
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
