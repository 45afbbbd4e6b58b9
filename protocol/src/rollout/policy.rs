//! What an admin signs about a rollout: target selector, rings with gates, maintenance windows,
//! deadline and limits. Every type here travels inside catalog entries, so every field is
//! bounded by [`RolloutEntry::validate`] before a node acts on it.

use crate::ids::{ContentId, Millis, RolloutId, SiteId};
use crate::limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which nodes a rollout is for. Every clause must hold; an empty clause holds for all nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Selector {
    /// Labels the node's admission certificate must carry (all of them).
    pub labels: BTreeMap<String, String>,
    /// Sites the node must be in (any of them); empty = every site.
    pub sites: Vec<SiteId>,
    /// Substring the node's operating system name must contain (e.g. `Debian`).
    pub os: Option<String>,
    /// Installed-package predicates (all of them), e.g. `openssl < 3.0.11`.
    pub packages: Vec<PackagePredicate>,
}

/// A predicate on an installed package's version, compared the way dpkg compares versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackagePredicate {
    /// Binary package name, or `src:NAME` for a source package at its lowest installed source
    /// version (what vulnerability data is keyed by).
    pub name: String,
    /// Comparison.
    pub op: VersionOp,
    /// Version to compare with (ignored for `Installed` and `Absent`).
    pub version: String,
}

/// A version comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionOp {
    /// Installed and older.
    Lt,
    /// Installed and older or equal.
    Le,
    /// Installed at exactly this version.
    Eq,
    /// Installed and newer or equal.
    Ge,
    /// Installed and newer.
    Gt,
    /// Installed at any version.
    Installed,
    /// Not installed.
    Absent,
}

/// When a ring may be promoted past, and when it halts the rollout.
///
/// Fractions are in per mille so the policy has one exact encoding and every node computes the
/// same verdict with integer arithmetic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// Succeeded members needed, per mille of the ring's targeted members.
    pub min_success_permille: u16,
    /// More failed members than this halts the rollout.
    pub max_failures: u32,
    /// Failed members above this per mille of the ring's targeted members block promotion, and
    /// halt once every targeted member has reported.
    pub max_failure_permille: u16,
    /// Each member soaks this long after its install verified (re-verifying) before it counts
    /// as succeeded.
    pub min_soak_ms: u64,
    /// Succeeded members needed at least, whatever the fraction.
    pub min_reports: u32,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            min_success_permille: 900,
            max_failures: 0,
            max_failure_permille: 0,
            min_soak_ms: 60_000,
            min_reports: 1,
        }
    }
}

/// A ring of a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingSpec {
    /// Ring name (e.g. `canary`).
    pub name: String,
    /// Cumulative percentile of the targeted fleet this ring reaches (0..=100).
    pub percent: u8,
    /// Nodes with all these labels belong to this ring whatever their percentile.
    pub labels: BTreeMap<String, String>,
    /// The gate this ring must pass before the next ring starts.
    pub gate: Gate,
}

/// A weekly maintenance window in the node's own time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Days the window opens, bit 0 = Monday … bit 6 = Sunday.
    pub days: u8,
    /// Opening time, minutes after local midnight.
    pub start_minute: u16,
    /// Length; a window may run past midnight into the next day.
    pub duration_minutes: u16,
}

/// A rollout of one patch through rings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEntry {
    /// The rollout id.
    pub id: RolloutId,
    /// The patch it rolls out (a `patch/<id>` catalog entry).
    pub content_id: ContentId,
    /// Which nodes it is for.
    pub target: Selector,
    /// Rings in order; the first is the canary ring.
    pub rings: Vec<RingSpec>,
    /// Maintenance windows; empty = any time.
    pub windows: Vec<Window>,
    /// After this time windows no longer hold installs back (critical patches).
    pub deadline: Option<Millis>,
    /// Installs of this rollout running at once in one site: members fetching, staging,
    /// installing, verifying or rolling back. A member that passed verification and soaks
    /// no longer holds a slot (what the limit protects is the site's capacity while machines
    /// install and restart; the soak is judged per ring by the gate).
    pub max_concurrent_per_site: u32,
    /// The most nodes this rollout may reach; more than the mesh's approval limit needs k-of-n
    /// admin approvals.
    ///
    /// What it guarantees: a node starts only while the members it knows to have started (its
    /// site's records and the other sites' summaries), plus the live members of its site that
    /// rank before it, are fewer than this. Within one site that is exact. Across sites it is
    /// not, and no rule without a coordinator could make it so: sites that start at the same
    /// time each see the others' starts only one summary round later, so the count can pass
    /// the limit by the installs other sites started within that round (at most
    /// `max_concurrent_per_site` each), and sites cut off from each other each spend what was
    /// left when the partition began. Set it with that margin in mind, or use the approval
    /// threshold (k of n admins) as the hard limit on reach.
    pub max_targets: u32,
    /// Whether nodes that installed it roll back when the rollout halts.
    pub rollback_on_halt: bool,
    /// Re-verification period while soaking.
    pub recheck_ms: u64,
    /// When an admin created it (admin clock).
    pub created_at: Millis,
    /// `--window auto`: each node installs in its own quiet hours (learnt from its activity;
    /// see [`crate::rollout::activity`]), within `windows` when there are any.
    pub auto_window: bool,
}

/// What the people at a targeted machine may do about its install: put it off up to `max`
/// times by `each_ms` (`patchmesh defer` on the machine), never past the rollout's deadline.
/// Published with the rollout by its author (under `deferrals/<rollout id>`); nodes honour it
/// only from the rollout's own author.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferrals {
    /// The rollout.
    pub rollout: RolloutId,
    /// Deferrals allowed per machine.
    pub max: u8,
    /// How long each puts the install off.
    pub each_ms: u64,
}

impl Deferrals {
    /// Most deferrals a rollout may allow.
    pub const MAX: u8 = 20;

    /// The catalog key.
    pub fn key(&self) -> String {
        format!("deferrals/{}", self.rollout)
    }

    /// Within bounds: 1..=20 deferrals of one minute to seven days each.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max == 0 || self.max > Self::MAX {
            return Err(PolicyError::Invalid(format!("deferrals must be 1..={}", Self::MAX)));
        }
        if !(60_000..=7 * 86_400_000).contains(&self.each_ms) {
            return Err(PolicyError::Invalid("each deferral lasts 1 minute to 7 days".into()));
        }
        Ok(())
    }
}

/// Why a rollout policy is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Too many rings, windows, labels or predicates, or a text field too long.
    #[error("rollout policy too large: {0}")]
    TooLarge(&'static str),
    /// A value out of range.
    #[error("invalid rollout policy: {0}")]
    Invalid(String),
}

impl RolloutEntry {
    /// Checks every bound and range; nodes ignore a rollout that fails this.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let text = |s: &str| s.len() <= limits::TEXT_BYTES_MAX;
        if self.rings.is_empty() {
            return Err(PolicyError::Invalid("a rollout needs at least one ring".into()));
        }
        if self.rings.len() > limits::RINGS_PER_ROLLOUT_MAX {
            return Err(PolicyError::TooLarge("rings"));
        }
        if self.windows.len() > limits::WINDOWS_PER_ROLLOUT_MAX {
            return Err(PolicyError::TooLarge("windows"));
        }
        let t = &self.target;
        if t.labels.len() > limits::LABELS_PER_NODE_MAX
            || t.sites.len() > limits::SITES_PER_SELECTOR_MAX
            || t.packages.len() > limits::PREDICATES_PER_SELECTOR_MAX
        {
            return Err(PolicyError::TooLarge("target selector"));
        }
        if !t.packages.iter().all(|p| text(&p.name) && text(&p.version))
            || !t.os.as_deref().is_none_or(text)
            || !t.labels.iter().all(|(k, v)| text(k) && text(v))
        {
            return Err(PolicyError::TooLarge("selector text"));
        }
        let mut last = 0u8;
        for ring in &self.rings {
            if !text(&ring.name) || ring.labels.len() > limits::LABELS_PER_NODE_MAX {
                return Err(PolicyError::TooLarge("ring"));
            }
            if ring.percent > 100 || ring.percent < last {
                return Err(PolicyError::Invalid(format!(
                    "ring {} percent {} must be cumulative, 0..=100",
                    ring.name, ring.percent
                )));
            }
            last = ring.percent;
            let g = &ring.gate;
            if g.min_success_permille > 1000 || g.max_failure_permille > 1000 {
                return Err(PolicyError::Invalid(format!(
                    "ring {} gate per mille > 1000",
                    ring.name
                )));
            }
        }
        for w in &self.windows {
            if w.days & 0x7f == 0 || w.days & 0x80 != 0 {
                return Err(PolicyError::Invalid("window days".into()));
            }
            if w.start_minute >= 24 * 60
                || w.duration_minutes == 0
                || w.duration_minutes > 7 * 24 * 60
            {
                return Err(PolicyError::Invalid("window time".into()));
            }
        }
        if self.max_concurrent_per_site == 0 {
            return Err(PolicyError::Invalid("max_concurrent_per_site must be at least 1".into()));
        }
        Ok(())
    }
}

/// What an admin command does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandAction {
    /// Stop starting new installs until a later resume.
    Pause,
    /// Undo pauses issued before it; with `overrides`, also lift the named abort or halt.
    Resume {
        /// The abort or halt this resume lifts, if any.
        overrides: Option<Override>,
    },
    /// Stop for good and roll back every install of the rollout.
    Abort,
    /// Count towards the approval threshold of exactly this rollout content.
    Approve {
        /// Hash of the rollout entry approved (so a changed rollout needs approving again).
        rollout_hash: [u8; 32],
    },
}

/// A halt or abort a resume names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Override {
    /// The abort command with this catalog key.
    Abort(String),
    /// The halt of `ring`: the admin accepts the first `failures` failures of that ring, so
    /// only further failures count against its gate.
    Halt {
        /// Ring index.
        ring: u8,
        /// Failures accepted.
        failures: u32,
    },
}

/// A signed admin command about a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCommand {
    /// The rollout it is about.
    pub rollout: RolloutId,
    /// What to do.
    pub action: CommandAction,
    /// When it was issued (admin clock); later commands win between pause and resume.
    pub issued_at: Millis,
    /// The admin who issued it; must be the key that signed the catalog change.
    pub admin: crate::ids::KeyId,
}

/// Parses a window such as `mon-fri 22:00-04:00`, `sat,sun 01:00-05:00` or `* 00:00-24:00`.
pub fn parse_window(text: &str) -> Result<Window, PolicyError> {
    let bad = |why: &str| PolicyError::Invalid(format!("window {text:?}: {why}"));
    let (days_text, times) =
        text.trim().split_once(' ').ok_or_else(|| bad("expected `DAYS HH:MM-HH:MM`"))?;
    let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let day = |s: &str| {
        names.iter().position(|n| s.eq_ignore_ascii_case(n)).ok_or_else(|| bad("unknown day"))
    };
    let mut days = 0u8;
    for part in days_text.split(',') {
        if part == "*" {
            days = 0x7f;
        } else if let Some((a, b)) = part.split_once('-') {
            let (a, b) = (day(a)?, day(b)?);
            let mut d = a;
            loop {
                days |= 1 << d;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        } else {
            days |= 1 << day(part)?;
        }
    }
    let minute = |s: &str| -> Result<u16, PolicyError> {
        let (h, m) = s.split_once(':').ok_or_else(|| bad("time is HH:MM"))?;
        let (h, m): (u16, u16) =
            (h.parse().map_err(|_| bad("hour"))?, m.parse().map_err(|_| bad("minute"))?);
        if m >= 60 || h > 24 || (h == 24 && m != 0) {
            return Err(bad("time out of range"));
        }
        Ok(h * 60 + m)
    };
    let (a, b) = times.trim().split_once('-').ok_or_else(|| bad("expected HH:MM-HH:MM"))?;
    let (start, end) = (minute(a)?, minute(b)?);
    if start >= 24 * 60 {
        return Err(bad("a window cannot open at 24:00"));
    }
    let duration = if end > start { end - start } else { end + 24 * 60 - start };
    Ok(Window { days, start_minute: start, duration_minutes: duration })
}

/// The window as [`parse_window`] reads it (`mon,tue 22:00-04:00`, `* 01:00-05:00`).
impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let days: Vec<&str> = NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.days & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect();
        let end = (u32::from(self.start_minute) + u32::from(self.duration_minutes)) % (24 * 60);
        write!(
            f,
            "{} {:02}:{:02}-{:02}:{:02}",
            if self.days & 0x7f == 0x7f { "*".to_string() } else { days.join(",") },
            self.start_minute / 60,
            self.start_minute % 60,
            end / 60,
            end % 60
        )
    }
}

/// Parses a package predicate such as `openssl < 3.0.11`, `curl installed` or `telnet absent`.
pub fn parse_predicate(text: &str) -> Result<PackagePredicate, PolicyError> {
    let bad = |why: &str| PolicyError::Invalid(format!("package predicate {text:?}: {why}"));
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (name, op, version) = match parts.as_slice() {
        [name, "installed"] => (*name, VersionOp::Installed, ""),
        [name, "absent"] => (*name, VersionOp::Absent, ""),
        [name, op, version] => {
            let op = match *op {
                "<" => VersionOp::Lt,
                "<=" => VersionOp::Le,
                "=" | "==" => VersionOp::Eq,
                ">=" => VersionOp::Ge,
                ">" => VersionOp::Gt,
                _ => return Err(bad("operator is one of < <= = >= >")),
            };
            (*name, op, *version)
        }
        _ => return Err(bad("expected `NAME OP VERSION`, `NAME installed` or `NAME absent`")),
    };
    Ok(PackagePredicate { name: name.to_string(), op, version: version.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        let w = parse_window("mon-fri 22:00-04:00").unwrap();
        assert_eq!((w.days, w.start_minute, w.duration_minutes), (0b001_1111, 22 * 60, 6 * 60));
        let w = parse_window("sat,sun 01:00-05:30").unwrap();
        assert_eq!((w.days, w.duration_minutes), (0b110_0000, 270));
        assert_eq!(parse_window("* 00:00-24:00").unwrap().duration_minutes, 24 * 60);
        assert_eq!(parse_window("fri-mon 10:00-11:00").unwrap().days, 0b111_0001);
        for bad in
            ["", "mon", "xyz 01:00-02:00", "mon 25:00-26:00", "mon 01:60-02:00", "mon 24:00-01:00"]
        {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn windows_print_as_they_parse() {
        for text in ["mon,tue,wed,thu,fri 22:00-04:00", "sat,sun 01:00-05:30", "* 00:00-00:00"] {
            let w = parse_window(text).unwrap();
            assert_eq!(w.to_string(), text);
            assert_eq!(parse_window(&w.to_string()).unwrap(), w);
        }
        assert_eq!(
            parse_window("fri-mon 10:00-11:00").unwrap().to_string(),
            "mon,fri,sat,sun 10:00-11:00"
        );
    }

    #[test]
    fn predicates_parse() {
        let p = parse_predicate("openssl < 3.0.11").unwrap();
        assert_eq!(
            (p.name.as_str(), p.op, p.version.as_str()),
            ("openssl", VersionOp::Lt, "3.0.11")
        );
        assert_eq!(parse_predicate("telnet absent").unwrap().op, VersionOp::Absent);
        assert!(parse_predicate("openssl ~ 1").is_err());
        assert!(parse_predicate("openssl").is_err());
    }
}
