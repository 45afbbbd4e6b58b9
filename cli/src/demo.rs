//! `patchmesh demo`: a whole rollout story on one machine, with real node processes.
//!
//! 1. Makes a mesh in a temporary directory (genesis, root and admin keys), admits N nodes in S
//!    sites — the first node of each site labelled `ring=canary`, every other one of the rest
//!    `ring=half`, spread over the sites — and starts them on loopback QUIC, each with its own
//!    data directory and a target file `{data_dir}/app/app.bin`.
//! 2. Imports a small intel bundle (tracker JSON, OSV, KEV and EPSS files the demo writes in
//!    the real formats) about the demo's package `demo-app`, which every machine has at 1.0-1,
//!    publishes it, and shows the fleet's ranked findings once every node reports its exposure.
//! 3. Publishes the fix as the good patch (replacing that target and recording demo-app 2.0-1
//!    in the machine's package database, as dpkg would) and remediates the CVE with it: a
//!    rollout to exactly the exposed nodes through canary → half → all, with gates that need
//!    every ring member verified and soaked; then waits for the finding to close everywhere. The
//!    rings are by label, not by percent: a percent ring is a hash draw, and a small fleet can
//!    draw an empty ring, whose gate never passes (an empty ring is missing evidence).
//! 4. Publishes a bad patch whose verify step fails and rolls it the same way: the canaries
//!    fail, their signed failure reports halt the rollout on every node, the canaries roll
//!    back, and no node outside the canary ring installs it.
//! 5. Prints what happened (or one JSON object with `--json`), stops the nodes and removes the
//!    directory. Every figure is read back from the nodes: their journals, verdicts, halt
//!    times and payload byte counters, and the target files on disk.

use crate::intel::FleetVulnsOut;
use crate::{call, NodeArgs};
use anyhow::{bail, Context};
use clap::Args;
use patchmesh_node::control::Request;
use patchmesh_node::control::{
    ContentView, DemoIntel, DemoReport, DemoRing, DemoRollout, DemoWan, KeygenOutput,
    PatchAddOutput, RolloutCreateOutput, RolloutView, RolloutsView, StatusView,
};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod rollouts;

use rollouts::*;

#[derive(Args)]
pub struct DemoArgs {
    /// Nodes to start.
    #[arg(long, default_value_t = 12)]
    nodes: usize,
    /// Sites to spread them over (the first node of each is a canary).
    #[arg(long, default_value_t = 3)]
    sites: usize,
    /// Size of each patch payload.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    payload_bytes: u64,
    /// Soak time of each ring member before it counts as succeeded.
    #[arg(long, default_value_t = 2)]
    soak_s: u64,
    /// Give up after this long.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Keep the temporary directory (node logs, journals, audit logs).
    #[arg(long)]
    keep: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Where to write the mesh's signed compliance report (HTML, PDF, JSON, CSV) and the bad
    /// rollout's report.
    #[arg(long, default_value = "patchmesh-demo-report")]
    report_dir: PathBuf,
    /// After the scenario, keep the mesh running and print a login link to node 0's dashboard
    /// (Ctrl-C stops the nodes and cleans up).
    #[arg(long)]
    dashboard: bool,
    /// Port of node 0's dashboard (0: any free port).
    #[arg(long, default_value_t = 7947)]
    dashboard_port: u16,
}

struct Node {
    dir: PathBuf,
    /// Public key (hex).
    key: String,
    site: usize,
    canary: bool,
    child: Option<Child>,
}

impl Node {
    fn args(&self) -> NodeArgs {
        NodeArgs { config: Some(self.dir.join("node.toml")) }
    }
    fn target(&self) -> PathBuf {
        self.dir.join("data").join("app").join("app.bin")
    }
}

/// Stops every node and removes the directory, however the demo ends.
struct Demo {
    root: PathBuf,
    nodes: Vec<Node>,
    keep: bool,
    /// Set when the demo fails: the directory is kept for its logs.
    failed: std::cell::Cell<bool>,
    quiet: bool,
    started: Instant,
    /// Wall clock at start.
    started_at_ms: u64,
    /// Port asked for node 0's dashboard.
    dashboard_port: u16,
}

/// `want` if nothing listens there (or 0: any), else a free port the system picks.
fn free_port(want: u16) -> u16 {
    if want != 0 && std::net::TcpListener::bind(("127.0.0.1", want)).is_ok() {
        return want;
    }
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Drop for Demo {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if self.keep || self.failed.get() {
            eprintln!("demo directory kept: {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the patchmesh binary")
}

/// Runs a patchmesh subcommand and parses its `--json` output.
fn cli<T: DeserializeOwned>(args: &[&str]) -> anyhow::Result<T> {
    let out = Command::new(exe()?).args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("patchmesh {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("patchmesh {}: output is not JSON", args.join(" ")))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

impl Demo {
    fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("[{:>5.1}s] {}", self.started.elapsed().as_secs_f64(), msg.as_ref());
        }
    }

    fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnMut() -> Option<T>,
    ) -> anyhow::Result<T> {
        self.wait_or(what, timeout, f, String::new)
    }

    /// Like [`Demo::wait`]; on a timeout the error also says `lagging()`: which nodes are not
    /// there yet and where they stand. The directory is kept for its logs.
    fn wait_or<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
        lagging: impl Fn() -> String,
    ) -> anyhow::Result<T> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            if Instant::now() > until {
                self.failed.set(true);
                bail!(
                    "timed out after {} s waiting for {what}{} (node logs kept in {})",
                    timeout.as_secs(),
                    lagging(),
                    self.root.display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The nodes whose view of `rollout` is not settled by `done`, with their step and where
    /// their download of `content` stands.
    fn lagging(&self, rollout: &str, content: &str, done: impl Fn(&RolloutView) -> bool) -> String {
        let views = self.views(rollout);
        let mut lines = Vec::new();
        for (i, (n, v)) in self.nodes.iter().zip(&views).enumerate() {
            if v.as_ref().is_some_and(&done) {
                continue;
            }
            let step = match v {
                None => "has not seen the rollout".to_string(),
                Some(v) => format!(
                    "step {}, standing {}{}",
                    v.step().unwrap_or("none"),
                    v.standing.as_ref().map_or("?", |s| s.status.as_str()),
                    v.waiting
                        .as_deref()
                        .filter(|w| !w.is_empty())
                        .map(|w| format!(" ({w})"))
                        .unwrap_or_default()
                ),
            };
            let c: ContentView = call(&n.args(), Request::Content { content: content.to_string() })
                .unwrap_or_else(|_| ContentView {
                    state: "unknown (node unreachable)".into(),
                    ..Default::default()
                });
            lines.push(format!(
                "\n  node{i:02} (site {}): {step}; payload {} {}/{} bytes, {} sources active, {} resting, waiting {} ms{}",
                n.site,
                c.state,
                c.have_bytes,
                c.size_bytes,
                c.sources_active,
                c.sources_resting,
                c.waiting_ms,
                c.error.as_deref().map(|e| format!(", error: {e}")).unwrap_or_default(),
            ));
        }
        if lines.is_empty() {
            String::new()
        } else {
            format!("; not there yet:{}", lines.concat())
        }
    }

    /// Every node's view of one rollout.
    fn views(&self, rollout: &str) -> Vec<Option<RolloutView>> {
        self.nodes
            .iter()
            .map(|n| {
                let v: RolloutsView = call(&n.args(), Request::Rollouts).ok()?;
                v.rollouts.into_iter().find(|r| r.id == rollout)
            })
            .collect()
    }

    fn start(&mut self, i: usize, bootstrap: Option<&str>) -> anyhow::Result<String> {
        let n = &self.nodes[i];
        let boot = bootstrap.map(|b| format!("bootstrap = [\"{b}\"]\n")).unwrap_or_default();
        // Node 0 serves the dashboard (loopback only); the first free port from the one asked.
        let dash = if i == 0 {
            format!("[dashboard]\nlisten = \"127.0.0.1:{}\"\n", free_port(self.dashboard_port))
        } else {
            String::new()
        };
        let cfg = format!(
            "data_dir = \"{}\"\nkey = \"{}\"\ngenesis = \"{}\"\nadmission = \"{}\"\n{boot}\
             listen = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nmdns = false\n\
             anti_entropy_interval_ms = 500\nsummary_interval_ms = 1000\npeers_target = 6\n\
             rollout_eval_ms = 500\ninventory_root = \"{}\"\ninventory_interval_ms = 1000\n\
             time_zone = \"UTC\"\n{dash}",
            s(&n.dir.join("data")),
            s(&n.dir.join("node.key")),
            s(&self.root.join("mesh").join("genesis.pm")),
            s(&n.dir.join("admission.pm")),
            s(&n.dir.join("data").join("sysroot")),
        );
        let letter = (b'a' + (n.site % 26) as u8) as char;
        crate::demo_intel::write_machine(&n.dir.join("data"), &format!("branch-{letter}-pos{i}"))?;
        std::fs::write(n.dir.join("node.toml"), cfg)?;
        let log = std::fs::File::create(n.dir.join("node.log"))?;
        let child = Command::new(exe()?)
            .args(["node", "run", "--config", &s(&n.dir.join("node.toml"))])
            .env("PATCHMESH_LOG", "info,libp2p=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a node")?;
        self.nodes[i].child = Some(child);
        let args = self.nodes[i].args();
        let status: StatusView =
            self.wait(&format!("node {i} to start"), Duration::from_secs(30), || {
                call(&args, Request::Status).ok()
            })?;
        status.listen.into_iter().next().context("the node listens on no address")
    }
}

/// The demo, top to bottom: make and start the mesh, roll out a good patch, then a bad one,
/// and report. (About a hundred lines: the script reads in the order it runs.)
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    if a.nodes < 2 || a.sites == 0 || a.sites > a.nodes {
        bail!("need at least 2 nodes and 1..=nodes sites");
    }
    if a.payload_bytes == 0 || a.payload_bytes > 256 << 20 {
        bail!("--payload-bytes must be 1..=256 MiB");
    }
    let tag: u64 = rand::random();
    let root = std::env::temp_dir().join(format!("patchmesh-demo-{}-{tag:x}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let mut d = Demo {
        root: root.clone(),
        nodes: Vec::new(),
        keep: a.keep,
        failed: Default::default(),
        quiet: a.json,
        started: Instant::now(),
        started_at_ms: crate::now_ms().0,
        dashboard_port: a.dashboard_port,
    };
    let timeout = Duration::from_secs(a.timeout_s);

    let admin_key = make_mesh(&mut d, &a)?;
    d.say(format!(
        "mesh made in {}; starting {} nodes in {} sites",
        root.display(),
        a.nodes,
        a.sites
    ));
    start_mesh(&mut d, a.nodes, timeout)?;

    // A webhook receiver on loopback, and the integration policy that sends it halts, failed
    // installs and rollbacks (signed by the emitting node's key).
    let keys: Vec<[u8; 32]> = d
        .nodes
        .iter()
        .filter_map(|n| {
            let mut k = [0u8; 32];
            hex::decode_to_slice(&n.key, &mut k).ok().map(|()| k)
        })
        .collect();
    let (hook_url, hook) = crate::demo_hook::start(keys)?;
    let policy = patchmesh_protocol::integrations::IntegrationPolicy {
        sinks: vec![patchmesh_protocol::integrations::Sink {
            name: "demo-webhook".into(),
            kind: patchmesh_protocol::integrations::SinkKind::Webhook,
            target: hook_url.clone(),
            events: {
                use patchmesh_protocol::integrations::EventKind as K;
                vec![K::RolloutHalted, K::InstallFailed, K::RollbackDone, K::RollbackFailed]
            },
            emitters: Default::default(),
            hmac: false,
            allow_private: false,
        }],
        silent_after_ms: 0,
    };
    crate::publish(
        &d.nodes[0].args(),
        &crate::keys::AdminKey::load(Path::new(&admin_key))?,
        vec![(
            patchmesh_protocol::integrations::POLICY_KEY.to_string(),
            Some(patchmesh_protocol::catalog::CatalogEntry::Integrations(policy)),
        )],
    )?;
    d.say(format!(
        "integration policy published: halts, failed installs and rollbacks go to {hook_url}"
    ));

    let intel = publish_intel(&d, &admin_key, timeout)?;
    let commands = crate::demo_intel::good_patch_commands();
    let good = publish_patch(&d, &root, "app", "2", a.payload_bytes, Some(&commands))?;
    let good_plan = rehearse(&d, &good, a.soak_s, false)?;
    d.say(format!(
        "rehearsed the fix's rollout on the fleet node 0 knows ({} seeds): every node committed after {} (p50)",
        good_plan.rehearsal.seeds,
        good_plan.rehearsal.complete_ms.map_or("-".into(), |[p50, _]| crate::plan::span(p50))
    ));
    let (good_rollout, good_at) = remediate(&d, &admin_key, &good, a.soak_s)?;
    d.say(format!("good patch {} (the fix) rolling out as {}", &good[..12], &good_rollout[..12]));
    let committed = |v: &RolloutView| {
        v.step() == Some("committed")
            || v.standing.as_ref().is_some_and(|s| s.status == "NotTargeted")
    };
    let good_views = d.wait_or(
        "the good rollout to reach every node",
        timeout,
        || {
            let views = d.views(&good_rollout);
            views.iter().all(|v| v.as_ref().is_some_and(committed)).then_some(views)
        },
        || d.lagging(&good_rollout, &good, committed),
    )?;
    let mut good_rings = ring_table(&good_views, good_at);
    with_prediction(&mut good_rings, &good_plan);
    for r in &good_rings {
        d.say(format!(
            "  ring {:<7} {} nodes committed in {:.1} s",
            r.name,
            r.succeeded,
            r.duration_ms as f64 / 1000.0
        ));
    }
    let intel = finding_closed(&d, intel, good_at, timeout)?;

    let bad = publish_patch(&d, &root, "app", "3", a.payload_bytes, None)?;
    let bad_plan = rehearse(&d, &bad, a.soak_s, true)?;
    d.say(format!(
        "rehearsed the bad patch (every canary failing; installs {}): halts {} after creation (p50), blast radius {}",
        bad_plan.estimated.install_duration,
        bad_plan.rehearsal.halt_ms.map_or("-".into(), |[p50, _]| crate::plan::span(p50)),
        bad_plan.rehearsal.blast_radius_max
    ));
    let (bad_rollout, bad_at) = create_rollout(&d, &admin_key, &bad, a.soak_s)?;
    d.say(format!("bad patch {} rolling out as {}", &bad[..12], &bad_rollout[..12]));
    let halted_and_settled = |v: &RolloutView| {
        v.state() == "halted"
            && matches!(v.step(), None | Some("rolled_back" | "cancelled" | "failed"))
    };
    let bad_views = d.wait_or(
        "every node to halt the bad rollout and the canaries to roll back",
        timeout,
        || {
            let views = d.views(&bad_rollout);
            views.iter().all(|v| v.as_ref().is_some_and(halted_and_settled)).then_some(views)
        },
        || d.lagging(&bad_rollout, &bad, halted_and_settled),
    )?;
    let bad_views: Vec<RolloutView> = bad_views.into_iter().flatten().collect();
    let first_failure = bad_views
        .iter()
        .filter_map(|v| v.local.as_ref()?.failed_at_ms)
        .min()
        .context("no canary reported a failure")?;
    let last_halt = bad_views.iter().filter_map(|v| v.stopped_at_ms).max().unwrap_or(first_failure);
    let halt_latency_ms = last_halt.saturating_sub(first_failure);
    let blast_radius = bad_views
        .iter()
        .filter(|v| {
            v.local.as_ref().is_some_and(|l| l.ring != 0)
                && !matches!(v.step(), Some("fetching" | "staging" | "cancelled"))
        })
        .count();
    let mut bad_rings =
        ring_table(&bad_views.iter().cloned().map(Some).collect::<Vec<_>>(), bad_at);
    with_prediction(&mut bad_rings, &bad_plan);

    // What is on disk now: every node must hold the good version (canaries rolled back to it).
    let good_bytes = std::fs::read(root.join("payload-app-2.bin"))?;
    let on_good = d
        .nodes
        .iter()
        .filter(|n| std::fs::read(n.target()).ok().as_deref() == Some(&good_bytes[..]))
        .count();
    let canaries = d.nodes.iter().filter(|n| n.canary).count();

    // The halt reached the webhook receiver: one delivery of its event id, from one node.
    let halt_type = "patchmesh.rollout_halted".to_string();
    // Failed installs and rollbacks come from the signed evidence each site holds, one event
    // per canary, sent by one member of its site.
    let failed: u64 = bad_rings.iter().map(|r| r.failed).sum();
    let rolled: u64 = bad_rings.iter().map(|r| r.rolled_back).sum();
    d.wait("the halt, failure and rollback events at the webhook receiver", timeout, || {
        let s = hook.lock().unwrap_or_else(|p| p.into_inner());
        let count = |t: &str| s.deliveries.keys().filter(|(k, _)| k == t).count() as u64;
        (count(&halt_type) >= 1
            && count("patchmesh.install_failed") >= failed
            && count("patchmesh.rollback_done") >= rolled)
            .then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(2)); // any second delivery of it would arrive by now
    let webhook = {
        let s = hook.lock().unwrap_or_else(|p| p.into_inner());
        let mut events: BTreeMap<String, usize> = BTreeMap::new();
        for (t, _) in s.deliveries.keys() {
            *events.entry(t.clone()).or_default() += 1;
        }
        patchmesh_node::control::DemoWebhook {
            url: hook_url.clone(),
            halt_deliveries: s
                .deliveries
                .iter()
                .filter(|((t, _), _)| *t == halt_type)
                .map(|(_, n)| *n)
                .sum(),
            distinct_events: events,
            deliveries: s.deliveries.values().sum(),
            unsigned: s.unsigned,
        }
    };
    d.say(format!(
        "webhook receiver: halt event delivered {} time(s); {} deliveries in all",
        webhook.halt_deliveries, webhook.deliveries
    ));

    // The mesh's own compliance report, signed by node 0 and the admin, and the bad rollout's,
    // once node 0's view of the bad rollout counts every rollback the nodes report.
    let rolled_back: u64 = bad_rings.iter().map(|r| r.rolled_back).sum();
    d.wait("node 0 to count every rollback of the bad rollout", timeout, || {
        let v: RolloutsView = call(&d.nodes[0].args(), Request::Rollouts).ok()?;
        let r = v.rollouts.into_iter().find(|r| r.id == bad_rollout)?;
        (r.rings.iter().map(|g| u64::from(g.counts.rolled_back)).sum::<u64>() >= rolled_back)
            .then_some(())
    })?;
    let since = jiff::Timestamp::from_millisecond(d.started_at_ms as i64 - 86_400_000)?.to_string();
    let mut report_paths = crate::report::compliance(
        &d.nodes[0].args(),
        Some(&since),
        None,
        None,
        crate::report::Format::All,
        Some(a.report_dir.clone()),
        Some(Path::new(&admin_key)),
        crate::now_ms(),
    )?;
    report_paths.push(crate::report::rollout_report(
        &d.nodes[0].args(),
        &bad_rollout,
        &a.report_dir,
    )?);
    d.say(format!("signed compliance report written to {}", a.report_dir.display()));

    // WAN bytes per site over the payload size, for both patches, from the nodes' counters.
    let (wan, wan_ratio_max) = wan_figures(&d, &[&good, &bad], a.payload_bytes)?;
    let ok = blast_radius == 0 && on_good == a.nodes && intel.nodes_exposed_after == 0;
    let summary = DemoReport {
        nodes: a.nodes,
        sites: a.sites,
        canaries,
        payload_bytes: a.payload_bytes,
        good: DemoRollout { rollout: good_rollout, content_id: good, rings: good_rings.clone() },
        bad: DemoRollout { rollout: bad_rollout, content_id: bad, rings: bad_rings },
        rings: good_rings,
        blast_radius,
        halt_latency_ms,
        halt_after_ms: first_failure.saturating_sub(bad_at),
        halt_predicted_ms: bad_plan.rehearsal.halt_ms,
        blast_radius_predicted: Some(bad_plan.rehearsal.blast_radius_max),
        nodes_on_good_version: on_good,
        wan_ratio_max: (wan_ratio_max * 1000.0).round() / 1000.0,
        wan,
        elapsed_ms: d.started.elapsed().as_millis() as u64,
        intel,
        report_paths: report_paths.iter().map(|p| p.display().to_string()).collect(),
        webhook,
        ok,
    };
    if a.json {
        outln!("{}", crate::output::json(&summary));
    } else {
        print_summary(&summary);
    }
    if a.dashboard {
        serve_dashboard(&d)?;
    }
    drop(d);
    if !ok {
        bail!("the demo did not end as expected: blast radius {blast_radius}, {on_good} of {} nodes on the good version", a.nodes);
    }
    Ok(())
}

/// Prints node 0's dashboard login link and keeps the mesh up until Ctrl-C (or SIGTERM).
fn serve_dashboard(d: &Demo) -> anyhow::Result<()> {
    let login: patchmesh_node::dashboard::LoginView =
        call(&d.nodes[0].args(), Request::DashboardLogin)?;
    eprintln!();
    eprintln!(
        "The mesh keeps running. Open node 0's dashboard (the link works once, within a minute):"
    );
    outln!("{}", login.url);
    eprintln!(
        "A new link: patchmesh dashboard --config {}",
        d.nodes[0].dir.join("node.toml").display()
    );
    eprintln!("Ctrl-C stops the nodes and removes the demo directory.");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    eprintln!("stopping the mesh");
    Ok(())
}

/// Makes the mesh (genesis, admin key) and one key, certificate and data directory per node;
/// returns the admin key's path.
fn make_mesh(d: &mut Demo, a: &DemoArgs) -> anyhow::Result<String> {
    let root = d.root.clone();
    // The mesh: genesis, keys and one certificate per node.
    let mesh = root.join("mesh");
    let _: patchmesh_node::control::InitOutput =
        cli(&["init", "--mesh", "demo", "--dir", &s(&mesh), "--unencrypted", "--json"])?;
    let admin_key = s(&mesh.join("admin.key"));
    for i in 0..a.nodes {
        let dir = root.join(format!("node{i:02}"));
        std::fs::create_dir_all(dir.join("data").join("app"))?;
        let key: KeygenOutput =
            cli(&["node", "keygen", "--out", &s(&dir.join("node.key")), "--json"])?;
        let site = i % a.sites;
        let canary = i < a.sites;
        let label = match i.checked_sub(a.sites) {
            None => "ring=canary",
            Some(k) if k % 2 == 0 => "ring=half",
            Some(_) => "ring=main",
        };
        let _: patchmesh_node::control::AdmitOutput = cli(&[
            "admit",
            "--node-key",
            &key.public_key,
            "--site",
            &format!("site-{}", (b'a' + site as u8) as char),
            "--label",
            label,
            "--label",
            &format!("host=branch-{}-pos{i}", (b'a' + site as u8) as char),
            "--admin-key",
            &admin_key,
            "--genesis",
            &s(&mesh.join("genesis.pm")),
            "--out",
            &s(&dir.join("admission.pm")),
            "--json",
        ])?;
        // The application file the patches replace: version 1 everywhere.
        std::fs::write(dir.join("data").join("app").join("app.bin"), b"app version 1\n")?;
        d.nodes.push(Node { dir, key: key.public_key.clone(), site, canary, child: None });
    }
    Ok(admin_key)
}

/// Starts every node (the first is the others' bootstrap) and waits until each has admitted
/// its peers.
fn start_mesh(d: &mut Demo, nodes: usize, timeout: Duration) -> anyhow::Result<()> {
    let boot = d.start(0, None)?;
    for i in 1..nodes {
        d.start(i, Some(&boot))?;
    }
    let need = (nodes - 1).min(3);
    d.wait("every node to admit its peers", timeout, || {
        d.nodes
            .iter()
            .all(|n| {
                call::<StatusView>(&n.args(), Request::Status)
                    .ok()
                    .is_some_and(|v| v.peers_admitted >= need && v.gossip_mesh.control >= 1)
            })
            .then_some(())
    })?;
    d.say("all nodes up and admitted");

    Ok(())
}

/// Payload bytes each site received across the WAN for each content, over the payload size;
/// and the largest such ratio.
fn wan_figures(
    d: &Demo,
    contents: &[&String],
    payload_bytes: u64,
) -> anyhow::Result<(Vec<DemoWan>, f64)> {
    let mut wan_ratio_max: f64 = 0.0;
    let mut wan = Vec::new();
    for content in contents {
        let mut per_site: BTreeMap<usize, u64> = BTreeMap::new();
        for n in &d.nodes {
            let v: ContentView = call(&n.args(), Request::Content { content: (*content).clone() })?;
            *per_site.entry(n.site).or_default() += v.wan_bytes;
        }
        for (site, bytes) in per_site {
            let ratio = bytes as f64 / payload_bytes as f64;
            wan.push(DemoWan { content_id: (*content).clone(), site, wan_bytes: bytes, ratio });
            wan_ratio_max = wan_ratio_max.max(ratio);
        }
    }
    Ok((wan, wan_ratio_max))
}

/// Writes a payload, imports it at node 0 and publishes it as a file patch.
/// `commands` (install, verify, rollback) make a command patch; without them it is a file
/// patch whose verify step fails (the bad patch).
fn publish_patch(
    d: &Demo,
    root: &Path,
    name: &str,
    version: &str,
    size: u64,
    commands: Option<&(String, String, String)>,
) -> anyhow::Result<String> {
    let path = root.join(format!("payload-{name}-{version}.bin"));
    let mut body = format!("app version {version}\n").into_bytes();
    let mut x: u64 =
        0x9e37_79b9_7f4a_7c15 ^ version.len() as u64 ^ u64::from(version.as_bytes()[0]);
    while (body.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.extend_from_slice(&x.to_le_bytes());
    }
    body.truncate(size as usize);
    std::fs::write(&path, &body)?;
    let config = s(&d.nodes[0].dir.join("node.toml"));
    let admin = s(&d.root.join("mesh").join("admin.key"));
    let mut args = vec![
        "patch",
        "add",
        path.to_str().unwrap_or_default(),
        "--name",
        name,
        "--version",
        version,
        "--timeout-ms",
        "30000",
        "--admin-key",
        &admin,
        "--config",
        &config,
        "--json",
    ];
    match commands {
        Some((install, verify, rollback)) => args.extend([
            "--executor",
            "command",
            "--install",
            install,
            "--verify",
            verify,
            "--rollback",
            rollback,
        ]),
        None => args.extend([
            "--executor",
            "file",
            "--install",
            "{data_dir}/app/app.bin",
            "--verify",
            "echo 'health check: service did not come back' >&2; exit 1",
        ]),
    }
    let out: PatchAddOutput = cli(&args)?;
    Ok(out.content_id)
}

/// Imports the demo's vulnerability data, publishes the bundle, and waits until every node
/// reports its exposure and the fleet view counts the CVE on every node.
fn publish_intel(d: &Demo, admin_key: &str, timeout: Duration) -> anyhow::Result<DemoIntel> {
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let files = crate::demo_intel::write_inputs(&d.root.join("intel"), &today)?;
    let bundle = s(&d.root.join("intel").join("intel.pmi"));
    let config = s(&d.nodes[0].dir.join("node.toml"));
    let mut args: Vec<String> = vec!["intel".into(), "import".into()];
    args.extend(files.iter().map(|f| s(f)));
    args.extend(
        ["--out", &bundle, "--admin-key", admin_key, "--config", &config, "--json"]
            .map(String::from),
    );
    let published_at = patchmesh_node::clock::now_ms().0;
    let imported: crate::intel::ImportOut =
        cli(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let content = imported.content_id;
    d.say(format!(
        "intel bundle {} published ({} bytes: tracker, OSV, KEV, EPSS)",
        &content[..12],
        imported.bytes
    ));
    let n = d.nodes.len() as u64;
    let row = d.wait("every node to report its exposure to the new bundle", timeout, || {
        let v: FleetVulnsOut = cli(&["vulns", "--config", &config, "--json"]).ok()?;
        let row = v.cves.into_iter().find(|r| r.cve == crate::demo_intel::CVE)?;
        (u64::from(row.nodes) == n).then_some(row)
    })?;
    let visible_ms = patchmesh_node::clock::now_ms().0.saturating_sub(published_at);
    let score = row.score;
    let due = row.due.label().to_string();
    d.say(format!(
        "  {} (KEV) on {n} of {n} nodes: score {score:.1}, due {due}, fixed in demo-app {} — visible fleet-wide after {:.1} s",
        crate::demo_intel::CVE,
        crate::demo_intel::FIXED,
        visible_ms as f64 / 1000.0
    ));
    Ok(DemoIntel {
        bundle: content,
        cve: crate::demo_intel::CVE.into(),
        score,
        due,
        nodes_exposed_before: n as usize,
        nodes_exposed_after: n as usize,
        exposure_visible_ms: visible_ms,
        closed_after_ms: 0,
    })
}

/// Waits until no node reports the CVE any more (each re-read its package database after the
/// fix and re-signed its exposure).
fn finding_closed(
    d: &Demo,
    mut intel: DemoIntel,
    since: u64,
    timeout: Duration,
) -> anyhow::Result<DemoIntel> {
    let config = s(&d.nodes[0].dir.join("node.toml"));
    let exposed = |v: &FleetVulnsOut| {
        v.cves.iter().find(|r| r.cve == intel.cve).map_or(0, |r| u64::from(r.nodes))
    };
    let left = d.wait_or(
        "the finding to close on every node",
        timeout,
        || {
            let v: FleetVulnsOut = cli(&["vulns", "--config", &config, "--json"]).ok()?;
            (exposed(&v) == 0 && v.sites.iter().all(|s| s.members > 0)).then_some(0)
        },
        || match cli::<FleetVulnsOut>(&["vulns", "--config", &config, "--json"]) {
            Ok(v) => format!("{} nodes still exposed", exposed(&v)),
            Err(e) => format!("the fleet's exposure cannot be read: {e}"),
        },
    )?;
    intel.nodes_exposed_after = left;
    intel.closed_after_ms = patchmesh_node::clock::now_ms().0.saturating_sub(since);
    d.say(format!(
        "  {} closed on every node {:.1} s after the remediation was published",
        intel.cve,
        intel.closed_after_ms as f64 / 1000.0
    ));
    Ok(intel)
}

fn print_summary(v: &DemoReport) {
    outln!(
        "patchmesh demo: {} nodes in {} sites ({} canaries), {:.2} MiB payloads",
        v.nodes,
        v.sites,
        v.canaries,
        v.payload_bytes as f64 / (1024.0 * 1024.0)
    );
    let i = &v.intel;
    outln!(
        "\nfinding {} (bundle {}): score {:.1}, due {}; exposed nodes {} before, {} after the fix; closed {:.1} s after the remediation",
        i.cve,
        i.bundle.get(..12).unwrap_or(&i.bundle),
        i.score,
        i.due,
        i.nodes_exposed_before,
        i.nodes_exposed_after,
        i.closed_after_ms as f64 / 1000.0
    );
    for (title, r) in
        [("good patch (app 2, the fix)", &v.good), ("bad patch (app 3, verify fails)", &v.bad)]
    {
        outln!("\n{title}: rollout {}", r.rollout.get(..12).unwrap_or(&r.rollout));
        outln!(
            "  {:<8} {:>8} {:>9} {:>6} {:>11} {:>12} {:>20}",
            "ring",
            "targeted",
            "succeeded",
            "failed",
            "rolled back",
            "done after",
            "predicted p50 (p90)"
        );
        for g in &r.rings {
            let predicted = match g.predicted_ms {
                Some([p50, p90]) => {
                    format!("{:.1} s ({:.1} s)", p50 as f64 / 1000.0, p90 as f64 / 1000.0)
                }
                None => "-".into(),
            };
            outln!(
                "  {:<8} {:>8} {:>9} {:>6} {:>11} {:>10.1} s {:>20}",
                g.name,
                g.targeted,
                g.succeeded,
                g.failed,
                g.rolled_back,
                g.duration_ms as f64 / 1000.0,
                predicted
            );
        }
    }
    outln!(
        "\nhalt: {:.1} s after the bad rollout was created (rehearsal predicted {}; blast radius {})",
        v.halt_after_ms as f64 / 1000.0,
        v.halt_predicted_ms.map_or("-".into(), |[a, b]| format!(
            "{:.1} s p50, {:.1} s p90",
            a as f64 / 1000.0,
            b as f64 / 1000.0
        )),
        v.blast_radius_predicted.map_or("-".into(), |b| b.to_string())
    );
    outln!(
        "halt latency (first failed canary report → every node halted): {} ms",
        v.halt_latency_ms
    );
    outln!(
        "blast radius (nodes outside the canary ring that installed the bad patch): {}",
        v.blast_radius
    );
    outln!("nodes on the good version at the end: {} of {}", v.nodes_on_good_version, v.nodes);
    outln!("WAN bytes per site ÷ payload (max over sites and patches): {:.3}", v.wan_ratio_max);
    let w = &v.webhook;
    outln!(
        "webhook receiver on loopback: the halt arrived {} time(s); events by type (distinct ids): {}; {} deliveries, {} with a bad signature",
        w.halt_deliveries,
        w.distinct_events.iter().map(|(k, n)| format!("{} {n}", k.trim_start_matches("patchmesh."))).collect::<Vec<_>>().join(", "),
        w.deliveries,
        w.unsigned
    );
    outln!("total time: {:.1} s", v.elapsed_ms as f64 / 1000.0);
    outln!("\nsigned reports (check with `patchmesh report verify FILE`):");
    for p in &v.report_paths {
        outln!("  {p}");
    }
}
