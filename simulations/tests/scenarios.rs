//! Seeded simulations checking invariants. A failure prints the seed; set PATCHMESH_SEED to
//! replay one.

use patchmesh_sim::{run, Scenario};

fn scenario(name: &str) -> Scenario {
    let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    Scenario::load(&path).unwrap()
}

fn seeds() -> Vec<u64> {
    match std::env::var("PATCHMESH_SEED") {
        Ok(s) => vec![s.parse().expect("PATCHMESH_SEED must be a number")],
        Err(_) => vec![1, 2, 3, 4, 5],
    }
}

#[test]
fn small_scenario_holds_every_invariant_across_seeds() {
    let s = scenario("small");
    for seed in seeds() {
        let r = run(&s, seed);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        assert!(r.state_converged, "seed {seed}");
        assert_eq!(r.policy_convergence_nodes, 20, "seed {seed}");
        // Every kind of forgery the adversaries send was refused somewhere.
        for kind in [
            "bad_signature",
            "unknown_key",
            "below_threshold",
            "duplicate_signer",
            "revoked",
            "malformed",
            "oversized",
            "invalid",
            "bad_site_object",
        ] {
            assert!(
                r.rejected.get(kind).copied().unwrap_or(0) > 0,
                "seed {seed}: no {kind} rejection: {:?}",
                r.rejected
            );
        }
    }
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    let s = scenario("small");
    let a = run(&s, 42);
    let b = run(&s, 42);
    let c = run(&s, 43);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.bytes_sent_total, b.bytes_sent_total);
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn branch_offices_converges_with_partition_crashes_and_adversaries() {
    let mut s = scenario("branch-offices");
    // The scenario's payload is checked by `branch_offices_payload` (a release-build test): in
    // a debug build its planning alone takes minutes.
    s.payload = None;
    s.duration_ms = 30_000;
    let seed = seeds()[0];
    let r = run(&s, seed);
    assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
    assert!(r.state_converged);
    // Per-node state is bounded by the site, not the fleet: ~20 records, 50 summaries.
    assert!(r.records_per_node < 30.0, "{}", r.records_per_node);
    assert_eq!(r.summaries_per_node, 50.0);
}

#[test]
fn a_run_without_healing_reports_the_violation() {
    // A partition that never heals before the end must be reported as non-convergence: the
    // checker can fail.
    let text = r#"
        name = "unhealed"
        nodes = 12
        sites = 3
        duration_ms = 9000
        warmup_ms = 2000
        publish_at_ms = 5000
        [[partition]]
        sites = 1
        start_ms = 3000
        end_ms = 60000
        publish_inside = true
    "#;
    let s = Scenario::parse(text, "inline").unwrap();
    let r = run(&s, 1);
    assert!(!r.state_converged);
    assert!(!r.invariant_violations.is_empty());
}

#[test]
fn bad_scenarios_are_refused_with_a_reason() {
    for (text, needle) in [
        ("nodes = 0\nsites = 1", "nodes"),
        ("nodes = 10\nsites = 20", "sites"),
        ("nodes = 10\nsites = 2\n[wan]\nloss = 1.5", "loss"),
        ("nodes = 10\nsites = 2\nbogus = 1", "unknown field"),
        ("nodes = 10\nsites = 2\nwarmup_ms = 9000\npublish_at_ms = 100", "warmup"),
        (
            "nodes = 10\nsites = 2\n[payload]\nsize_bytes = 20000000000\nat_ms = 5000",
            "exceeds the limit",
        ),
        ("nodes = 10\nsites = 2\n[payload]\nsize_bytes = 0\nat_ms = 5000", "size_bytes"),
        ("nodes = 10\nsites = 2\n[payload]\nsize_bytes = 100\nat_ms = 20000", "at_ms"),
        (
            "nodes = 10\nsites = 2\n[payload]\nsize_bytes = 100\nat_ms = 5000\nfetcher_crashes = 1",
            "fetcher",
        ),
        ("nodes = 10\nsites = 2\n[payload]\nsize_bytes = 100", "at_ms"),
        ("nodes = 10\nsites = 2\n[enrol]\nmachines = 0", "machines"),
        ("nodes = 10\nsites = 2\n[enrol]\nmachines = 5\nspread_ms = 30000", "duration_ms"),
        ("nodes = 10\nsites = 2\n[enrol]\nmachines = 5\n[intel]", "without"),
    ] {
        let err = Scenario::parse(text, "inline").unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn steady_start_restores_verified_stores_and_converges() {
    let text = r#"
        name = "steady"
        nodes = 60
        sites = 6
        start = "steady"
        duration_ms = 8000
        warmup_ms = 1000
        publish_at_ms = 3000
        adversaries = 1
        revoke_admin_at_ms = 500
        [[crash]]
        nodes = 5
        at_ms = 2000
        down_ms = 2000
    "#;
    let s = Scenario::parse(text, "inline").unwrap();
    let r = run(&s, 7);
    assert!(r.invariant_violations.is_empty(), "{:?}", r.invariant_violations);
    assert_eq!(r.summaries_per_node, 6.0);
    // Ten honest nodes a site, plus the adversary in one of them.
    assert!(r.records_per_node >= 10.0 && r.records_per_node < 11.0, "{}", r.records_per_node);
}

#[test]
fn payload_reaches_every_live_node_once_per_site() {
    let s = scenario("small");
    assert!(s.payload.is_some(), "small.toml carries a payload");
    for seed in seeds() {
        let r = run(&s, seed);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        assert_eq!(r.payload_complete_nodes, 20, "seed {seed}");
        // The site without the origin takes the payload across its WAN link once.
        let ratio = r.wan_bytes_per_site_ratio;
        assert!((1.0..=1.05).contains(&ratio), "seed {seed}: ratio {ratio}");
        assert!(r.payload_complete_ms.max > 0, "seed {seed}");
    }
}

/// Four sites of ten; the elected WAN fetcher of every site that is mid-transfer crashes and
/// stays down to the end, so its site can only finish through the next member taking over.
const FAILOVER: &str = r#"
    name = "payload-failover"
    nodes = 40
    sites = 4
    duration_ms = 30000
    warmup_ms = 2000
    publish_at_ms = 3000
    [payload]
    size_bytes = 8388608
    at_ms = 4000
    fetcher_crashes = 4
    fetcher_crash_at_ms = 5500
    fetcher_down_ms = 60000
"#;

#[test]
fn payload_fails_over_when_the_elected_fetcher_crashes() {
    let s = Scenario::parse(FAILOVER, "inline").unwrap();
    for seed in seeds() {
        let r = run(&s, seed);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        assert!(r.payload_failovers >= 1, "seed {seed}: no member took over");
        // The crashed fetchers are still down; every other node completed.
        assert!(r.payload_complete_nodes < 40, "seed {seed}: no fetcher crashed");
        assert_eq!(r.payload_complete_nodes + r.payload_failovers, 40, "seed {seed}");
        // Groups only the crashed fetcher held (its last quarter second, not yet copied by its
        // site) cross the WAN again: a few percent, not a second payload.
        let ratio = r.wan_bytes_per_site_ratio;
        assert!((1.0..=1.2).contains(&ratio), "seed {seed}: ratio {ratio}");
    }
}

#[test]
fn payload_waits_out_a_partition() {
    let text = r#"
        name = "payload-partition"
        nodes = 30
        sites = 3
        duration_ms = 25000
        warmup_ms = 2000
        publish_at_ms = 3000
        [payload]
        size_bytes = 8388608
        at_ms = 4000
        [[partition]]
        sites = 1
        start_ms = 5000
        end_ms = 9000
    "#;
    let s = Scenario::parse(text, "inline").unwrap();
    for seed in seeds() {
        let r = run(&s, seed);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        assert_eq!(r.payload_complete_nodes, 30, "seed {seed}");
        let ratio = r.wan_bytes_per_site_ratio;
        assert!((1.0..=1.05).contains(&ratio), "seed {seed}: ratio {ratio}");
    }
}

#[test]
fn a_payload_that_cannot_arrive_is_reported() {
    // One of two sites is cut off from before publication to the end: whichever holds the
    // origin, the other site never completes, and the checker says so.
    let text = r#"
        name = "payload-cut"
        nodes = 8
        sites = 2
        duration_ms = 20000
        warmup_ms = 1000
        publish_at_ms = 2000
        [payload]
        size_bytes = 1048576
        at_ms = 4000
        [[partition]]
        sites = 1
        start_ms = 3000
        end_ms = 60000
    "#;
    let s = Scenario::parse(text, "inline").unwrap();
    let r = run(&s, 1);
    assert_eq!(r.payload_complete_nodes, 4);
    assert!(
        r.invariant_violations.iter().any(|v| v.contains("never completed the payload")),
        "{:?}",
        r.invariant_violations
    );
}

#[test]
fn no_payload_reports_zeros() {
    let text = "nodes = 6\nsites = 2\nduration_ms = 8000\nwarmup_ms = 1000\npublish_at_ms = 2000";
    let r = run(&Scenario::parse(text, "inline").unwrap(), 1);
    assert!(r.invariant_violations.is_empty(), "{:?}", r.invariant_violations);
    assert_eq!(r.payload_complete_nodes, 0);
    assert_eq!(r.wan_bytes_per_site_ratio, 0.0);
}

/// The branch-offices payload: 50 MiB to 1,000 nodes in 50 sites. Slow in a debug build, so
/// run it with `cargo test --release -p patchmesh-sim -- --ignored`.
#[test]
#[ignore = "minutes in a debug build; run with --release -- --ignored"]
fn branch_offices_payload() {
    let s = scenario("branch-offices");
    let seed = seeds()[0];
    let r = run(&s, seed);
    assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
    assert_eq!(r.payload_complete_nodes, 1000, "seed {seed}");
    let ratio = r.wan_bytes_per_site_ratio;
    assert!(ratio <= 1.05, "seed {seed}: ratio {ratio}");
}

/// 40 machines join site 0 with a voucher for 30 (the last 10 to enrol are extras). With the
/// site split in two while the extras boot, each half admits what it sees, so extras are
/// admitted somewhere; after the heal every member refuses the same 10 and admits the 30.
/// Without the split, an extra is admitted only until its neighbours catch up.
#[test]
fn a_voucher_admits_its_limit_and_a_split_site_converges_on_the_same_machines() {
    let text = |split_at: u64| {
        format!(
            "nodes = 24\nsites = 3\nduration_ms = 20000\nwarmup_ms = 1000\npublish_at_ms = 15000\n\
             clock_skew_ms = 200\n[lan]\nlatency_ms = 1\nbandwidth_mbps = 100\n\
             [protocol]\nanti_entropy_interval_ms = 500\ngossip_flush_ms = 50\n\
             [enrol]\nmachines = 40\nmax_nodes = 30\nat_ms = 2000\nspread_ms = 4000\n\
             check_ms = 250\nsplit_at_ms = {split_at}\nsplit_ms = 5000\n"
        )
    };
    for seed in [1, 2, 3] {
        let r = run(&Scenario::parse(&text(3000), "inline").unwrap(), seed);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        let e = r.enrol.as_ref().expect("an [enrol] scenario reports enrolment figures");
        assert_eq!((e.enrol_admitted_nodes, e.enrol_refused_nodes), (30, 10), "seed {seed}");
        assert!(e.enrol_over_limit_max > 0, "seed {seed}: the split admitted no extra: {e:?}");
        assert!(e.enrol_over_limit_max <= 10, "seed {seed}: {e:?}");
        // Extras stop being admitted within a few anti-entropy rounds of the heal (8 s).
        assert!(e.enrol_over_limit_after_heal_ms <= 3000, "seed {seed}: {e:?}");
        assert!(e.enrol_over_limit_last_ms < 11_000, "seed {seed}: {e:?}");

        let r = run(&Scenario::parse(&text(0), "inline").unwrap(), seed);
        assert!(r.invariant_violations.is_empty(), "seed {seed}: {:?}", r.invariant_violations);
        let e = r.enrol.as_ref().unwrap();
        assert_eq!((e.enrol_admitted_nodes, e.enrol_refused_nodes), (30, 10), "seed {seed}");
        // Every machine boots by 6 s; without a split the extras are out soon after.
        assert!(e.enrol_over_limit_last_ms < 9_000, "seed {seed}: {e:?}");
    }
}

/// Every committed fuzz seed and regression of the scenario parser (`fuzz/seeds/scenario`,
/// `fuzz/regressions/scenario`) parses or is refused with a reason, without a panic.
#[test]
fn scenario_fuzz_seeds_and_regressions_never_panic() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut ran = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join("scenario")) else { continue };
        for f in dir.filter_map(|e| Some(e.ok()?.path())) {
            let bytes = std::fs::read(&f).unwrap();
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let r = std::panic::catch_unwind(|| Scenario::parse(text, "seed").map(|_| ()));
                assert!(r.is_ok(), "{} panicked", f.display());
            }
            ran += 1;
        }
    }
    assert!(ran >= 7, "only {ran} scenario seeds under {}", root.display());
}

#[test]
fn every_shipped_scenario_loads_and_an_explicit_fleet_keeps_its_shape() {
    let dir = format!("{}/scenarios", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    for p in &names {
        Scenario::load(p.to_str().unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    // A fleet site by site: counts, zones and labels as written, through a write and a read.
    let text = r#"
name = "explicit"
start_at = "2026-12-07T03:00:00Z"
duration_ms = 20000

[[site]]
name = "paris"
wan_mbps = 10.0
kinds = [{ count = 3, zone = "Europe/Paris", labels = { ring = "canary" } }, { count = 5 }]

[[site]]
name = "tokyo"
wan_rtt_ms = 200.0
kinds = [{ count = 4, zone = "Asia/Tokyo" }]
"#;
    let s = Scenario::parse(text, "inline").unwrap();
    assert_eq!((s.nodes, s.sites), (12, 2));
    assert_eq!(s.epoch_ms, 1_796_612_400_000);
    assert_eq!(s.wan_of(0).bandwidth_mbps, 10.0);
    assert_eq!(s.wan_of(1).rtt_ms, 200.0);
    let placement: Vec<u32> = s.placement().iter().map(|p| p.0).collect();
    assert_eq!(placement, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]);
    let again = Scenario::parse(&toml::to_string(&s).unwrap(), "again").unwrap();
    assert_eq!((again.nodes, again.sites, again.epoch_ms), (12, 2, s.epoch_ms));
    assert_eq!(again.site[0].kinds[0].labels["ring"], "canary");
    let r = run(&s, 1);
    assert!(r.invariant_violations.is_empty(), "{:?}", r.invariant_violations);
    // Totals that contradict the sites, a bad zone or a bad mask are refused.
    for bad in [
        text.replace("duration_ms = 20000", "duration_ms = 20000\nnodes = 5"),
        text.replace("Asia/Tokyo", "Asia/Nowhere"),
        text.replace("count = 5 }", "count = 5, quiet = \"zz\" }"),
    ] {
        assert!(Scenario::parse(&bad, "bad").is_err(), "{bad}");
    }
}
