//! Timestamps: wall clock as RFC 3339 UTC, and a monotonic clock for durations.

use std::sync::OnceLock;
use std::time::Instant;

/// Now, as RFC 3339 in UTC with millisecond precision (`2026-11-23T01:02:03.456Z`).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Seconds on a monotonic clock since the first call in this process; never goes backwards.
pub fn mono_s() -> f64 {
    origin().elapsed().as_secs_f64()
}
