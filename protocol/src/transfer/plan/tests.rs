//! Unit tests of [`super::Download`]: range picking, budgets, slowness and the site's holdings.

use super::*;

fn n(i: u8) -> NodeId {
    NodeId([i; 32])
}

fn fetches(actions: &[Action]) -> Vec<Request> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Fetch(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn dl(groups: u64) -> Download {
    let p = Params {
        request_groups: 4,
        requests_per_source: 2,
        inflight_min_groups: 8,
        ..Params::default()
    };
    Download::new(ContentId([1; 32]), groups * GROUP_BYTES, Bitfield::new(0), p)
}

#[test]
fn sources_that_hold_nothing_are_asked_ever_less_often() {
    let mut d = dl(20);
    d.add_source(n(1), true);
    // (time of the question, time the next one is due) for a member that keeps saying
    // "nothing": the wait doubles from four refreshes up to the cap, a minute (the payload
    // reaches a site through its elected fetcher, which is asked more often: below).
    let mut t = Millis(0);
    let mut waits = Vec::new();
    for _ in 0..7 {
        assert_eq!(d.poll_asks(t), vec![Action::AskHave(n(1))], "asked at {t:?}");
        d.on_have(&n(1), Availability::Nothing);
        let next = d.next_ask().expect("asked again");
        waits.push(next.since(t));
        assert!(d.poll_asks(Millis(next.0 - 1)).is_empty());
        t = next;
    }
    assert_eq!(waits, vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000]);
    // It starts receiving: asked every refresh again.
    assert_eq!(d.poll_asks(t), vec![Action::AskHave(n(1))]);
    let mut part = Bitfield::new(20);
    part.set(0);
    d.on_have(&n(1), Availability::Partial(part));
    assert_eq!(d.next_ask(), Some(t.plus(250)));
    // Holding it all: never asked again.
    d.poll_asks(t.plus(250));
    d.on_have(&n(1), Availability::Complete);
    assert_eq!(d.next_ask(), None);
}

#[test]
fn the_sites_elected_fetcher_is_asked_again_after_one_refresh_then_less_often() {
    let mut d = dl(20);
    d.add_source(n(1), true);
    d.set_lead(Some(n(1)));
    assert!(d.sources()[&n(1)].is_lead());
    // It says "nothing" (its own download has not begun): asked again every refresh through
    // the first second, then as any member that holds nothing (see above).
    let mut t = Millis(0);
    let mut waits = Vec::new();
    for _ in 0..9 {
        assert_eq!(d.poll_asks(t), vec![Action::AskHave(n(1))], "at {t:?}");
        d.on_have(&n(1), Availability::Nothing);
        let next = d.next_ask().expect("asked again");
        waits.push(next.since(t));
        t = next;
    }
    // Asked at 0.25, 0.5, 0.75, 1, 3, 7, 15 s…: the times any other member is asked, and more,
    // and then every 10 s where any other member waits up to a minute.
    assert_eq!(waits, vec![250, 250, 250, 250, 2_000, 4_000, 8_000, 10_000, 10_000]);
    // Once it receives, every refresh.
    assert_eq!(d.poll_asks(t), vec![Action::AskHave(n(1))]);
    let mut part = Bitfield::new(20);
    part.set(0);
    d.on_have(&n(1), Availability::Partial(part));
    assert_eq!(d.next_ask(), Some(t.plus(250)));
    // The election moves (the elected member left): the old one is an ordinary member again.
    d.add_source(n(2), true);
    d.set_lead(Some(n(2)));
    assert!(!d.sources()[&n(1)].is_lead());
    assert!(d.sources()[&n(2)].is_lead());
}

#[test]
fn while_the_payload_flows_sources_that_hold_nothing_are_asked_every_second() {
    let mut d = dl(20);
    d.add_source(n(1), true);
    d.add_source(n(2), true);
    let mut t = Millis(0);
    assert_eq!(d.poll_asks(t).len(), 2);
    let mut part = Bitfield::new(20);
    part.set(3);
    d.on_have(&n(1), Availability::Partial(part));
    for _ in 0..5 {
        d.on_have(&n(2), Availability::Nothing);
        // n(2) may get parts from n(1) any moment: it is asked again after four refreshes.
        t = t.plus(1_000);
        assert!(d.poll_asks(t).contains(&Action::AskHave(n(2))), "at {t:?}");
    }
}

#[test]
fn splits_ranges_over_sources_and_completes() {
    let mut d = dl(20);
    d.set_role(Role::Wan);
    d.add_source(n(1), true);
    d.add_source(n(2), true);
    let a = d.poll(Millis(0));
    assert_eq!(a, vec![Action::AskHave(n(1)), Action::AskHave(n(2))]);
    d.on_have(&n(1), Availability::Complete);
    d.on_have(&n(2), Availability::Complete);
    let reqs = fetches(&d.poll(Millis(1)));
    assert_eq!(reqs.len(), 4);
    let mut firsts: Vec<u64> = reqs.iter().map(|r| r.first).collect();
    firsts.sort();
    assert_eq!(firsts, vec![0, 4, 8, 12]);
    assert_eq!(reqs.iter().filter(|r| r.source == n(1)).count(), 2);
    for _ in 0..10 {
        for r in fetches(&d.poll(Millis(2))).into_iter().chain(reqs.clone()) {
            if d.requests().any(|x| x.id == r.id) {
                for g in r.first..r.first + r.count {
                    d.on_group(r.id, g);
                }
                d.on_done(r.id);
            }
        }
    }
    assert!(d.is_complete());
    assert_eq!(d.have_bytes(), 20 * GROUP_BYTES);
    assert!(d.poll(Millis(3)).is_empty());
}

#[test]
fn the_wan_gives_only_what_the_site_lacks() {
    let mut d = dl(256);
    d.set_role(Role::Wan);
    d.add_source(n(1), true);
    d.add_source(n(2), false);
    d.poll(Millis(0));
    // A site member holds the first half; the other site holds everything.
    let mut half = Bitfield::new(256);
    for g in 0..128 {
        half.set(g);
    }
    d.on_have(&n(1), Availability::Partial(half));
    d.on_have(&n(2), Availability::Complete);
    for r in fetches(&d.poll(Millis(1))) {
        let span = r.first..r.first + r.count;
        if r.source == n(2) {
            assert!(span.start >= 128, "the WAN was asked for {span:?}, which the site holds");
        } else {
            assert!(span.end <= 128);
        }
    }
    // A site member with everything: nothing at all crosses the WAN.
    d.on_have(&n(1), Availability::Complete);
    let mut d2 = dl(256);
    d2.set_role(Role::Wan);
    d2.add_source(n(1), true);
    d2.add_source(n(2), false);
    d2.poll(Millis(0));
    d2.on_have(&n(1), Availability::Complete);
    d2.on_have(&n(2), Availability::Complete);
    let rs = fetches(&d2.poll(Millis(1)));
    assert!(!rs.is_empty() && rs.iter().all(|r| r.source == n(1)));
}

#[test]
fn a_lan_node_never_asks_another_site() {
    let mut d = dl(8);
    d.add_source(n(2), false);
    assert!(d.poll(Millis(0)).is_empty());
    d.add_source(n(1), true);
    assert_eq!(d.poll(Millis(0)), vec![Action::AskHave(n(1))]);
    // Failover: elected now.
    d.set_role(Role::Wan);
    assert_eq!(d.poll(Millis(0)), vec![Action::AskHave(n(2))]);
}

#[test]
fn faults_ban_and_release_ranges() {
    let mut d = dl(8);
    d.add_source(n(1), true);
    d.add_source(n(2), true);
    d.poll(Millis(0));
    d.on_have(&n(1), Availability::Complete);
    let reqs = fetches(&d.poll(Millis(0)));
    assert!(reqs.iter().all(|r| r.source == n(1)));
    let cancelled = d.on_fault(&n(1), Fault::Corrupt);
    assert_eq!(cancelled.len(), reqs.len());
    d.on_have(&n(2), Availability::Complete);
    let again = fetches(&d.poll(Millis(1)));
    assert!(again.iter().all(|r| r.source == n(2)));
    assert_eq!(again[0].first, 0);
    // A banned source is never asked again.
    assert!(d.poll(Millis(10_000)).iter().all(|a| !matches!(a, Action::AskHave(x) if *x == n(1))));
}

#[test]
fn slow_sources_are_dropped_after_the_grace_period_only_when_another_is_faster() {
    let mut d = dl(64);
    d.add_source(n(1), true);
    d.add_source(n(2), true);
    d.poll(Millis(0));
    d.on_have(&n(1), Availability::Complete);
    d.on_have(&n(2), Availability::Complete);
    let r = fetches(&d.poll(Millis(0)));
    assert!(d.check(Millis(500)).is_empty());
    // n2 delivers everything it was asked for within a second; n1 one group in six.
    for q in r.iter().filter(|q| q.source == n(2)) {
        for g in q.first..q.first + q.count {
            d.on_group(q.id, g);
        }
    }
    assert!(d.check(Millis(1_000)).is_empty(), "nobody is judged before the grace period");
    assert!(d.sources()[&n(2)].rate_bytes_per_s >= 100_000);
    for q in r.iter().filter(|q| q.source == n(2)) {
        d.on_done(q.id);
    }
    let slow1 = r.iter().find(|q| q.source == n(1)).unwrap();
    d.on_group(slow1.id, slow1.first);
    let slow = d.check(Millis(6_000));
    assert_eq!(slow.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![n(1)]);
    assert_eq!(slow[0].1.len(), 2, "its two ranges are cancelled");
    assert_eq!(d.sources()[&n(1)].banned, Some(Fault::Slow));
    assert_eq!(d.sources()[&n(2)].banned, None);

    // Alone, the same slow source is kept: a fixed floor never condemns the only path.
    let mut d = dl(8);
    d.add_source(n(1), true);
    d.poll(Millis(0));
    d.on_have(&n(1), Availability::Complete);
    let r = fetches(&d.poll(Millis(0)));
    assert!(d.check(Millis(1_000)).is_empty());
    d.on_group(r[0].id, r[0].first);
    assert!(d.check(Millis(6_000)).is_empty());
    assert!(d.check(Millis(60_000)).is_empty());
    assert_eq!(d.sources()[&n(1)].banned, None);
}

#[test]
fn inflight_follows_the_measured_rate() {
    let p = Params {
        request_groups: 256,
        requests_per_source: 4,
        inflight_min_groups: 16,
        ..Params::default()
    };
    let mut d = Download::new(ContentId([1; 32]), 8192 * GROUP_BYTES, Bitfield::new(0), p);
    d.add_source(n(1), false);
    d.set_role(Role::Wan);
    d.poll(Millis(0));
    d.on_have(&n(1), Availability::Complete);
    // Before any rate is measured: the minimum in flight, in two ranges.
    let r = fetches(&d.poll(Millis(0)));
    assert_eq!(r.iter().map(|q| q.count).sum::<u64>(), 16);
    // 64 KiB/s measured (a few Mbit/s shared by many flows): a second of it in flight.
    let q = &r[0];
    for g in q.first..q.first + 4 {
        d.on_group(q.id, g);
    }
    d.check(Millis(1_000));
    assert_eq!(d.sources()[&n(1)].rate_bytes_per_s, 4 * GROUP_BYTES);
    d.poll(Millis(1_000));
    assert_eq!(d.sources()[&n(1)].inflight_groups(), 16, "the minimum holds");
    // Faster: 512 KiB/s measured over 250 ms, and the budget follows (a second of it).
    for q in d.requests().cloned().collect::<Vec<_>>() {
        for g in q.first..q.first + q.count {
            d.on_group(q.id, g);
        }
        d.on_done(q.id);
    }
    d.poll(Millis(1_000));
    let q = d.requests().next().cloned().unwrap();
    for g in q.first..q.first + q.count {
        d.on_group(q.id, g);
    }
    d.check(Millis(1_250));
    assert_eq!(d.sources()[&n(1)].rate_bytes_per_s, 32 * GROUP_BYTES);
    d.poll(Millis(1_250));
    assert_eq!(d.sources()[&n(1)].inflight_groups(), 32);
}

#[test]
fn a_start_offset_wraps_around() {
    let mut d = dl(200);
    d.set_start(130);
    d.add_source(n(1), true);
    d.poll(Millis(0));
    d.on_have(&n(1), Availability::Complete);
    let firsts: Vec<u64> = fetches(&d.poll(Millis(0))).iter().map(|r| r.first).collect();
    assert_eq!(firsts, vec![128, 132]);
    // Everything from the start word to the end taken: the pick wraps to group 0.
    let mut held = Bitfield::new(200);
    for g in 128..200 {
        held.set(g);
    }
    let mut d = Download::new(ContentId([1; 32]), 200 * GROUP_BYTES, held, d.params().clone());
    d.set_start(130);
    d.add_source(n(1), true);
    d.poll(Millis(0));
    d.on_have(&n(1), Availability::Complete);
    let firsts: Vec<u64> = fetches(&d.poll(Millis(0))).iter().map(|r| r.first).collect();
    assert_eq!(firsts, vec![0, 4]);
}

#[test]
fn losing_the_wan_role_cancels_remote_ranges() {
    let mut d = dl(64);
    d.set_role(Role::Wan);
    d.add_source(n(1), true);
    d.add_source(n(2), false);
    d.poll(Millis(0));
    d.on_have(&n(1), Availability::Nothing);
    d.on_have(&n(2), Availability::Complete);
    let r = fetches(&d.poll(Millis(0)));
    assert!(!r.is_empty() && r.iter().all(|q| q.source == n(2)));
    let mut cancelled = d.set_role(Role::Lan);
    cancelled.sort();
    let mut ids: Vec<u64> = r.iter().map(|q| q.id).collect();
    ids.sort();
    assert_eq!(cancelled, ids);
    assert_eq!(d.requests().count(), 0);
    assert!(fetches(&d.poll(Millis(1))).is_empty());
}

#[test]
fn partial_sources_are_followed_and_liars_caught() {
    let mut d = dl(8);
    d.add_source(n(1), true);
    d.poll(Millis(0));
    let mut b = Bitfield::new(8);
    b.set(0);
    b.set(1);
    d.on_have(&n(1), Availability::Partial(b.clone()));
    let r = fetches(&d.poll(Millis(0)));
    assert_eq!((r[0].first, r[0].count), (0, 2));
    // Asked again after the refresh interval, not before.
    assert!(d.poll(Millis(100)).is_empty());
    assert_eq!(d.poll(Millis(300)), vec![Action::AskHave(n(1))]);
    d.on_have(&n(1), Availability::Complete);
    assert_eq!(d.on_have(&n(1), Availability::Nothing), Some(Fault::Lied));
    // A bitfield of the wrong length is a protocol fault.
    let mut d = dl(8);
    d.add_source(n(3), true);
    assert_eq!(d.on_have(&n(3), Availability::Partial(Bitfield::new(9))), Some(Fault::Protocol));
}

#[test]
fn resumes_only_missing_groups() {
    let mut have = Bitfield::new(8);
    for g in 0..6 {
        have.set(g);
    }
    let p = Params { request_groups: 64, ..Params::default() };
    let mut d = Download::new(ContentId([1; 32]), 8 * GROUP_BYTES - 100, have, p);
    d.add_source(n(1), true);
    d.poll(Millis(0));
    d.on_have(&n(1), Availability::Complete);
    let r = fetches(&d.poll(Millis(0)));
    assert_eq!((r[0].first, r[0].count), (6, 2));
    d.on_group(r[0].id, 6);
    d.on_group(r[0].id, 7);
    assert_eq!(d.have_bytes(), 8 * GROUP_BYTES - 100);
}

#[test]
fn picks_the_lowest_needed_group_a_scattered_partial_source_holds() {
    let mut d = dl(300);
    d.add_source(n(1), true);
    d.poll(Millis(0));
    let mut b = Bitfield::new(300);
    for g in [70, 71, 72, 200, 299] {
        b.set(g);
    }
    d.on_have(&n(1), Availability::Partial(b));
    let r = fetches(&d.poll_fetches(Millis(0)));
    let got: Vec<(u64, u64)> = r.iter().map(|r| (r.first, r.count)).collect();
    assert_eq!(got, vec![(70, 3), (200, 1)]);
    // A source that holds nothing gets no range, however often it is polled.
    d.add_source(n(2), true);
    d.on_have(&n(2), Availability::Nothing);
    assert!(fetches(&d.poll_fetches(Millis(1))).iter().all(|r| r.source == n(1)));
}

#[test]
fn a_complete_source_gives_other_sites_share_only_once_partial_sources_have_nothing_in_flight() {
    // 64 groups. n(1) in another site holds all (the origin's site); n(2), in a third, holds
    // the second half. This node's share of what the complete source sends: groups 0..16.
    let mut d = dl(64);
    d.set_role(Role::Wan);
    d.add_source(n(1), false);
    d.add_source(n(2), false);
    d.poll(Millis(0));
    d.on_have(&n(1), Availability::Complete);
    let mut half = Bitfield::new(64);
    for g in 32..64 {
        half.set(g);
    }
    d.on_have(&n(2), Availability::Partial(half));
    d.set_share(Some(vec![0xffff]));
    let mut from: BTreeMap<NodeId, Vec<u64>> = BTreeMap::new();
    let mut held_back: Vec<Request> = Vec::new();
    // Only the complete source's ranges arrive; n(2)'s stay in flight.
    for t in 1..50 {
        for r in fetches(&d.poll(Millis(t))) {
            from.entry(r.source).or_default().extend(r.first..r.first + r.count);
            if r.source == n(2) {
                held_back.push(r);
                continue;
            }
            for g in r.first..r.first + r.count {
                assert!(d.on_group(r.id, g), "group {g} arrived twice");
            }
            d.on_done(r.id);
        }
    }
    // Its share came from the complete source, and nothing more while n(2) sends.
    assert_eq!(from[&n(1)], (0..16).collect::<Vec<u64>>());
    assert!(!held_back.is_empty());
    assert!(held_back.iter().all(|r| r.first >= 32));
    // n(2)'s ranges arrive, and it is asked for the rest of what it holds; once it has nothing
    // in flight, the other sites' share (16..32) comes from the complete source after all:
    // a site that owns a share but is not fetching never stalls this node.
    for t in 50..200 {
        for r in std::mem::take(&mut held_back) {
            for g in r.first..r.first + r.count {
                assert!(d.on_group(r.id, g), "group {g} arrived twice");
            }
            d.on_done(r.id);
        }
        for r in fetches(&d.poll(Millis(t))) {
            from.entry(r.source).or_default().extend(r.first..r.first + r.count);
            held_back.push(r);
        }
    }
    assert!(d.is_complete());
    let mut one = from[&n(1)].clone();
    one.sort();
    assert_eq!(one, (0..32).collect::<Vec<u64>>(), "each group once, from the complete source");
    let mut two = from[&n(2)].clone();
    two.sort();
    assert_eq!(two, (32..64).collect::<Vec<u64>>());
}
