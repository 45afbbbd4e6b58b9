//! How busy this machine is, sampled every few minutes into the histogram its quiet hours come
//! from (`--window auto`; see [`patchmesh_protocol::rollout::activity`]).
//!
//! One sample is the share of the last minute the machine was in use: 1 while anyone is logged
//! in (a `USER_PROCESS` entry in utmp: console, SSH, a desktop session), else the one-minute
//! load average over the CPU count, capped at 1. The histogram stays in the data directory
//! (`activity.json`, a few kilobytes); only the quiet hours it gives go into the node's
//! signed record. Input idle time is not read: servers have no input devices, and a logged-in
//! desktop already counts as busy.

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

/// Logged-in user sessions in the utmp file at `path` (0 when it cannot be read).
pub fn sessions(path: &Path) -> usize {
    let Ok(f) = std::fs::File::open(path) else { return 0 };
    let mut buf = Vec::new();
    if f.take(UTMP_BYTES_MAX).read_to_end(&mut buf).is_err() {
        return 0;
    }
    buf.chunks_exact(UTMP_ENTRY)
        .filter(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]) == USER_PROCESS)
        .count()
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

/// One sample of how busy the machine under `root` is now.
pub fn sample(root: &Path, cpus: usize) -> f32 {
    if sessions(&root.join("var/run/utmp")) > 0 {
        return 1.0;
    }
    load_share(&root.join("proc/loadavg"), cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utmp_entry(kind: i32) -> Vec<u8> {
        let mut e = vec![0u8; UTMP_ENTRY];
        e[..4].copy_from_slice(&kind.to_ne_bytes());
        e
    }

    #[test]
    fn a_logged_in_user_is_busy_else_the_load_counts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("var/run")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(root.join("proc/loadavg"), "1.00 0.50 0.25 1/100 42\n").unwrap();
        // Boot time and a dead process only: no one logged in; load 1 over 4 CPUs.
        let mut utmp = utmp_entry(2);
        utmp.extend(utmp_entry(8));
        std::fs::write(root.join("var/run/utmp"), &utmp).unwrap();
        assert_eq!(sessions(&root.join("var/run/utmp")), 0);
        assert_eq!(sample(root, 4), 0.25);
        utmp.extend(utmp_entry(USER_PROCESS));
        std::fs::write(root.join("var/run/utmp"), &utmp).unwrap();
        assert_eq!(sample(root, 4), 1.0);
        // Garbage and missing files read as idle, never as an error.
        std::fs::write(root.join("proc/loadavg"), "NaN x").unwrap();
        std::fs::write(root.join("var/run/utmp"), b"short").unwrap();
        assert_eq!(sample(root, 4), 0.0);
        assert_eq!(sample(&root.join("nowhere"), 0), 0.0);
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
