//! How busy this machine is, sampled every few minutes into the histogram its quiet hours come
//! from (`--window auto`; see [`patchmesh_protocol::rollout::activity`]).
//!
//! One sample is the share of the last minute the machine was in use: 1 while someone at it is
//! active, else the one-minute load average over the CPU count, capped at 1. Someone is active
//! when a logged-in session (a `USER_PROCESS` entry in utmp: console, SSH, a desktop) had
//! input within [`SESSION_IDLE_MS`]: as `w` does, a terminal's input time is its device's
//! access time, so an SSH session left open overnight stops counting once idle; a session with
//! no terminal device to read (a graphical seat such as `:0`) counts while it lasts. The
//! histogram stays in the data directory (`activity.json`, a few kilobytes); only the quiet
//! hours it gives go into the node's signed record.

use patchmesh_protocol::rollout::activity::ActivityHistogram;
use std::io::Read;
use std::path::Path;

/// Largest histogram file read (it is about 3 KiB).
const FILE_BYTES_MAX: u64 = 64 * 1024;
/// Largest utmp read (384-byte entries; a busy terminal server has a few hundred).
const UTMP_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Size of one glibc utmp entry on Linux.
const UTMP_ENTRY: usize = 384;
/// `ut_type` of a logged-in user's session.
const USER_PROCESS: i32 = 7;
/// Where `ut_line` (the session's terminal, e.g. `pts/0`) lies in an entry, and its size.
const UT_LINE: std::ops::Range<usize> = 8..40;
/// A session whose terminal has had no input for this long is not someone at the machine.
pub const SESSION_IDLE_MS: u64 = 15 * 60_000;

/// The histogram kept at `path`; a missing, oversized or damaged file starts a new one (and
/// says so), since history is only an optimisation of when to install.
pub fn load(path: &Path) -> ActivityHistogram {
    let read = || -> Result<ActivityHistogram, String> {
        let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        f.take(FILE_BYTES_MAX + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
        if buf.len() as u64 > FILE_BYTES_MAX {
            return Err(format!("over {FILE_BYTES_MAX} bytes"));
        }
        let h: ActivityHistogram = serde_json::from_slice(&buf).map_err(|e| e.to_string())?;
        if !h.valid() {
            return Err("values out of range".into());
        }
        Ok(h)
    };
    match read() {
        Ok(h) => h,
        Err(e) if path.exists() => {
            tracing::warn!(path = %path.display(), error = %e, "activity history unreadable; starting anew");
            ActivityHistogram::default()
        }
        Err(_) => ActivityHistogram::default(),
    }
}

/// Writes the histogram (atomically: a crash leaves the old file or the new one).
pub fn save(path: &Path, h: &ActivityHistogram) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(h).map_err(std::io::Error::other)?;
    crate::files::write_synced(path, &bytes)
}

/// The terminals (`ut_line`) of the logged-in user sessions in the utmp file at `path` (none
/// when it cannot be read); an empty string for a session that names none.
pub fn sessions(path: &Path) -> Vec<String> {
    let Ok(f) = std::fs::File::open(path) else { return Vec::new() };
    let mut buf = Vec::new();
    if f.take(UTMP_BYTES_MAX).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    buf.chunks_exact(UTMP_ENTRY)
        .filter(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]) == USER_PROCESS)
        .map(|e| {
            let line = &e[UT_LINE];
            let end = line.iter().position(|b| *b == 0).unwrap_or(line.len());
            String::from_utf8_lossy(&line[..end]).into_owned()
        })
        .collect()
}

/// How long the session on terminal `line` has had no input (its device's access time, under
/// `root`/dev); `None` when there is no such device to read (a graphical seat, a name that is
/// not a plain device path).
pub fn idle_ms(root: &Path, line: &str, now: std::time::SystemTime) -> Option<u64> {
    let plain = !line.is_empty()
        && !line.starts_with('/')
        && line.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
        && line.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'));
    if !plain {
        return None;
    }
    let accessed = std::fs::metadata(root.join("dev").join(line)).ok()?.accessed().ok()?;
    Some(now.duration_since(accessed).map_or(0, |d| d.as_millis() as u64))
}

/// The one-minute load average over the CPUs, capped at 1 (0 when unreadable).
pub fn load_share(loadavg: &Path, cpus: usize) -> f32 {
    let text = std::fs::read_to_string(loadavg).unwrap_or_default();
    let one: f32 = text.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    if !one.is_finite() {
        return 0.0;
    }
    (one / cpus.max(1) as f32).clamp(0.0, 1.0)
}

/// One sample of how busy the machine under `root` is at `now`.
pub fn sample(root: &Path, cpus: usize, now: std::time::SystemTime) -> f32 {
    let active = sessions(&root.join("var/run/utmp"))
        .iter()
        .any(|line| idle_ms(root, line, now).is_none_or(|ms| ms < SESSION_IDLE_MS));
    if active {
        return 1.0;
    }
    load_share(&root.join("proc/loadavg"), cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utmp_entry(kind: i32) -> Vec<u8> {
        session(kind, "")
    }

    fn session(kind: i32, line: &str) -> Vec<u8> {
        let mut e = vec![0u8; UTMP_ENTRY];
        e[..4].copy_from_slice(&kind.to_ne_bytes());
        e[UT_LINE.start..UT_LINE.start + line.len()].copy_from_slice(line.as_bytes());
        e
    }

    /// A terminal device under `root` whose last input was `ago_ms` before `now`.
    fn tty(root: &Path, line: &str, now: std::time::SystemTime, ago_ms: u64) {
        let path = root.join("dev").join(line);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = std::fs::File::create(&path).unwrap();
        let at = now - std::time::Duration::from_millis(ago_ms);
        f.set_times(std::fs::FileTimes::new().set_accessed(at).set_modified(at)).unwrap();
    }

    #[test]
    fn a_session_idle_at_its_terminal_is_not_someone_at_the_machine() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let now = std::time::SystemTime::now();
        std::fs::create_dir_all(root.join("var/run")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(root.join("proc/loadavg"), "0.40 0.50 0.25 1/100 42\n").unwrap();
        // An SSH session left open, idle for two hours: the load counts.
        tty(root, "pts/3", now, 2 * 3_600_000);
        std::fs::write(root.join("var/run/utmp"), session(USER_PROCESS, "pts/3")).unwrap();
        assert_eq!(sessions(&root.join("var/run/utmp")), ["pts/3"]);
        assert_eq!(sample(root, 4, now), 0.1);
        // Someone typed a minute ago: busy.
        tty(root, "pts/3", now, 60_000);
        assert_eq!(sample(root, 4, now), 1.0);
        // A graphical seat has no terminal to read: busy while it lasts.
        tty(root, "pts/3", now, 2 * 3_600_000);
        let mut utmp = session(USER_PROCESS, "pts/3");
        utmp.extend(session(USER_PROCESS, ":0"));
        std::fs::write(root.join("var/run/utmp"), &utmp).unwrap();
        assert_eq!(sample(root, 4, now), 1.0);
        // A line naming anything but a device below dev/ is not followed.
        for line in ["../etc/passwd", "/etc/passwd", "pts/../../x", "pts//0"] {
            assert_eq!(idle_ms(root, line, now), None, "{line}");
        }
    }

    #[test]
    fn a_logged_in_user_is_busy_else_the_load_counts() {
        let now = std::time::SystemTime::now();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("var/run")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(root.join("proc/loadavg"), "1.00 0.50 0.25 1/100 42\n").unwrap();
        // Boot time and a dead process only: no one logged in; load 1 over 4 CPUs.
        let mut utmp = utmp_entry(2);
        utmp.extend(utmp_entry(8));
        std::fs::write(root.join("var/run/utmp"), &utmp).unwrap();
        assert!(sessions(&root.join("var/run/utmp")).is_empty());
        assert_eq!(sample(root, 4, now), 0.25);
        utmp.extend(utmp_entry(USER_PROCESS));
        std::fs::write(root.join("var/run/utmp"), &utmp).unwrap();
        assert_eq!(sample(root, 4, now), 1.0);
        // Garbage and missing files read as idle, never as an error.
        std::fs::write(root.join("proc/loadavg"), "NaN x").unwrap();
        std::fs::write(root.join("var/run/utmp"), b"short").unwrap();
        assert_eq!(sample(root, 4, now), 0.0);
        assert_eq!(sample(&root.join("nowhere"), 0, now), 0.0);
    }

    #[test]
    fn the_history_survives_a_restart_and_a_damaged_file_starts_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("activity.json");
        let mut h = load(&path);
        assert_eq!(h, ActivityHistogram::default());
        h.record(5, 0.7);
        save(&path, &h).unwrap();
        assert_eq!(load(&path), h);
        std::fs::write(&path, b"{\"level\": [2.0], \"samples\": [1]}").unwrap();
        assert_eq!(load(&path), ActivityHistogram::default());
        std::fs::write(&path, vec![b' '; FILE_BYTES_MAX as usize + 10]).unwrap();
        assert_eq!(load(&path), ActivityHistogram::default());
    }
}
