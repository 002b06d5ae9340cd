//! Behaviour shared by every command: help, version, usage errors and exit codes.

use assert_cmd::Command;
use predicates::prelude::*;

fn codex() -> Command {
    let mut cmd = Command::cargo_bin("codex").expect("codex binary");
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    cmd
}

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
    let out = codex()
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
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
    let out = codex()
        .args(["model", "show", "no-such-model-anywhere"])
        .assert()
        .code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "{stderr}");
    assert!(first.contains("no-such-model-anywhere"), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("hint: ")), "{stderr}");
}
