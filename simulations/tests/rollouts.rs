//! Seeded rollout simulations: a bad patch halts at its canary ring everywhere, a good one
//! reaches every targeted node ring by ring, partitions and windows hold. A failure prints the
//! seed; set PATCHMESH_SEED (or PATCHMESH_SIM_SEED) to replay one.

use patchmesh_sim::{run, Report, Scenario};

fn seeds(default: &[u64]) -> Vec<u64> {
    let var = std::env::var("PATCHMESH_SEED").or_else(|_| std::env::var("PATCHMESH_SIM_SEED"));
    match var {
        Ok(s) => vec![s.parse().expect("PATCHMESH_SEED must be a number")],
        Err(_) => default.to_vec(),
    }
}

/// 400 nodes in 10 sites, 5 time zones (two of them closed at the start: UTC 08:00 and Berlin
/// 09:00), a 20-node canary label ring then 10/50/100 percent, gen3 on 30% of the fleet.
/// `{fail}` is the fraction of gen3 nodes the patch fails on; `{extra}` is appended.
const BASE: &str = r#"
name = "rollout-small"
nodes = 400
sites = 10
start = "steady"
duration_ms = {duration}
warmup_ms = 1000
publish_at_ms = 2000
clock_skew_ms = 2000

[wan]
rtt_ms = 100
bandwidth_mbps = 50
loss = 0.01

[protocol]
anti_entropy_interval_ms = 2000
summary_interval_ms = 4000
gossip_flush_ms = 100
rollout_eval_ms = 1000

[rollout]
at_ms = 3000
recheck_ms = 5000
max_concurrent_per_site = 25
windows = ["mon-fri 01:00-05:00", "* 16:00-21:00"]
deadline_ms = {deadline}
time_zones = ["UTC", "America/New_York", "Asia/Tokyo", "Europe/Berlin", "Australia/Sydney"]
canary_label = "ring=canary"
canary_fraction = 0.05
fail_label = "hw=gen3"
label_fraction = 0.3
fail_fraction = {fail}

[rollout.gate]
min_success_permille = 900
max_failures = 2
max_failure_permille = 50
min_soak_ms = 30000
min_reports = 5

[[rollout.rings]]
name = "canary"
percent = 0
labels = { ring = "canary" }

[[rollout.rings]]
name = "early"
percent = 10
min_soak_ms = 10000

[[rollout.rings]]
name = "broad"
percent = 50
min_soak_ms = 5000

[[rollout.rings]]
name = "all"
percent = 100
min_soak_ms = 5000
"#;

fn scenario(duration_ms: u64, deadline_ms: u64, fail: f64, extra: &str) -> Scenario {
    let text = BASE
        .replace("{duration}", &duration_ms.to_string())
        .replace("{deadline}", &deadline_ms.to_string())
        .replace("{fail}", &format!("{fail:?}"))
        + extra;
    Scenario::parse(&text, "inline").unwrap()
}

fn figures(r: &Report) -> &patchmesh_sim::rollout::RolloutFigures {
    r.rollout.as_ref().expect("a scenario with [rollout] reports rollout figures")
}

const CRASHES: &str = r#"
[[crash]]
nodes = 10
at_ms = 5000
down_ms = 3000
"#;

#[test]
fn a_bad_patch_halts_at_the_canary_ring_everywhere() {
    let s = scenario(30_000, 60_000, 1.0, CRASHES);
    for seed in seeds(&[1, 2, 3, 4, 5, 6]) {
        let r = run(&s, seed);
        let f = figures(&r);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        assert_eq!(f.blast_radius, 0, "seed {seed}");
        assert!(f.rollout_halted && f.halt_threshold_ms.is_some(), "seed {seed}: {f:?}");
        assert_eq!(f.halted_nodes, f.live_nodes, "seed {seed}: every live node halted");
        assert_eq!(f.live_nodes, 400, "seed {seed}: crashed nodes are back");
        assert!(f.halt_latency_ms.p99 <= 2000, "seed {seed}: halt latency {:?}", f.halt_latency_ms);
        assert!(f.halt_latency_nodes >= 380, "seed {seed}: {} measured", f.halt_latency_nodes);
        // The canary failures crossed the gate and were rolled back, with every other canary
        // install; nothing outside the canary ring ever started.
        assert!(f.failed_nodes > 2, "seed {seed}: {} failures", f.failed_nodes);
        assert!(f.rolled_back_nodes >= f.failed_nodes, "seed {seed}: {f:?}");
        assert!(
            f.ring_start_ms[1..].iter().all(Option::is_none),
            "seed {seed}: {:?}",
            f.ring_start_ms
        );
        assert_eq!(f.rollout_committed_nodes, 0, "seed {seed}");
    }
}

#[test]
fn a_good_patch_commits_every_targeted_node_ring_by_ring() {
    // Canaries crash mid-install: their in-flight steps are lost and re-run from the journal.
    let s = scenario(130_000, 20_000, 0.0, CRASHES);
    for seed in seeds(&[1, 2]) {
        let r = run(&s, seed);
        let f = figures(&r);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        assert!(!f.rollout_halted && f.blast_radius == 0, "seed {seed}: {f:?}");
        assert_eq!(f.rollout_targeted_nodes, 400, "seed {seed}");
        assert_eq!(f.rollout_committed_nodes, 400, "seed {seed}");
        assert_eq!(f.rings_completed, f.rings, "seed {seed}: {f:?}");
        let complete = f.rollout_complete_ms.expect("every targeted node committed");
        assert!(complete > 30_000, "seed {seed}: the canary soak alone is 30 s, got {complete}");
        // A ring starts only after the ring before it soaked.
        for (k, soak) in [30_000, 10_000, 5_000].into_iter().enumerate() {
            let (a, b) = (f.ring_start_ms[k].unwrap(), f.ring_start_ms[k + 1].unwrap());
            assert!(b >= a + soak, "seed {seed}: ring {} started at {b}, ring {k} at {a}", k + 1);
        }
        assert!(r.state_converged, "seed {seed}");
    }
}

#[test]
fn crashes_during_installs_lose_steps_that_the_journal_re_runs() {
    // The canaries of the open zones are fetching, staging or installing at 4.5 s.
    let crash = "[[crash]]\nnodes = 200\nat_ms = 4500\ndown_ms = 2000\n";
    let s = scenario(130_000, 20_000, 0.0, crash);
    let seed = seeds(&[3])[0];
    let r = run(&s, seed);
    let f = figures(&r);
    assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
    assert!(f.effects_lost > 0, "seed {seed}: no install step was interrupted");
    assert_eq!(f.rollout_committed_nodes, 400, "seed {seed}: {f:?}");
}

#[test]
fn failures_within_the_gate_halt_no_one() {
    // gen3 fails on 15%: one or two canaries fail, which the gate tolerates (max_failures 2)
    // until every canary has reported; in 40 s the closed zones' canaries have not even
    // started, so no node may see the rollout halted, not even for a moment (failures arrive
    // from everywhere at once, the counts of other sites only with their summaries).
    let s = scenario(40_000, 60_000, 0.15, "");
    let mut failures = 0;
    for seed in seeds(&[1, 2, 3]) {
        let r = run(&s, seed);
        let f = figures(&r);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        assert!(f.failed_nodes <= 2, "seed {seed}: {} failures", f.failed_nodes);
        assert_eq!(f.ever_stopped_nodes, 0, "seed {seed}: {f:?}");
        assert_eq!(f.rolled_back_nodes, f.failed_nodes, "seed {seed}: only the failed roll back");
        failures += f.failed_nodes;
    }
    assert!(failures > 0, "no canary failed: the test tests nothing");
}

#[test]
fn a_partition_longer_than_the_canary_soak_neither_promotes_nor_escapes_the_halt() {
    // Four of ten sites are cut off from just after the publish until well past the canary
    // soak: an island whose own canaries all pass must not take their successes for the ring's
    // (its summaries of the other sites predate the rollout), and every island halts once the
    // partition heals.
    let cut = "[[partition]]\nsites = 4\nstart_ms = 4000\nend_ms = 50000\n";
    let s = scenario(60_000, 60_000, 1.0, cut);
    for seed in seeds(&[4, 11, 1, 2, 3, 5]) {
        let r = run(&s, seed);
        let f = figures(&r);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        assert_eq!(f.blast_radius, 0, "seed {seed}");
        assert!(
            f.ring_start_ms[1..].iter().all(Option::is_none),
            "seed {seed}: {:?}",
            f.ring_start_ms
        );
        assert_eq!(f.halted_nodes, f.live_nodes, "seed {seed}: {f:?}");
        assert!(f.halt_after_heal_nodes > 0, "seed {seed}: no node was cut off at the halt");
        assert!(f.halt_after_heal_ms.max <= 5_000, "seed {seed}: {:?}", f.halt_after_heal_ms);
        assert!(r.state_converged, "seed {seed}");
    }
}

#[test]
fn closed_windows_hold_their_zones_until_the_deadline() {
    let skew_ms = 2_000;
    // Deadline at 15 s: UTC and Berlin (closed at 08:00 and 09:00 local) start after it.
    // The run ends long before the rollout could: the only violation is that the (good) patch
    // did not reach every node.
    let unfinished =
        |r: &Report| r.invariant_violations.iter().all(|v| v.starts_with("good patch:"));
    let s = scenario(25_000, 15_000, 0.0, "");
    let seed = seeds(&[1])[0];
    let r = run(&s, seed);
    let f = figures(&r);
    assert!(unfinished(&r), "seed {seed}: {:?}", r.invariant_violations);
    let starts = &f.first_start_ms_by_zone;
    for open in ["America/New_York", "Asia/Tokyo", "Australia/Sydney"] {
        assert!(starts[open] < 5_000, "seed {seed}: {open} opened late: {starts:?}");
    }
    for closed in ["UTC", "Europe/Berlin"] {
        let t = starts[closed];
        assert!(t + skew_ms >= 15_000, "seed {seed}: {closed} started at {t}: {starts:?}");
    }
    // Without a deadline in the run, closed zones never start.
    let s = scenario(25_000, 3_600_000, 0.0, "");
    let r = run(&s, seed);
    let f = figures(&r);
    assert!(unfinished(&r), "seed {seed}: {:?}", r.invariant_violations);
    let zones: Vec<&String> = f.first_start_ms_by_zone.keys().collect();
    assert_eq!(zones, ["America/New_York", "Asia/Tokyo", "Australia/Sydney"], "seed {seed}");
}

#[test]
fn auto_windows_install_each_node_in_its_own_quiet_hours_across_zones() {
    // Half the nodes are office machines (quiet 01-05 local), half night-shift ones (quiet
    // 06-10). At the start it is 08:00 in UTC, 09:00 in Berlin, 03:00 in New York, 17:00 in
    // Tokyo and 19:00 in Sydney: only night-shift nodes in UTC and Berlin and office nodes in
    // New York are quiet. The simulator checks every start against the node's own quiet hours
    // (an invariant violation otherwise); no deadline falls inside the run.
    let base = BASE.replace(
        r#"windows = ["mon-fri 01:00-05:00", "* 16:00-21:00"]"#,
        r#"windows = []
auto_window = true
activity = ["office", "night-shift"]"#,
    );
    // Only canaries start within the run (their soak outlasts it): enough of them that
    // every (zone, profile) pair holds some.
    let text = base
        .replace("canary_fraction = 0.05", "canary_fraction = 0.3")
        .replace("{duration}", "25000")
        .replace("{deadline}", "3600000")
        .replace("{fail}", "0.0");
    let s = Scenario::parse(&text, "inline").unwrap();
    let unfinished =
        |r: &Report| r.invariant_violations.iter().all(|v| v.starts_with("good patch:"));
    let seed = seeds(&[1])[0];
    let r = run(&s, seed);
    let f = figures(&r);
    assert!(unfinished(&r), "seed {seed}: {:?}", r.invariant_violations);
    let zones: Vec<&String> = f.first_start_ms_by_zone.keys().collect();
    assert_eq!(zones, ["America/New_York", "Europe/Berlin", "UTC"], "seed {seed}");
    // New nodes (no history) and no explicit window: the fallback night, 01-05 local, which
    // is open only in New York.
    let text = text.replace(r#"activity = ["office", "night-shift"]"#, r#"activity = ["new"]"#);
    let r = run(&Scenario::parse(&text, "inline").unwrap(), seed);
    assert!(unfinished(&r), "seed {seed}: {:?}", r.invariant_violations);
    let zones: Vec<&String> = figures(&r).first_start_ms_by_zone.keys().collect();
    assert_eq!(zones, ["America/New_York"], "seed {seed}");
}

#[test]
fn same_seed_same_rollout_trace() {
    let s = scenario(20_000, 60_000, 1.0, CRASHES);
    let (a, b) = (run(&s, 9), run(&s, 9));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(figures(&a), figures(&b));
}

#[test]
fn bad_rollout_tables_are_refused_with_a_reason() {
    let base = "nodes = 10\nsites = 2\n[rollout]\nat_ms = 3000\n";
    let ring = "[[rollout.rings]]\nname = \"all\"\npercent = 100\n";
    for (text, needle) in [
        (format!("{base}{ring}bogus = 1"), "unknown field"),
        (format!("nodes = 10\nsites = 2\n[rollout]\nat_ms = 30000\n{ring}"), "at_ms"),
        (base.to_string(), "rings"),
        (format!("{base}[[rollout.rings]]\nname = \"a\"\npercent = 50\n[[rollout.rings]]\nname = \"b\"\npercent = 10\n"), "cumulative"),
        (format!("{base}[[rollout.rings]]\nname = \"a\"\npercent = 0\n"), "no labels"),
        (format!("{base}windows = [\"someday 25:00-26:00\"]\n{ring}"), "window"),
        (format!("{base}time_zones = [\"Mars/Olympus_Mons\"]\n{ring}"), "time zone"),
        (format!("{base}fail_label = \"gen3\"\nlabel_fraction = 0.3\n{ring}"), "key=value"),
        (format!("{base}label_fraction = 0.3\n{ring}"), "needs fail_label"),
        (format!("{base}fail_label = \"hw=gen3\"\nlabel_fraction = 1.5\n{ring}"), "label_fraction"),
        (format!("{base}recheck_ms = 1\n{ring}"), "recheck_ms"),
        (format!("{base}max_concurrent_per_site = 0\n{ring}"), "max_concurrent_per_site"),
        (format!("{base}[rollout.gate]\nmin_success_permille = 1001\n{ring}"), "per mille"),
        (format!("{base}{ring}min_soak_ms = -1\n"), "invalid"),
        (format!("{base}{ring}[rollout.gate]\nmax_failures = 2\nsoak = 1\n"), "unknown field"),
        ("nodes = 10\nsites = 2\n[protocol]\nrollout_eval_ms = 0\n".to_string(), "intervals"),
    ] {
        let err = Scenario::parse(&text, "inline").unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn runs_without_a_rollout_report_no_rollout_figures() {
    let text = "nodes = 6\nsites = 2\nduration_ms = 8000\nwarmup_ms = 1000\npublish_at_ms = 2000";
    let r = run(&Scenario::parse(text, "inline").unwrap(), 1);
    assert!(r.rollout.is_none());
    let json = serde_json::to_value(&r).unwrap();
    assert!(json.get("blast_radius").is_none());
}

fn scenario_file(name: &str) -> Scenario {
    Scenario::load(&format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The 10,000-node bad patch; run with `cargo test --release -p patchmesh-sim -- --ignored`
/// (scripts/bench-rollout.sh runs it over many seeds).
#[test]
#[ignore = "10,000 nodes: run with --release -- --ignored"]
fn bad_patch_10k() {
    let s = scenario_file("bad-patch");
    let seed = seeds(&[1])[0];
    let r = run(&s, seed);
    let f = figures(&r);
    assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
    assert_eq!(f.blast_radius, 0, "seed {seed}");
    assert_eq!(f.halted_nodes, f.live_nodes, "seed {seed}");
    assert!(f.halt_latency_ms.p99 <= 2000, "seed {seed}: {:?}", f.halt_latency_ms);
}

/// The 10,000-node good patch.
#[test]
#[ignore = "10,000 nodes: run with --release -- --ignored"]
fn good_patch_10k() {
    let s = scenario_file("good-patch");
    let seed = seeds(&[1])[0];
    let r = run(&s, seed);
    let f = figures(&r);
    assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
    assert_eq!(f.rollout_committed_nodes, f.rollout_targeted_nodes, "seed {seed}");
    assert_eq!(f.rings_completed, f.rings, "seed {seed}");
    assert!(f.rollout_complete_ms.is_some(), "seed {seed}");
}

/// An intel bundle in a small fleet: every live node's view ends counting every node on it,
/// through its site's records and the other sites' summaries, crashes notwithstanding.
#[test]
fn an_intel_bundle_becomes_visible_fleet_wide_in_every_node_view() {
    let text = r#"
name = "intel-small"
nodes = 300
sites = 10
start = "steady"
duration_ms = 60000
warmup_ms = 1000
publish_at_ms = 2000

[protocol]
anti_entropy_interval_ms = 2000
summary_interval_ms = 4000

[[crash]]
nodes = 5
at_ms = 6000
down_ms = 3000

[intel]
at_ms = 4000
"#;
    let s = Scenario::parse(text, "inline").unwrap();
    for seed in seeds(&[1]) {
        let r = run(&s, seed);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        let f = r.intel.as_ref().expect("an [intel] scenario reports intel figures");
        assert_eq!(f.visible_nodes, f.live_nodes, "seed {seed}");
        assert!(f.live_nodes >= 295, "seed {seed}: {f:?}");
        assert!(f.exposure_visible_ms.p99 < 56_000, "seed {seed}: {f:?}");
    }
}

/// The 10,000-node intel publication (`cargo test --release -p patchmesh-sim -- --ignored`).
#[test]
#[ignore = "10,000 nodes: run with --release -- --ignored"]
fn intel_10k() {
    let s = scenario_file("intel-10k");
    let seed = seeds(&[1])[0];
    let r = run(&s, seed);
    assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
    let f = r.intel.as_ref().expect("intel figures");
    assert_eq!(f.visible_nodes, f.live_nodes, "seed {seed}");
}

#[test]
fn a_sparse_site_never_installs_on_more_members_than_its_limit_through_crashes() {
    // site-limit.toml at 300 nodes (3 sites of 100, each node linked to 3 others of its site,
    // 3 installs at once per site, 30 nodes down for 4 s mid-rollout). Before members that had
    // not yet said where they stand, and the records a restarted node read back, counted for
    // install slots, every seed peaked at 6 to 8.
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/site-limit.toml"),
    )
    .unwrap()
    .replace("\nnodes = 1000\n", "\nnodes = 300\n")
    .replace("\nsites = 10\n", "\nsites = 3\n")
    .replace("\nnodes = 40\n", "\nnodes = 30\n");
    let s = Scenario::parse(&text, "site-limit-300").unwrap();
    assert_eq!((s.nodes, s.sites), (300, 3));
    for seed in seeds(&[1]) {
        let r = run(&s, seed);
        let f = figures(&r);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        assert!(f.max_site_concurrency <= 3, "seed {seed}: {}", f.max_site_concurrency);
        assert_eq!(f.max_site_concurrency, 3, "seed {seed}: the limit was never reached");
        assert!(f.rollout_complete_ms.is_some(), "seed {seed}: {f:?}");
    }
}

/// An eclipse of 4 of the 10 sites from 5 s to 35 s, by attackers that forward only `pass`.
/// 60 canaries (about 18 failing), so the rest of the mesh halts on its own canaries' reports.
fn eclipse(pass: &str) -> Scenario {
    let text = BASE
        .replace("{duration}", "50000")
        .replace("{deadline}", "16000")
        .replace("{fail}", "1.0")
        .replace("canary_fraction = 0.05", "canary_fraction = 0.15")
        + &format!(
            "\n[[partition]]\nsites = 4\nstart_ms = 5000\nend_ms = 35000\npass = [{pass}]\n"
        );
    Scenario::parse(&text, "inline").unwrap()
}

#[test]
fn an_eclipse_that_forwards_only_beacons_holds_the_eclipsed_sites_until_the_halt_arrives() {
    // UTC and Berlin wait for the deadline (16 s); the canary gate halts at about 8 s. With
    // nothing crossing the eclipse, its canaries in those zones start at the deadline: the
    // halt never reached them. With the other sites' beacons crossing, they learn that the
    // mesh holds failure reports they lack, and start nothing until the halt arrives.
    let seed = seeds(&[2])[0];
    let blind = run(&eclipse(""), seed);
    let f = figures(&blind);
    assert!(
        f.cut_installs_after_halt[0] > 0,
        "seed {seed}: the test needs a case to prevent: {f:?}"
    );
    assert_eq!(blind.reach.reach_by_cut[0].held_nodes, 0, "nothing crossed: nothing to go by");
    let r = run(&eclipse("\"beacon\""), seed);
    let f = figures(&r);
    assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
    assert_eq!(f.cut_installs_after_halt, vec![0], "seed {seed}");
    assert_eq!(f.blast_radius, 0);
    let cut = &r.reach.reach_by_cut[0];
    assert_eq!(cut.held_nodes, cut.nodes, "seed {seed}: every eclipsed node held: {cut:?}");
    assert!(cut.detect_ms.max < 11_000, "seed {seed}: held before the deadline: {cut:?}");
    assert_eq!(cut.still_held_nodes, 0, "seed {seed}: free again after the heal: {cut:?}");
    assert_eq!(r.reach.reach_false_holds, 0, "seed {seed}");
    assert_eq!(
        f.halted_nodes, f.live_nodes,
        "seed {seed}: the halt reached everyone after the heal"
    );
}

/// `long-partition.toml` at 2,000 nodes in 40 sites: 20% loss on every WAN link, 16 sites cut
/// off from 6 s to 41 s across the canary failures, 40 nodes crashed at 6.5 s for 4 s.
#[test]
fn after_a_long_partition_under_heavy_loss_every_node_halts_within_seconds_of_the_heal() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/long-partition.toml"
    ))
    .unwrap()
    .replace("nodes = 30000", "nodes = 2000")
    .replace("sites = 300", "sites = 40")
    .replace("duration_ms = 70000", "duration_ms = 50000")
    .replace("[[partition]]\nsites = 120", "[[partition]]\nsites = 16")
    .replace("[[crash]]\nnodes = 150", "[[crash]]\nnodes = 40");
    let s = Scenario::parse(&text, "inline").unwrap();
    assert_eq!((s.nodes, s.sites, s.partition[0].sites, s.crash[0].nodes), (2000, 40, 16, 40));
    // Seed 1 left 50 nodes that never halted before the simulator redialled lost links (a
    // restarted node's hello lost on a lossy WAN link dropped the link for good).
    for seed in seeds(&[1]) {
        let r = run(&s, seed);
        let f = figures(&r);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        assert!(r.state_converged, "seed {seed}");
        assert_eq!(f.halted_nodes, f.live_nodes, "seed {seed}: every live node halted");
        assert_eq!(f.blast_radius, 0, "seed {seed}");
        assert!(f.halt_after_heal_ms.max <= 3_000, "seed {seed}: {:?}", f.halt_after_heal_ms);
        assert!(r.links_redialled > 0, "seed {seed}: lost links were dialled again");
    }
}
