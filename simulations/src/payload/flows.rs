//! Ranges as flows over the modelled links: slices reserved hop by hop, arrivals, and the
//! requests they belong to.

use super::*;

impl PayloadModel {
    pub(super) fn start_flow(&mut self, host: &mut impl Host, n: u32, req: Request) {
        let source = self.index[&req.source];
        let key = (n, self.holders[n as usize].epoch, req.id);
        let flow = Flow {
            source,
            source_epoch: self.holders[source as usize].epoch,
            next: req.first,
            end: req.first + req.count,
        };
        self.flows.insert(key, flow);
        // The request reaches the source one one-way delay later.
        let at = host.now_us() + self.one_way_us(n, source);
        host.schedule_payload(at, PayloadEv::FlowNext { key });
    }

    /// Bytes of groups `first .. first + count`.
    pub(super) fn span_bytes(&self, first: u64, count: u64) -> u64 {
        let end = ((first + count) * GROUP_BYTES).min(self.spec.size_bytes);
        end.saturating_sub(first * GROUP_BYTES)
    }

    pub(super) fn flow_next(&mut self, host: &mut impl Host, key: FlowKey) {
        let now = host.now_us();
        let (node, epoch, req) = key;
        // Cancelled, or the requester crashed.
        let Some(f) = self.flows.get(&key).cloned() else { return };
        if !self.alive(node, epoch) {
            self.flows.remove(&key);
            return;
        }
        if !self.reachable(f.source, node)
            || self.holders[f.source as usize].epoch != f.source_epoch
        {
            self.flows.remove(&key);
            let ev = PayloadEv::FlowFailed { node, epoch, source: f.source, req };
            host.schedule_payload(now + DETECT_MS * 1000, ev);
            return;
        }
        let held = &self.holders[f.source as usize].held;
        let mut count = 0;
        let slice = if self.cross(f.source, node) { WAN_SLICE_GROUPS } else { LAN_SLICE_GROUPS };
        while count < slice && f.next + count < f.end && held.get(f.next + count) {
            count += 1;
        }
        // A source that lacks the next group ends the range there (the machine hears
        // `RangeEnded` and asks again elsewhere); an honest source only lacks groups it never
        // claimed.
        let last = count == 0 || f.next + count >= f.end;
        let bytes = self.span_bytes(f.next, count);
        let left = self.reserve_up(f.source, node, bytes, now);
        if last {
            self.flows.remove(&key);
        } else {
            self.flows.get_mut(&key).expect("present").next += count;
            host.schedule_payload(left, PayloadEv::FlowNext { key });
        }
        let arrival =
            Arrival { node, epoch, source: f.source, req, first: f.next, count, bytes, last };
        let delay = self.one_way_us(f.source, node);
        host.schedule_payload(left + delay, PayloadEv::Downlink(Box::new(arrival)));
    }

    /// Reserves the hops on the source's side of a slice of `bytes` from `src` to `dst`: the
    /// source node's uplink and, to another site, its site's WAN uplink, each from when it is
    /// free (a FIFO queue) for the slice's transmission time at its bandwidth. Returns when
    /// the slice has left. A flow sends its next slice then, so flows sharing an uplink take
    /// turns a slice at a time: fair sharing, like the streams of a congestion-controlled
    /// transport.
    pub(super) fn reserve_up(&mut self, src: u32, dst: u32, bytes: u64, now: u64) -> u64 {
        let (src, dst) = (src as usize, dst as usize);
        let (ss, ds) = (self.site_of[src] as usize, self.site_of[dst] as usize);
        let start = now.max(self.node_up_free[src]);
        let mut left = start + self.lan.transmit_us(bytes as usize);
        self.node_up_free[src] = left;
        if ss != ds {
            self.wan_out[ss] += bytes;
            let up = left.max(self.site_up_free[ss]);
            left = up + self.wan.transmit_us(bytes as usize);
            self.site_up_free[ss] = left;
        }
        left
    }

    /// Reserves the hops on the destination's side, when the slice reaches them (`now`): to
    /// another site, the destination site's WAN downlink, then the destination node's
    /// downlink. Reserving them only on arrival keeps each a FIFO of what has reached it: a
    /// slice still queued at a distant uplink holds no downlink (reserving every hop when the
    /// slice was sent did, and stalled a site's intake behind its slowest source). Returns
    /// when the slice has cleared them.
    pub(super) fn reserve_down(&mut self, src: u32, dst: u32, bytes: u64, now: u64) -> u64 {
        let (src, dst) = (src as usize, dst as usize);
        let (ss, ds) = (self.site_of[src] as usize, self.site_of[dst] as usize);
        let mut ready = now;
        if ss != ds {
            let down = now.max(self.site_down_free[ds]);
            ready = down + self.wan.transmit_us(bytes as usize);
            self.site_down_free[ds] = ready;
        }
        let d = ready.max(self.node_down_free[dst]);
        self.node_down_free[dst] = d + self.lan.transmit_us(bytes as usize);
        d + self.lan.transmit_us(bytes as usize)
    }

    /// A slice reached the destination's side: it queues for the downlinks, then arrives.
    pub(super) fn downlink(&mut self, host: &mut impl Host, a: Arrival) {
        let done = self.reserve_down(a.source, a.node, a.bytes, host.now_us());
        host.schedule_payload(done, PayloadEv::Arrive(Box::new(a)));
    }

    pub(super) fn arrive(&mut self, host: &mut impl Host, a: Arrival) {
        let now = host.now_us();
        if self.cross(a.source, a.node) {
            self.wan_in[self.site_of[a.node as usize] as usize] += a.bytes;
        }
        host.trace_payload(21, a.source, a.node, a.bytes);

        if !self.alive(a.node, a.epoch) || self.holders[a.node as usize].fetch.is_none() {
            return;
        }
        // Verified and stored, whether or not the range was cancelled meanwhile.
        let h = &mut self.holders[a.node as usize];
        for g in a.first..a.first + a.count {
            if h.held.set(g) {
                h.held_count += 1;
            }
        }
        // The elected fetcher announces itself from its first group, the others when complete
        // (as the node does).
        let elected = h.fetch.as_ref().is_some_and(|f| f.download().role() == Role::Wan);
        if h.held_count > 0 && elected || h.held_count == self.groups {
            self.list_provider(a.node, now);
        }
        let (request, first, count) = (a.req, a.first, a.count);
        if count > 0 {
            self.input(host, a.node, a.epoch, FetchInput::Groups { request, first, count });
        }
        if a.last {
            let input = FetchInput::RangeEnded { request, result: Ok(()) };
            self.input(host, a.node, a.epoch, input);
        }
    }
}
