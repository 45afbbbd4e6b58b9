//! Unit tests of [`super::Fetch`]: the source policy, one input at a time.

use super::*;
use crate::transfer::GROUP_BYTES;

fn n(i: u8) -> NodeId {
    NodeId([i; 32])
}

/// A peer in a site of its own (not this node's).
fn other(x: NodeId) -> (NodeId, Option<SiteId>) {
    (x, Some(SiteId::from(format!("site-{}", x.0[0]).as_str())))
}

const ME: u8 = 200;
const GROUPS: u64 = 4096;

fn fetch(has_outboard: bool) -> Fetch {
    let content = ContentId([9; 32]);
    let size = GROUPS * GROUP_BYTES;
    Fetch::new(
        n(ME),
        content,
        size,
        Bitfield::new(GROUPS),
        has_outboard,
        Params::default(),
        Millis(0),
    )
}

fn drain(f: &mut Fetch) -> Vec<FetchOutput> {
    std::iter::from_fn(|| f.poll_output()).collect()
}

fn ranges(out: &[FetchOutput]) -> Vec<Request> {
    out.iter()
        .filter_map(|o| match o {
            FetchOutput::FetchRange { request, .. } => Some(request.clone()),
            _ => None,
        })
        .collect()
}

/// Answers every `AskHave` with `Complete`.
fn answer_all(f: &mut Fetch, now: Millis, out: &[FetchOutput]) {
    for o in out {
        if let FetchOutput::AskHave(s) = o {
            let reply = Ok((GROUPS * GROUP_BYTES, Availability::Complete));
            f.handle_input(now, FetchInput::Have { source: *s, reply });
        }
    }
}

/// Site members that lose the election to `ME` for this content, so `ME` is elected.
fn losers(count: usize) -> Vec<NodeId> {
    let content = ContentId([9; 32]);
    (1..=250u8)
        .map(n)
        .filter(|x| *x != n(ME))
        .filter(|x| rendezvous(&content, x) < rendezvous(&content, &n(ME)))
        .take(count)
        .collect()
}

#[test]
fn a_congested_uplink_never_costs_a_source() {
    let mut f = fetch(true);
    // Elected (no site member beats it), with three sources in another site.
    let wan = [n(1), n(2), n(3)];
    f.handle_input(Millis(0), FetchInput::Peers(wan.iter().map(|x| other(*x)).collect()));
    let out = drain(&mut f);
    answer_all(&mut f, Millis(0), &out);
    // Each source trickles 8 KiB/s (half the old fixed floor): one group per range (two
    // ranges each) every four seconds.
    let mut t = 0;
    let mut sent: BTreeMap<u64, (Request, u64)> = BTreeMap::new();
    while t < 120_000 {
        for r in ranges(&drain(&mut f)) {
            sent.insert(r.id, (r.clone(), r.first));
        }
        t += 250;
        if t % 4_000 == 0 {
            for (id, (r, next)) in sent.iter_mut() {
                if *next < r.first + r.count {
                    f.handle_input(
                        Millis(t),
                        FetchInput::Groups { request: *id, first: *next, count: 1 },
                    );
                    *next += 1;
                }
            }
        }
        f.handle_timeout(Millis(t));
    }
    let out = drain(&mut f);
    assert!(!out.iter().any(|o| matches!(o, FetchOutput::Penalize(..))));
    assert_eq!(f.resting(), 0);
    assert_eq!(f.stats().dropped.get("slow"), None);
    assert_eq!(f.download().active_sources(), 3);
    assert!(f.stats().wan_bytes > 0);
}

#[test]
fn broken_streams_rest_with_backoff_and_come_back() {
    let mut f = fetch(true);
    f.handle_input(Millis(0), FetchInput::Peers(vec![other(n(1))]));
    // (Nothing is known to hold the content yet, so the elected node also looks it up.)
    assert!(drain(&mut f).contains(&FetchOutput::AskHave(n(1))));
    let lost = FetchInput::Have { source: n(1), reply: Err(Failure::Lost) };
    f.handle_input(Millis(0), lost.clone());
    assert_eq!(f.resting(), 1);
    assert!(f.download().sources().is_empty());
    // Back after one second, asked again.
    f.handle_timeout(Millis(999));
    assert!(!drain(&mut f).contains(&FetchOutput::AskHave(n(1))));
    assert_eq!(f.poll_timeout(), Some(Millis(1_000)));
    f.handle_timeout(Millis(1_000));
    assert!(drain(&mut f).contains(&FetchOutput::AskHave(n(1))));
    // A second strike rests twice as long.
    f.handle_input(Millis(1_000), lost);
    f.handle_timeout(Millis(2_500));
    assert_eq!(f.resting(), 1);
    f.handle_timeout(Millis(3_000));
    assert_eq!(f.resting(), 0);
    assert!(drain(&mut f).iter().all(|o| !matches!(o, FetchOutput::Penalize(..))));
    assert_eq!(f.stats().dropped.get("lost"), Some(&2));
}

#[test]
fn a_broken_stream_lets_the_sources_other_ranges_finish_then_rests_it() {
    let mut f = fetch(true);
    f.handle_input(Millis(0), FetchInput::Peers(vec![other(n(1)), other(n(2))]));
    let out = drain(&mut f);
    answer_all(&mut f, Millis(0), &out);
    let rs = ranges(&drain(&mut f));
    let of1: Vec<&Request> = rs.iter().filter(|r| r.source == n(1)).collect();
    let of2: Vec<&Request> = rs.iter().filter(|r| r.source == n(2)).collect();
    assert!(of1.len() >= 2 && !of2.is_empty());
    let lost = FetchInput::RangeEnded { request: of1[0].id, result: Err(Failure::Lost) };
    f.handle_input(Millis(5), lost);
    let out = drain(&mut f);
    // Nothing on the wire is thrown away while the other source is busy...
    assert!(!out.iter().any(|o| matches!(o, FetchOutput::Cancel(_))));
    assert!(ranges(&out).iter().all(|r| r.source == n(2)));
    assert!(f.download().sources()[&n(1)].retiring);
    assert_eq!(f.resting(), 0);
    // ...its last range arrives, then it rests.
    for r in &of1[1..] {
        let g = FetchInput::Groups { request: r.id, first: r.first, count: r.count };
        f.handle_input(Millis(6), g);
        f.handle_input(Millis(6), FetchInput::RangeEnded { request: r.id, result: Ok(()) });
    }
    assert_eq!(f.resting(), 1);
    assert!(!f.download().sources().contains_key(&n(1)));
    assert_eq!(f.stats().dropped.get("lost"), Some(&1));
}

#[test]
fn the_end_game_cuts_a_struck_sources_last_ranges_short() {
    let content = ContentId([9; 32]);
    let size = 8 * GROUP_BYTES;
    let p = Params::default();
    let mut f = Fetch::new(n(ME), content, size, Bitfield::new(8), true, p, Millis(0));
    f.handle_input(Millis(0), FetchInput::Peers(vec![other(n(1)), other(n(2))]));
    for o in drain(&mut f) {
        if let FetchOutput::AskHave(s) = o {
            let reply = Ok((size, Availability::Complete));
            f.handle_input(Millis(0), FetchInput::Have { source: s, reply });
        }
    }
    let mut inflight: BTreeMap<u64, Request> =
        ranges(&drain(&mut f)).into_iter().map(|r| (r.id, r)).collect();
    let of1: Vec<u64> = inflight.values().filter(|r| r.source == n(1)).map(|r| r.id).collect();
    assert!(of1.len() >= 2, "{inflight:?}");
    let lost = FetchInput::RangeEnded { request: of1[0], result: Err(Failure::Lost) };
    f.handle_input(Millis(5), lost);
    inflight.remove(&of1[0]);
    let last = of1[1];
    // n2 delivers whatever it is given; n1's last range never moves.
    let mut cancelled = false;
    for t in 6..50 {
        let mine: Vec<Request> = inflight.values().filter(|r| r.source == n(2)).cloned().collect();
        for r in mine {
            let g = FetchInput::Groups { request: r.id, first: r.first, count: r.count };
            f.handle_input(Millis(t), g);
            f.handle_input(Millis(t), FetchInput::RangeEnded { request: r.id, result: Ok(()) });
            inflight.remove(&r.id);
        }
        for o in drain(&mut f) {
            match o {
                FetchOutput::FetchRange { request, .. } => {
                    assert_eq!(request.source, n(2));
                    inflight.insert(request.id, request);
                }
                FetchOutput::Cancel(id) => {
                    assert_eq!(id, last);
                    cancelled = true;
                    inflight.remove(&id);
                }
                _ => {}
            }
        }
    }
    assert!(cancelled, "the struck source's last range was never handed to the other");
    assert_eq!(f.state(), FetchState::Complete);
}

#[test]
fn a_timed_out_range_goes_back_and_the_source_stays() {
    let mut f = fetch(true);
    f.handle_input(Millis(0), FetchInput::Peers(vec![other(n(1))]));
    let out = drain(&mut f);
    answer_all(&mut f, Millis(0), &out);
    let rs = ranges(&drain(&mut f));
    let late = FetchInput::RangeEnded { request: rs[0].id, result: Err(Failure::Timeout) };
    f.handle_input(Millis(10_000), late);
    let out = drain(&mut f);
    assert!(!out.iter().any(|o| matches!(o, FetchOutput::Cancel(_) | FetchOutput::Penalize(..))));
    assert_eq!(f.resting(), 0);
    assert_eq!(f.stats().dropped.get("timeout"), Some(&1));
    // The range's groups are asked for again.
    let again = ranges(&out);
    assert!(again.iter().any(|r| r.first == rs[0].first && r.source == n(1)));
}

#[test]
fn a_corrupt_source_is_penalised_and_rests_longer() {
    let mut f = fetch(true);
    f.handle_input(Millis(0), FetchInput::Peers(vec![other(n(1)), other(n(2))]));
    let out = drain(&mut f);
    answer_all(&mut f, Millis(0), &out);
    let rs = ranges(&drain(&mut f));
    let bad = rs.iter().find(|r| r.source == n(1)).unwrap().id;
    let corrupt = Err(Failure::Fault(Fault::Corrupt));
    f.handle_input(Millis(10), FetchInput::RangeEnded { request: bad, result: corrupt });
    let out = drain(&mut f);
    assert!(out.contains(&FetchOutput::Penalize(n(1), Fault::Corrupt)));
    // Its other range is cancelled, and its groups go to the honest source.
    assert!(out.iter().any(|o| matches!(o, FetchOutput::Cancel(_))));
    assert!(ranges(&out).iter().all(|r| r.source == n(2)));
    f.handle_timeout(Millis(29_000));
    assert!(!f.download().sources().contains_key(&n(1)));
    f.handle_timeout(Millis(30_010));
    assert!(f.download().sources().contains_key(&n(1)), "every rest ends");
}

#[test]
fn roles_follow_the_site_and_a_lost_role_cancels_wan_ranges() {
    let mut f = fetch(true);
    let mate = losers(1)[0];
    // A site member that wins the election for this content.
    let content = ContentId([9; 32]);
    let winner = (1..=250u8)
        .map(n)
        .find(|x| rendezvous(&content, x) > rendezvous(&content, &n(ME)))
        .unwrap();
    f.handle_input(Millis(0), FetchInput::Peers(vec![(mate, None), other(n(252))]));
    assert_eq!(f.download().role(), Role::Wan);
    drain(&mut f);
    // The site holds nothing yet; the other site everything.
    let nothing = Ok((0, Availability::Nothing));
    f.handle_input(Millis(0), FetchInput::Have { source: mate, reply: nothing });
    let all = Ok((GROUPS * GROUP_BYTES, Availability::Complete));
    f.handle_input(Millis(0), FetchInput::Have { source: n(252), reply: all });
    let rs = ranges(&drain(&mut f));
    let remote: Vec<u64> = rs.iter().filter(|r| r.source == n(252)).map(|r| r.id).collect();
    assert!(!remote.is_empty());
    // The winner joins: this node hands the WAN role back and cancels what it had there.
    let view = vec![(mate, None), (winner, None), other(n(252))];
    f.handle_input(Millis(5), FetchInput::Peers(view));
    assert_eq!(f.download().role(), Role::Lan);
    let out = drain(&mut f);
    for id in remote {
        assert!(out.contains(&FetchOutput::Cancel(id)));
    }
    assert!(!f.download().sources().contains_key(&n(252)));
    assert!(out.iter().all(|o| !matches!(o, FetchOutput::AskHave(x) if *x == n(252))));
}

#[test]
fn the_wan_is_not_asked_for_what_a_resting_site_member_holds() {
    let mut f = fetch(true);
    let mate = losers(1)[0];
    f.handle_input(Millis(0), FetchInput::Peers(vec![(mate, None), other(n(252))]));
    assert_eq!(f.download().role(), Role::Wan);
    drain(&mut f);
    // The other site answers first: nothing is fetched before the site has answered.
    let all = || Ok((GROUPS * GROUP_BYTES, Availability::Complete));
    f.handle_input(Millis(1), FetchInput::Have { source: n(252), reply: all() });
    assert!(ranges(&drain(&mut f)).is_empty());
    f.handle_input(Millis(2), FetchInput::Have { source: mate, reply: all() });
    let rs = ranges(&drain(&mut f));
    assert!(!rs.is_empty() && rs.iter().all(|r| r.source == mate));
    // The mate's stream breaks and it rests: still nothing from the other site.
    for r in &rs {
        let lost = FetchInput::RangeEnded { request: r.id, result: Err(Failure::Lost) };
        f.handle_input(Millis(3), lost);
    }
    assert_eq!(f.resting(), 1);
    assert!(ranges(&drain(&mut f)).iter().all(|r| r.source != n(252)));
}

#[test]
fn a_lying_or_silent_site_member_cannot_hold_the_wan_back() {
    let content = ContentId([9; 32]);
    let [mate, silent] = [losers(2)[0], losers(2)[1]];
    let mut f = fetch(true);
    let view = vec![(mate, None), (silent, None), other(n(252))];
    f.handle_input(Millis(0), FetchInput::Peers(view));
    assert_eq!(f.download().role(), Role::Wan, "{content:?}");
    drain(&mut f);
    let all = || Ok((GROUPS * GROUP_BYTES, Availability::Complete));
    f.handle_input(Millis(1), FetchInput::Have { source: n(252), reply: all() });
    // One member claims everything; the other never answers (its question times out).
    f.handle_input(Millis(1), FetchInput::Have { source: mate, reply: all() });
    let timeout = Err(Failure::Timeout);
    f.handle_input(Millis(10_000), FetchInput::Have { source: silent, reply: timeout });
    let rs = ranges(&drain(&mut f));
    assert!(!rs.is_empty() && rs.iter().all(|r| r.source == mate));
    // The claim was a lie: the liar rests, and the WAN takes over its groups.
    let lied = Err(Failure::Fault(Fault::Lied));
    f.handle_input(Millis(10_001), FetchInput::RangeEnded { request: rs[0].id, result: lied });
    let out = drain(&mut f);
    assert!(out.contains(&FetchOutput::Penalize(mate, Fault::Lied)));
    assert!(ranges(&out).iter().any(|r| r.source == n(252)));
}

#[test]
fn with_no_source_the_elected_node_looks_up_providers_then_fails_visibly() {
    let mut f = fetch(false);
    f.handle_input(Millis(0), FetchInput::Peers(vec![]));
    assert!(drain(&mut f).contains(&FetchOutput::FindProviders));
    f.handle_timeout(Millis(2_000));
    assert!(!drain(&mut f).contains(&FetchOutput::FindProviders));
    f.handle_timeout(Millis(5_000));
    assert!(drain(&mut f).contains(&FetchOutput::FindProviders));
    // Each empty lookup doubles the wait before the next: 10 s, then 20 s.
    assert_eq!(f.poll_timeout(), Some(Millis(15_000)));
    f.handle_timeout(Millis(14_000));
    assert!(!drain(&mut f).contains(&FetchOutput::FindProviders));
    f.handle_timeout(Millis(15_000));
    assert!(drain(&mut f).contains(&FetchOutput::FindProviders));
    assert_eq!(f.poll_timeout(), Some(Millis(35_000)));
    // A provider appears: the outboard comes first, from it; no range before it.
    f.handle_input(Millis(15_100), FetchInput::Providers(vec![n(7)]));
    let out = drain(&mut f);
    assert_eq!(out, vec![FetchOutput::AskHave(n(7))]);
    let reply = Ok((GROUPS * GROUP_BYTES, Availability::Complete));
    f.handle_input(Millis(15_200), FetchInput::Have { source: n(7), reply });
    assert_eq!(drain(&mut f), vec![FetchOutput::GetOutboard(n(7))]);
    let mut held = Bitfield::new(GROUPS);
    held.set(3);
    f.handle_input(Millis(15_300), FetchInput::Outboard { source: n(7), result: Ok(held) });
    let rs = ranges(&drain(&mut f));
    assert!(!rs.is_empty() && rs.iter().all(|r| !(r.first..r.first + r.count).contains(&3)));
    // It goes away; nothing holds the content for ten minutes: a visible failure.
    let mut f = fetch(false);
    f.handle_input(Millis(0), FetchInput::Peers(vec![]));
    let mut t = 0;
    let mut failed = None;
    while t <= limits::FETCH_NO_SOURCE_MS + 1_000 && failed.is_none() {
        t += 1_000;
        f.handle_timeout(Millis(t));
        failed = drain(&mut f).into_iter().find(|o| matches!(o, FetchOutput::Failed(_)));
    }
    assert!(matches!(failed, Some(FetchOutput::Failed(r)) if r.contains("no admitted peer")));
    assert_eq!(f.state(), FetchState::Failed);
    assert_eq!(f.poll_timeout(), None);
}

#[test]
fn no_provider_look_up_before_the_node_knows_its_site_members() {
    // Site first, then peers, as both drivers give them: the node is not the elected one,
    // and looks nothing up in between.
    let content = ContentId([9; 32]);
    let winner = (1..=250u8)
        .map(n)
        .find(|x| rendezvous(&content, x) > rendezvous(&content, &n(ME)))
        .unwrap();
    let mut f = fetch(false);
    f.handle_input(Millis(0), FetchInput::Site(SiteId::from("home")));
    f.handle_input(Millis(0), FetchInput::Peers(vec![(winner, None), other(n(252))]));
    assert_eq!(f.download().role(), Role::Lan);
    assert!(!drain(&mut f).contains(&FetchOutput::FindProviders));
    // Told it is alone in its site, it is the elected one and looks at once.
    let mut f = fetch(false);
    f.handle_input(Millis(0), FetchInput::Site(SiteId::from("home")));
    assert!(!drain(&mut f).contains(&FetchOutput::FindProviders));
    f.handle_input(Millis(0), FetchInput::Peers(vec![other(n(252))]));
    assert!(drain(&mut f).contains(&FetchOutput::FindProviders));
}

#[test]
fn groups_of_a_cancelled_range_are_kept_and_counted() {
    let mut f = fetch(true);
    f.handle_input(Millis(0), FetchInput::Peers(vec![other(n(1))]));
    let out = drain(&mut f);
    answer_all(&mut f, Millis(0), &out);
    let rs = ranges(&drain(&mut f));
    assert!(rs.len() >= 2);
    // One range turns out corrupt: the source rests and its other range is cancelled...
    let corrupt = Err(Failure::Fault(Fault::Corrupt));
    f.handle_input(Millis(1), FetchInput::RangeEnded { request: rs[0].id, result: corrupt });
    assert!(drain(&mut f).contains(&FetchOutput::Cancel(rs[1].id)));
    // ...and the groups that range's task had verified before the abort still count, as
    // WAN bytes.
    let r = &rs[1];
    f.handle_input(Millis(2), FetchInput::Groups { request: r.id, first: r.first, count: 2 });
    assert!(f.download().have().get(r.first) && f.download().have().get(r.first + 1));
    assert_eq!(f.stats().wan_bytes, 2 * GROUP_BYTES);
}

#[test]
fn wan_sources_are_capped_and_the_slowest_rotates_out() {
    let mut f = fetch(true);
    let wan: Vec<(NodeId, Option<SiteId>)> = (1..=12u8).map(|i| other(n(i))).collect();
    f.handle_input(Millis(0), FetchInput::Peers(wan));
    assert_eq!(f.download().sources().len(), limits::FETCH_WAN_SOURCES_MAX);
    let out = drain(&mut f);
    answer_all(&mut f, Millis(0), &out);
    let first = ranges(&drain(&mut f));
    let slowest = first[0].source;
    // Every 250 ms each range in flight gets a group; the slowest source's only every
    // other time: half the rate of the rest, not slow enough to be rested.
    let mut inflight: BTreeMap<u64, (Request, u64)> =
        first.into_iter().map(|r| (r.id, (r.clone(), r.first))).collect();
    let mut t = 0;
    while t < limits::FETCH_ROTATE_MS {
        t += 250;
        let mut ended = Vec::new();
        for (id, (r, next)) in inflight.iter_mut() {
            if r.source == slowest && (t / 250) % 2 == 1 {
                continue;
            }
            f.handle_input(Millis(t), FetchInput::Groups { request: *id, first: *next, count: 1 });
            *next += 1;
            if *next == r.first + r.count {
                ended.push(*id);
            }
        }
        for id in ended {
            inflight.remove(&id);
            f.handle_input(Millis(t), FetchInput::RangeEnded { request: id, result: Ok(()) });
        }
        f.handle_timeout(Millis(t));
        let out = drain(&mut f);
        answer_all(&mut f, Millis(t), &out);
        for o in out.iter().chain(drain(&mut f).iter()) {
            match o {
                FetchOutput::FetchRange { request, .. } => {
                    inflight.insert(request.id, (request.clone(), request.first));
                }
                FetchOutput::Cancel(id) => {
                    inflight.remove(id);
                }
                FetchOutput::Penalize(..) => panic!("nobody misbehaved: {o:?}"),
                _ => {}
            }
        }
    }
    assert_eq!(f.stats().dropped.get("slow"), None);
    assert_eq!(f.stats().rotations, 1);
    assert!(f.download().sources()[&slowest].retiring);
    // Its ranges end; it leaves and another candidate takes the slot.
    let its: Vec<u64> =
        inflight.iter().filter(|(_, (r, _))| r.source == slowest).map(|(id, _)| *id).collect();
    for id in its {
        f.handle_input(Millis(t), FetchInput::RangeEnded { request: id, result: Ok(()) });
    }
    f.handle_timeout(Millis(t + 1));
    assert!(!f.download().sources().contains_key(&slowest));
    assert_eq!(f.download().sources().len(), limits::FETCH_WAN_SOURCES_MAX);
}

#[test]
fn wan_sources_of_one_site_are_capped() {
    let mut f = fetch(true);
    // Six peers in the origin's site (ranked first by their ids' hash or not), six alone.
    let origin = Some(SiteId::from("origin"));
    let mut view: Vec<(NodeId, Option<SiteId>)> =
        (1..=6u8).map(|i| (n(i), origin.clone())).collect();
    view.extend((7..=12u8).map(|i| other(n(i))));
    f.handle_input(Millis(0), FetchInput::Peers(view));
    let sources: Vec<&NodeId> = f.download().sources().keys().collect();
    assert_eq!(sources.len(), limits::FETCH_WAN_SOURCES_MAX);
    let in_origin = sources.iter().filter(|x| x.0[0] <= 6).count();
    assert_eq!(in_origin, limits::FETCH_WAN_SOURCES_PER_SITE, "{sources:?}");
    // Peers alone in their sites take the other slots.
    let alone = sources.iter().filter(|x| x.0[0] >= 7).count();
    assert_eq!(alone, limits::FETCH_WAN_SOURCES_MAX - limits::FETCH_WAN_SOURCES_PER_SITE);
}
