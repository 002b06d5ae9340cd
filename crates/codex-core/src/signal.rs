//! The process-wide interrupt flag.
//!
//! The binary installs the handler once; long-running library code polls [`interrupted`] at
//! safe points (end of a step, between samples) and shuts down cleanly. A second Ctrl-C
//! exits at once with 130, for a user who does not want to wait.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicU32 = AtomicU32::new(0);

/// Records an interrupt. Called by the signal handler; tests may call it to simulate Ctrl-C.
pub fn raise() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    if COUNT.fetch_add(1, Ordering::SeqCst) >= 1 {
        // Second interrupt: the user insists.
        std::process::exit(i32::from(crate::exit::INTERRUPTED));
    }
}

/// Whether an interrupt (SIGINT/SIGTERM) has been received.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Clears the flag (tests only; a real process exits after an interrupt).
pub fn reset() {
    INTERRUPTED.store(false, Ordering::SeqCst);
    COUNT.store(0, Ordering::SeqCst);
}
