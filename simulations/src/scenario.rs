//! Scenario files: what an admin writes to rehearse a rollout. Every field has a default, so a
//! scenario names only what it changes. `patchmesh-sim --help` prints [`FIELDS_HELP`].

pub use crate::rollout::{GateSpec, RingToml, RolloutSpec};
use patchmesh_protocol::transfer::{check_size, TransferError};
use serde::Deserialize;

/// Help text for every scenario field, printed by `--help`.
pub const FIELDS_HELP: &str = "\
SCENARIO FILE (TOML). Every field is optional except `nodes` and `sites`.
  name                      label echoed in the report
  nodes                     honest nodes in the fleet
  sites                     sites (branch offices); nodes are spread evenly over them
  seed                      default seed (--seed overrides); one seed = one run, bit for bit
  duration_ms               simulated time the run lasts
  warmup_ms                 time for nodes to connect and exchange records before anything else
  publish_at_ms             when an admin publishes the measured catalog change, at a random node
  start                     'cold': every node boots at once with an empty store and the fleet
                            warms up live; 'steady': every node starts from a store holding
                            its site's signed records and every site's signed summary, as a
                            fleet that has been running (each object is verified on load)
  start_at                  wall-clock time of simulated time zero, RFC 3339 (default Friday
                            2027-01-15T08:00:00Z); windows and deadlines read it
  [[site]]  name, wan_mbps, wan_rtt_ms, kinds = [{ count, zone, labels = {k = \"v\"}, quiet }]
                            the fleet site by site, as `patchmesh rollout plan --export`
                            writes it (then nodes and sites follow from it). A link between
                            two sites runs at the slower site's link; quiet is a node
                            record's quiet-hours mask (42 hex digits)
  clock_skew_ms             each node's clock is off by a uniform amount in +/- this
  adversaries               extra admitted-but-compromised nodes that inject forged, unsigned,
                            under-threshold, revoked, replayed and garbage objects
  revoke_admin_at_ms        when the root revokes the second admin (whose key the adversaries
                            then use); 0 disables
  [lan]  latency_ms         one-way delay between nodes of one site
         bandwidth_mbps     per-link bandwidth inside a site
         loss               fraction of messages lost inside a site (0.0-1.0)
  [wan]  rtt_ms             round-trip time between sites
         bandwidth_mbps     per-link bandwidth between sites
         loss               fraction of messages lost between sites
  [topology] lan_degree     links each node opens to random nodes of its own site
             wan_links_per_site  links each site opens to random other sites (plus a ring
                            that keeps the sites connected)
  [protocol] anti_entropy_interval_ms  mean period of digest exchange with one random peer
             summary_interval_ms       minimum period between a site's summaries
             gossip_flush_ms           batching period for relayed records and summaries
             summary_fanout            random peers each fresh site summary is pushed to
             rollout_eval_ms           rollouts are re-evaluated at least this often (1000)
  [[partition]] sites       how many sites lose their WAN links
                start_ms, end_ms   when the partition starts and heals
                publish_inside     admins publish on both sides while it lasts
                pass               message kinds that still cross ([\"beacon\"]: an eclipse by
                                   attackers forwarding only beacons); reported: reach_*
  [[crash]]  nodes          how many random nodes crash (losing what they had not persisted)
             at_ms, down_ms when, and for how long, before they restart from their store
  [payload]  size_bytes     a patch payload every honest node fetches with the endpoint's
                            download machine (1 byte to 16 GiB); reported: wan_bytes_per_site_ratio,
                            payload_complete_ms, payload_complete_nodes, payload_failovers,
                            payload_penalties, payload_origin_copies
             at_ms          when it is published at a random up node (the origin); must be
                            before duration_ms
             fetcher_crashes  up to how many sites lose their elected WAN fetcher while it
                            holds part of the payload (0: none); every honest node then keeps
                            a store to restart from
             fetcher_crash_at_ms, fetcher_down_ms  when, and for how long
  [rollout]  at_ms          when an admin publishes a patch and its rollout (one catalog change)
                            at a random up node; must be before duration_ms
             recheck_ms     re-verification period while soaking (5000; >= 100)
             max_concurrent_per_site  installs running at once in one site (5; >= 1)
             windows        maintenance windows in each node's own time zone, e.g.
                            [\"mon-fri 22:00-04:00\", \"* 16:00-20:00\"]; empty = any time.
                            Simulated time zero is Friday 2027-01-15 08:00 UTC (clocks skew)
             deadline_ms    after this (from scenario start) windows hold nothing back
             rollback_on_halt  installs roll back when the rollout halts (true)
             time_zones     IANA names assigned to sites round-robin (['UTC']); a
                            [[site]] kind's zone overrides them
             target_labels  { k = \"v\" }: only nodes with these labels are targeted
             max_targets    the most nodes the rollout may reach
             auto_window    install each node in its own quiet hours (--window auto)
             activity       profiles given to nodes round-robin, their quiet hours learnt
                            from them: office, night-shift, server, new (no history)
             expect_complete  a good patch that does not reach every targeted node by the
                            end is a violation (true; rehearsals set false)
             canary_label, canary_fraction  \"key=value\" given to that fraction of nodes at
                            admission, so a label ring can pick them
             fail_label, label_fraction  \"key=value\" given to that fraction of nodes
             fail_fraction  fraction of the fail_label nodes whose verification fails (the
                            bad patch); 0 = a good patch
             fetch_ms, stage_ms, install_ms, verify_ms, rollback_ms  step durations (1000,
                            300, 1500, 500, 1000); each takes its duration times
                            1 + step_jitter * U[0,1) (step_jitter 0.5). The fetch is this
                            delay, not the [payload] transfer model (which runs on its own)
             [rollout.gate] shared gate of every ring: min_success_permille (900),
                            max_failures (0), max_failure_permille (0), min_soak_ms (60000),
                            min_reports (1)
             [[rollout.rings]] name, percent (cumulative 0-100), labels = { k = \"v\" }, and
                            any gate field, overriding the shared gate for that ring
             Reported: blast_radius, halting_ring, halt_threshold_ms, halt_latency_ms,
             halt_after_heal_ms, halted_nodes, live_nodes, rings_completed,
             ring_targeted_nodes, ring_start_ms,
             ring_done_ms, ring_gate_ms, rollout_complete_ms, rollout_committed_nodes,
             rollout_targeted_nodes, rolled_back_nodes, failed_nodes,
             first_start_ms_by_zone, max_site_concurrency, effects_lost (see the rollout
             module docs for their exact definitions)
  [intel]    at_ms          when an admin publishes an intel bundle (60000)
             fetch_ms, fetch_jitter  bundle fetch once a node holds its catalog entry (2000,
                            0.5); the node then assesses itself and signs its exposure
             check_ms       how often each node's view is checked (1000)
             Reported: exposure_visible_ms (publication -> the node's view, its site's
             records and every other site's summary, counts every node on the bundle; over
             live honest nodes), visible_nodes, live_nodes
  [enrol]    machines       new machines joining site 0 with one enrolment voucher (1000)
             max_nodes      the voucher's limit (default: machines)
             at_ms, spread_ms  machines boot uniformly in [at_ms, at_ms + spread_ms)
                            (5000, 10000), each enrolling with its own skewed clock
             check_ms       how often each member's gate is read (500)
             split_at_ms, split_ms  site 0 splits into two halves that cannot reach each
                            other (nor the WAN, for the cut-off half) for split_ms (0: never)
             Reported: enrol_admitted_ms (boot -> every live member of the site up at that
             boot admits it, over machines inside the limit), enrol_admitted_nodes,
             enrol_all_admitted_after_last_boot_ms (last boot -> every live member admits
             every machine inside the limit),
             enrol_refused_nodes, enrol_over_limit_max (most machines past the limit admitted
             by some member at one moment), enrol_over_limit_last_ms,
             enrol_over_limit_after_heal_ms
";

fn d_duration() -> u64 {
    20_000
}
fn d_warmup() -> u64 {
    4_000
}
fn d_publish() -> u64 {
    6_000
}
fn d_one() -> f64 {
    1.0
}

/// A scenario.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Label.
    #[serde(default)]
    pub name: String,
    /// Honest nodes (follows from `[[site]]` when given).
    #[serde(default)]
    pub nodes: usize,
    /// Sites (follows from `[[site]]` when given).
    #[serde(default)]
    pub sites: usize,
    /// Wall-clock time of simulated time zero, RFC 3339 (default Friday 2027-01-15 08:00 UTC).
    #[serde(default)]
    pub start_at: Option<String>,
    /// `start_at` in milliseconds since the Unix epoch (set on load).
    #[serde(skip)]
    pub epoch_ms: u64,
    /// The fleet site by site (what `patchmesh rollout plan` exports); when given, `nodes` and
    /// `sites` follow from it.
    #[serde(default)]
    pub site: Vec<SiteSpec>,
    /// Default seed.
    #[serde(default)]
    pub seed: u64,
    /// Simulated run length.
    #[serde(default = "d_duration")]
    pub duration_ms: u64,
    /// Warm-up.
    #[serde(default = "d_warmup")]
    pub warmup_ms: u64,
    /// When the measured change is published.
    #[serde(default = "d_publish")]
    pub publish_at_ms: u64,
    /// How the fleet starts.
    #[serde(default)]
    pub start: Start,
    /// Clock skew bound.
    #[serde(default)]
    pub clock_skew_ms: u64,
    /// Byzantine nodes.
    #[serde(default)]
    pub adversaries: usize,
    /// Revocation time (0: none).
    #[serde(default)]
    pub revoke_admin_at_ms: u64,
    /// LAN links.
    #[serde(default = "Link::lan")]
    pub lan: Link,
    /// WAN links.
    #[serde(default = "Link::wan")]
    pub wan: Link,
    /// Overlay shape.
    #[serde(default)]
    pub topology: Topology,
    /// Protocol timing.
    #[serde(default)]
    pub protocol: Protocol,
    /// Partitions.
    #[serde(default)]
    pub partition: Vec<Partition>,
    /// Crashes.
    #[serde(default)]
    pub crash: Vec<Crash>,
    /// A payload to transfer.
    #[serde(default)]
    pub payload: Option<PayloadSpec>,
    /// A patch rolled out through rings.
    #[serde(default)]
    pub rollout: Option<RolloutSpec>,
    /// An intel bundle published, and how fast the fleet's exposure becomes visible.
    #[serde(default)]
    pub intel: Option<crate::intel::IntelSpec>,
    /// Machines joining site 0 with one enrolment voucher.
    #[serde(default)]
    pub enrol: Option<crate::enrol::EnrolSpec>,
}

/// One site of an explicit fleet.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    /// Its name (for reports).
    #[serde(default)]
    pub name: String,
    /// Its WAN link's bandwidth (default `[wan].bandwidth_mbps`). A link between two sites
    /// runs at the slower site's link.
    pub wan_mbps: Option<f64>,
    /// Its WAN round trip (default `[wan].rtt_ms`).
    pub wan_rtt_ms: Option<f64>,
    /// Its members, kind by kind.
    pub kinds: Vec<KindSpec>,
}

/// Members of one kind in a site.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KindSpec {
    /// How many.
    pub count: usize,
    /// Their IANA time zone (default: `[rollout].time_zones`, round-robin by site).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// Their certificate labels.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Their quiet hours (`--window auto`): the 168-bit mask as a node's record carries it,
    /// hex (bit h = hour h of the week, Monday 00:00 local = 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet: Option<String>,
}

impl KindSpec {
    /// Its quiet hours, decoded (validated on load).
    pub fn quiet_hours(&self) -> Option<patchmesh_protocol::rollout::activity::QuietHours> {
        let mut mask = [0u8; 21];
        hex::decode_to_slice(self.quiet.as_deref()?, &mut mask).ok()?;
        Some(patchmesh_protocol::rollout::activity::QuietHours { mask })
    }
}

/// Simulated time zero when a scenario gives no `start_at`: Friday 2027-01-15 08:00 UTC.
pub const EPOCH_MS_DEFAULT: u64 = 1_800_000_000_000;

/// How the fleet starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Empty stores; the fleet warms up live.
    #[default]
    Cold,
    /// Stores hold the site's records and every site's summary.
    Steady,
}

/// A kind of link.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// One-way latency (LAN).
    #[serde(default)]
    pub latency_ms: f64,
    /// Round trip (WAN); one-way delay is half.
    #[serde(default)]
    pub rtt_ms: f64,
    /// Bandwidth per link.
    #[serde(default = "d_one")]
    pub bandwidth_mbps: f64,
    /// Loss fraction.
    #[serde(default)]
    pub loss: f64,
}

impl Link {
    fn lan() -> Link {
        Link { latency_ms: 1.0, rtt_ms: 0.0, bandwidth_mbps: 1000.0, loss: 0.0 }
    }
    fn wan() -> Link {
        Link { latency_ms: 0.0, rtt_ms: 80.0, bandwidth_mbps: 20.0, loss: 0.0 }
    }
    /// One-way delay in microseconds.
    pub fn one_way_us(&self) -> u64 {
        ((self.latency_ms + self.rtt_ms / 2.0) * 1000.0) as u64
    }
    /// Microseconds to serialise `bytes`.
    pub fn transmit_us(&self, bytes: usize) -> u64 {
        ((bytes as f64 * 8.0) / self.bandwidth_mbps.max(0.001)) as u64
    }
}

/// Overlay shape.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topology {
    /// Links each node opens inside its site.
    pub lan_degree: usize,
    /// Inter-site links per site.
    pub wan_links_per_site: usize,
}

impl Default for Topology {
    fn default() -> Self {
        Topology { lan_degree: 3, wan_links_per_site: 3 }
    }
}

/// Protocol timing.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Protocol {
    /// Anti-entropy period.
    pub anti_entropy_interval_ms: u64,
    /// Summary period.
    pub summary_interval_ms: u64,
    /// Relay batching period.
    pub gossip_flush_ms: u64,
    /// Peers each fresh summary is pushed to.
    pub summary_fanout: usize,
    /// Rollout re-evaluation period.
    pub rollout_eval_ms: u64,
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol {
            anti_entropy_interval_ms: 1000,
            summary_interval_ms: 3000,
            gossip_flush_ms: 50,
            summary_fanout: 2,
            rollout_eval_ms: 1000,
        }
    }
}

/// A partition of some sites from the rest.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// How many sites are cut off.
    pub sites: usize,
    /// Start.
    pub start_ms: u64,
    /// Heal.
    pub end_ms: u64,
    /// Publish on both sides during it.
    #[serde(default)]
    pub publish_inside: bool,
    /// Message kinds that still cross the cut (`"beacon"`, `"alarms"`, … as in
    /// `Message::kind`): an eclipse by attackers holding every WAN link of these sites that
    /// forward only these and withhold the rest. Empty: a plain cut (or a silent eclipse).
    #[serde(default)]
    pub pass: Vec<String>,
}

/// Crash of some nodes.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    /// How many nodes.
    pub nodes: usize,
    /// When.
    pub at_ms: u64,
    /// For how long.
    pub down_ms: u64,
}

/// A patch payload every honest node fetches.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadSpec {
    /// Payload size.
    pub size_bytes: u64,
    /// Publication time.
    pub at_ms: u64,
    /// Sites whose elected fetcher crashes mid-transfer.
    #[serde(default)]
    pub fetcher_crashes: usize,
    /// When they crash.
    #[serde(default)]
    pub fetcher_crash_at_ms: u64,
    /// For how long.
    #[serde(default)]
    pub fetcher_down_ms: u64,
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid scenario.
    #[error("invalid scenario {path}: {source}")]
    Parse {
        /// The path.
        path: String,
        /// The cause.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid scenario: {0}")]
    Invalid(String),
    /// The payload is larger than the protocol accepts.
    #[error("invalid scenario: payload: {0}")]
    Payload(#[from] TransferError),
}

/// Largest scenario file read.
const SCENARIO_BYTES_MAX: u64 = 1024 * 1024;

impl Scenario {
    /// Loads and validates a scenario file.
    pub fn load(path: &str) -> Result<Scenario, ScenarioError> {
        let read = |source| ScenarioError::Read { path: path.to_string(), source };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > SCENARIO_BYTES_MAX {
            return Err(ScenarioError::Invalid(format!(
                "{path} is {len} bytes, limit {SCENARIO_BYTES_MAX}"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text, path)
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str, path: &str) -> Result<Scenario, ScenarioError> {
        let mut s: Scenario = toml::from_str(text)
            .map_err(|source| ScenarioError::Parse { path: path.to_string(), source })?;
        s.resolve()?;
        s.validate()?;
        Ok(s)
    }

    /// Derives `epoch_ms` from `start_at`, and `nodes` and `sites` from `[[site]]`.
    fn resolve(&mut self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        self.epoch_ms = match &self.start_at {
            None => EPOCH_MS_DEFAULT,
            Some(t) => match t.parse::<jiff::Timestamp>() {
                Ok(ts) if ts.as_millisecond() > 0 => ts.as_millisecond() as u64,
                _ => return bad(format!("start_at {t:?} is not an RFC 3339 time after 1970")),
            },
        };
        if self.site.is_empty() {
            return Ok(());
        }
        let total: usize = self.site.iter().flat_map(|s| &s.kinds).map(|k| k.count).sum();
        if (self.nodes != 0 && self.nodes != total)
            || (self.sites != 0 && self.sites != self.site.len())
        {
            return bad(format!(
                "nodes and sites, when given with [[site]], must be its totals ({total} nodes in {} sites)",
                self.site.len()
            ));
        }
        for (i, site) in self.site.iter().enumerate() {
            let positive = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && v > 0.0);
            if !positive(site.wan_mbps)
                || site.wan_rtt_ms.is_some_and(|r| !r.is_finite() || r < 0.0)
            {
                return bad(format!("site {i}: wan_mbps must be > 0 and wan_rtt_ms >= 0"));
            }
            if site.kinds.iter().map(|k| k.count).sum::<usize>() == 0 {
                return bad(format!("site {i} ({}) has no members", site.name));
            }
            for k in &site.kinds {
                if k.quiet.is_some() && k.quiet_hours().is_none() {
                    return bad(format!("site {i}: quiet must be 42 hex digits (168 bits)"));
                }
                if !k.zone.is_empty() && jiff::tz::TimeZone::get(&k.zone).is_err() {
                    return bad(format!("site {i}: unknown time zone {:?}", k.zone));
                }
                let limit = patchmesh_protocol::limits::LABEL_BYTES_MAX;
                if k.labels.len() > patchmesh_protocol::limits::LABELS_PER_NODE_MAX
                    || k.labels
                        .iter()
                        .any(|(a, b)| a.is_empty() || a.len() > limit || b.len() > limit)
                {
                    return bad(format!("site {i}: labels out of bounds"));
                }
            }
        }
        self.nodes = total;
        self.sites = self.site.len();
        Ok(())
    }

    /// Each honest node's site, and the kind it is of (`(site, kind)` indexes into
    /// `[[site]]`, or `None` for fleets spread evenly).
    pub fn placement(&self) -> Vec<(u32, Option<(usize, usize)>)> {
        if self.site.is_empty() {
            return (0..self.nodes).map(|i| ((i % self.sites) as u32, None)).collect();
        }
        let mut out = Vec::with_capacity(self.nodes);
        for (si, site) in self.site.iter().enumerate() {
            for (ki, k) in site.kinds.iter().enumerate() {
                out.extend(std::iter::repeat_n((si as u32, Some((si, ki))), k.count));
            }
        }
        out
    }

    /// The WAN link of site `site`.
    pub fn wan_of(&self, site: usize) -> Link {
        let mut l = self.wan.clone();
        if let Some(s) = self.site.get(site) {
            l.bandwidth_mbps = s.wan_mbps.unwrap_or(l.bandwidth_mbps);
            l.rtt_ms = s.wan_rtt_ms.unwrap_or(l.rtt_ms);
        }
        l
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: &str| Err(ScenarioError::Invalid(m.to_string()));
        if self.nodes == 0 || self.nodes > 200_000 {
            return bad("nodes must be 1..=200000");
        }
        if self.sites == 0 || self.sites > self.nodes || self.sites > 4000 {
            return bad("sites must be 1..=min(nodes, 4000)");
        }
        for l in [&self.lan, &self.wan] {
            if !(0.0..=1.0).contains(&l.loss)
                || l.bandwidth_mbps <= 0.0
                || l.latency_ms < 0.0
                || l.rtt_ms < 0.0
            {
                return bad("link loss must be 0..=1, bandwidth > 0, delays >= 0");
            }
        }
        if self.publish_at_ms >= self.duration_ms || self.warmup_ms > self.publish_at_ms {
            return bad("need warmup_ms <= publish_at_ms < duration_ms");
        }
        if self.protocol.anti_entropy_interval_ms == 0
            || self.protocol.gossip_flush_ms == 0
            || self.protocol.rollout_eval_ms == 0
        {
            return bad("protocol intervals must be > 0");
        }
        if self.partition.iter().map(|p| p.sites).sum::<usize>() >= self.sites {
            return bad("partitions cut disjoint sites: together fewer sites than the fleet");
        }
        for p in &self.partition {
            if p.start_ms >= p.end_ms || p.sites >= self.sites {
                return bad("partition needs start_ms < end_ms and fewer sites than the fleet");
            }
            const KINDS: [&str; 12] = [
                "hello",
                "admin_sets",
                "catalog_change",
                "catalog_sync",
                "digest",
                "site_keys",
                "site_objects",
                "summary_ranks",
                "summaries",
                "alarms",
                "beacon",
                "beacons_ask",
            ];
            if let Some(k) = p.pass.iter().find(|k| !KINDS.contains(&k.as_str())) {
                return Err(ScenarioError::Invalid(format!(
                    "partition pass: unknown message kind {k:?} (kinds: {})",
                    KINDS.join(", ")
                )));
            }
        }
        for c in &self.crash {
            if c.nodes > self.nodes {
                return bad("crash nodes exceed the fleet");
            }
        }
        if self.adversaries > 64 {
            return bad("at most 64 adversaries");
        }
        if let Some(p) = &self.payload {
            check_size(p.size_bytes)?;
            if p.size_bytes == 0 {
                return bad("payload size_bytes must be > 0");
            }
            if p.at_ms >= self.duration_ms {
                return bad("payload at_ms must be before duration_ms");
            }
            if p.fetcher_crashes > 0
                && (p.fetcher_crashes > self.sites
                    || p.fetcher_crash_at_ms <= p.at_ms
                    || p.fetcher_crash_at_ms >= self.duration_ms)
            {
                return bad(
                    "payload fetcher_crashes must be <= sites, with at_ms < fetcher_crash_at_ms < duration_ms",
                );
            }
        }
        if let Some(r) = &self.rollout {
            r.validate(self.duration_ms, !self.site.is_empty())?;
        }
        if let Some(e) = &self.enrol {
            if e.machines == 0 || e.machines > 20_000 {
                return bad("enrol machines must be 1..=20000");
            }
            if e.limit() == 0 || e.limit() > patchmesh_protocol::limits::VOUCHER_NODES_MAX {
                return bad("enrol max_nodes must be 1..=10000");
            }
            if e.check_ms == 0 || e.at_ms + e.spread_ms >= self.duration_ms {
                return bad("enrol needs check_ms > 0 and at_ms + spread_ms < duration_ms");
            }
            if e.split_at_ms > 0 && e.split_at_ms + e.split_ms >= self.duration_ms {
                return bad("enrol's split must heal before duration_ms");
            }
            if self.rollout.is_some() || self.intel.is_some() {
                // Both models measure every node of the fleet; machines joining mid-run would
                // count as nodes that never installed or never assessed.
                return bad("[enrol] runs without [rollout] and [intel]");
            }
        }
        Ok(())
    }
}
