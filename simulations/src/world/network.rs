//! The network: links with latency, bandwidth (a link carries one message at a time), loss
//! and partitions; and the trace every event is hashed into.

use super::*;

/// What a trace entry records (its code is hashed, so the numbers are kept stable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TraceCode {
    /// A message delivered.
    Deliver,
    /// Raw bytes delivered (an adversary's garbage).
    Bytes,
    /// A node's timer fired.
    Timer,
    /// A catalog change published.
    Publish,
    /// A partition began.
    PartitionStart,
    /// A partition ended.
    PartitionEnd,
    /// A node crashed.
    Crash,
    /// A node restarted.
    Restart,
    /// An admin key was revoked.
    Revoke,
    /// The adversaries attacked.
    Attack,
    /// An install step finished.
    EffectDone,
    /// The rollout was published.
    PublishRollout,
    /// An enrolling machine booted.
    Join,
    /// Site 0 split (enrol model).
    Split,
    /// Two nodes that had dropped each other connected again.
    Redial,
    /// A payload model event (its own codes, 20 and up).
    Payload(u8),
}

impl TraceCode {
    pub(super) fn code(self) -> u8 {
        match self {
            TraceCode::Deliver => 1,
            TraceCode::Bytes => 2,
            TraceCode::Timer => 3,
            TraceCode::Publish => 4,
            TraceCode::PartitionStart => 5,
            TraceCode::PartitionEnd => 6,
            TraceCode::Crash => 7,
            TraceCode::Restart => 8,
            TraceCode::Revoke => 9,
            TraceCode::Attack => 10,
            TraceCode::EffectDone => 11,
            TraceCode::PublishRollout => 12,
            TraceCode::Join => 13,
            TraceCode::Split => 14,
            TraceCode::Redial => 15,
            TraceCode::Payload(c) => c,
        }
    }
}

impl World {
    pub(super) fn link(&self, a: u32, b: u32) -> (&Link, bool) {
        let (sa, sb) = (self.ents[a as usize].site, self.ents[b as usize].site);
        if sa == sb {
            (&self.s.lan, false)
        } else {
            // A link between two sites runs at the slower site's link.
            let (la, lb) = (&self.site_wan[sa as usize], &self.site_wan[sb as usize]);
            (if lb.bandwidth_mbps < la.bandwidth_mbps { lb } else { la }, true)
        }
    }

    pub(super) fn send(&mut self, from: u32, to: u32, msg: Arc<Message>) {
        let size = msg.wire_bytes();
        if self.honest(from) {
            self.check_relay(from, &msg);
        }
        self.transmit(from, to, size, Ev::Deliver { from, to, size, msg });
    }

    pub(super) fn transmit(&mut self, from: u32, to: u32, size: usize, ev: Ev) {
        self.bytes_total += size as u64;
        let is_catalog = matches!(&ev, Ev::Deliver { msg, .. } if msg.is_catalog());
        if is_catalog && self.measured_hash.is_some() && self.measure_end_us.is_none() {
            self.catalog_bytes += size as u64;
        }
        if !is_catalog
            && !self.ents[from as usize].adversary
            && self.now_us >= self.background_from_us
            && self.now_us < self.background_to_us
        {
            self.background_bytes += size as u64;
        }
        let (link, wan) = self.link(from, to);
        let (delay, tx, loss) = (link.one_way_us(), link.transmit_us(size), link.loss);
        let (sa, sb) =
            (self.ents[from as usize].site as usize, self.ents[to as usize].site as usize);
        let passes = |s: usize| match &ev {
            Ev::Deliver { msg, .. } => self.partition_pass[s].iter().any(|k| k == msg.kind()),
            _ => false,
        };
        let cut = (wan
            && ((self.partitioned[sa] && !passes(sa)) || (self.partitioned[sb] && !passes(sb))))
            || self.enrol.as_ref().is_some_and(|m| m.cut(from, to));
        if cut || (loss > 0.0 && self.rng.gen::<f64>() < loss) {
            self.lost += 1;
            return;
        }
        let free = self.link_free.entry((from, to)).or_insert(0);
        let start = (*free).max(self.now_us);
        *free = start + tx;
        let at = start + tx + delay;
        self.schedule(at, ev);
    }

    /// An honest node must never send anything an adversary forged.
    pub(super) fn check_relay(&mut self, from: u32, msg: &Message) {
        if self.forged.envelopes.is_empty() && self.forged.bundles.is_empty() {
            return;
        }
        let bad = match msg {
            Message::CatalogChange(env) => self.forged.envelopes.contains(&env.id()),
            Message::CatalogSync(s) => {
                s.changes.iter().any(|e| self.forged.envelopes.contains(&e.id()))
            }
            Message::AdminSets(v) => v.iter().any(|e| self.forged.envelopes.contains(&e.id())),
            Message::SiteObjects(v) | Message::Summaries(v) => {
                v.iter().any(|b| self.forged.bundles.contains(&b.id()))
            }
            _ => false,
        };
        if bad {
            self.violations
                .push(format!("honest node {from} relayed a forged object ({})", msg.kind()));
        }
    }

    pub(super) fn trace(&mut self, t: u64, code: TraceCode, a: u32, b: u32, extra: u64) {
        let mut rec = [0u8; 25];
        rec[..8].copy_from_slice(&t.to_le_bytes());
        rec[8] = code.code();
        rec[9..13].copy_from_slice(&a.to_le_bytes());
        rec[13..17].copy_from_slice(&b.to_le_bytes());
        rec[17..25].copy_from_slice(&extra.to_le_bytes());
        self.trace.update(&rec);
    }
}
