//! `codex export`: an HF directory that reloads to the same model (codex reads it back and
//! generates the same tokens), the byte tokenizer with its ids, sharding, dtypes, LoRA both
//! ways, and a model card from the run record.

use crate::generate::train_tiny;
use crate::support::{codex, expect_exit, stdout_json, tempdir};
use serde_json::Value;
use std::path::Path;

fn greedy(source: &Path) -> Value {
    greedy_with(source, &[])
}

fn greedy_with(source: &Path, extra: &[&str]) -> Value {
    let j = stdout_json(
        codex()
            .args([
                "--json",
                "generate",
                &source.display().to_string(),
                "--prompt",
                "def f",
                "-t",
                "0",
                "-n",
                "20",
            ])
            .args(extra),
    );
    j["samples"][0].clone()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn hf_export_reloads_to_the_same_generation() {
    let dir = tempdir();
    let run = train_tiny(dir.path(), &[]);
    let out = dir.path().join("hf");
    codex()
        .args(["export", &run.display().to_string(), "-o"])
        .arg(&out)
        .assert()
        .success();
    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["model_type"], "gpt2");
    assert_eq!(cfg["architectures"][0], "GPT2LMHeadModel");
    assert_eq!(cfg["n_layer"], 2);
    assert_eq!(cfg["vocab_size"], 256);
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert!(out.join("generation_config.json").is_file());
    let a = greedy(&run);
    let b = greedy(&out);
    assert_eq!(a["ids"], b["ids"]);
    assert_eq!(a["logprobs"], b["logprobs"]);
    // The card holds the run's record.
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains("GPT2LMHeadModel") && card.contains("step 12"),
        "{card}"
    );
    assert!(
        card.contains("validation loss") && card.contains("corpus.py"),
        "{card}"
    );
    // A second export into the same directory needs --force.
    let p = expect_exit(
        codex()
            .args(["export", &run.display().to_string(), "-o"])
            .arg(&out),
        1,
    );
    assert!(p.stderr.contains("--force"), "{}", p.stderr);
}

#[test]
fn byte_tokenizer_json_keeps_the_byte_ids() {
    let dir = tempdir();
    let run = train_tiny(dir.path(), &[]);
    let out = dir.path().join("hf");
    codex()
        .args(["export", &run.display().to_string(), "-o"])
        .arg(&out)
        .assert()
        .success();
    let tok = codex_tokenizer::load_file(&out.join("tokenizer.json")).unwrap();
    let text = "def f(x):\n\treturn x ± 1 — ünïcödé \u{1F600} \u{0}\u{7f}";
    let enc = tok.encode(text, false).unwrap();
    let want: Vec<u32> = text.bytes().map(u32::from).collect();
    assert_eq!(enc.get_ids(), want.as_slice());
    assert_eq!(tok.decode(&want, false).unwrap(), text);
    assert_eq!(tok.get_vocab_size(true), 256);
}

#[test]
fn shards_and_dtypes() {
    let dir = tempdir();
    let run = train_tiny(dir.path(), &[]);
    let out = dir.path().join("sharded");
    codex()
        .args([
            "export",
            &run.display().to_string(),
            "--max-shard-size",
            "400000",
            "-o",
        ])
        .arg(&out)
        .assert()
        .success();
    let index = read_json(&out.join("model.safetensors.index.json"));
    let shards: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(shards.len() > 1, "{shards:?}");
    assert!(!out.join("model.safetensors").exists());
    assert_eq!(greedy(&run)["ids"], greedy(&out)["ids"]);
    let bf = dir.path().join("bf16");
    codex()
        .args([
            "export",
            &run.display().to_string(),
            "--dtype",
            "bf16",
            "-o",
        ])
        .arg(&bf)
        .assert()
        .success();
    assert_eq!(
        read_json(&bf.join("config.json"))["torch_dtype"],
        "bfloat16"
    );
    let show = stdout_json(codex().args(["--json", "model", "show"]).arg(&bf));
    assert_eq!(show["dtype"], "bf16");
}

#[test]
fn lora_run_exports_merged_or_as_adapter() {
    let dir = tempdir();
    let run = train_tiny(
        dir.path(),
        &[
            "model.lora.enabled=true",
            "model.lora.r=4",
            "optimizer.lr=3e-2",
        ],
    );
    let merged = dir.path().join("merged");
    codex()
        .args(["export", &run.display().to_string(), "--merge-lora", "-o"])
        .arg(&merged)
        .assert()
        .success();
    let split = dir.path().join("split");
    codex()
        .args(["export", &run.display().to_string(), "-o"])
        .arg(&split)
        .assert()
        .success();
    assert!(split.join("adapter/adapter_config.json").is_file());
    assert!(split.join("adapter/adapter_model.safetensors").is_file());
    // Base + adapter merged again by `codex model lora merge` equals the merged export.
    let remerged = dir.path().join("remerged");
    codex()
        .args(["model", "lora", "merge", "--base"])
        .arg(&split)
        .arg("--adapter")
        .arg(split.join("adapter"))
        .arg("--out")
        .arg(&remerged)
        .assert()
        .success();
    let (a, b, c) = (greedy(&run), greedy(&merged), greedy(&remerged));
    assert_eq!(a["ids"], b["ids"]);
    assert_eq!(b["ids"], c["ids"]);
    let close = |x: &Value, y: &Value| {
        x["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(y["logprobs"].as_array().unwrap())
            .all(|(p, q)| (p.as_f64().unwrap() - q.as_f64().unwrap()).abs() < 1e-4)
    };
    assert!(close(&a, &b) && close(&b, &c));
    // The adapter trained: the base alone generates differently.
    let base = greedy(&split);
    assert_ne!(base["logprobs"], a["logprobs"]);
    let p = expect_exit(
        codex()
            .args([
                "export",
                &merged.display().to_string(),
                "--merge-lora",
                "-o",
            ])
            .arg(dir.path().join("x")),
        1,
    );
    assert!(p.stderr.contains("no LoRA adapter"), "{}", p.stderr);
}

/// Trains a tiny Llama (byte tokenizer) into `dir/run`.
pub fn train_tiny_llama(dir: &Path) -> std::path::PathBuf {
    train_tiny(dir, &["model.preset=\"llama-tiny\""])
}

#[test]
#[ignore = "needs the gguf package from scripts/test-assets.sh (CODEX_TEST_PYTHON)"]
fn gguf_export_reads_in_the_python_gguf_package() {
    let py = crate::support::asset_var("CODEX_TEST_PYTHON");
    let dir = tempdir();
    let run = train_tiny_llama(dir.path());
    let hf = dir.path().join("hf");
    codex()
        .args(["export", &run.display().to_string(), "-o"])
        .arg(&hf)
        .assert()
        .success();
    for (ty, tol) in [("f32", 0.0), ("f16", 1.0 / 1024.0), ("q8_0", 1.0 / 127.0)] {
        let out = dir.path().join(ty);
        codex()
            .args([
                "export",
                &run.display().to_string(),
                "--format",
                "gguf",
                "--dtype",
                ty,
                "-o",
            ])
            .arg(&out)
            .assert()
            .success();
        let o = std::process::Command::new(&py)
            .arg(crate::support::fixture("export/gguf_check.py"))
            .arg(out.join("model.gguf"))
            .arg(&hf)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["arch"], "llama");
        let t = j["tensors"].as_object().unwrap();
        assert!(t.len() > 10, "{j}");
        for (name, rel) in t {
            let rel = rel.as_f64().unwrap();
            assert!(
                rel <= tol,
                "{ty} {name}: max |gguf - hf| / max |w| = {rel} > {tol}"
            );
        }
        // codex reads it back and generates what the run does (f32: the same tokens).
        if ty == "f32" {
            // GGUF files carry no tokenizer here: name it.
            let g = greedy_with(&out.join("model.gguf"), &["--tokenizer", "byte"]);
            assert_eq!(greedy(&run)["ids"], g["ids"]);
        }
    }
}

#[test]
fn gguf_export_refuses_gpt2_and_unmerged_lora() {
    let dir = tempdir();
    let run = train_tiny(dir.path(), &[]);
    let p = expect_exit(
        codex()
            .args([
                "export",
                &run.display().to_string(),
                "--format",
                "gguf",
                "-o",
            ])
            .arg(dir.path().join("g")),
        1,
    );
    assert!(p.stderr.contains("llama family"), "{}", p.stderr);
}
