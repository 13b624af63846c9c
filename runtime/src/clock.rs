//! Time, read in one place: state machines take time as an argument, and the daemons that
//! drive them read it here.
//!
//! Deadlines and claimed times come from [`now_ms`], the wall clock read once when the process
//! starts and then advanced by the monotonic clock: a wall clock stepped by an operator or a
//! broken time server mid-run neither closes a round early nor holds it open for an hour
//! (pinned by `a_wall_clock_jump_at_the_coordinator_moves_no_deadline`). The monotonic clock is
//! slewed by NTP like the wall clock, so the two drift apart only if the wall clock is stepped.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

/// How far the wall clock has been made to jump (only by an injected fault).
static WALL_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// The wall clock and the monotonic clock, read together once.
static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();

/// The wall clock: milliseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_ms() -> u64 {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    (real + WALL_OFFSET_MS.load(Ordering::Relaxed)).max(0) as u64
}

/// Milliseconds since the Unix epoch, by the wall clock at the process's first reading and
/// the monotonic clock since.
pub fn now_ms() -> u64 {
    let (wall, at) = ANCHOR.get_or_init(|| (wall_ms(), Instant::now()));
    wall + at.elapsed().as_millis() as u64
}

/// Makes the wall clock jump by `ms` (negative: back), as an operator or a broken time
/// server might; for the resilience suite.
pub fn jump_wall_clock(ms: i64) {
    WALL_OFFSET_MS.fetch_add(ms, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_does_not_follow_a_wall_clock_jump() {
        let before = now_ms();
        jump_wall_clock(3_600_000);
        let after = now_ms();
        assert!(wall_ms() >= before + 3_600_000);
        assert!(
            after >= before && after < before + 60_000,
            "{before} -> {after}"
        );
        jump_wall_clock(-7_200_000);
        assert!(now_ms() >= after);
        jump_wall_clock(3_600_000);
    }
}
