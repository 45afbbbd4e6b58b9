//! What each node sees: publication, the DHT's provider records, the peers a node is
//! connected to, and starting a download.

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
        self.origin_site = self.site_of[origin as usize] as usize;
        host.trace_payload(20, origin, 0, self.spec.size_bytes);
        let h = &mut self.holders[origin as usize];
        h.held = Bitfield::full(self.groups);
        h.held_count = self.groups;
        h.has_outboard = true;
        h.complete_us = Some(now);
        self.list_provider(origin, now);
        for n in 0..count {
            if self.holders[n as usize].up && n != origin {
                self.start_download(host, n);
            }
        }
    }

    /// Node `n` announces itself as a provider: visible one WAN round trip later, and only
    /// while the DHT keeps fewer than [`limits::DHT_PROVIDERS_PER_KEY`] records.
    pub(super) fn list_provider(&mut self, n: u32, now_us: u64) {
        let h = &mut self.holders[n as usize];
        if h.listed || self.providers.len() >= limits::DHT_PROVIDERS_PER_KEY {
            return;
        }
        h.listed = true;
        let visible = now_us + (self.wan.rtt_ms * 1000.0) as u64;
        self.providers.push((n, visible));
    }

    /// The admitted peers node `n` is connected to as it sees them now, each with its site
    /// (`None`: its own): its site's live members, and its WAN links and the providers it
    /// dialled whose far end is up and not cut off.
    pub(super) fn peers_of(&self, n: u32) -> Vec<(NodeId, Option<SiteId>)> {
        let site = self.site_of[n as usize] as usize;
        let mut peers: Vec<(NodeId, Option<SiteId>)> = self.seen[site]
            .iter()
            .filter(|m| **m != n)
            .map(|m| (self.ids[*m as usize], None))
            .collect();
        if !self.cut_seen[site] {
            let h = &self.holders[n as usize];
            let far: BTreeSet<u32> = self.wan_links[n as usize]
                .iter()
                .chain(h.dialled.iter().filter(|j| self.cross(n, **j)))
                .copied()
                .collect();
            for j in far {
                let s = self.site_of[j as usize] as usize;
                if self.seen[s].contains(&j) && !self.cut_seen[s] {
                    peers.push((self.ids[j as usize], Some(self.site_ids[s].clone())));
                }
            }
        }
        peers
    }

    /// Something any node sees changed (a member seen gone or back, a cut seen or healed):
    /// every download whose view differs hears its new peers.
    pub(super) fn views_changed(&mut self, host: &mut impl Host) {
        for n in 0..self.holders.len() as u32 {
            self.view_changed(host, n);
        }
    }

    /// Node `n`'s download hears its peers if they changed since it last did.
    pub(super) fn view_changed(&mut self, host: &mut impl Host, n: u32) {
        if !self.holders[n as usize].up || self.holders[n as usize].fetch.is_none() {
            return;
        }
        let peers = self.peers_of(n);
        if peers == self.holders[n as usize].peers {
            return;
        }
        self.holders[n as usize].peers = peers.clone();
        let epoch = self.holders[n as usize].epoch;
        let was = self.holders[n as usize].fetch.as_ref().map(|f| f.download().role());
        self.input(host, n, epoch, FetchInput::Peers(peers));
        let now = self.holders[n as usize].fetch.as_ref().map(|f| f.download().role());
        if was == Some(Role::Lan) && now == Some(Role::Wan) {
            host.trace_payload(28, n, self.site_of[n as usize], 0);
            self.failovers += 1;
        }
    }

    pub(super) fn start_download(&mut self, host: &mut impl Host, n: u32) {
        let now = host.now_us();
        let h = &self.holders[n as usize];
        let me = self.ids[n as usize];
        let (have, has_outboard) = (h.held.clone(), h.has_outboard);
        let (size, params) = (self.spec.size_bytes, self.params.clone());
        let f = Fetch::new(me, self.content, size, have, has_outboard, params, Millis(now / 1000));
        let peers = self.peers_of(n);
        let h = &mut self.holders[n as usize];
        h.fetch = Some(f);
        h.failed = None;
        h.peers = peers.clone();
        let epoch = h.epoch;
        let site = self.site_ids[self.site_of[n as usize] as usize].clone();
        self.input(host, n, epoch, FetchInput::Site(site));
        self.input(host, n, epoch, FetchInput::Peers(peers));
    }
}
