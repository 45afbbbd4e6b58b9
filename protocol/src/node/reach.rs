//! Whether this node still hears the rest of the mesh: site beacons and the [`Reach`] they give.
//!
//! A site whose every WAN link goes to attackers (an *eclipse*) cannot tell silence from an
//! idle fleet, and an attacker that relays everything but a halt leaves it sure it is up to
//! date. So each site's reporter signs a small [`Beacon`] now and then — the catalog changes,
//! failure reports and admin-set version it holds, and its clock — and every node floods it.
//! From the beacons of other sites each node judges its reach:
//!
//! - **cut off**: fewer than [`SITES_HEARD`] other sites (half of them, rounded up, in a
//!   smaller mesh; so one site down does not hold the others) were heard within the listening window ([`WINDOW_INTERVALS`] summary intervals, in which
//!   about 24 beacons arrive). An eclipse that drops everything shows as this; once it ends,
//!   three sites are heard within about six summary intervals.
//! - **behind**: the fresh beacons of at least two other sites (one, when there is only one)
//!   claim more than this node holds, for longer than an anti-entropy period. An eclipse
//!   that forwards beacons but withholds a halt (an alarm, an admin's abort) shows as this.
//!   The node pulls from the peer that brought such a beacon at once.
//! - otherwise **in touch**; **listening** after start until it has heard enough sites or a
//!   window has passed, **alone** in a mesh of one site.
//!
//! A node that is listening or cut off asks a peer of its site and one of another site for the
//! freshest beacons they hold (`BeaconsAsk`, backing off while answers bring nothing), so it
//! need not wait for the next ones: a restarted node is in touch (or behind) within a tick, and
//! a cut site within a tick or two of the heal.
//!
//! A node that is cut off or behind starts no new install (see `Engine::may_start`): what it
//! does not hear may be a halt. Installs under way go on, and so do rollbacks. The state is
//! visible (status, dashboard, metric, a log line on each change), never silence.
//!
//! **Cost.** Each site beacons every `summary_interval × max(8, 2 × sites)`, so the whole mesh
//! sends about one beacon per two summary intervals whatever its size (production: one object
//! of about 430 bytes, its signer's certificate included, per minute, each node receiving it
//! once per gossip mesh link). When what a reporter holds grows (an alarm, a catalog change),
//! it beacons again if its last beacon is two summary intervals old, so a withheld halt shows
//! within about three anti-entropy periods; in a big mesh only about four sites do that per
//! change. With many sites a node hears from each one rarely, so the window asks for three
//! sites, not for all of them.
//!
//! **What it cannot do.** Beacons are signed by admitted nodes, so attackers holding nodes in
//! several sites can sign fresh beacons that claim nothing new and mask a silent eclipse (it
//! takes three sites), or claim more than they hold and hold installs (it takes two sites, and
//! the state names them). A site's beacons are taken newest first by
//! their signed time; one dated further ahead than [`limits::BEACON_SKEW_MS`] is ignored, and a
//! beacon counts as fresh only while its own time is within the window too (a replayed old
//! beacon does not). A machine whose clock is hours wrong sees every beacon as stale and reports
//! itself cut off, which is true enough to act on.

use crate::ids::{Millis, SiteId};
use crate::limits;
use crate::node::PeerId;
use crate::site::{Beacon, Bundle};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The listening window, in summary intervals.
pub const WINDOW_INTERVALS: u64 = 48;

/// Other sites a node must have heard within the window (half of them, rounded up, when that
/// is fewer).
pub const SITES_HEARD: usize = 3;

/// How much a node (or a beacon's signer) holds of what every node should hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holdings {
    /// Signed catalog changes.
    pub catalog_changes: u32,
    /// Failure reports (alarms).
    pub alarms: u32,
    /// Admin-set version.
    pub trust_version: u64,
}

impl Holdings {
    /// Whether `theirs` holds something this does not. Catalog counts compare only under the
    /// same admin set: a revocation drops the revoked key's changes, so a count signed before
    /// it may be higher without holding anything this node lacks.
    pub fn lacks(&self, theirs: &Holdings) -> bool {
        theirs.alarms > self.alarms
            || theirs.trust_version > self.trust_version
            || theirs.trust_version == self.trust_version
                && theirs.catalog_changes > self.catalog_changes
    }

    fn of(b: &Beacon) -> Holdings {
        Holdings {
            catalog_changes: b.catalog_changes,
            alarms: b.alarms,
            trust_version: b.trust_version,
        }
    }
}

/// What a node can tell of its reach into the rest of the mesh (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reach {
    /// No other site is known: there is no one to hear.
    Alone,
    /// Started less than a window ago: not judged yet.
    Listening {
        /// When the node starts judging (its clock).
        until: Millis,
    },
    /// Enough other sites heard, none of them holding more than this node for long.
    InTouch {
        /// Other sites heard within the window.
        heard: u32,
        /// Other sites known.
        sites: u32,
    },
    /// Other sites' fresh beacons claim more than this node holds, and repair has not brought
    /// it: something (a halt?) is withheld from this node.
    Behind {
        /// The sites whose beacons claim more.
        sites: Vec<SiteId>,
        /// Since when (this node's clock).
        since: Millis,
        /// The most any of them claims.
        theirs: Holdings,
        /// What this node holds.
        ours: Holdings,
    },
    /// Too few other sites heard within the window.
    CutOff {
        /// Other sites heard within the window.
        heard: u32,
        /// How many it takes.
        needed: u32,
        /// Other sites known.
        sites: u32,
        /// When the last beacon of another site arrived (this node's clock), if ever.
        last_heard: Option<Millis>,
    },
}

impl Reach {
    /// Whether the node holds new installs: it may not be hearing a halt.
    pub fn holds_installs(&self) -> bool {
        matches!(self, Reach::Behind { .. } | Reach::CutOff { .. })
    }

    /// A one-word name (metrics, JSON consumers).
    pub fn name(&self) -> &'static str {
        match self {
            Reach::Alone => "alone",
            Reach::Listening { .. } => "listening",
            Reach::InTouch { .. } => "in_touch",
            Reach::Behind { .. } => "behind",
            Reach::CutOff { .. } => "cut_off",
        }
    }
}

impl std::fmt::Display for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reach::Alone => write!(f, "alone: no other site in the mesh"),
            Reach::Listening { .. } => write!(f, "listening: just started, not judged yet"),
            Reach::InTouch { heard, sites } => {
                write!(f, "in touch: heard {heard} of {sites} other sites recently")
            }
            Reach::Behind { sites, theirs, ours, .. } => {
                let names: Vec<&str> = sites.iter().take(4).map(|s| &*s.0).collect();
                write!(
                    f,
                    "behind: {} say they hold more (catalog changes {} vs {}, failure reports \
                     {} vs {}, admin set v{} vs v{}) and no peer delivers it; no new install \
                     starts here until it arrives",
                    names.join(", "),
                    theirs.catalog_changes,
                    ours.catalog_changes,
                    theirs.alarms,
                    ours.alarms,
                    theirs.trust_version,
                    ours.trust_version
                )
            }
            Reach::CutOff { heard, needed, sites, .. } => write!(
                f,
                "cut off: heard {heard} of {sites} other sites recently (needs {needed}); this \
                 site's WAN links, its peers or this machine's clock are wrong; no new install \
                 starts here until other sites are heard again"
            ),
        }
    }
}

/// The newest beacon of one site.
#[derive(Clone, Debug)]
struct Heard {
    /// The beacon as it travels (to answer a `BeaconsAsk`).
    bundle: Arc<Bundle>,
    /// Its signed time.
    at: Millis,
    /// When it reached this node (this node's clock).
    received: Millis,
    held: Holdings,
}

/// Beacons heard, and this node's own beacon cadence.
#[derive(Debug)]
pub(crate) struct Beacons {
    site: SiteId,
    heard: BTreeMap<SiteId, Heard>,
    started_at: Millis,
    /// When this node (as reporter) next beacons.
    next_own: Option<Millis>,
    /// When this node last beaconed, and what it held then (at first, its first tick).
    last_sent: Option<(Millis, Holdings)>,
    /// The holdings a beacon on growth was last drawn for (one draw per change).
    drawn_for: Option<Holdings>,
    behind_since: Option<Millis>,
    /// When this node last pulled on a beacon's claim.
    pulled_at: Option<Millis>,
    /// When this node last answered each peer's `BeaconsAsk`.
    answered: BTreeMap<PeerId, Millis>,
    /// When this node may ask again, and how many asks in a row it made.
    next_ask: Millis,
    asks: u32,
}

/// Each site's beacon period for a mesh of `sites` sites: the whole mesh sends about one
/// periodic beacon per two summary intervals.
pub(crate) fn period_ms(summary_interval_ms: u64, sites: usize) -> u64 {
    summary_interval_ms.max(1).saturating_mul((2 * sites as u64).max(8))
}

impl Beacons {
    pub(crate) fn new(site: SiteId, now: Millis) -> Beacons {
        Beacons {
            site,
            heard: BTreeMap::new(),
            started_at: now,
            next_own: None,
            last_sent: None,
            drawn_for: None,
            behind_since: None,
            pulled_at: None,
            answered: BTreeMap::new(),
            next_ask: now,
            asks: 0,
        }
    }

    /// Whether this node, its site's reporter, should beacon now, holding `held` in a mesh of
    /// `sites` sites. Every `period` (the first at a random point of the first period, which
    /// spreads the sites' beacons over it); and, so that a halt withheld from a site shows
    /// within seconds, soon after what the node holds grows: then at most once per
    /// `min_gap_ms`, and in a big mesh only a share of the sites do (four are expected to),
    /// so an alarm storm does not become a beacon storm.
    pub(crate) fn own_due(
        &mut self,
        now: Millis,
        period_ms: u64,
        min_gap_ms: u64,
        held: Holdings,
        sites: usize,
        rng: &mut impl Rng,
    ) -> bool {
        let next = match self.next_own {
            Some(t) => t,
            None => {
                // What the node holds at its first tick is the baseline a change is judged by.
                self.last_sent = Some((now, held));
                *self.next_own.insert(now.plus(rng.gen_range(0..=period_ms)))
            }
        };
        let grown = self.last_sent.is_some_and(|(at, h)| {
            h.lacks(&held) && now.since(at) >= min_gap_ms && self.drawn_for != Some(held)
        });
        let due = now >= next
            || grown && {
                self.drawn_for = Some(held);
                rng.gen_bool((4.0 / sites.max(1) as f64).min(1.0))
            };
        if due {
            self.next_own = Some(now.plus(period_ms));
            self.last_sent = Some((now, held));
        }
        due
    }

    /// Takes a verified beacon (`b`, carried in `bundle`); true when it is the newest of its
    /// site (to be relayed).
    pub(crate) fn accept(&mut self, b: &Beacon, bundle: &Arc<Bundle>, now: Millis) -> bool {
        if b.at.0 > now.0.saturating_add(limits::BEACON_SKEW_MS) {
            return false;
        }
        if self.heard.get(&b.site).is_some_and(|h| h.at >= b.at) {
            return false;
        }
        if !self.heard.contains_key(&b.site) && self.heard.len() >= limits::SITES_MAX {
            return false;
        }
        let heard =
            Heard { bundle: bundle.clone(), at: b.at, received: now, held: Holdings::of(b) };
        self.heard.insert(b.site.clone(), heard);
        true
    }

    /// Whether a node that is listening or cut off (`wants`) should ask a peer for beacons now:
    /// at once when it starts wanting, then after 1, 2, 4, 8 and then every 16 periods of
    /// `every_ms` (an empty mesh answers nothing, and asking it every tick costs for nothing).
    pub(crate) fn ask_due(&mut self, wants: bool, now: Millis, every_ms: u64) -> bool {
        if !wants {
            self.asks = 0;
            return false;
        }
        if now < self.next_ask {
            return false;
        }
        self.next_ask = now.plus(every_ms.saturating_mul(1 << self.asks.min(4)));
        self.asks += 1;
        true
    }

    /// A message came from a peer of another site: if the node is asking, the next ask need
    /// not wait (the cut may have healed).
    pub(crate) fn outside_heard(&mut self, now: Millis) {
        if self.asks > 0 {
            self.next_ask = self.next_ask.min(now);
            self.asks = 1;
        }
    }

    /// The freshest beacons held, to answer `peer`'s `BeaconsAsk` — unless it was answered
    /// within `every_ms`.
    pub(crate) fn answer(&mut self, peer: PeerId, now: Millis, every_ms: u64) -> Vec<Arc<Bundle>> {
        if self.answered.get(&peer).is_some_and(|t| now.since(*t) < every_ms) {
            return Vec::new();
        }
        self.answered.retain(|_, t| now.since(*t) < every_ms);
        if self.answered.len() >= limits::PEERS_MAX {
            return Vec::new();
        }
        self.answered.insert(peer, now);
        let mut fresh: Vec<&Heard> = self.heard.values().collect();
        fresh.sort_by_key(|h| std::cmp::Reverse(h.received));
        fresh.into_iter().take(limits::BEACONS_ANSWERED_MAX).map(|h| h.bundle.clone()).collect()
    }

    /// Whether a beacon claims more than `ours` and no pull went out within `every_ms`: the
    /// caller pulls from the peer that brought it.
    pub(crate) fn pull_due(
        &mut self,
        b: &Beacon,
        ours: &Holdings,
        now: Millis,
        every_ms: u64,
    ) -> bool {
        if b.site == self.site || !ours.lacks(&Holdings::of(b)) {
            return false;
        }
        if self.pulled_at.is_some_and(|t| now.since(t) < every_ms) {
            return false;
        }
        self.pulled_at = Some(now);
        true
    }

    /// The node's reach at `now`: `sites` other sites are known, `ours` is what it holds.
    pub(crate) fn judge(
        &mut self,
        now: Millis,
        sites: usize,
        ours: &Holdings,
        summary_interval_ms: u64,
        behind_after_ms: u64,
    ) -> Reach {
        let window = summary_interval_ms.max(1).saturating_mul(WINDOW_INTERVALS);
        let oldest = Millis(now.0.saturating_sub(window));
        let oldest_signed = Millis(oldest.0.saturating_sub(limits::BEACON_SKEW_MS));
        let fresh: Vec<(&SiteId, &Heard)> = self
            .heard
            .iter()
            .filter(|(s, h)| **s != self.site && h.received >= oldest && h.at >= oldest_signed)
            .collect();
        // Behind: fresh claims of more than this node holds, from two sites (or the only one).
        let mut claiming: Vec<SiteId> = Vec::new();
        let mut theirs = *ours;
        for (s, h) in &fresh {
            if ours.lacks(&h.held) {
                claiming.push((*s).clone());
                theirs.catalog_changes = theirs.catalog_changes.max(h.held.catalog_changes);
                theirs.alarms = theirs.alarms.max(h.held.alarms);
                theirs.trust_version = theirs.trust_version.max(h.held.trust_version);
            }
        }
        let other = sites.max(fresh.len());
        if claiming.len() >= other.clamp(1, 2) {
            let since = *self.behind_since.get_or_insert(now);
            if now.since(since) >= behind_after_ms {
                return Reach::Behind { sites: claiming, since, theirs, ours: *ours };
            }
        } else {
            self.behind_since = None;
        }
        if other == 0 {
            return Reach::Alone;
        }
        // The mesh sends one periodic beacon per two intervals: about 24 in a window, from
        // nearly as many sites in a big mesh (missing three of them by chance: about 1e-8).
        let needed = other.div_ceil(2).min(SITES_HEARD) as u32;
        let heard = fresh.len() as u32;
        let until = self.started_at.plus(window);
        if now < until && heard < needed {
            return Reach::Listening { until };
        }
        if heard < needed {
            let last_heard =
                self.heard.iter().filter(|(s, _)| **s != self.site).map(|(_, h)| h.received).max();
            return Reach::CutOff { heard, needed, sites: other as u32, last_heard };
        }
        Reach::InTouch { heard, sites: other as u32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MeshId, NodeId};

    const SI: u64 = 1_000;

    fn beacon(site: &str, at: u64, alarms: u32) -> Beacon {
        Beacon {
            mesh: MeshId([0; 32]),
            site: SiteId::from(site),
            node: NodeId([1; 32]),
            at: Millis(at),
            catalog_changes: 3,
            alarms,
            trust_version: 1,
        }
    }

    /// Feeds `x` to `b` as a bundle (the signature is not what these tests are about).
    fn take(b: &mut Beacons, x: Beacon, now: Millis) -> bool {
        use crate::crypto::{Domain, Envelope, SecretKey};
        let env = Envelope::seal(Domain::Beacon, &x, &[&SecretKey::from_seed([1; 32])]);
        b.accept(&x, &Arc::new(Bundle::new(env.clone(), env)), now)
    }

    fn ours(alarms: u32) -> Holdings {
        Holdings { catalog_changes: 3, alarms, trust_version: 1 }
    }

    #[test]
    fn a_node_that_hears_its_peers_sites_is_in_touch_and_one_that_hears_none_is_cut_off() {
        let mut b = Beacons::new(SiteId::from("a"), Millis(0));
        let window = SI * WINDOW_INTERVALS;
        assert!(matches!(b.judge(Millis(10), 3, &ours(0), SI, 3_000), Reach::Listening { .. }));
        for s in ["b", "c", "d"] {
            assert!(take(&mut b, beacon(s, window, 0), Millis(window)));
        }
        let r = b.judge(Millis(window + 1), 3, &ours(0), SI, 3_000);
        assert_eq!(r, Reach::InTouch { heard: 3, sites: 3 });
        assert!(!r.holds_installs());
        // Silence for a whole window: cut off, and installs hold.
        let r = b.judge(Millis(2 * window + 2), 3, &ours(0), SI, 3_000);
        assert!(matches!(r, Reach::CutOff { heard: 0, needed: 2, sites: 3, .. }), "{r:?}");
        assert!(r.holds_installs());
        assert!(r.to_string().starts_with("cut off"));
    }

    #[test]
    fn a_catalog_count_signed_under_an_older_admin_set_claims_nothing() {
        let ours = Holdings { catalog_changes: 3, alarms: 1, trust_version: 2 };
        let before_revocation = Holdings { catalog_changes: 5, alarms: 1, trust_version: 1 };
        assert!(!ours.lacks(&before_revocation));
        assert!(ours.lacks(&Holdings { catalog_changes: 4, alarms: 1, trust_version: 2 }));
        assert!(ours.lacks(&Holdings { catalog_changes: 0, alarms: 2, trust_version: 1 }));
        assert!(ours.lacks(&Holdings { catalog_changes: 0, alarms: 0, trust_version: 3 }));
    }

    #[test]
    fn beacons_are_taken_newest_first_and_a_replay_or_a_future_one_is_not() {
        let mut b = Beacons::new(SiteId::from("a"), Millis(0));
        assert!(take(&mut b, beacon("b", 5_000, 0), Millis(5_000)));
        assert!(!take(&mut b, beacon("b", 5_000, 0), Millis(6_000)), "the same one again");
        assert!(!take(&mut b, beacon("b", 4_000, 0), Millis(6_000)), "an older one");
        assert!(!take(&mut b, beacon("b", 6_000 + limits::BEACON_SKEW_MS + 1, 0), Millis(6_000)));
        assert!(take(&mut b, beacon("b", 7_000, 0), Millis(7_000)));
        // A replayed beacon signed long ago counts as heard but not as fresh.
        let mut late = Beacons::new(SiteId::from("a"), Millis(0));
        let now = 10 * SI * WINDOW_INTERVALS + limits::BEACON_SKEW_MS;
        assert!(take(&mut late, beacon("b", 1, 0), Millis(now)));
        assert!(matches!(late.judge(Millis(now), 1, &ours(0), SI, 0), Reach::CutOff { .. }));
    }

    #[test]
    fn claims_of_more_from_two_sites_for_long_enough_make_a_node_behind_until_it_catches_up() {
        let mut b = Beacons::new(SiteId::from("a"), Millis(0));
        let t = SI * WINDOW_INTERVALS;
        for s in ["b", "c", "d"] {
            take(&mut b, beacon(s, t, 0), Millis(t));
        }
        // One site claiming more is not enough when there are others (a liar, or a race).
        take(&mut b, beacon("b", t + 1, 5), Millis(t + 1));
        assert!(matches!(
            b.judge(Millis(t + 10_000), 3, &ours(0), SI, 3_000),
            Reach::InTouch { .. }
        ));
        take(&mut b, beacon("c", t + 2, 5), Millis(t + 2));
        // Two: behind only once it lasts (gossip and repair get their time first).
        assert!(matches!(
            b.judge(Millis(t + 10_000), 3, &ours(0), SI, 3_000),
            Reach::InTouch { .. }
        ));
        let r = b.judge(Millis(t + 13_000), 3, &ours(0), SI, 3_000);
        let Reach::Behind { sites, since, theirs, .. } = &r else { panic!("{r:?}") };
        assert_eq!(sites.len(), 2);
        assert_eq!(*since, Millis(t + 10_000));
        assert_eq!(theirs.alarms, 5);
        assert!(r.holds_installs());
        // The alarms arrive: in touch again.
        assert!(matches!(
            b.judge(Millis(t + 14_000), 3, &ours(5), SI, 3_000),
            Reach::InTouch { .. }
        ));
        // Pulls on a claim are rate-limited.
        assert!(b.pull_due(&beacon("d", t + 3, 9), &ours(5), Millis(t + 15_000), 1_000));
        assert!(!b.pull_due(&beacon("d", t + 4, 9), &ours(5), Millis(t + 15_500), 1_000));
        assert!(
            !b.pull_due(&beacon("a", t + 4, 9), &ours(5), Millis(t + 17_000), 1_000),
            "own site"
        );
    }

    #[test]
    fn a_reporter_beacons_every_period_and_soon_after_what_it_holds_grows() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut b = Beacons::new(SiteId::from("a"), Millis(0));
        let period = 4 * SI;
        let due: Vec<u64> = (0..=40)
            .map(|t| t * 500)
            .filter(|t| b.own_due(Millis(*t), period, SI, ours(0), 3, &mut rng))
            .collect();
        assert!(due.len() >= 4 && due.len() <= 6, "{due:?}");
        assert!(due.windows(2).all(|w| w[1] - w[0] == period), "{due:?}");
        // Holdings grow: a beacon at the next tick a summary interval after the last one.
        let last = *due.last().unwrap();
        assert!(!b.own_due(Millis(last + 500), period, SI, ours(1), 3, &mut rng));
        assert!(b.own_due(Millis(last + SI), period, SI, ours(1), 3, &mut rng));
        assert!(!b.own_due(Millis(last + 2 * SI), period, SI, ours(1), 3, &mut rng));
        // In a mesh of 800 sites about one in two hundred reporters beacons on a change.
        let drawn = (0..2_000u32)
            .filter(|i| {
                let mut b = Beacons::new(SiteId::from("a"), Millis(0));
                b.last_sent = Some((Millis(0), ours(0)));
                b.next_own = Some(Millis(u64::MAX));
                b.own_due(Millis(SI), period, SI, ours(*i + 1), 800, &mut rng)
            })
            .count();
        assert!((2..=30).contains(&drawn), "{drawn} of 2000");
    }

    #[test]
    fn an_ask_is_answered_with_the_freshest_beacons_once_per_period_per_peer() {
        let mut b = Beacons::new(SiteId::from("a"), Millis(0));
        for i in 0..20u64 {
            take(&mut b, beacon(&format!("s{i:02}"), 1_000 + i, 0), Millis(1_000 + i));
        }
        let answer = b.answer(PeerId(7), Millis(2_000), 1_000);
        assert_eq!(answer.len(), limits::BEACONS_ANSWERED_MAX);
        let first = answer[0].object().open::<Beacon>("beacon").unwrap();
        assert_eq!(first.site, SiteId::from("s19"), "freshest first");
        assert!(b.answer(PeerId(7), Millis(2_500), 1_000).is_empty(), "once per period");
        assert!(!b.answer(PeerId(8), Millis(2_500), 1_000).is_empty(), "per peer");
        assert!(!b.answer(PeerId(7), Millis(3_000), 1_000).is_empty());
    }

    #[test]
    fn asks_back_off_while_they_bring_nothing_and_start_again_when_needed() {
        let mut b = Beacons::new(SiteId::from("a"), Millis(0));
        let asked: Vec<u64> =
            (0..100u64).map(|t| t * 1_000).filter(|t| b.ask_due(true, Millis(*t), 1_000)).collect();
        assert_eq!(
            asked,
            vec![0, 1_000, 3_000, 7_000, 15_000, 31_000, 47_000, 63_000, 79_000, 95_000]
        );
        assert!(!b.ask_due(false, Millis(96_000), 1_000));
        // In touch again, then cut off: the next ask waits only for the period already set.
        assert!(b.ask_due(true, Millis(111_000), 1_000));
        assert!(b.ask_due(true, Millis(112_000), 1_000));
        // Word from another site (a heal?): ask at the next tick.
        assert!(!b.ask_due(true, Millis(113_000), 1_000));
        b.outside_heard(Millis(113_500));
        assert!(b.ask_due(true, Millis(114_000), 1_000));
    }

    #[test]
    fn in_a_big_mesh_a_share_of_the_sites_is_enough_and_a_node_alone_is_alone() {
        let mut b = Beacons::new(SiteId::from("a"), Millis(0));
        let window = SI * WINDOW_INTERVALS;
        assert_eq!(b.judge(Millis(window), 0, &ours(0), SI, 0), Reach::Alone);
        // 100 other sites each beacon every 202 intervals: about 24 in a window; 3 will do.
        for i in 0..3 {
            take(&mut b, beacon(&format!("s{i}"), window, 0), Millis(window));
        }
        assert!(matches!(
            b.judge(Millis(window), 100, &ours(0), SI, 0),
            Reach::InTouch { heard: 3, .. }
        ));
        let mut few = Beacons::new(SiteId::from("a"), Millis(0));
        for i in 0..2 {
            take(&mut few, beacon(&format!("s{i}"), window, 0), Millis(window));
        }
        let r = few.judge(Millis(window), 100, &ours(0), SI, 0);
        assert!(matches!(r, Reach::CutOff { heard: 2, needed: 3, .. }), "{r:?}");
    }
}
