//! # Vulnerability intelligence: which CVEs hit which endpoints, how urgently, what fixes them
//!
//! Everything here is sans-IO, so every node and the simulator compute the same answer.
//!
//! - An **intel bundle** ([`bundle`]) is the normalised form of the admin's sources (the Debian
//!   Security Tracker, OSV records, CISA KEV, FIRST EPSS and apt `Packages` indexes): a stream of
//!   length-prefixed frames, compressed, addressed by its BLAKE3 content id and moved like a
//!   patch payload. A node never holds the whole bundle: it streams it once and keeps the
//!   [`matching::NodeIndex`] of what applies to its own release and source packages.
//! - **Matching** ([`matching`]) gives one verdict per (CVE, source package) with Debian's
//!   semantics, on the *source* package and *source* version of what is installed (81% of the
//!   binaries of a stock Debian 12 image have another source name): versions compare exactly as
//!   dpkg does ([`crate::rollout::target::compare_versions`]), the node's release scopes every
//!   look-up, and OSV ranges are evaluated per the OSV schema.
//! - **Risk** ([`risk`]) turns a finding into a due class and a 0–100 rank score, with every
//!   number's arithmetic kept for `patchmesh explain`.
//! - **Updates** ([`apt`]) names, per installed (name, arch), the candidate version apt would
//!   install from the imported indexes.

pub mod apt;
pub mod bundle;
pub mod exception;
pub mod history;
pub mod matching;
pub mod report;
pub mod risk;

use crate::ids::Millis;
use serde::{Deserialize, Serialize};

/// The Debian and Ubuntu release codenames the numbered OSV ecosystems name (`Debian:12` is
/// bookworm). Tracker records are keyed by codename already.
const RELEASES: &[(&str, &str)] = &[
    ("Debian:9", "stretch"),
    ("Debian:10", "buster"),
    ("Debian:11", "bullseye"),
    ("Debian:12", "bookworm"),
    ("Debian:13", "trixie"),
    ("Debian:14", "forky"),
    ("Ubuntu:18.04", "bionic"),
    ("Ubuntu:20.04", "focal"),
    ("Ubuntu:22.04", "jammy"),
    ("Ubuntu:24.04", "noble"),
    ("Ubuntu:24.10", "oracular"),
    ("Ubuntu:25.04", "plucky"),
];

/// The release codename of an OSV ecosystem string (`Debian:12`, `Ubuntu:22.04:LTS`), or `None`
/// for an ecosystem we do not scope (those records are skipped at import, and counted).
pub fn release_of_ecosystem(ecosystem: &str) -> Option<&'static str> {
    let mut parts = ecosystem.splitn(3, ':');
    let key = format!("{}:{}", parts.next()?, parts.next()?);
    RELEASES.iter().find(|(e, _)| *e == key).map(|(_, r)| *r)
}

/// Whether `codename` is a Debian or Ubuntu release this code scopes by.
pub fn known_release(codename: &str) -> bool {
    RELEASES.iter().any(|(_, r)| *r == codename)
        || matches!(codename, "sid" | "unstable" | "experimental")
}

/// The release an index of a third-party suite (`nodistro`, `cloud-sdk-bookworm`) applies to:
/// every release, as apt uses such a suite on whatever machine lists it.
pub const ANY_RELEASE: &str = "*";

/// The base release of an apt suite codename: `bookworm-security`, `bookworm-updates` and
/// `bookworm-backports` all belong to `bookworm`.
pub fn base_release(codename: &str) -> &str {
    for suffix in ["-security", "-updates", "-backports-sloppy", "-backports", "-proposed-updates"]
    {
        if let Some(base) = codename.strip_suffix(suffix) {
            return base;
        }
    }
    codename
}

/// Where a verdict came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Origin {
    /// The Debian Security Tracker (the source of truth for Debian).
    Tracker,
    /// An OSV record, by its id (`DSA-5555-1`, `CVE-…`, `UBUNTU-CVE-…`).
    Osv(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Tracker => f.write_str("Debian Security Tracker"),
            Origin::Osv(id) => write!(f, "OSV {id}"),
        }
    }
}

/// The tracker's status of a (release, source, CVE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TrackerStatus {
    /// Fixed at `fixed_version` ("0": the release was never affected).
    Resolved,
    /// Affected, no fix in the release yet.
    Open,
    /// Not yet known whether the release is affected.
    Undetermined,
}

/// The tracker's urgency; `Unimportant` findings are kept but ranked last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Urgency {
    /// Not a security problem in practice (e.g. only in test code).
    Unimportant,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Not yet assigned, end-of-life or anything else.
    Unassigned,
}

impl Urgency {
    /// Parses the tracker's urgency (`low`, `medium**` — stars mark a guess — `unimportant`, …).
    pub fn parse(s: &str) -> Urgency {
        match s.trim_end_matches('*') {
            "unimportant" => Urgency::Unimportant,
            "low" => Urgency::Low,
            "medium" => Urgency::Medium,
            "high" => Urgency::High,
            _ => Urgency::Unassigned,
        }
    }
}

/// One OSV range event (ECOSYSTEM ranges, in the order the record lists them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Affected from this version on ("0": from the first version).
    Introduced(String),
    /// Not affected from this version on.
    Fixed(String),
    /// Affected up to and including this version.
    LastAffected(String),
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Introduced(v) => write!(f, "introduced {v}"),
            Event::Fixed(v) => write!(f, "fixed {v}"),
            Event::LastAffected(v) => write!(f, "last affected {v}"),
        }
    }
}

/// What one source says about one (release, source package, CVE).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Statement {
    /// A Debian Security Tracker entry.
    Tracker {
        /// The status.
        status: TrackerStatus,
        /// The fixed version, when resolved ("0": never affected).
        fixed_version: Option<String>,
        /// The urgency.
        urgency: Urgency,
        /// Why no advisory is issued (`postponed`, `ignored`, the `nodsa` text), kept verbatim.
        nodsa: Option<String>,
        /// The fixed version is published in the release's `-security` suite.
        fixed_in_security: bool,
    },
    /// An OSV record's affected ranges for this package.
    Osv {
        /// ECOSYSTEM range events, one list per range.
        ranges: Vec<Vec<Event>>,
        /// Versions listed as affected explicitly.
        versions: Vec<String>,
    },
}

/// One advisory on one source package of one release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advisory {
    /// The CVE id (OSV records are filed under their CVE alias when they have one).
    pub cve: String,
    /// Where it came from.
    pub origin: Origin,
    /// What it says.
    pub statement: Statement,
    /// When the fix first appeared in an imported bundle (the bundle history; the due date runs
    /// from here), if known.
    pub fix_seen_at: Option<Millis>,
}

/// CISA Known Exploited Vulnerabilities catalog facts about a CVE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kev {
    /// `dateAdded` (YYYY-MM-DD).
    pub date_added: String,
    /// `dueDate` for US federal agencies (YYYY-MM-DD).
    pub due_date: String,
    /// `knownRansomwareCampaignUse` is "Known".
    pub ransomware: bool,
}

/// What the bundle knows about a CVE beyond per-package statements.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CveInfo {
    /// The CVE id.
    pub cve: String,
    /// Short description (truncated at import).
    pub description: String,
    /// A CVSS v3.x base vector that parsed at import.
    pub cvss3: Option<String>,
    /// A CVSS v4.0 vector that parsed at import.
    pub cvss4: Option<String>,
    /// In the KEV catalog.
    pub kev: Option<Kev>,
    /// EPSS probability and percentile, both in [0, 1].
    pub epss: Option<(f32, f32)>,
}

/// One installed binary package as matching sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Installed {
    /// Binary package name.
    pub name: String,
    /// Architecture.
    pub arch: String,
    /// Binary version.
    pub version: String,
    /// Source package name (dpkg's `Source:`, or the binary name when absent).
    pub source: String,
    /// Source version (in parentheses in `Source:` when it differs, else the binary version).
    pub source_version: String,
}

impl Installed {
    /// From dpkg's fields: `source_field` is the `Source:` value, if any (`util-linux
    /// (2.38.1-5)` or `openssl`).
    pub fn from_dpkg(
        name: &str,
        arch: &str,
        version: &str,
        source_field: Option<&str>,
    ) -> Installed {
        let (source, source_version) = match source_field.map(str::trim).filter(|s| !s.is_empty()) {
            None => (name.to_string(), version.to_string()),
            Some(s) => match s.split_once('(') {
                Some((n, v)) => (n.trim().to_string(), v.trim_end_matches(')').trim().to_string()),
                None => (s.to_string(), version.to_string()),
            },
        };
        Installed {
            name: name.into(),
            arch: arch.into(),
            version: version.into(),
            source,
            source_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_source_field_gives_source_name_and_version() {
        let b = Installed::from_dpkg(
            "bsdutils",
            "amd64",
            "1:2.38.1-5+deb12u3",
            Some("util-linux (2.38.1-5+deb12u3)"),
        );
        assert_eq!(
            (b.source.as_str(), b.source_version.as_str()),
            ("util-linux", "2.38.1-5+deb12u3")
        );
        let n = Installed::from_dpkg("libssl3", "amd64", "3.0.15-1~deb12u1", Some("openssl"));
        assert_eq!((n.source.as_str(), n.source_version.as_str()), ("openssl", "3.0.15-1~deb12u1"));
        let same = Installed::from_dpkg("bash", "amd64", "5.2.15-2+b7", Some("bash (5.2.15-2)"));
        assert_eq!(same.source_version, "5.2.15-2", "a binNMU's source version has no +bN");
        let none = Installed::from_dpkg("curl", "amd64", "7.88.1-10+deb12u8", None);
        assert_eq!(
            (none.source.as_str(), none.source_version.as_str()),
            ("curl", "7.88.1-10+deb12u8")
        );
    }

    #[test]
    fn releases_are_scoped_by_codename() {
        assert_eq!(release_of_ecosystem("Debian:12"), Some("bookworm"));
        assert_eq!(release_of_ecosystem("Ubuntu:22.04:LTS"), Some("jammy"));
        assert_eq!(release_of_ecosystem("PyPI"), None);
        assert_eq!(base_release("bookworm-security"), "bookworm");
        assert_eq!(base_release("trixie"), "trixie");
    }
}
