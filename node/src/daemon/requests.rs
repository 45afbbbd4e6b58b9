//! The control socket: serving it, and answering each request with a typed view.

use super::*;

/// The control token: created once (random, mode 0600) and reused.
pub(super) fn control_token(path: &Path) -> Result<String, DaemonError> {
    if path.exists() {
        return Ok(control::read_token(path)?);
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.write_all(token.as_bytes()).map_err(io(format!("writing {}", path.display())))?;
    Ok(token)
}

pub(super) fn bind_control(socket: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    if socket.exists() {
        // A socket left by a killed node is removed; a live one means a node already runs here.
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(DaemonError::AlreadyRunning(socket.to_path_buf()));
        }
        std::fs::remove_file(socket).map_err(io(format!("removing {}", socket.display())))?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(io(format!("binding {}", socket.display())))?;
    set_mode(socket, 0o600)?;
    Ok(listener)
}

/// Control connections served at once.
pub(super) const CONTROL_CONNECTIONS_MAX: usize = 256;

pub(super) async fn serve_control(
    listener: tokio::net::UnixListener,
    token: String,
    tx: mpsc::Sender<(Request, Reply)>,
) {
    let token = Arc::new(token);
    // Connections served at once. A client that opens many and never finishes its request
    // (each waits at most 10 s) holds a bounded number of tasks and buffers; when all are
    // taken, the oldest is closed for the newest, so a real request (written at once, answered
    // in milliseconds) is still served while a slowloris client churns through its own.
    let mut open: std::collections::VecDeque<tokio::task::JoinHandle<()>> = Default::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        open.retain(|h| !h.is_finished());
        if open.len() >= CONTROL_CONNECTIONS_MAX {
            if let Some(oldest) = open.pop_front() {
                oldest.abort();
            }
        }
        let (token, tx) = (token.clone(), tx.clone());
        open.push_back(tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
            let (read, mut write) = stream.into_split();
            let mut reader =
                tokio::io::BufReader::new(read.take(control::REQUEST_BYTES_MAX as u64));
            let mut line = String::new();
            let answer =
                match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
                    .await
                {
                    Ok(Ok(_)) => match serde_json::from_str::<Call>(&line) {
                        Ok(call) if call.token.as_bytes() == token.as_bytes() => {
                            let (reply_tx, reply_rx) = oneshot::channel();
                            if tx.send((call.request, reply_tx)).await.is_err() {
                                control::refused("the node is shutting down")
                            } else {
                                match tokio::time::timeout(Duration::from_secs(60), reply_rx).await
                                {
                                    Ok(Ok(v)) => v,
                                    _ => control::refused("the node did not answer in time"),
                                }
                            }
                        }
                        Ok(_) => control::refused("wrong control token"),
                        Err(e) => control::refused(format!("bad request: {e}")),
                    },
                    _ => control::refused("no request read"),
                };
            let mut out = answer.to_string().into_bytes();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        }));
    }
}

impl Daemon {
    pub(super) fn remote_inventory(&self, node: NodeId, bytes: &[u8]) -> Value {
        let inv: Inventory = match serde_json::from_slice(bytes) {
            Ok(inv) => inv,
            Err(e) => return control::refused(format!("node {node} sent no valid inventory: {e}")),
        };
        let signed = self.node.site().records().get(&node).map(|r| r.record().inventory.clone());
        let verified = signed.as_ref().map(|s| s.packages_digest == inv.summary().packages_digest);
        if verified == Some(false) {
            return control::refused(format!(
                "node {node} sent an inventory that does not match the digest in its signed record"
            ));
        }
        control::ok_view(&control::InventoryView {
            node: node.to_string(),
            verified_against_signed_record: verified.unwrap_or(false),
            inventory: inv,
        })
    }

    pub(super) fn on_control(&mut self, req: Request, reply: Reply) {
        let answer = match req {
            Request::Status => control::ok_view(&self.status()),
            Request::Peers => control::ok_view(&self.peers_view()),
            Request::Fleet => control::ok_view(&self.fleet_view()),
            Request::RolloutEntry { rollout } => {
                let held = patchmesh_protocol::ids::RolloutId::from_hex(rollout.trim())
                    .and_then(|id| self.node.policies().rollouts.get(&id).cloned());
                match held {
                    Some(a) => control::ok_view(&a.rollout),
                    None => control::refused(format!("no rollout {rollout} is held here")),
                }
            }
            Request::Catalog => control::ok_view(&self.catalog_view()),
            Request::Intel => control::ok_view(&self.intel_view()),
            Request::Findings { node: hex_id } => return self.ask_intel(&hex_id, None, reply),
            Request::Advisories { cve, node: Some(hex_id) } => {
                return self.ask_intel(&hex_id, Some(cve), reply)
            }
            Request::Exposure => control::ok_view(&self.exposure_view()),
            Request::Notices => match &self.notices {
                Some(n) => control::ok_view(&n.list()),
                None => control::refused("advance notices are off on this node (no [notice])"),
            },
            Request::Defer { rollout } => {
                let Some(n) = self.notices.clone() else {
                    return send(reply, control::refused("advance notices are off on this node"));
                };
                tokio::spawn(async move {
                    let answer = match n.defer(rollout.as_deref()).await {
                        Ok(v) => control::ok_view(&v),
                        Err(e) => control::refused(e),
                    };
                    send(reply, answer);
                });
                return;
            }
            Request::ReportBasis => control::ok_view(&self.report_basis()),
            Request::IntegrationsStatus => control::ok_view(&self.integrations_view()),
            Request::DlqList => control::ok_view(&self.integrations.shared.outbox.list("dlq")),
            Request::DlqReplay { id } => {
                match self
                    .integrations
                    .shared
                    .outbox
                    .replay(id.as_deref(), crate::clock::now_ms().0)
                {
                    Ok(n) => {
                        self.integrations.shared.wake.notify_one();
                        control::ok_view(&control::ReplayView { replayed: n })
                    }
                    Err(e) => control::refused(format!("replaying: {e}")),
                }
            }
            Request::SignReport { body_hash } => self.sign_report(&body_hash),
            Request::AuditExport { node: None, since_ms } => {
                match self.audit_export(since_ms, control::RESPONSE_BYTES_MAX / 2) {
                    Ok(text) => self.checked_export(self.node.id(), text.as_bytes()),
                    Err(e) => control::refused(e),
                }
            }
            Request::AuditExport { node: Some(hex_id), since_ms } => {
                let node = match parse_id(&hex_id) {
                    Ok(n) => NodeId(n),
                    Err(e) => return send(reply, control::refused(e)),
                };
                if node == self.node.id() {
                    return self.on_control(Request::AuditExport { node: None, since_ms }, reply);
                }
                let Some(peer) = net::peer_of(&node) else {
                    return send(reply, control::refused("not a valid node key"));
                };
                let ask = format!("audit:{}", since_ms.map(|s| s.to_string()).unwrap_or_default());
                let id = self.swarm.behaviour_mut().inventory.send_request(&peer, ask.into_bytes());
                self.audit_waiting.insert(id, (node, reply));
                return;
            }
            Request::Advisories { cve, node: None } => control::ok_view(&self.advisories_of(&cve)),
            Request::Inventory { node: None } => control::ok_view(&control::InventoryView {
                node: self.node.id().to_string(),
                verified_against_signed_record: true,
                inventory: self.inventory.clone(),
            }),
            Request::Inventory { node: Some(hex_id) } => {
                let node = match parse_id(&hex_id) {
                    Ok(n) => NodeId(n),
                    Err(e) => return send(reply, control::refused(e)),
                };
                if node == self.node.id() {
                    return self.on_control(Request::Inventory { node: None }, reply);
                }
                let Some(peer) = net::peer_of(&node) else {
                    return send(reply, control::refused("not a valid node key"));
                };
                let id = self.swarm.behaviour_mut().inventory.send_request(&peer, Vec::new());
                self.inventory_waiting.insert(id, (node, reply));
                return;
            }
            Request::AdminState => {
                let trust = self.node.trust();
                let latest = trust.chain().last().map(|e| hex::encode(encode(e)));
                let history: BTreeMap<String, BTreeMap<String, u64>> = trust
                    .admins()
                    .admins
                    .iter()
                    .map(|k| {
                        let h = self.node.catalog().history_of(k);
                        (k.to_string(), h.into_iter().map(|(a, s)| (hex::encode(a), s)).collect())
                    })
                    .collect();
                control::ok_view(&control::AdminStateView {
                    genesis: hex::encode(encode(trust.genesis_envelope())),
                    latest_admin_set: latest,
                    version: trust.version(),
                    admins: trust.admins().admins.iter().map(|k| k.to_string()).collect(),
                    history,
                })
            }
            Request::Prepare { admin, edits } => self.prepare(&admin, &edits),
            Request::Submit { envelope } => self.submit(&envelope, false),
            Request::AdminSet { envelope } => self.submit(&envelope, true),
            r @ (Request::Import { .. }
            | Request::Fetch { .. }
            | Request::Content { .. }
            | Request::ContentList
            | Request::ContentGc { .. }) => self.content_control(r),
            Request::Rollouts => control::ok_view(&self.rollouts_view()),
            Request::Metrics => control::ok(serde_json::Value::String(self.metrics_text())),
            Request::DashboardLogin => match &self.dashboard {
                Some(d) => control::ok_view(&d.login()),
                None => control::refused(
                    "this node serves no dashboard: add a [dashboard] section to its config \
                     and restart it",
                ),
            },
            Request::Proposal { id } => {
                crate::dashboard::proposal_answer(self.dashboard.as_deref(), &id)
            }
        };
        send(reply, answer);
    }

    pub(super) fn prepare(&mut self, admin: &str, edits: &str) -> Value {
        let admin = match parse_id(admin) {
            Ok(k) => KeyId(k),
            Err(e) => return control::refused(e),
        };
        let edits: Vec<(String, Option<CatalogEntry>)> =
            match hex::decode(edits).map_err(|e| e.to_string()).and_then(|b| {
                decode("edits", &b, control::REQUEST_BYTES_MAX).map_err(|e| e.to_string())
            }) {
                Ok(e) => e,
                Err(e) => return control::refused(format!("bad edits: {e}")),
            };
        let session: [u8; 8] = rand::random();
        match self.node.catalog().prepare(&admin, session, now_ms(), self.node.trust(), &edits) {
            Ok(body) => {
                control::ok_view(&control::PreparedView { body: hex::encode(encode(&body)) })
            }
            Err(e) => control::refused(e),
        }
    }

    pub(super) fn submit(&mut self, envelope: &str, admin_set: bool) -> Value {
        let env: Envelope = match hex::decode(envelope).map_err(|e| e.to_string()).and_then(|b| {
            decode("envelope", &b, control::REQUEST_BYTES_MAX).map_err(|e| e.to_string())
        }) {
            Ok(e) => e,
            Err(e) => return control::refused(format!("bad envelope: {e}")),
        };
        let command =
            if admin_set { Command::AdminSet(env.clone()) } else { Command::Submit(env.clone()) };
        let outcome = self.node.command(now_ms(), command);
        while let Some(out) = self.node.poll_output() {
            self.output(out);
        }
        match outcome {
            Err(r) => control::refused(format!("refused: {r}")),
            Ok(_) => {
                if let Err(e) = self.store.flush() {
                    return control::refused(format!("stored but not flushed: {e}"));
                }
                control::ok_view(&control::SubmittedView {
                    id: env.id().to_string(),
                    catalog_state: self.node.catalog().state_hash().to_string(),
                    trust_version: self.node.trust().version(),
                })
            }
        }
    }

    /// A voucher's catalog entry with the enrolments this node has seen.
    fn voucher_view(&self, v: &patchmesh_protocol::enrol::VoucherEntry) -> control::VoucherView {
        let voucher = v.voucher().ok();
        let seen = voucher.as_ref().and_then(|x| self.node.enrolments().seen.get(&x.id));
        control::VoucherView {
            id: voucher.as_ref().map(|x| x.id_hex()).unwrap_or_default(),
            signer: v.voucher.signatures.first().map(|s| s.key.to_hex()).unwrap_or_default(),
            site: voucher.as_ref().map(|x| x.site.to_string()).unwrap_or_default(),
            labels: voucher.as_ref().map(|x| x.labels.clone()).unwrap_or_default(),
            max_nodes: voucher.as_ref().map_or(0, |x| x.max_nodes),
            issued_at_ms: voucher.as_ref().map_or(0, |x| x.issued_at.0),
            expires_at_ms: voucher.as_ref().map_or(0, |x| x.expires_at.0),
            require_approval: voucher.as_ref().is_some_and(|x| x.require_approval),
            revoked: v.revoked,
            approved: v.approved.iter().map(|n| n.to_hex()).collect(),
            enrolments: seen
                .into_iter()
                .flatten()
                .map(|((at, node), _)| (node.to_hex(), at.0))
                .collect(),
            envelope: hex::encode(patchmesh_protocol::crypto::encode(&v.voucher)),
        }
    }

    pub(super) fn status(&mut self) -> control::StatusView {
        let (sent, received) = net::bandwidth(&self.registry);
        let local = *self.swarm.local_peer_id();
        let listen: Vec<String> = self
            .listen
            .iter()
            .map(|a| a.clone().with_p2p(local).map_or_else(|a| a.to_string(), |a| a.to_string()))
            .collect();
        let stats = self.node.stats().clone();
        let state_hash = self.node.state_hash();
        let gossip = &self.swarm.behaviour().gossipsub;
        control::StatusView {
            node: self.node.id().to_string(),
            peer_id: local.to_string(),
            site: self.cert.site.to_string(),
            labels: self.cert.labels.clone(),
            mesh: self.mesh_name.clone(),
            mesh_id: self.node.trust().mesh().to_string(),
            trust_version: self.node.trust().version(),
            catalog_changes: self.node.catalog().len(),
            catalog_state: self.node.catalog().state_hash().to_string(),
            state_hash: state_hash.to_string(),
            site_records: self.node.site().records().len(),
            site_summaries: self.node.summaries().all().len(),
            peers_connected: self.ids.len(),
            peers_admitted: self.admitted.len(),
            gossip_mesh: control::GossipMeshView {
                control: gossip.mesh_peers(&self.topics.control.hash()).count(),
                site: gossip.mesh_peers(&self.topics.site.hash()).count(),
                summaries: gossip.mesh_peers(&self.topics.summaries.hash()).count(),
            },
            listen,
            bytes_sent: sent,
            bytes_received: received,
            messages_sent: self
                .sent_by_kind
                .iter()
                .map(|(k, (n, b))| {
                    (k.to_string(), control::MessageCount { messages: *n, bytes: *b })
                })
                .collect(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            accepted: stats.accepted,
            rejected: stats.rejected.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            unadmitted_dropped: stats.unadmitted_dropped,
            handshakes_refused: self.handshakes_refused,
            banned_peers: self.swarm.behaviour().blocked.blocked_peers().len() as u64,
            banned_refused: self.banned_refused,
            hole_punches_ok: self.hole_punches.0,
            hole_punches_failed: self.hole_punches.1,
            dht_bootstraps: self.discover.bootstraps(),
            dht_discovery_parked: self.discover.parked(),
            pid: std::process::id(),
            restored_objects: self.restored.0,
            restore_refused: self.restored.1,
            payloads_held: self.transfers.store().list().iter().filter(|c| c.complete).count(),
            payload_bytes_held: self.transfers.store().held_bytes_total(),
            reach: control::ReachView::of(self.node.reach()),
        }
    }

    pub(super) fn fleet_view(&self) -> control::FleetView {
        use patchmesh_protocol::site::SiteShape;
        let site_view = |site: String, members: u64, from_records: bool, shape: &SiteShape| {
            control::FleetSiteView {
                site,
                members,
                from_records,
                kinds: shape
                    .kinds
                    .iter()
                    .map(|(k, n)| control::MemberKindView {
                        count: u64::from(*n),
                        zone: k.zone.clone(),
                        os: k.os.clone(),
                        labels: k.labels.clone(),
                        quiet: k.quiet.map(|q| q.describe()),
                        quiet_mask: k.quiet.map(|q| hex::encode(q.mask)),
                    })
                    .collect(),
                other: u64::from(shape.other),
                min_free_disk_bytes: shape.min_free_disk_bytes,
            }
        };
        let own = self.node.site();
        let mut sites =
            vec![site_view(own.site().to_string(), own.records().len() as u64, true, &own.shape())];
        for (site, held) in self.node.summaries().all() {
            if site == own.site() {
                continue;
            }
            let s = held.summary();
            sites.push(site_view(site.to_string(), u64::from(s.record_count), false, &s.shape));
        }
        // This node's installs that verified: fetch to verified is the soak's start.
        let policies = self.node.policies();
        let mut installs: Vec<(Millis, u64)> = self
            .node
            .rollouts()
            .journal()
            .iter()
            .filter_map(|(id, j)| {
                let soak = policies
                    .rollouts
                    .get(id)?
                    .rollout
                    .rings
                    .get(usize::from(j.ring))?
                    .gate
                    .min_soak_ms;
                let verified = j.soak_until?.0.checked_sub(soak)?;
                Some((j.started_at, verified.checked_sub(j.started_at.0)?))
            })
            .collect();
        installs.sort();
        let admitted: BTreeMap<NodeId, String> =
            self.node.admitted_peers().map(|(_, n, s)| (n, s.to_string())).collect();
        let mut rtts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (peer, rtt) in &self.rtt {
            let site = net::node_of(peer).and_then(|n| admitted.get(&n));
            if let Some(site) = site.filter(|s| s.as_str() != own.site().as_str()) {
                rtts.entry(site.clone()).or_default().push(rtt.as_millis() as u64);
            }
        }
        let mut wan = control::WanObserved::default();
        for p in self.transfers.progress().values() {
            if p.state == "complete" && p.wan_bytes >= control::WanObserved::SAMPLE_MIN_BYTES {
                wan.downloads += 1;
                wan.bytes = wan.bytes.saturating_add(p.wan_bytes);
                wan.ms = wan.ms.saturating_add(p.elapsed_ms.max(1));
            }
        }
        control::FleetView {
            wan_observed: (wan.downloads > 0).then_some(wan),
            site: own.site().to_string(),
            zone: self.facts().tz.iana_name().unwrap_or_default().to_string(),
            sites,
            install_ms: installs.into_iter().map(|(_, ms)| ms).collect(),
            rtt_ms: rtts
                .into_iter()
                .map(|(site, mut v)| {
                    v.sort_unstable();
                    (site, v[v.len() / 2])
                })
                .collect(),
            wan_rate_bytes_per_s: self.cfg.wan_rate_bytes_per_s,
            anti_entropy_interval_ms: self.cfg.anti_entropy_interval_ms,
            summary_interval_ms: self.cfg.summary_interval_ms,
            gossip_flush_ms: self.cfg.gossip_flush_ms,
            rollout_eval_ms: self.cfg.rollout_eval_ms,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            approval_threshold: self.node.trust().admins().approval_threshold,
            approval_above_nodes: self.node.trust().admins().approval_above_nodes,
        }
    }

    pub(super) fn peers_view(&self) -> Vec<control::PeerView> {
        let admitted: BTreeMap<NodeId, String> =
            self.node.admitted_peers().map(|(_, n, s)| (n, s.to_string())).collect();
        let mut out: Vec<control::PeerView> = self
            .ids
            .keys()
            // A peer between connections (within the session grace) is not listed.
            .filter(|p| self.conns.contains_key(p))
            .map(|p| {
                let node = net::node_of(p);
                let site = node.and_then(|n| admitted.get(&n).cloned());
                control::PeerView {
                    peer_id: p.to_string(),
                    node: node.map(|n| n.to_string()),
                    admitted: site.is_some(),
                    site,
                    penalties: self.penalties.get(p).copied().unwrap_or(0),
                    score: self.swarm.behaviour().gossipsub.peer_score(p),
                    connections: self
                        .conns
                        .get(p)
                        .into_iter()
                        .flat_map(|c| c.values())
                        .map(|(remote, relayed)| control::ConnectionView {
                            remote: remote.to_string(),
                            relayed: *relayed,
                        })
                        .collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        out
    }

    pub(super) fn catalog_view(&self) -> control::CatalogView {
        use control::CatalogEntryView as E;
        let entries = self
            .node
            .catalog()
            .entries()
            .into_iter()
            .map(|(key, entry)| {
                let entry = match &entry {
                    CatalogEntry::Patch(p) => E::Patch {
                        name: p.name.clone(),
                        version: p.version.clone(),
                        content_id: p.content_id.to_string(),
                        size_bytes: p.size_bytes,
                        executor: p.executor.kind.clone(),
                    },
                    CatalogEntry::Rollout(r) => E::Rollout {
                        id: r.id.to_string(),
                        content_id: r.content_id.to_string(),
                        rings: r
                            .rings
                            .iter()
                            .map(|g| control::RingBrief {
                                name: g.name.clone(),
                                percent: g.percent,
                            })
                            .collect(),
                    },
                    CatalogEntry::Command(c) => E::Command {
                        rollout: c.rollout.to_string(),
                        action: format!("{:?}", c.action).to_lowercase(),
                        admin: c.admin.to_string(),
                    },
                    CatalogEntry::Exception(e) => E::Exception {
                        cve: e.cve.clone(),
                        exception: match e.kind {
                            patchmesh_protocol::intel::exception::ExceptionKind::RiskAccepted => {
                                "risk-accepted".into()
                            }
                            patchmesh_protocol::intel::exception::ExceptionKind::NotAffected => {
                                "not-affected".into()
                            }
                        },
                        justification: e.justification.clone(),
                        compensating_control: e.compensating_control.clone(),
                        target: describe_selector(&e.target),
                        created_at_ms: e.created_at.0,
                        expires_at_ms: e.expires_at.0,
                    },
                    CatalogEntry::Intel(i) => E::Intel {
                        content_id: i.content_id.to_string(),
                        size_bytes: i.size_bytes,
                        created_at_ms: i.created_at.0,
                        sources: i.sources.iter().map(|s| s.name.clone()).collect(),
                    },
                    CatalogEntry::Integrations(p) => E::Integrations { policy: p.clone() },
                    CatalogEntry::Voucher(v) => E::Voucher(self.voucher_view(v)),
                    CatalogEntry::NodeRevocation(r) => E::NodeRevocation {
                        node: r.node.to_string(),
                        site: r.site.to_string(),
                        reason: r.reason.clone(),
                        revoked_at_ms: r.revoked_at.0,
                    },
                    CatalogEntry::Deferrals(d) => E::Deferrals {
                        rollout: d.rollout.to_string(),
                        max: d.max,
                        each_ms: d.each_ms,
                    },
                    CatalogEntry::ReservedLabels(r) => {
                        E::ReservedLabels { labels: r.labels.clone() }
                    }
                };
                control::CatalogItemView { key, entry }
            })
            .collect();
        control::CatalogView {
            catalog_state: self.node.catalog().state_hash().to_string(),
            changes: self.node.catalog().len(),
            entries,
        }
    }
}

impl Daemon {
    /// Asks another node for its findings (`cve` none) or one CVE's advisories.
    fn ask_intel(&mut self, hex_id: &str, cve: Option<String>, reply: Reply) {
        let node = match parse_id(hex_id) {
            Ok(n) => NodeId(n),
            Err(e) => return send(reply, control::refused(e)),
        };
        if node == self.node.id() {
            return send(reply, control::refused("that is this node: ask without --node"));
        }
        let Some(peer) = net::peer_of(&node) else {
            return send(reply, control::refused("not a valid node key"));
        };
        let ask = match &cve {
            None => b"findings".to_vec(),
            Some(c) => format!("advisories:{c}").into_bytes(),
        };
        let id = self.swarm.behaviour_mut().inventory.send_request(&peer, ask);
        self.findings_waiting.insert(id, (node, reply, cve));
    }
}

/// A selector in words (`every node` when it selects everything).
pub(super) fn describe_selector(s: &patchmesh_protocol::catalog::Selector) -> String {
    let mut parts: Vec<String> = s.labels.iter().map(|(k, v)| format!("label {k}={v}")).collect();
    if !s.sites.is_empty() {
        parts.push(format!(
            "site {}",
            s.sites.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("|")
        ));
    }
    if let Some(os) = &s.os {
        parts.push(format!("os ~ {os}"));
    }
    parts.extend(s.packages.iter().map(|p| format!("{} {:?} {}", p.name, p.op, p.version)));
    if parts.is_empty() {
        "every node".into()
    } else {
        parts.join(", ")
    }
}

pub(super) fn send(reply: Reply, value: Value) {
    let _ = reply.send(value);
}

pub(super) fn parse_id(hex_id: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_id.trim(), &mut out)
        .map_err(|e| format!("{hex_id:?} is not a 64-character hex id: {e}"))?;
    Ok(out)
}

impl Daemon {
    /// Refreshes the node's metric families and encodes the whole registry (libp2p's too).
    fn metrics_text(&mut self) -> String {
        let status = self.status();
        let rollouts = self.rollouts_view();
        let exposure = self.exposure_view();
        let integrations = self.integrations_view();
        let contents: control::ContentListView =
            serde_json::from_value(self.content_control(Request::ContentList)["result"].take())
                .unwrap_or(control::ContentListView { held_bytes: 0, contents: Vec::new() });
        let mut lan_wan = (0, 0);
        for c in contents.contents.iter().take(64) {
            let v = self.content_control(Request::Content { content: c.content_id.clone() });
            lan_wan.0 += v["result"]["lan_bytes"].as_u64().unwrap_or(0);
            lan_wan.1 += v["result"]["wan_bytes"].as_u64().unwrap_or(0);
        }
        let head = self.audit.log.lock().unwrap_or_else(|p| p.into_inner()).head();
        let snap = crate::metrics::snapshot(
            &status,
            &rollouts,
            &exposure,
            &integrations,
            &contents,
            lan_wan,
            head.map(|h| h.at.0),
            crate::clock::now_ms().0,
        );
        *self.metrics.0.lock().unwrap_or_else(|p| p.into_inner()) = snap;
        crate::metrics::encode(&self.registry)
    }
}
