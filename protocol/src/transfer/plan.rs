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
//!   how a site's members stream from the elected node while it is still downloading.

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
}

impl Default for Params {
    fn default() -> Params {
        Params {
            request_groups: 256,
            requests_per_source: 4,
            min_rate_bytes_per_s: 16 * 1024,
            grace_ms: 5_000,
            have_refresh_ms: 250,
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
    /// Why it was dropped, if it was.
    pub banned: Option<Fault>,
    active: u32,
    /// Verified bytes it delivered.
    pub bytes: u64,
    /// Start of the current rate window (while it has ranges in flight) and bytes since.
    window: Option<(Millis, u64)>,
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

/// One payload being downloaded.
#[derive(Clone, Debug)]
pub struct Download {
    content: ContentId,
    size_bytes: u64,
    have: Bitfield,
    pending: Bitfield,
    /// No group below this is missing and unrequested: picks scan from here, which keeps a
    /// large payload's planning linear instead of quadratic.
    frontier: u64,
    role: Role,
    sources: BTreeMap<NodeId, Source>,
    requests: BTreeMap<u64, Request>,
    next_id: u64,
    params: Params,
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
            frontier: 0,
            have,
            role: Role::Lan,
            sources: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_id: 1,
            params,
        }
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

    /// Sets the role (from the site election); a node that loses the WAN role stops asking
    /// other sites, and its ranges in flight there finish.
    pub fn set_role(&mut self, role: Role) {
        self.role = role;
    }

    /// A peer that may hold the content, and whether it is in this node's site (a source first
    /// known only as a provider may turn out to be local once connected). Ignored beyond
    /// [`limits::SOURCES_PER_DOWNLOAD_MAX`].
    pub fn add_source(&mut self, node: NodeId, lan: bool) {
        if let Some(s) = self.sources.get_mut(&node) {
            s.lan = lan;
            return;
        }
        if self.sources.len() >= limits::SOURCES_PER_DOWNLOAD_MAX {
            return;
        }
        self.sources.insert(
            node,
            Source {
                lan,
                have: None,
                asking_since: None,
                asked_at: None,
                banned: None,
                active: 0,
                bytes: 0,
                window: None,
            },
        );
    }

    /// A peer went away: its ranges go back to the pool (no fault).
    pub fn remove_source(&mut self, node: &NodeId) -> Vec<u64> {
        let cancelled = self.release(node);
        if self.sources.get(node).is_some_and(|s| s.banned.is_none()) {
            self.sources.remove(node);
        }
        cancelled
    }

    fn usable(&self, s: &Source) -> bool {
        s.banned.is_none() && (s.lan || self.role == Role::Wan)
    }

    /// What to do next: questions, then ranges.
    pub fn poll(&mut self, now: Millis) -> Vec<Action> {
        let mut out = self.poll_asks(now);
        out.extend(self.poll_fetches(now));
        out
    }

    /// Only the questions: which sources to ask what they hold. A driver that cannot fetch yet
    /// (it still needs the outboard) polls these alone. A source that said it holds a part is
    /// asked again every `have_refresh_ms`, one that said it holds nothing four times slower.
    pub fn poll_asks(&mut self, now: Millis) -> Vec<Action> {
        if self.is_complete() {
            return Vec::new();
        }
        let refresh = self.params.have_refresh_ms;
        let ask: Vec<NodeId> = self
            .sources
            .iter()
            .filter(|(_, s)| self.usable(s) && s.asking_since.is_none())
            .filter(|(_, s)| match (&s.have, s.asked_at) {
                (None, _) | (Some(_), None) => true,
                (Some(Availability::Complete), _) => false,
                (Some(Availability::Nothing), Some(at)) => now.since(at) >= 4 * refresh,
                (Some(Availability::Partial(_)), Some(at)) => now.since(at) >= refresh,
            })
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

    /// Only the ranges to fetch now.
    pub fn poll_fetches(&mut self, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        if self.is_complete() {
            return out;
        }
        loop {
            let mut order: Vec<(bool, u32, NodeId)> = self
                .sources
                .iter()
                .filter(|(_, s)| {
                    self.usable(s)
                        && s.active < self.params.requests_per_source
                        && s.have.as_ref().is_some_and(|a| *a != Availability::Nothing)
                })
                .map(|(n, s)| (!s.lan, s.active, *n))
                .collect();
            order.sort();
            let mut progressed = false;
            for (_, _, n) in order {
                if let Some((first, count)) = self.pick(&n) {
                    let id = self.next_id;
                    self.next_id += 1;
                    for g in first..first + count {
                        self.pending.set(g);
                    }
                    while self.frontier < self.have.len()
                        && (self.have.get(self.frontier) || self.pending.get(self.frontier))
                    {
                        self.frontier += 1;
                    }
                    let req = Request { id, source: n, first, count, sent_at: now, got: 0 };
                    self.requests.insert(id, req.clone());
                    let s = self.sources.get_mut(&n).expect("listed");
                    if s.active == 0 {
                        s.window = Some((now, 0));
                    }
                    s.active += 1;
                    out.push(Action::Fetch(req));
                    progressed = true;
                    break;
                }
            }
            if !progressed {
                break;
            }
        }
        out
    }

    /// The lowest run of needed groups the source holds. Scans 64 groups a step, so a partial
    /// source or a nearly finished payload costs little to plan.
    fn pick(&self, node: &NodeId) -> Option<(u64, u64)> {
        let avail = self.sources.get(node)?.have.as_ref()?;
        let src: Option<&[u64]> = match avail {
            Availability::Nothing => return None,
            Availability::Complete => None,
            Availability::Partial(b) => Some(b.words()),
        };
        let groups = self.have.len();
        let (have, pending) = (self.have.words(), self.pending.words());
        let mut first = None;
        for w in (self.frontier / 64) as usize..have.len() {
            let mut m = !have[w] & !pending[w] & src.map_or(u64::MAX, |s| s[w]);
            if w as u64 == self.frontier / 64 {
                m &= u64::MAX << (self.frontier % 64);
            }
            if m != 0 {
                let g = w as u64 * 64 + u64::from(m.trailing_zeros());
                if g < groups {
                    first = Some(g);
                }
                break;
            }
        }
        let first = first?;
        let needed = |g: u64| !self.have.get(g) && !self.pending.get(g) && avail.has(g);
        let mut count = 1;
        while count < self.params.request_groups && first + count < groups && needed(first + count)
        {
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
        s.have = Some(availability);
        None
    }

    /// A question to a source failed without a fault of its own making (timeout, closed).
    pub fn on_have_failed(&mut self, node: &NodeId) {
        if let Some(s) = self.sources.get_mut(node) {
            s.asking_since = None;
        }
    }

    /// The driver verified group `g` of request `id` and stored it. Returns whether it was new.
    pub fn on_group(&mut self, id: u64, g: u64) -> bool {
        if let Some(r) = self.requests.get_mut(&id) {
            r.got += 1;
            if let Some(s) = self.sources.get_mut(&r.source) {
                let len = GROUP_BYTES.min(self.size_bytes.saturating_sub(g * GROUP_BYTES));
                s.bytes += len;
                if let Some((_, b)) = s.window.as_mut() {
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
        if let Some(r) = self.requests.remove(&id) {
            for g in r.first..r.first + r.count {
                if !self.have.get(g) {
                    self.pending.clear(g);
                    self.frontier = self.frontier.min(g);
                }
            }
            if let Some(s) = self.sources.get_mut(&r.source) {
                s.active = s.active.saturating_sub(1);
                if s.active == 0 {
                    s.window = None;
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

    /// Sources below the minimum rate: banned as [`Fault::Slow`]. Returns them with their
    /// cancelled requests. A source is judged on everything it delivers while it has ranges in
    /// flight, over windows of `grace_ms`: its ranges share one connection, so one range
    /// waiting behind another is not slowness, and a link shared by many fetchers still passes
    /// as long as the source as a whole moves at the minimum rate.
    pub fn check(&mut self, now: Millis) -> Vec<(NodeId, Vec<u64>)> {
        let min = self.params.min_rate_bytes_per_s;
        let grace = self.params.grace_ms;
        let mut slow = Vec::new();
        for (n, s) in self.sources.iter_mut() {
            let Some((start, bytes)) = s.window else { continue };
            let elapsed = now.since(start);
            if s.banned.is_some() || s.active == 0 || elapsed < grace {
                continue;
            }
            if bytes * 1000 / elapsed.max(1) < min {
                slow.push(*n);
            } else {
                s.window = Some((now, 0));
            }
        }
        let mut out = Vec::new();
        for n in slow {
            let ids = self.ban(&n, Fault::Slow);
            out.push((n, ids));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    fn fetches(actions: &[Action]) -> Vec<Request> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Fetch(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    fn dl(groups: u64) -> Download {
        let p = Params { request_groups: 4, requests_per_source: 2, ..Params::default() };
        Download::new(ContentId([1; 32]), groups * GROUP_BYTES, Bitfield::new(0), p)
    }

    #[test]
    fn splits_ranges_over_sources_and_completes() {
        let mut d = dl(20);
        d.set_role(Role::Wan);
        d.add_source(n(1), true);
        d.add_source(n(2), false);
        let a = d.poll(Millis(0));
        assert_eq!(a, vec![Action::AskHave(n(1)), Action::AskHave(n(2))]);
        d.on_have(&n(1), Availability::Complete);
        d.on_have(&n(2), Availability::Complete);
        let reqs = fetches(&d.poll(Millis(1)));
        assert_eq!(reqs.len(), 4);
        let mut firsts: Vec<u64> = reqs.iter().map(|r| r.first).collect();
        firsts.sort();
        assert_eq!(firsts, vec![0, 4, 8, 12]);
        assert_eq!(reqs.iter().filter(|r| r.source == n(1)).count(), 2);
        for _ in 0..10 {
            for r in fetches(&d.poll(Millis(2))).into_iter().chain(reqs.clone()) {
                if d.requests().any(|x| x.id == r.id) {
                    for g in r.first..r.first + r.count {
                        d.on_group(r.id, g);
                    }
                    d.on_done(r.id);
                }
            }
        }
        assert!(d.is_complete());
        assert_eq!(d.have_bytes(), 20 * GROUP_BYTES);
        assert!(d.poll(Millis(3)).is_empty());
    }

    #[test]
    fn a_lan_node_never_asks_another_site() {
        let mut d = dl(8);
        d.add_source(n(2), false);
        assert!(d.poll(Millis(0)).is_empty());
        d.add_source(n(1), true);
        assert_eq!(d.poll(Millis(0)), vec![Action::AskHave(n(1))]);
        // Failover: elected now.
        d.set_role(Role::Wan);
        assert_eq!(d.poll(Millis(0)), vec![Action::AskHave(n(2))]);
    }

    #[test]
    fn faults_ban_and_release_ranges() {
        let mut d = dl(8);
        d.add_source(n(1), true);
        d.add_source(n(2), true);
        d.poll(Millis(0));
        d.on_have(&n(1), Availability::Complete);
        let reqs = fetches(&d.poll(Millis(0)));
        assert!(reqs.iter().all(|r| r.source == n(1)));
        let cancelled = d.on_fault(&n(1), Fault::Corrupt);
        assert_eq!(cancelled.len(), reqs.len());
        d.on_have(&n(2), Availability::Complete);
        let again = fetches(&d.poll(Millis(1)));
        assert!(again.iter().all(|r| r.source == n(2)));
        assert_eq!(again[0].first, 0);
        // A banned source is never asked again.
        assert!(d
            .poll(Millis(10_000))
            .iter()
            .all(|a| !matches!(a, Action::AskHave(x) if *x == n(1))));
    }

    #[test]
    fn slow_sources_are_dropped_after_the_grace_period() {
        let mut d = dl(8);
        d.add_source(n(1), true);
        d.poll(Millis(0));
        d.on_have(&n(1), Availability::Complete);
        let r = fetches(&d.poll(Millis(0)));
        assert!(d.check(Millis(1_000)).is_empty());
        d.on_group(r[0].id, r[0].first);
        let slow = d.check(Millis(6_000));
        assert_eq!(slow.len(), 1);
        assert_eq!(d.sources()[&n(1)].banned, Some(Fault::Slow));
    }

    #[test]
    fn partial_sources_are_followed_and_liars_caught() {
        let mut d = dl(8);
        d.add_source(n(1), true);
        d.poll(Millis(0));
        let mut b = Bitfield::new(8);
        b.set(0);
        b.set(1);
        d.on_have(&n(1), Availability::Partial(b.clone()));
        let r = fetches(&d.poll(Millis(0)));
        assert_eq!((r[0].first, r[0].count), (0, 2));
        // Asked again after the refresh interval, not before.
        assert!(d.poll(Millis(100)).is_empty());
        assert_eq!(d.poll(Millis(300)), vec![Action::AskHave(n(1))]);
        d.on_have(&n(1), Availability::Complete);
        assert_eq!(d.on_have(&n(1), Availability::Nothing), Some(Fault::Lied));
        // A bitfield of the wrong length is a protocol fault.
        let mut d = dl(8);
        d.add_source(n(3), true);
        assert_eq!(
            d.on_have(&n(3), Availability::Partial(Bitfield::new(9))),
            Some(Fault::Protocol)
        );
    }

    #[test]
    fn resumes_only_missing_groups() {
        let mut have = Bitfield::new(8);
        for g in 0..6 {
            have.set(g);
        }
        let p = Params { request_groups: 64, ..Params::default() };
        let mut d = Download::new(ContentId([1; 32]), 8 * GROUP_BYTES - 100, have, p);
        d.add_source(n(1), true);
        d.poll(Millis(0));
        d.on_have(&n(1), Availability::Complete);
        let r = fetches(&d.poll(Millis(0)));
        assert_eq!((r[0].first, r[0].count), (6, 2));
        d.on_group(r[0].id, 6);
        d.on_group(r[0].id, 7);
        assert_eq!(d.have_bytes(), 8 * GROUP_BYTES - 100);
    }

    #[test]
    fn picks_the_lowest_needed_group_a_scattered_partial_source_holds() {
        let mut d = dl(300);
        d.add_source(n(1), true);
        d.poll(Millis(0));
        let mut b = Bitfield::new(300);
        for g in [70, 71, 72, 200, 299] {
            b.set(g);
        }
        d.on_have(&n(1), Availability::Partial(b));
        let r = fetches(&d.poll_fetches(Millis(0)));
        let got: Vec<(u64, u64)> = r.iter().map(|r| (r.first, r.count)).collect();
        assert_eq!(got, vec![(70, 3), (200, 1)]);
        // A source that holds nothing gets no range, however often it is polled.
        d.add_source(n(2), true);
        d.on_have(&n(2), Availability::Nothing);
        assert!(fetches(&d.poll_fetches(Millis(1))).iter().all(|r| r.source == n(1)));
    }
}
