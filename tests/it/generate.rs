//! `codex generate`: any run or checkpoint as the source, reproducible sampling, streaming
//! text, `--json` ids and log-probs, stop strings, and clear refusals.

use crate::support::{codex, corpus, expect_exit, stdout_json, stdout_of, tempdir, tiny_args};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Trains the tiny GPT-2 of `tiny.toml` (byte tokenizer, checkpoints at 10 and 12) into
/// `dir/run`, plus `extra` overrides.
pub fn train_tiny(dir: &Path, extra: &[&str]) -> PathBuf {
    let input = corpus(dir);
    let run = dir.join("run");
    codex()
        .args(tiny_args(&input, &run, extra))
        .assert()
        .success();
    run
}

fn gen_json(source: &str, extra: &[&str]) -> Value {
    stdout_json(
        codex()
            .args(["--json", "generate", source, "--prompt", "def f"])
            .args(extra),
    )
}

#[test]
fn same_seed_same_text_and_json_has_ids_text_logprobs() {
    let dir = tempdir();
    let run = train_tiny(dir.path(), &[]);
    let src = run.display().to_string();
    let args = ["--prompt", "def f", "-n", "24", "--seed", "5", "-t", "0.9"];
    let a = stdout_of(codex().arg("generate").arg(&src).args(args));
    let b = stdout_of(codex().arg("generate").arg(&src).args(args));
    assert_eq!(a, b);
    let j = gen_json(&src, &["-n", "24", "--seed", "5", "-t", "0.9"]);
    let s = &j["samples"][0];
    let ids: Vec<u64> = s["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 24);
    assert_eq!(s["logprobs"].as_array().unwrap().len(), 24);
    assert!(
        s["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l.as_f64().unwrap() <= 0.0)
    );
    // Byte tokenizer: the text is the ids as bytes, and the streamed text is the same text.
    let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
    assert_eq!(s["text"], String::from_utf8_lossy(&bytes).as_ref());
    assert_eq!(a.trim_end_matches('\n'), s["text"].as_str().unwrap());
    assert_eq!(j["prompt_ids"], serde_json::json!([100, 101, 102, 32, 102]));
    assert!(j["timing"]["generate_tokens_per_s"].as_f64().unwrap() > 0.0);
    // Another seed, another sample.
    let c = gen_json(&src, &["-n", "24", "--seed", "6", "-t", "0.9"]);
    assert_ne!(c["samples"][0]["ids"], s["ids"]);
}

#[test]
fn selectors_pick_checkpoints_and_greedy_is_deterministic() {
    let dir = tempdir();
    let run = train_tiny(dir.path(), &[]);
    let src = run.display().to_string();
    let greedy = ["-t", "0", "-n", "16"];
    let at12 = gen_json(&format!("{src}@12"), &greedy);
    let at10 = gen_json(&format!("{src}@10"), &greedy);
    let last = gen_json(&format!("{src}@last"), &greedy);
    let dir12 = gen_json(
        &run.join("checkpoints/step-00000012").display().to_string(),
        &greedy,
    );
    assert_eq!(at12["samples"], last["samples"]);
    assert_eq!(at12["samples"], dir12["samples"]);
    assert!(at12["model"].as_str().unwrap().ends_with("(step 12)"));
    assert!(at10["model"].as_str().unwrap().ends_with("(step 10)"));
    // Different weights give different log-probs.
    assert_ne!(
        at10["samples"][0]["logprobs"],
        at12["samples"][0]["logprobs"]
    );
    let p = expect_exit(
        codex().args(["generate", &format!("{src}@7"), "-p", "x"]),
        1,
    );
    assert!(
        p.stderr.contains("no usable checkpoint at step 7"),
        "{}",
        p.stderr
    );
    assert!(p.stderr.contains("10, 12"), "{}", p.stderr);
    let p = expect_exit(
        codex().args(["generate", &format!("{src}@newest"), "-p", "x"]),
        1,
    );
    assert!(p.stderr.contains("@best, @last or @STEP"), "{}", p.stderr);
}

#[test]
fn stop_strings_num_samples_and_stdin_prompt() {
    let dir = tempdir();
    let run = train_tiny(dir.path(), &[]);
    let src = run.display().to_string();
    let j = gen_json(&src, &["-n", "40", "--num-samples", "3", "--seed", "1"]);
    let samples = j["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    assert_ne!(samples[0]["ids"], samples[1]["ids"]);
    // Stop at the first character the free run produced: the text ends before it.
    let text = samples[0]["text"].as_str().unwrap();
    let stop: String = text.chars().take(1).collect();
    let s = gen_json(&src, &["-n", "40", "--seed", "1", "--stop", &stop]);
    assert_eq!(s["samples"][0]["finish_reason"], "stop");
    assert_eq!(s["samples"][0]["text"], "");
    // The prompt from stdin equals --prompt.
    let piped = stdout_json(
        codex()
            .args(["--json", "generate", &src, "-t", "0", "-n", "8"])
            .write_stdin("def f"),
    );
    let flag = gen_json(&src, &["-t", "0", "-n", "8"]);
    assert_eq!(piped["samples"], flag["samples"]);
}

#[test]
fn refuses_presets_bad_settings_and_overlong_prompts() {
    let p = expect_exit(codex().args(["generate", "gpt-tiny", "-p", "x"]), 1);
    assert!(p.stderr.contains("is a preset"), "{}", p.stderr);
    assert!(!p.stderr.contains("build_preset"), "{}", p.stderr);
    let dir = tempdir();
    let run = train_tiny(dir.path(), &[]);
    let src = run.display().to_string();
    let p = expect_exit(
        codex().args([
            "generate",
            &src,
            "-p",
            "x",
            "--top-p",
            "0",
            "--temperature=-1",
        ]),
        1,
    );
    assert!(
        p.stderr.contains("top_p") && p.stderr.contains("temperature"),
        "{}",
        p.stderr
    );
    // gpt-tiny's context is 64 positions.
    let long = "x".repeat(64);
    let p = expect_exit(codex().args(["generate", &src, "-p", &long]), 1);
    assert!(p.stderr.contains("context"), "{}", p.stderr);
    // Generation stops when the context is full: the last token is chosen from the logits
    // of position 64 and is not fed back.
    let j = gen_json(&src, &["-n", "200"]);
    assert_eq!(j["samples"][0]["finish_reason"], "context");
    assert_eq!(j["samples"][0]["ids"].as_array().unwrap().len(), 64 - 5 + 1);
}

#[test]
fn a_corrupt_checkpoint_is_refused_not_loaded() {
    let dir = tempdir();
    let run = train_tiny(dir.path(), &[]);
    let w = run.join("checkpoints/step-00000012/model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    std::fs::write(&w, bytes).unwrap();
    let p = expect_exit(
        codex().args(["generate", &format!("{}@12", run.display()), "-p", "x"]),
        1,
    );
    assert!(p.stderr.contains("corrupt"), "{}", p.stderr);
}

#[test]
fn model_show_accepts_runs() {
    let dir = tempdir();
    let run = train_tiny(dir.path(), &[]);
    let j = stdout_json(codex().args(["--json", "model", "show", &run.display().to_string()]));
    assert_eq!(j["architecture"], "gpt2");
    assert_eq!(j["config"]["vocab_size"], 256);
    assert!(j["source"].as_str().unwrap().contains("step 12"));
    // The preset's parameter count at vocab 256, from the checkpoint's header.
    assert!(j["params"]["total"].as_u64().unwrap() > 100_000);
}

#[test]
fn architecture_knobs_train_and_generate() {
    let dir = tempdir();
    let run = train_tiny(
        dir.path(),
        &[
            "model.overrides.n_layer=3",
            "model.overrides.n_head=4",
            "model.overrides.n_embd=64",
        ],
    );
    let j = stdout_json(codex().args(["--json", "model", "show", &run.display().to_string()]));
    assert_eq!(j["config"]["n_layer"], 3);
    assert_eq!(j["config"]["n_head"], 4);
    assert_eq!(j["config"]["n_embd"], 64);
    let g = gen_json(&run.display().to_string(), &["-n", "4"]);
    assert_eq!(g["samples"][0]["ids"].as_array().unwrap().len(), 4);
    // Bad knobs: every problem in one report, before any work.
    let input = corpus(dir.path());
    let p = expect_exit(
        codex().args(tiny_args(
            &input,
            &dir.path().join("bad"),
            &[
                "model.overrides.n_head=3",
                "model.overrides.n_embd=100",
                "model.overrides.num_key_value_heads=2",
            ],
        )),
        1,
    );
    assert!(p.stderr.contains("multiple of `n_head`"), "{}", p.stderr);
    assert!(p.stderr.contains("not a gpt2 key"), "{}", p.stderr);
}

#[test]
fn eval_takes_checkpoint_selectors() {
    let dir = tempdir();
    let run = train_tiny(dir.path(), &[]);
    let src = run.display().to_string();
    let e10 =
        stdout_json(codex().args(["--json", "eval", &format!("{src}@10"), "--max-batches", "1"]));
    assert_eq!(e10["step"], 10);
    let e12 = stdout_json(codex().args([
        "--json",
        "eval",
        &format!("{src}@last"),
        "--max-batches",
        "1",
    ]));
    assert_eq!(e12["step"], 12);
    let p = expect_exit(codex().args(["eval", &format!("{src}@3")]), 1);
    assert!(p.stderr.contains("step 3"), "{}", p.stderr);
}

#[test]
fn generation_stops_at_the_eos_token_unless_told_not_to() {
    let dir = tempdir();
    let run = train_tiny(dir.path(), &[]);
    let hf = dir.path().join("hf");
    codex()
        .args(["export", &run.display().to_string(), "-o"])
        .arg(&hf)
        .assert()
        .success();
    let src = hf.display().to_string();
    let free = gen_json(&src, &["-t", "0", "-n", "24"]);
    let ids: Vec<u64> = free["samples"][0]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // The export names no eos (the byte tokenizer has none): nothing stops early.
    assert_eq!(free["eos_token_ids"], serde_json::json!([]));
    assert_eq!(free["samples"][0]["finish_reason"], "length");
    // Pick a token greedy emits after the start; its first position is where it must stop.
    let k = ids.len() / 2;
    let eos = ids[k];
    let first = ids.iter().position(|&i| i == eos).unwrap();
    let gc = hf.join("generation_config.json");
    for value in [serde_json::json!(eos), serde_json::json!([eos + 1000, eos])] {
        std::fs::write(
            &gc,
            serde_json::json!({ "eos_token_id": value }).to_string(),
        )
        .unwrap();
        let j = gen_json(&src, &["-t", "0", "-n", "24"]);
        let s = &j["samples"][0];
        assert_eq!(s["finish_reason"], "eos");
        assert_eq!(s["ids"].as_array().unwrap().len(), first + 1);
        assert_eq!(s["ids"][first], eos);
        // The eos token is in the ids, not in the text.
        let bytes: Vec<u8> = ids[..first].iter().map(|&i| i as u8).collect();
        assert_eq!(s["text"], String::from_utf8_lossy(&bytes).as_ref());
        let ignored = gen_json(&src, &["-t", "0", "-n", "24", "--ignore-eos"]);
        assert_eq!(ignored["samples"][0]["ids"], free["samples"][0]["ids"]);
    }
    // config.json's eos is the fallback.
    std::fs::remove_file(&gc).unwrap();
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    cfg["eos_token_id"] = serde_json::json!(eos);
    std::fs::write(hf.join("config.json"), cfg.to_string()).unwrap();
    let j = gen_json(&src, &["-t", "0", "-n", "24"]);
    assert_eq!(j["samples"][0]["finish_reason"], "eos");
    assert_eq!(j["eos_token_ids"], serde_json::json!([eos]));
}
