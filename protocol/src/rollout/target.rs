//! Who a rollout targets, which ring a node is in, and whether a maintenance window is open:
//! pure functions every node evaluates alone and identically.

use super::policy::{PackagePredicate, RolloutEntry, Selector, VersionOp, Window};
use crate::ids::{Millis, NodeId, RolloutId, SiteId};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// What a node knows about itself that selectors and windows read. Labels and site come from
/// its admission certificate (admin-signed), the rest from its own inventory and configuration.
#[derive(Clone, Debug)]
pub struct Facts {
    /// Operating system name.
    pub os: String,
    /// Installed packages and their versions.
    pub packages: BTreeMap<String, String>,
    /// The node's own time zone, for windows.
    pub tz: jiff::tz::TimeZone,
    /// The node's quiet hours, for `--window auto` (None until it has a week of history).
    pub quiet: Option<super::activity::QuietHours>,
}

impl Default for Facts {
    fn default() -> Self {
        Facts {
            os: String::new(),
            packages: BTreeMap::new(),
            tz: jiff::tz::TimeZone::UTC,
            quiet: None,
        }
    }
}

/// A node's ring value not in any ring (not targeted).
pub const NO_RING: u8 = u8::MAX;

/// The node's position in `[0, 10000)` basis points for this rollout: BLAKE3 of the rollout id
/// and node id, so every node computes every other node's ring with no coordination, and rings
/// of different rollouts are independent draws.
pub fn percentile_bp(rollout: &RolloutId, node: &NodeId) -> u32 {
    let h = crate::crypto::hash_parts(&[b"patchmesh/v1/ring", &rollout.0, &node.0]);
    (u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8])) % 10_000) as u32
}

fn has_labels(node: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| node.get(k) == Some(v))
}

/// The ring of a node (by its id and certificate labels), or `None` if no ring reaches it.
/// Label rings claim their nodes first; the rest fall into the first ring whose cumulative
/// percent covers their percentile.
pub fn ring_of(
    rollout: &RolloutEntry,
    node: &NodeId,
    labels: &BTreeMap<String, String>,
) -> Option<u8> {
    if let Some(i) =
        rollout.rings.iter().position(|r| !r.labels.is_empty() && has_labels(labels, &r.labels))
    {
        return Some(i as u8);
    }
    let p = percentile_bp(&rollout.id, node);
    rollout.rings.iter().position(|r| p < u32::from(r.percent) * 100).map(|i| i as u8)
}

/// Whether the selector picks this node. Only the node itself can evaluate OS and package
/// clauses (its inventory); labels and site come from its certificate.
pub fn selects(
    sel: &Selector,
    site: &SiteId,
    labels: &BTreeMap<String, String>,
    facts: &Facts,
) -> bool {
    has_labels(labels, &sel.labels)
        && (sel.sites.is_empty() || sel.sites.contains(site))
        && sel.os.as_deref().is_none_or(|os| facts.os.contains(os))
        && sel.packages.iter().all(|p| predicate_holds(p, &facts.packages))
}

fn predicate_holds(p: &PackagePredicate, packages: &BTreeMap<String, String>) -> bool {
    let installed = packages.get(&p.name);
    match (p.op, installed) {
        (VersionOp::Absent, v) => v.is_none(),
        (VersionOp::Installed, v) => v.is_some(),
        (_, None) => false,
        (op, Some(v)) => {
            let ord = compare_versions(v, &p.version);
            match op {
                VersionOp::Lt => ord == Ordering::Less,
                VersionOp::Le => ord != Ordering::Greater,
                VersionOp::Eq => ord == Ordering::Equal,
                VersionOp::Ge => ord != Ordering::Less,
                VersionOp::Gt => ord == Ordering::Greater,
                VersionOp::Installed | VersionOp::Absent => unreachable!("handled above"),
            }
        }
    }
}

/// Compares two package versions the way dpkg does: `[epoch:]upstream[-revision]`, where runs
/// of digits compare as numbers and `~` sorts before everything, even the end of the string.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) && !e.is_empty() => {
                (e.parse().unwrap_or(u64::MAX), r)
            }
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u, r),
            None => (epoch, rest, ""),
        }
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| part_cmp(ua, ub)).then_with(|| part_cmp(ra, rb))
}

/// Whether `v` is a version dpkg accepts: `[epoch:]upstream[-revision]`, the epoch digits, the
/// upstream part starting with a digit and made of alphanumerics and `.+~-:`, the revision of
/// alphanumerics and `.+~`.
pub fn valid_version(v: &str) -> bool {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) => (Some(e), r),
        None => (None, v),
    };
    if epoch.is_some_and(|e| e.is_empty() || !e.bytes().all(|c| c.is_ascii_digit())) {
        return false;
    }
    let (upstream, revision) = match rest.rsplit_once('-') {
        Some((u, r)) => (u, Some(r)),
        None => (rest, None),
    };
    let upstream_ok = upstream.bytes().next().is_some_and(|c| c.is_ascii_digit())
        && upstream.bytes().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, b'.' | b'+' | b'~')
                || (c == b'-' && revision.is_some())
                || (c == b':' && epoch.is_some())
        });
    let revision_ok = revision.is_none_or(|r| {
        !r.is_empty()
            && r.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'~'))
    });
    upstream_ok && revision_ok
}

fn char_order(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn part_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix, character by character.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ca = a.get(i).filter(|c| !c.is_ascii_digit()).copied();
            let cb = b.get(j).filter(|c| !c.is_ascii_digit()).copied();
            let (oa, ob) = (char_order(ca), char_order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            i += usize::from(ca.is_some());
            j += usize::from(cb.is_some());
        }
        // Digit run, as a number (leading zeros ignored, any length).
        let si = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sj = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let da = trim_zeros(&a[si..i]);
        let db = trim_zeros(&b[sj..j]);
        let ord = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let start = d.iter().position(|c| *c != b'0').unwrap_or(d.len());
    &d[start..]
}

/// Whether any window is open at `now` in time zone `tz`. A window that runs past midnight is
/// open early on the next day too. No windows means always open.
pub fn window_open(windows: &[Window], now: Millis, tz: &jiff::tz::TimeZone) -> bool {
    if windows.is_empty() {
        return true;
    }
    let Ok(ts) = jiff::Timestamp::from_millisecond(now.0.min(i64::MAX as u64) as i64) else {
        return false;
    };
    let local = ts.to_zoned(tz.clone());
    let today = local.weekday().to_monday_zero_offset() as u32;
    let minute = u32::from(local.hour() as u8) * 60 + u32::from(local.minute() as u8);
    windows.iter().any(|w| {
        // Look back over the days a window may still be open from (up to a week).
        (0..=7u32).any(|back| {
            let day = (today + 7 - back % 7) % 7;
            if w.days & (1 << day) == 0 {
                return false;
            }
            let opened = u32::from(w.start_minute);
            let since_open = back * 24 * 60 + minute;
            since_open >= opened && since_open < opened + u32::from(w.duration_minutes)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::policy::{parse_window, Gate, RingSpec};

    #[test]
    fn dpkg_version_syntax() {
        for ok in [
            "1.0",
            "1:2.38.1-5+deb12u3",
            "3.0.15-1~deb12u1",
            "5.2.15-2+b7",
            "2.0-1~bpo12+1",
            "0",
            "1.2-3-4",
        ] {
            assert!(valid_version(ok), "{ok}");
        }
        for bad in ["", "a1.0", "1.0 ", "x:1.0", ":1.0", "1.0-", "1.0-a_b", "1:", "1.0$"] {
            assert!(!valid_version(bad), "{bad}");
        }
    }

    #[test]
    fn dpkg_version_order() {
        use Ordering::*;
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("3.0.2", "3.0.11", Less),
            ("1:1.0", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0-1", "1.0-2", Less),
            ("1.0a", "1.0", Greater),
            ("1.0a", "1.0+", Less),
            ("3.0.11-1~deb12u2", "3.0.11-1", Less),
            ("010", "10", Equal),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    fn rollout(rings: &[(u8, &[(&str, &str)])]) -> RolloutEntry {
        RolloutEntry {
            id: RolloutId([7; 32]),
            content_id: crate::ids::ContentId([1; 32]),
            target: Selector::default(),
            rings: rings
                .iter()
                .enumerate()
                .map(|(i, (p, l))| RingSpec {
                    name: format!("r{i}"),
                    percent: *p,
                    labels: l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    gate: Gate::default(),
                })
                .collect(),
            windows: vec![],
            deadline: None,
            max_concurrent_per_site: 1,
            max_targets: u32::MAX,
            rollback_on_halt: true,
            recheck_ms: 1000,
            created_at: Millis(0),
            auto_window: false,
        }
    }

    #[test]
    fn rings_by_percentile_and_label() {
        let r = rollout(&[(0, &[("ring", "canary")]), (10, &[]), (50, &[]), (100, &[])]);
        let mut counts = [0u32; 4];
        for i in 0..10_000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            counts[ring_of(&r, &NodeId(id), &BTreeMap::new()).unwrap() as usize] += 1;
        }
        assert_eq!(counts[0], 0, "label ring takes only labelled nodes");
        assert!((900..1100).contains(&counts[1]), "{counts:?}");
        assert!((3800..4200).contains(&counts[2]), "{counts:?}");
        assert!((4800..5200).contains(&counts[3]), "{counts:?}");
        let canary: BTreeMap<_, _> = [("ring".to_string(), "canary".to_string())].into();
        assert_eq!(ring_of(&r, &NodeId([3; 32]), &canary), Some(0));
        let partial = rollout(&[(10, &[])]);
        let outside = (0..1000u32)
            .filter(|i| ring_of(&partial, &NodeId([*i as u8; 32]), &BTreeMap::new()).is_none())
            .count();
        assert!(outside > 0, "nodes past the last ring's percent are not targeted");
    }

    #[test]
    fn selectors() {
        let facts = Facts {
            os: "Debian GNU/Linux 12".into(),
            packages: [("openssl".to_string(), "3.0.9-1".to_string())].into(),
            tz: jiff::tz::TimeZone::UTC,
            quiet: None,
        };
        let site = SiteId::from("a");
        let mut sel = Selector::default();
        assert!(selects(&sel, &site, &BTreeMap::new(), &facts));
        sel.packages.push(crate::rollout::policy::parse_predicate("openssl < 3.0.11").unwrap());
        assert!(selects(&sel, &site, &BTreeMap::new(), &facts));
        sel.os = Some("Ubuntu".into());
        assert!(!selects(&sel, &site, &BTreeMap::new(), &facts));
        sel.os = Some("Debian".into());
        sel.sites = vec![SiteId::from("b")];
        assert!(!selects(&sel, &site, &BTreeMap::new(), &facts));
        sel.sites.clear();
        sel.packages.push(crate::rollout::policy::parse_predicate("curl installed").unwrap());
        assert!(!selects(&sel, &site, &BTreeMap::new(), &facts));
    }

    #[test]
    fn windows_in_time_zones() {
        // 2026-11-23 (a Monday) 22:30 UTC.
        let ts = jiff::Timestamp::from_second(1_795_473_000).unwrap();
        assert_eq!(ts.to_zoned(jiff::tz::TimeZone::UTC).weekday(), jiff::civil::Weekday::Monday);
        let now = Millis(ts.as_millisecond() as u64);
        let w = [parse_window("mon-fri 22:00-04:00").unwrap()];
        assert!(window_open(&w, now, &jiff::tz::TimeZone::UTC));
        let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap(); // 07:30 Tuesday
        assert!(!window_open(&w, now, &tokyo));
        let ny = jiff::tz::TimeZone::get("America/New_York").unwrap(); // 17:30 Monday
        assert!(!window_open(&w, now, &ny));
        // Past midnight: Saturday 02:00 UTC is inside Friday's window.
        let sat = Millis(now.0 + (4 * 24 * 60 + 3 * 60 + 30) * 60_000);
        assert!(window_open(&w, sat, &jiff::tz::TimeZone::UTC));
        let sat_late = Millis(sat.0 + 3 * 3_600_000);
        assert!(!window_open(&w, sat_late, &jiff::tz::TimeZone::UTC));
        assert!(window_open(&[], now, &tokyo));
    }
}
