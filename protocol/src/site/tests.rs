use super::*;

fn summary(soaking: u32, starts: Vec<(Millis, u32)>) -> SiteSummary {
    let r = RolloutId([1; 32]);
    let mut counts = Counts::new();
    counts.insert((r, 0, RolloutStatus::Succeeded), 2);
    if soaking > 0 {
        counts.insert((r, 0, RolloutStatus::Soaking), soaking);
    }
    let soaking = if starts.is_empty() { SoakStarts::new() } else { [((r, 0), starts)].into() };
    SiteSummary {
        mesh: MeshId([0; 32]),
        site: SiteId("a".into()),
        author: NodeId([2; 32]),
        record_count: 10,
        evidence_count: 0,
        version_sum: 1,
        records_root: [0; 32],
        evidence_root: [0; 32],
        counts,
        evidence: BTreeMap::new(),
        exposure: Default::default(),
        shape: SiteShape::default(),
        soaking,
    }
}

#[test]
fn soak_starts_must_account_for_exactly_the_members_counted_soaking() {
    let (t1, t2) = (Millis(1_000), Millis(1_250));
    assert!(summary(3, vec![(t1, 1), (t2, 2)]).counts_consistent());
    assert!(summary(0, vec![]).counts_consistent());
    // Soaking members with no start, starts with no soaking member, totals that differ.
    assert!(!summary(3, vec![]).counts_consistent());
    assert!(!summary(0, vec![(t1, 1)]).counts_consistent());
    assert!(!summary(3, vec![(t1, 1), (t2, 1)]).counts_consistent());
    // Times not rising, or an empty entry.
    assert!(!summary(3, vec![(t2, 1), (t1, 2)]).counts_consistent());
    assert!(!summary(3, vec![(t1, 1), (t1, 2)]).counts_consistent());
    assert!(!summary(3, vec![(t1, 3), (t2, 0)]).counts_consistent());
}

#[test]
fn a_soak_start_rounds_up_never_down() {
    let step = limits::SOAK_START_STEP_MS;
    assert_eq!(soak_start(Millis(0)), Millis(0));
    assert_eq!(soak_start(Millis(1)), Millis(step));
    assert_eq!(soak_start(Millis(step)), Millis(step));
    assert_eq!(soak_start(Millis(step + 1)), Millis(2 * step));
    assert_eq!(soak_start(Millis(u64::MAX)), Millis(u64::MAX));
}
