//! Quiet hours: when a machine is least used, learnt from its own activity.
//!
//! Each node keeps an [`ActivityHistogram`]: per hour of the week in its own time zone, a
//! decayed average of how busy it was (logged-in sessions, CPU load). The histogram never
//! leaves the machine; only [`QuietHours`] does, in the node's signed record: for each day, the
//! quietest block of [`QUIET_BLOCK_HOURS`] consecutive hours. A rollout created with
//! `--window auto` installs on each node inside its own quiet hours (see
//! [`install_window_open`]); a node with less than a week of history falls back to the
//! rollout's explicit windows, or, with none, to [`FALLBACK_WINDOW`] nights.

use super::policy::Window;
use super::target::{window_open, Facts};
use crate::catalog::RolloutEntry;
use crate::ids::Millis;
use serde::{Deserialize, Serialize};

/// Hours in a week.
pub const HOURS_PER_WEEK: usize = 168;
/// Length of each day's quiet block.
pub const QUIET_BLOCK_HOURS: usize = 4;
/// Weight of one new sample in its hour's average: an hour's level moves halfway to a new
/// pattern in about 35 samples (with a sample every 5 minutes, three weeks of that hour).
pub const DECAY: f32 = 0.02;
/// Where `--window auto` installs on a node with no quiet hours yet and no explicit window:
/// every night 01:00–05:00 local.
pub const FALLBACK_WINDOW: Window = Window { days: 0x7f, start_minute: 60, duration_minutes: 240 };
/// Ties between equally quiet blocks go to the one starting nearest this hour (01:00).
const PREFERRED_START_HOUR: usize = 1;

/// A machine's activity per hour of the week (hour 0 = Monday 00:00–01:00 local).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityHistogram {
    /// Decayed average activity, 0 (idle) to 1 (busy).
    pub level: Vec<f32>,
    /// Samples taken in each hour (saturating).
    pub samples: Vec<u32>,
}

impl Default for ActivityHistogram {
    fn default() -> Self {
        ActivityHistogram { level: vec![0.0; HOURS_PER_WEEK], samples: vec![0; HOURS_PER_WEEK] }
    }
}

impl ActivityHistogram {
    /// Whether it has the right shape and values (a file read back may not).
    pub fn valid(&self) -> bool {
        self.level.len() == HOURS_PER_WEEK
            && self.samples.len() == HOURS_PER_WEEK
            && self.level.iter().all(|l| l.is_finite() && (0.0..=1.0).contains(l))
    }

    /// Adds one sample of `activity` (clamped to 0..=1) taken in `hour` of the week.
    pub fn record(&mut self, hour: usize, activity: f32) {
        let (Some(level), Some(n)) = (self.level.get_mut(hour), self.samples.get_mut(hour)) else {
            return;
        };
        let a = if activity.is_finite() { activity.clamp(0.0, 1.0) } else { 0.0 };
        // The first sample of an hour sets it; later ones decay into it.
        *level = if *n == 0 { a } else { *level * (1.0 - DECAY) + a * DECAY };
        *n = n.saturating_add(1);
    }

    /// The quiet hours, once every hour of the week has been sampled at least once.
    pub fn quiet_hours(&self) -> Option<QuietHours> {
        if !self.valid() || self.samples.contains(&0) {
            return None;
        }
        Some(QuietHours::from_levels(&self.level))
    }
}

/// The hours of the week a node is quiet, as its signed record carries them: bit `h` of the
/// mask is hour `h` of the week (Monday 00:00 local = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuietHours {
    /// One bit per hour of the week.
    pub mask: [u8; HOURS_PER_WEEK / 8],
}

impl QuietHours {
    /// For each day, the block of [`QUIET_BLOCK_HOURS`] hours starting that day with the least
    /// activity (a block may run into the next day); ties go to the start nearest 01:00.
    pub fn from_levels(levels: &[f32]) -> QuietHours {
        let at = |h: usize| levels.get(h % HOURS_PER_WEEK).copied().unwrap_or(0.0);
        let mut q = QuietHours { mask: [0; HOURS_PER_WEEK / 8] };
        for day in 0..7 {
            let best = (0..24)
                .min_by(|a, b| {
                    let score = |s: usize| -> f32 {
                        (0..QUIET_BLOCK_HOURS).map(|i| at(day * 24 + s + i)).sum()
                    };
                    let dist = |s: usize| {
                        s.abs_diff(PREFERRED_START_HOUR).min(24 - s.abs_diff(PREFERRED_START_HOUR))
                    };
                    score(*a).total_cmp(&score(*b)).then(dist(*a).cmp(&dist(*b))).then(a.cmp(b))
                })
                .unwrap_or(PREFERRED_START_HOUR);
            for i in 0..QUIET_BLOCK_HOURS {
                q.set((day * 24 + best + i) % HOURS_PER_WEEK);
            }
        }
        q
    }

    fn set(&mut self, hour: usize) {
        self.mask[hour / 8] |= 1 << (hour % 8);
    }

    /// Whether hour `hour` of the week is quiet.
    pub fn contains(&self, hour: usize) -> bool {
        hour < HOURS_PER_WEEK && self.mask[hour / 8] & (1 << (hour % 8)) != 0
    }

    /// The quiet hours as text: `mon 01-05, tue 01-05, …`.
    pub fn describe(&self) -> String {
        const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let mut runs = Vec::new();
        let mut h = 0;
        while h < HOURS_PER_WEEK {
            if !self.contains(h) {
                h += 1;
                continue;
            }
            let start = h;
            while h < HOURS_PER_WEEK && self.contains(h) {
                h += 1;
            }
            let end = (start % 24 + (h - start)) % 24;
            runs.push(format!("{} {:02}-{:02}", DAYS[start / 24], start % 24, end));
        }
        runs.join(", ")
    }
}

/// Hour of the week of `now` in `tz` (Monday 00:00 = 0).
pub fn hour_of_week(now: Millis, tz: &jiff::tz::TimeZone) -> Option<usize> {
    let ts = jiff::Timestamp::from_millisecond(now.0.min(i64::MAX as u64) as i64).ok()?;
    let local = ts.to_zoned(tz.clone());
    Some(local.weekday().to_monday_zero_offset() as usize * 24 + local.hour() as usize)
}

/// Whether a node with `facts` may start an install of `rollout` at `now` as far as windows
/// go (the deadline overrides them; see the engine): inside one of its explicit windows (any
/// time when it has none) and, with `auto_window`, inside the node's quiet hours, or with no
/// quiet hours known yet, inside its explicit windows, or [`FALLBACK_WINDOW`] without any.
pub fn install_window_open(rollout: &RolloutEntry, now: Millis, facts: &Facts) -> bool {
    let explicit = window_open(&rollout.windows, now, &facts.tz);
    if !rollout.auto_window {
        return explicit;
    }
    match &facts.quiet {
        Some(q) => explicit && hour_of_week(now, &facts.tz).is_some_and(|h| q.contains(h)),
        None if !rollout.windows.is_empty() => explicit,
        None => window_open(&[FALLBACK_WINDOW], now, &facts.tz),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A histogram filled from `busy(day, hour)` for `weeks` weeks, a sample every 5 minutes.
    fn history(weeks: usize, busy: impl Fn(usize, usize) -> f32) -> ActivityHistogram {
        let mut h = ActivityHistogram::default();
        for _ in 0..weeks {
            for hour in 0..HOURS_PER_WEEK {
                for _ in 0..12 {
                    h.record(hour, busy(hour / 24, hour % 24));
                }
            }
        }
        h
    }

    fn blocks(q: &QuietHours) -> Vec<(usize, usize)> {
        (0..HOURS_PER_WEEK).filter(|h| q.contains(*h)).map(|h| (h / 24, h % 24)).collect()
    }

    #[test]
    fn an_office_machine_is_quiet_at_night() {
        // Busy 9–18 on weekdays, idle otherwise: the quietest block nearest 01:00 is 01–05.
        let h = history(3, |d, h| if d < 5 && (9..18).contains(&h) { 0.9 } else { 0.05 });
        let q = h.quiet_hours().expect("three weeks is enough history");
        for day in 0..7 {
            for hour in 1..5 {
                assert!(q.contains(day * 24 + hour), "day {day} hour {hour}: {}", q.describe());
            }
            assert!(!q.contains(day * 24 + 10));
        }
        assert_eq!(blocks(&q).len(), 28);
        assert!(q.describe().starts_with("mon 01-05"), "{}", q.describe());
    }

    #[test]
    fn a_night_shift_machine_is_quiet_in_the_morning() {
        // Busy 22:00–06:00 every day: the quiet block is 06–10, right after the shift.
        let h = history(2, |_, h| if !(6..22).contains(&h) { 0.8 } else { 0.1 });
        let q = h.quiet_hours().unwrap();
        for day in 0..7 {
            for hour in 6..10 {
                assert!(q.contains(day * 24 + hour), "{}", q.describe());
            }
            assert!(!q.contains(day * 24 + 23) && !q.contains(day * 24 + 2));
        }
    }

    #[test]
    fn an_always_busy_server_gets_the_default_night_and_a_new_pattern_takes_over_in_weeks() {
        let h = history(2, |_, _| 0.9);
        let q = h.quiet_hours().unwrap();
        assert!(q.contains(1) && q.contains(4) && !q.contains(5) && !q.contains(0));
        // The server becomes idle at 13–17 every day: three weeks later that is its block.
        let mut h = h;
        for _ in 0..3 {
            for hour in 0..HOURS_PER_WEEK {
                for _ in 0..12 {
                    h.record(hour, if (13..17).contains(&(hour % 24)) { 0.0 } else { 0.9 });
                }
            }
        }
        let q = h.quiet_hours().unwrap();
        assert!(q.contains(13) && q.contains(16) && !q.contains(1), "{}", q.describe());
    }

    #[test]
    fn too_little_history_gives_no_quiet_hours_and_bad_values_are_clamped() {
        let mut h = ActivityHistogram::default();
        for hour in 0..HOURS_PER_WEEK - 1 {
            h.record(hour, 0.5);
        }
        assert_eq!(h.quiet_hours(), None, "one hour of the week never sampled");
        h.record(HOURS_PER_WEEK - 1, f32::NAN);
        h.record(HOURS_PER_WEEK, 1.0); // out of range: ignored
        h.record(3, 7.0);
        assert!(h.valid());
        assert!(h.quiet_hours().is_some());
        let bad = ActivityHistogram {
            level: vec![2.0; HOURS_PER_WEEK],
            samples: vec![1; HOURS_PER_WEEK],
        };
        assert!(!bad.valid());
        assert_eq!(bad.quiet_hours(), None);
    }

    #[test]
    fn auto_windows_follow_each_nodes_quiet_hours_intersected_with_explicit_ones() {
        let quiet =
            history(1, |d, h| if d < 5 && (9..18).contains(&h) { 0.9 } else { 0.0 }).quiet_hours();
        let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
        let mut rollout = RolloutEntry {
            id: crate::ids::RolloutId([1; 32]),
            content_id: crate::ids::ContentId([2; 32]),
            target: Default::default(),
            rings: Vec::new(),
            windows: Vec::new(),
            deadline: None,
            max_concurrent_per_site: 1,
            max_targets: u32::MAX,
            rollback_on_halt: true,
            recheck_ms: 1000,
            created_at: Millis(0),
            auto_window: true,
        };
        // Monday 2027-01-18 17:30 UTC = Tuesday 02:30 in Tokyo (quiet), 17:30 in UTC (busy).
        let t: Millis = Millis(
            "2027-01-18T17:30:00Z".parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64,
        );
        let facts =
            |tz: &jiff::tz::TimeZone, quiet| Facts { tz: tz.clone(), quiet, ..Facts::default() };
        assert!(install_window_open(&rollout, t, &facts(&tokyo, quiet)));
        assert!(!install_window_open(&rollout, t, &facts(&jiff::tz::TimeZone::UTC, quiet)));
        // No history: the fallback night (01–05 local): open in Tokyo (02:30), not in UTC.
        assert!(install_window_open(&rollout, t, &facts(&tokyo, None)));
        assert!(!install_window_open(&rollout, t, &facts(&jiff::tz::TimeZone::UTC, None)));
        // Intersected with an explicit window that excludes Tuesday: closed even when quiet.
        rollout.windows = vec![crate::rollout::parse_window("mon 00:00-23:59").unwrap()];
        assert!(!install_window_open(&rollout, t, &facts(&tokyo, quiet)));
        // No history: the explicit windows alone (Monday in UTC: open).
        assert!(install_window_open(&rollout, t, &facts(&jiff::tz::TimeZone::UTC, None)));
        // Without auto, quiet hours change nothing.
        rollout.auto_window = false;
        rollout.windows.clear();
        assert!(install_window_open(&rollout, t, &facts(&jiff::tz::TimeZone::UTC, quiet)));
    }
}
