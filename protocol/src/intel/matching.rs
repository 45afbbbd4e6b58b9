//! Verdicts per (CVE, source package) for one node, from the part of a bundle that applies to
//! it.

use super::bundle::{BundleError, BundleReader, Frame, Header, Peek};
use super::{Advisory, CveInfo, Event, Installed, Origin, Statement, TrackerStatus, Urgency};
use crate::ids::Millis;
use crate::rollout::target::compare_versions;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

/// A version apt could install, from one imported index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The version.
    pub version: String,
    /// The suite it comes from (`bookworm-security`).
    pub suite: String,
    /// The suite is a security suite.
    pub security: bool,
    /// apt's default pin priority for the suite (500, 100 or 1).
    pub priority: u16,
}

/// What a node keeps of a bundle: its own release's advisories on the source packages it has,
/// the facts about the CVEs those name, and the index versions of the binaries it has.
#[derive(Clone, Debug, Default)]
pub struct NodeIndex {
    /// The bundle's header.
    pub header: Option<Header>,
    /// The release the index was built for.
    pub release: String,
    /// Advisories by source package.
    pub advisories: BTreeMap<String, Vec<Advisory>>,
    /// CVE facts by id.
    pub cves: BTreeMap<String, CveInfo>,
    /// Index versions by (binary name, arch).
    pub candidates: BTreeMap<(String, String), Vec<Candidate>>,
    /// Frames decoded in full (the rest were passed over by their first fields).
    pub frames_read: u64,
}

impl NodeIndex {
    /// Streams a bundle and keeps what applies to `release` and `installed`. Memory is bounded
    /// by what applies, not by the bundle.
    pub fn load(
        input: impl Read,
        release: &str,
        installed: &[Installed],
    ) -> Result<NodeIndex, BundleError> {
        let sources: BTreeSet<&str> = installed.iter().map(|p| p.source.as_str()).collect();
        let binaries: BTreeSet<(&str, &str)> =
            installed.iter().map(|p| (p.name.as_str(), p.arch.as_str())).collect();
        Self::load_where(input, release, |s| sources.contains(s), |n, a| binaries.contains(&(n, a)))
    }

    /// Streams a bundle and keeps every advisory of `release` (a fleet view), without indexes.
    pub fn load_release(input: impl Read, release: &str) -> Result<NodeIndex, BundleError> {
        Self::load_where(input, release, |_| true, |_, _| false)
    }

    fn load_where(
        input: impl Read,
        release: &str,
        keep_source: impl Fn(&str) -> bool,
        keep_binary: impl Fn(&str, &str) -> bool,
    ) -> Result<NodeIndex, BundleError> {
        let (header, mut reader) = BundleReader::open(input)?;
        let mut named: BTreeSet<String> = BTreeSet::new();
        let mut index =
            NodeIndex { header: Some(header), release: release.to_string(), ..Default::default() };
        loop {
            let want = |p: &Peek<'_>| match p {
                Peek::Header => false,
                Peek::Source { release: r, source } => *r == release && keep_source(source),
                Peek::Cve { cve } => named.contains(*cve),
                Peek::Index { release: r } => *r == release || *r == super::ANY_RELEASE,
            };
            let Some(frame) = reader.next_frame_where(want)? else { break };
            let Some(frame) = frame else { continue };
            index.frames_read += 1;
            match frame {
                Frame::Header(_) => {}
                Frame::Source { release: r, source, advisories } => {
                    if r == release && keep_source(&source) {
                        named.extend(advisories.iter().map(|a| a.cve.clone()));
                        index.advisories.entry(source).or_default().extend(advisories);
                    }
                }
                Frame::Cve(info) => {
                    if named.contains(&info.cve) {
                        index.cves.insert(info.cve.clone(), info);
                    }
                }
                Frame::Index(chunk) => {
                    if chunk.release != release && chunk.release != super::ANY_RELEASE {
                        continue;
                    }
                    for (name, arch, version) in chunk.packages {
                        if keep_binary(&name, &arch) {
                            index.candidates.entry((name, arch)).or_default().push(Candidate {
                                version,
                                suite: chunk.suite.clone(),
                                security: chunk.security,
                                priority: chunk.priority,
                            });
                        }
                    }
                }
            }
        }
        Ok(index)
    }
}

/// The verdict of one source on one (CVE, source package, installed source version).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// Affected; a fix exists at this version.
    Affected {
        /// The first version with the fix.
        fixed_version: String,
        /// The fix is in the release's `-security` suite.
        in_security: bool,
    },
    /// Affected; no fix in the release yet (the tracker's `nodsa`/`postponed`/`ignored` text
    /// kept).
    Open {
        /// Why no advisory, if stated.
        reason: Option<String>,
    },
    /// Not yet known whether the release is affected.
    Undetermined,
    /// Fixed: the installed version is at or past the fix.
    Fixed {
        /// The fix's version.
        fixed_version: String,
    },
    /// Never affected (`fixed_version` "0", or outside every OSV range).
    NotAffected,
}

impl Verdict {
    /// The node is exposed (affected, open or undetermined).
    pub fn exposed(&self) -> bool {
        matches!(self, Verdict::Affected { .. } | Verdict::Open { .. } | Verdict::Undetermined)
    }

    /// One word for tables.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Affected { .. } => "fix available",
            Verdict::Open { .. } => "no fix yet",
            Verdict::Undetermined => "undetermined",
            Verdict::Fixed { .. } => "fixed",
            Verdict::NotAffected => "not affected",
        }
    }
}

/// One CVE on one installed source package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The CVE.
    pub cve: String,
    /// Source package.
    pub source: String,
    /// Installed source version.
    pub source_version: String,
    /// Installed binaries built from it.
    pub binaries: Vec<String>,
    /// The verdict that counts: the tracker's when it has one (the source of truth for
    /// Debian), else the first OSV record's.
    pub verdict: Verdict,
    /// Where that verdict came from.
    pub origin: Origin,
    /// The tracker's urgency (`Unassigned` for OSV-only findings).
    pub urgency: Urgency,
    /// When the fix first appeared in the bundle history.
    pub fix_seen_at: Option<Millis>,
    /// Other sources whose verdict differs, kept and shown, never merged away.
    pub disagreements: Vec<(Origin, Verdict)>,
    /// The exception covering it, if an admin signed one that has not expired: the finding
    /// stays listed but out of the due counts.
    #[serde(default)]
    pub excepted: Option<super::exception::ExceptionRef>,
}

/// The verdict of one statement on one installed source version.
pub fn judge(statement: &Statement, installed: &str) -> Verdict {
    match statement {
        Statement::Tracker { status, fixed_version, nodsa, fixed_in_security, .. } => {
            match status {
                TrackerStatus::Resolved => match fixed_version.as_deref() {
                    None | Some("0") => Verdict::NotAffected,
                    Some(f) if compare_versions(installed, f) != Ordering::Less => {
                        Verdict::Fixed { fixed_version: f.to_string() }
                    }
                    Some(f) => Verdict::Affected {
                        fixed_version: f.to_string(),
                        in_security: *fixed_in_security,
                    },
                },
                TrackerStatus::Open => Verdict::Open { reason: nodsa.clone() },
                TrackerStatus::Undetermined => Verdict::Undetermined,
            }
        }
        Statement::Osv { ranges, versions } => judge_osv(ranges, versions, installed),
    }
}

/// OSV's evaluation of ECOSYSTEM ranges: walking a range's events in version order, an
/// `introduced` at or below the version turns affected on, a `fixed` at or below it (or a
/// `last_affected` below it) turns it off. A version listed in `versions` is affected.
fn judge_osv(ranges: &[Vec<Event>], versions: &[String], installed: &str) -> Verdict {
    let mut fixed_past: Option<&str> = None;
    for events in ranges {
        let mut sorted: Vec<&Event> = events.iter().collect();
        sorted.sort_by(|a, b| osv_cmp(event_version(a), event_version(b)));
        let mut affected = false;
        let mut next_fix: Option<&str> = None;
        for e in &sorted {
            let v = event_version(e);
            let at_or_below = osv_cmp(v, installed) != Ordering::Greater;
            match e {
                Event::Introduced(_) if at_or_below => affected = true,
                Event::Fixed(_) if at_or_below => {
                    affected = false;
                    fixed_past = Some(v);
                }
                Event::LastAffected(_) if osv_cmp(v, installed) == Ordering::Less => {
                    affected = false
                }
                Event::Fixed(_) if affected && next_fix.is_none() => next_fix = Some(v),
                _ => {}
            }
        }
        if affected {
            return match next_fix {
                Some(f) => Verdict::Affected { fixed_version: f.to_string(), in_security: false },
                None => Verdict::Open { reason: None },
            };
        }
    }
    if versions.iter().any(|v| compare_versions(v, installed) == Ordering::Equal) {
        return Verdict::Open { reason: None };
    }
    match fixed_past {
        Some(f) => Verdict::Fixed { fixed_version: f.to_string() },
        None => Verdict::NotAffected,
    }
}

fn event_version(e: &Event) -> &str {
    match e {
        Event::Introduced(v) | Event::Fixed(v) | Event::LastAffected(v) => v,
    }
}

/// Version order where OSV's `introduced: "0"` is below every version.
fn osv_cmp(a: &str, b: &str) -> Ordering {
    match (a == "0", b == "0") {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => compare_versions(a, b),
    }
}

/// Findings for one installed (source, source version) from that source's advisories: one per
/// CVE, the tracker's verdict counting when present. Pure in its inputs, so a fleet view can
/// compute it once per (release, source, version) and share it among every node that has it.
pub fn match_source(source: &str, source_version: &str, advisories: &[Advisory]) -> Vec<Finding> {
    let mut by_cve: BTreeMap<&str, Vec<&Advisory>> = BTreeMap::new();
    for a in advisories {
        by_cve.entry(a.cve.as_str()).or_default().push(a);
    }
    let mut out = Vec::new();
    for (cve, mut list) in by_cve {
        list.sort_by_key(|a| a.origin.clone());
        let verdicts: Vec<(&Advisory, Verdict)> =
            list.iter().map(|a| (*a, judge(&a.statement, source_version))).collect();
        let (primary, verdict) = &verdicts[0];
        let disagreements: Vec<(Origin, Verdict)> = verdicts[1..]
            .iter()
            .filter(|(_, v)| v.exposed() != verdict.exposed())
            .map(|(a, v)| (a.origin.clone(), v.clone()))
            .collect();
        if !verdict.exposed() && disagreements.is_empty() {
            continue;
        }
        let urgency = match &primary.statement {
            Statement::Tracker { urgency, .. } => *urgency,
            Statement::Osv { .. } => Urgency::Unassigned,
        };
        out.push(Finding {
            cve: cve.to_string(),
            source: source.to_string(),
            source_version: source_version.to_string(),
            binaries: Vec::new(),
            verdict: verdict.clone(),
            origin: primary.origin.clone(),
            urgency,
            fix_seen_at: primary.fix_seen_at,
            disagreements,
            excepted: None,
        });
    }
    out
}

/// Every finding on a node: each installed (source, source version) matched once, with the
/// binaries built from it attached.
pub fn match_node(index: &NodeIndex, installed: &[Installed]) -> Vec<Finding> {
    let mut groups: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for p in installed {
        groups
            .entry((p.source.as_str(), p.source_version.as_str()))
            .or_default()
            .push(p.name.as_str());
    }
    let mut out = Vec::new();
    for ((source, version), binaries) in groups {
        let Some(advisories) = index.advisories.get(source) else { continue };
        for mut f in match_source(source, version, advisories) {
            f.binaries = binaries.iter().map(|b| b.to_string()).collect();
            out.push(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(status: TrackerStatus, fixed: Option<&str>, nodsa: Option<&str>) -> Statement {
        Statement::Tracker {
            status,
            fixed_version: fixed.map(str::to_string),
            urgency: Urgency::Medium,
            nodsa: nodsa.map(str::to_string),
            fixed_in_security: true,
        }
    }

    #[test]
    fn tracker_semantics() {
        use TrackerStatus::*;
        assert_eq!(judge(&tracker(Resolved, Some("0"), None), "1.0-1"), Verdict::NotAffected);
        assert_eq!(
            judge(&tracker(Resolved, Some("2.38.1-5+deb12u3"), None), "2.38.1-5+deb12u3"),
            Verdict::Fixed { fixed_version: "2.38.1-5+deb12u3".into() }
        );
        assert!(matches!(
            judge(&tracker(Resolved, Some("2.38.1-5+deb12u3"), None), "2.38.1-5+deb12u2"),
            Verdict::Affected { in_security: true, .. }
        ));
        // Epochs dominate; a `~` sorts before the end of the string (backports, pre-releases).
        assert!(matches!(
            judge(&tracker(Resolved, Some("1:1.0-1"), None), "9.9-1"),
            Verdict::Affected { .. }
        ));
        assert!(matches!(
            judge(&tracker(Resolved, Some("3.0.15-1"), None), "3.0.15-1~deb12u1"),
            Verdict::Affected { .. }
        ));
        assert!(matches!(
            judge(&tracker(Resolved, Some("3.0.15-1~deb12u1"), None), "3.0.15-1~bpo12+1"),
            Verdict::Affected { .. }
        ));
        assert_eq!(
            judge(&tracker(Open, None, Some("postponed")), "1"),
            Verdict::Open { reason: Some("postponed".into()) }
        );
        assert_eq!(judge(&tracker(Undetermined, None, None), "1"), Verdict::Undetermined);
    }

    #[test]
    fn osv_ranges_follow_the_schema() {
        let r = |ev: Vec<Event>| Statement::Osv { ranges: vec![ev], versions: vec![] };
        let intro_fix = r(vec![Event::Introduced("0".into()), Event::Fixed("1.2-1".into())]);
        assert!(
            matches!(judge(&intro_fix, "1.1-1"), Verdict::Affected { ref fixed_version, .. } if fixed_version == "1.2-1")
        );
        assert_eq!(judge(&intro_fix, "1.2-1"), Verdict::Fixed { fixed_version: "1.2-1".into() });
        let last = r(vec![Event::Introduced("1.0".into()), Event::LastAffected("1.5".into())]);
        assert_eq!(judge(&last, "1.5"), Verdict::Open { reason: None });
        assert_eq!(judge(&last, "1.6"), Verdict::NotAffected);
        assert_eq!(judge(&last, "0.9"), Verdict::NotAffected);
        // Two introduced/fixed pairs: the second branch reopens it.
        let two = r(vec![
            Event::Introduced("0".into()),
            Event::Fixed("1.0".into()),
            Event::Introduced("2.0".into()),
            Event::Fixed("2.3".into()),
        ]);
        assert_eq!(judge(&two, "1.5"), Verdict::Fixed { fixed_version: "1.0".into() });
        assert!(
            matches!(judge(&two, "2.1"), Verdict::Affected { ref fixed_version, .. } if fixed_version == "2.3")
        );
    }

    #[test]
    fn disagreeing_sources_are_kept_with_the_tracker_counting() {
        let adv = |origin, statement| Advisory {
            cve: "CVE-1".into(),
            origin,
            statement,
            fix_seen_at: None,
        };
        let list = vec![
            adv(
                Origin::Osv("DSA-1".into()),
                Statement::Osv {
                    ranges: vec![vec![Event::Introduced("0".into())]],
                    versions: vec![],
                },
            ),
            adv(Origin::Tracker, tracker(TrackerStatus::Resolved, Some("1.0-2"), None)),
        ];
        let f = match_source("pkg", "1.0-2", &list);
        assert_eq!(f.len(), 1, "a disagreement is shown even when the tracker says fixed");
        assert_eq!(f[0].origin, Origin::Tracker);
        assert!(!f[0].verdict.exposed());
        assert_eq!(f[0].disagreements.len(), 1);
        let agreed = match_source("pkg", "1.0-1", &list);
        assert!(agreed[0].verdict.exposed() && agreed[0].disagreements.is_empty());
    }
}
