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

mod flows;
mod planner;
mod sources;

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

    /// The site's elected fetcher as node `n` sees it (`None` when it is `n`).
    fn lead(&self, n: u32) -> Option<NodeId> {
        let site = self.site_of[n as usize] as usize;
        let me = &self.ids[n as usize];
        let seen = self.seen[site].iter().map(|m| &self.ids[*m as usize]);
        transfer::elect(&self.content, seen.chain(std::iter::once(me))).filter(|l| l != me)
    }

    fn role(&self, n: u32) -> Role {
        let site = self.site_of[n as usize] as usize;
        transfer::role_of(
            &self.content,
            &self.ids[n as usize],
            self.seen[site].iter().map(|m| &self.ids[*m as usize]),
        )
    }

    /// The site's view changed: LAN sources follow it, and roles are recomputed.
    fn site_changed(&mut self, host: &mut impl Host, site: u32) {
        let now = host.now_us();
        for m in self.members[site as usize].clone() {
            if !self.holders[m as usize].up || self.holders[m as usize].download.is_none() {
                continue;
            }
            let role = self.role(m);
            let lead = self.lead(m);
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
            d.set_lead(lead);
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
