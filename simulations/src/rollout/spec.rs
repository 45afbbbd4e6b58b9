//! The `[rollout]` table of a scenario: the policy an admin would sign (rings, gates, windows,
//! deadline) and the fault model the simulator plays against it (which nodes carry which
//! labels, whose verification fails, how long each install step takes).

use crate::scenario::ScenarioError;
use patchmesh_protocol::catalog::{Gate, RingSpec, RolloutEntry, Selector};
use patchmesh_protocol::ids::{ContentId, Millis, RolloutId};
use patchmesh_protocol::limits;
use patchmesh_protocol::rollout::{parse_window, Action};
use serde::Deserialize;
use std::collections::BTreeMap;

fn d_true() -> bool {
    true
}
fn d_recheck() -> u64 {
    5_000
}
fn d_concurrency() -> u32 {
    5
}
fn d_zones() -> Vec<String> {
    vec!["UTC".to_string()]
}
fn d_fetch() -> u64 {
    1_000
}
fn d_stage() -> u64 {
    300
}
fn d_install() -> u64 {
    1_500
}
fn d_verify() -> u64 {
    500
}
fn d_rollback() -> u64 {
    1_000
}
fn d_jitter() -> f64 {
    0.5
}

/// Gate fields; any left out fall back to the shared `[rollout.gate]`, then to the protocol's
/// [`Gate::default`].
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// Succeeded members needed, per mille of the ring's targeted members.
    pub min_success_permille: Option<u16>,
    /// More failed members than this halts the rollout.
    pub max_failures: Option<u32>,
    /// Failed members above this per mille block promotion (and halt once all reported).
    pub max_failure_permille: Option<u16>,
    /// Soak after a verified install before a member counts as succeeded.
    pub min_soak_ms: Option<u64>,
    /// Succeeded members needed at least.
    pub min_reports: Option<u32>,
}

impl GateSpec {
    fn over(&self, base: &Gate) -> Gate {
        Gate {
            min_success_permille: self.min_success_permille.unwrap_or(base.min_success_permille),
            max_failures: self.max_failures.unwrap_or(base.max_failures),
            max_failure_permille: self.max_failure_permille.unwrap_or(base.max_failure_permille),
            min_soak_ms: self.min_soak_ms.unwrap_or(base.min_soak_ms),
            min_reports: self.min_reports.unwrap_or(base.min_reports),
        }
    }
}

/// One ring as a scenario writes it: `{ name, percent, labels = {..}, <gate fields> }`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RingToml {
    /// Ring name.
    pub name: String,
    /// Cumulative percentile of the targeted fleet (0 for a ring of labelled nodes only).
    #[serde(default)]
    pub percent: u8,
    /// Nodes with all these labels belong to this ring whatever their percentile.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Succeeded members needed, per mille.
    pub min_success_permille: Option<u16>,
    /// Failures tolerated.
    pub max_failures: Option<u32>,
    /// Failures tolerated, per mille.
    pub max_failure_permille: Option<u16>,
    /// Soak.
    pub min_soak_ms: Option<u64>,
    /// Succeeded members needed at least.
    pub min_reports: Option<u32>,
}

impl RingToml {
    fn gate(&self, shared: &Gate) -> Gate {
        GateSpec {
            min_success_permille: self.min_success_permille,
            max_failures: self.max_failures,
            max_failure_permille: self.max_failure_permille,
            min_soak_ms: self.min_soak_ms,
            min_reports: self.min_reports,
        }
        .over(shared)
    }
}

/// A patch rolled out through rings, and the faults it meets.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// When an admin publishes the patch and the rollout (scenario time).
    pub at_ms: u64,
    /// Rings in order; the first is the canary ring.
    pub rings: Vec<RingToml>,
    /// The gate every ring has unless it overrides a field.
    #[serde(default)]
    pub gate: GateSpec,
    /// Only nodes with all these certificate labels are targeted (empty: every node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub target_labels: BTreeMap<String, String>,
    /// The most nodes the rollout may reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_targets: Option<u32>,
    /// `--window auto`: each node installs in its own quiet hours (within `windows`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_window: bool,
    /// Activity profiles given to nodes round-robin, from which each learns its quiet hours:
    /// "office" (busy 9-18 on weekdays), "night-shift" (busy 22-06), "server" (always busy),
    /// "new" (under a week of history: no quiet hours). Empty: no node has quiet hours.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activity: Vec<String>,
    /// Re-verification period while soaking.
    #[serde(default = "d_recheck")]
    pub recheck_ms: u64,
    /// Installs running at once in one site.
    #[serde(default = "d_concurrency")]
    pub max_concurrent_per_site: u32,
    /// Maintenance windows, e.g. `mon-fri 22:00-04:00`.
    #[serde(default)]
    pub windows: Vec<String>,
    /// Scenario time after which windows no longer hold installs back.
    pub deadline_ms: Option<u64>,
    /// Whether installs roll back when the rollout halts.
    #[serde(default = "d_true")]
    pub rollback_on_halt: bool,
    /// IANA time zones, assigned to sites round-robin.
    #[serde(default = "d_zones")]
    pub time_zones: Vec<String>,
    /// `key=value` label of the canary nodes.
    pub canary_label: Option<String>,
    /// Fraction of nodes given the canary label.
    #[serde(default)]
    pub canary_fraction: f64,
    /// `key=value` label of the nodes the bad patch fails on.
    pub fail_label: Option<String>,
    /// Fraction of nodes given `fail_label`.
    #[serde(default)]
    pub label_fraction: f64,
    /// Fraction of the `fail_label` nodes whose verification fails.
    #[serde(default)]
    pub fail_fraction: f64,
    /// Fetch step duration: how long a node takes to fetch the payload.
    #[serde(default = "d_fetch")]
    pub fetch_ms: u64,
    /// Nodes prefetch the payload, as a node does by default (`prefetch = true` in its
    /// config): each starts fetching it (for `fetch_ms`, jittered) when the patch reaches its
    /// catalog, and its Fetch step then waits only for what is left of that download (nothing,
    /// once the payload is held), as the node's Fetch effect does. A node that crashes while
    /// prefetching loses the download in flight, and its Fetch step takes `fetch_ms` again.
    /// False: every Fetch step takes `fetch_ms` from its start (the payload is fetched only
    /// when the node's ring opens).
    #[serde(default = "d_true")]
    pub prefetch: bool,
    /// Stage step duration.
    #[serde(default = "d_stage")]
    pub stage_ms: u64,
    /// Install step duration.
    #[serde(default = "d_install")]
    pub install_ms: u64,
    /// Verify step duration (each re-check too).
    #[serde(default = "d_verify")]
    pub verify_ms: u64,
    /// Rollback step duration.
    #[serde(default = "d_rollback")]
    pub rollback_ms: u64,
    /// Each step lasts its duration times `1 + step_jitter * U[0,1)`.
    #[serde(default = "d_jitter")]
    pub step_jitter: f64,
    /// A good patch must reach every targeted live node by the end, or the run reports an
    /// invariant violation (true). A rehearsal sets false: not finishing is its answer.
    #[serde(default = "d_true")]
    pub expect_complete: bool,
}

/// Longest step duration a scenario may give (an hour).
const STEP_MS_MAX: u64 = 3_600_000;

/// Splits `key=value`.
pub fn parse_label(text: &str) -> Option<(String, String)> {
    let (k, v) = text.split_once('=')?;
    let (k, v) = (k.trim(), v.trim());
    let ok = |s: &str| !s.is_empty() && s.len() <= limits::LABEL_BYTES_MAX;
    (ok(k) && ok(v)).then(|| (k.to_string(), v.to_string()))
}

/// The quiet hours a node with activity `profile` learns (three weeks of history).
pub fn profile_quiet(
    profile: &str,
) -> Result<Option<patchmesh_protocol::rollout::activity::QuietHours>, String> {
    use patchmesh_protocol::rollout::activity::{QuietHours, HOURS_PER_WEEK};
    let busy: fn(usize, usize) -> f32 = match profile {
        "office" => |d, h| if d < 5 && (9..18).contains(&h) { 0.9 } else { 0.05 },
        "night-shift" => |_, h| if !(6..22).contains(&h) { 0.8 } else { 0.1 },
        "server" => |_, _| 0.9,
        "new" => return Ok(None),
        other => return Err(format!("unknown activity profile {other:?}")),
    };
    let levels: Vec<f32> = (0..HOURS_PER_WEEK).map(|h| busy(h / 24, h % 24)).collect();
    Ok(Some(QuietHours::from_levels(&levels)))
}

impl RolloutSpec {
    /// The longest a step can take, jitter included.
    pub fn step_ms_max(&self) -> u64 {
        let longest =
            [self.fetch_ms, self.stage_ms, self.install_ms, self.verify_ms, self.rollback_ms]
                .into_iter()
                .max()
                .unwrap_or(0);
        (longest as f64 * (1.0 + self.step_jitter)).ceil() as u64
    }

    /// The nominal duration of an effect.
    pub fn step_ms(&self, action: Action) -> u64 {
        match action {
            Action::Fetch => self.fetch_ms,
            Action::Stage => self.stage_ms,
            Action::Install => self.install_ms,
            Action::Verify => self.verify_ms,
            Action::Rollback => self.rollback_ms,
        }
    }

    /// The scenario's fail label, parsed (validated on load).
    pub fn fail_label(&self) -> Option<(String, String)> {
        self.fail_label.as_deref().and_then(parse_label)
    }

    /// The scenario's canary label, parsed (validated on load).
    pub fn canary_label(&self) -> Option<(String, String)> {
        self.canary_label.as_deref().and_then(parse_label)
    }

    /// The rollout entry the admin signs. `epoch_ms` is the wall-clock time of scenario time
    /// zero, so `deadline_ms` becomes an absolute time.
    pub fn entry(
        &self,
        id: RolloutId,
        content_id: ContentId,
        epoch_ms: u64,
    ) -> Result<RolloutEntry, String> {
        let shared = self.gate.over(&Gate::default());
        let windows = self
            .windows
            .iter()
            .map(|w| parse_window(w).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let entry = RolloutEntry {
            id,
            content_id,
            target: Selector { labels: self.target_labels.clone(), ..Selector::default() },
            rings: self
                .rings
                .iter()
                .map(|r| RingSpec {
                    name: r.name.clone(),
                    percent: r.percent,
                    labels: r.labels.clone(),
                    gate: r.gate(&shared),
                })
                .collect(),
            windows,
            deadline: self.deadline_ms.map(|d| Millis(epoch_ms + d)),
            max_concurrent_per_site: self.max_concurrent_per_site,
            max_targets: self.max_targets.unwrap_or(u32::MAX),
            rollback_on_halt: self.rollback_on_halt,
            recheck_ms: self.recheck_ms,
            created_at: Millis(epoch_ms + self.at_ms),
            auto_window: self.auto_window,
        };
        entry.validate().map_err(|e| e.to_string())?;
        Ok(entry)
    }

    /// Checks ranges and that the policy is one nodes accept.
    /// `explicit`: the fleet is given site by site (`[[site]]`), so `fail_label` may name a
    /// label its nodes already carry (with `label_fraction` 0).
    pub fn validate(&self, duration_ms: u64, explicit: bool) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(format!("rollout: {m}")));
        if self.at_ms >= duration_ms {
            return bad("at_ms must be before duration_ms".into());
        }
        if self.rings.is_empty() || self.rings.len() > limits::RINGS_PER_ROLLOUT_MAX {
            return bad(format!("needs 1..={} rings", limits::RINGS_PER_ROLLOUT_MAX));
        }
        let mut last = 0u8;
        for r in &self.rings {
            if r.name.is_empty() {
                return bad("every ring needs a name".into());
            }
            if r.percent > 100 || r.percent < last {
                return bad(format!(
                    "ring {} percent {} must be cumulative (never below the ring before) and 0..=100",
                    r.name, r.percent
                ));
            }
            last = r.percent;
            if r.percent == 0 && r.labels.is_empty() {
                return bad(format!(
                    "ring {} has percent 0 and no labels: it holds no node",
                    r.name
                ));
            }
        }
        let per_mille = |g: &GateSpec| {
            g.min_success_permille.unwrap_or(0) <= 1000
                && g.max_failure_permille.unwrap_or(0) <= 1000
        };
        if !per_mille(&self.gate)
            || self.rings.iter().any(|r| {
                r.min_success_permille.unwrap_or(0) > 1000
                    || r.max_failure_permille.unwrap_or(0) > 1000
            })
        {
            return bad("gate per mille values must be 0..=1000".into());
        }
        if self.recheck_ms < limits::RECHECK_MS_MIN {
            return bad(format!("recheck_ms must be >= {}", limits::RECHECK_MS_MIN));
        }
        if let Some(p) = self.activity.iter().find(|p| profile_quiet(p).is_err()) {
            return bad(format!(
                "unknown activity profile {p:?} (office, night-shift, server, new)"
            ));
        }
        if self.max_concurrent_per_site == 0 {
            return bad("max_concurrent_per_site must be >= 1".into());
        }
        if self.time_zones.is_empty() {
            return bad("time_zones needs at least one zone".into());
        }
        for z in &self.time_zones {
            if let Err(e) = jiff::tz::TimeZone::get(z) {
                return bad(format!("unknown time zone {z:?}: {e}"));
            }
        }
        for (name, f) in [
            ("canary_fraction", self.canary_fraction),
            ("label_fraction", self.label_fraction),
            ("fail_fraction", self.fail_fraction),
            ("step_jitter", self.step_jitter),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return bad(format!("{name} must be 0..=1"));
            }
        }
        for (name, label, fraction) in [
            ("canary_label", &self.canary_label, self.canary_fraction),
            ("fail_label", &self.fail_label, self.label_fraction),
        ] {
            match label {
                Some(l) if parse_label(l).is_none() => {
                    return bad(format!("{name} {l:?} must be key=value (each 1..=64 bytes)"));
                }
                None if fraction > 0.0 => return bad(format!("a fraction > 0 needs {name}")),
                _ => {}
            }
        }
        if self.fail_fraction > 0.0 && self.label_fraction == 0.0 && !explicit {
            return bad(
                "fail_fraction > 0 needs label_fraction > 0 (it is a fraction of the labelled), \
                 or a [[site]] fleet whose nodes carry fail_label"
                    .into(),
            );
        }
        if self.canary_label.is_some() && self.canary_label() == self.fail_label() {
            return bad("canary_label and fail_label must differ".into());
        }
        for ms in [self.fetch_ms, self.stage_ms, self.install_ms, self.verify_ms, self.rollback_ms]
        {
            if ms > STEP_MS_MAX {
                return bad(format!("step durations must be <= {STEP_MS_MAX} ms"));
            }
        }
        self.entry(RolloutId([0; 32]), ContentId([0; 32]), 0).map(|_| ()).or_else(bad)
    }
}
