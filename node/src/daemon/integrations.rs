//! Integrations on the node: turning what the node sees into events, queueing them in the
//! outbox for each sink this node may emit to, keeping the election current, and the task
//! that delivers.

use super::Daemon;
use crate::integrations::deliver::{self, Outcome};
use crate::integrations::{
    backoff_ms, load_credentials, sinks_for, Election, Outbox, GIVE_UP_MS, STANDBY_MS,
};
use patchmesh_protocol::catalog::CatalogEntry;
use patchmesh_protocol::ids::NodeId;
use patchmesh_protocol::integrations::{event_id, Event, EventKind, IntegrationPolicy, POLICY_KEY};
use patchmesh_protocol::rollout::target::{selects, Facts};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Delivery markers kept against re-queueing (a week).
const DONE_KEEP_MS: u64 = 7 * 24 * 3600 * 1000;

/// What the owner task and the delivery task share.
#[derive(Clone, Debug)]
pub(super) struct Shared {
    pub outbox: Outbox,
    pub policy: Arc<Mutex<Option<IntegrationPolicy>>>,
    pub election: Arc<Mutex<Election>>,
    /// Sinks that answered 410, and why.
    pub disabled: Arc<Mutex<BTreeMap<String, String>>>,
    pub wake: Arc<tokio::sync::Notify>,
    /// Deliveries made here, to tell the site (so standby copies are dropped, not resent).
    pub delivered: Arc<Mutex<Vec<(String, String)>>>,
    /// Wakes the owner task when `delivered` has something to tell.
    pub delivered_wake: Arc<tokio::sync::Notify>,
}

/// The owner task's integration bookkeeping.
#[derive(Debug)]
pub(super) struct IntegrationsState {
    pub shared: Shared,
    /// Evidence already turned into events.
    evidence_seen: BTreeSet<patchmesh_protocol::ids::ObjectId>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl IntegrationsState {
    pub(super) fn open(data_dir: &std::path::Path) -> std::io::Result<IntegrationsState> {
        Ok(IntegrationsState {
            shared: Shared {
                outbox: Outbox::open(&data_dir.join("outbox"))?,
                policy: Default::default(),
                election: Default::default(),
                disabled: Default::default(),
                wake: Default::default(),
                delivered: Default::default(),
                delivered_wake: Default::default(),
            },
            evidence_seen: BTreeSet::new(),
        })
    }
}

/// Starts the delivery task.
pub(super) fn spawn(
    shared: Shared,
    key: patchmesh_protocol::crypto::SecretKey,
    credentials: Option<PathBuf>,
    hostname: String,
) {
    tokio::spawn(async move {
        let mut last_prune = 0u64;
        let mut wait = Duration::ZERO;
        loop {
            let _ = tokio::time::timeout(wait, shared.wake.notified()).await;
            let now = crate::clock::now_ms().0;
            if now.saturating_sub(last_prune) > 3_600_000 {
                shared.outbox.prune_done(now, DONE_KEEP_MS);
                last_prune = now;
            }
            let due: Vec<_> =
                shared.outbox.list("pending").into_iter().filter(|i| i.next_at_ms <= now).collect();
            if !due.is_empty() {
                deliver_due(&shared, due, &key, credentials.as_deref(), &hostname).await;
            }
            wait = next_pass(&shared, crate::clock::now_ms().0);
        }
    });
}

/// Shortest sleep of the delivery task between passes that found nothing to send: a pending
/// item it cannot settle (a failing outbox write) is retried this often, not in a busy loop.
const PASS_MIN: Duration = Duration::from_millis(250);
/// Longest sleep of the delivery task: new events, a new policy and a new election wake it at
/// once, so this only bounds how late a missed wake-up could make a delivery.
const PASS_MAX: Duration = Duration::from_secs(30);

/// How long the delivery task sleeps after a pass: until the first pending item comes due (a
/// retry's backoff ends, or a standby copy another member was elected for ages out), within
/// [`PASS_MIN`]..=[`PASS_MAX`]. An idle node wakes for nothing.
fn next_pass(shared: &Shared, now: u64) -> Duration {
    if lock(&shared.policy).is_none() {
        return PASS_MAX; // nothing can be sent before a policy arrives, and its arrival wakes us
    }
    let election = lock(&shared.election).clone();
    let next = shared
        .outbox
        .list("pending")
        .iter()
        .map(|i| match election.mine(&i.event, &i.sink) {
            true => i.next_at_ms,
            false => i.queued_at_ms.saturating_add(STANDBY_MS + 1),
        })
        .min();
    next.map_or(PASS_MAX, |at| Duration::from_millis(at.saturating_sub(now)))
        .clamp(PASS_MIN, PASS_MAX)
}

/// One pass over the pending items that are due: each is sent (on a blocking thread), retried
/// later, dropped as a standby copy or dead-lettered.
async fn deliver_due(
    shared: &Shared,
    due: Vec<crate::integrations::Item>,
    key: &patchmesh_protocol::crypto::SecretKey,
    credentials: Option<&std::path::Path>,
    hostname: &str,
) {
    let creds = match credentials {
        Some(p) => load_credentials(p).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "integration credentials not read");
            Default::default()
        }),
        None => Default::default(),
    };
    for mut item in due {
        let now = crate::clock::now_ms().0;
        // No policy yet (the catalog is still loading): keep everything for later.
        let Some(policy) = lock(&shared.policy).clone() else { break };
        let Some(sink) = policy.sinks.iter().find(|s| s.name == item.sink).cloned() else {
            let _ = shared.outbox.drop_standby(&item); // the policy no longer names it
            continue;
        };
        if let Some(why) = lock(&shared.disabled).get(&sink.name).cloned() {
            let _ = shared.outbox.dead(item, format!("sink disabled: {why}"));
            continue;
        }
        if !lock(&shared.election).mine(&item.event, &sink.name) {
            if now.saturating_sub(item.queued_at_ms) > STANDBY_MS {
                let _ = shared.outbox.drop_standby(&item);
            }
            continue;
        }
        let (k, cred, event, node, host) = (
            key.clone(),
            creds.get(&sink.name).cloned(),
            item.event.clone(),
            hex::encode(key.public().0),
            hostname.to_string(),
        );
        let sink2 = sink.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let ctx = deliver::Ctx { key: &k, cred: cred.as_ref(), node: &node, hostname: &host };
            deliver::deliver(&sink2, &event, &ctx, crate::clock::now_ms().0)
        })
        .await
        .unwrap_or_else(|e| Outcome::Retry { after_ms: None, why: e.to_string() });
        item.attempts += 1;
        let now = crate::clock::now_ms().0;
        let r = match outcome {
            Outcome::Delivered => {
                tracing::info!(event = %item.event.id, sink = %sink.name, attempts = item.attempts, "event delivered");
                lock(&shared.delivered).push((item.event.id.clone(), item.sink.clone()));
                shared.delivered_wake.notify_one();
                shared.outbox.delivered(item, now)
            }
            Outcome::Retry { after_ms, why } => {
                if now.saturating_sub(item.queued_at_ms) > GIVE_UP_MS {
                    shared.outbox.dead(item, format!("gave up after {GIVE_UP_MS} ms: {why}"))
                } else {
                    let wait = after_ms.unwrap_or(0).max(backoff_ms(item.attempts - 1));
                    tracing::warn!(event = %item.event.id, sink = %sink.name, %why, wait_ms = wait, "delivery failed; retrying");
                    shared.outbox.retry(item, why, wait, now)
                }
            }
            Outcome::Disable(why) => {
                tracing::error!(sink = %sink.name, %why, "sink disabled until the policy changes");
                lock(&shared.disabled).insert(sink.name.clone(), why.clone());
                shared.outbox.dead(item, why)
            }
            Outcome::Dead(why) => {
                tracing::error!(event = %item.event.id, sink = %sink.name, %why, "event dead-lettered");
                shared.outbox.dead(item, why)
            }
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "outbox write failed");
        }
    }
}

impl Daemon {
    /// The policy in the catalog (valid ones only), into the shared state.
    pub(super) fn refresh_integrations(&mut self) {
        let policy = self.node.catalog().entries().get(POLICY_KEY).and_then(|e| match e {
            CatalogEntry::Integrations(p) if p.validate().is_ok() => Some(p.clone()),
            _ => None,
        });
        let mut held = lock(&self.integrations.shared.policy);
        if *held != policy {
            // A new policy clears the sinks a 410 disabled.
            lock(&self.integrations.shared.disabled).clear();
            *held = policy;
        }
        drop(held);
        self.refresh_election();
    }

    /// Who may emit to each sink, among the live members of this site.
    pub(super) fn refresh_election(&mut self) {
        let Some(policy) = lock(&self.integrations.shared.policy).clone() else { return };
        let me = self.node.id();
        let site = self.cert.site.clone();
        let facts = Facts::default();
        let records = self.node.site().records();
        let labels_of = |n: &NodeId| -> BTreeMap<String, String> {
            if *n == me {
                return self.cert.labels.clone();
            }
            records
                .get(n)
                .and_then(|r| patchmesh_protocol::trust::admission_cert(r.bundle.admission()).ok())
                .map(|c| c.labels)
                .unwrap_or_default()
        };
        let mut live: Vec<NodeId> =
            self.node.admitted_peers().filter(|(_, _, s)| **s == site).map(|(_, n, _)| n).collect();
        live.push(me);
        live.sort();
        live.dedup();
        let mut known_sites: Vec<String> =
            self.node.summaries().all().keys().map(|s| s.to_string()).collect();
        known_sites.push(site.to_string());
        known_sites.sort();
        known_sites.dedup();
        let mut e = Election { me, site: site.to_string(), ..Default::default() };
        for sink in &policy.sinks {
            let members: Vec<NodeId> = live
                .iter()
                .filter(|n| selects(&sink.emitters, &site, &labels_of(n), &facts))
                .copied()
                .collect();
            let sites: Vec<String> = known_sites
                .iter()
                .filter(|s| {
                    sink.emitters.sites.is_empty()
                        || sink.emitters.sites.iter().any(|x| x.to_string() == **s)
                })
                .cloned()
                .collect();
            e.emitters.insert(sink.name.clone(), members);
            e.sites.insert(sink.name.clone(), sites);
        }
        *lock(&self.integrations.shared.election) = e;
        self.integrations.shared.wake.notify_one();
    }

    /// `Request::IntegrationsStatus`.
    pub(super) fn integrations_view(&self) -> crate::control::IntegrationsView {
        let s = &self.integrations.shared;
        let policy = lock(&s.policy).clone();
        let election = lock(&s.election).clone();
        let disabled = lock(&s.disabled).clone();
        let sinks = policy
            .iter()
            .flat_map(|p| &p.sinks)
            .map(|sink| {
                let members = election.emitters.get(&sink.name).cloned().unwrap_or_default();
                crate::control::SinkStatus {
                    name: sink.name.clone(),
                    this_node_emits: members.contains(&election.me),
                    emitters: members.iter().map(|n| n.to_string()).collect(),
                    sites: election.sites.get(&sink.name).cloned().unwrap_or_default(),
                    disabled: disabled.get(&sink.name).cloned(),
                }
            })
            .collect();
        crate::control::IntegrationsView {
            policy,
            sinks,
            pending: s.outbox.list("pending"),
            delivered: s.outbox.list("done").len(),
            dead: s.outbox.list("dlq").len(),
        }
    }

    /// Tells the live members of this site which events this node delivered, so their standby
    /// copies are dropped instead of sent again after a fail-over.
    pub(super) fn flush_delivery_notices(&mut self) {
        let pairs: Vec<(String, String)> =
            std::mem::take(&mut *lock(&self.integrations.shared.delivered));
        if pairs.is_empty() {
            return;
        }
        let site = self.cert.site.clone();
        let peers: Vec<libp2p::PeerId> = self
            .node
            .admitted_peers()
            .filter(|(_, _, s)| **s == site)
            .filter_map(|(p, _, _)| self.peers.get(&p.0).copied())
            .collect();
        for chunk in pairs.chunks(crate::integrations::NOTICE_PAIRS_MAX) {
            let mut body = b"delivered:".to_vec();
            body.extend(serde_json::to_vec(chunk).unwrap_or_default());
            for p in &peers {
                let _ = self.swarm.behaviour_mut().inventory.send_request(p, body.clone());
            }
        }
    }

    /// A site member says it delivered these: standby copies it was elected for are dropped
    /// (a notice from a member that was not the sender is ignored: only the sender may say).
    pub(super) fn on_delivery_notice(&mut self, peer: &libp2p::PeerId, body: &[u8]) {
        let Some(core) = self.ids.get(peer).copied() else { return };
        let Some(sender) =
            self.node.admitted_peers().find(|(p, _, _)| p.0 == core).map(|(_, n, _)| n)
        else {
            return;
        };
        let Ok(pairs) = serde_json::from_slice::<crate::integrations::Notice>(body) else {
            return;
        };
        let election = lock(&self.integrations.shared.election).clone();
        let now = crate::clock::now_ms().0;
        for (id, sink) in pairs.iter().take(crate::integrations::NOTICE_PAIRS_MAX) {
            let Some(item) = self.integrations.shared.outbox.pending(id, sink) else { continue };
            if election.winner(&item.event, sink) == Some(sender) {
                let _ = self.integrations.shared.outbox.delivered(item, now);
            }
        }
    }

    /// Queues an event for every sink that wants it and lets this node emit.
    pub(super) fn emit(&self, event: Event) {
        let Some(policy) = lock(&self.integrations.shared.policy).clone() else { return };
        let election = lock(&self.integrations.shared.election).clone();
        let now = crate::clock::now_ms().0;
        for sink in sinks_for(&policy, &event) {
            if !election.emitters.get(&sink.name).is_some_and(|m| m.contains(&election.me)) {
                continue;
            }
            match self.integrations.shared.outbox.offer(&event, &sink.name, now) {
                Ok(true) => tracing::debug!(event = %event.id, sink = %sink.name, "event queued"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, event = %event.id, "event not queued"),
            }
        }
        self.integrations.shared.wake.notify_one();
    }

    /// A rollout halted (every node sees it; one sends it).
    pub(super) fn emit_halt(
        &self,
        rollout: &patchmesh_protocol::ids::RolloutId,
        ring: u8,
        failures: u32,
    ) {
        let r = rollout.to_string();
        self.emit(Event {
            id: event_id(EventKind::RolloutHalted, &[&r]),
            kind: EventKind::RolloutHalted,
            node: None,
            site: None,
            summary: format!(
                "rollout {} halted at ring {ring} after {failures} failure(s)",
                &r[..12]
            ),
            severity: "critical".into(),
            at_ms: crate::clock::now_ms().0,
            details: serde_json::json!({"rollout": r, "ring": ring, "failures": failures}),
            fleet_wide: true,
        });
    }

    /// The slow timer: events from the site's evidence, silent members, due dates, expiring
    /// exceptions.
    pub(super) fn integrations_tick(&mut self) {
        self.refresh_election();
        let Some(policy) = lock(&self.integrations.shared.policy).clone() else { return };
        let now = crate::clock::now_ms().0;
        let mut events = Vec::new();
        for ev in self.node.site().evidence_bundles() {
            let (id, e) = ev;
            if self.integrations.evidence_seen.contains(&id) {
                continue;
            }
            self.integrations.evidence_seen.insert(id);
            // Older than the delivery markers: it was reported (or not) long ago; a restart
            // must not send it again.
            if now.saturating_sub(e.at.0) > DONE_KEEP_MS {
                continue;
            }
            use patchmesh_protocol::site::EvidenceKind as K;
            let (kind, severity, what) = match e.kind {
                K::InstallFailed => (EventKind::InstallFailed, "error", "install failed"),
                K::RolledBack => (EventKind::RollbackDone, "warning", "rolled back"),
                _ => continue,
            };
            let (node, rollout) = (e.node.to_string(), e.rollout.to_string());
            events.push(Event {
                id: event_id(kind, &[&rollout, &node]),
                kind,
                node: Some(node.clone()),
                site: Some(e.site.to_string()),
                summary: format!(
                    "{what} on node {} (rollout {}): {}",
                    &node[..12],
                    &rollout[..12],
                    e.detail
                ),
                severity: severity.into(),
                at_ms: e.at.0,
                details: serde_json::json!({"rollout": rollout, "detail": e.detail}),
                fleet_wide: false,
            });
        }
        for held in self.node.site().records().values() {
            let r = held.record();
            let age = now.saturating_sub(r.written_at.0);
            if r.node != self.node.id()
                && policy.silent_after_ms > 0
                && age > policy.silent_after_ms
            {
                let node = r.node.to_string();
                let since = r.written_at.0.to_string();
                events.push(Event {
                    id: event_id(EventKind::NodeSilent, &[&node, &since]),
                    kind: EventKind::NodeSilent,
                    node: Some(node.clone()),
                    site: Some(r.site.to_string()),
                    summary: format!(
                        "node {} of site {} silent for {} min",
                        &node[..12],
                        r.site,
                        age / 60_000
                    ),
                    severity: "warning".into(),
                    at_ms: now,
                    details: serde_json::json!({"last_record_ms": r.written_at.0}),
                    fleet_wide: false,
                });
            }
        }
        let me = self.node.id().to_string();
        for h in self.history.entries().filter(|h| h.closed_at.is_none() && h.excepted.is_none()) {
            let Some(due) = h.due_at else { continue };
            let (kind, severity, what) = if now > due.0 {
                (EventKind::SlaBreached, "error", "is past its due date")
            } else if due.0 - now < 86_400_000 {
                (EventKind::SlaDueSoon, "warning", "is due within a day")
            } else {
                continue;
            };
            events.push(Event {
                id: event_id(kind, &[&me, &h.cve, &h.source]),
                kind,
                node: Some(me.clone()),
                site: Some(self.cert.site.to_string()),
                summary: format!("{} in {} on {} {what}", h.cve, h.source, self.inventory.hostname),
                severity: severity.into(),
                at_ms: now,
                details: serde_json::json!({"cve": h.cve, "source": h.source, "due_at_ms": due.0, "hostname": self.inventory.hostname}),
                fleet_wide: false,
            });
        }
        for (key, (entry, _)) in self.node.catalog().entries_authored() {
            if let CatalogEntry::Exception(x) = entry {
                if x.expires_at.0 > now && x.expires_at.0 - now < 7 * 86_400_000 {
                    let at = x.expires_at.0.to_string();
                    events.push(Event {
                        id: event_id(EventKind::ExceptionExpiring, &[&key, &at]),
                        kind: EventKind::ExceptionExpiring,
                        node: None,
                        site: None,
                        summary: format!("the exception for {} ({}) expires within a week", x.cve, key),
                        severity: "warning".into(),
                        at_ms: now,
                        details: serde_json::json!({"key": key, "cve": x.cve, "expires_at_ms": x.expires_at.0}),
                        fleet_wide: true,
                    });
                }
            }
        }
        for e in events {
            self.emit(e);
        }
    }

    /// New KEV exposures on this node (from the findings history).
    pub(super) fn emit_kev(&self, cve: &str, source: &str) {
        let me = self.node.id().to_string();
        self.emit(Event {
            id: event_id(EventKind::KevExposure, &[&me, cve, source]),
            kind: EventKind::KevExposure,
            node: Some(me.clone()),
            site: Some(self.cert.site.to_string()),
            summary: format!("{} (known exploited) affects {source} on {}", cve, self.inventory.hostname),
            severity: "critical".into(),
            at_ms: crate::clock::now_ms().0,
            details: serde_json::json!({"cve": cve, "source": source, "hostname": self.inventory.hostname}),
            fleet_wide: false,
        });
    }

    /// This node refused more objects in a minute than its audit log writes one by one.
    pub(super) fn emit_refusals_high(&self, minute: u64, refused: u32) {
        let me = self.node.id().to_string();
        let m = minute.to_string();
        self.emit(Event {
            id: event_id(EventKind::RefusalsHigh, &[&me, &m]),
            kind: EventKind::RefusalsHigh,
            node: Some(me.clone()),
            site: Some(self.cert.site.to_string()),
            summary: format!(
                "{} refused {refused} objects or commands in one minute",
                self.inventory.hostname
            ),
            severity: "warning".into(),
            at_ms: minute * 60_000,
            details: serde_json::json!({"refused": refused, "minute_start_ms": minute * 60_000}),
            fleet_wide: false,
        });
    }

    /// The admin set changed.
    pub(super) fn emit_admin_set(&self, env: &patchmesh_protocol::crypto::Envelope) {
        let id = env.id().to_string();
        self.emit(Event {
            id: event_id(EventKind::AdminSetChanged, &[&id]),
            kind: EventKind::AdminSetChanged,
            node: None,
            site: None,
            summary: "the mesh's admin set changed".into(),
            severity: "warning".into(),
            at_ms: crate::clock::now_ms().0,
            details: serde_json::json!({"admin_set": id, "signers": env.signatures.iter().map(|s| s.key.to_string()).collect::<Vec<_>>()}),
            fleet_wide: true,
        });
    }
}

/// For tests of fail-over (built with `test-hooks` only): `PATCHMESH_TEST_EVENTS=N` queues N
/// fleet-wide events (the same ids on every node) once the policy is known.
#[cfg(feature = "test-hooks")]
pub(super) fn test_events(d: &Daemon) -> bool {
    let Ok(n) = std::env::var("PATCHMESH_TEST_EVENTS").map(|v| v.parse::<u32>().unwrap_or(0))
    else {
        return true;
    };
    if lock(&d.integrations.shared.policy).is_none() {
        return false;
    }
    for i in 0..n {
        let r = format!("test-{i:05}");
        d.emit(Event {
            id: event_id(EventKind::RolloutHalted, &[&r]),
            kind: EventKind::RolloutHalted,
            node: None,
            site: None,
            summary: format!("test event {i}"),
            severity: "info".into(),
            at_ms: 1,
            details: serde_json::json!({"i": i}),
            fleet_wide: true,
        });
    }
    true
}

/// Without `test-hooks` there are no test events.
#[cfg(not(feature = "test-hooks"))]
pub(super) fn test_events(_: &Daemon) -> bool {
    true
}
