//! Driving the planners: when each node's planner is polled and checked, and the `Have`
//! questions and answers between a node and its sources.

use super::*;

impl PayloadModel {
    /// The planner's state changed: poll it soon.
    pub(super) fn request_poll(&mut self, host: &mut impl Host, n: u32, at_us: u64) {
        let h = &mut self.holders[n as usize];
        h.dirty = true;
        self.schedule_poll(host, n, at_us);
    }

    /// Only source `s` may serve more than at the last poll (it answered, or a range from it
    /// ended complete): poll soon.
    pub(super) fn source_changed(&mut self, host: &mut impl Host, n: u32, s: u32, at_us: u64) {
        let h = &mut self.holders[n as usize];
        h.dirty_sources.push(s);
        self.schedule_poll(host, n, at_us);
    }

    /// Whether the planner could start a range from one of `changed` now: the source is
    /// usable, has a free slot and claims a group that is neither held nor in flight. The test
    /// `poll_fetches` makes, for these sources only.
    pub(super) fn has_work(&self, d: &Download, mut changed: Vec<u32>) -> bool {
        changed.sort_unstable();
        changed.dedup();
        let mut busy: Option<Vec<u64>> = None;
        for s in changed {
            let id = &self.ids[s as usize];
            let Some(src) = d.sources().get(id) else { continue };
            let Some(avail) = src.have.as_ref() else { continue };
            if src.banned.is_some() || !(src.lan || d.role() == Role::Wan) {
                continue;
            }
            let active = d.requests().filter(|r| r.source == *id).count();
            if active >= self.params.requests_per_source as usize {
                continue;
            }
            let busy = busy.get_or_insert_with(|| {
                let mut b = d.have().words().to_vec();
                for r in d.requests() {
                    set_range(&mut b, r.first, r.first + r.count);
                }
                b
            });
            let open = |w: usize| {
                let tail = self.groups - w as u64 * 64;
                let valid = if tail >= 64 { u64::MAX } else { (1u64 << tail) - 1 };
                !busy[w] & valid
            };
            let found = match avail {
                Availability::Nothing => false,
                Availability::Complete => (0..busy.len()).any(|w| open(w) != 0),
                Availability::Partial(b) => {
                    b.words().iter().enumerate().any(|(w, x)| open(w) & x != 0)
                }
            };
            if found {
                return true;
            }
        }
        false
    }

    pub(super) fn schedule_poll(&mut self, host: &mut impl Host, n: u32, at_us: u64) {
        let h = &mut self.holders[n as usize];
        if h.up && h.download.is_some() && h.poll_at > at_us {
            h.poll_at = at_us;
            host.schedule_payload(at_us, PayloadEv::Poll { node: n });
        }
    }

    pub(super) fn poll(&mut self, host: &mut impl Host, n: u32) {
        let now = host.now_us();
        let h = &mut self.holders[n as usize];
        if h.poll_at != now {
            return;
        }
        h.poll_at = u64::MAX;
        let epoch = h.epoch;
        let Some(d) = h.download.as_mut() else { return };
        // `poll` is `poll_asks` then `poll_fetches`. The latter plans until nothing more can
        // be planned, so with no change since its last call it plans nothing: it is skipped
        // then, which saves the planner's linear scans on every refresh tick.
        let mut actions = d.poll_asks(Millis(now / 1000));
        let dirty = std::mem::take(&mut h.dirty);
        let changed = std::mem::take(&mut h.dirty_sources);
        let d = self.holders[n as usize].download.as_ref().expect("checked above");
        let work = dirty || self.has_work(d, changed);
        let h = &mut self.holders[n as usize];
        let d = h.download.as_mut().expect("checked above");
        if work {
            actions.extend(d.poll_fetches(Millis(now / 1000)));
        }
        let (mut lan, mut wan, mut fetches) = (Vec::new(), Vec::new(), Vec::new());
        for a in actions {
            match a {
                Action::AskHave(id) => {
                    let s = self.index[&id];
                    if self.cross(n, s) {
                        wan.push(s);
                    } else {
                        lan.push(s);
                    }
                }
                Action::Fetch(req) => fetches.push(req),
            }
        }
        for (batch, delay) in [(lan, self.lan.one_way_us()), (wan, self.wan.one_way_us())] {
            if !batch.is_empty() {
                let ev = PayloadEv::HaveQuery { node: n, epoch, asked_us: now, sources: batch };
                host.schedule_payload(now + delay, ev);
            }
        }
        for req in fetches {
            self.start_flow(host, n, req);
        }
        self.schedule_poll(host, n, now + self.params.have_refresh_ms * 1000);
    }

    pub(super) fn check(&mut self, host: &mut impl Host, n: u32, epoch: u32) {
        if !self.alive(n, epoch) {
            return;
        }
        let now = host.now_us();
        let Some(d) = self.holders[n as usize].download.as_mut() else { return };
        let slow = d.check(Millis(now / 1000));
        for (s, _) in &slow {
            host.trace_payload(27, n, self.index[s], 0);
        }
        if !slow.is_empty() {
            self.request_poll(host, n, now);
        }
        self.refresh_remote(host, n);
        host.schedule_payload(now + CHECK_MS * 1000, PayloadEv::Check { node: n, epoch });
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
        let alive = self.alive(n, epoch);
        for (s, availability) in answers {
            let availability = if self.cross(n, s) {
                // What the reply costs on the wire, counted against the site's WAN.
                let reply = DataReply::Have { size_bytes: self.spec.size_bytes, availability };
                self.wan_in[site] += reply.to_bytes().len() as u64;
                match reply {
                    DataReply::Have { availability, .. } => availability,
                    _ => unreachable!("built above"),
                }
            } else {
                availability
            };
            if !alive {
                continue;
            }
            if let Some(d) = self.holders[n as usize].download.as_mut() {
                if d.on_have(&self.ids[s as usize], availability).is_some() {
                    self.request_poll(host, n, host.now_us());
                } else {
                    self.source_changed(host, n, s, host.now_us());
                }
            }
        }
    }
}
