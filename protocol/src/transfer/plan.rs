//! The download planner: one payload, many sources, no I/O.
//!
//! The driver owns a [`Download`] per content it wants and repeats:
//! 1. [`Download::add_source`] / [`Download::remove_source`] as peers come and go (with whether
//!    they are in this node's site), [`Download::set_role`] when the site's election changes.
//! 2. [`Download::poll`] gives [`Action`]s: ask a source what it holds, or fetch a range of
//!    groups from it. The driver carries each out and reports back:
//!    [`Download::on_have`], [`Download::on_group`] for each group it verified,
//!    [`Download::on_done`] when a range ended, [`Download::on_fault`] when a source misbehaved.
//! 3. [`Download::check`] at least every second finds sources below the minimum rate.
//!
//! Choices the planner makes, so the real node and the simulator make the same ones:
//! - Sources are used only if the role allows: a [`Role::Lan`] node never fetches from another
//!   site. Within that, LAN sources come first and the least busy source is served first.
//! - A range is the lowest run of groups that is missing, not already requested, and held by
//!   the source, up to `request_groups` long; each source has at most `requests_per_source` in
//!   flight, so several sources fill different parts of the payload at once.
//! - A source that claims a group and then says it is missing, sends a group that fails
//!   verification, sends bytes past the range, or stays below `min_rate_bytes_per_s` after
//!   `grace_ms` is banned for this download; its groups go back to the pool.
//! - A partial source (a node still receiving) is asked again every `have_refresh_ms`, which is
//!   how a site's members stream from the elected node while it is still downloading; one
//!   that holds nothing is asked ever less often (see `Download::ask_due`).

use super::{group_count, Availability, Bitfield, Role, GROUP_BYTES};
use crate::ids::{ContentId, Millis, NodeId};
use crate::limits;
use std::collections::BTreeMap;

/// Tunables of a download.
#[derive(Clone, Debug)]
pub struct Params {
    /// Groups per range request.
    pub request_groups: u64,
    /// Range requests in flight per source.
    pub requests_per_source: u32,
    /// A source slower than this (after the grace period) is dropped.
    pub min_rate_bytes_per_s: u64,
    /// Time a request has before its rate is judged.
    pub grace_ms: u64,
    /// How often a partial source is asked again what it holds.
    pub have_refresh_ms: u64,
    /// Data kept in flight per source, in milliseconds of its measured rate: enough to keep a
    /// path of any round trip below this busy, no more (what a cancelled range throws away).
    pub inflight_target_ms: u64,
    /// Fewest groups a source may have in flight, whatever its rate (and before it has one).
    pub inflight_min_groups: u64,
    /// A source is slow only when another source of this download moves this many times
    /// faster: sources that share one congested uplink are equally slow, and none of them is.
    pub slow_factor: u64,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            request_groups: 256,
            requests_per_source: 4,
            min_rate_bytes_per_s: 16 * 1024,
            grace_ms: 5_000,
            have_refresh_ms: 250,
            inflight_target_ms: 1_000,
            inflight_min_groups: 4,
            slow_factor: 4,
        }
    }
}

/// How a source misbehaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A group failed verification.
    Corrupt,
    /// It claimed groups it then said it lacked.
    Lied,
    /// It sent more bytes than the range holds.
    Overrun,
    /// It stayed below the minimum rate.
    Slow,
    /// It broke the protocol (bad frame, refused a valid request, closed early).
    Protocol,
}

impl Fault {
    /// Short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Corrupt => "corrupt",
            Fault::Lied => "lied",
            Fault::Overrun => "overrun",
            Fault::Slow => "slow",
            Fault::Protocol => "protocol",
        }
    }

    /// Whether the peer is to blame: lies, corruption and broken frames are offences (the
    /// peer is penalised); slowness is the path's doing (a shared, congested uplink), never
    /// the peer's, and costs it nothing but a rest.
    pub fn is_offence(&self) -> bool {
        !matches!(self, Fault::Slow)
    }
}

/// One source as the planner sees it.
#[derive(Clone, Debug)]
pub struct Source {
    /// In this node's site.
    pub lan: bool,
    /// What it said it holds (`None` until it answered).
    pub have: Option<Availability>,
    /// When we last asked; `None` when no question is open.
    asking_since: Option<Millis>,
    asked_at: Option<Millis>,
    /// Answers in a row that said "nothing": each doubles the wait before asking again.
    nothing_streak: u32,
    /// The site's elected fetcher (this node being a member that fetches in its site only):
    /// it holds nothing only until its own download starts, so it is asked again soonest.
    lead: bool,
    /// Why it was dropped, if it was.
    pub banned: Option<Fault>,
    /// Given no new ranges; the driver forgets it once its ranges are done.
    pub retiring: bool,
    /// A question to it failed before it ever answered: the WAN no longer waits for it.
    unanswered: bool,
    active: u32,
    /// Groups requested from it and not yet delivered.
    inflight_groups: u64,
    /// Verified bytes it delivered.
    pub bytes: u64,
    /// Measured rate (bytes per second) while it had ranges in flight; 0 until measured.
    pub rate_bytes_per_s: u64,
    /// Start of the current slowness window (while it has ranges in flight) and bytes since.
    window: Option<(Millis, u64)>,
    /// Its rate over its last whole window (at least `grace_ms`, or until it went idle after
    /// a second or more): what other sources are compared against. Smooth where
    /// `rate_bytes_per_s` is quick.
    pub judged_rate_bytes_per_s: u64,
    /// Start of the current rate sample and bytes since.
    meter: Option<(Millis, u64)>,
    /// The planner's `widened` count when a pick from it last found nothing: until something
    /// widens the choice again it is not scanned (planning after every verified group would
    /// otherwise rescan every source that has nothing new).
    exhausted: Option<u64>,
}

impl Source {
    fn new(lan: bool) -> Source {
        Source {
            lan,
            have: None,
            asking_since: None,
            asked_at: None,
            nothing_streak: 0,
            lead: false,
            banned: None,
            retiring: false,
            unanswered: false,
            active: 0,
            inflight_groups: 0,
            bytes: 0,
            rate_bytes_per_s: 0,
            window: None,
            judged_rate_bytes_per_s: 0,
            meter: None,
            exhausted: None,
        }
    }

    /// Whether it is the site's elected fetcher (see [`Download::set_lead`]).
    pub fn is_lead(&self) -> bool {
        self.lead
    }

    /// Whether it said it holds anything.
    pub fn holds_any(&self) -> bool {
        self.have.as_ref().is_some_and(|a| *a != Availability::Nothing)
    }

    /// Whether it said it holds the whole payload.
    pub fn complete(&self) -> bool {
        matches!(self.have, Some(Availability::Complete))
    }

    /// Ranges in flight.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Groups requested and not yet delivered.
    pub fn inflight_groups(&self) -> u64 {
        self.inflight_groups
    }
}

/// A range in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Correlation id.
    pub id: u64,
    /// The source asked.
    pub source: NodeId,
    /// First group.
    pub first: u64,
    /// Groups asked for.
    pub count: u64,
    sent_at: Millis,
    got: u64,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask the source what it holds.
    AskHave(NodeId),
    /// Fetch a range.
    Fetch(Request),
}

/// Rate samples are taken over at least this long (shorter ones are noise).
const RATE_SAMPLE_MS: u64 = 250;
/// "Nothing" answers from the site's elected fetcher followed by a question one refresh later.
const LEAD_FAST_ASKS: u32 = 4;

/// One payload being downloaded.
#[derive(Clone, Debug)]
pub struct Download {
    content: ContentId,
    size_bytes: u64,
    have: Bitfield,
    pending: Bitfield,
    /// Word of the bitfield where picking starts (picks wrap around to it): nodes that start
    /// at different places fetch different parts, so they have something to give each other.
    start_word: u64,
    /// Words (counted from `start_word`, wrapping) below which no group is missing and
    /// unrequested: picks scan from here, which keeps a large payload's planning linear
    /// instead of quadratic.
    frontier: u64,
    role: Role,
    sources: BTreeMap<NodeId, Source>,
    requests: BTreeMap<u64, Request>,
    next_id: u64,
    params: Params,
    /// The latest time the driver gave (`poll*`, `check`): when a range ends.
    clock: Millis,
    /// See [`Download::set_site_known`].
    site_known: Vec<u64>,
    /// Counts changes that may let a source serve a group it could not before: groups going
    /// back to the pool, sources leaving or retiring (the exclusions shrink), a first or
    /// different kind of answer, a new role or start. Verified groups and new requests only
    /// narrow the choice and leave it.
    widened: u64,
    /// Groups this node pulls first from a complete source of another site (see
    /// [`Download::set_share`]); `None`: no share, any rare group.
    share: Option<Vec<u64>>,
}

impl Download {
    /// A download of `content` (`size_bytes`, as signed in the catalog), holding `have` already.
    pub fn new(content: ContentId, size_bytes: u64, have: Bitfield, params: Params) -> Download {
        let groups = group_count(size_bytes);
        let have = if have.len() == groups { have } else { Bitfield::new(groups) };
        Download {
            content,
            size_bytes,
            pending: Bitfield::new(groups),
            start_word: 0,
            frontier: 0,
            have,
            role: Role::Lan,
            sources: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_id: 1,
            params,
            clock: Millis(0),
            site_known: Vec::new(),
            widened: 0,
            share: None,
        }
    }

    /// Starts picking at group `g` (rounded down to a multiple of 64) and wraps around.
    pub fn set_start(&mut self, g: u64) {
        let words = self.words();
        self.start_word = (g / 64) % words;
        self.frontier = 0;
        self.widened += 1;
    }

    fn words(&self) -> u64 {
        (self.have.len().div_ceil(64)).max(1)
    }

    /// The content.
    pub fn content(&self) -> &ContentId {
        &self.content
    }
    /// Signed size.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    /// Verified groups.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }
    /// Verified bytes.
    pub fn have_bytes(&self) -> u64 {
        let groups = self.have.len();
        let last_full = self.have.get(groups - 1);
        let tail = self.size_bytes - (groups - 1) * GROUP_BYTES;
        self.have.count() * GROUP_BYTES - if last_full { GROUP_BYTES - tail } else { 0 }
    }
    /// Whether every group is verified.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }
    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Sources known.
    pub fn sources(&self) -> &BTreeMap<NodeId, Source> {
        &self.sources
    }
    /// Ranges in flight.
    pub fn requests(&self) -> impl Iterator<Item = &Request> {
        self.requests.values()
    }
    /// Sources currently serving a range.
    pub fn active_sources(&self) -> usize {
        self.sources.values().filter(|s| s.active > 0).count()
    }
    /// The tunables.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Sets the role (from the site election). A node that loses the WAN role stops using
    /// other sites; it returns the ranges it had in flight there, for the driver to cancel,
    /// so a returning fetcher does not pull a second copy across its site's link.
    pub fn set_role(&mut self, role: Role) -> Vec<u64> {
        let lost = self.role == Role::Wan && role == Role::Lan;
        if self.role != role {
            self.widened += 1;
        }
        self.role = role;
        if !lost {
            return Vec::new();
        }
        let remote: Vec<NodeId> =
            self.sources.iter().filter(|(_, s)| !s.lan).map(|(n, _)| *n).collect();
        remote.iter().flat_map(|n| self.release(n)).collect()
    }

    /// Marks the site's elected fetcher (`None` when this node is it, or has no site peers).
    pub fn set_lead(&mut self, lead: Option<NodeId>) {
        for (n, s) in self.sources.iter_mut() {
            s.lead = Some(*n) == lead;
        }
    }

    /// A peer that may hold the content, and whether it is in this node's site (a source first
    /// known only as a provider may turn out to be local once connected). Ignored beyond
    /// [`limits::SOURCES_PER_DOWNLOAD_MAX`].
    pub fn add_source(&mut self, node: NodeId, lan: bool) {
        if let Some(s) = self.sources.get_mut(&node) {
            if s.lan != lan {
                s.lan = lan;
                self.widened += 1;
            }
            return;
        }
        if self.sources.len() >= limits::SOURCES_PER_DOWNLOAD_MAX {
            return;
        }
        self.widened += 1;
        self.sources.insert(node, Source::new(lan));
    }

    /// A peer went away: its ranges go back to the pool (no fault). A banned source is kept
    /// (so it is not used again); see [`Download::forget`].
    pub fn remove_source(&mut self, node: &NodeId) -> Vec<u64> {
        let cancelled = self.release(node);
        if self.sources.get(node).is_some_and(|s| s.banned.is_none()) {
            self.sources.remove(node);
        }
        self.widened += 1;
        cancelled
    }

    /// Forgets a source entirely, banned or not (its ranges go back): the driver's rest with
    /// backoff decides when it may come back, as a new source.
    pub fn forget(&mut self, node: &NodeId) -> Vec<u64> {
        let cancelled = self.release(node);
        self.sources.remove(node);
        self.widened += 1;
        cancelled
    }

    /// Gives the source no new ranges; what it has in flight finishes.
    pub fn retire(&mut self, node: &NodeId) {
        if let Some(s) = self.sources.get_mut(node) {
            s.retiring = true;
            self.widened += 1;
        }
    }

    fn usable(&self, s: &Source) -> bool {
        s.banned.is_none() && (s.lan || self.role == Role::Wan)
    }

    /// Groups a source may have in flight: `inflight_target_ms` of its measured rate, within
    /// `inflight_min_groups` and `request_groups × requests_per_source`.
    fn budget_groups(&self, s: &Source) -> u64 {
        let max = self.params.request_groups * u64::from(self.params.requests_per_source);
        let min = self.params.inflight_min_groups.min(max).max(1);
        let by_rate = s.rate_bytes_per_s * self.params.inflight_target_ms / 1000 / GROUP_BYTES;
        by_rate.clamp(min, max.max(min))
    }

    /// What to do next: questions, then ranges.
    pub fn poll(&mut self, now: Millis) -> Vec<Action> {
        let mut out = self.poll_asks(now);
        out.extend(self.poll_fetches(now));
        out
    }

    /// Only the questions: which sources to ask what they hold. A driver that cannot fetch yet
    /// (it still needs the outboard) polls these alone. See [`Download::ask_due`] for when.
    pub fn poll_asks(&mut self, now: Millis) -> Vec<Action> {
        self.clock = self.clock.max(now);
        if self.is_complete() {
            return Vec::new();
        }
        let flowing = self.flowing();
        let ask: Vec<NodeId> = self
            .sources
            .iter()
            .filter(|(_, s)| self.usable(s) && s.asking_since.is_none())
            .filter(|(_, s)| self.ask_due(s, flowing).is_some_and(|at| now >= at))
            .map(|(n, _)| *n)
            .collect();
        ask.into_iter()
            .map(|n| {
                let s = self.sources.get_mut(&n).expect("listed");
                s.asking_since = Some(now);
                s.asked_at = Some(now);
                Action::AskHave(n)
            })
            .collect()
    }

    /// When source `s` is next to be asked what it holds; `None` for never (it holds it all).
    /// `flowing`: some usable source holds part of the payload, so the mesh is moving it.
    ///
    /// A site member that holds a part is asked again every `have_refresh_ms` (how members
    /// stream from the elected node while it receives); another site's partial holder four
    /// times slower (each question opens a stream across the WAN, and its answer grows only at
    /// the WAN's pace). One that holds nothing is asked again after four refreshes while the
    /// payload flows (it may get parts any moment, and sites feed each other through such
    /// answers). While nothing holds it anywhere, each "nothing" doubles the wait, up to
    /// [`limits::FETCH_NOTHING_ASK_LEAD_MAX_MS`] (the site's elected fetcher, through which
    /// the payload arrives) or [`limits::FETCH_NOTHING_ASK_MAX_MS`] (anyone else): a fleet
    /// waiting for a payload nobody holds yet costs almost nothing.
    fn ask_due(&self, s: &Source, flowing: bool) -> Option<Millis> {
        let refresh = self.params.have_refresh_ms;
        let wait = match &s.have {
            None => 0,
            Some(Availability::Complete) => return None,
            Some(Availability::Partial(_)) if s.lan => refresh,
            Some(Availability::Partial(_)) => 2 * refresh,
            // The elected fetcher: every refresh through the first second (it holds nothing
            // only until its own download starts, and a member then streams from it within a
            // refresh of its first group instead of four); after that at the same times as
            // any member that holds nothing (1, 3, 7, 15 s…), so never later than one, and a
            // payload nobody holds yet costs three questions more.
            Some(Availability::Nothing)
                if s.lan && s.lead && s.nothing_streak <= LEAD_FAST_ASKS =>
            {
                refresh
            }
            Some(Availability::Nothing) if flowing => 4 * refresh,
            Some(Availability::Nothing) if s.lan && s.lead => (4 * refresh)
                .saturating_mul(1 << (s.nothing_streak - LEAD_FAST_ASKS).min(20))
                .min(limits::FETCH_NOTHING_ASK_LEAD_MAX_MS),
            Some(Availability::Nothing) => (4 * refresh)
                .saturating_mul(1 << s.nothing_streak.saturating_sub(1).min(20))
                .min(limits::FETCH_NOTHING_ASK_MAX_MS),
        };
        Some(s.asked_at.map_or(Millis(0), |at| at.plus(wait)))
    }

    /// Whether some usable source holds part of the payload.
    fn flowing(&self) -> bool {
        self.sources.values().any(|s| self.usable(s) && s.holds_any())
    }

    /// The earliest time a usable source with no open question is due to be asked again.
    pub fn next_ask(&self) -> Option<Millis> {
        if self.is_complete() {
            return None;
        }
        let flowing = self.flowing();
        self.sources
            .values()
            .filter(|s| self.usable(s) && s.asking_since.is_none())
            .filter_map(|s| self.ask_due(s, flowing))
            .min()
    }

    /// Only the ranges to fetch now.
    pub fn poll_fetches(&mut self, now: Millis) -> Vec<Action> {
        self.clock = self.clock.max(now);
        let mut out = Vec::new();
        if self.is_complete() {
            return out;
        }
        // Groups this site already holds: never fetched across the WAN (worked out once, and
        // only when a source of another site has room).
        let mut in_site: Option<Option<Vec<u64>>> = None;
        let mut elsewhere: Option<Option<Vec<u64>>> = None;
        // Whether rare groups outside this node's share may be pulled from a complete source:
        // only once no partial source across the WAN has anything in flight (see below).
        let mut outside_share = self.share.is_none();
        let mut deferred = false;
        loop {
            let mut order: Vec<(bool, u32, NodeId, u64)> = self
                .sources
                .iter()
                .filter(|(_, s)| {
                    self.usable(s)
                        && !s.retiring
                        && s.active < self.params.requests_per_source
                        && s.inflight_groups < self.budget_groups(s)
                        && s.holds_any()
                        && s.exhausted != Some(self.widened)
                })
                .map(|(n, s)| {
                    let budget = self.budget_groups(s);
                    let room = budget - s.inflight_groups;
                    let count_max = self.params.request_groups.min(room).min((budget / 2).max(1));
                    (!s.lan, s.active, *n, count_max.max(1))
                })
                .collect();
            if order.is_empty() {
                break;
            }
            order.sort();
            let mut progressed = false;
            let mut dry = Vec::new();
            for (remote, _, n, count_max) in order {
                let exclude = if remote {
                    in_site.get_or_insert_with(|| self.site_held()).as_deref()
                } else {
                    None
                };
                // A complete source of another site (the origin's, early on) is asked first
                // for what no partial source across the WAN holds: each group leaves it about
                // once, and the fetching sites trade the rest among themselves (rarest
                // first, as a swarm does).
                let complete = self.sources.get(&n).is_some_and(|s| s.complete());
                if remote && complete {
                    let rare = elsewhere.get_or_insert_with(|| self.wan_partial_held(exclude));
                    if let Some(rare) = rare.as_deref() {
                        // This node's share of the rare groups first. The rest is other
                        // sites' share: they are pulling it from this source now, and this
                        // node would take each such group from them a moment later; pulled
                        // here too, it would leave the source's uplink twice (in
                        // `scripts/bench-wan.sh`'s congested run the origin's uplink carried
                        // 1.3-1.6 copies). So it waits while a partial source across the WAN
                        // still has something in flight to this node; once none has (they
                        // hold nothing more it lacks, or a site that owns a share is not
                        // fetching at all), it is pulled here.
                        let mine = self.share.as_ref().map(|share| {
                            rare.iter().zip(share).map(|(r, m)| r | !m).collect::<Vec<u64>>()
                        });
                        let picked = mine.and_then(|m| self.pick_scattered(count_max, &m));
                        let picked = match picked {
                            None if outside_share => self.pick_scattered(count_max, rare),
                            None => {
                                deferred = true;
                                continue;
                            }
                            picked => picked,
                        };
                        // Nothing rare left: its uplink is better left to sites that need it.
                        if let Some((first, count)) = picked {
                            out.push(Action::Fetch(self.start_request(n, first, count, now)));
                            progressed = true;
                            break;
                        }
                        dry.push(n);
                        continue;
                    }
                }
                if let Some((first, count)) = self.pick(&n, count_max, exclude) {
                    out.push(Action::Fetch(self.start_request(n, first, count, now)));
                    progressed = true;
                    break;
                }
                dry.push(n);
            }
            // Nothing narrows between here and the next widening: these stay dry until then.
            let widened = self.widened;
            for n in dry {
                if let Some(s) = self.sources.get_mut(&n) {
                    s.exhausted = Some(widened);
                }
            }
            if !progressed {
                if deferred && !outside_share && !self.wan_partial_in_flight() {
                    outside_share = true;
                    continue;
                }
                break;
            }
        }
        out
    }

    /// Whether a partial source of another site has a range of this download in flight.
    fn wan_partial_in_flight(&self) -> bool {
        self.sources.values().any(|s| !s.lan && !s.complete() && s.active > 0)
    }

    /// The groups this node should be the one to pull from a complete source of another site
    /// (one bit a group), as the fetch works them out: the sites fetching at once split the
    /// payload, so what the first holder sends is new to the swarm. Rare groups outside the
    /// share are pulled once the share is done and no partial source of another site has a
    /// range in flight.
    pub fn set_share(&mut self, share: Option<Vec<u64>>) {
        if self.share != share {
            self.widened += 1;
            self.share = share;
        }
    }

    /// Groups that site members which are not sources now (resting) were last heard to hold:
    /// the WAN is not asked for them either.
    pub fn set_site_known(&mut self, words: Vec<u64>) {
        if self.site_known != words {
            self.widened += 1;
        }
        self.site_known = words;
    }

    /// What the usable sources of this node's site hold, one bit a group (`None` when no WAN
    /// source could use it): a site pulls across its WAN link only what no member has.
    fn site_held(&self) -> Option<Vec<u64>> {
        if self.role != Role::Wan || self.sources.values().all(|s| s.lan) {
            return None;
        }
        let site = || self.sources.values().filter(|s| s.lan && s.banned.is_none());
        // Until every site member has said what it holds, the site's holdings are unknown:
        // the WAN waits (one LAN round trip) rather than pull what may already be here; but
        // not for a member whose question failed (a silent member cannot hold the WAN back).
        if site().any(|s| s.have.is_none() && !s.unanswered) {
            return Some(vec![u64::MAX; self.words() as usize]);
        }
        let mut held = self.site_known.clone();
        held.resize(self.words() as usize, 0);
        for s in site() {
            match &s.have {
                Some(Availability::Complete) => held.iter_mut().for_each(|w| *w = u64::MAX),
                Some(Availability::Partial(b)) => {
                    held.iter_mut().zip(b.words()).for_each(|(w, x)| *w |= x)
                }
                _ => {}
            }
        }
        Some(held)
    }

    /// `exclude` and what the usable partial sources of other sites hold (`None` when there
    /// is none): groups a complete WAN source need not be the one to send.
    fn wan_partial_held(&self, exclude: Option<&[u64]>) -> Option<Vec<u64>> {
        let words = self.words() as usize;
        let mut held: Option<Vec<u64>> = None;
        for s in self.sources.values() {
            if s.lan || s.retiring || !self.usable(s) {
                continue;
            }
            if let Some(Availability::Partial(b)) = &s.have {
                let h = held.get_or_insert_with(|| {
                    let mut h = exclude.map_or_else(Vec::new, |x| x.to_vec());
                    h.resize(words, 0);
                    h
                });
                h.iter_mut().zip(b.words()).for_each(|(w, x)| *w |= x);
            }
        }
        held
    }

    fn start_request(&mut self, n: NodeId, first: u64, count: u64, now: Millis) -> Request {
        let id = self.next_id;
        self.next_id += 1;
        for g in first..first + count {
            self.pending.set(g);
        }
        while self.frontier < self.words() && self.word_open(self.rotated(self.frontier)) == 0 {
            self.frontier += 1;
        }
        let req = Request { id, source: n, first, count, sent_at: now, got: 0 };
        self.requests.insert(id, req.clone());
        let s = self.sources.get_mut(&n).expect("listed");
        if s.active == 0 {
            s.window = Some((now, 0));
            s.meter = Some((now, 0));
        }
        s.active += 1;
        s.inflight_groups += count;
        req
    }

    /// The bitfield word at rotated position `k`.
    fn rotated(&self, k: u64) -> usize {
        ((self.start_word + k) % self.words()) as usize
    }

    /// Groups of word `w` that are neither held nor requested.
    fn word_open(&self, w: usize) -> u64 {
        let groups = self.have.len();
        let tail = groups - w as u64 * 64;
        let valid = if tail >= 64 { u64::MAX } else { (1u64 << tail) - 1 };
        !self.have.words()[w] & !self.pending.words()[w] & valid
    }

    /// The first run of needed groups the source holds, scanning from the start word and
    /// wrapping. Scans 64 groups a step, so a partial source or a nearly finished payload
    /// costs little to plan.
    fn pick(&self, node: &NodeId, count_max: u64, exclude: Option<&[u64]>) -> Option<(u64, u64)> {
        let avail = self.sources.get(node)?.have.as_ref()?;
        let src: Option<&[u64]> = match avail {
            Availability::Nothing => return None,
            Availability::Complete => None,
            Availability::Partial(b) => Some(b.words()),
        };
        let groups = self.have.len();
        let mut first = None;
        for k in self.frontier..self.words() {
            let w = self.rotated(k);
            let m =
                self.word_open(w) & src.map_or(u64::MAX, |s| s[w]) & !exclude.map_or(0, |x| x[w]);
            if m != 0 {
                first = Some(w as u64 * 64 + u64::from(m.trailing_zeros()));
                break;
            }
        }
        let first = first?;
        let excluded =
            |g: u64| exclude.is_some_and(|x| x[(g / 64) as usize] & (1 << (g % 64)) != 0);
        let needed =
            |g: u64| !self.have.get(g) && !self.pending.get(g) && avail.has(g) && !excluded(g);
        let mut count = 1;
        while count < count_max && first + count < groups && needed(first + count) {
            count += 1;
        }
        Some((first, count))
    }

    /// A run of needed groups that `exclude` leaves, from a complete source, scanning from a
    /// word that changes with every request (and from node to node, by the start word): the
    /// fetchers of many sites pulling from one complete source take different groups instead
    /// of the same next one, so what it sends is new to the swarm.
    fn pick_scattered(&self, count_max: u64, exclude: &[u64]) -> Option<(u64, u64)> {
        let words = self.words();
        let groups = self.have.len();
        let spin = self.next_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20;
        let from = (self.start_word * 64 + spin) % groups;
        let (from_word, from_bit) = (from / 64, from % 64);
        let mut first = None;
        // One lap from the start group, the start word's lower groups last.
        for k in 0..=words {
            let w = ((from_word + k) % words) as usize;
            let mut m = self.word_open(w) & !exclude[w];
            if k == 0 {
                m &= u64::MAX << from_bit;
            }
            if m != 0 {
                first = Some(w as u64 * 64 + u64::from(m.trailing_zeros()));
                break;
            }
        }
        let first = first?;
        let excluded = |g: u64| exclude[(g / 64) as usize] & (1 << (g % 64)) != 0;
        let needed = |g: u64| !self.have.get(g) && !self.pending.get(g) && !excluded(g);
        let mut count = 1;
        while count < count_max && first + count < groups && needed(first + count) {
            count += 1;
        }
        Some((first, count))
    }

    /// A source answered what it holds. A source that once said `Complete` and now says less
    /// lied.
    pub fn on_have(&mut self, node: &NodeId, availability: Availability) -> Option<Fault> {
        let s = self.sources.get_mut(node)?;
        s.asking_since = None;
        if matches!(s.have, Some(Availability::Complete))
            && !matches!(availability, Availability::Complete)
        {
            self.ban(node, Fault::Lied);
            return Some(Fault::Lied);
        }
        if let Availability::Partial(b) = &availability {
            if b.len() != self.have.len() {
                self.ban(node, Fault::Protocol);
                return Some(Fault::Protocol);
            }
        }
        s.nothing_streak = match availability {
            Availability::Nothing => s.nothing_streak.saturating_add(1),
            _ => 0,
        };
        // More of the same kind only lets this source serve more; a first answer or a new
        // kind may also shrink what the site or the partial sources are known to hold.
        let kind = |a: &Availability| std::mem::discriminant(a);
        if s.have.as_ref().map(kind) != Some(kind(&availability)) {
            self.widened += 1;
        }
        s.exhausted = None;
        let s = self.sources.get_mut(node).expect("present");
        s.have = Some(availability);
        None
    }

    /// A question to a source failed without a fault of its own making (timeout, closed).
    pub fn on_have_failed(&mut self, node: &NodeId) {
        if let Some(s) = self.sources.get_mut(node) {
            s.asking_since = None;
            if s.have.is_none() && !s.unanswered {
                s.unanswered = true;
                self.widened += 1;
            }
        }
    }

    /// The driver verified group `g` of request `id` and stored it. Returns whether it was new.
    pub fn on_group(&mut self, id: u64, g: u64) -> bool {
        if let Some(r) = self.requests.get_mut(&id) {
            let in_range = g >= r.first && g < r.first + r.count;
            if in_range {
                r.got += 1;
            }
            if let Some(s) = self.sources.get_mut(&r.source) {
                let len = GROUP_BYTES.min(self.size_bytes.saturating_sub(g * GROUP_BYTES));
                s.bytes += len;
                if in_range {
                    s.inflight_groups = s.inflight_groups.saturating_sub(1);
                }
                if let Some((_, b)) = s.window.as_mut() {
                    *b += len;
                }
                if let Some((_, b)) = s.meter.as_mut() {
                    *b += len;
                }
            }
        }
        self.pending.clear(g);
        self.have.set(g)
    }

    /// A range ended (all its groups delivered, or it stopped early without a fault, e.g. the
    /// source said `Missing` for groups it never claimed). Undelivered groups go back.
    pub fn on_done(&mut self, id: u64) {
        let now = self.clock;
        if let Some(r) = self.requests.remove(&id) {
            let words = self.words();
            for g in r.first..r.first + r.count {
                if !self.have.get(g) {
                    self.widened += 1;
                    self.pending.clear(g);
                    let k = (g / 64 + words - self.start_word) % words;
                    self.frontier = self.frontier.min(k);
                }
            }
            if let Some(s) = self.sources.get_mut(&r.source) {
                s.active = s.active.saturating_sub(1);
                s.inflight_groups = s.inflight_groups.saturating_sub(r.count - r.got.min(r.count));
                if s.active == 0 {
                    if let Some((start, bytes)) = s.window.take() {
                        let elapsed = now.since(start);
                        if elapsed >= 1_000 {
                            s.judged_rate_bytes_per_s = bytes * 1000 / elapsed;
                        }
                    }
                    s.meter = None;
                }
            }
        }
    }

    /// A source misbehaved: it is banned for this download and its ranges go back. Returns the
    /// ids of its cancelled requests (the driver aborts them).
    pub fn on_fault(&mut self, node: &NodeId, fault: Fault) -> Vec<u64> {
        self.ban(node, fault)
    }

    fn ban(&mut self, node: &NodeId, fault: Fault) -> Vec<u64> {
        let cancelled = self.release(node);
        if let Some(s) = self.sources.get_mut(node) {
            s.banned = Some(fault);
            s.asking_since = None;
        }
        self.widened += 1;
        cancelled
    }

    fn release(&mut self, node: &NodeId) -> Vec<u64> {
        let ids: Vec<u64> =
            self.requests.values().filter(|r| r.source == *node).map(|r| r.id).collect();
        for id in &ids {
            self.on_done(*id);
        }
        ids
    }

    /// Updates every busy source's measured rate (samples of at least 250 ms; it rises at once
    /// and falls by quarters, so a burst of congestion does not shrink a source's budget to
    /// nothing), then finds slow sources ([`Download::judge`]): banned as [`Fault::Slow`] and
    /// returned with their cancelled requests.
    pub fn check(&mut self, now: Millis) -> Vec<(NodeId, Vec<u64>)> {
        let slow = self.judge(now);
        slow.into_iter().map(|n| (n, self.ban(&n, Fault::Slow))).collect()
    }

    /// Updates every busy source's measured rate (as [`Download::check`]) and returns the slow
    /// ones, leaving what to do with them to the caller (the fetch retires them: their ranges
    /// finish, so nothing already on the wire is thrown away). Retiring sources are not judged.
    ///
    /// A source is judged on everything it delivers while it has ranges in flight, over
    /// windows of `grace_ms`: its ranges share one connection, so one range waiting behind
    /// another is not slowness. It is slow only when it stays below `min_rate_bytes_per_s`
    /// **and** another source of this download moves at least `slow_factor` times faster. A
    /// fixed floor alone would condemn every source behind one congested uplink (each gets its
    /// share of a few Mbit/s), leaving the download with nothing; relative to the best source
    /// the fetcher only moves work to where the path gives more. Slowness is never an offence:
    /// the driver rests the source and tries it again later.
    pub fn judge(&mut self, now: Millis) -> Vec<NodeId> {
        self.clock = self.clock.max(now);
        for s in self.sources.values_mut() {
            let Some((start, bytes)) = s.meter else { continue };
            let elapsed = now.since(start);
            if elapsed >= RATE_SAMPLE_MS {
                let sample = bytes * 1000 / elapsed;
                s.rate_bytes_per_s = if sample >= s.rate_bytes_per_s {
                    sample
                } else {
                    (s.rate_bytes_per_s * 3 + sample) / 4
                };
                s.meter = Some((now, 0));
            }
        }
        let (min, grace, factor) =
            (self.params.min_rate_bytes_per_s, self.params.grace_ms, self.params.slow_factor);
        // Rates over whole windows: those judged now, and the others' last ones.
        let mut rates: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut judged: Vec<(NodeId, u64)> = Vec::new();
        for (n, s) in &self.sources {
            if s.banned.is_some() {
                continue;
            }
            let mut rate = s.judged_rate_bytes_per_s;
            if let Some((start, bytes)) = s.window {
                let elapsed = now.since(start);
                if s.active > 0 && elapsed >= grace && !s.retiring {
                    rate = bytes * 1000 / elapsed;
                    judged.push((*n, rate));
                }
            }
            rates.insert(*n, rate);
        }
        // The best rate among the *other* sources: a source is never slow against itself.
        let best_other =
            |n: &NodeId| rates.iter().filter(|(m, _)| *m != n).map(|(_, r)| *r).max().unwrap_or(0);
        let mut slow = Vec::new();
        for (n, rate) in judged {
            if rate < min && rate.saturating_mul(factor) < best_other(&n) {
                slow.push(n);
            } else if let Some(s) = self.sources.get_mut(&n) {
                s.window = Some((now, 0));
                s.judged_rate_bytes_per_s = rate;
            }
        }
        slow
    }
}

#[cfg(test)]
mod tests;
