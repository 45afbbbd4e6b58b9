//! What arrives: the one path of every new object ([`Node::keep`]: count → persist → spread),
//! refusals and what they cost the sender, and the acceptance of each kind of message a peer
//! sends (admin sets, catalog changes and syncs, site objects, summaries, alarms).

use super::*;

impl Node {
    /// Refuses an object: counts it, penalises its sender when it is to blame, logs it.
    pub(super) fn refuse(&mut self, peer: Option<PeerId>, why: Refusal) -> Judged {
        self.refuse_ref(peer, &why)
    }

    pub(super) fn refuse_ref(&mut self, peer: Option<PeerId>, why: &Refusal) -> Judged {
        *self.stats.rejected.entry(why.kind()).or_default() += 1;
        let offence = why.offence();
        if let (Some(peer), Offence::Invalid) = (peer, offence) {
            self.out.push(Output::Penalize { peer });
        }
        self.out.push(Output::Event(Event::Rejected { peer, reason: why.to_string() }));
        Judged { fresh: false, invalid: offence == Offence::Invalid }
    }

    /// The one path of every new, verified object: count it, persist it, note what it
    /// changes, and spread it (at once, or batched for the next flush).
    pub(super) fn keep(&mut self, via: Via, fresh: Vec<Fresh>) -> Judged {
        if fresh.is_empty() {
            return Judged::default();
        }
        let (mut admin_sets, mut catalog, mut alarms) = (false, false, Vec::new());
        // A fresh summary may pass a gate; a site member's record may free an install slot.
        let mut gate_inputs = false;
        for f in fresh {
            self.stats.accepted += u64::from(via != Via::Local);
            match f {
                Fresh::AdminSet(env) => {
                    admin_sets = true;
                    self.out.push(Output::Persist(Persist::AdminSet(env)));
                }
                Fresh::CatalogChange(env) => {
                    catalog = true;
                    self.out.push(Output::Persist(Persist::CatalogChange(env.clone())));
                    let msg = Arc::new(Message::CatalogChange(Arc::new(env)));
                    self.relay.spread(via, msg, &self.peers, &mut self.out);
                }
                Fresh::SiteObject(bundle) => {
                    gate_inputs = true;
                    if let Some(signer) = bundle.object().signatures.first() {
                        let member = NodeId(signer.key.0);
                        if member != self.id {
                            self.member_heard.insert(member, self.now);
                        }
                    }
                    self.publisher.site_changed(self.now);
                    self.out.push(Output::Persist(Persist::SiteObject(bundle.clone())));
                    self.queue(via, bundle, Batch::SiteObjects);
                }
                Fresh::Summary(bundle) => {
                    gate_inputs = true;
                    self.out.push(Output::Persist(Persist::Summary(bundle.clone())));
                    self.queue(via, bundle, Batch::Summaries);
                }
                Fresh::Alarm(bundle) => {
                    self.out.push(Output::Persist(Persist::Alarm(bundle.clone())));
                    alarms.push(bundle);
                }
            }
        }
        if admin_sets {
            // Roles may have changed what each author's entries are allowed to do.
            self.policies_stale = true;
            self.rollouts_due = true;
            // A revocation takes back what this node applied before it heard of it.
            match self.state.catalog.drop_revoked(&self.state.trust) {
                Ok(0) => {}
                Ok(_) => catalog = true,
                Err(e) => {
                    self.refuse(None, e.into());
                }
            }
            // The whole chain: a peer that is several versions behind needs all of them.
            let msg = Arc::new(Message::AdminSets(self.state.trust.chain().to_vec()));
            self.relay.spread(via, msg, &self.peers, &mut self.out);
        }
        if catalog {
            self.refresh_vouchers();
            self.policies_stale = true;
            self.rollouts_due = true;
            let state = self.state.catalog.state_hash();
            self.out.push(Output::Event(Event::CatalogChanged { state }));
        }
        if gate_inputs && self.waits_on_a_gate() {
            // A gate this node waits on may pass on what a summary says, or a member's record
            // free a slot (or say where it stands): evaluate within a flush period, not a whole
            // `rollout_eval_ms` later (objects arriving together share one evaluation). Nodes
            // that wait on nothing keep the period.
            let soon = self.now.plus(self.config.gossip_flush_ms.max(1));
            if self.timers.get(Timer::RolloutEval).is_none_or(|at| at > soon) {
                self.timers.set(Timer::RolloutEval, soon);
            }
        }
        if !alarms.is_empty() {
            // A halt waits for nothing else: alarms flood on at once.
            self.rollouts_due = true;
            let msg = Arc::new(Message::Alarms { bundles: alarms, reply: false });
            self.relay.spread(via, msg, &self.peers, &mut self.out);
        }
        Judged::FRESH
    }

    pub(super) fn queue(&mut self, via: Via, bundle: Arc<Bundle>, batch: Batch) {
        if self.relay.queue(via, bundle, batch) {
            self.timers.set_if_unset(Timer::Flush, self.now.plus(self.config.gossip_flush_ms));
        }
    }

    pub(super) fn on_gossip(&mut self, peer: PeerId, bytes: &[u8]) -> Verdict {
        match Message::from_bytes(bytes) {
            // Only fresh-object messages travel by pubsub; anything else there is a violation.
            Ok(msg)
                if matches!(
                    msg,
                    Message::AdminSets(_)
                        | Message::CatalogChange(_)
                        | Message::SiteObjects(_)
                        | Message::Summaries(_)
                        | Message::Alarms { reply: false, .. }
                        | Message::Beacon(_)
                ) =>
            {
                if self.peers.is_admitted(peer) {
                    self.on_message(Via::Gossip(peer), Arc::new(msg)).verdict()
                } else {
                    // No certificate yet: its data is not judged, and it is not forwarded.
                    self.stats.unadmitted_dropped += 1;
                    Verdict::Ignore
                }
            }
            Ok(_) => {
                self.refuse(Some(peer), Refusal::NotGossip);
                Verdict::Reject
            }
            Err(e) => {
                self.refuse(Some(peer), e.into());
                Verdict::Reject
            }
        }
    }

    /// Routes one message from a connected peer.
    pub(super) fn on_message(&mut self, via: Via, msg: Arc<Message>) -> Judged {
        let Some(peer) = via.peer() else { return Judged::default() };
        let Some(state) = self.peers.get(peer) else { return Judged::default() };
        if let Message::Hello { admission, .. } = msg.as_ref() {
            let node = state.node;
            self.on_hello(peer, node, admission);
            return Judged::default();
        }
        if state.admitted.is_none() {
            // No certificate, no state exchange: its data is ignored and it is dropped.
            self.stats.unadmitted_dropped += 1;
            self.peers.remove(peer);
            self.out.push(Output::Disconnect { peer });
            return Judged::default();
        }
        let same_site = self.peers.is_local(peer);
        if !same_site {
            self.beacons.outside_heard(self.now);
        }
        match msg.as_ref() {
            Message::Hello { .. } => Judged::default(),
            Message::AdminSets(sets) => self.on_admin_sets(via, sets),
            Message::CatalogChange(env) => {
                let s = &mut self.state;
                match s.catalog.offer(env, &s.trust, self.config.check.as_ref()) {
                    Ok(Offer::New) => self.keep(via, vec![Fresh::CatalogChange((**env).clone())]),
                    Ok(Offer::Duplicate) => Judged::default(),
                    Err(e) => self.refuse(Some(peer), e.into()),
                }
            }
            Message::CatalogSync(sync) => self.on_catalog_sync(via, peer, sync),
            Message::Digest { catalog, site, summaries, alarms, trust_version } => {
                let theirs = Digest {
                    catalog: *catalog,
                    site: *site,
                    summaries: *summaries,
                    alarms: *alarms,
                    trust_version: *trust_version,
                };
                let (answers, catalog_differs) = self.state.answer_digest(theirs, same_site);
                // (The catalog sync goes between the admin chain and the site keys, as ever.)
                let (first, rest): (Vec<_>, Vec<_>) = answers.into_iter().partition(|m| {
                    matches!(m.as_ref(), Message::Alarms { .. } | Message::AdminSets(_))
                });
                for m in first {
                    self.out.send(peer, m);
                }
                if catalog_differs {
                    self.catalog_sync_to(peer);
                }
                for m in rest {
                    self.out.send(peer, m);
                }
                Judged::default()
            }
            Message::Alarms { bundles, reply } => {
                let judged = self.accept_alarms(via, bundles);
                if *reply {
                    // An anti-entropy exchange: send back what the peer lacks.
                    let theirs: Vec<ObjectId> = bundles.iter().map(|b| b.id()).collect();
                    if let Some(m) = self.state.alarms_missing_from(&theirs) {
                        self.out.send(peer, m);
                    }
                }
                judged
            }
            Message::SiteKeys { keys, reply } => {
                if same_site {
                    for m in self.state.answer_site_keys(keys, *reply) {
                        self.out.send(peer, m);
                    }
                }
                Judged::default()
            }
            Message::SiteObjects(bundles) => self.on_site_objects(via, bundles),
            Message::SummaryRanks { ranks, reply } => {
                for m in self.state.answer_summary_ranks(ranks, *reply) {
                    self.out.send(peer, m);
                }
                Judged::default()
            }
            Message::Beacon(bundle) => self.on_beacon(via, peer, bundle),
            Message::BeaconsAsk => {
                let every = self.config.anti_entropy_interval_ms.max(1);
                for bundle in self.beacons.answer(peer, self.now, every) {
                    self.out.send(peer, Arc::new(Message::Beacon(bundle)));
                }
                Judged::default()
            }
            Message::Summaries(bundles) => {
                let mut judged = Judged::default();
                let mut fresh = Vec::new();
                for bundle in bundles.iter().take(limits::OBJECTS_PER_SYNC_MAX) {
                    match self.accept_summary(bundle) {
                        Ok(Merge::New) => fresh.push(Fresh::Summary(bundle.clone())),
                        Ok(Merge::Duplicate) => {}
                        Err(e) => judged = judged.and(self.refuse(Some(peer), e)),
                    }
                }
                judged.and(self.keep(via, fresh))
            }
        }
    }

    pub(super) fn on_hello(&mut self, peer: PeerId, node: NodeId, admission: &Envelope) {
        let checked =
            self.state.trust.check_admission(admission, self.now, self.config.check.as_ref());
        let why = match checked {
            Ok(admitted) if admitted.cert.node == node => {
                if let Err(g) = self.gate.judge_node(&node, &admitted.cert.site) {
                    self.refuse(Some(peer), g.into());
                    self.peers.remove(peer);
                    self.out.push(Output::Disconnect { peer });
                    return;
                }
                if let Some(e) = &admitted.enrolled {
                    let new = self.gate.saw(e);
                    if let Err(g) = self.gate.judge(e) {
                        self.refuse(Some(peer), g.into());
                        self.peers.remove(peer);
                        self.out.push(Output::Disconnect { peer });
                        return;
                    }
                    if new {
                        self.rejudge_enrolled();
                    }
                }
                let site = admitted.cert.site.clone();
                match self.peers.admit(peer, admitted, self.state.site.site()) {
                    Hello::Admitted => {
                        self.out.push(Output::Event(Event::PeerAdmitted { peer, node, site }));
                        // Anti-entropy on connect.
                        let digest = self.state.digest();
                        self.out.send(peer, digest);
                    }
                    Hello::Renewed => {
                        // A node says hello only when its session with a peer begins, so this
                        // peer began a new one while this node's went on: it restarted, or the
                        // two ends saw a handover between connections differently. Its view of
                        // this node starts over; so does this node's catalog sync with it, and
                        // this node introduces itself again (without this answer the peer would
                        // wait for a hello that never comes, and drop this node for talking
                        // before it). The answer cannot echo: a hello for a peer not yet
                        // admitted is not answered.
                        if let Some(p) = self.peers.get_mut(peer) {
                            p.catalog = crate::catalog::PeerSync::default();
                        }
                        // Only the hello: anything else could reach the peer before it (streams
                        // are not ordered) and get this node dropped. The peer sends its digest
                        // once it admits this node.
                        let hello = self.hello();
                        self.out.send(peer, hello);
                    }
                    Hello::Unknown => {}
                }
                return;
            }
            Ok(_) => Refusal::HelloMismatch(node),
            Err(e) => e.into(),
        };
        self.refuse(Some(peer), why);
        self.peers.remove(peer);
        self.out.push(Output::Disconnect { peer });
    }

    pub(super) fn catalog_sync_to(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        if let Some(sync) = self.state.catalog.sync_message(&mut p.catalog) {
            self.out.send(peer, Arc::new(Message::CatalogSync(sync)));
        }
    }

    pub(super) fn on_admin_sets(&mut self, via: Via, sets: &[Envelope]) -> Judged {
        let mut fresh = Vec::new();
        let mut judged = Judged::default();
        for env in sets {
            match self.state.trust.apply_admin_set(env, self.config.check.as_ref()) {
                Ok(true) => fresh.push(Fresh::AdminSet(env.clone())),
                Ok(false) => {}
                // Versions we already passed are harmless in a chain someone sends whole.
                Err(TrustError::Replay { .. }) if self.state.trust.chain().contains(env) => {}
                Err(e) => {
                    judged = self.refuse(via.peer(), e.into());
                    break;
                }
            }
        }
        judged.and(self.keep(via, fresh))
    }

    pub(super) fn on_catalog_sync(
        &mut self,
        via: Via,
        peer: PeerId,
        sync: &crate::catalog::CatalogSync,
    ) -> Judged {
        let Some(p) = self.peers.get_mut(peer) else { return Judged::default() };
        let s = &mut self.state;
        let result =
            s.catalog.receive_sync(&mut p.catalog, sync, &s.trust, self.config.check.as_ref());
        let reply = s.catalog.sync_message(&mut p.catalog);
        // Changes repaired by sync are pushed on, so a healed partition spreads them as fast
        // as fresh gossip.
        let judged = match result {
            Ok(fresh) => self.keep(via, fresh.into_iter().map(Fresh::CatalogChange).collect()),
            Err(e) => self.refuse(Some(peer), e.into()),
        };
        if let Some(reply) = reply {
            self.out.send(peer, Arc::new(Message::CatalogSync(reply)));
        }
        judged
    }

    pub(super) fn accept_site_object(&mut self, bundle: &Arc<Bundle>) -> Result<Merge, Refusal> {
        let check = self.config.check.clone();
        let s = &mut self.state;
        match bundle.object().domain {
            Domain::NodeRecord => {
                let held = site::verify_record(bundle, &s.trust, self.now, check.as_ref())?;
                self.gate.judge_node(&held.record().node, &held.record().site)?;
                if bundle.admission().domain == Domain::Enrolment {
                    let (_, _, e) = crate::enrol::open(bundle.admission(), check.as_ref())?;
                    let new = self.gate.saw(&e);
                    self.gate.judge(&e)?;
                    if new {
                        self.rejudge_enrolled();
                    }
                    let merged = self.state.site.merge_record(held)?;
                    self.enrolled_members.insert(e.node, e);
                    return Ok(merged);
                }
                Ok(self.state.site.merge_record(held)?)
            }
            Domain::Evidence => {
                let ev = site::verify_evidence(bundle, &s.trust, self.now, check.as_ref())?;
                Ok(s.site.merge_evidence(ev, bundle.clone())?)
            }
            other => {
                Err(TrustError::WrongDomain { expected: Domain::NodeRecord, got: other }.into())
            }
        }
    }

    /// True if we hold this exact record already; such a copy needs no verification.
    pub(super) fn holds_record_bytes(&self, bundle: &Bundle) -> bool {
        let hash = bundle.signed_body_hash();
        let Some(signer) = bundle.object().signatures.first() else { return false };
        self.state
            .site
            .records()
            .get(&NodeId(signer.key.0))
            .is_some_and(|held| held.body_hash() == hash)
    }

    /// True if we hold this exact report already (by its signed body); such a copy needs no
    /// verification.
    fn holds_alarm_bytes(&self, bundle: &Bundle) -> bool {
        let held = |ev: &site::Evidence| {
            self.state
                .alarms
                .get(&ev.rollout, &ev.node)
                .is_some_and(|held| held.bundle.body_hash() == Some(bundle.signed_body_hash()))
        };
        if let Some(ev) = bundle.evidence() {
            return held(ev);
        }
        // A copy off the wire is not verified yet: its body is read (far cheaper than checking
        // its signatures).
        let object = bundle.object();
        object.domain == Domain::Evidence
            && object.open::<site::Evidence>("evidence").is_ok_and(|ev| held(&ev))
    }

    pub(super) fn on_site_objects(&mut self, via: Via, bundles: &[Arc<Bundle>]) -> Judged {
        let mut judged = Judged::default();
        let mut resign = false;
        let mut fresh = Vec::new();
        let mut proposals = false;
        for bundle in bundles.iter().take(limits::OBJECTS_PER_SYNC_MAX) {
            if bundle.object().domain == Domain::SiteSummary {
                // Handed over directly by its author, never by pubsub or a relay.
                let from = match via {
                    Via::Direct(peer) => self.peers.get(peer).map(|p| p.node),
                    _ => None,
                };
                match self.accept_proposal(bundle, from) {
                    Ok(true) => proposals = true,
                    Ok(false) | Err(Refusal::Site(SiteError::ForeignSite(_))) => {}
                    Err(e) => judged = judged.and(self.refuse(via.peer(), e)),
                }
                continue;
            }
            if self.holds_record_bytes(bundle) {
                continue;
            }
            let equivocations = self.state.site.equivocations().len();
            let merged = self.accept_site_object(bundle);
            if let Some(e) = self.state.site.equivocations().get(equivocations) {
                // Two records its own key signed are the proof, whoever relayed them: the
                // signer is blamed on every connection we have to it. The evidence stays in
                // the site state (and the audit log).
                *self.stats.rejected.entry("equivocation").or_default() += 1;
                for peer in self.peers.of_node(&e.node) {
                    self.out.push(Output::Penalize { peer });
                }
            }
            if merged.is_ok() && self.own_record_from_elsewhere(bundle) {
                resign = true;
            }
            match merged {
                Ok(Merge::New) => fresh.push(Fresh::SiteObject(bundle.clone())),
                Ok(Merge::Duplicate) => {}
                // Another site's object is not ours to keep; not misbehaviour by itself.
                Err(Refusal::Site(SiteError::ForeignSite(_))) => {}
                Err(e) => judged = judged.and(self.refuse(via.peer(), e)),
            }
        }
        if let Some(peer) = via.peer() {
            if self.gate_opened_elsewhere(&fresh) {
                self.pull_gate_summaries(peer);
            }
        }
        let changed = !fresh.is_empty();
        let judged = judged.and(self.keep(via, fresh));
        if resign {
            // Sign above the version an earlier life used, so this node never signs one twice.
            self.update_record();
        }
        if changed || proposals {
            self.tick_proposals();
        }
        judged
    }

    pub(super) fn accept_summary(&mut self, bundle: &Arc<Bundle>) -> Result<Merge, Refusal> {
        let check = self.config.check.clone();
        let (site, rank) = site::summary_rank(bundle, check.as_ref())?;
        let records = bundle.summary().map_or(0, |s| s.record_count);
        if !rank.0 && records > 1 {
            // Honest members send these only to their own site's members, as proposals.
            return Err(SiteError::Unendorsed(site.clone()).into());
        }
        if self.state.summaries.rank_of(site).is_some_and(|held| held >= rank) {
            return Ok(Merge::Duplicate);
        }
        let held: HeldSummary =
            site::verify_summary(bundle, &self.state.trust, self.now, check.as_ref())?;
        Ok(self.state.summaries.merge(held)?)
    }

    /// Verifies and keeps failure reports; new ones flood on to every peer at once.
    pub(super) fn accept_alarms(&mut self, via: Via, bundles: &[Arc<Bundle>]) -> Judged {
        let check = self.config.check.clone();
        let mut judged = Judged::default();
        let mut fresh = Vec::new();
        for bundle in bundles.iter().take(limits::OBJECTS_PER_SYNC_MAX) {
            if self.holds_alarm_bytes(bundle) {
                // A copy of a report held: the first report of a node is kept, so there is
                // nothing to verify or merge (a flood brings one from every peer).
                continue;
            }
            let merged = Alarms::verify(bundle, &self.state.trust, self.now, check.as_ref())
                .map_err(Refusal::from)
                .and_then(|alarm| self.state.alarms.merge(alarm).map_err(Refusal::from));
            match merged {
                Ok(Merge::New) => fresh.push(Fresh::Alarm(bundle.clone())),
                Ok(Merge::Duplicate) => {}
                Err(e) => judged = judged.and(self.refuse(via.peer(), e)),
            }
        }
        judged.and(self.keep(via, fresh))
    }

    /// Whether `bundle` (verified) is a record of ours that this node neither signed in this
    /// run nor restored from its store, at or above the version it last signed: its floor went
    /// back (a damaged or replaced store) and an earlier life's record is still about. Raises
    /// the floor to it if so.
    pub(super) fn own_record_from_elsewhere(&mut self, bundle: &Bundle) -> bool {
        let Some(signer) = bundle.object().signatures.first() else { return false };
        if NodeId(signer.key.0) != self.id
            || Some(bundle.signed_body_hash()) == self.publisher.last_record_body()
        {
            return false;
        }
        let Ok(record) = bundle.object().open::<site::NodeRecord>("record") else { return false };
        if record.version < self.publisher.record_version() {
            return false;
        }
        self.publisher.raise_floor(record.version);
        true
    }
}
