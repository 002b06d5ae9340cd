//! Behaviour shared by every command: help, version, usage errors and exit codes.

use crate::support::{codex, expect_exit, stdout_of};
use predicates::prelude::*;

#[test]
fn version_prints_package_version() {
    codex()
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_lists_commands_and_exits_zero() {
    let text = stdout_of(codex().arg("--help"));
    assert!(text.contains("Usage: codex"), "{text}");
    assert!(text.contains("--json"), "{text}");
}

#[test]
fn unknown_command_is_a_usage_error() {
    codex()
        .arg("frobnicate")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error:"));
}

#[test]
fn unknown_flag_is_a_usage_error() {
    codex().arg("--no-such-flag").assert().code(2);
}

#[test]
fn missing_command_is_a_usage_error() {
    codex()
        .assert()
        .code(2)
        .stderr(predicate::str::contains("Usage"));
}

#[test]
fn stdout_is_empty_on_errors() {
    codex()
        .arg("frobnicate")
        .assert()
        .code(2)
        .stdout(predicate::str::is_empty());
}

#[test]
fn errors_carry_their_hint_line_and_exit_one() {
    let stderr = expect_exit(codex().args(["model", "show", "no-such-model-anywhere"]), 1).stderr;
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "{stderr}");
    assert!(first.contains("no-such-model-anywhere"), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("hint: ")), "{stderr}");
}
