//! Driving each node's [`Fetch`]: inputs in, outputs carried out over the modelled network,
//! and the machine's timer.

use super::*;

impl PayloadModel {
    /// Feeds one input to node `n`'s download (if it is still the same life and still
    /// downloading), then carries out what it asks.
    pub(super) fn input(&mut self, host: &mut impl Host, n: u32, epoch: u32, input: FetchInput) {
        if !self.alive(n, epoch) {
            return;
        }
        let now = Millis(host.now_us() / 1000);
        let Some(f) = self.holders[n as usize].fetch.as_mut() else { return };
        f.handle_input(now, input);
        self.drive(host, n);
    }

    /// The machine's timer fired.
    pub(super) fn timeout(&mut self, host: &mut impl Host, n: u32, epoch: u32) {
        let now_us = host.now_us();
        let h = &mut self.holders[n as usize];
        if !(h.up && h.epoch == epoch) || h.timer_at != now_us {
            return;
        }
        h.timer_at = u64::MAX;
        let Some(f) = h.fetch.as_mut() else { return };
        f.handle_timeout(Millis(now_us / 1000));
        self.drive(host, n);
    }

    /// Carries out every output of node `n`'s download and arms its timer.
    fn drive(&mut self, host: &mut impl Host, n: u32) {
        let now = host.now_us();
        let h = &mut self.holders[n as usize];
        let epoch = h.epoch;
        let Some(f) = h.fetch.as_mut() else { return };
        let mut outs = Vec::new();
        while let Some(out) = f.poll_output() {
            outs.push(out);
        }
        let (mut lan, mut wan) = (Vec::new(), Vec::new());
        for out in outs {
            match out {
                FetchOutput::AskHave(id) => {
                    let s = self.index[&id];
                    if self.cross(n, s) {
                        wan.push(s);
                    } else {
                        lan.push(s);
                    }
                }
                FetchOutput::GetOutboard(id) => self.send_outboard(host, n, self.index[&id]),
                FetchOutput::FetchRange { request, .. } => self.start_flow(host, n, request),
                FetchOutput::Cancel(req) => {
                    // Nothing more is sent; slices on the wire still arrive and are kept.
                    self.flows.remove(&(n, epoch, req));
                }
                FetchOutput::FindProviders => {
                    let at = now + 2 * (self.wan.rtt_ms * 1000.0) as u64;
                    host.schedule_payload(at, PayloadEv::Providers { node: n, epoch });
                }
                FetchOutput::Penalize(id, fault) => {
                    let peer = self.index[&id];
                    host.trace_payload(27, n, peer, 0);
                    self.penalties.push((n, peer, fault.kind()));
                }
                FetchOutput::Complete => {
                    let h = &mut self.holders[n as usize];
                    h.fetch = None;
                    h.timer_at = u64::MAX;
                    h.complete_us.get_or_insert(now);
                    host.trace_payload(23, n, 0, 0);
                    return;
                }
                FetchOutput::Failed(reason) => {
                    let h = &mut self.holders[n as usize];
                    h.fetch = None;
                    h.timer_at = u64::MAX;
                    h.failed = Some(reason);
                    host.trace_payload(29, n, 0, 0);
                    return;
                }
            }
        }
        for (batch, delay) in [(lan, self.lan.one_way_us()), (wan, self.wan.one_way_us())] {
            if !batch.is_empty() {
                let ev = PayloadEv::HaveQuery { node: n, epoch, asked_us: now, sources: batch };
                host.schedule_payload(now + delay, ev);
            }
        }
        self.arm(host, n);
    }

    /// Queues node `n`'s timer for its download's next deadline, in whole milliseconds and
    /// never in the millisecond already handled.
    fn arm(&mut self, host: &mut impl Host, n: u32) {
        let now = host.now_us();
        let h = &mut self.holders[n as usize];
        let Some(at) = h.fetch.as_ref().and_then(|f| f.poll_timeout()) else { return };
        let at_us = (at.0 * 1000).max((now / 1000 + 1) * 1000);
        if at_us < h.timer_at {
            h.timer_at = at_us;
            let epoch = h.epoch;
            host.schedule_payload(at_us, PayloadEv::Timeout { node: n, epoch });
        }
    }

    pub(super) fn have_query(
        &mut self,
        host: &mut impl Host,
        n: u32,
        epoch: u32,
        asked_us: u64,
        sources: Vec<u32>,
    ) {
        let now = host.now_us();
        let (mut answers, mut failed) = (Vec::new(), Vec::new());
        for s in sources {
            if self.reachable(s, n) {
                answers.push((s, self.availability(s)));
            } else {
                failed.push(s);
            }
        }
        if let Some((s, _)) = answers.first() {
            let at = now + self.one_way_us(n, *s);
            host.schedule_payload(at, PayloadEv::HaveReply { node: n, epoch, answers });
        }
        if !failed.is_empty() {
            let at = (asked_us + DETECT_MS * 1000).max(now);
            host.schedule_payload(at, PayloadEv::HaveFailed { node: n, epoch, sources: failed });
        }
    }

    pub(super) fn have_reply(
        &mut self,
        host: &mut impl Host,
        n: u32,
        epoch: u32,
        answers: Vec<(u32, Availability)>,
    ) {
        let site = self.site_of[n as usize] as usize;
        host.trace_payload(22, n, answers.len() as u32, 0);
        for (s, availability) in answers {
            let size_bytes = self.spec.size_bytes;
            let availability = if self.cross(n, s) {
                // What the reply costs on the wire, counted against the site's WAN.
                let reply = DataReply::Have { size_bytes, availability };
                self.wan_in[site] += reply.to_bytes().len() as u64;
                match reply {
                    DataReply::Have { availability, .. } => availability,
                    _ => unreachable!("built above"),
                }
            } else {
                availability
            };
            let source = self.ids[s as usize];
            let reply = Ok((size_bytes, availability));
            self.input(host, n, epoch, FetchInput::Have { source, reply });
        }
    }

    /// Source `s` sends node `n` the outboard: its bytes cross the links like a range.
    fn send_outboard(&mut self, host: &mut impl Host, n: u32, s: u32) {
        let now = host.now_us();
        let epoch = self.holders[n as usize].epoch;
        if !self.reachable(s, n) {
            let ev = PayloadEv::Outboard { node: n, epoch, source: s, ok: false };
            host.schedule_payload(now + DETECT_MS * 1000, ev);
            return;
        }
        let bytes = self.groups * OUTBOARD_BYTES_PER_GROUP;
        let sent = now + self.one_way_us(n, s);
        // Once per download: its downlinks are reserved at once (see `reserve_down`).
        let left = self.reserve_up(s, n, bytes, sent);
        let cleared = self.reserve_down(s, n, bytes, left + self.one_way_us(s, n));
        if self.cross(n, s) {
            self.wan_in[self.site_of[n as usize] as usize] += bytes;
        }
        let ev = PayloadEv::Outboard { node: n, epoch, source: s, ok: true };
        host.schedule_payload(cleared, ev);
    }

    pub(super) fn outboard_arrived(
        &mut self,
        host: &mut impl Host,
        n: u32,
        epoch: u32,
        s: u32,
        ok: bool,
    ) {
        if !self.alive(n, epoch) {
            return;
        }
        host.trace_payload(30, s, n, u64::from(ok));
        let source = self.ids[s as usize];
        let result = if ok {
            self.holders[n as usize].has_outboard = true;
            Ok(self.holders[n as usize].held.clone())
        } else {
            Err(Failure::Lost)
        };
        self.input(host, n, epoch, FetchInput::Outboard { source, result });
    }
}
