//! The daemon's side of vulnerability intelligence. The catalog's newest intel bundle is
//! fetched like any payload (one WAN copy per site), streamed once into the index of what
//! applies to this machine (its release, its source packages, its binaries), and assessed; the
//! core then re-signs the node's record with the exposure summary. A changed inventory
//! re-reads the bundle (the index holds only what the old inventory needed).

use super::{control, Daemon};
use patchmesh_protocol::catalog::{newest_intel, CatalogEntry, IntelEntry};
use patchmesh_protocol::ids::KeyId;
use patchmesh_protocol::ids::{ContentId, Millis};
use patchmesh_protocol::intel::apt::{updates, Update};
use patchmesh_protocol::intel::exception::{apply, ExceptionEntry};
use patchmesh_protocol::intel::matching::NodeIndex;
use patchmesh_protocol::intel::report::{assess_node, exposure_summary, Assessed};
use patchmesh_protocol::intel::risk::Asset;
use patchmesh_protocol::intel::Installed;
use patchmesh_protocol::node::{Command, Input};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a bundle fetch is waited for before it is retried on the next catalog change or
/// inventory tick.
const BUNDLE_WAIT: Duration = Duration::from_secs(600);
/// The findings history file in the data directory.
pub(super) const HISTORY_FILE: &str = "intel-history.json";
/// Largest history file read back.
const HISTORY_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Reads the findings history kept by an earlier run (empty when there is none; a damaged one
/// is moved aside and the history starts again, with an error in the log).
pub(super) fn load_history(
    data_dir: &std::path::Path,
) -> patchmesh_protocol::intel::history::History {
    let path = data_dir.join(HISTORY_FILE);
    if !path.exists() {
        return Default::default();
    }
    let read = crate::files::read_limited(&path, HISTORY_BYTES_MAX)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
    match read {
        Ok(h) => h,
        Err(e) => {
            let aside = path.with_extension("json.damaged");
            let _ = std::fs::rename(&path, &aside);
            tracing::error!(error = %e, path = %aside.display(), "findings history unreadable; moved aside");
            Default::default()
        }
    }
}

/// The bundle in use and what it says about this machine.
pub(super) struct IntelState {
    pub entry: IntelEntry,
    pub index: NodeIndex,
    pub findings: Vec<Assessed>,
    pub updates: Vec<Update>,
    pub assessed_at: Millis,
    /// Keys of the exceptions in force at the last assessment.
    pub exceptions: Vec<String>,
}

/// A bundle read (or not) off the owner task.
pub(super) struct Loaded {
    entry: IntelEntry,
    result: Result<NodeIndex, String>,
}

pub(super) fn channel() -> (mpsc::Sender<Loaded>, mpsc::Receiver<Loaded>) {
    mpsc::channel(4)
}

impl Daemon {
    /// After a catalog change, at start and after an inventory change: starts using the newest
    /// bundle unless it is in use or being read.
    pub(super) fn check_intel(&mut self, inventory_changed: bool) {
        let entries = self.node.catalog().entries();
        let Some(entry) = newest_intel(&entries).cloned() else { return };
        let current = self.intel.as_ref().is_some_and(|s| s.entry.content_id == entry.content_id);
        if (current && !inventory_changed) || self.intel_loading == Some(entry.content_id) {
            return;
        }
        self.intel_loading = Some(entry.content_id);
        let transfers = self.transfers.clone();
        if transfers.want(entry.content_id, entry.size_bytes) {
            tracing::info!(content = %entry.content_id, size_bytes = entry.size_bytes, "fetching intel bundle");
        }
        let tx = self.intel_tx.clone();
        let codename = self.inventory.codename.clone();
        let installed = self.inventory.installed();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let result = loop {
                if let Some(path) = transfers.store().complete_path(&entry.content_id) {
                    let load = move || read_index(&path, &codename, &installed);
                    break tokio::task::spawn_blocking(load)
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                }
                let failed = transfers
                    .progress()
                    .get(&entry.content_id)
                    .filter(|p| p.state == "failed")
                    .and_then(|p| p.error.clone());
                if let Some(err) = failed {
                    break Err(format!("fetch failed: {err}"));
                }
                if started.elapsed() > BUNDLE_WAIT {
                    break Err("fetch timed out".into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let _ = tx.send(Loaded { entry, result }).await;
        });
    }

    pub(super) fn on_intel_loaded(&mut self, loaded: Loaded) {
        if self.intel_loading == Some(loaded.entry.content_id) {
            self.intel_loading = None;
        }
        match loaded.result {
            Ok(index) => {
                tracing::info!(content = %loaded.entry.content_id, sources = index.advisories.len(), "intel bundle loaded");
                self.audit(patchmesh_protocol::audit::Event::IntelAdopted {
                    bundle: loaded.entry.content_id.to_string(),
                    published_at_ms: loaded.entry.created_at.0,
                    sources: index.advisories.len() as u32,
                });
                self.intel = Some(IntelState {
                    entry: loaded.entry,
                    index,
                    findings: Vec::new(),
                    updates: Vec::new(),
                    assessed_at: Millis(0),
                    exceptions: Vec::new(),
                });
                self.assess_intel();
            }
            Err(e) => {
                tracing::warn!(content = %loaded.entry.content_id, error = %e, "intel bundle not usable")
            }
        }
    }

    /// Assesses this machine against the bundle in use and re-signs the record when the
    /// exposure changed.
    pub(super) fn assess_intel(&mut self) {
        let exceptions = self.exceptions_in_force();
        let facts = self.facts();
        let now = super::now_ms();
        let (site, labels) = (self.cert.site.clone(), self.cert.labels.clone());
        let Some(state) = self.intel.as_mut() else { return };
        let installed = self.inventory.installed();
        let asset = Asset::from_labels(&self.cert.labels);
        state.findings = assess_node(&state.index, &installed, &asset);
        let covers = |sel: &patchmesh_protocol::catalog::Selector| {
            patchmesh_protocol::rollout::target::selects(sel, &site, &labels, &facts)
        };
        apply(&mut state.findings, &exceptions, covers, now);
        let newly: Vec<(String, ExceptionEntry, KeyId)> =
            exceptions.iter().filter(|(k, _, _)| !state.exceptions.contains(k)).cloned().collect();
        state.exceptions = exceptions.iter().map(|(k, _, _)| k.clone()).collect();
        let mut events = Vec::new();
        for (key, e, approver) in newly {
            let covered = state
                .findings
                .iter()
                .filter(|a| a.finding.excepted.as_ref().is_some_and(|x| x.key == key))
                .count();
            if covered > 0 {
                events.push(patchmesh_protocol::audit::Event::ExceptionApplied {
                    cve: e.cve.clone(),
                    findings: covered as u32,
                    expires_at_ms: e.expires_at.0,
                    approver: approver.to_string(),
                });
            }
        }
        let versions: std::collections::BTreeMap<&str, &str> =
            installed.iter().map(|i| (i.source.as_str(), i.source_version.as_str())).collect();
        let mut kev = Vec::new();
        let changes =
            self.history.update(&state.findings, |s| versions.get(s).map(|v| v.to_string()), now);
        for c in &changes {
            use patchmesh_protocol::intel::history::Change;
            events.push(match c {
                Change::Opened(h) if h.kev => {
                    kev.push((h.cve.clone(), h.source.clone()));
                    patchmesh_protocol::audit::Event::FindingOpened {
                        cve: h.cve.clone(),
                        source: h.source.clone(),
                        installed: h.installed.clone(),
                        due_at_ms: h.due_at.map(|d| d.0),
                    }
                }
                Change::Opened(h) => patchmesh_protocol::audit::Event::FindingOpened {
                    cve: h.cve.clone(),
                    source: h.source.clone(),
                    installed: h.installed.clone(),
                    due_at_ms: h.due_at.map(|d| d.0),
                },
                Change::Closed(h) => patchmesh_protocol::audit::Event::FindingClosed {
                    cve: h.cve.clone(),
                    source: h.source.clone(),
                    installed: h.closed_version.clone(),
                },
            });
        }
        state.updates = updates(&state.index, &installed);
        state.assessed_at = super::now_ms();
        let summary =
            exposure_summary(state.entry.content_id, state.entry.created_at, &state.findings);
        tracing::info!(
            exposed = summary.counts.total(),
            kev = summary.kev,
            updates = state.updates.len(),
            "exposure assessed"
        );
        self.input(Input::Command(Command::SetExposure(Some(summary))));
        for ev in events {
            self.audit(ev);
        }
        for (cve, source) in kev {
            self.emit_kev(&cve, &source);
        }
        if !changes.is_empty() {
            self.save_history();
        }
    }

    /// Writes the findings history (`<data_dir>/intel-history.json`).
    fn save_history(&self) {
        let path = self.cfg.data_dir.join(HISTORY_FILE);
        let bytes = serde_json::to_vec(&self.history).unwrap_or_default();
        if let Err(e) = crate::files::write_synced(&path, &bytes) {
            tracing::error!(error = %e, path = %path.display(), "findings history not saved");
        }
    }

    /// Valid exceptions in the catalog that have not expired, with their signers.
    fn exceptions_in_force(&self) -> Vec<(String, ExceptionEntry, KeyId)> {
        let now = super::now_ms();
        self.node
            .catalog()
            .entries_authored()
            .into_iter()
            .filter_map(|(key, (entry, author))| match entry {
                CatalogEntry::Exception(e)
                    if key == e.key() && now < e.expires_at && e.validate().is_ok() =>
                {
                    Some((key, e, author))
                }
                _ => None,
            })
            .collect()
    }

    /// Re-assesses when exceptions were added, revoked or lapsed since the last assessment.
    pub(super) fn reassess_if_exceptions_changed(&mut self) {
        let now_in_force: Vec<String> =
            self.exceptions_in_force().into_iter().map(|(k, _, _)| k).collect();
        if self.intel.as_ref().is_some_and(|s| s.exceptions != now_in_force) {
            self.assess_intel();
        }
    }

    /// The content of the bundle in use or being fetched, which garbage collection keeps.
    pub(super) fn intel_content(&self) -> Option<ContentId> {
        newest_intel(&self.node.catalog().entries()).map(|e| e.content_id)
    }

    /// `Request::Vulns` and `Request::Updates` for this node.
    pub(super) fn intel_view(&self) -> control::IntelView {
        let record = self
            .node
            .site()
            .records()
            .get(&self.node.id())
            .and_then(|r| r.record().exposure.clone());
        match &self.intel {
            Some(s) => control::IntelView {
                bundle: Some(s.entry.content_id.to_string()),
                bundle_created_at_ms: s.entry.created_at.0,
                release: self.inventory.codename.clone(),
                assessed_at_ms: s.assessed_at.0,
                findings: s.findings.clone(),
                updates: s.updates.clone(),
                summary: record,
                loading: self.intel_loading.map(|c| c.to_string()),
                hostname: self.inventory.hostname.clone(),
                history: self.history.entries().cloned().collect(),
            },
            None => control::IntelView {
                bundle: None,
                bundle_created_at_ms: 0,
                release: self.inventory.codename.clone(),
                assessed_at_ms: 0,
                findings: Vec::new(),
                updates: Vec::new(),
                summary: record,
                loading: self.intel_loading.map(|c| c.to_string()),
                hostname: self.inventory.hostname.clone(),
                history: self.history.entries().cloned().collect(),
            },
        }
    }
}

fn read_index(
    path: &std::path::Path,
    codename: &str,
    installed: &[Installed],
) -> Result<NodeIndex, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    NodeIndex::load(std::io::BufReader::new(file), codename, installed).map_err(|e| e.to_string())
}

impl Daemon {
    /// `Request::Advisories`: the advisories on `cve` this node's index holds.
    pub(super) fn advisories_of(
        &self,
        cve: &str,
    ) -> Vec<(String, patchmesh_protocol::intel::Advisory)> {
        let Some(state) = &self.intel else { return Vec::new() };
        state
            .index
            .advisories
            .iter()
            .flat_map(|(source, list)| {
                list.iter().filter(|a| a.cve == cve).map(move |a| (source.clone(), a.clone()))
            })
            .collect()
    }

    /// `Request::Exposure`: every site summary held, with this node's own site computed now
    /// from its members' records.
    pub(super) fn exposure_view(&self) -> control::ExposureView {
        let entries = self.node.catalog().entries();
        let newest = newest_intel(&entries);
        let me = self.node.id();
        let own = self.node.site().summarise(self.node.trust().mesh(), me);
        let mut sites = vec![control::SiteExposureView {
            site: own.site.to_string(),
            members: own.record_count,
            exposure: own.exposure,
        }];
        for (site, held) in self.node.summaries().all() {
            if *site == self.cert.site {
                continue;
            }
            let s = held.summary();
            sites.push(control::SiteExposureView {
                site: site.to_string(),
                members: s.record_count,
                exposure: s.exposure.clone(),
            });
        }
        sites.sort_by(|a, b| a.site.cmp(&b.site));
        control::ExposureView {
            bundle: newest.map(|e| e.content_id.to_string()),
            bundle_created_at_ms: newest.map_or(0, |e| e.created_at.0),
            sites,
        }
    }
}

impl Daemon {
    /// This node's findings as served to an admitted peer (JSON; empty without a bundle).
    pub(super) fn findings_served(&self) -> Vec<u8> {
        let Some(state) = &self.intel else { return Vec::new() };
        let served = control::ServedFindings {
            release: self.inventory.codename.clone(),
            findings: state.findings.clone(),
            updates: state.updates.clone(),
            hostname: self.inventory.hostname.clone(),
            history: self.history.entries().cloned().collect(),
        };
        #[cfg(feature = "test-hooks")]
        let served = match std::env::var("PATCHMESH_TEST_HIDE_FINDING") {
            // Tests of a lying node: serve the list without one finding.
            Ok(cve) => control::ServedFindings {
                findings: served.findings.into_iter().filter(|a| a.finding.cve != cve).collect(),
                ..served
            },
            Err(_) => served,
        };
        serde_json::to_vec(&served).unwrap_or_default()
    }

    /// Checks another node's served findings against the digest in its signed record.
    pub(super) fn remote_findings(
        &self,
        node: patchmesh_protocol::ids::NodeId,
        bytes: &[u8],
    ) -> serde_json::Value {
        let summary =
            self.node.site().records().get(&node).and_then(|r| r.record().exposure.clone());
        let Some(summary) = summary else {
            return control::refused(format!(
                "this node holds no signed exposure summary of {node} (it is in another site, or has no bundle yet): ask a member of its site"
            ));
        };
        if bytes.len() > crate::net::INVENTORY_BYTES_MAX {
            return control::refused(format!(
                "node {node} sent {} bytes of findings, over the limit",
                bytes.len()
            ));
        }
        let served: control::ServedFindings = match serde_json::from_slice(bytes) {
            Ok(f) => f,
            Err(e) => return control::refused(format!("node {node} sent no valid findings: {e}")),
        };
        let control::ServedFindings { release, findings, updates, hostname, history } = served;
        if patchmesh_protocol::intel::report::findings_digest(&findings) != summary.findings_digest
        {
            tracing::warn!(%node, "served findings do not match the signed digest");
            return control::refused(format!(
                "node {node} sent findings that do not match the digest in its signed record: it is lying or its record is stale"
            ));
        }
        control::ok_view(&control::RemoteFindingsView {
            node: node.to_string(),
            summary: Some(summary),
            findings,
            release,
            updates,
            hostname,
            history,
        })
    }
}

impl Daemon {
    /// Another node's advisories on one CVE (what its index holds; not covered by a digest:
    /// `explain --node` shows them as that node states them).
    pub(super) fn remote_advisories(
        &self,
        node: patchmesh_protocol::ids::NodeId,
        bytes: &[u8],
    ) -> serde_json::Value {
        if bytes.len() > crate::net::INVENTORY_BYTES_MAX {
            return control::refused(format!(
                "node {node} sent {} bytes of advisories, over the limit",
                bytes.len()
            ));
        }
        match serde_json::from_slice::<Vec<(String, patchmesh_protocol::intel::Advisory)>>(bytes) {
            Ok(list) => control::ok_view(&list),
            Err(e) => control::refused(format!("node {node} sent no valid advisories: {e}")),
        }
    }
}
