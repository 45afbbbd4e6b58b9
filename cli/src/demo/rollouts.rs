//! The demo's rollouts: the policy every demo rollout carries, rehearsing it first, creating
//! or remediating with it, and the per-ring table of what happened.

use super::*;

/// The demo's rings and gates, as `rollout create`, `remediate` and `rollout plan` take them.
pub(super) fn policy_args(soak_s: u64) -> Vec<String> {
    [
        "--ring",
        "canary:0:ring=canary",
        "--ring",
        "half:0:ring=half",
        "--ring",
        "all:100",
        "--min-success",
        "1.0",
        "--max-failures",
        "0",
        "--soak-s",
        &soak_s.to_string(),
        "--recheck-s",
        "1",
        "--max-concurrent-per-site",
        "2",
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `patchmesh HEAD… <the demo's rings and gates> TAIL… --config <node 0> --json`.
pub(super) fn with_policy<T: DeserializeOwned>(
    d: &Demo,
    head: &[&str],
    soak_s: u64,
    tail: &[&str],
) -> anyhow::Result<T> {
    let config = s(&d.nodes[0].dir.join("node.toml"));
    let mut args: Vec<String> = head.iter().map(|a| a.to_string()).collect();
    args.extend(policy_args(soak_s));
    args.extend(tail.iter().map(|a| a.to_string()));
    args.extend(["--config".to_string(), config, "--json".to_string()]);
    cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `patchmesh rollout plan` of the rollout about to be created, from node 0: the prediction
/// the demo then holds the real rollout against. `fail` rehearses the bad patch (every canary
/// fails). The demo's sites share one machine, so their "WAN" is loopback: 1 Gbit/s, 1 ms.
/// Node 0 has installed nothing before the fix, so that rehearsal is told the install's
/// duration: fetching a 2 MiB payload over loopback and running the demo's shell scripts
/// takes tens of milliseconds; the bad patch's rehearsal measures it from the fix's install.
pub(super) fn rehearse(d: &Demo, content: &str, soak_s: u64, fail: bool) -> anyhow::Result<Plan> {
    let mut tail =
        vec!["--seeds", "5", "--wan-mbps", "1000", "--wan-rtt-ms", "1", "--install-ms", "50"];
    if fail {
        tail.extend(["--fail-label", "ring=canary", "--fail-fraction", "1"]);
    }
    with_policy(d, &["rollout", "plan", "--patch", content], soak_s, &tail)
}

/// What `patchmesh rollout plan --json` prints.
pub(super) type Plan = patchmesh_node::control::PlanOutput<patchmesh_sim::rehearsal::Rehearsal>;

/// Puts the rehearsal's per-ring prediction beside the actual rings.
pub(super) fn with_prediction(rings: &mut [DemoRing], plan: &Plan) {
    for (r, p) in rings.iter_mut().zip(&plan.rehearsal.rings) {
        r.predicted_ms = p.done_ms;
        r.predicted_targeted = Some(p.nodes);
    }
}

/// `patchmesh remediate` with the demo's rings: the fix to exactly the exposed nodes.
pub(super) fn remediate(
    d: &Demo,
    admin_key: &str,
    content: &str,
    soak_s: u64,
) -> anyhow::Result<(String, u64)> {
    let at = patchmesh_node::clock::now_ms().0;
    let head = ["remediate", crate::demo_intel::CVE, "--patch", content, "--yes"];
    let out: Vec<crate::intel::RemediationOut> =
        with_policy(d, &head, soak_s, &["--admin-key", admin_key])?;
    let first = out.into_iter().next().context("remediate printed no rollout")?;
    d.say(format!(
        "  remediation targets `{}`, deadline {}",
        first.predicate,
        first.deadline.as_deref().unwrap_or("none")
    ));
    Ok((first.rollout, at))
}

pub(super) fn create_rollout(
    d: &Demo,
    admin_key: &str,
    content: &str,
    soak_s: u64,
) -> anyhow::Result<(String, u64)> {
    let at = patchmesh_node::clock::now_ms().0;
    let head = ["rollout", "create", "--patch", content];
    let out: RolloutCreateOutput = with_policy(d, &head, soak_s, &["--admin-key", admin_key])?;
    Ok((out.rollout, at))
}

/// Per ring: targeted, succeeded, failed, rolled back, and time from publication to the last
/// member settling.
pub(super) fn ring_table(views: &[Option<RolloutView>], published_at: u64) -> Vec<DemoRing> {
    let mut rings: Vec<DemoRing> = views
        .iter()
        .flatten()
        .next()
        .map(|v| {
            v.rings
                .iter()
                .map(|r| DemoRing { name: r.name.clone(), ..Default::default() })
                .collect()
        })
        .unwrap_or_default();
    for v in views.iter().flatten() {
        let Some(ring) = v.standing.as_ref().and_then(|s| s.ring) else { continue };
        let Some(e) = rings.get_mut(usize::from(ring)) else { continue };
        e.targeted += 1;
        let Some(l) = &v.local else { continue };
        match l.step.as_str() {
            "committed" => e.succeeded += 1,
            "rolled_back" | "failed" => e.rolled_back += 1,
            _ => {}
        }
        if l.failed {
            e.failed += 1;
        }
        if l.step != "cancelled" {
            e.duration_ms = e.duration_ms.max(l.step_at_ms.saturating_sub(published_at));
        }
    }
    rings
}
