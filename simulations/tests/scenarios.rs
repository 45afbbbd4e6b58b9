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
    let s = scenario("branch-offices");
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
