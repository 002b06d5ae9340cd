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

/// The Python with torch + transformers + peft (`scripts/interop.sh` sets it).
fn torch_python() -> std::path::PathBuf {
    crate::support::asset_var("CODEX_TORCH_PYTHON")
}

/// codex's f32 logits `[T, V]` for `ids` from `source`, through the library the CLI uses.
fn codex_logits(source: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    use codex_registry::candle_core::{DType, Device, Tensor};
    let m =
        codex_registry::load_pretrained(&source.display().to_string(), &Device::Cpu, DType::F32)
            .unwrap();
    let x = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    m.forward(&x, false)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// Exports `run` (with `extra` export flags) and checks it in `transformers`: the tokenizer's
/// ids equal codex's, logits within 1e-4 of `logits_of`'s, greedy generation token for token.
fn check_in_transformers(run: &Path, out: &Path, extra: &[&str], adapter: bool) {
    codex()
        .args(["export", &run.display().to_string(), "-o"])
        .arg(out)
        .args(extra)
        .assert()
        .success();
    let prompt = "def f12(x):\n    return";
    let n = 16;
    // The raw model against transformers: no banned-token mask or output redaction.
    let g = stdout_json(codex().args([
        "--json",
        "generate",
        &run.display().to_string(),
        "-p",
        prompt,
        "-t",
        "0",
        "-n",
        &n.to_string(),
        "--no-safety",
    ]));
    let ids: Vec<u32> = g["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let mut cmd = std::process::Command::new(torch_python());
    cmd.arg(crate::support::fixture("export/hf_check.py"))
        .arg(out)
        .arg(prompt)
        .arg(serde_json::to_string(&ids).unwrap())
        .arg(n.to_string());
    if adapter {
        cmd.arg(out.join("adapter"));
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let py: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(py["prompt_ids"], g["prompt_ids"], "tokenizer ids differ");
    assert_eq!(py["decoded"], prompt);
    let ours = codex_logits(run, &ids);
    let theirs = py["logits"].as_array().unwrap();
    let mut worst = 0f64;
    for (r, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let b = b.as_array().unwrap();
        assert_eq!(a.len(), b.len(), "row {r}: vocab");
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((*x as f64 - y.as_f64().unwrap()).abs());
        }
    }
    eprintln!(
        "{}: max |codex - transformers| logits = {worst:e} ({})",
        out.display(),
        py["class"]
    );
    assert!(worst < 1e-4, "logits differ by {worst}");
    assert_eq!(
        py["generated"], g["samples"][0]["ids"],
        "greedy tokens differ"
    );
}

#[test]
#[ignore = "needs torch + transformers (CODEX_TORCH_PYTHON; scripts/interop.sh)"]
fn gpt2_and_llama_exports_match_transformers() {
    let dir = tempdir();
    let gpt = train_tiny(&dir.path().join("g").tap_mkdir(), &[]);
    check_in_transformers(&gpt, &dir.path().join("gpt-hf"), &[], false);
    let llama = train_tiny_llama(&dir.path().join("l").tap_mkdir());
    check_in_transformers(&llama, &dir.path().join("llama-hf"), &[], false);
    // A trained BPE tokenizer travels with its ids.
    let bpe = train_tiny(
        &dir.path().join("b").tap_mkdir(),
        &["tokenizer.kind=\"train\"", "tokenizer.vocab_size=300"],
    );
    check_in_transformers(&bpe, &dir.path().join("bpe-hf"), &[], false);
}

#[test]
#[ignore = "needs torch + transformers + peft (CODEX_TORCH_PYTHON; scripts/interop.sh)"]
fn lora_exports_match_transformers_and_peft() {
    let dir = tempdir();
    for (name, preset) in [("g", "gpt-tiny"), ("l", "llama-tiny")] {
        let run = train_tiny(
            &dir.path().join(name).tap_mkdir(),
            &[
                &format!("model.preset=\"{preset}\""),
                "model.lora.enabled=true",
                "model.lora.r=4",
                "optimizer.lr=3e-2",
            ],
        );
        check_in_transformers(
            &run,
            &dir.path().join(format!("{name}-merged")),
            &["--merge-lora"],
            false,
        );
        check_in_transformers(&run, &dir.path().join(format!("{name}-adapter")), &[], true);
    }
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// Trains a tiny Llama with a trained byte-level BPE (300 tokens) and exports it as GGUF.
fn bpe_llama_gguf(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let run = train_tiny(
        dir,
        &[
            "model.preset=\"llama-tiny\"",
            "tokenizer.kind=\"train\"",
            "tokenizer.vocab_size=300",
        ],
    );
    let out = dir.join("gguf");
    codex()
        .args([
            "export",
            &run.display().to_string(),
            "--format",
            "gguf",
            "-o",
        ])
        .arg(&out)
        .assert()
        .success();
    (run, out.join("model.gguf"))
}

#[test]
fn gguf_export_carries_the_tokenizer() {
    let dir = tempdir();
    let (run, gguf) = bpe_llama_gguf(dir.path());
    // No --tokenizer: the GGUF's own metadata tokenizes and decodes as the run's tokenizer.
    let from_gguf = greedy(&gguf);
    let from_run = greedy(&run);
    assert_eq!(from_gguf["ids"], from_run["ids"]);
    assert_eq!(from_gguf["text"], from_run["text"]);
    let j = stdout_json(codex().args([
        "--json",
        "generate",
        &gguf.display().to_string(),
        "-p",
        "def f(x):\n    return x",
        "-n",
        "1",
    ]));
    let r = stdout_json(codex().args([
        "--json",
        "generate",
        &run.display().to_string(),
        "-p",
        "def f(x):\n    return x",
        "-n",
        "1",
    ]));
    assert_eq!(j["prompt_ids"], r["prompt_ids"]);
    // Fewer ids than bytes: the merges are in use.
    assert!(
        j["prompt_ids"].as_array().unwrap().len() < 21,
        "{}",
        j["prompt_ids"]
    );
    // The byte tokenizer travels too (a merge-less vocabulary, `default` pre-tokenizer).
    std::fs::create_dir_all(dir.path().join("byte")).unwrap();
    let byte_run = train_tiny_llama(&dir.path().join("byte"));
    let out = dir.path().join("byte-gguf");
    codex()
        .args([
            "export",
            &byte_run.display().to_string(),
            "--format",
            "gguf",
            "-o",
        ])
        .arg(&out)
        .assert()
        .success();
    assert_eq!(
        greedy(&out.join("model.gguf"))["ids"],
        greedy(&byte_run)["ids"]
    );
}

#[test]
#[ignore = "needs the gguf package from scripts/test-assets.sh (CODEX_TEST_PYTHON)"]
fn gguf_tokenizer_reads_in_the_python_gguf_package_as_tokenizer_json() {
    let py = crate::support::asset_var("CODEX_TEST_PYTHON");
    let dir = tempdir();
    let (run, gguf) = bpe_llama_gguf(dir.path());
    let hf = dir.path().join("hf");
    codex()
        .args(["export", &run.display().to_string(), "-o"])
        .arg(&hf)
        .assert()
        .success();
    let o = std::process::Command::new(&py)
        .arg(crate::support::fixture("export/gguf_tokenizer.py"))
        .arg(&gguf)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g: Value = serde_json::from_slice(&o.stdout).unwrap();
    let tj = read_json(&hf.join("tokenizer.json"));
    assert_eq!(g["model"], "gpt2");
    assert_eq!(g["pre"], "gpt-2");
    // Tokens in id order = tokenizer.json's vocabulary (and added tokens) by id.
    let tokens = g["tokens"].as_array().unwrap();
    let vocab = tj["model"]["vocab"].as_object().unwrap();
    let mut by_id: Vec<Option<String>> = vec![None; tokens.len()];
    for (t, id) in vocab {
        by_id[id.as_u64().unwrap() as usize] = Some(t.clone());
    }
    for a in tj["added_tokens"].as_array().unwrap() {
        by_id[a["id"].as_u64().unwrap() as usize] = Some(a["content"].as_str().unwrap().into());
    }
    for (i, t) in tokens.iter().enumerate() {
        match &by_id[i] {
            Some(s) => assert_eq!(t.as_str().unwrap(), s, "token {i}"),
            None => assert_eq!(g["token_type"][i], 5, "token {i} is padding"),
        }
    }
    assert_eq!(g["token_type"].as_array().unwrap().len(), tokens.len());
    let merges: Vec<String> = tj["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            _ => panic!("{m}"),
        })
        .collect();
    assert!(!merges.is_empty());
    let gm: Vec<String> = g["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    assert_eq!(gm, merges);
}
