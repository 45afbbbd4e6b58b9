//! Available updates: the version `apt` would upgrade each installed package to, given the same
//! index files (`apt list --upgradable`).
//!
//! apt picks a package's candidate by pin priority, then by version. With no pins configured,
//! each suite's priority comes from its Release file (500; 100 with `NotAutomatic: yes` and
//! `ButAutomaticUpgrades: yes`; 1 with `NotAutomatic: yes` alone) and the installed version has
//! 100. A candidate below the installed version is never a downgrade below priority 1000, so:
//! the package is upgradable when the highest-priority versions include one above what is
//! installed.

use super::matching::{Candidate, NodeIndex};
use super::Installed;
use crate::rollout::target::compare_versions;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Priority apt gives the installed version.
const INSTALLED_PRIORITY: u16 = 100;

/// One available update.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Update {
    /// Binary package.
    pub name: String,
    /// Architecture.
    pub arch: String,
    /// Installed version.
    pub installed: String,
    /// The version apt would install.
    pub candidate: String,
    /// The suites offering it (`bookworm-security`, …), sorted.
    pub suites: Vec<String>,
    /// One of those suites is a security suite.
    pub security: bool,
}

/// apt's candidate among `offers` for a package installed at `installed`, if it is an upgrade.
pub fn candidate<'a>(
    installed: &str,
    offers: &'a [Candidate],
) -> Option<(&'a str, Vec<&'a Candidate>)> {
    let top = offers.iter().map(|c| c.priority).max()?;
    let best = offers
        .iter()
        .filter(|c| c.priority == top)
        .max_by(|a, b| compare_versions(&a.version, &b.version))?;
    // Below the installed version's own priority, apt keeps what is installed.
    if top < INSTALLED_PRIORITY || compare_versions(&best.version, installed) != Ordering::Greater {
        return None;
    }
    let same: Vec<&Candidate> = offers
        .iter()
        .filter(|c| compare_versions(&c.version, &best.version) == Ordering::Equal)
        .collect();
    Some((best.version.as_str(), same))
}

/// Every installed package with an upgrade in the index, sorted by name.
pub fn updates(index: &NodeIndex, installed: &[Installed]) -> Vec<Update> {
    let mut out = Vec::new();
    for p in installed {
        let Some(offers) = index.candidates.get(&(p.name.clone(), p.arch.clone())) else {
            continue;
        };
        let Some((version, from)) = candidate(&p.version, offers) else { continue };
        let mut suites: Vec<String> = from.iter().map(|c| c.suite.clone()).collect();
        suites.sort();
        suites.dedup();
        out.push(Update {
            name: p.name.clone(),
            arch: p.arch.clone(),
            installed: p.version.clone(),
            candidate: version.to_string(),
            suites,
            security: from.iter().any(|c| c.security),
        });
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(version: &str, suite: &str, priority: u16) -> Candidate {
        Candidate {
            version: version.into(),
            suite: suite.into(),
            security: suite.ends_with("-security"),
            priority,
        }
    }

    #[test]
    fn the_highest_version_of_the_highest_priority_wins() {
        let offers = [
            offer("1.0-1", "bookworm", 500),
            offer("1.0-1+deb12u1", "bookworm-security", 500),
            offer("2.0-1~bpo12+1", "bookworm-backports", 100),
        ];
        let (v, from) = candidate("1.0-1", &offers).unwrap();
        assert_eq!(v, "1.0-1+deb12u1");
        assert!(from.iter().any(|c| c.security));
        assert_eq!(candidate("1.0-1+deb12u1", &offers), None, "up to date");
    }

    #[test]
    fn a_backport_installed_is_not_downgraded_nor_upgraded_past_stable() {
        let offers =
            [offer("1.0-1", "bookworm", 500), offer("2.1-1~bpo12+1", "bookworm-backports", 100)];
        assert_eq!(candidate("2.0-1~bpo12+1", &offers), None);
        // Only in backports (ButAutomaticUpgrades): upgrades within backports.
        let only = [offer("2.1-1~bpo12+1", "bookworm-backports", 100)];
        assert_eq!(candidate("2.0-1~bpo12+1", &only).unwrap().0, "2.1-1~bpo12+1");
        // NotAutomatic alone (experimental): never a candidate.
        assert_eq!(candidate("1.0", &[offer("9.0", "experimental", 1)]), None);
    }
}
