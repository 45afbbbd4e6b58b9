//! Ranges as flows over the modelled links: slices reserved hop by hop, arrivals, and the
//! requests they belong to.

use super::*;

impl PayloadModel {
    pub(super) fn start_flow(&mut self, host: &mut impl Host, n: u32, req: Request) {
        let source = self.index[&req.source];
        let id = self.next_flow;
        self.next_flow += 1;
        let flow = Flow {
            source,
            source_epoch: self.holders[source as usize].epoch,
            node: n,
            epoch: self.holders[n as usize].epoch,
            req: req.id,
            next: req.first,
            end: req.first + req.count,
        };
        self.flows.insert(id, flow);
        // The request reaches the source one one-way delay later.
        let at = host.now_us() + self.one_way_us(n, source);
        host.schedule_payload(at, PayloadEv::FlowNext { flow: id });
    }

    pub(super) fn request_active(&self, n: u32, epoch: u32, req: u64) -> bool {
        self.alive(n, epoch)
            && self.holders[n as usize]
                .download
                .as_ref()
                .is_some_and(|d| d.requests().any(|r| r.id == req))
    }

    /// Bytes of groups `first .. first + count`.
    pub(super) fn span_bytes(&self, first: u64, count: u64) -> u64 {
        let end = ((first + count) * GROUP_BYTES).min(self.spec.size_bytes);
        end.saturating_sub(first * GROUP_BYTES)
    }

    pub(super) fn flow_next(&mut self, host: &mut impl Host, id: u64) {
        let now = host.now_us();
        let Some(f) = self.flows.get(&id).cloned() else { return };
        if !self.request_active(f.node, f.epoch, f.req) {
            self.flows.remove(&id);
            return;
        }
        if !self.reachable(f.source, f.node)
            || self.holders[f.source as usize].epoch != f.source_epoch
        {
            self.flows.remove(&id);
            let ev = PayloadEv::FlowFailed {
                node: f.node,
                epoch: f.epoch,
                source: f.source,
                req: f.req,
            };
            host.schedule_payload(now + DETECT_MS * 1000, ev);
            return;
        }
        let held = &self.holders[f.source as usize].held;
        let mut count = 0;
        let slice = if self.cross(f.source, f.node) { WAN_SLICE_GROUPS } else { LAN_SLICE_GROUPS };
        while count < slice && f.next + count < f.end && held.get(f.next + count) {
            count += 1;
        }
        // A source that lacks the next group ends the range there (the planner hears
        // `on_done` and asks again elsewhere); an honest source only lacks groups it never
        // claimed.
        let last = count == 0 || f.next + count >= f.end;
        let bytes = self.span_bytes(f.next, count);
        let end = self.reserve(f.source, f.node, bytes, now);
        if last {
            self.flows.remove(&id);
        } else {
            self.flows.get_mut(&id).expect("present").next += count;
            host.schedule_payload(end, PayloadEv::FlowNext { flow: id });
        }
        let arrival = Arrival {
            node: f.node,
            epoch: f.epoch,
            source: f.source,
            req: f.req,
            first: f.next,
            count,
            bytes,
            last,
        };
        let delay = self.one_way_us(f.source, f.node);
        host.schedule_payload(end + delay, PayloadEv::Arrive(Box::new(arrival)));
    }

    /// Reserves the links a slice of `bytes` crosses from `src` to `dst`, hop by hop: the
    /// source node's uplink, the source site's WAN uplink, the destination site's WAN downlink
    /// and the destination node's downlink. A hop starts no earlier than the one before it and
    /// when it is free; each is then busy for the slice's transmission time at its own
    /// bandwidth. Queues are per hop, as in routers: a busy downlink delays the slice after it
    /// left the uplink, it does not hold the uplink idle (reserving both at the later free
    /// time did, and left shared uplinks idle whenever one of their destinations was busy).
    /// Returns when the slice has cleared every hop.
    pub(super) fn reserve(&mut self, src: u32, dst: u32, bytes: u64, now: u64) -> u64 {
        let (src, dst) = (src as usize, dst as usize);
        let (ss, ds) = (self.site_of[src] as usize, self.site_of[dst] as usize);
        let lan_tx = self.lan.transmit_us(bytes as usize);
        let start = now.max(self.node_up_free[src]);
        self.node_up_free[src] = start + lan_tx;
        let (mut ready, mut done) = (start, start + lan_tx);
        if ss != ds {
            let wan_tx = self.wan.transmit_us(bytes as usize);
            let up = ready.max(self.site_up_free[ss]);
            self.site_up_free[ss] = up + wan_tx;
            let down = (up + wan_tx).max(self.site_down_free[ds]);
            self.site_down_free[ds] = down + wan_tx;
            ready = down;
            done = done.max(down + wan_tx);
        }
        let d = ready.max(self.node_down_free[dst]);
        self.node_down_free[dst] = d + lan_tx;
        done.max(d + lan_tx)
    }

    pub(super) fn arrive(&mut self, host: &mut impl Host, a: Arrival) {
        let now = host.now_us();
        if self.cross(a.source, a.node) {
            self.wan_in[self.site_of[a.node as usize] as usize] += a.bytes;
        }
        host.trace_payload(21, a.source, a.node, a.bytes);
        if !self.request_active(a.node, a.epoch, a.req) {
            return;
        }
        let h = &mut self.holders[a.node as usize];
        let d = h.download.as_mut().expect("active request");
        let before = h.held_count;
        for g in a.first..a.first + a.count {
            if d.on_group(a.req, g) && h.held.set(g) {
                h.held_count += 1;
            }
        }
        // A range that ended short returns groups to the pool that any source may serve.
        let short = d.requests().any(|r| r.id == a.req && a.first + a.count < r.first + r.count);
        if a.last {
            d.on_done(a.req);
        }
        let complete = d.is_complete();
        if before == 0 && h.held_count > 0 {
            self.list_provider(a.node, now);
        }
        if complete {
            let h = &mut self.holders[a.node as usize];
            h.download = None;
            h.complete_us.get_or_insert(now);
            host.trace_payload(23, a.node, 0, 0);
        } else if a.last && short {
            self.request_poll(host, a.node, now);
        } else if a.last {
            self.source_changed(host, a.node, a.source, now);
        }
    }
}
