//! Carrying out the rollout engine's effects: fetching the payload, and running the patch's
//! executor one journaled step at a time.
//!
//! The core persists the journal entry (flushed) before it emits the effect of that step, so by
//! the time a step runs, a crash will bring the node back to the same step; executors make every
//! step idempotent. Each step runs in its own task; its result comes back to the owner task as
//! `Input::EffectDone`. Every step and its output tail go to the node's audit log.
//!
//! For tests (built with the `test-hooks` feature only), `PATCHMESH_TEST_CRASH_AT=<step>` kills
//! the node with SIGKILL right after the journal entry for that step was flushed: exactly the
//! crash the journal exists for.

use super::Daemon;
use crate::control;
use crate::executor::{DpkgRoot, ExecKind, ExecSpec, Executor, StepReport, Workspace};
use patchmesh_protocol::audit::Event;
use patchmesh_protocol::catalog::PatchEntry;
use patchmesh_protocol::ids::ContentId;
use patchmesh_protocol::node::{Input, Persist};
use patchmesh_protocol::rollout::{Action, Effect, EffectResult, RolloutEvent};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// Effect results waiting for the owner task.
pub(super) const EFFECT_QUEUE: usize = 64;
/// How long a fetch effect waits for the payload before reporting failure (it is retried).
const FETCH_WAIT: Duration = Duration::from_secs(600);

impl Daemon {
    /// Kills the process after a journal entry was flushed, when a test asked for it.
    #[cfg(feature = "test-hooks")]
    pub(super) fn crash_hook(&self, p: &Persist) {
        let Persist::Journal(entry) = p else { return };
        let Ok(want) = std::env::var("PATCHMESH_TEST_CRASH_AT") else { return };
        if want == entry.step.name() {
            let _ = self.store_flush();
            tracing::warn!(step = want, "PATCHMESH_TEST_CRASH_AT: killing this node");
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::process::exit(137);
        }
    }

    /// Without the `test-hooks` feature there is no crash hook.
    #[cfg(not(feature = "test-hooks"))]
    pub(super) fn crash_hook(&self, _: &Persist) {}

    #[cfg(feature = "test-hooks")]
    fn store_flush(&self) -> Result<(), crate::store::StoreError> {
        use crate::store::Store;
        self.store.flush()?;
        Ok(())
    }

    pub(super) fn on_rollout_event(&mut self, ev: RolloutEvent) {
        match &ev {
            RolloutEvent::Stopped { rollout, control } => {
                tracing::warn!(%rollout, ?control, "rollout stopped");
                self.rollout_stopped.entry(*rollout).or_insert_with(crate::clock::now_ms);
                if let patchmesh_protocol::rollout::Control::Halted { ring, failures } = control {
                    self.emit_halt(rollout, *ring, *failures);
                }
                self.audit(Event::RolloutStopped {
                    rollout: rollout.to_string(),
                    control: format!("{control:?}").to_lowercase(),
                });
            }
            RolloutEvent::Step { rollout, ring, step } => {
                tracing::info!(%rollout, ring, step = step.name(), "install step");
                self.audit(Event::InstallStep {
                    rollout: rollout.to_string(),
                    ring: u32::from(*ring),
                    step: step.name().to_string(),
                });
            }
        }
    }

    fn workspace(&self, effect: &Effect, patch: &PatchEntry) -> Result<Executor, String> {
        let kind: ExecKind = patch.executor.kind.parse().map_err(|e| format!("{e}"))?;
        // `{data_dir}` in a step names this node's data directory, so one signed patch can
        // target per-node paths (several nodes on one machine, or a sandbox per node).
        let data_dir = self.cfg.data_dir.to_string_lossy().into_owned();
        let expand = |s: &Option<String>| s.as_ref().map(|s| s.replace("{data_dir}", &data_dir));
        let spec = ExecSpec {
            kind,
            install: expand(&patch.executor.install),
            verify: expand(&patch.executor.verify),
            rollback: expand(&patch.executor.rollback),
            timeout_ms: patch.executor.timeout_ms,
        };
        let payload = self
            .transfers
            .store()
            .complete_path(&effect.content_id)
            .ok_or_else(|| "payload is not in the content store".to_string())?;
        let previous_payload = match kind {
            ExecKind::Dpkg => self.previous_deb(patch),
            _ => None,
        };
        let ws = Workspace {
            dir: self.cfg.data_dir.join("installs").join(effect.rollout.to_hex()),
            payload,
            content_id: effect.content_id.0,
            previous_payload,
            dpkg: DpkgRoot { root: self.cfg.dpkg_root.clone() },
        };
        Executor::new(spec, ws).map_err(|e| format!("{e}"))
    }

    /// The newest other dpkg payload of the same package name that this node committed and
    /// still holds: what a dpkg rollback reinstalls.
    fn previous_deb(&self, patch: &PatchEntry) -> Option<PathBuf> {
        let policies = self.node.policies();
        let store = self.transfers.store();
        let mut best: Option<(patchmesh_protocol::ids::Millis, PathBuf)> = None;
        for entry in self.node.rollouts().journal().values() {
            if entry.step != patchmesh_protocol::rollout::Step::Committed
                || entry.content_id == patch.content_id
            {
                continue;
            }
            let Some(other) = policies.patches.get(&entry.content_id) else { continue };
            if other.executor.kind != "dpkg" || other.name != patch.name {
                continue;
            }
            if let Some(path) = store.complete_path(&entry.content_id) {
                if best.as_ref().is_none_or(|(t, _)| entry.step_at > *t) {
                    best = Some((entry.step_at, path));
                }
            }
        }
        best.map(|(_, p)| p)
    }

    pub(super) fn on_effect(&mut self, effect: Effect) {
        let tx = self.effects_tx.clone();
        let id = effect.id;
        let Some(patch) = self.node.policies().patches.get(&effect.content_id).cloned() else {
            let _ = tx.try_send(EffectResult {
                id,
                ok: false,
                detail: "patch left the catalog".into(),
            });
            return;
        };
        if effect.action == Action::Fetch {
            self.fetch_effect(effect.content_id, patch.size_bytes, id);
            return;
        }
        let exec = match self.workspace(&effect, &patch) {
            Ok(e) => e,
            Err(detail) => {
                let _ = tx.try_send(EffectResult { id, ok: false, detail });
                return;
            }
        };
        let audit_log = self.audit.log.clone();
        let rollout = effect.rollout;
        let action = effect.action;
        // Someone at the machine hears of an install before it starts.
        let notice = self.notices.clone().filter(|_| action == Action::Install).map(|n| {
            let policies = self.node.policies();
            let deferrals = policies.deferrals.get(&rollout);
            let install = super::notice::Install {
                rollout,
                patch: patch.name.clone(),
                version: patch.version.clone(),
                allowed: deferrals.map_or(0, |d| d.max),
                each_ms: deferrals.map_or(0, |d| d.each_ms),
                deadline: policies.rollouts.get(&rollout).and_then(|r| r.rollout.deadline),
            };
            (n, install)
        });
        tokio::spawn(async move {
            if let Some((n, install)) = notice {
                n.before_install(install).await;
            }
            let result = match action {
                Action::Stage => exec.stage().await,
                Action::Install => exec.install().await,
                Action::Verify => exec.verify().await,
                Action::Rollback => exec.rollback().await,
                Action::Fetch => unreachable!("handled above"),
            };
            let (ok, detail, report) = match result {
                Ok(r) => (r.ok, r.detail.clone(), Some(r)),
                Err(e) => (false, format!("{e}"), None),
            };
            super::audit::record(
                &audit_log,
                step_result(rollout.to_string(), action, ok, &detail, report.as_ref()),
            );
            let _ = tx.send(EffectResult { id, ok, detail }).await;
        });
    }

    fn fetch_effect(&mut self, content: ContentId, size_bytes: u64, id: u64) {
        let transfers = self.transfers.clone();
        let tx = self.effects_tx.clone();
        transfers.want(content, size_bytes);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let (ok, detail) = loop {
                if transfers.store().complete_path(&content).is_some() {
                    break (true, "payload held".to_string());
                }
                let failed = transfers
                    .progress()
                    .get(&content)
                    .filter(|p| p.state == "failed")
                    .map(|p| p.error.clone().unwrap_or_default());
                if let Some(err) = failed {
                    break (false, format!("fetch failed: {err}"));
                }
                if started.elapsed() > FETCH_WAIT {
                    break (false, "fetch timed out".to_string());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let _ = tx.send(EffectResult { id, ok, detail }).await;
        });
    }

    /// Every rollout as this node sees it.
    pub(super) fn rollouts_view(&self) -> control::RolloutsView {
        let policies = self.node.policies();
        let engine = self.node.rollouts();
        let mut out = Vec::new();
        for (id, authored) in &policies.rollouts {
            let r = &authored.rollout;
            let verdict = engine.verdicts().get(id);
            let rings = r
                .rings
                .iter()
                .enumerate()
                .map(|(i, spec)| {
                    let stats = verdict.and_then(|v| v.rings.get(i)).copied().unwrap_or_default();
                    control::RingView {
                        name: spec.name.clone(),
                        percent: spec.percent,
                        labels: spec.labels.clone(),
                        gate: spec.gate.clone(),
                        counts: stats,
                    }
                })
                .collect();
            let commands = policies
                .commands
                .get(id)
                .into_iter()
                .flatten()
                .map(|(key, c)| control::CommandView {
                    key: key.clone(),
                    action: c.action.clone(),
                    admin: c.admin.to_string(),
                    issued_at_ms: c.issued_at.0,
                })
                .collect();
            let local = engine.journal().get(id).map(|j| control::LocalView {
                ring: j.ring,
                step: j.step.name().to_string(),
                failed: j.failed,
                failed_at_ms: j.failed_at.map(|m| m.0),
                started_at_ms: j.started_at.0,
                step_at_ms: j.step_at.0,
                checks: j.checks,
                detail: j.detail.clone(),
            });
            let standing = engine.standings().get(id).map(|s| control::StandingView {
                ring: (s.ring != patchmesh_protocol::rollout::NO_RING).then_some(s.ring),
                status: format!("{:?}", s.status),
            });
            let patch = policies.patches.get(&r.content_id).map(|p| control::PatchBrief {
                name: p.name.clone(),
                version: p.version.clone(),
                executor: p.executor.kind.clone(),
                size_bytes: p.size_bytes,
            });
            out.push(control::RolloutView {
                id: id.to_string(),
                hash: hex::encode(authored.hash),
                author: authored.author.to_string(),
                content_id: r.content_id.to_string(),
                patch,
                created_at_ms: r.created_at.0,
                control: verdict.map(|v| v.control.clone()),
                approvals: verdict.map(|v| v.approvals),
                approvals_needed: verdict.map(|v| v.approvals_needed),
                open_rings: verdict.map(|v| v.open_rings),
                waiting: verdict.map(|v| v.waiting.clone()),
                rings,
                commands,
                local,
                standing,
                stopped_at_ms: self.rollout_stopped.get(id).map(|m| m.0),
                max_targets: r.max_targets,
                rollback_on_halt: r.rollback_on_halt,
            });
        }
        control::RolloutsView {
            node: self.node.id().to_string(),
            site: self.cert.site.to_string(),
            now_ms: crate::clock::now_ms().0,
            rollouts: out,
            ignored: policies.ignored.clone(),
            alarms: self.node.alarms().len(),
        }
    }

    pub(super) fn on_effect_done(&mut self, result: EffectResult) {
        self.input(Input::EffectDone(result));
    }
}

/// An executor step's result as an audit event.
fn step_result(
    rollout: String,
    action: Action,
    ok: bool,
    detail: &str,
    report: Option<&StepReport>,
) -> Event {
    Event::StepResult {
        rollout,
        action: format!("{action:?}").to_lowercase(),
        ok,
        exit_code: report.and_then(|r| r.exit_code),
        timed_out: report.is_some_and(|r| r.timed_out),
        duration_ms: report.map_or(0, |r| r.duration_ms),
        detail: detail.to_string(),
        output_tail: report.map_or(String::new(), |r| {
            patchmesh_protocol::audit::tail(
                &r.output,
                patchmesh_protocol::audit::OUTPUT_TAIL_BYTES_MAX,
            )
        }),
    }
}

/// A channel for effect results.
pub(super) fn channel() -> (mpsc::Sender<EffectResult>, mpsc::Receiver<EffectResult>) {
    mpsc::channel(EFFECT_QUEUE)
}
