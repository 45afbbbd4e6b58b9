//! The node's timers: one deadline per [`Timer`], and the earliest is what
//! [`super::Node::poll_timeout`] returns (after the rollout engine's own wake-up).

use crate::ids::Millis;

/// Something the node does at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Send a digest to a random admitted peer, drop peers whose hello is late, and see
    /// whether a site summary is due.
    AntiEntropy,
    /// Send the batched fresh site objects and summaries.
    Flush,
    /// Evaluate the rollouts again (windows open, gates pass, soaks end). Armed only while a
    /// rollout exists or an install is under way: a node with no rollout never wakes for it.
    RolloutEval,
}

const TIMERS: [Timer; 3] = [Timer::AntiEntropy, Timer::Flush, Timer::RolloutEval];

/// One optional deadline per timer.
#[derive(Clone, Debug, Default)]
pub(crate) struct Timers {
    at: [Option<Millis>; 3],
}

impl Timers {
    fn slot(t: Timer) -> usize {
        match t {
            Timer::AntiEntropy => 0,
            Timer::Flush => 1,
            Timer::RolloutEval => 2,
        }
    }

    /// Arms `t` for `at` (replacing its deadline).
    pub(crate) fn set(&mut self, t: Timer, at: Millis) {
        self.at[Self::slot(t)] = Some(at);
    }

    /// Arms `t` for `at` unless it is armed already.
    pub(crate) fn set_if_unset(&mut self, t: Timer, at: Millis) {
        self.at[Self::slot(t)].get_or_insert(at);
    }

    /// Disarms `t`.
    pub(crate) fn clear(&mut self, t: Timer) {
        self.at[Self::slot(t)] = None;
    }

    /// The deadline of `t`, if armed.
    pub(crate) fn get(&self, t: Timer) -> Option<Millis> {
        self.at[Self::slot(t)]
    }

    /// Whether `t` is armed and due at `now`.
    pub(crate) fn due(&self, t: Timer, now: Millis) -> bool {
        self.get(t).is_some_and(|at| now >= at)
    }

    /// The earliest deadline of the timers `armed` says count.
    pub(crate) fn next(&self, armed: impl Fn(Timer) -> bool) -> Option<Millis> {
        TIMERS.iter().filter(|t| armed(**t)).filter_map(|t| self.get(*t)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_armed_deadline_is_next() {
        let mut t = Timers::default();
        assert_eq!(t.next(|_| true), None);
        t.set(Timer::AntiEntropy, Millis(500));
        t.set_if_unset(Timer::Flush, Millis(50));
        t.set_if_unset(Timer::Flush, Millis(10));
        assert_eq!(t.get(Timer::Flush), Some(Millis(50)), "an armed timer keeps its deadline");
        assert_eq!(t.next(|_| true), Some(Millis(50)));
        assert!(t.due(Timer::Flush, Millis(50)) && !t.due(Timer::AntiEntropy, Millis(50)));
        t.clear(Timer::Flush);
        t.set(Timer::RolloutEval, Millis(100));
        assert_eq!(t.next(|t| t != Timer::RolloutEval), Some(Millis(500)));
        assert_eq!(t.next(|_| true), Some(Millis(100)));
    }
}
