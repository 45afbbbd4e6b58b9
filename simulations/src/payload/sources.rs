//! Who the sources are: publication, the directory of providers, and the site tree an
//! elected node takes its WAN sources from.

use super::*;

impl PayloadModel {
    pub(super) fn publish(&mut self, host: &mut impl Host) {
        let now = host.now_us();
        let count = self.holders.len() as u32;
        let mut origin = self.rng.gen_range(0..count);
        for _ in 0..count {
            if self.holders[origin as usize].up {
                break;
            }
            origin = (origin + 1) % count;
        }
        if !self.holders[origin as usize].up {
            return;
        }
        self.published_us = Some(now);
        host.trace_payload(20, origin, 0, self.spec.size_bytes);
        let h = &mut self.holders[origin as usize];
        h.held = Bitfield::full(self.groups);
        h.held_count = self.groups;
        h.complete_us = Some(now);
        self.list_provider(origin, now);
        self.build_tree(self.site_of[origin as usize]);
        for n in 0..count {
            if self.holders[n as usize].up && n != origin {
                self.start_download(host, n);
            }
        }
    }

    pub(super) fn list_provider(&mut self, n: u32, now_us: u64) {
        let visible = now_us + (self.wan.rtt_ms * 1000.0) as u64;
        let site = self.site_of[n as usize];
        self.providers.entry(site).or_default().entry(n).or_insert(visible);
    }

    pub(super) fn start_download(&mut self, host: &mut impl Host, n: u32) {
        let now = host.now_us();
        let h = &self.holders[n as usize];
        let mut d =
            Download::new(self.content, self.spec.size_bytes, h.held.clone(), self.params.clone());
        let site = self.site_of[n as usize] as usize;
        for m in &self.seen[site] {
            if *m != n {
                d.add_source(self.ids[*m as usize], true);
            }
        }
        let role = self.role(n);
        d.set_role(role);
        d.set_lead(self.lead(n));
        let epoch = h.epoch;
        self.holders[n as usize].download = Some(d);
        if role == Role::Wan {
            self.refresh_remote(host, n);
        }
        self.request_poll(host, n, now);
        host.schedule_payload(now + CHECK_MS * 1000, PayloadEv::Check { node: n, epoch });
    }

    /// Orders the sites into a [`TREE_FANOUT`]-ary tree rooted at `root` (the origin's site):
    /// the others by a rendezvous hash of (content, site name), so every node computes the
    /// same tree and each content spreads its load differently.
    pub(super) fn build_tree(&mut self, root: u32) {
        let mut order: Vec<([u8; 32], u32)> = (0..self.parent.len() as u32)
            .filter(|s| *s != root)
            .map(|s| {
                let mut h = blake3::Hasher::new();
                h.update(&self.content.0);
                h.update(format!("site-{s:04}").as_bytes());
                (*h.finalize().as_bytes(), s)
            })
            .collect();
        order.sort_unstable();
        let mut sites = vec![root];
        sites.extend(order.into_iter().map(|(_, s)| s));
        let fanout = TREE_FANOUT;
        for (pos, s) in sites.iter().enumerate().skip(1) {
            self.parent[*s as usize] = sites[(pos - 1) / fanout];
        }
    }

    /// Keeps the node's remote sources at up to [`REMOTE_SOURCES`] providers of the nearest
    /// ancestor site that can serve it: past ancestors that are cut off or whose every
    /// provider failed, but not past one that simply holds nothing yet (its children wait for
    /// it rather than crowd the sites above).
    pub(super) fn refresh_remote(&mut self, host: &mut impl Host, n: u32) {
        let now = host.now_us();
        let site = self.site_of[n as usize];
        if self.partitioned[site as usize] {
            return;
        }
        let h = &self.holders[n as usize];
        let Some(d) = h.download.as_ref() else { return };
        if d.role() != Role::Wan {
            return;
        }
        let usable = |p: u32| {
            h.avoid.get(&p).is_none_or(|until| *until <= now)
                && d.sources().get(&self.ids[p as usize]).is_none_or(|s| s.banned.is_none())
        };
        let mut candidates: Vec<u32> = Vec::new();
        let mut at = site;
        while self.parent[at as usize] != at {
            at = self.parent[at as usize];
            if self.partitioned[at as usize] {
                continue;
            }
            let listed = self.providers.get(&at);
            let visible: Vec<u32> =
                listed.into_iter().flatten().filter(|(_, v)| **v <= now).map(|(p, _)| *p).collect();
            if visible.is_empty() {
                if self.seen[at as usize].is_empty() {
                    continue;
                }
                break;
            }
            candidates = visible.into_iter().filter(|p| usable(*p)).collect();
            if !candidates.is_empty() {
                break;
            }
        }
        // Keep current sources that are still candidates; fill up by rank.
        let current: BTreeSet<u32> = d
            .sources()
            .iter()
            .filter(|(_, s)| !s.lan && s.banned.is_none())
            .map(|(id, _)| self.index[id])
            .collect();
        let mine = u64::from(n) << 32;
        let mut want: BTreeSet<u32> =
            candidates.iter().copied().filter(|p| current.contains(p)).collect();
        let mut ranked: Vec<(u64, u32)> = candidates
            .iter()
            .filter(|p| !want.contains(p))
            .map(|p| (splitmix(self.salt ^ mine ^ u64::from(*p)), *p))
            .collect();
        ranked.sort_unstable();
        for (_, p) in ranked {
            if want.len() >= REMOTE_SOURCES {
                break;
            }
            want.insert(p);
        }
        if want == current {
            return;
        }
        let d = self.holders[n as usize].download.as_mut().expect("checked above");
        for gone in current.difference(&want) {
            d.remove_source(&self.ids[*gone as usize]);
        }
        for new in want.difference(&current) {
            d.add_source(self.ids[*new as usize], false);
        }
        host.trace_payload(26, n, want.len() as u32, u64::from(at));
        self.request_poll(host, n, now);
    }

    pub(super) fn drop_if_unreachable(&mut self, host: &mut impl Host, n: u32, s: u32) {
        if !self.cross(n, s) || self.reachable(s, n) {
            return;
        }
        let now = host.now_us();
        let h = &mut self.holders[n as usize];
        if let Some(d) = h.download.as_mut() {
            d.remove_source(&self.ids[s as usize]);
            h.avoid.insert(s, now + AVOID_MS * 1000);
            self.request_poll(host, n, now);
        }
    }
}
