//! When each finding on a node opened and closed: what a compliance report needs for time to
//! remediate and SLA. The node keeps it across restarts and writes every opening and closing to
//! its audit log, so each date here is backed by a signed, hash-chained entry.

use super::report::Assessed;
use super::risk::{Due, Severity};
use crate::ids::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Entries kept; the oldest closed ones go first beyond it.
pub const HISTORY_ENTRIES_MAX: usize = 50_000;

/// One (CVE, source package) on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The CVE.
    pub cve: String,
    /// The source package.
    pub source: String,
    /// Its binary packages installed here.
    pub binaries: Vec<String>,
    /// The source version installed when the finding opened.
    pub installed: String,
    /// The version that fixes it, when known.
    pub fixed_version: Option<String>,
    /// When the bundle first knew of a fix.
    pub fix_seen_at: Option<Millis>,
    /// When this node first found it (this opening).
    pub first_seen: Millis,
    /// The due date (from the due class), when it has one.
    pub due_at: Option<Millis>,
    /// The due class.
    pub due: Due,
    /// CVSS severity.
    pub severity: Severity,
    /// On the KEV catalog.
    pub kev: bool,
    /// When the node found it gone (the fix installed, or the package removed).
    pub closed_at: Option<Millis>,
    /// The source version installed when it closed (none: the package is gone).
    pub closed_version: Option<String>,
    /// The exception covering it when last assessed (catalog key).
    pub excepted: Option<String>,
    /// Times it closed and came back.
    pub reopened: u32,
}

impl HistoryEntry {
    /// Time to remediate, once closed.
    pub fn remediation_ms(&self) -> Option<u64> {
        self.closed_at.map(|c| c.0.saturating_sub(self.first_seen.0))
    }
    /// Closed by its due date (or open and not yet due); `None` without a due date.
    pub fn sla_met(&self, now: Millis) -> Option<bool> {
        let due = self.due_at?;
        Some(self.closed_at.unwrap_or(now) <= due)
    }
}

/// A change to the history, for the audit log.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A finding opened (or reopened).
    Opened(HistoryEntry),
    /// A finding closed.
    Closed(HistoryEntry),
}

/// The findings history of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    entries: BTreeMap<(String, String), HistoryEntry>,
}

impl History {
    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = &HistoryEntry> {
        self.entries.values()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Updates from a fresh assessment at `now`: exposed findings not open yet open, open ones
    /// no longer exposed close with the version now installed (`installed(source)`).
    pub fn update(
        &mut self,
        findings: &[Assessed],
        installed: impl Fn(&str) -> Option<String>,
        now: Millis,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut exposed = std::collections::BTreeSet::new();
        for a in findings.iter().filter(|a| a.finding.verdict.exposed()) {
            let f = &a.finding;
            let key = (f.cve.clone(), f.source.clone());
            exposed.insert(key.clone());
            let fixed_version = match &f.verdict {
                super::matching::Verdict::Affected { fixed_version, .. } => {
                    Some(fixed_version.clone())
                }
                _ => None,
            };
            let excepted = f.excepted.as_ref().map(|e| e.key.clone());
            match self.entries.get_mut(&key) {
                Some(e) if e.closed_at.is_none() => {
                    e.excepted = excepted;
                    e.due_at = a.risk.due_at.or(e.due_at);
                    e.fixed_version = fixed_version.or(e.fixed_version.take());
                    e.fix_seen_at = f.fix_seen_at.or(e.fix_seen_at);
                }
                prior => {
                    let reopened = prior.map_or(0, |p| p.reopened + 1);
                    let entry = HistoryEntry {
                        cve: f.cve.clone(),
                        source: f.source.clone(),
                        binaries: f.binaries.clone(),
                        installed: f.source_version.clone(),
                        fixed_version,
                        fix_seen_at: f.fix_seen_at,
                        first_seen: now,
                        due_at: a.risk.due_at,
                        due: a.risk.due,
                        severity: a.risk.severity(),
                        kev: a.info.as_ref().is_some_and(|i| i.kev.is_some()),
                        closed_at: None,
                        closed_version: None,
                        excepted,
                        reopened,
                    };
                    changes.push(Change::Opened(entry.clone()));
                    self.entries.insert(key, entry);
                }
            }
        }
        for (key, e) in self.entries.iter_mut() {
            if e.closed_at.is_none() && !exposed.contains(key) {
                e.closed_at = Some(now);
                e.closed_version = installed(&e.source);
                changes.push(Change::Closed(e.clone()));
            }
        }
        self.bound();
        changes
    }

    fn bound(&mut self) {
        if self.entries.len() <= HISTORY_ENTRIES_MAX {
            return;
        }
        let mut closed: Vec<(Millis, (String, String))> =
            self.entries.iter().filter_map(|(k, e)| e.closed_at.map(|c| (c, k.clone()))).collect();
        closed.sort();
        for (_, k) in closed.into_iter().take(self.entries.len() - HISTORY_ENTRIES_MAX) {
            self.entries.remove(&k);
        }
    }
}
