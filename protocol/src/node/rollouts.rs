//! Driving the rollout engine ([`crate::rollout::Engine`], the sub-machine that owns installs,
//! reports and halts) from the node: when to evaluate, what it reads, and carrying out what it
//! asks for.
//!
//! The engine is evaluated when something it reads changed (the catalog, a failure report, an
//! effect result, the node's facts), when one of its own timers is due (soaks, re-checks), and
//! every `rollout_eval_ms` while a rollout exists (windows open, gates pass on summaries). A
//! node with no rollout never wakes for it. A node pending in a running rollout is evaluated
//! again within a flush period of a fresh summary or site record, so that a gate promotes
//! within about one gossip round of the summary that passes it, and a freed install slot is
//! taken as soon as the record that frees it arrives.

use super::timers::Timer;
use super::{Event, Fresh, Node, Output, PeerId, Persist};
use crate::ids::{NodeId, RolloutId};
use crate::limits;
use crate::rollout::engine::{EngineOut, Live, Liveness, View};
use crate::rollout::{EffectResult, Policies};
use crate::site::RolloutStatus;
use std::collections::BTreeSet;
use std::sync::Arc;

impl Node {
    /// An install step finished.
    pub(super) fn on_effect_done(&mut self, result: EffectResult) {
        let outs = self.engine.on_result(result, &self.policies, self.now);
        self.apply_engine(outs);
        self.rollouts_due = true;
    }

    /// Whether this node is pending in a running rollout: a gate it waits on may open.
    pub(super) fn waits_on_a_gate(&self) -> bool {
        let verdicts = self.engine.verdicts();
        self.engine.standings().iter().any(|(id, s)| {
            s.status == RolloutStatus::Pending && verdicts.get(id).is_some_and(|v| v.running())
        })
    }

    /// Whether a fresh record of a site member shows it started in a ring at or after one
    /// whose gate this node still waits on: the member has seen summaries this node lacks.
    pub(super) fn gate_opened_elsewhere(&self, fresh: &[Fresh]) -> bool {
        let (standings, verdicts) = (self.engine.standings(), self.engine.verdicts());
        let waiting: Vec<(RolloutId, u8)> = standings
            .iter()
            .filter(|(id, s)| {
                s.status == RolloutStatus::Pending
                    && verdicts.get(*id).is_some_and(|v| v.running() && s.ring >= v.open_rings)
            })
            .map(|(id, s)| (*id, s.ring))
            .collect();
        if waiting.is_empty() {
            return false;
        }
        fresh.iter().any(|f| {
            let Fresh::SiteObject(bundle) = f else { return false };
            let Some(signer) = bundle.object().signatures.first() else { return false };
            let Some(held) = self.state.site.records().get(&NodeId(signer.key.0)) else {
                return false;
            };
            let theirs = &held.record().rollouts;
            waiting.iter().any(|(id, ring)| {
                theirs.get(id).is_some_and(|s| {
                    s.ring >= *ring
                        && !matches!(s.status, RolloutStatus::Pending | RolloutStatus::NotTargeted)
                })
            })
        })
    }

    /// Sends `peer` (who relayed that record) a digest, at most once per anti-entropy period:
    /// it answers with the summaries this node lacks, so a member that missed the summary that
    /// opened its gate catches up within a round trip instead of at its next repair.
    pub(super) fn pull_gate_summaries(&mut self, peer: PeerId) {
        let period = self.config.anti_entropy_interval_ms.max(1);
        if self.gate_hint_at.is_some_and(|at| self.now.since(at) < period) {
            return;
        }
        self.gate_hint_at = Some(self.now);
        let digest = self.state.digest();
        self.out.send(peer, digest);
    }

    /// Runs the rollout engine when something it reads changed or its period passed.
    pub(super) fn drive_rollouts(&mut self) {
        if self.timers.due(Timer::RolloutEval, self.now) {
            self.rollouts_due = true;
        }
        if !self.rollouts_due && self.engine.next_wake().is_none_or(|w| self.now < w) {
            return;
        }
        self.rollouts_due = false;
        self.timers.set(Timer::RolloutEval, self.now.plus(self.config.rollout_eval_ms.max(1)));
        if self.policies_stale {
            self.policies_stale = false;
            self.policies = Arc::new(Policies::parse(
                self.state.catalog.entries_authored(),
                self.state.trust.admins(),
            ));
        }
        if self.policies.rollouts.is_empty() && !self.engine.busy() {
            return;
        }
        let members = Members {
            now: self.now,
            started_at: self.started_at,
            policies: &self.policies,
            ring_opened_at: &self.ring_opened_at,
            member_heard: &self.member_heard,
            site: &self.state.site,
            peers: &self.peers,
        };
        let liveness = Liveness::new(move || members.live());
        let before = self.engine.standings().clone();
        let policies = self.policies.clone();
        let view = View {
            me: self.id,
            site_id: self.state.site.site(),
            labels: &self.own.cert.labels,
            trust: &self.state.trust,
            site: &self.state.site,
            summaries: &self.state.summaries,
            alarms: &self.state.alarms,
            liveness: &liveness,
            now: self.now,
            hold: self.reach.holds_installs(),
        };
        let outs = self.engine.step(&policies, &view);
        drop(liveness);
        self.apply_engine(outs);
        self.note_open_rings();
        let heartbeat_due = self.waits_for_a_slot()
            && self
                .publisher
                .record_signed_at
                .is_none_or(|at| self.now.since(at) >= limits::PENDING_HEARTBEAT_MS);
        if *self.engine.standings() != before || heartbeat_due {
            self.update_record();
        }
    }

    /// Notes when this node first saw each ring of each rollout open; forgets rollouts that
    /// are gone.
    fn note_open_rings(&mut self) {
        let verdicts = self.engine.verdicts();
        self.ring_opened_at.retain(|(id, _), _| verdicts.contains_key(id));
        for (id, v) in verdicts {
            for ring in 0..v.open_rings {
                self.ring_opened_at.entry((*id, ring)).or_insert(self.now);
            }
        }
    }

    /// Whether this node is pending in a running rollout: it will want an install slot, and
    /// its site must keep counting it.
    fn waits_for_a_slot(&self) -> bool {
        let verdicts = self.engine.verdicts();
        self.engine.standings().iter().any(|(id, s)| {
            s.status == RolloutStatus::Pending && verdicts.get(id).is_some_and(|v| v.running())
        })
    }

    /// Carries out what the engine asked for; a changed standing re-signs the record.
    pub(super) fn apply_engine(&mut self, outs: Vec<EngineOut>) {
        let before = self.engine.standings().clone();
        for out in outs {
            match out {
                EngineOut::Journal(entry) => {
                    self.out.push(Output::Persist(Persist::Journal(entry)))
                }
                EngineOut::Effect(effect) => self.out.push(Output::Effect(effect)),
                EngineOut::Report { rollout, kind, detail } => self.report(rollout, kind, detail),
                EngineOut::Event(ev) => self.out.push(Output::Event(Event::Rollout(ev))),
            }
        }
        if *self.engine.standings() != before {
            self.update_record();
        }
    }
}

/// What [`Members::live`] reads of a node: borrowed apart from its engine, so the engine can
/// work it out only when it ranks for an install slot (see [`Liveness`]).
struct Members<'a> {
    now: crate::ids::Millis,
    started_at: crate::ids::Millis,
    policies: &'a Policies,
    ring_opened_at: &'a std::collections::BTreeMap<(RolloutId, u8), crate::ids::Millis>,
    member_heard: &'a std::collections::BTreeMap<NodeId, crate::ids::Millis>,
    site: &'a crate::site::SiteState,
    peers: &'a super::peers::Peers,
}

impl Members<'_> {
    /// The site members that count for install-slot ranking (those not known to be down):
    /// members connected now, members whose signed objects reached this node within
    /// [`limits::MEMBER_LIVE_MS`] (every member pending in a running rollout re-signs its
    /// record every [`limits::PENDING_HEARTBEAT_MS`]), and, for that long after this node saw a
    /// rollout start running (or since this node started: it was down, and its records of
    /// others may be old), every member whose record says it is pending in it (it has not
    /// had the time to re-sign yet). Ranking only among connected members let a sparsely
    /// connected site start many times its limit; a member that went down stops being heard
    /// and frees its place.
    /// Also the rollouts that are young here (seen starting within that time).
    ///
    /// It runs whenever the engine does (on most inputs of a busy node), so it walks the
    /// records and the members heard from side by side (both ordered by node) instead of
    /// looking each up; anti-entropy forgets members heard from too long ago.
    fn live(&self) -> Live {
        let now = self.now;
        // A node that started lately has heard from no one yet, and its records may be old (it
        // was down while others moved on): every rollout is young to it for as long.
        let booting = now.since(self.started_at) < limits::MEMBER_LIVE_MS;
        let young: BTreeSet<RolloutId> = if booting {
            self.policies.rollouts.keys().copied().collect()
        } else {
            self.ring_opened_at
                .iter()
                .filter(|((_, ring), at)| *ring == 0 && now.since(**at) < limits::MEMBER_LIVE_MS)
                .map(|((id, _), _)| *id)
                .collect()
        };
        let mut heard = self
            .member_heard
            .iter()
            .filter(|(_, at)| now.since(**at) < limits::MEMBER_LIVE_MS)
            .map(|(n, _)| *n)
            .peekable();
        // Members with a record that were heard from lately, or are pending in a young rollout
        // (in node order, as the records are).
        let mut also = Vec::new();
        for (node, held) in self.site.records() {
            while heard.next_if(|h| h < node).is_some() {}
            let lately = heard.next_if_eq(node).is_some();
            let pending = || {
                let theirs = &held.record().rollouts;
                young
                    .iter()
                    .any(|id| theirs.get(id).is_some_and(|s| s.status == RolloutStatus::Pending))
            };
            if lately || (!young.is_empty() && pending()) {
                also.push(*node);
            }
        }
        let connected = self.peers.live_members();
        // Two ordered runs: the set is built from them in one pass.
        let live = connected.into_iter().chain(also).collect();
        Live { members: live, young }
    }
}
