//! `patchmesh rollout plan`: rehearse a rollout on a replica of the fleet before signing it.
//!
//! The node this runs against exports the fleet as it knows it ([`FleetView`]): its own site
//! from the members' signed records (exact), every other site from its signed summary (member
//! kinds: time zone, OS, labels), its protocol periods, the ping round trips to other sites
//! and the durations of its own earlier installs. That becomes a simulator scenario
//! ([`patchmesh_sim::Scenario`], written out with `--export`), which runs the same protocol
//! code over several seeds; the per-ring timings, window waits, WAN bytes and, with a failure
//! fraction, the halt are printed. Before any of it, [`checks`] looks for the mistakes that
//! make a rollout stall or miss: no node targeted, a ring that can never pass its gate, a
//! window that never opens before the deadline, a payload too large for a site's WAN budget.
//! `rollout create` runs the same checks and refuses the hard ones unless `--force`.

use crate::rollout::CreateArgs;
use crate::{call, NodeArgs};
use anyhow::{bail, Context};
use clap::Args;
use patchmesh_node::control::{
    CatalogEntryView, CatalogView, FleetView, PlanEstimated, PlanFinding, PlanOutput, PlanProgress,
    Request, RolloutsView, WindowWait,
};
use patchmesh_protocol::catalog::RolloutEntry;
use patchmesh_protocol::ids::Millis;
use patchmesh_protocol::rollout::activity::install_window_open;
use patchmesh_protocol::rollout::Facts;
pub use patchmesh_sim::rehearsal::span;
use patchmesh_sim::rehearsal::{self, Rehearsal};
use patchmesh_sim::scenario::{KindSpec, RingToml, SiteSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Seeds a plan may run.
const SEEDS_MAX: u32 = 100;
/// Longest simulated horizon (the rehearsal of a rollout that waits for windows for weeks is
/// cut here and says so).
const HORIZON_MS_MAX: u64 = 14 * 86_400_000;
/// How far ahead window openings are looked for.
const WINDOW_SEARCH_MS: u64 = 8 * 86_400_000;
/// Step of that search.
const WINDOW_STEP_MS: u64 = 5 * 60_000;
/// WAN bandwidth assumed when none is measured, configured or given (Mbit/s).
const WAN_MBPS_ASSUMED: f64 = 20.0;
/// Install duration assumed when this node has installed nothing yet.
const INSTALL_MS_ASSUMED: u64 = 30_000;

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Rehearse this signed rollout (id) from now, as the node holds it, instead of one
    /// described by the options of `rollout create` (give no --patch or --ring then).
    #[arg(long, conflicts_with = "patch")]
    pub rollout: Option<String>,
    /// Rehearse a bad patch: this fraction of the nodes with --fail-label (of every node if
    /// none) fails verification.
    #[arg(long, default_value_t = 0.0)]
    pub fail_fraction: f64,
    /// KEY=VALUE label of the nodes the rehearsed failures hit.
    #[arg(long)]
    pub fail_label: Option<String>,
    /// Simulator runs (seeds); figures are p50/p90 over them.
    #[arg(long, default_value_t = 5)]
    pub seeds: u32,
    /// Write the scenario rehearsed (TOML); `patchmesh-sim plan FILE` rehearses it again.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// WAN bandwidth of every site (Mbit/s). Default: as this node's downloads measured it,
    /// else its configured WAN cap, else 20.
    #[arg(long)]
    pub wan_mbps: Option<f64>,
    /// WAN round trip of a site this node has no ping to (ms).
    #[arg(long, default_value_t = 80.0)]
    pub wan_rtt_ms: f64,
    /// Install duration (fetch to verified, ms) to assume when this node has installed
    /// nothing yet to measure it from (default 30000).
    #[arg(long)]
    pub install_ms: Option<u64>,
    /// Longest simulated time (e.g. 2d); default: long enough for every ring and window.
    #[arg(long, value_parser = crate::rollout::parse_span_ms)]
    pub horizon: Option<u64>,
}

/// Targeted members of one kind.
struct Kind {
    count: u64,
    zone: String,
    labels: BTreeMap<String, String>,
    /// Quiet hours' mask (hex), as the members' records carry it.
    quiet: Option<String>,
}

/// The targeted fleet: members per site and kind, after the rollout's site and OS clauses.
struct Targeted {
    /// Per site: its name and its kinds.
    sites: Vec<(String, Vec<Kind>)>,
    /// Members outside the target (left out of the rehearsal).
    outside: u64,
    /// Members whose kind is unknown (a summary lists the most common kinds only).
    unknown: u64,
    /// Sites read from summaries.
    from_summaries: usize,
    /// Members with no time zone in their record (taken to be in this node's).
    zoneless: u64,
}

fn targeted(fleet: &FleetView, rollout: &RolloutEntry) -> Targeted {
    let sel = &rollout.target;
    let mut t =
        Targeted { sites: Vec::new(), outside: 0, unknown: 0, from_summaries: 0, zoneless: 0 };
    for site in &fleet.sites {
        let in_site = sel.sites.is_empty() || sel.sites.iter().any(|s| s.as_str() == site.site);
        let mut kinds = Vec::new();
        for k in &site.kinds {
            let os_ok = sel.os.as_deref().is_none_or(|os| k.os.contains(os));
            let labels_ok = sel.labels.iter().all(|(a, b)| k.labels.get(a) == Some(b));
            if !(in_site && os_ok && labels_ok) {
                t.outside += k.count;
                continue;
            }
            let zone = if k.zone.is_empty() {
                t.zoneless += k.count;
                fleet.zone.clone()
            } else {
                k.zone.clone()
            };
            kinds.push(Kind {
                count: k.count,
                zone,
                labels: k.labels.clone(),
                quiet: k.quiet_mask.clone(),
            });
        }
        if in_site && site.other > 0 {
            // Members of kinds the summary leaves out: their labels and OS are unknown, so
            // they are rehearsed only when the selector reads neither.
            t.unknown += site.other;
        }
        if in_site && site.other > 0 && sel.labels.is_empty() && sel.os.is_none() {
            kinds.push(Kind {
                count: site.other,
                zone: fleet.zone.clone(),
                labels: BTreeMap::new(),
                quiet: None,
            });
        }
        if !site.from_records {
            t.from_summaries += 1;
        }
        if !kinds.is_empty() {
            t.sites.push((site.site.clone(), kinds));
        }
    }
    t
}

impl Targeted {
    fn members(&self) -> u64 {
        self.sites.iter().flat_map(|s| &s.1).map(|k| k.count).sum()
    }

    /// Expected members per ring: label rings exactly (the first label ring a node's labels
    /// match claims it), percent rings as their share of the rest.
    fn ring_sizes(&self, rollout: &RolloutEntry) -> Vec<f64> {
        let mut sizes = vec![0.0; rollout.rings.len()];
        let mut rest = 0u64;
        for k in self.sites.iter().flat_map(|s| &s.1) {
            let ring = rollout.rings.iter().position(|r| {
                !r.labels.is_empty() && r.labels.iter().all(|(a, b)| k.labels.get(a) == Some(b))
            });
            match ring {
                Some(i) => sizes[i] += k.count as f64,
                None => rest += k.count,
            }
        }
        let mut below = 0u8;
        for (i, r) in rollout.rings.iter().enumerate() {
            if r.percent > below {
                sizes[i] += rest as f64 * f64::from(r.percent - below) / 100.0;
                below = r.percent;
            }
        }
        sizes
    }

    /// The time zones of targeted members, with their counts.
    fn zones(&self) -> BTreeMap<String, u64> {
        let mut z = BTreeMap::new();
        for k in self.sites.iter().flat_map(|s| &s.1) {
            *z.entry(k.zone.clone()).or_default() += k.count;
        }
        z
    }
}

/// When the rollout's windows first open at or after `now` in zone `tz` (None: not within
/// [`WINDOW_SEARCH_MS`]).
fn next_open(rollout: &RolloutEntry, now: Millis, tz: &jiff::tz::TimeZone) -> Option<Millis> {
    if rollout.windows.is_empty() && !rollout.auto_window {
        return Some(now);
    }
    // Quiet hours are each node's own; the checks read the fallback night (a rehearsal
    // replays every member's own from the records).
    let facts = Facts { tz: tz.clone(), ..Facts::default() };
    // Now, then on whole steps (windows open on whole minutes; most on whole hours).
    let first = now.0.div_ceil(WINDOW_STEP_MS) * WINDOW_STEP_MS;
    std::iter::once(now)
        .chain((0..=WINDOW_SEARCH_MS / WINDOW_STEP_MS).map(|i| Millis(first + i * WINDOW_STEP_MS)))
        .find(|t| install_window_open(rollout, *t, &facts))
}

/// Per zone with targeted members: when installs may first start there.
fn window_waits(t: &Targeted, rollout: &RolloutEntry, now: Millis) -> Vec<WindowWait> {
    t.zones()
        .into_iter()
        .map(|(zone, nodes)| {
            let tz = jiff::tz::TimeZone::get(&zone).unwrap_or(jiff::tz::TimeZone::UTC);
            let open = next_open(rollout, now, &tz);
            let starts = match (open, rollout.deadline) {
                (Some(o), Some(d)) => Some(o.min(d).max(now)),
                (Some(o), None) => Some(o),
                (None, d) => d.map(|d| d.max(now)),
            };
            WindowWait {
                zone,
                nodes,
                opens_at: open.map(|o| local(o, &tz)),
                starts_in_ms: starts.map(|s| s.0 - now.0),
                at_deadline: open.is_none_or(|o| rollout.deadline.is_some_and(|d| d < o)),
            }
        })
        .collect()
}

/// A time as local time in `tz`.
fn local(t: Millis, tz: &jiff::tz::TimeZone) -> String {
    jiff::Timestamp::from_millisecond(t.0 as i64)
        .map(|ts| ts.to_zoned(tz.clone()).strftime("%a %Y-%m-%d %H:%M %Z").to_string())
        .unwrap_or_default()
}

/// The checks run before anything is signed (`rollout create` and `rollout plan`).
pub fn checks(
    fleet: &FleetView,
    rollout: &RolloutEntry,
    patch_size: u64,
    max_site_wan_bytes: Option<u64>,
    now: Millis,
) -> Vec<PlanFinding> {
    let mut out = Vec::new();
    // What the fleet view says is refused only once the node has run long enough to hold
    // every site's summary (a few summary periods); before that it is a warning.
    let settle_ms = 6 * fleet.summary_interval_ms.max(1_000);
    let settled = fleet.uptime_ms >= settle_ms;
    let mut refuse = |m: String| {
        out.push(if settled {
            PlanFinding { level: "refused".into(), message: m }
        } else {
            PlanFinding {
                level: "warning".into(),
                message: format!(
                    "{m} (not refused: this node started {} ago and may not know every site yet)",
                    span(fleet.uptime_ms)
                ),
            }
        })
    };
    let t = targeted(fleet, rollout);
    let members = t.members();
    if members == 0 {
        refuse(format!(
            "no node is targeted: the selector leaves out all {} known nodes (a typo in \
             --target-label, --target-site or --target-os?)",
            t.outside
        ));
    }
    // Label rings are counted exactly; a percent ring's members are a hash draw, so an
    // expected size under one node is a warning (the draw may still land one).
    let sizes = t.ring_sizes(rollout);
    let mut warn = Vec::new();
    for (ring, size) in rollout.rings.iter().zip(&sizes) {
        if members == 0 {
            break;
        }
        let exact = !ring.labels.is_empty() && ring.percent == 0;
        let empty = if exact { *size == 0.0 } else { *size < 0.5 };
        let short = f64::from(ring.gate.min_reports) > size.round();
        let message = if empty {
            format!(
                "ring {} holds no node ({}): its gate can never pass, so the rollout stops there",
                ring.name,
                if exact {
                    "no targeted node carries its label".to_string()
                } else {
                    format!("{}% of {members} targeted nodes is under one node", ring.percent)
                }
            )
        } else if short {
            format!(
                "ring {} needs {} succeeded members (--min-reports) but holds {}{:.0}: its gate \
                 can never pass",
                ring.name,
                ring.gate.min_reports,
                if exact { "" } else { "about " },
                size
            )
        } else {
            continue;
        };
        if exact {
            refuse(message);
        } else {
            warn.push(message);
        }
    }
    for w in window_waits(&t, rollout, now) {
        match (&w.opens_at, rollout.deadline) {
            (None, None) => refuse(format!(
                "in {} ({} nodes) no window opens within eight days and there is no deadline",
                w.zone, w.nodes
            )),
            (None, Some(_)) => warn.push(format!(
                "in {} ({} nodes) no window opens before the deadline: they install at the \
                 deadline, outside any window",
                w.zone, w.nodes
            )),
            (Some(o), Some(_)) if w.at_deadline => warn.push(format!(
                "in {} ({} nodes) the first window ({o}) opens after the deadline: they install \
                 at the deadline, outside any window",
                w.zone, w.nodes
            )),
            _ => {}
        }
    }
    if let Some(max) = max_site_wan_bytes {
        if patch_size > max {
            for (site, _) in &t.sites {
                refuse(format!(
                    "site {site}'s WAN link would carry the {patch_size}-byte payload, over the \
                     {max}-byte budget (--max-site-wan-bytes)"
                ));
            }
        }
    }
    // Free disk: each site's least roomy member (as records and summaries report it, rounded
    // down by at most a quarter). A node keeps the payload, and staging may copy it again.
    for site in fleet.sites.iter().filter(|s| t.sites.iter().any(|(n, _)| *n == s.site)) {
        let Some(free) = site.min_free_disk_bytes else { continue };
        if patch_size > free {
            refuse(format!(
                "site {}: a member has about {} free where payloads are kept, less than the \
                 {}-byte payload: its install fails for want of space",
                site.site,
                crate::output::bytes_text(free),
                patch_size
            ));
        } else if patch_size.saturating_mul(2) > free {
            warn.push(format!(
                "site {}: a member has about {} free where payloads are kept, under twice the \
                 {}-byte payload (it is kept, and staging may copy it)",
                site.site,
                crate::output::bytes_text(free),
                patch_size
            ));
        }
    }
    if rollout.max_targets > fleet.approval_above_nodes && fleet.approval_threshold > 1 {
        warn.push(format!(
            "this rollout may reach more than {} nodes: no node installs it before {} admins \
             approve it (`patchmesh rollout approve`)",
            fleet.approval_above_nodes, fleet.approval_threshold
        ));
    }
    if !rollout.target.packages.is_empty() {
        warn.push(
            "package predicates are evaluated by each node on its own inventory; the \
             rehearsal takes every selected node as matching them"
                .to_string(),
        );
    }
    out.extend(warn.into_iter().map(|m| PlanFinding { level: "warning".into(), message: m }));
    out
}

/// The node's view of the fleet, and the patch's signed size.
pub fn fleet_and_size(node: &NodeArgs, rollout: &RolloutEntry) -> anyhow::Result<(FleetView, u64)> {
    let fleet: FleetView = call(node, Request::Fleet)?;
    let cat: CatalogView = call(node, Request::Catalog)?;
    let want = rollout.content_id.to_string();
    let size = cat.entries.iter().find_map(|e| match &e.entry {
        CatalogEntryView::Patch { content_id, size_bytes, .. } if *content_id == want => {
            Some(*size_bytes)
        }
        _ => None,
    });
    let size = size.with_context(|| {
        format!("no patch {want} in the catalog: add it with `patchmesh patch add` first")
    })?;
    Ok((fleet, size))
}

/// Prints the findings; fails when one is a refusal and `force` is not given.
pub fn enforce(findings: &[PlanFinding], force: bool) -> anyhow::Result<()> {
    for f in findings {
        eprintln!("{}: {}", f.level, f.message);
    }
    let refused = findings.iter().filter(|f| f.level == "refused").count();
    if refused > 0 && !force {
        bail!("{refused} problem(s) above; fix them, or give --force to go ahead anyway");
    }
    Ok(())
}

fn percentile(mut v: Vec<u64>, p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[((v.len() - 1) as f64 * p).round() as usize])
}

/// Builds the scenario rehearsed.
fn scenario(
    a: &PlanArgs,
    fleet: &FleetView,
    rollout: &RolloutEntry,
    t: &Targeted,
    size: u64,
    now: Millis,
    est: &mut PlanEstimated,
) -> anyhow::Result<patchmesh_sim::Scenario> {
    const AT_MS: u64 = 2_000;
    // This node's own downloads are the best measure of the WAN; then its configured cap;
    // then the admin's figure. Other sites' links are taken to be alike.
    let own_mbps = match (a.wan_mbps, &fleet.wan_observed, fleet.wan_rate_bytes_per_s) {
        (Some(mbps), _, _) => {
            est.wan_bandwidth = format!("given: {mbps} Mbit/s (--wan-mbps)");
            mbps
        }
        (None, Some(w), _) if w.rate_bytes_per_s() > 0 => {
            let mbps = w.rate_bytes_per_s() as f64 * 8.0 / 1e6;
            est.wan_bandwidth = format!(
                "measured here: {mbps:.1} Mbit/s over {} download(s) ({} bytes), other sites \
                 taken to be alike",
                w.downloads, w.bytes
            );
            mbps
        }
        (None, _, 0) => {
            est.wan_bandwidth = format!(
                "assumed {WAN_MBPS_ASSUMED} Mbit/s (nothing measured or configured; --wan-mbps)"
            );
            WAN_MBPS_ASSUMED
        }
        (None, _, r) => {
            est.wan_bandwidth = "this node's configured WAN cap".into();
            r as f64 * 8.0 / 1e6
        }
    };
    let sites: Vec<SiteSpec> = t
        .sites
        .iter()
        .map(|(name, kinds)| {
            let rtt = fleet.rtt_ms.get(name).map(|r| *r as f64);
            if rtt.is_none() && *name != fleet.site {
                est.sites_without_rtt += 1;
            }
            SiteSpec {
                name: name.clone(),
                wan_mbps: Some(own_mbps),
                wan_rtt_ms: Some(rtt.unwrap_or(a.wan_rtt_ms)),
                kinds: kinds
                    .iter()
                    .map(|k| KindSpec {
                        count: k.count as usize,
                        zone: k.zone.clone(),
                        labels: k.labels.clone(),
                        quiet: k.quiet.clone(),
                    })
                    .collect(),
            }
        })
        .collect();
    // Step durations: fetch to verified as measured here (or given); only the default
    // assumption adds the payload's WAN copy time to it.
    let wan_copy_ms = ((size as f64 * 8.0 / (own_mbps * 1e6)) * 1000.0).ceil() as u64;
    let measured = !fleet.install_ms.is_empty() || a.install_ms.is_some();
    let fetch_ms = if measured { 0 } else { wan_copy_ms };
    let (install_ms, jitter) = match (
        percentile(fleet.install_ms.clone(), 0.5),
        percentile(fleet.install_ms.clone(), 0.9),
    ) {
        (Some(p50), Some(p90)) => {
            est.install_duration = format!(
                "measured here: {} p50 over {} install(s)",
                span(p50),
                fleet.install_ms.len()
            );
            (p50, ((p90 as f64 / p50.max(1) as f64) - 1.0).clamp(0.1, 1.0))
        }
        _ => {
            let ms = a.install_ms.unwrap_or(INSTALL_MS_ASSUMED);
            est.install_duration =
                format!("assumed {} (this node has installed nothing yet; --install-ms)", span(ms));
            (ms, 0.5)
        }
    };
    est.percent_rings_drawn = rollout.rings.iter().any(|r| r.labels.is_empty());
    let gate = rollout.rings.first().map(|r| r.gate.clone()).unwrap_or_default();
    let rings = rollout
        .rings
        .iter()
        .map(|r| RingToml {
            name: r.name.clone(),
            percent: r.percent,
            labels: r.labels.clone(),
            min_success_permille: Some(r.gate.min_success_permille),
            max_failures: Some(r.gate.max_failures),
            max_failure_permille: Some(r.gate.max_failure_permille),
            min_soak_ms: Some(r.gate.min_soak_ms),
            min_reports: Some(r.gate.min_reports),
        })
        .collect();
    let (fail_label, label_fraction) = match (&a.fail_label, a.fail_fraction > 0.0) {
        (Some(l), _) => (Some(l.clone()), 0.0),
        (None, true) => (Some("rehearsal=fails".to_string()), 1.0),
        (None, false) => (None, 0.0),
    };
    let deadline_ms = rollout.deadline.map(|d| d.0.saturating_sub(now.0) + AT_MS);
    // Long enough for every ring to install site by site and soak, after the latest window
    // opening (or the deadline); a rollout that takes longer is reported as unfinished.
    let waits = window_waits(t, rollout, now);
    let wait_ms = waits.iter().filter_map(|w| w.starts_in_ms).max().unwrap_or(0);
    let sizes = t.ring_sizes(rollout);
    let per_site_max =
        t.sites.iter().map(|s| s.1.iter().map(|k| k.count).sum::<u64>()).max().unwrap_or(1);
    let step_ms = (fetch_ms + install_ms) as f64 * (1.0 + jitter) + 1_000.0;
    let rings_ms: f64 = rollout
        .rings
        .iter()
        .zip(&sizes)
        .map(|(r, n)| {
            let waves =
                (n.min(per_site_max as f64) / f64::from(rollout.max_concurrent_per_site)).ceil();
            waves * step_ms + r.gate.min_soak_ms as f64 + 10.0 * fleet.rollout_eval_ms as f64
        })
        .sum();
    // Windows close too: later rings may wait for the next night.
    let windowed = !rollout.windows.is_empty() || rollout.auto_window;
    let next_day_ms = if windowed { 86_400_000.0 } else { 0.0 };
    let horizon =
        a.horizon.unwrap_or((wait_ms as f64 + 2.0 * rings_ms + next_day_ms) as u64 + 60_000);
    let duration_ms = (AT_MS + horizon).min(HORIZON_MS_MAX);
    let start_at = jiff::Timestamp::from_millisecond(now.0 as i64)?.to_string();
    let s = patchmesh_sim::Scenario {
        name: "rollout-plan".into(),
        nodes: 0,
        sites: 0,
        start_at: Some(start_at),
        epoch_ms: 0,
        site: sites,
        seed: 1,
        start: patchmesh_sim::scenario::Start::Steady,
        duration_ms,
        warmup_ms: 500,
        publish_at_ms: 1_000,
        clock_skew_ms: 0,
        adversaries: 0,
        revoke_admin_at_ms: 0,
        lan: patchmesh_sim::scenario::Link {
            latency_ms: 1.0,
            rtt_ms: 0.0,
            bandwidth_mbps: 1000.0,
            loss: 0.0,
        },
        wan: patchmesh_sim::scenario::Link {
            latency_ms: 0.0,
            rtt_ms: a.wan_rtt_ms,
            bandwidth_mbps: own_mbps,
            loss: 0.0,
        },
        topology: Default::default(),
        protocol: patchmesh_sim::scenario::Protocol {
            anti_entropy_interval_ms: fleet.anti_entropy_interval_ms.max(1),
            summary_interval_ms: fleet.summary_interval_ms.max(1),
            gossip_flush_ms: fleet.gossip_flush_ms.max(1),
            rollout_eval_ms: fleet.rollout_eval_ms.max(1),
            ..Default::default()
        },
        partition: Vec::new(),
        crash: Vec::new(),
        payload: None,
        rollout: Some(patchmesh_sim::scenario::RolloutSpec {
            at_ms: AT_MS,
            rings,
            gate: patchmesh_sim::scenario::GateSpec {
                min_success_permille: Some(gate.min_success_permille),
                max_failures: Some(gate.max_failures),
                max_failure_permille: Some(gate.max_failure_permille),
                min_soak_ms: Some(gate.min_soak_ms),
                min_reports: Some(gate.min_reports),
            },
            target_labels: rollout.target.labels.clone(),
            max_targets: (rollout.max_targets != u32::MAX).then_some(rollout.max_targets),
            auto_window: rollout.auto_window,
            activity: Vec::new(),
            recheck_ms: rollout.recheck_ms.max(patchmesh_protocol::limits::RECHECK_MS_MIN),
            max_concurrent_per_site: rollout.max_concurrent_per_site,
            windows: rollout.windows.iter().map(|w| w.to_string()).collect(),
            deadline_ms,
            rollback_on_halt: rollout.rollback_on_halt,
            time_zones: vec![fleet.zone.clone()]
                .into_iter()
                .filter(|z| !z.is_empty())
                .chain(fleet.zone.is_empty().then(|| "UTC".to_string()))
                .collect(),
            canary_label: None,
            canary_fraction: 0.0,
            fail_label,
            label_fraction,
            fail_fraction: a.fail_fraction,
            fetch_ms,
            // Each start pays the payload's WAN copy, as if the fleet did not prefetch: the
            // rehearsal errs long rather than count on a download finishing before a window.
            prefetch: false,
            stage_ms: 0,
            install_ms,
            verify_ms: 0,
            rollback_ms: install_ms,
            step_jitter: jitter,
            expect_complete: false,
        }),
        intel: None,
        enrol: None,
    };
    // Through the file format, so what runs is exactly what --export writes.
    let text = toml::to_string(&s).context("writing the scenario")?;
    patchmesh_sim::Scenario::parse(&text, "rollout plan")
        .map_err(|e| anyhow::anyhow!("the rehearsal's scenario is not valid: {e}"))
}

/// `patchmesh rollout plan`.
pub fn run(a: PlanArgs, now: Millis) -> anyhow::Result<()> {
    if a.seeds == 0 || a.seeds > SEEDS_MAX {
        bail!("--seeds must be 1..={SEEDS_MAX}");
    }
    if !(0.0..=1.0).contains(&a.fail_fraction) {
        bail!("--fail-fraction must be between 0 and 1");
    }
    if !(a.wan_mbps.is_none_or(|m| m.is_finite() && m > 0.0)
        && a.wan_rtt_ms.is_finite()
        && a.wan_rtt_ms >= 0.0)
    {
        bail!("--wan-mbps must be > 0 and --wan-rtt-ms >= 0");
    }
    let node = &a.create.sign.node;
    let json = a.create.sign.json;
    // A signed rollout is rehearsed as held, from now; its progress so far is printed beside.
    let (rollout, progress) = match &a.rollout {
        Some(id) => {
            if !a.create.rings.is_empty() {
                bail!("--rollout rehearses the rollout as signed: give no --ring");
            }
            let entry: RolloutEntry = call(node, Request::RolloutEntry { rollout: id.clone() })?;
            let views: RolloutsView = call(node, Request::Rollouts)?;
            let view = views.rollouts.into_iter().find(|v| v.id == entry.id.to_string());
            (entry, Some(view.map(|v| PlanProgress::of(&v, now)).unwrap_or_default()))
        }
        None => (crate::rollout::build(&a.create, now)?, None),
    };
    let (fleet, size) = fleet_and_size(node, &rollout)?;
    let mut findings = checks(&fleet, &rollout, size, a.create.max_site_wan_bytes, now);
    if progress.is_some() {
        // Nothing is signed: what would be refused is reported, the rehearsal runs anyway
        // (it may show why a running rollout is stuck).
        for f in &mut findings {
            if f.level == "refused" {
                f.level = "problem".into();
            }
        }
    }
    if !json {
        enforce(&findings, a.create.force)?;
    } else if findings.iter().any(|f| f.level == "refused") && !a.create.force {
        outln!("{}", crate::output::json(&serde_json::json!({ "findings": findings })));
        bail!("refused: see findings (or give --force)");
    }
    let t = targeted(&fleet, &rollout);
    let mut est = PlanEstimated {
        sites_from_summaries: t.from_summaries,
        members_of_unknown_kind: t.unknown,
        members_without_zone: t.zoneless,
        ..PlanEstimated::default()
    };
    let s = scenario(&a, &fleet, &rollout, &t, size, now, &mut est)?;
    if let Some(path) = &a.export {
        let header = format!(
            "# A rehearsal of a rollout on the fleet node {} knew at {} ({} targeted nodes in {} \
             sites).\n# Estimated rather than read: {}\n# Rehearse again: patchmesh-sim plan {}\n",
            fleet.site,
            jiff::Timestamp::from_millisecond(now.0 as i64)?,
            t.members(),
            t.sites.len(),
            serde_json::to_string(&est)?,
            path.display()
        );
        let text = toml::to_string(&s).context("writing the scenario")?;
        std::fs::write(path, header + &text)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let seeds: Vec<u64> = (1..=u64::from(a.seeds)).collect();
    let admin_tz = jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC);
    let out = PlanOutput {
        progress,
        findings,
        outside_nodes: t.outside,
        sites: t.sites.len(),
        windows: window_waits(&t, &rollout, now),
        wan_bytes_per_site: size,
        estimated: est,
        rehearsal: rehearsal::rehearse(&s, &seeds, &admin_tz),
    };
    if json {
        outln!("{}", crate::output::json(&out));
    } else {
        print_plan(&out);
    }
    if !out.rehearsal.violations.is_empty() {
        bail!(
            "the simulator reported invariant violations (a bug): {:?}",
            out.rehearsal.violations
        );
    }
    Ok(())
}

fn print_plan(p: &PlanOutput<Rehearsal>) {
    let r = &p.rehearsal;
    if let Some(g) = &p.progress {
        outln!(
            "rollout {} as signed, created {} ago, {}{}; so far: {}",
            g.rollout.get(..12).unwrap_or(&g.rollout),
            span(g.created_ms_ago),
            g.control,
            g.waiting.as_ref().map_or(String::new(), |w| format!(" ({w})")),
            g.rings
                .iter()
                .map(|(n, t, s, f)| format!("{n} {s}/{t} succeeded, {f} failed"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        outln!("the rehearsal below starts it afresh now, on the fleet as it is:");
    }
    outln!(
        "rehearsal: {} targeted nodes in {} sites ({} known nodes outside the target), {} seeds, \
         horizon {}",
        r.targeted_nodes,
        p.sites,
        p.outside_nodes,
        r.seeds,
        span(r.horizon_ms)
    );
    for line in r.ring_lines() {
        outln!("{line}");
    }
    for w in &p.windows {
        match (w.starts_in_ms, &w.opens_at) {
            (Some(0), _) => {}
            (Some(ms), Some(at)) if !w.at_deadline => outln!(
                "window: {} nodes in {} wait {} for the window opening {at}",
                w.nodes,
                w.zone,
                span(ms)
            ),
            (Some(ms), _) => outln!(
                "window: {} nodes in {} wait {} for the deadline (no window opens before it)",
                w.nodes,
                w.zone,
                span(ms)
            ),
            (None, _) => outln!("window: {} nodes in {} never start", w.nodes, w.zone),
        }
    }
    outln!(
        "WAN: one copy of the payload per site, {} bytes into each of {} sites",
        p.wan_bytes_per_site,
        p.sites
    );
    for line in r.outcome_lines() {
        outln!("{line}");
    }
    let e = &p.estimated;
    outln!(
        "estimated: {} sites from summaries, {} nodes of unknown kind, {} without a zone, {} \
         sites without a measured round trip; WAN {}; installs {}{}",
        e.sites_from_summaries,
        e.members_of_unknown_kind,
        e.members_without_zone,
        e.sites_without_rtt,
        e.wan_bandwidth,
        e.install_duration,
        if e.percent_rings_drawn { "; percent rings drawn per seed" } else { "" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use patchmesh_node::control::{FleetSiteView, MemberKindView};

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        plan: PlanArgs,
    }

    fn rollout(args: &[&str]) -> RolloutEntry {
        let patch = "ab".repeat(32);
        let mut argv = vec!["plan", "--patch", &patch];
        argv.extend_from_slice(args);
        let cmd = Cmd::try_parse_from(argv).expect("arguments parse");
        crate::rollout::build(&cmd.plan.create, Millis(1_700_000_000_000)).expect("rollout builds")
    }

    /// Two sites of three members each, running for an hour (its view is settled).
    fn fleet(free: [Option<u64>; 2]) -> FleetView {
        let site = |name: &str, free: Option<u64>| FleetSiteView {
            site: name.into(),
            members: 3,
            from_records: name == "a",
            kinds: vec![MemberKindView {
                count: 3,
                zone: "Europe/Berlin".into(),
                os: "Debian GNU/Linux 12".into(),
                labels: [("ring".to_string(), "main".to_string())].into_iter().collect(),
                quiet: None,
                quiet_mask: None,
            }],
            other: 0,
            min_free_disk_bytes: free,
        };
        FleetView {
            site: "a".into(),
            zone: "Europe/Berlin".into(),
            sites: vec![site("a", free[0]), site("b", free[1])],
            summary_interval_ms: 5_000,
            uptime_ms: 3_600_000,
            approval_threshold: 1,
            approval_above_nodes: u32::MAX,
            ..FleetView::default()
        }
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_payload_larger_than_a_sites_least_free_disk_is_refused_and_a_tight_fit_warned() {
        let r = rollout(&["--ring", "all:100"]);
        let now = Millis(1_700_000_000_000);
        let found = checks(&fleet([Some(64 * MIB), Some(100 * MIB)]), &r, 80 * MIB, None, now);
        let refused: Vec<&PlanFinding> = found.iter().filter(|f| f.level == "refused").collect();
        assert_eq!(refused.len(), 1, "{found:?}");
        assert!(refused[0].message.contains("site a") && refused[0].message.contains("64.0 MiB"));
        // Site b fits it, but not twice: a warning.
        assert!(found.iter().any(|f| f.level == "warning" && f.message.contains("site b")));
        // Roomy, or unknown (an older node's record): nothing said.
        let found = checks(&fleet([Some(1024 * MIB), None]), &r, 80 * MIB, None, now);
        assert!(!found.iter().any(|f| f.message.contains("free")), "{found:?}");
    }

    #[test]
    fn a_label_typo_is_refused_and_a_fresh_node_only_warns() {
        let r = rollout(&["--ring", "all:100", "--target-label", "ring=mian"]);
        let now = Millis(1_700_000_000_000);
        let found = checks(&fleet([None, None]), &r, MIB, None, now);
        assert!(found.iter().any(|f| f.level == "refused" && f.message.contains("no node")));
        let mut young = fleet([None, None]);
        young.uptime_ms = 1_000;
        let found = checks(&young, &r, MIB, None, now);
        assert!(found.iter().all(|f| f.level == "warning"), "{found:?}");
    }

    #[test]
    fn free_disk_is_shown_in_binary_units() {
        use crate::output::bytes_text;
        assert_eq!(bytes_text(512), "512 B");
        assert_eq!(bytes_text(64 * MIB), "64.0 MiB");
        assert_eq!(bytes_text(3 * 1024 * MIB / 2), "1.5 GiB");
    }
}
