//! `codex generate` under the safety policy: the prompt stage (a planted credential refused
//! without being echoed, redactions are what the model sees), banned strings masked in the
//! logits (greedy output never holds one, even where the model's own greedy choice would have
//! produced it), and the output stage (redaction, a block stopping the sample).

use crate::support::{codex, corpus, expect_exit, stdout_json, stdout_of, tempdir, tiny_args};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The tiny GPT-2 trained for 150 steps: enough that greedy decoding of `def f` writes code
/// (`21(x):\n    return …`) instead of spaces.
fn trained(dir: &Path) -> PathBuf {
    let input = corpus(dir);
    let run = dir.join("run");
    codex()
        .args(tiny_args(
            &input,
            &run,
            &["training.steps=150", "checkpoint.every=50"],
        ))
        .assert()
        .success();
    run
}

fn greedy(run: &Path, extra: &[&str]) -> Value {
    stdout_json(
        codex()
            .args(["--json", "generate"])
            .arg(run)
            .args(["-p", "def f", "-t", "0", "-n", "48"])
            .args(extra),
    )
}

fn text(j: &Value) -> String {
    j["samples"][0]["text"].as_str().unwrap().to_string()
}

fn policy(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn a_prompt_with_a_planted_credential_is_refused_and_never_echoed() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("run");
    codex()
        .args(tiny_args(&input, &run, &[]))
        .assert()
        .success();
    let src = run.display().to_string();
    // Built at run time so this file holds no credential-shaped string.
    let key = format!("AKIA{}", "QX7ZK2M9PL4TR8WB");
    let ghp = format!("ghp_{}", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8");
    for (secret, rule) in [
        (&key, "secret.aws_access_key_id"),
        (&ghp, "secret.github_token"),
    ] {
        let prompt = format!("deploy with\n  token {secret} now");
        for json in [false, true] {
            let mut cmd = codex();
            if json {
                cmd.arg("--json");
            }
            let p = expect_exit(cmd.args(["generate", &src, "-p", &prompt]), 1);
            assert!(p.stderr.contains(rule), "{}", p.stderr);
            assert!(p.stderr.contains("2:9"), "{}", p.stderr);
            assert!(!p.stderr.contains(secret.as_str()), "{}", p.stderr);
            assert!(!p.stdout.contains(secret.as_str()), "{}", p.stdout);
            assert!(p.stdout.is_empty(), "{}", p.stdout);
        }
    }
    // The same prompt from a file and from stdin.
    let f = dir.path().join("prompt.txt");
    std::fs::write(&f, format!("k={key}")).unwrap();
    let p = expect_exit(codex().args(["generate", &src, "--prompt-file"]).arg(&f), 1);
    assert!(
        p.stderr.contains("secret.aws_access_key_id"),
        "{}",
        p.stderr
    );
    let p = expect_exit(
        codex()
            .args(["generate", &src])
            .write_stdin(format!("k={key}")),
        1,
    );
    assert!(
        p.stderr.contains("secret.aws_access_key_id"),
        "{}",
        p.stderr
    );
    // --no-safety lets it through; bypass lets it through and says so.
    stdout_of(codex().args(["generate", &src, "-n", "2", "--no-safety", "-p", &key]));
    let out = codex()
        .args(["--json", "generate", &src, "-n", "2", "-p", &key])
        .env("CODEX_SAFETY_BYPASS", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bypass"), "{stderr}");
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["safety"]["bypass"], true);
    assert_eq!(
        j["safety"]["prompt"]["rules"]["secret.aws_access_key_id"]["by_disposition"]["bypassed"],
        1
    );
    // A redacting rule: the model sees (and --json shows) the redacted prompt.
    let j = stdout_json(codex().args([
        "--json",
        "generate",
        &src,
        "-n",
        "2",
        "-p",
        "mail bob@example.com",
    ]));
    assert_eq!(j["prompt"], "mail {REDACTED}");
    let ids: Vec<u8> = j["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(ids, b"mail {REDACTED}");
    assert_eq!(j["safety"]["prompt"]["rules"]["pii.email"]["matches"], 1);
    // A bad policy file is refused with its problems.
    let bad = policy(
        dir.path(),
        "bad.toml",
        "[[rules]]\nid = \"x\"\naction = \"explode\"\nliterals = [\"a\"]\n",
    );
    let p = expect_exit(
        codex().args(["generate", &src, "-p", "x", "--policy", &bad]),
        1,
    );
    assert!(p.stderr.contains("explode"), "{}", p.stderr);
}

#[test]
fn a_banned_string_never_appears_in_greedy_output() {
    let dir = tempdir();
    let run = trained(dir.path());
    let free = greedy(&run, &["--no-safety"]);
    let t = text(&free);
    // The first 4-byte window of letters the model writes greedily (e.g. `retu`).
    let at = (0..t.len().saturating_sub(4))
        .find(|&i| t.as_bytes()[i..i + 4].iter().all(u8::is_ascii_alphabetic))
        .unwrap_or_else(|| panic!("no word in the greedy output {t:?}"));
    let banned = t[at..at + 4].to_string();
    let pol = policy(
        dir.path(),
        "ban.toml",
        &format!(
            "[[rules]]\nid = \"ban.it\"\naction = \"block\"\napplies_to = [\"output\"]\n\
             literals = [{banned:?}]\n"
        ),
    );
    let masked = greedy(&run, &["--policy", &pol]);
    let m = text(&masked);
    assert!(
        !m.to_ascii_lowercase()
            .contains(&banned.to_ascii_lowercase()),
        "{banned:?} in {m:?}"
    );
    // Byte tokenizer: identical up to the byte that would complete the banned string, then
    // the next-best token instead.
    assert!(m.starts_with(&t[..at + 3]), "{t:?} vs {m:?}");
    assert_ne!(&m.as_bytes()[at + 3], &t.as_bytes()[at + 3]);
    assert!(masked["samples"][0]["masked_choices"].as_u64().unwrap() >= 1);
    assert_eq!(masked["safety"]["banned_strings"], 1);
    // Sampling too: no sample of many holds it.
    let sampled = stdout_json(
        codex()
            .args(["--json", "generate"])
            .arg(&run)
            .args(["-p", "def f", "-t", "1.0", "-n", "48", "--num-samples", "8"])
            .args(["--policy", &pol]),
    );
    for s in sampled["samples"].as_array().unwrap() {
        let st = s["text"].as_str().unwrap().to_ascii_lowercase();
        assert!(!st.contains(&banned.to_ascii_lowercase()), "{st:?}");
    }
    // Bypass turns the mask off (and is recorded): the model's own greedy text again.
    let out = codex()
        .args(["--json", "generate"])
        .arg(&run)
        .args(["-p", "def f", "-t", "0", "-n", "48", "--policy", &pol])
        .env("CODEX_SAFETY_BYPASS", "yes")
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["safety"]["bypass"], true);
    assert_eq!(j["samples"][0]["ids"], free["samples"][0]["ids"]);
}

#[test]
fn output_rules_redact_and_block_line_by_line() {
    let dir = tempdir();
    let run = trained(dir.path());
    let free = greedy(&run, &["--no-safety"]);
    let t = text(&free);
    assert!(t.contains('\n'), "{t:?}");
    // A redact rule on `(x)`: the text is the free text with it replaced, on stdout as well.
    let pol = policy(
        dir.path(),
        "redact.toml",
        "[[rules]]\nid = \"r\"\naction = \"redact\"\napplies_to = [\"output\"]\n\
         replacement = \"<ARG>\"\nregex = '\\(x\\)'\n",
    );
    let j = greedy(&run, &["--policy", &pol]);
    assert!(t.contains("(x)"), "{t:?}");
    assert_eq!(text(&j), t.replace("(x)", "<ARG>"));
    assert_eq!(j["samples"][0]["ids"], free["samples"][0]["ids"]);
    assert_eq!(j["safety"]["output"]["rules"]["r"]["matches"], 1);
    let plain = stdout_of(
        codex()
            .arg("generate")
            .arg(&run)
            .args(["-p", "def f", "-t", "0", "-n", "48", "--policy", &pol]),
    );
    assert_eq!(plain, format!("{}\n", t.replace("(x)", "<ARG>")));
    // A block regex (not a literal, so not masked): the sample stops where it matched and
    // the matched text is withheld, on stdout as in --json.
    let word = t
        .split(|c: char| !c.is_ascii_alphabetic())
        .find(|w| w.len() >= 3)
        .unwrap();
    let at = t.find(word).unwrap();
    let pol = policy(
        dir.path(),
        "block.toml",
        &format!(
            "[[rules]]\nid = \"no.word\"\naction = \"block\"\napplies_to = [\"output\"]\n\
             regex = '{}'\n",
            regex_escape(word)
        ),
    );
    let j = greedy(&run, &["--policy", &pol]);
    let s = &j["samples"][0];
    assert_eq!(s["finish_reason"], "safety");
    assert_eq!(s["blocked_by"], serde_json::json!(["no.word"]));
    assert_eq!(text(&j), t[..at]);
    // It stopped at the token that completed the match.
    assert_eq!(s["ids"].as_array().unwrap().len(), at + word.len());
    let out = codex()
        .arg("generate")
        .arg(&run)
        .args(["-p", "def f", "-t", "0", "-n", "48", "--policy", &pol])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, format!("{}\n", &t[..at]));
    assert!(!stdout.contains(word));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no.word"));
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}
