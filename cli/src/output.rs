//! Human and JSON output of the read commands.

use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `patchmesh status`.
pub fn status(v: &Value, json: bool) {
    if json {
        outln!("{v}");
        return;
    }
    outln!("node      {}", s(&v["node"]));
    outln!("site      {}", s(&v["site"]));
    outln!("mesh      {} ({})", s(&v["mesh"]), s(&v["mesh_id"]));
    outln!("trust     admin set version {}", v["trust_version"]);
    outln!("catalog   {} changes, state {}", v["catalog_changes"], short(&v["catalog_state"]));
    outln!("state     {}", short(&v["state_hash"]));
    outln!("site      {} records, {} site summaries", v["site_records"], v["site_summaries"]);
    outln!("peers     {} connected, {} admitted", v["peers_connected"], v["peers_admitted"]);
    outln!("traffic   {} B sent, {} B received", v["bytes_sent"], v["bytes_received"]);
    outln!("uptime    {} s", v["uptime_ms"].as_u64().unwrap_or(0) / 1000);
    if let Some(rejected) = v["rejected"].as_object().filter(|m| !m.is_empty()) {
        let parts: Vec<String> = rejected.iter().map(|(k, n)| format!("{k}={n}")).collect();
        outln!("refused   {}", parts.join(" "));
    }
    if let Some(addrs) = v["listen"].as_array() {
        for a in addrs {
            outln!("listen    {}", s(a));
        }
    }
}

fn short(v: &Value) -> String {
    s(v).chars().take(16).collect()
}

/// `patchmesh peers`.
pub fn peers(v: &Value, json: bool) {
    if json {
        outln!("{v}");
        return;
    }
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        outln!("no peers connected");
        return;
    }
    outln!("{:<54} {:<10} {:<16} {:>9}", "PEER", "ADMITTED", "SITE", "PENALTIES");
    for p in list {
        outln!(
            "{:<54} {:<10} {:<16} {:>9}",
            s(&p["peer_id"]),
            if p["admitted"].as_bool() == Some(true) { "yes" } else { "no" },
            p["site"].as_str().unwrap_or("-"),
            p["penalties"]
        );
    }
}

/// `patchmesh inventory`.
pub fn inventory(v: &Value, json: bool) {
    if json {
        outln!("{v}");
        return;
    }
    let inv = &v["inventory"];
    outln!("node      {}", s(&v["node"]));
    outln!("host      {}", s(&inv["hostname"]));
    outln!("os        {}", s(&inv["os"]));
    outln!("kernel    {} ({})", s(&inv["kernel"]), s(&inv["arch"]));
    outln!("cpus      {}", inv["cpus"]);
    outln!("memory    {} MiB", inv["memory_bytes"].as_u64().unwrap_or(0) / (1024 * 1024));
    let verified = v["verified_against_signed_record"].as_bool() == Some(true);
    let pkgs = inv["packages"].as_array().cloned().unwrap_or_default();
    outln!(
        "packages  {}{}",
        pkgs.len(),
        if verified {
            " (matches the signed record)"
        } else {
            " (no signed record held here to check against)"
        }
    );
    for p in pkgs {
        outln!(
            "  {:<40} {:<32} {:<8} {}",
            s(&p["name"]),
            s(&p["version"]),
            s(&p["arch"]),
            s(&p["status"])
        );
    }
}

/// `patchmesh catalog show`.
pub fn catalog(v: &Value, json: bool) {
    if json {
        outln!("{v}");
        return;
    }
    outln!("catalog state {} ({} signed changes)", s(&v["catalog_state"]), v["changes"]);
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        outln!("(empty)");
    }
    for e in entries {
        let d = &e["entry"];
        match s(&d["kind"]) {
            "patch" => outln!(
                "patch    {} {}  {} bytes  executor={}  id={}",
                s(&d["name"]),
                s(&d["version"]),
                d["size_bytes"],
                s(&d["executor"]),
                s(&d["content_id"])
            ),
            "rollout" => outln!("rollout  {}  patch={}", s(&d["id"]), s(&d["content_id"])),
            _ => outln!("command  {} on rollout {}", s(&d["action"]), s(&d["rollout"])),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `patchmesh fetch`: a progress bar (bytes, rate, sources, ETA) on a terminal, one JSON
/// object with `--json`. Polls the node, which owns the download.
pub fn fetch_progress(
    mut poll: impl FnMut() -> anyhow::Result<Value>,
    json: bool,
    timeout_s: u64,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let started = std::time::Instant::now();
    let bar = if json || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40.cyan/blue} {bytes}/{total_bytes} {msg} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        b
    };
    loop {
        let v = poll()?;
        let size = v["size_bytes"].as_u64().unwrap_or(0);
        let have = v["have_bytes"].as_u64().unwrap_or(0);
        bar.set_length(size);
        bar.set_position(have);
        let waiting_s = v["waiting_ms"].as_u64().unwrap_or(0) / 1000;
        bar.set_message(if waiting_s > 0 {
            let role = v["role"].as_str().unwrap_or("-");
            format!("waiting {waiting_s} s for a peer that holds it [{role}]")
        } else {
            format!(
                "{}/s from {} source(s) [{}]",
                indicatif::HumanBytes(v["rate_bytes_per_s"].as_u64().unwrap_or(0)),
                v["sources_active"],
                v["role"].as_str().unwrap_or("-"),
            )
        });
        match v["state"].as_str() {
            Some("complete") => {
                bar.finish_and_clear();
                if json {
                    outln!("{v}");
                } else {
                    outln!(
                        "complete: {} in {:.1} s ({} from this site, {} from other sites)",
                        mib(size),
                        v["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                        mib(v["lan_bytes"].as_u64().unwrap_or(0)),
                        mib(v["wan_bytes"].as_u64().unwrap_or(0)),
                    );
                    if let Some(d) = v["dropped"].as_object().filter(|m| !m.is_empty()) {
                        let parts: Vec<String> =
                            d.iter().map(|(k, n)| format!("{k}={n}")).collect();
                        outln!("sources rested or retried: {}", parts.join(" "));
                    }
                }
                return Ok(());
            }
            Some("failed") => {
                bar.abandon();
                if json {
                    outln!("{v}");
                }
                anyhow::bail!(
                    "fetch failed after {} of {}: {}",
                    mib(have),
                    mib(size),
                    v["error"].as_str().unwrap_or("unknown error")
                );
            }
            Some("absent") => anyhow::bail!("the node is not fetching this content"),
            _ => {}
        }
        if timeout_s > 0 && started.elapsed().as_secs() >= timeout_s {
            bar.abandon();
            if json {
                outln!("{v}");
            }
            anyhow::bail!("gave up after {timeout_s} s with {} of {}", mib(have), mib(size));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `patchmesh content list`.
pub fn content_list(v: &Value, json: bool) {
    if json {
        outln!("{v}");
        return;
    }
    let list = v["contents"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        outln!("no payloads held");
        return;
    }
    outln!("{:<64}  {:>12}  {:>6}  {:<9}  PATCH", "CONTENT ID", "SIZE", "HELD", "STATE");
    for c in list {
        let size = c["size_bytes"].as_u64().unwrap_or(0);
        let have = c["have_bytes"].as_u64().unwrap_or(0);
        let pct = if size == 0 { 100.0 } else { have as f64 * 100.0 / size as f64 };
        outln!(
            "{:<64}  {:>12}  {:>5.1}%  {:<9}  {}",
            s(&c["content_id"]),
            size,
            pct,
            s(&c["state"]),
            c["patch"].as_str().unwrap_or("(not in catalog)")
        );
        if let Some(e) = c["error"].as_str() {
            outln!("    error: {e}");
        }
    }
    outln!("{} held in total", mib(v["held_bytes"].as_u64().unwrap_or(0)));
}

/// `patchmesh content gc`.
pub fn content_gc(v: &Value, json: bool) {
    if json {
        outln!("{v}");
        return;
    }
    let removed = v["removed"].as_array().cloned().unwrap_or_default();
    let verb = if v["dry_run"].as_bool() == Some(true) { "would remove" } else { "removed" };
    let total: u64 = removed.iter().filter_map(|r| r["size_bytes"].as_u64()).sum();
    for r in &removed {
        outln!("{verb} {} ({} bytes)", s(&r["content_id"]), r["size_bytes"]);
    }
    outln!("{verb} {} payload(s), {}", removed.len(), mib(total));
}

fn control_text(r: &Value) -> String {
    let c = &r["control"];
    match c["state"].as_str() {
        Some("halted") => format!(
            "HALTED by ring {} ({} failures)",
            r["rings"][c["ring"].as_u64().unwrap_or(0) as usize]["name"].as_str().unwrap_or("?"),
            c["failures"]
        ),
        Some("awaiting_approval") => {
            format!("awaiting approval ({} of {})", r["approvals"], r["approvals_needed"])
        }
        Some(state) => state.replace('_', " "),
        None => "not evaluated yet".into(),
    }
}

/// True once a rollout needs no more watching: stopped, or every ring's members settled.
pub fn rollout_settled(r: &Value) -> bool {
    let state = r["control"]["state"].as_str().unwrap_or("");
    let rings = r["rings"].as_array().cloned().unwrap_or_default();
    let busy = rings.iter().any(|g| g["installing"].as_u64().unwrap_or(0) > 0);
    if matches!(state, "halted" | "aborted") {
        return !busy;
    }
    !rings.is_empty()
        && rings.iter().all(|g| {
            let t = g["targeted"].as_u64().unwrap_or(0);
            t > 0
                && g["succeeded"].as_u64().unwrap_or(0)
                    + g["failed"].as_u64().unwrap_or(0)
                    + g["rolled_back"].as_u64().unwrap_or(0)
                    >= t
        })
}

/// One rollout as text: header, then a line per ring.
pub fn rollout_text(r: &Value) -> String {
    let mut out = format!(
        "rollout {} — {} {} — {}\n",
        short(&r["id"]),
        r["patch"]["name"].as_str().unwrap_or("?"),
        r["patch"]["version"].as_str().unwrap_or(""),
        control_text(r)
    );
    out += &format!(
        "  {:<10} {:>8} {:>8} {:>10} {:>9} {:>6} {:>11}\n",
        "ring", "targeted", "pending", "installing", "succeeded", "failed", "rolled back"
    );
    for g in r["rings"].as_array().into_iter().flatten() {
        out += &format!(
            "  {:<10} {:>8} {:>8} {:>10} {:>9} {:>6} {:>11}\n",
            g["name"].as_str().unwrap_or("?"),
            g["targeted"].as_u64().unwrap_or(0),
            g["pending"].as_u64().unwrap_or(0),
            g["installing"].as_u64().unwrap_or(0),
            g["succeeded"].as_u64().unwrap_or(0),
            g["failed"].as_u64().unwrap_or(0),
            g["rolled_back"].as_u64().unwrap_or(0)
        );
    }
    if let Some(w) = r["waiting"].as_str().filter(|w| !w.is_empty()) {
        out += &format!("  waiting: {w}\n");
    }
    if let Some(l) = r["local"].as_object() {
        out += &format!(
            "  this node: ring {} step {} {}\n",
            l["ring"],
            l["step"].as_str().unwrap_or("?"),
            l["detail"].as_str().unwrap_or("")
        );
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
    pub fn update(&self, rollouts: &[Value]) {
        let style = indicatif::ProgressStyle::with_template("  {prefix:<10} {bar:30.green/red} {msg}")
            .expect("static template")
            .progress_chars("=> ");
        for r in rollouts {
            let id = s(&r["id"]).to_string();
            let mut headers = self.headers.borrow_mut();
            let header = headers.entry(id.clone()).or_insert_with(|| {
                let h = self.multi.add(indicatif::ProgressBar::new_spinner());
                h.set_style(indicatif::ProgressStyle::with_template("{msg}").expect("static template"));
                h
            });
            header.set_message(format!(
                "rollout {} — {} — {}",
                short(&r["id"]),
                r["patch"]["name"].as_str().unwrap_or("?"),
                control_text(r)
            ));
            for (i, g) in r["rings"].as_array().into_iter().flatten().enumerate() {
                let mut bars = self.bars.borrow_mut();
                let bar = bars.entry((id.clone(), i)).or_insert_with(|| {
                    let b = self.multi.add(indicatif::ProgressBar::new(0));
                    b.set_style(style.clone());
                    b.set_prefix(g["name"].as_str().unwrap_or("?").to_string());
                    b
                });
                bar.set_length(g["targeted"].as_u64().unwrap_or(0).max(1));
                bar.set_position(g["succeeded"].as_u64().unwrap_or(0));
                bar.set_message(format!(
                    "{} targeted, {} pending, {} installing, {} succeeded, {} failed, {} rolled back",
                    g["targeted"], g["pending"], g["installing"], g["succeeded"], g["failed"], g["rolled_back"]
                ));
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
