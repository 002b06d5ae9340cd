//! Process exit codes, the same for every command.

/// Success.
pub const OK: u8 = 0;
/// The input is invalid or the outcome negative (bad config, corrupt checkpoint, failed audit).
pub const INVALID: u8 = 1;
/// Usage error or internal error.
pub const INTERNAL: u8 = 2;
/// Stopped by Ctrl-C (SIGINT) after a clean shutdown, as shells expect (128 + 2).
pub const INTERRUPTED: u8 = 130;
