//! Human and JSON output of the read commands, from the node's typed views.

use patchmesh_node::control::{
    CatalogEntryView, CatalogView, ContentListView, ContentView, GcView, InventoryView, PeerView,
    RolloutView, StatusView,
};
use patchmesh_protocol::rollout::{Control, RingStats};
use serde::Serialize;

/// One view as JSON (a view always encodes).
pub fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// One output as JSON with every object's keys in sorted order, as a `serde_json::Value`
/// holds them: the outputs first built with `serde_json::json!` have always printed that way.
pub fn json_sorted(v: &impl Serialize) -> String {
    serde_json::to_value(v).map(|v| v.to_string()).unwrap_or_default()
}

fn short(s: &str) -> String {
    s.chars().take(16).collect()
}

/// `patchmesh status`.
pub fn status(v: &StatusView, json_out: bool) {
    if json_out {
        outln!("{}", json(v));
        return;
    }
    outln!("node      {}", v.node);
    outln!("site      {}", v.site);
    outln!("mesh      {} ({})", v.mesh, v.mesh_id);
    outln!("trust     admin set version {}", v.trust_version);
    outln!("catalog   {} changes, state {}", v.catalog_changes, short(&v.catalog_state));
    outln!("state     {}", short(&v.state_hash));
    outln!("site      {} records, {} site summaries", v.site_records, v.site_summaries);
    outln!("peers     {} connected, {} admitted", v.peers_connected, v.peers_admitted);
    if !v.reach.text.is_empty() {
        let mark = if v.reach.holds_installs { "⚠ " } else { "" };
        outln!("reach     {mark}{}", v.reach.text);
    }
    outln!("traffic   {} B sent, {} B received", v.bytes_sent, v.bytes_received);
    outln!("uptime    {} s", v.uptime_ms / 1000);
    if !v.rejected.is_empty() {
        let parts: Vec<String> = v.rejected.iter().map(|(k, n)| format!("{k}={n}")).collect();
        outln!("refused   {}", parts.join(" "));
    }
    for a in &v.listen {
        outln!("listen    {a}");
    }
}

/// `patchmesh peers`.
pub fn peers(list: &[PeerView], json_out: bool) {
    if json_out {
        outln!("{}", json(&list));
        return;
    }
    if list.is_empty() {
        outln!("no peers connected");
        return;
    }
    outln!("{:<54} {:<10} {:<16} {:>9}  PATH", "PEER", "ADMITTED", "SITE", "PENALTIES");
    for p in list {
        // Direct when any connection is; relayed when all go through a relay (behind NAT).
        let path = match (p.connections.iter().any(|c| !c.relayed), p.connections.is_empty()) {
            (_, true) => "-",
            (true, _) => "direct",
            (false, _) => "relayed",
        };
        outln!(
            "{:<54} {:<10} {:<16} {:>9}  {path}",
            p.peer_id,
            if p.admitted { "yes" } else { "no" },
            p.site.as_deref().unwrap_or("-"),
            p.penalties
        );
    }
}

pub use patchmesh_node::units::bytes_text;

/// `patchmesh fleet`.
pub fn fleet(v: &patchmesh_node::control::FleetView, json_out: bool) {
    if json_out {
        outln!("{}", json(v));
        return;
    }
    outln!(
        "{:<20} {:>7}  {:<8} {:>10}  KINDS (count  zone  os  labels)",
        "SITE",
        "MEMBERS",
        "FROM",
        "LEAST FREE"
    );
    for s in &v.sites {
        let mut kinds: Vec<String> = s
            .kinds
            .iter()
            .map(|k| {
                let labels: Vec<String> =
                    k.labels.iter().map(|(a, b)| format!("{a}={b}")).collect();
                // A peer's record says what its OS is: no control characters reach the terminal.
                let or_dash = |t: &str| {
                    if t.is_empty() {
                        "-".to_string()
                    } else {
                        t.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
                    }
                };
                format!("{} {} {} {}", k.count, or_dash(&k.zone), or_dash(&k.os), labels.join(","))
            })
            .collect();
        if s.other > 0 {
            kinds.push(format!("{} of other kinds", s.other));
        }
        outln!(
            "{:<20} {:>7}  {:<8} {:>10}  {}",
            s.site,
            s.members,
            if s.from_records { "records" } else { "summary" },
            s.min_free_disk_bytes.map_or("-".to_string(), bytes_text),
            kinds.join("; ")
        );
    }
    if !v.rtt_ms.is_empty() {
        let rtts: Vec<String> = v.rtt_ms.iter().map(|(s, ms)| format!("{s} {ms} ms")).collect();
        outln!("round trips from here: {}", rtts.join(", "));
    }
    if let Some(w) = &v.wan_observed {
        outln!(
            "WAN as this node's downloads measured it: {:.1} Mbit/s ({} over {} download(s))",
            w.rate_bytes_per_s() as f64 * 8.0 / 1e6,
            bytes_text(w.bytes),
            w.downloads
        );
    }
    outln!("LEAST FREE: the least free disk space a member reports where it keeps payloads");
}

/// `patchmesh inventory`.
pub fn inventory(v: &InventoryView, json_out: bool) {
    if json_out {
        outln!("{}", json(v));
        return;
    }
    let inv = &v.inventory;
    outln!("node      {}", v.node);
    outln!("host      {}", inv.hostname);
    outln!("os        {}", inv.os);
    outln!("kernel    {} ({})", inv.kernel, inv.arch);
    outln!("cpus      {}", inv.cpus);
    outln!("memory    {} MiB", inv.memory_bytes / (1024 * 1024));
    outln!(
        "packages  {}{}",
        inv.packages.len(),
        if v.verified_against_signed_record {
            " (matches the signed record)"
        } else {
            " (no signed record held here to check against)"
        }
    );
    for p in &inv.packages {
        outln!("  {:<40} {:<32} {:<8} {}", p.name, p.version, p.arch, p.status);
    }
}

/// `patchmesh catalog show`.
pub fn catalog(v: &CatalogView, json_out: bool) {
    if json_out {
        outln!("{}", json(v));
        return;
    }
    outln!("catalog state {} ({} signed changes)", v.catalog_state, v.changes);
    if v.entries.is_empty() {
        outln!("(empty)");
    }
    for e in &v.entries {
        match &e.entry {
            CatalogEntryView::Patch { name, version, content_id, size_bytes, executor } => outln!(
                "patch    {name} {version}  {size_bytes} bytes  executor={executor}  id={content_id}"
            ),
            CatalogEntryView::Rollout { id, content_id, .. } => {
                outln!("rollout  {id}  patch={content_id}")
            }
            CatalogEntryView::Command { rollout, action, .. } => {
                outln!("command  {action} on rollout {rollout}")
            }
            CatalogEntryView::Exception { cve, exception, target, expires_at_ms, .. } => {
                outln!("exception {exception} {cve} for {target} until {}", crate::intel::date(*expires_at_ms))
            }
            CatalogEntryView::Intel { content_id, size_bytes, sources, .. } => {
                outln!("intel    {size_bytes} bytes from {}  id={content_id}", sources.join(", "))
            }
            CatalogEntryView::Voucher(v) => {
                outln!(
                    "voucher  {} site={} {}/{} enrolled{}{}",
                    v.id,
                    v.site,
                    v.enrolments.len().min(v.max_nodes as usize),
                    v.max_nodes,
                    if v.revoked { "  REVOKED" } else { "" },
                    if v.require_approval { "  (approval required)" } else { "" }
                )
            }
            CatalogEntryView::NodeRevocation { node, site, reason, .. } => {
                outln!("revoked  node {node} of site {site}: {reason}")
            }
            CatalogEntryView::Deferrals { rollout, max, each_ms } => {
                outln!("deferrals  rollout {rollout}: users may defer {max}× by {} min", each_ms / 60_000)
            }
            CatalogEntryView::ReservedLabels { labels } => {
                let l: Vec<String> = labels
                    .iter()
                    .flat_map(|(k, vs)| {
                        if vs.is_empty() {
                            vec![format!("{k}=*")]
                        } else {
                            vs.iter().map(|v| format!("{k}={v}")).collect()
                        }
                    })
                    .collect();
                outln!("reserved labels (no voucher grants them)  {}", l.join(", "))
            }
            CatalogEntryView::Integrations { policy } => {
                let sinks: Vec<String> = policy.sinks.iter().map(|s| format!("{} ({:?})", s.name, s.kind).to_lowercase()).collect();
                outln!("integrations  sinks: {}", sinks.join(", "))
            }
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `patchmesh fetch`: a progress bar (bytes, rate, sources, ETA) on a terminal, one JSON
/// object with `--json`. Polls the node, which owns the download.
pub fn fetch_progress(
    mut poll: impl FnMut() -> anyhow::Result<ContentView>,
    json_out: bool,
    timeout_s: u64,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let started = std::time::Instant::now();
    let bar = if json_out || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(&colour(
                "{bar:40.cyan/blue} {bytes}/{total_bytes} {msg} eta {eta}",
            ))
            .expect("static template")
            .progress_chars("=> "),
        );
        b
    };
    loop {
        let v = poll()?;
        bar.set_length(v.size_bytes);
        bar.set_position(v.have_bytes);
        let role = if v.role.is_empty() { "-" } else { v.role.as_str() };
        let waiting_s = v.waiting_ms / 1000;
        bar.set_message(if waiting_s > 0 {
            format!("waiting {waiting_s} s for a peer that holds it [{role}]")
        } else {
            format!(
                "{}/s from {} source(s) [{role}]",
                indicatif::HumanBytes(v.rate_bytes_per_s),
                v.sources_active,
            )
        });
        match v.state.as_str() {
            "complete" => {
                bar.finish_and_clear();
                if json_out {
                    outln!("{}", json(&v));
                } else {
                    outln!(
                        "complete: {} in {:.1} s ({} from this site, {} from other sites)",
                        mib(v.size_bytes),
                        v.elapsed_ms as f64 / 1000.0,
                        mib(v.lan_bytes),
                        mib(v.wan_bytes),
                    );
                    if !v.dropped.is_empty() {
                        let parts: Vec<String> =
                            v.dropped.iter().map(|(k, n)| format!("{k}={n}")).collect();
                        outln!("sources rested or retried: {}", parts.join(" "));
                    }
                }
                return Ok(());
            }
            "failed" => {
                bar.abandon();
                if json_out {
                    outln!("{}", json(&v));
                }
                anyhow::bail!(
                    "fetch failed after {} of {}: {}",
                    mib(v.have_bytes),
                    mib(v.size_bytes),
                    v.error.as_deref().unwrap_or("unknown error")
                );
            }
            "absent" => anyhow::bail!("the node is not fetching this content"),
            _ => {}
        }
        if timeout_s > 0 && started.elapsed().as_secs() >= timeout_s {
            bar.abandon();
            if json_out {
                outln!("{}", json(&v));
            }
            anyhow::bail!(
                "gave up after {timeout_s} s with {} of {}",
                mib(v.have_bytes),
                mib(v.size_bytes)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `patchmesh content list`.
pub fn content_list(v: &ContentListView, json_out: bool) {
    if json_out {
        outln!("{}", json(v));
        return;
    }
    if v.contents.is_empty() {
        outln!("no payloads held");
        return;
    }
    outln!("{:<64}  {:>12}  {:>6}  {:<9}  PATCH", "CONTENT ID", "SIZE", "HELD", "STATE");
    for c in &v.contents {
        let pct = if c.size_bytes == 0 {
            100.0
        } else {
            c.have_bytes as f64 * 100.0 / c.size_bytes as f64
        };
        outln!(
            "{:<64}  {:>12}  {:>5.1}%  {:<9}  {}",
            c.content_id,
            c.size_bytes,
            pct,
            c.state,
            c.patch.as_deref().unwrap_or("(not in catalog)")
        );
        if let Some(e) = &c.error {
            outln!("    error: {e}");
        }
    }
    outln!("{} held in total", mib(v.held_bytes));
}

/// `patchmesh content gc`.
pub fn content_gc(v: &GcView, json_out: bool) {
    if json_out {
        outln!("{}", json(v));
        return;
    }
    let verb = if v.dry_run { "would remove" } else { "removed" };
    let total: u64 = v.removed.iter().map(|r| r.size_bytes).sum();
    for r in &v.removed {
        outln!("{verb} {} ({} bytes)", r.content_id, r.size_bytes);
    }
    outln!("{verb} {} payload(s), {}", v.removed.len(), mib(total));
}

fn control_text(r: &RolloutView) -> String {
    match &r.control {
        Some(Control::Halted { ring, failures }) => format!(
            "HALTED by ring {} ({failures} failures)",
            r.rings.get(usize::from(*ring)).map_or("?", |g| g.name.as_str()),
        ),
        Some(Control::AwaitingApproval) => format!(
            "awaiting approval ({} of {})",
            r.approvals.unwrap_or(0),
            r.approvals_needed.unwrap_or(0)
        ),
        Some(_) => r.state().replace('_', " "),
        None => "not evaluated yet".into(),
    }
}

/// True once a rollout needs no more watching: stopped, or every ring's members settled.
pub fn rollout_settled(r: &RolloutView) -> bool {
    let busy = r.rings.iter().any(|g| g.counts.installing + g.counts.soaking > 0);
    if matches!(r.control, Some(Control::Halted { .. } | Control::Aborted)) {
        return !busy;
    }
    !r.rings.is_empty()
        && r.rings
            .iter()
            .map(|g| &g.counts)
            .all(|c| c.targeted > 0 && c.succeeded + c.failed + c.rolled_back >= c.targeted)
}

/// The names of a ring's counts as the CLI shows them, in order. "soaked": soaking members
/// whose soak is over by this node's clock, which the gate counts with the succeeded ones
/// (their sites say so later); "soaking" leaves them out.
const RING_COLUMNS: [&str; 8] = [
    "targeted",
    "pending",
    "installing",
    "soaking",
    "soaked",
    "succeeded",
    "failed",
    "rolled back",
];

/// The counts in [`RING_COLUMNS`] order.
fn ring_counts(c: &RingStats) -> [u32; 8] {
    [
        c.targeted,
        c.pending,
        c.installing,
        c.soak_running(),
        c.soak_over(),
        c.succeeded,
        c.failed,
        c.rolled_back,
    ]
}

/// One rollout as text: header, then a line per ring.
pub fn rollout_text(r: &RolloutView) -> String {
    let (name, version) =
        r.patch.as_ref().map_or(("?", ""), |p| (p.name.as_str(), p.version.as_str()));
    let mut out = format!("rollout {} — {name} {version} — {}\n", short(&r.id), control_text(r));
    let widths = [8, 8, 10, 7, 6, 9, 6, 11];
    out += &format!("  {:<10}", "ring");
    for (name, w) in RING_COLUMNS.into_iter().zip(widths) {
        out += &format!(" {name:>w$}");
    }
    out += "\n";
    for g in &r.rings {
        out += &format!("  {:<10}", g.name);
        for (n, w) in ring_counts(&g.counts).into_iter().zip(widths) {
            out += &format!(" {n:>w$}");
        }
        out += "\n";
    }
    if let Some(w) = r.waiting.as_deref().filter(|w| !w.is_empty()) {
        out += &format!("  waiting: {w}\n");
    }
    if let Some(l) = &r.local {
        out += &format!("  this node: ring {} step {} {}\n", l.ring, l.step, l.detail);
    }
    out
}

/// `patchmesh rollout status` on a terminal: a bar per ring, refreshed.
pub struct RolloutBars {
    multi: indicatif::MultiProgress,
    bars: std::cell::RefCell<std::collections::BTreeMap<(String, usize), indicatif::ProgressBar>>,
    headers: std::cell::RefCell<std::collections::BTreeMap<String, indicatif::ProgressBar>>,
}

impl RolloutBars {
    /// No bars yet.
    pub fn new() -> RolloutBars {
        RolloutBars {
            multi: indicatif::MultiProgress::new(),
            bars: Default::default(),
            headers: Default::default(),
        }
    }

    /// Redraws from the node's latest view.
    pub fn update(&self, rollouts: &[RolloutView]) {
        let style = indicatif::ProgressStyle::with_template(&colour(
            "  {prefix:<10} {bar:30.green/red} {msg}",
        ))
        .expect("static template")
        .progress_chars("=> ");
        for r in rollouts {
            let mut headers = self.headers.borrow_mut();
            let header = headers.entry(r.id.clone()).or_insert_with(|| {
                let h = self.multi.add(indicatif::ProgressBar::new_spinner());
                h.set_style(
                    indicatif::ProgressStyle::with_template("{msg}").expect("static template"),
                );
                h
            });
            header.set_message(format!(
                "rollout {} — {} — {}",
                short(&r.id),
                r.patch.as_ref().map_or("?", |p| p.name.as_str()),
                control_text(r)
            ));
            for (i, g) in r.rings.iter().enumerate() {
                let mut bars = self.bars.borrow_mut();
                let bar = bars.entry((r.id.clone(), i)).or_insert_with(|| {
                    let b = self.multi.add(indicatif::ProgressBar::new(0));
                    b.set_style(style.clone());
                    b.set_prefix(g.name.clone());
                    b
                });
                let c = &g.counts;
                bar.set_length(u64::from(c.targeted.max(1)));
                bar.set_position(u64::from(c.succeeded + c.soak_over()));
                let parts: Vec<String> = ring_counts(c)
                    .into_iter()
                    .zip(RING_COLUMNS)
                    .map(|(n, name)| format!("{n} {name}"))
                    .collect();
                bar.set_message(parts.join(", "));
            }
        }
    }

    /// Leaves the last state on screen.
    pub fn finish(&self) {
        for b in self.headers.borrow().values().chain(self.bars.borrow().values()) {
            b.abandon();
        }
    }
}

/// A progress template, its colours dropped when `NO_COLOR` is set (https://no-color.org).
fn colour(template: &str) -> String {
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        template.replace(".cyan/blue", "").replace(".green/red", "")
    } else {
        template.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soaking_members_whose_soak_is_over_show_as_soaked_not_twice() {
        let c = RingStats {
            targeted: 10,
            pending: 1,
            installing: 1,
            soaking: 5,
            soaked: 3,
            succeeded: 3,
            ..RingStats::default()
        };
        let counts = ring_counts(&c);
        let named: Vec<(&str, u32)> = RING_COLUMNS.into_iter().zip(counts).collect();
        assert!(named.contains(&("soaking", 2)) && named.contains(&("soaked", 3)), "{named:?}");
        // Every targeted member is in exactly one column.
        assert_eq!(counts[1..].iter().sum::<u32>(), c.targeted);
        // A count of soaked members above the soaking ones (a caller's mistake) is capped.
        let odd = RingStats { soaking: 1, soaked: 4, ..RingStats::default() };
        assert_eq!(ring_counts(&odd)[3..5], [0, 1]);
    }
}
