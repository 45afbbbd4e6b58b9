//! The node's wall clock: milliseconds since the Unix epoch, plus the offset a node config may
//! set (`clock_offset_ms`, which tests use to run a node whose clock is wrong). The offset is
//! per process: the CLI reads the real clock.
//!
//! Durations inside the node (download rates, timeouts) use `std::time::Instant`, never this.

use patchmesh_protocol::ids::Millis;
use std::sync::atomic::{AtomicI64, Ordering};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Wall-clock milliseconds since the Unix epoch, plus this process's offset.
pub fn now_ms() -> Millis {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Millis(ms.saturating_add(OFFSET_MS.load(Ordering::Relaxed)).max(0) as u64)
}

/// Shifts this process's clock by `offset_ms` (a node configured with a wrong clock).
pub fn set_offset_ms(offset_ms: i64) {
    OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_moves_the_clock() {
        let before = now_ms().0;
        set_offset_ms(86_400_000);
        let ahead = now_ms().0;
        set_offset_ms(0);
        assert!(ahead >= before + 86_400_000 && ahead < before + 86_400_000 + 60_000);
    }
}
