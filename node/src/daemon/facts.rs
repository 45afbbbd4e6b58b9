//! What the machine is: its inventory (re-read now and then; a change re-signs the record)
//! and the facts rollout selectors and windows read.

use super::*;
use std::collections::BTreeMap;

pub(super) fn read_inventory(root: &Path) -> Inventory {
    match inventory::collect(&inventory::Sources { root }) {
        Ok(inv) => inv,
        Err(e) => {
            tracing::warn!(error = %e, "inventory could not be read; reporting none");
            Inventory {
                hostname: "unknown".into(),
                os: "unknown".into(),
                codename: String::new(),
                kernel: "unknown".into(),
                arch: std::env::consts::ARCH.into(),
                cpus: 1,
                memory_bytes: 0,
                packages: Vec::new(),
            }
        }
    }
}

/// Free space (bytes available to this user) on the filesystem of `dir`, rounded down to a
/// step ([`patchmesh_protocol::site::round_free_disk`]); `None` when it cannot be read.
pub(super) fn free_disk(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let bytes = u64::from(s.blocks_available()).saturating_mul(s.fragment_size());
    Some(patchmesh_protocol::site::round_free_disk(bytes))
}

impl Daemon {
    /// The record's inventory: the machine's, and its free disk space.
    pub(super) fn inventory_summary(&self) -> patchmesh_protocol::site::InventorySummary {
        let mut s = self.inventory.summary();
        s.free_disk_bytes = self.free_disk;
        s
    }

    pub(super) fn refresh_inventory(&mut self) {
        let inv = read_inventory(&self.cfg.inventory_root);
        let changed = inv.summary() != self.inventory.summary();
        self.inventory = inv;
        let free = free_disk(&self.cfg.data_dir);
        let free_changed = free != self.free_disk;
        self.free_disk = free;
        if changed || free_changed {
            let summary = self.inventory_summary();
            tracing::info!(
                packages = summary.package_count,
                free_disk_bytes = summary.free_disk_bytes,
                "inventory changed; re-signing record"
            );
            self.input(Input::Command(Command::UpdateRecord { inventory: summary }));
        }
        if changed {
            self.set_facts();
            self.check_intel(true);
        } else {
            // Exceptions lapse with time: re-assess when the set in force changed.
            self.reassess_if_exceptions_changed();
        }
    }

    /// Tells the core what rollout selectors and windows read: OS, packages, time zone.
    pub(super) fn set_facts(&mut self) {
        let facts = self.facts();
        self.input(Input::Command(Command::SetFacts(facts)));
    }

    /// What selectors read about this machine.
    pub(super) fn facts(&self) -> patchmesh_protocol::rollout::Facts {
        let tz = match &self.cfg.time_zone {
            Some(name) => jiff::tz::TimeZone::get(name).unwrap_or_else(|e| {
                tracing::warn!(zone = %name, error = %e, "unknown time zone; using UTC");
                jiff::tz::TimeZone::UTC
            }),
            None => jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC),
        };
        let mut packages: BTreeMap<String, String> = self
            .inventory
            .packages
            .iter()
            .filter(|p| p.status == "installed")
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect();
        // Source packages as `src:NAME` (a binary name never holds a colon), at the lowest
        // source version installed: a remediation's `src:openssh < FIX` reaches a node while any
        // binary built from an older openssh remains.
        for p in self.inventory.installed() {
            let key = format!("src:{}", p.source);
            let lower = packages.get(&key).is_none_or(|v| {
                patchmesh_protocol::rollout::target::compare_versions(&p.source_version, v).is_lt()
            });
            if lower {
                packages.insert(key, p.source_version);
            }
        }
        let quiet = self.activity.quiet_hours();
        patchmesh_protocol::rollout::Facts { os: self.inventory.os.clone(), packages, tz, quiet }
    }

    /// Samples how busy the machine is into its activity histogram (hour of the week in its
    /// own zone); new quiet hours go to the core, and into the node's record.
    pub(super) fn sample_activity(&mut self) {
        let tz = self.facts().tz;
        let Some(hour) = patchmesh_protocol::rollout::activity::hour_of_week(now_ms(), &tz) else {
            return;
        };
        let before = self.activity.quiet_hours();
        let busy = crate::activity::sample(
            &self.cfg.inventory_root,
            self.inventory.cpus,
            std::time::SystemTime::now(),
        );
        self.activity.record(hour, busy);
        let path = self.cfg.data_dir.join("activity.json");
        if let Err(e) = crate::activity::save(&path, &self.activity) {
            tracing::warn!(error = %e, "could not save the activity history");
        }
        let after = self.activity.quiet_hours();
        if after != before {
            tracing::info!(quiet = %after.map(|q| q.describe()).unwrap_or_default(), "quiet hours changed");
            self.set_facts();
        }
    }
}
