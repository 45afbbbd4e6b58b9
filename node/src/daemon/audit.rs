//! What the node writes to its audit log, and the log's checkpoint in the node's record.

use super::Daemon;
use crate::audit::{AuditLog, Identity};
use patchmesh_protocol::audit::{Event, Head};
use patchmesh_protocol::crypto::encode;
use patchmesh_protocol::node::{Command, Input};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Refusals written per minute; beyond it they are counted, and the count written once.
const REFUSALS_PER_MINUTE: u32 = 20;
/// A wall-clock move against the monotonic clock larger than this is a clock jump.
const CLOCK_JUMP_MS: u64 = 60_000;

/// The log, shared with the tasks that run install steps.
pub(super) type SharedLog = Arc<Mutex<AuditLog>>;

/// Audit bookkeeping the owner task keeps.
#[derive(Debug)]
pub(super) struct AuditState {
    pub log: SharedLog,
    /// The head last put in the record.
    sent: Option<Head>,
    /// Minute, refusals written in it, refusals suppressed.
    refusals: (u64, u32, u32),
    /// A monotonic instant and the wall clock then.
    clock: (Instant, u64),
    /// Equivocations already written.
    equivocations: usize,
}

impl AuditState {
    pub(super) fn new(log: AuditLog) -> AuditState {
        AuditState {
            log: Arc::new(Mutex::new(log)),
            sent: None,
            refusals: (0, 0, 0),
            clock: (Instant::now(), crate::clock::now_ms().0),
            equivocations: 0,
        }
    }
}

/// For tests of crashes while writing (built with `test-hooks` only):
/// `PATCHMESH_TEST_AUDIT_FLOOD=1` makes the node append entries without pause from a thread,
/// so a kill -9 lands in the middle of writes.
#[cfg(feature = "test-hooks")]
pub(super) fn flood_hook(log: &SharedLog) {
    if std::env::var("PATCHMESH_TEST_AUDIT_FLOOD").is_err() {
        return;
    }
    let log = log.clone();
    std::thread::spawn(move || {
        for i in 0u64.. {
            // Long entries, so that a write is more often caught half done.
            let reason = format!("flood {i} {}", "x".repeat((i % 300) as usize));
            record(&log, Event::NodeStopping { reason });
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    });
}

/// Without the `test-hooks` feature there is no flood.
#[cfg(not(feature = "test-hooks"))]
pub(super) fn flood_hook(_: &SharedLog) {}

/// Appends to a shared log; a failure is logged (the node keeps running: an audit write that
/// fails must not stop installs that are half done).
pub(super) fn record(log: &SharedLog, event: Event) {
    let now = crate::clock::now_ms().0;
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = log.record(event, now) {
        tracing::error!(error = %e, "audit log write failed");
    }
}

impl Daemon {
    /// Appends one event.
    pub(super) fn audit(&self, event: Event) {
        record(&self.audit.log, event);
    }

    /// A refused object or command, rate-limited so a peer cannot flood the log.
    pub(super) fn audit_refusal(&mut self, what: &str, reason: &str, from: Option<String>) {
        let minute = crate::clock::now_ms().0 / 60_000;
        let r = &mut self.audit.refusals;
        if r.0 != minute {
            let suppressed = r.2;
            *r = (minute, 0, 0);
            if suppressed > 0 {
                self.audit(Event::Refused {
                    what: "more objects".into(),
                    reason: format!("{suppressed} further refusals in the previous minute were not written one by one"),
                    from: None,
                });
                self.emit_refusals_high(minute - 1, REFUSALS_PER_MINUTE + suppressed);
            }
        }
        let r = &mut self.audit.refusals;
        if r.1 >= REFUSALS_PER_MINUTE {
            r.2 += 1;
            return;
        }
        r.1 += 1;
        self.audit(Event::Refused { what: what.into(), reason: reason.into(), from });
    }

    /// Called after every event the owner task handles: when the log signed a new checkpoint,
    /// the node's record carries it.
    pub(super) fn sync_audit_head(&mut self) {
        let head = self.audit.log.lock().unwrap_or_else(|p| p.into_inner()).head();
        if head.is_some() && head != self.audit.sent {
            self.audit.sent = head;
            self.input(Input::Command(Command::SetAuditHead(head.expect("checked"))));
        }
    }

    /// The slow timer: time-based checkpoints, clock jumps, equivocations seen in the site.
    pub(super) fn audit_tick(&mut self) {
        let now = crate::clock::now_ms().0;
        let (at, wall) = self.audit.clock;
        let expected = wall + at.elapsed().as_millis() as u64;
        if expected.abs_diff(now) > CLOCK_JUMP_MS {
            tracing::warn!(expected, read = now, "wall clock jumped");
            self.audit(Event::ClockJump { expected_ms: expected, read_ms: now });
        }
        self.audit.clock = (Instant::now(), now);
        let seen = self.node.site().equivocations();
        let new: Vec<Event> = seen[self.audit.equivocations.min(seen.len())..]
            .iter()
            .map(|e| Event::Equivocation { node: e.node.to_string(), detail: e.detail.clone() })
            .collect();
        self.audit.equivocations = seen.len();
        for ev in new {
            tracing::error!(?ev, "a member signed contradicting audit checkpoints");
            self.audit(ev);
        }
        let ticked = self.audit.log.lock().unwrap_or_else(|p| p.into_inner()).tick(now);
        if let Err(e) = ticked {
            tracing::error!(error = %e, "audit checkpoint failed");
        }
    }

    /// An admin-signed object the core verified and is about to store.
    pub(super) fn audit_applied(&self, p: &patchmesh_protocol::node::Persist) {
        use patchmesh_protocol::node::Persist;
        let (kind, env) = match p {
            Persist::CatalogChange(env) => ("catalog-change", env),
            Persist::AdminSet(env) => {
                self.emit_admin_set(env);
                ("admin-set", env)
            }
            _ => return,
        };
        let signers: Vec<String> = env.signatures.iter().map(|s| s.key.to_string()).collect();
        self.audit(Event::AdminObjectApplied {
            kind: kind.into(),
            object: env.id().to_string(),
            summary: format!("{kind} of {} bytes signed by {}", env.body.len(), signers.join(", ")),
            signers,
        });
    }

    /// What an export header names.
    pub(super) fn audit_identity(&self) -> Identity {
        let trust = self.node.trust();
        Identity {
            mesh: trust.mesh().0,
            site: self.cert.site.to_string(),
            admission: hex::encode(encode(&self.admission)),
            admin_sets: trust.chain().iter().map(|e| hex::encode(encode(e))).collect(),
        }
    }

    /// Verifies an export (this node's or a peer's) against the mesh, and against the audit
    /// checkpoint in the node's signed record when this node holds it.
    pub(super) fn checked_export(
        &self,
        node: patchmesh_protocol::ids::NodeId,
        bytes: &[u8],
    ) -> serde_json::Value {
        use crate::control;
        use patchmesh_protocol::audit;
        let Ok(text) = std::str::from_utf8(bytes) else {
            return control::refused(format!("node {node} sent an audit export that is not UTF-8"));
        };
        if text.is_empty() {
            return control::refused(format!("node {node} sent no audit export"));
        }
        let genesis = self.node.trust().genesis_envelope();
        let verified =
            match audit::verify_export(text, genesis, &patchmesh_protocol::crypto::Ed25519) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(%node, error = %e, "audit export does not verify");
                    return control::refused(format!(
                        "the audit export of {node} does not verify: {e}"
                    ));
                }
            };
        if verified.node.0 != node.0 {
            return control::refused(format!("node {node} sent the audit log of another node"));
        }
        let held = self.node.site().records().get(&node).and_then(|r| r.record().audit);
        if let Some(h) = &held {
            if let Err(e) = audit::check_against(text, &verified, h) {
                tracing::error!(%node, error = %e, "audit export contradicts the node's signed record");
                return control::refused(format!(
                    "the audit export of {node} contradicts the checkpoint in its signed record: {e}"
                ));
            }
        }
        control::ok_view(&control::AuditExportView {
            node: node.to_string(),
            verified,
            record_checkpoint: held.map(|h| (h.seq, hex::encode(h.head))),
            text: text.to_string(),
        })
    }

    /// This node's log exported from `since_ms`, at most `max_bytes`.
    pub(super) fn audit_export(
        &self,
        since_ms: Option<u64>,
        max_bytes: usize,
    ) -> Result<String, String> {
        let id = self.audit_identity();
        let mut log = self.audit.log.lock().unwrap_or_else(|p| p.into_inner());
        log.export(&id, since_ms, max_bytes, crate::clock::now_ms().0)
            .map_err(|e| format!("reading the audit log: {e}"))
    }
}
