//! One download under the drive contract: every decision about fetching one payload, so the
//! real node and the simulator run the same policy and differ only in how bytes and time move.
//!
//! A driver owns a [`Fetch`] per content it wants and repeats, like [`crate::node::Node`]:
//! 1. `fetch.handle_input(now, input)` with a [`FetchInput`]: the peers it is connected to
//!    (and whether each is in its site), providers found in the DHT, answers to questions,
//!    verified groups, ranges that ended, faults; and `fetch.handle_timeout(now)` at or after
//!    [`Fetch::poll_timeout`].
//! 2. `while let Some(out) = fetch.poll_output()` — carry out every [`FetchOutput`]: ask a
//!    source what it holds, get the outboard, fetch a range, cancel one, look up providers,
//!    penalise a peer; `Complete` and `Failed` end the download.
//!
//! ## The source policy
//! - **Role**: the live members of the site elect one node per content to fetch across the WAN
//!   ([`super::role_of`] over the connected members); the others use site members only, and
//!   stream from the elected node while it is still receiving. A node that loses the role
//!   cancels its ranges from other sites at once, so its site never pulls a second copy.
//! - **WAN sources**: the elected node uses up to [`limits::FETCH_WAN_SOURCES_MAX`] peers of
//!   other sites: those it is connected to and providers from the DHT, at most
//!   [`limits::FETCH_WAN_SOURCES_PER_SITE`] in any one site (its sources there share one
//!   uplink). It keeps the ones it has and fills free slots by a rendezvous hash of (content,
//!   itself, candidate), peers it is connected to first. Each site's elected node announces
//!   itself in the DHT from its first verified group (the node's driver does), so the
//!   providers of a payload being fetched spread over the sites fetching it; with the
//!   per-site cap, the fetchers of many sites take most of their sources from each other and
//!   only a share from the site that held it first. Of more than
//!   [`limits::SOURCES_PER_DOWNLOAD_MAX`] providers it keeps the best-ranked for itself.
//!   Every [`limits::FETCH_ROTATE_MS`], when there are more candidates than slots, the
//!   slowest WAN source is retired (its ranges finish) and rests, and another is tried: a
//!   site that already holds parts of the payload is found and feeds its neighbours, instead
//!   of every site pulling from the origin.
//! - **Piece order**: each node starts picking at a place of its own (a hash of content and
//!   node id) and wraps around; sites and site members that fetch at once hold different
//!   parts, so they have something to give each other. From a source that holds everything,
//!   the elected node takes first what none of its partial WAN sources holds, and of that
//!   first its *share*: blocks of [`SHARE_BLOCK_GROUPS`] split between the sites it knows to
//!   be fetching by a rendezvous hash of (content, block, site), so the fetchers of many sites
//!   each pull different blocks from the origin without a word exchanged, and trade the rest
//!   (the driver says which site is this node's with [`FetchInput::Site`]). Other sites'
//!   share it leaves to them while a partial WAN source still has a range in flight to it,
//!   and takes it from the complete source once none has (so a site that owns a share but
//!   is not fetching never stalls it). A complete source with nothing rare to give is left to
//!   the sites that need it.
//! - **Rests, not bans**: a source whose stream broke, or that is slow *relative to the other
//!   sources* (see [`super::plan::Download::check`]), rests for [`limits::FETCH_REST_MS`],
//!   doubling with each strike up to [`limits::FETCH_REST_MAX_MS`]; congestion is never an
//!   offence and costs no penalty. A source that lies, sends a corrupt group, overruns a range
//!   or breaks the protocol is penalised and rests from [`limits::FETCH_OFFENCE_REST_MS`]. Every
//!   rest ends, so a download is never left with no source while a holder is reachable.
//! - **Providers**: while no usable source holds anything, the elected node looks up
//!   providers after [`limits::FETCH_LOOKUP_MS`], doubling the wait after each empty lookup up
//!   to [`limits::FETCH_LOOKUP_MAX_MS`], and every [`limits::FETCH_RELOOKUP_MS`] while it
//!   fetches. While it has free WAN slots it looks again sooner, from
//!   [`limits::FETCH_LOOKUP_FILL_MS`] doubling: other sites start to hold parts of the
//!   payload within seconds, and each found takes load off the origin's uplink. After
//!   [`limits::FETCH_NO_SOURCE_MS`] with no holder the download fails with a reason (never
//!   silently stops).
//! - **Waiting costs nothing**: a download with nothing in flight wakes only for its next
//!   question, lookup, end of a rest or deadline ([`Fetch::poll_timeout`]); sources that held
//!   nothing are asked ever less often (see [`super::plan::Download::next_ask`]).
//!
//! ## Time
//! `now` is the driver's clock in milliseconds. If it goes backwards, elapsed times read as
//! zero (`Millis::since` saturates): a deadline is delayed, never brought forward.

use super::plan::{Action, Download, Fault, Params, Request};
use super::{group_count, rendezvous, role_of, Availability, Bitfield, Role};
use crate::ids::{ContentId, Millis, NodeId, SiteId};
use crate::limits;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Groups per block of the share split between fetching sites (256 KiB).
const SHARE_BLOCK_GROUPS: u64 = 16;

/// Requests whose origin (site or not) is remembered: those in flight (at most
/// `SOURCES_PER_DOWNLOAD_MAX × requests_per_source`) and the latest cancelled ones.
const REQUESTS_REMEMBERED_MAX: usize = 4_096;

/// How something asked of a source ended badly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The source misbehaved (or, for [`Fault::Slow`], the path was slow).
    Fault(Fault),
    /// The stream or connection was lost: nobody's fault, but the source rests a moment.
    Lost,
    /// No answer in time (a congested link queues a stream behind many others): the range or
    /// question goes back to the pool; the source stays (slowness is judged by its rate).
    Timeout,
    /// The source turned the stream away before reading the request (a busy server drops new
    /// streams it cannot take yet): as `Timeout`, the range goes back and the source stays.
    Busy,
}

/// An input to a [`Fetch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchInput {
    /// The admitted peers this node is connected to now, each with its site: `None` for this
    /// node's own site. Replaces the previous view.
    Peers(Vec<(NodeId, Option<SiteId>)>),
    /// Holders of the content found in the DHT (their site is unknown until connected).
    Providers(Vec<NodeId>),
    /// A source's answer to `AskHave`: its payload size and what it holds.
    Have {
        /// The source.
        source: NodeId,
        /// Size and availability, or how the question failed.
        reply: Result<(u64, Availability), Failure>,
    },
    /// The outboard from `source` was checked against the content id and stored; `Ok` carries
    /// the groups already verified on disk (a resume).
    Outboard {
        /// The source.
        source: NodeId,
        /// Groups held, or how it failed (a forged outboard is [`Fault::Corrupt`]).
        result: Result<Bitfield, Failure>,
    },
    /// Groups `first .. first + count` of a request were verified and stored.
    Groups {
        /// The request.
        request: u64,
        /// First group.
        first: u64,
        /// Groups.
        count: u64,
    },
    /// A range ended: all delivered (`Ok`), or stopped.
    RangeEnded {
        /// The request.
        request: u64,
        /// How it ended.
        result: Result<(), Failure>,
    },
    /// A source misbehaved outside a range in flight (e.g. sent bytes past a finished range).
    Fault {
        /// The source.
        source: NodeId,
        /// What it did.
        fault: Fault,
    },
    /// The store cannot go on (disk full, I/O error): the download fails with this reason.
    Stop(String),
    /// This node's site: with it, the elected node works out its share of what complete
    /// sources of other sites send (see [`super::plan::Download::set_share`]).
    Site(SiteId),
}

/// What the driver must do for a [`Fetch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOutput {
    /// Ask the source what it holds; answer with [`FetchInput::Have`].
    AskHave(NodeId),
    /// Get the outboard from the source; answer with [`FetchInput::Outboard`].
    GetOutboard(NodeId),
    /// Fetch a range; report [`FetchInput::Groups`] as groups verify, then
    /// [`FetchInput::RangeEnded`].
    FetchRange {
        /// The range.
        request: Request,
        /// Whether the source is in this node's site.
        lan: bool,
    },
    /// Stop a range in flight. Groups already verified from it are kept: report them with
    /// [`FetchInput::Groups`] (the fetch still counts them); no `RangeEnded` is expected.
    Cancel(u64),
    /// Look up holders in the DHT; answer with [`FetchInput::Providers`].
    FindProviders,
    /// The peer misbehaved on a data stream.
    Penalize(NodeId, Fault),
    /// Every group is verified: finish the payload.
    Complete,
    /// The download stopped for this reason.
    Failed(String),
}

/// Where a download stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchState {
    /// Under way.
    Fetching,
    /// Every group verified.
    Complete,
    /// Stopped with a reason.
    Failed,
}

/// Counters of one download.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Verified payload bytes received from this site.
    pub lan_bytes: u64,
    /// Verified payload bytes received from other sites.
    pub wan_bytes: u64,
    /// Groups verified more than once (a range handed to another source while the first was
    /// still sending).
    pub duplicate_groups: u64,
    /// Sources rested, by fault kind (`lost` for broken streams), and questions or ranges
    /// that timed out or were turned away (`timeout`, `busy`: the source stays).
    pub dropped: BTreeMap<&'static str, u32>,
    /// Peers penalised.
    pub penalised: u32,
    /// WAN sources retired to try another.
    pub rotations: u32,
}

/// One download: the source policy around a [`Download`] planner.
#[derive(Debug)]
pub struct Fetch {
    me: NodeId,
    download: Download,
    params: Params,
    state: FetchState,
    has_outboard: bool,
    outboard_from: Option<NodeId>,
    /// This node's site, once the driver said.
    site: Option<SiteId>,
    /// The sites the share was last worked out for (this one included; empty: none).
    share_sites: Vec<SiteId>,
    /// Connected admitted peers → their site (`None`: this node's).
    peers: BTreeMap<NodeId, Option<SiteId>>,
    /// Whether the driver has given a peer view yet: before it, this node cannot know whether
    /// it is its site's elected fetcher (alone in the site, it would think so).
    peers_known: bool,
    providers: BTreeSet<NodeId>,
    /// Resting sources and when their rest ends.
    rests: BTreeMap<NodeId, Millis>,
    /// Retiring sources that failed (lost or slow): they rest with a strike once idle.
    struck: BTreeSet<NodeId>,
    /// What each connected site member last said it holds, kept while it rests: the WAN is
    /// never asked for what the site has, even while a member is briefly unreachable.
    lan_avail: BTreeMap<NodeId, Availability>,
    strikes: BTreeMap<NodeId, u32>,
    out: VecDeque<FetchOutput>,
    /// Requests started (in flight or cancelled lately) → from this site: groups of a
    /// cancelled range may still be reported, and count where they came from.
    request_lan: BTreeMap<u64, bool>,
    next_check: Millis,
    next_rotate: Millis,
    last_lookup: Option<Millis>,
    /// Wait between lookups while nothing holds the payload: doubles with each empty one.
    lookup_every: u64,
    /// Wait between lookups while fetching with free WAN slots: doubles with each one.
    fill_every: u64,
    holder_seen: Millis,
    /// Usable sources that hold something, as of the last step.
    holders: usize,
    stats: FetchStats,
}

impl Fetch {
    /// A download of `content` (`size_bytes`, as signed) by node `me`. `have` holds the groups
    /// verified on disk, `has_outboard` whether the outboard is stored (without it nothing can
    /// be verified, so it is fetched first).
    pub fn new(
        me: NodeId,
        content: ContentId,
        size_bytes: u64,
        have: Bitfield,
        has_outboard: bool,
        params: Params,
        now: Millis,
    ) -> Fetch {
        let mut download = Download::new(content, size_bytes, have, params.clone());
        download.set_start(start_group(&content, &me, size_bytes));
        let mut f = Fetch {
            me,
            download,
            params,
            state: FetchState::Fetching,
            has_outboard,
            outboard_from: None,
            site: None,
            share_sites: Vec::new(),
            peers: BTreeMap::new(),
            peers_known: false,
            providers: BTreeSet::new(),
            rests: BTreeMap::new(),
            struck: BTreeSet::new(),
            lan_avail: BTreeMap::new(),
            strikes: BTreeMap::new(),
            out: VecDeque::new(),
            request_lan: BTreeMap::new(),
            next_check: now.plus(limits::FETCH_CHECK_MS),
            next_rotate: now.plus(limits::FETCH_ROTATE_MS),
            last_lookup: None,
            lookup_every: limits::FETCH_LOOKUP_MS,
            fill_every: limits::FETCH_LOOKUP_FILL_MS,
            holder_seen: now,
            holders: 0,
            stats: FetchStats::default(),
        };
        f.step(now);
        f
    }

    // ---- getters ---------------------------------------------------------------------------

    /// The planner (sources, requests, verified groups).
    pub fn download(&self) -> &Download {
        &self.download
    }
    /// Where the download stands.
    pub fn state(&self) -> FetchState {
        self.state
    }
    /// Counters.
    pub fn stats(&self) -> &FetchStats {
        &self.stats
    }
    /// Sources resting now.
    pub fn resting(&self) -> usize {
        self.rests.len()
    }
    /// How long no usable source has held anything (0 while one does): a download that is
    /// waiting shows it.
    pub fn waiting_ms(&self, now: Millis) -> u64 {
        if self.holders > 0 {
            0
        } else {
            now.since(self.holder_seen)
        }
    }
    /// Whether the outboard is held (groups can be verified).
    pub fn has_outboard(&self) -> bool {
        self.has_outboard
    }

    // ---- handle_* --------------------------------------------------------------------------

    /// Feeds one input.
    pub fn handle_input(&mut self, now: Millis, input: FetchInput) {
        if self.state != FetchState::Fetching {
            return;
        }
        match input {
            FetchInput::Peers(peers) => {
                self.peers_known = true;
                self.peers = peers.into_iter().filter(|(n, _)| *n != self.me).collect();
                let peers = &self.peers;
                self.lan_avail.retain(|n, _| peers.get(n).is_some_and(|s| s.is_none()));
                self.sync_sources(now);
            }
            FetchInput::Providers(nodes) => {
                self.providers.extend(nodes.into_iter().filter(|n| *n != self.me));
                if self.providers.len() > limits::SOURCES_PER_DOWNLOAD_MAX {
                    self.keep_best_providers();
                }
                self.sync_sources(now);
            }
            FetchInput::Have { source, reply } => self.on_have(now, source, reply),
            FetchInput::Outboard { source, result } => self.on_outboard(now, source, result),
            FetchInput::Groups { request, first, count } => self.on_groups(request, first, count),
            FetchInput::RangeEnded { request, result } => self.on_range_ended(now, request, result),
            FetchInput::Fault { source, fault } => self.fault(now, source, Failure::Fault(fault)),
            FetchInput::Stop(reason) => self.fail(reason),
            FetchInput::Site(site) => {
                self.site = Some(site);
                self.sync_sources(now);
            }
        }
        self.step(now);
    }

    /// Periodic work: rests that ended, rate and slowness checks, rotation of WAN sources,
    /// provider look-ups and the no-source deadline.
    pub fn handle_timeout(&mut self, now: Millis) {
        if self.state != FetchState::Fetching {
            return;
        }
        let before = self.rests.len();
        self.rests.retain(|_, until| *until > now);
        if self.rests.len() != before {
            self.sync_sources(now);
        }
        if now >= self.next_check {
            self.next_check = now.plus(limits::FETCH_CHECK_MS);
            for n in self.download.judge(now) {
                *self.stats.dropped.entry(Fault::Slow.kind()).or_default() += 1;
                // What a slow member holds no longer keeps the WAN from fetching it.
                self.lan_avail.remove(&n);
                self.retire_then_rest(n);
            }
        }
        if now >= self.next_rotate {
            self.next_rotate = now.plus(limits::FETCH_ROTATE_MS);
            self.rotate(now);
        }
        self.finish_retired(now);
        self.step(now);
    }

    // ---- poll_* ----------------------------------------------------------------------------

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<FetchOutput> {
        self.out.pop_front()
    }

    /// When to call [`Fetch::handle_timeout`] next; `None` once the download ended.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if self.state != FetchState::Fetching {
            return None;
        }
        // Rates are judged every `FETCH_CHECK_MS` while ranges are in flight; a download that
        // waits for a holder wakes only for its next question, lookup, rest's end or deadline.
        let mut at = self.no_source_deadline();
        if self.download.requests().next().is_some() || !self.struck.is_empty() {
            at = at.min(self.next_check);
        }
        if self.download.role() == Role::Wan && self.has_outboard {
            at = at.min(self.next_rotate);
        }
        if let Some(t) = self.download.next_ask() {
            at = at.min(t);
        }
        if let Some(t) = self.next_lookup() {
            at = at.min(t);
        }
        if let Some(until) = self.rests.values().min() {
            at = at.min(*until);
        }
        Some(at)
    }

    // ---- internals -------------------------------------------------------------------------

    /// When the elected node looks up providers next; `None` when not elected.
    fn next_lookup(&self) -> Option<Millis> {
        // A driver gives its site and its peers one after the other when a download starts;
        // between the two this node looks alone in its site, hence elected. A look-up then
        // cost every node of the fleet a DHT walk (about 1.3 KB from each peer) at the start
        // of every download.
        if self.download.role() != Role::Wan || !self.peers_known {
            return None;
        }
        let every = if self.holders == 0 {
            self.lookup_every
        } else if self.wan_slots_free() {
            self.fill_every.min(limits::FETCH_RELOOKUP_MS)
        } else {
            limits::FETCH_RELOOKUP_MS
        };
        Some(self.last_lookup.map_or(Millis(0), |t| t.plus(every)))
    }

    /// Whether the elected node uses fewer WAN sources than it may.
    fn wan_slots_free(&self) -> bool {
        let wan = self.download.sources().values().filter(|s| !s.lan).count();
        wan < limits::FETCH_WAN_SOURCES_MAX
    }

    /// When the download fails for want of a holder (if none turns up before).
    fn no_source_deadline(&self) -> Millis {
        self.holder_seen.plus(limits::FETCH_NO_SOURCE_MS + 1)
    }

    fn role(&self) -> Role {
        let site: Vec<&NodeId> =
            self.peers.iter().filter(|(_, site)| site.is_none()).map(|(n, _)| n).collect();
        role_of(self.download.content(), &self.me, site)
    }

    /// Keeps the planner's sources and role in step with the peers, providers and rests.
    fn sync_sources(&mut self, _now: Millis) {
        let role = self.role();
        let cancelled = self.download.set_role(role);
        self.cancel(cancelled);
        let mut wanted: BTreeSet<NodeId> = BTreeSet::new();
        for (n, site) in &self.peers {
            if site.is_none() && !self.rests.contains_key(n) {
                wanted.insert(*n);
            }
        }
        if role == Role::Wan {
            wanted.extend(self.wan_sources(wanted.len()));
        }
        let gone: Vec<NodeId> =
            self.download.sources().keys().filter(|n| !wanted.contains(n)).copied().collect();
        for n in gone {
            let ids = self.download.forget(&n);
            self.cancel(ids);
            if self.outboard_from == Some(n) {
                self.outboard_from = None;
            }
        }
        for n in wanted {
            let lan = self.peers.get(&n).is_some_and(|s| s.is_none());
            self.download.add_source(n, lan);
        }
        let site = self.peers.iter().filter(|(_, site)| site.is_none()).map(|(n, _)| n);
        let lead = super::elect(self.download.content(), site.chain(std::iter::once(&self.me)));
        self.download.set_lead(lead.filter(|n| *n != self.me));
        self.update_share();
    }

    /// This node's share of what complete sources of other sites send: each block of
    /// [`SHARE_BLOCK_GROUPS`] goes to one of the sites fetching it (this one, and those of the
    /// WAN peers it knows that have not said they hold it all) by a rendezvous hash of
    /// (content, block, site), so every fetcher that knows the same sites works out the same
    /// split without a word exchanged. Only while elected, with a site and a peer elsewhere.
    fn update_share(&mut self) {
        let Some(mine) = self.site.clone().filter(|_| self.download.role() == Role::Wan) else {
            self.share_sites.clear();
            self.download.set_share(None);
            return;
        };
        let complete: BTreeSet<&SiteId> = self
            .peers
            .iter()
            .filter_map(|(n, site)| site.as_ref().map(|s| (n, s)))
            .filter(|(n, _)| self.download.sources().get(n).is_some_and(|s| s.complete()))
            .map(|(_, s)| s)
            .collect();
        let mut sites: BTreeSet<&SiteId> =
            self.peers.values().flatten().filter(|s| !complete.contains(s)).collect();
        sites.insert(&mine);
        let key: Vec<SiteId> = sites.iter().map(|s| (*s).clone()).collect();
        if self.share_sites == key {
            return;
        }
        if sites.len() < 2 {
            self.share_sites = key;
            self.download.set_share(None);
            return;
        }
        let content = self.download.content();
        let groups = self.download.have().len();
        let mut share = vec![0u64; groups.div_ceil(64) as usize];
        for block in 0..groups.div_ceil(SHARE_BLOCK_GROUPS) {
            let score = |site: &SiteId| {
                let mut h = blake3::Hasher::new();
                h.update(&content.0);
                h.update(&block.to_le_bytes());
                h.update(site.as_str().as_bytes());
                *h.finalize().as_bytes()
            };
            let owner = sites.iter().max_by_key(|s| score(s)).copied();
            if owner == Some(&mine) {
                let first = block * SHARE_BLOCK_GROUPS;
                for g in first..(first + SHARE_BLOCK_GROUPS).min(groups) {
                    share[(g / 64) as usize] |= 1 << (g % 64);
                }
            }
        }
        self.share_sites = key;
        self.download.set_share(Some(share));
    }

    /// The WAN sources: current ones that are still candidates, then the best-ranked others.
    fn wan_sources(&self, lan_count: usize) -> Vec<NodeId> {
        let slots = limits::FETCH_WAN_SOURCES_MAX
            .min(limits::SOURCES_PER_DOWNLOAD_MAX.saturating_sub(lan_count));
        let mut out = self.wan_candidates();
        out.truncate(slots);
        out
    }

    /// Every WAN candidate that is not resting, in order of preference: current sources, then
    /// connected peers, then providers, each by a rendezvous rank of this node; at most
    /// [`limits::FETCH_WAN_SOURCES_PER_SITE`] of any one known site (they share its uplink:
    /// more would only split it, and would crowd the one site that held the payload first).
    fn wan_candidates(&self) -> Vec<NodeId> {
        let content = *self.download.content();
        let current = |n: &NodeId| self.download.sources().get(n).is_some_and(|s| !s.lan);
        let mut candidates: Vec<(bool, bool, [u8; 32], NodeId)> = self
            .peers
            .iter()
            .filter(|(_, site)| site.is_some())
            .map(|(n, _)| *n)
            .chain(self.providers.iter().filter(|n| !self.peers.contains_key(n)).copied())
            .filter(|n| !self.rests.contains_key(n))
            .map(|n| (!current(&n), !self.peers.contains_key(&n), self.rank(&content, &n), n))
            .collect();
        candidates.sort();
        let mut per_site: BTreeMap<&SiteId, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for (_, _, _, n) in candidates {
            if let Some(Some(site)) = self.peers.get(&n) {
                let taken = per_site.entry(site).or_default();
                if *taken >= limits::FETCH_WAN_SOURCES_PER_SITE {
                    continue;
                }
                *taken += 1;
            }
            out.push(n);
        }
        out
    }

    /// Keeps [`limits::SOURCES_PER_DOWNLOAD_MAX`] providers: the current sources, then the
    /// best-ranked for this node, so the fetchers of many sites spread over different
    /// providers instead of all keeping the same first few.
    fn keep_best_providers(&mut self) {
        let content = *self.download.content();
        let mut ranked: Vec<(bool, [u8; 32], NodeId)> = self
            .providers
            .iter()
            .map(|n| (!self.download.sources().contains_key(n), self.rank(&content, n), *n))
            .collect();
        ranked.sort_unstable();
        ranked.truncate(limits::SOURCES_PER_DOWNLOAD_MAX);
        self.providers = ranked.into_iter().map(|(_, _, n)| n).collect();
    }

    fn rank(&self, content: &ContentId, n: &NodeId) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&rendezvous(content, n));
        h.update(&self.me.0);
        *h.finalize().as_bytes()
    }

    /// Retires the slowest WAN source when other candidates wait for a slot.
    fn rotate(&mut self, now: Millis) {
        if self.download.role() != Role::Wan || !self.has_outboard {
            return;
        }
        let wan: Vec<(&NodeId, &super::plan::Source)> =
            self.download.sources().iter().filter(|(_, s)| !s.lan && !s.retiring).collect();
        if wan.len() < limits::FETCH_WAN_SOURCES_MAX {
            return;
        }
        let waiting =
            self.wan_candidates().iter().any(|n| !self.download.sources().contains_key(n));
        if !waiting {
            return;
        }
        // A source that answered it holds nothing goes first, then the slowest holder; one that
        // has not answered yet is not judged.
        let slowest = wan
            .iter()
            .filter(|(_, s)| s.have.is_some())
            .min_by_key(|(n, s)| (s.holds_any(), s.judged_rate_bytes_per_s, s.bytes, **n))
            .map(|(n, _)| **n);
        if let Some(n) = slowest {
            self.download.retire(&n);
            self.stats.rotations += 1;
            self.finish_retired(now);
        }
    }

    /// A source whose stream broke or that is slow gets no new ranges; what it has on the
    /// wire still arrives (cancelling would throw those WAN bytes away). It rests once idle.
    fn retire_then_rest(&mut self, n: NodeId) {
        if self.download.sources().contains_key(&n) {
            self.download.retire(&n);
            self.struck.insert(n);
        }
    }

    /// Retired sources with nothing in flight leave and rest: with a strike when they failed,
    /// without one when rotated out (long enough for the others to be tried), freeing their
    /// slot. When every other source sits idle, a failed source's ranges are all that is left
    /// to wait for: they are cancelled and handed to the others (the end game).
    fn finish_retired(&mut self, now: Millis) {
        let mut others = self.download.sources().values().filter(|s| !s.retiring);
        let others_idle = others.clone().next().is_some() && others.all(|s| s.active() == 0);
        let done: Vec<NodeId> = self
            .download
            .sources()
            .iter()
            .filter(|(n, s)| {
                s.retiring && (s.active() == 0 || (others_idle && self.struck.contains(n)))
            })
            .map(|(n, _)| *n)
            .collect();
        for n in done {
            if self.struck.remove(&n) {
                self.rest(now, n, limits::FETCH_REST_MS);
            } else {
                let ids = self.download.forget(&n);
                self.cancel(ids);
                self.rests.insert(n, now.plus(limits::FETCH_ROTATE_MS * 3));
                self.sync_sources(now);
            }
        }
    }

    fn on_have(&mut self, now: Millis, n: NodeId, reply: Result<(u64, Availability), Failure>) {
        match reply {
            Ok((size, avail))
                if size == self.download.size_bytes() || avail == Availability::Nothing =>
            {
                if self.peers.get(&n).is_some_and(|s| s.is_none()) {
                    self.lan_avail.insert(n, avail.clone());
                }
                let complete = avail == Availability::Complete;
                if let Some(f) = self.download.on_have(&n, avail) {
                    self.fault(now, n, Failure::Fault(f));
                } else if complete && self.peers.get(&n).is_some_and(|s| s.is_some()) {
                    self.update_share();
                }
            }
            // Holds another size under this id: it cannot help this download.
            Ok(_) => self.fault(now, n, Failure::Fault(Fault::Protocol)),
            Err(failure) => {
                self.download.on_have_failed(&n);
                self.fault(now, n, failure);
            }
        }
    }

    fn on_outboard(&mut self, now: Millis, n: NodeId, result: Result<Bitfield, Failure>) {
        if self.outboard_from == Some(n) {
            self.outboard_from = None;
        }
        match result {
            Ok(have) if !self.has_outboard => {
                // The partial file may hold groups from before (a resume): plan from them.
                self.has_outboard = true;
                let d = &self.download;
                let mut fresh =
                    Download::new(*d.content(), d.size_bytes(), have, self.params.clone());
                fresh.set_start(start_group(d.content(), &self.me, d.size_bytes()));
                fresh.set_role(d.role());
                for (node, s) in d.sources() {
                    fresh.add_source(*node, s.lan);
                    if let Some(a) = &s.have {
                        fresh.on_have(node, a.clone());
                    }
                }
                self.download = fresh;
            }
            Ok(_) => {}
            Err(failure) => self.fault(now, n, failure),
        }
    }

    fn on_groups(&mut self, request: u64, first: u64, count: u64) {
        let lan = self.request_lan.get(&request).copied();
        let size = self.download.size_bytes();
        for g in first..first.saturating_add(count).min(group_count(size)) {
            if self.download.on_group(request, g) {
                let (_, len) = super::group_span(size, g);
                match lan {
                    Some(false) => self.stats.wan_bytes += len,
                    _ => self.stats.lan_bytes += len,
                }
            } else {
                self.stats.duplicate_groups += 1;
            }
        }
    }

    fn on_range_ended(&mut self, now: Millis, request: u64, result: Result<(), Failure>) {
        let Some(source) = self.download.requests().find(|r| r.id == request).map(|r| r.source)
        else {
            return;
        };
        self.request_lan.remove(&request);
        match result {
            Ok(()) => {
                self.download.on_done(request);
                self.strikes.remove(&source);
            }
            Err(failure) => {
                self.download.on_done(request);
                self.fault(now, source, failure);
            }
        }
    }

    /// A source failed: it rests (with a penalty if it is to blame) and its ranges go back.
    fn fault(&mut self, now: Millis, n: NodeId, failure: Failure) {
        if self.rests.contains_key(&n) {
            return;
        }
        if self.outboard_from == Some(n) {
            self.outboard_from = None;
        }
        match failure {
            // The range or question goes back; the source stays.
            Failure::Timeout => *self.stats.dropped.entry("timeout").or_default() += 1,
            Failure::Busy => *self.stats.dropped.entry("busy").or_default() += 1,
            // The path's doing: the source finishes what is on the wire, then rests.
            Failure::Lost | Failure::Fault(Fault::Slow) => {
                if failure != Failure::Lost {
                    self.lan_avail.remove(&n);
                }
                if !self.struck.contains(&n) {
                    let kind = if failure == Failure::Lost { "lost" } else { Fault::Slow.kind() };
                    *self.stats.dropped.entry(kind).or_default() += 1;
                }
                self.retire_then_rest(n);
                self.finish_retired(now);
            }
            Failure::Fault(f) => {
                // A liar's claims keep nothing from the WAN.
                self.lan_avail.remove(&n);
                self.out.push_back(FetchOutput::Penalize(n, f));
                self.stats.penalised += 1;
                *self.stats.dropped.entry(f.kind()).or_default() += 1;
                self.struck.remove(&n);
                self.rest(now, n, limits::FETCH_OFFENCE_REST_MS);
            }
        }
    }

    fn rest(&mut self, now: Millis, n: NodeId, base_ms: u64) {
        let ids = self.download.forget(&n);
        self.cancel(ids);
        let strikes =
            if self.strikes.len() < limits::FETCH_STRIKES_MAX || self.strikes.contains_key(&n) {
                let s = self.strikes.entry(n).or_default();
                *s = s.saturating_add(1);
                *s
            } else {
                1
            };
        let ms = base_ms.saturating_mul(1 << (strikes - 1).min(20)).min(limits::FETCH_REST_MAX_MS);
        self.rests.insert(n, now.plus(ms));
        self.sync_sources(now);
    }

    /// Tells the planner what resting site members were last heard to hold.
    fn note_resting_members(&mut self) {
        let words = (self.download.have().len().div_ceil(64)) as usize;
        let mut known: Vec<u64> = Vec::new();
        for (n, a) in &self.lan_avail {
            if !self.rests.contains_key(n) {
                continue;
            }
            known.resize(words, 0);
            match a {
                Availability::Complete => known.iter_mut().for_each(|w| *w = u64::MAX),
                Availability::Partial(b) => {
                    known.iter_mut().zip(b.words()).for_each(|(w, x)| *w |= x)
                }
                Availability::Nothing => {}
            }
        }
        self.download.set_site_known(known);
    }

    fn cancel(&mut self, ids: Vec<u64>) {
        self.out.extend(ids.into_iter().map(FetchOutput::Cancel));
    }

    fn fail(&mut self, reason: String) {
        let ids: Vec<u64> = self.download.requests().map(|r| r.id).collect();
        self.cancel(ids);
        self.state = FetchState::Failed;
        self.out.push_back(FetchOutput::Failed(reason));
    }

    /// After every input: completion, the outboard, questions and ranges, and the no-source
    /// rule.
    fn step(&mut self, now: Millis) {
        if self.state != FetchState::Fetching {
            return;
        }
        self.finish_retired(now);
        self.note_resting_members();
        if self.download.is_complete() && self.has_outboard {
            self.state = FetchState::Complete;
            self.out.push_back(FetchOutput::Complete);
            return;
        }
        let actions =
            if self.has_outboard { self.download.poll(now) } else { self.download.poll_asks(now) };
        for a in actions {
            self.out.push_back(match a {
                Action::AskHave(n) => FetchOutput::AskHave(n),
                Action::Fetch(request) => {
                    let lan = self.download.sources().get(&request.source).is_some_and(|s| s.lan);
                    if self.request_lan.len() >= REQUESTS_REMEMBERED_MAX {
                        self.request_lan.pop_first();
                    }
                    self.request_lan.insert(request.id, lan);
                    FetchOutput::FetchRange { request, lan }
                }
            });
        }
        let role = self.download.role();
        let usable = |s: &super::plan::Source| s.banned.is_none() && (s.lan || role == Role::Wan);
        if !self.has_outboard && self.outboard_from.is_none() {
            let holder = self.download.sources().iter().find(|(_, s)| usable(s) && s.holds_any());
            if let Some((n, _)) = holder {
                self.outboard_from = Some(*n);
                self.out.push_back(FetchOutput::GetOutboard(*n));
            }
        }
        let holders =
            self.download.sources().values().filter(|s| usable(s) && s.holds_any()).count();
        self.holders = holders;
        if holders > 0 {
            self.holder_seen = now;
        } else if now.since(self.holder_seen) > limits::FETCH_NO_SOURCE_MS {
            self.fail(format!(
                "no admitted peer served {} for {} s",
                self.download.content(),
                limits::FETCH_NO_SOURCE_MS / 1000
            ));
            return;
        }
        // The elected node with nobody to fetch from looks in the DHT, and looks again now and
        // then while it fetches: other sites that got parts of the payload since become
        // candidates for its WAN slots.
        // With no holder, each lookup doubles the wait before the next (a payload nobody holds
        // yet costs the fleet little); a holder found resets it.
        if holders > 0 {
            self.lookup_every = limits::FETCH_LOOKUP_MS;
        }
        if self.next_lookup().is_some_and(|t| now >= t) {
            if holders == 0 && self.last_lookup.is_some() {
                self.lookup_every = (self.lookup_every * 2).min(limits::FETCH_LOOKUP_MAX_MS);
            }
            if holders > 0 && self.wan_slots_free() {
                self.fill_every = (self.fill_every * 2).min(limits::FETCH_RELOOKUP_MS);
            }
            self.last_lookup = Some(now);
            self.out.push_back(FetchOutput::FindProviders);
        }
    }
}

/// Where node `me` starts picking groups of `content`: a hash of both, so nodes fetching at
/// once start at different places.
pub fn start_group(content: &ContentId, me: &NodeId, size_bytes: u64) -> u64 {
    let h = rendezvous(content, me);
    u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) % group_count(size_bytes)
}

#[cfg(test)]
mod tests;
