//! When a node with fewer peers than it wants runs a DHT bootstrap.
//!
//! A bootstrap (a lookup of the node's own key, then one in each bucket) asks every peer the
//! lookups reach, and each answer lists up to 20 peers with their addresses: about 1.3 KB. In
//! a mesh smaller than `peers_target` (a branch office fleet, or any mesh where every node
//! already knows every other) the node can never reach its target, so with a timer alone it
//! bootstrapped every 5 minutes for ever, and every few seconds at first: in
//! `scripts/bench-wan.sh` (15 nodes, target 16) bootstraps fell inside a 65 s download, 1–2%
//! of the payload on every site's WAN link.
//!
//! The rule here: bootstraps back off from 15 s to 5 minutes as before, and discovery *parks*
//! when a bootstrap finishes (this node's, or one the DHT runs by itself as peers join) and
//! the DHT's routing table gained no peer since the previous one finished: the DHT has
//! nobody new to tell. A parked node asks again only when something changed: a peer lost, or
//! a relay reservation that made it reachable. New nodes are not missed: a node that joins
//! bootstraps itself, which reaches the nodes already there (they add it to their routing
//! tables and dial it), and the DHT's own 10-minute refresh still runs.

use std::time::{Duration, Instant};

/// First wait between DHT bootstraps while a node has fewer peers than `peers_target` (the
/// DHT's own period is 10 minutes: a node that joined just before a peer it should know, or
/// behind a NAT that became reachable through a relay, would wait that long to find it).
pub const DISCOVER_FIRST: Duration = Duration::from_secs(15);
/// Longest wait between those bootstraps.
pub const DISCOVER_MAX: Duration = Duration::from_secs(300);

/// The bootstrap schedule. Time is passed in; nothing here touches the swarm.
#[derive(Debug)]
pub struct Discovery<Q> {
    /// The next bootstrap (`None`: parked until something changes).
    next: Option<Instant>,
    /// The wait after the next one (doubling up to [`DISCOVER_MAX`]).
    wait: Duration,
    /// This node's bootstrap under way.
    running: Option<Q>,
    /// Peers the DHT's routing table gained, ever.
    new_peers: u64,
    /// `new_peers` when the last bootstrap (any) finished; `None` before the first.
    at_last_done: Option<u64>,
    /// Bootstraps started, for the status view.
    started: u64,
}

impl<Q: PartialEq + Copy> Discovery<Q> {
    /// The first bootstrap is due [`DISCOVER_FIRST`] after `now`.
    pub fn new(now: Instant) -> Discovery<Q> {
        Discovery {
            next: Some(now + DISCOVER_FIRST),
            wait: DISCOVER_FIRST,
            running: None,
            new_peers: 0,
            at_last_done: None,
            started: 0,
        }
    }

    /// Whether a bootstrap should start now: fewer peers than wanted, none running, not
    /// parked, and the wait over.
    pub fn due(&self, now: Instant, peers: usize, target: usize) -> bool {
        peers < target && self.running.is_none() && self.next.is_some_and(|t| now >= t)
    }

    /// A bootstrap started as query `q`; the next waits twice as long.
    pub fn started(&mut self, now: Instant, q: Q) {
        self.running = Some(q);
        self.started += 1;
        self.wait = (self.wait * 2).min(DISCOVER_MAX);
        self.next = Some(now + self.wait);
    }

    /// A bootstrap could not start (no peer in the routing table): try again after the wait.
    pub fn failed(&mut self, now: Instant) {
        self.wait = (self.wait * 2).min(DISCOVER_MAX);
        self.next = Some(now + self.wait);
    }

    /// The DHT's routing table gained a peer it did not hold.
    pub fn new_peer(&mut self) {
        self.new_peers += 1;
    }

    /// Bootstrap `q` finished: this node's, or one the DHT ran by itself. If the routing
    /// table gained no peer since the previous bootstrap finished, discovery parks. Returns
    /// whether it parked.
    pub fn bootstrap_done(&mut self, q: Q) -> bool {
        if self.running == Some(q) {
            self.running = None;
        }
        let quiet = self.at_last_done == Some(self.new_peers);
        self.at_last_done = Some(self.new_peers);
        if quiet {
            self.next = None;
        }
        quiet
    }

    /// A peer was lost: a parked schedule resumes after its current wait.
    pub fn peer_lost(&mut self, now: Instant) {
        if self.next.is_none() {
            self.next = Some(now + self.wait);
        }
    }

    /// Look again now, from the first wait (the node just became reachable through a relay).
    pub fn soon(&mut self, now: Instant) {
        self.wait = DISCOVER_FIRST;
        self.next = Some(now);
    }

    /// Whether discovery is parked until something changes.
    pub fn parked(&self) -> bool {
        self.next.is_none()
    }

    /// Bootstraps started since the node started.
    pub fn bootstraps(&self) -> u64 {
        self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn backs_off_while_the_dht_brings_new_peers() {
        let t0 = Instant::now();
        let mut d = Discovery::<u32>::new(t0);
        assert!(!d.due(at(t0, 14), 2, 8), "not before the first wait");
        assert!(d.due(at(t0, 15), 2, 8));
        assert!(!d.due(at(t0, 15), 8, 8), "never with the peers wanted");
        d.started(at(t0, 15), 1);
        assert!(!d.due(at(t0, 100), 2, 8), "never while one runs");
        d.new_peer();
        assert!(!d.bootstrap_done(1), "the first one to finish does not park");
        assert!(!d.due(at(t0, 44), 3, 8));
        assert!(d.due(at(t0, 45), 3, 8), "the wait doubled to 30 s");
        d.started(at(t0, 45), 3);
        d.new_peer();
        assert!(!d.bootstrap_done(3), "a peer came since the last one finished");
        assert!(d.due(at(t0, 105), 3, 8), "then 60 s");
        assert_eq!(d.bootstraps(), 2);
    }

    #[test]
    fn two_bootstraps_in_a_row_that_find_nobody_new_park_until_a_peer_is_lost() {
        let t0 = Instant::now();
        let mut d = Discovery::<u32>::new(t0);
        // The DHT bootstraps by itself as the first peers join, then settles.
        d.new_peer();
        d.new_peer();
        assert!(!d.bootstrap_done(7));
        assert!(d.bootstrap_done(8), "nothing new since the DHT's own last bootstrap");
        assert!(d.parked());
        assert!(!d.due(at(t0, 10_000), 4, 8), "parked: no bootstrap however long");
        assert_eq!(d.bootstraps(), 0, "this node never had to ask");
        d.peer_lost(at(t0, 10_000));
        assert!(!d.parked());
        assert!(!d.due(at(t0, 10_014), 3, 8));
        assert!(d.due(at(t0, 10_015), 3, 8), "resumes after its current wait");
        d.started(at(t0, 10_015), 2);
        assert!(!d.due(at(t0, 20_000), 3, 8), "not while it runs");
        assert!(d.bootstrap_done(2), "it found nobody: parked again");
        // A peer lost while not parked does not move the schedule.
        d.soon(at(t0, 20_000));
        d.started(at(t0, 20_000), 3);
        d.new_peer();
        d.bootstrap_done(3);
        d.peer_lost(at(t0, 20_001));
        assert!(!d.due(at(t0, 20_029), 3, 8));
        assert!(d.due(at(t0, 20_030), 3, 8));
    }

    #[test]
    fn a_relay_reservation_looks_again_at_once_from_the_first_wait() {
        let t0 = Instant::now();
        let mut d = Discovery::<u32>::new(t0);
        d.started(at(t0, 15), 1);
        d.bootstrap_done(1);
        d.bootstrap_done(9);
        assert!(d.parked());
        d.soon(at(t0, 500));
        assert!(d.due(at(t0, 500), 1, 8));
        d.started(at(t0, 500), 2);
        d.new_peer();
        d.bootstrap_done(2);
        assert!(d.due(at(t0, 530), 1, 8), "the wait starts over at 15 s, doubled once");
    }

    #[test]
    fn a_bootstrap_that_cannot_start_is_tried_again_later() {
        let t0 = Instant::now();
        let mut d = Discovery::<u32>::new(t0);
        d.failed(at(t0, 15));
        assert!(!d.parked());
        assert!(!d.due(at(t0, 44), 0, 8));
        assert!(d.due(at(t0, 45), 0, 8));
        let mut w = DISCOVER_FIRST;
        for _ in 0..10 {
            w = (w * 2).min(DISCOVER_MAX);
        }
        for i in 0..10 {
            d.failed(at(t0, 100 + i));
        }
        assert!(d.due(at(t0, 109) + w, 0, 8), "the wait stops growing at 5 minutes");
        assert!(!d.due(at(t0, 109) + w - Duration::from_secs(1), 0, 8));
    }
}
