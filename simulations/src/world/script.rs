//! What a scenario makes happen: the publication schedule, crashes and restarts, partitions,
//! an admin key revoked, and the adversaries' attacks.

use super::*;

impl World {
    pub(super) fn schedule_script(&mut self) {
        let ms = 1000u64;
        self.schedule(self.s.publish_at_ms * ms, Ev::Publish { measured: true, node: 0, tag: 0 });
        if self.s.revoke_admin_at_ms > 0 {
            self.schedule(self.s.revoke_admin_at_ms * ms, Ev::Revoke);
        }
        if self.s.adversaries > 0 {
            self.schedule(self.s.warmup_ms * ms, Ev::Attack);
        }
        for (i, p) in self.s.partition.clone().iter().enumerate() {
            self.schedule(p.start_ms * ms, Ev::PartitionStart(i));
            self.schedule(p.end_ms * ms, Ev::PartitionEnd(i));
            if p.publish_inside {
                let mid = (p.start_ms + p.end_ms) / 2 * ms;
                let inside = self.partition_sites[i][0];
                let node_in =
                    (0..self.s.nodes as u32).find(|n| self.ents[*n as usize].site == inside);
                let node_out = (0..self.s.nodes as u32)
                    .find(|n| !self.partition_sites[i].contains(&self.ents[*n as usize].site));
                if let (Some(a), Some(b)) = (node_in, node_out) {
                    self.schedule(
                        mid,
                        Ev::Publish { measured: false, node: a, tag: 1 + 2 * i as u8 },
                    );
                    self.schedule(
                        mid,
                        Ev::Publish { measured: false, node: b, tag: 2 + 2 * i as u8 },
                    );
                }
            }
        }
        if let Some(p) = &self.payload {
            self.schedule(p.at_us(), Ev::Payload(PayloadEv::Publish));
        }
        if let Some(r) = &self.rollout {
            self.schedule(r.at_us(), Ev::Rollout(RolloutEv::Publish));
        }
        if let Some(m) = &self.intel {
            self.schedule(m.at_us(), Ev::Intel(crate::intel::IntelEv::Publish));
        }
        if let Some(m) = &self.enrol {
            use crate::enrol::EnrolEv;
            let mut evs: Vec<(u64, Ev)> = m
                .join_us
                .iter()
                .enumerate()
                .map(|(k, t)| (*t, Ev::Enrol(EnrolEv::Join { node: m.first + k as u32 })))
                .collect();
            if m.spec.split_at_ms > 0 {
                evs.push((m.spec.split_at_ms * ms, Ev::Enrol(EnrolEv::Split(true))));
                let heal = (m.spec.split_at_ms + m.spec.split_ms) * ms;
                evs.push((heal, Ev::Enrol(EnrolEv::Split(false))));
            }
            evs.push((m.spec.at_ms * ms, Ev::Enrol(EnrolEv::Check)));
            for (t, ev) in evs {
                self.schedule(t, ev);
            }
        }
        if let Some(p) = self.s.payload.as_ref().filter(|p| p.fetcher_crashes > 0) {
            self.schedule(p.fetcher_crash_at_ms * ms, Ev::CrashFetchers);
        }
        for (i, c) in self.s.crash.clone().iter().enumerate() {
            self.schedule(c.at_ms * ms, Ev::Crash(i));
            for n in self.crash_sets[i].clone() {
                self.schedule((c.at_ms + c.down_ms) * ms, Ev::Restart(n));
            }
        }
    }

    pub(super) fn crash_node(&mut self, n: u32) {
        self.trace(self.now_us, TraceCode::Crash, n, 0, 0);
        self.reach.crashed(n);
        let was_up = self.ents[n as usize].node.is_some();
        self.ents[n as usize].node = None;
        self.ents[n as usize].timer_at = u64::MAX;
        if (n as usize) < self.eligible.len()
            && self.received_us[n as usize] == u64::MAX
            && self.eligible[n as usize]
        {
            self.eligible[n as usize] = false;
            self.pending_measure -= 1;
        }
        for j in self.ents[n as usize].links.clone() {
            self.input(j, Input::Disconnected { peer: PeerId(u64::from(n)) });
        }
        if let Some(m) = self.rollout.as_mut() {
            m.on_crash(n, self.now_us);
        }
        if was_up && self.honest(n) {
            self.with_payload(|p, w| p.on_crash(w, n));
        }
    }

    pub(super) fn command_entry(&mut self, tag: u8) -> (String, Option<CatalogEntry>) {
        let mut id = [tag; 32];
        self.rng.fill_bytes(&mut id[..8]);
        let c = CatalogEntry::Command(AdminCommand {
            rollout: RolloutId(id),
            action: CommandAction::Pause,
            issued_at: Millis(self.s.epoch_ms + self.now_us / 1000),
            admin: self.keys.admins[0].public(),
        });
        (c.key(), Some(c))
    }

    pub(super) fn publish(&mut self, measured: bool, node: u32, tag: u8) {
        let node = if measured {
            // A random honest node that is up.
            let mut n = self.rng.gen_range(0..self.s.nodes as u32);
            while self.ents[n as usize].node.is_none() {
                n = (n + 1) % self.s.nodes as u32;
            }
            n
        } else {
            node
        };
        self.trace(self.now_us, TraceCode::Publish, node, u32::from(tag), 0);
        let edit = self.command_entry(tag);
        let admin = self.keys.admins[0].clone();
        let before: BTreeSet<ObjectId> = self.ents[node as usize]
            .node
            .as_ref()
            .map(|n| n.catalog_change_ids().into_iter().collect())
            .unwrap_or_default();
        self.input(node, Input::Command(Command::Publish { admin, edits: vec![edit] }));
        if !measured {
            return;
        }
        let Some(n) = self.ents[node as usize].node.as_ref() else { return };
        let new_env = n.catalog().envelopes().find(|e| !before.contains(&e.id())).cloned();
        let Some(env) = new_env else {
            self.violations.push("the measured publish produced no change".into());
            return;
        };
        self.measured_hash = catalog::change_hash(&env);
        self.measured_at_us = self.now_us;
        for i in 0..self.s.nodes {
            self.eligible[i] = self.ents[i].node.is_some();
        }
        self.pending_measure = self.eligible.iter().filter(|e| **e).count();
        self.observe(node);
    }

    pub(super) fn observe(&mut self, i: u32) {
        let Some(hash) = self.measured_hash else { return };
        let iu = i as usize;
        if iu >= self.s.nodes || !self.eligible[iu] || self.received_us[iu] != u64::MAX {
            return;
        }
        if self.ents[iu].node.as_ref().is_some_and(|n| n.catalog().has(&hash)) {
            self.received_us[iu] = self.now_us;
            self.pending_measure -= 1;
            if self.pending_measure == 0 {
                self.measure_end_us = Some(self.now_us);
            }
        }
    }

    /// An admin publishes the patch and its rollout at a random honest node that is up.
    pub(super) fn publish_rollout(&mut self) {
        let Some(m) = self.rollout.as_mut() else { return };
        let edits = m.publish(self.now_us);
        let mut n = self.rng.gen_range(0..self.s.nodes as u32);
        while self.ents[n as usize].node.is_none() {
            n = (n + 1) % self.s.nodes as u32;
        }
        self.trace(self.now_us, TraceCode::PublishRollout, n, 0, 0);
        let admin = self.keys.admins[0].clone();
        self.input(n, Input::Command(Command::Publish { admin, edits }));
    }

    /// The `[intel]` model's events: the admin's publication, each node's bundle read, and the
    /// periodic check of every node's view.
    pub(super) fn intel_step(&mut self, ev: crate::intel::IntelEv) {
        use crate::intel::IntelEv;
        let Some(mut m) = self.intel.take() else { return };
        match ev {
            IntelEv::Publish => {
                let mut n = self.rng.gen_range(0..self.s.nodes as u32);
                while self.ents[n as usize].node.is_none() {
                    n = (n + 1) % self.s.nodes as u32;
                }
                m.published_us = Some(self.now_us);
                let admin = self.keys.admins[0].clone();
                let edits = vec![(m.key.clone(), Some(m.entry.clone()))];
                self.input(n, Input::Command(Command::Publish { admin, edits }));
                self.schedule(self.now_us + m.spec.check_ms * 1000, Ev::Intel(IntelEv::Check));
            }
            IntelEv::Loaded { node } => {
                if self.ents[node as usize].node.is_some() {
                    self.input(node, Input::Command(Command::SetExposure(Some(m.summary.clone()))));
                } else {
                    // Down when the read finished: fetched again once it is back.
                    m.scheduled[node as usize] = false;
                }
            }
            IntelEv::Check => {
                let mut pending = false;
                let mut fetches = Vec::new();
                for i in 0..self.s.nodes {
                    let e = &self.ents[i];
                    let Some(node) = e.node.as_ref() else {
                        pending |= m.visible_us[i].is_none();
                        continue;
                    };
                    if !m.scheduled[i] && m.holds_entry(node) {
                        m.scheduled[i] = true;
                        fetches.push(i as u32);
                    }
                    if m.visible_us[i].is_none() {
                        if m.view_complete(node, &site_name(e.site), self.s.sites) {
                            m.visible_us[i] = Some(self.now_us);
                        } else {
                            pending = true;
                        }
                    }
                }
                for node in fetches {
                    let jitter = 1.0 + m.spec.fetch_jitter * self.rng.gen::<f64>();
                    let at = self.now_us + (m.spec.fetch_ms as f64 * jitter * 1000.0) as u64;
                    self.schedule(at, Ev::Intel(IntelEv::Loaded { node }));
                }
                if pending {
                    self.schedule(self.now_us + m.spec.check_ms * 1000, Ev::Intel(IntelEv::Check));
                }
            }
        }
        self.intel = Some(m);
    }

    pub(super) fn revoke(&mut self) {
        // Root keys 0 and 2 revoke admin 1 (which never signed, so no history is kept).
        let Some(n) = self.ents[0].node.as_ref() else { return };
        let current = n.trust().admins().clone();
        let env = mesh::next_admin_set(
            &current,
            vec![self.keys.admins[0].public()],
            vec![Revocation { key: self.keys.admins[1].public(), kept_seq: BTreeMap::new() }],
            &[&self.keys.roots[0], &self.keys.roots[2]],
        );
        self.trace(self.now_us, TraceCode::Revoke, 0, 0, 0);
        self.input(0, Input::Command(Command::AdminSet(env)));
    }

    /// Every adversary sends every kind of bad object to each of its peers. (Long: one short
    /// block per kind of forgery, side by side so the list of attacks reads as one.)
    pub(super) fn attack(&mut self) {
        self.trace(self.now_us, TraceCode::Attack, 0, 0, 0);
        let mesh_id = self.keys.genesis_body.mesh_id();
        for a in self.s.nodes as u32..self.ents.len() as u32 {
            let Some(adv) = self.ents[a as usize].node.as_ref() else { continue };
            let mut forged_envs: Vec<Envelope> = Vec::new();
            // A genuine-looking change, authored on a scratch catalog with the admin key the
            // revocation removed, then variants of it.
            let trust = adv.trust().clone();
            let mut scratch = patchmesh_protocol::catalog::Catalog::new(mesh_id);
            let scratch_trust =
                patchmesh_protocol::trust::Trust::new(self.keys.genesis.clone(), &Ed25519)
                    .expect("genesis");
            let edit = self.command_entry(200);
            let by_revoked = scratch
                .author(
                    &self.keys.admins[1],
                    [9; 8],
                    Millis(self.s.epoch_ms),
                    &scratch_trust,
                    std::slice::from_ref(&edit),
                )
                .expect("scratch author");
            let body: catalog::ChangeBody = by_revoked.open("c").expect("own change");
            let own_key = self.ents[a as usize].config.key.clone();
            // 1. signed by a non-admin key
            forged_envs.push(Envelope::seal(Domain::CatalogChange, &body, &[&own_key]));
            // 2. an admin's signature from another domain, relabelled
            let admission = self.ents[a as usize].config.admission.clone();
            forged_envs.push(Envelope {
                domain: Domain::CatalogChange,
                body: admission.body.clone(),
                signatures: admission.signatures.clone(),
            });
            // 3. unsigned
            forged_envs.push(Envelope {
                domain: Domain::CatalogChange,
                body: by_revoked.body.clone(),
                signatures: vec![],
            });
            // 4. signed by the revoked admin (only forged once the revocation exists)
            if trust.admins().revocation(&self.keys.admins[1].public()).is_some() {
                forged_envs.push(by_revoked.clone());
            }
            // 5. admin sets: one stolen root (below threshold), the same root twice
            let grab = mesh::next_admin_set(
                trust.admins(),
                vec![own_key.public()],
                vec![],
                &[&self.keys.roots[1]],
            );
            let mut twice = grab.clone();
            twice.signatures.push(twice.signatures[0]);
            let sets = vec![grab, twice];
            for e in forged_envs.iter().chain(sets.iter()) {
                self.forged.envelopes.insert(e.id());
                if let Some(h) = catalog::change_hash(e) {
                    if e.domain == Domain::CatalogChange {
                        self.forged.change_hashes.push(h);
                    }
                }
            }
            // The change by the revoked admin has a real change hash; the non-admin one shares it.
            // 6. a record claiming to be an honest node of the same site, at a high version
            let site = self.ents[a as usize].site;
            let victim = (0..self.s.nodes as u32).find(|n| self.ents[*n as usize].site == site);
            let mut bundles = Vec::new();
            if let Some(v) = victim {
                let rec = NodeRecord {
                    mesh: mesh_id,
                    node: NodeId(self.ents[v as usize].config.key.public().0),
                    site: site_name(site),
                    version: 1_000_000,
                    written_at: Millis(self.s.epoch_ms),
                    inventory: Default::default(),
                    rollouts: BTreeMap::new(),
                    exposure: None,
                    audit: None,
                };
                let b = Arc::new(Bundle::new(
                    Envelope::seal(Domain::NodeRecord, &rec, &[&own_key]),
                    admission.clone(),
                ));
                self.forged.bundles.insert(b.id());
                self.forged.records.push((v, 1_000_000));
                bundles.push(b);
            }
            let peers = self.ents[a as usize].links.clone();
            for p in peers {
                for e in &forged_envs {
                    self.send(a, p, Arc::new(Message::CatalogChange(Arc::new(e.clone()))));
                }
                for set in &sets {
                    self.send(a, p, Arc::new(Message::AdminSets(vec![set.clone()])));
                }
                if !bundles.is_empty() {
                    self.send(a, p, Arc::new(Message::SiteObjects(bundles.clone())));
                }
                // 7. garbage, truncated and oversized bytes
                let mut garbage = vec![0u8; 97];
                self.rng.fill_bytes(&mut garbage);
                let truncated =
                    Message::CatalogChange(Arc::new(by_revoked.clone())).to_bytes()[..50].to_vec();
                let oversized = vec![7u8; limits::MESSAGE_BYTES_MAX + 1];
                for bytes in [garbage, truncated, oversized] {
                    let size = bytes.len();
                    self.transmit(a, p, size, Ev::Bytes { from: a, to: p, bytes });
                }
            }
        }
    }
}

impl World {
    /// The `[enrol]` model's events: a machine boots (with its enrolment as its admission), the
    /// site splits or heals, and the periodic read of every member's gate.
    pub(super) fn enrol_step(&mut self, ev: crate::enrol::EnrolEv) {
        use crate::enrol::EnrolEv;
        let t = self.now_us;
        match ev {
            EnrolEv::Join { node } => {
                self.trace(t, TraceCode::Join, node, 0, 0);
                self.start_node(node);
            }
            EnrolEv::Split(on) => {
                self.trace(t, TraceCode::Split, u32::from(on), 0, 0);
                let redial = match self.enrol.as_mut() {
                    Some(m) => {
                        m.split = on;
                        if on {
                            Vec::new()
                        } else {
                            std::mem::take(&mut m.redial)
                        }
                    }
                    None => Vec::new(),
                };
                for (i, j) in redial {
                    if self.ents[i as usize].node.is_some() {
                        self.connect_started(i, |x| x == j);
                    }
                }
            }
            EnrolEv::Check => {
                let Some(mut m) = self.enrol.take() else { return };
                let (first, machines) = (m.first as usize, m.spec.machines);
                let members = self
                    .ents
                    .iter()
                    .enumerate()
                    .filter(|(i, e)| {
                        e.site == 0
                            && !e.adversary
                            && (*i < self.s.nodes || (first..first + machines).contains(i))
                    })
                    .filter_map(|(i, e)| Some((i as u32, e.node.as_ref()?)));
                m.check(t, members);
                self.schedule(t + m.spec.check_ms * 1000, Ev::Enrol(EnrolEv::Check));
                self.enrol = Some(m);
            }
        }
    }
}
