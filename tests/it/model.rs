//! `codex model list|show|lora merge` through the real binary.

use crate::support::{assert_ok, codex, fixture, json_of, tempdir};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

#[test]
fn list_shows_architectures_and_presets() {
    codex().args(["model", "list"]).assert().success().stdout(
        contains("gpt2")
            .and(contains("llama"))
            .and(contains("bert"))
            .and(contains("gpt-tiny")),
    );
    let out = codex().args(["--json", "model", "list"]).output().unwrap();
    assert_ok(&out);
    let v = json_of(&out.stdout);
    let presets = v["presets"].as_array().unwrap();
    let gpt2 = presets.iter().find(|p| p["name"] == "gpt2").unwrap();
    assert_eq!(gpt2["params"], 124_439_808);
    assert_eq!(v["architectures"].as_array().unwrap().len(), 3);
}

#[test]
fn show_hf_dir_reports_params_dtype_hashes() {
    let dir = fixture("registry/gpt2-tiny");
    let out = codex()
        .args(["--json", "model", "show"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_ok(&out);
    let v = json_of(&out.stdout);
    assert_eq!(v["architecture"], "gpt2");
    // 2 layers, d=32, vocab 101, ctx 32, tied head: 101·32 + 32·32 + 2·12704 + 64, which is
    // also `sum(p.numel() for p in GPT2LMHeadModel.parameters())` for this config.
    assert_eq!(v["params"]["total"], 29_728);
    assert_eq!(v["dtype"], "f32");
    let st = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("model.safetensors"))
        .unwrap();
    let (sha, _) = codex_core_sha(&dir.join("model.safetensors"));
    assert_eq!(st["sha256"], sha);
}

fn codex_core_sha(p: &std::path::Path) -> (String, u64) {
    codex_core::hash::sha256_file(p).unwrap()
}

#[test]
fn show_with_adapter_counts_only_adapter_as_trainable() {
    let out = codex()
        .args(["--json", "model", "show"])
        .arg(fixture("registry/llama-tiny"))
        .arg("--adapter")
        .arg(fixture("registry/llama-tiny-lora"))
        .output()
        .unwrap();
    assert_ok(&out);
    let v = json_of(&out.stdout);
    let lora = v["params"]["lora"].as_u64().unwrap();
    assert!(lora > 0);
    assert_eq!(v["params"]["trainable"].as_u64().unwrap(), lora);
    assert_eq!(v["lora"]["r"], 4);
}

#[test]
fn show_unknown_model_is_exit_1_with_hint() {
    codex()
        .args(["model", "show", "no-such-preset"])
        .assert()
        .code(1)
        .stderr(contains("no-such-preset").and(contains("see `codex model list`")));
    let cache = tempdir();
    codex()
        .env("HF_HUB_CACHE", cache.path())
        .args(["model", "show", "acme/missing@main"])
        .assert()
        .code(1)
        .stderr(contains("not in the local hf-hub cache").and(contains("models--acme--missing")));
}

#[test]
fn lora_merge_writes_an_hf_dir_equal_to_peft_logits() {
    let out = tempdir();
    let merged = out.path().join("merged");
    let merge = || {
        let mut cmd = codex();
        cmd.args(["model", "lora", "merge", "--base"])
            .arg(fixture("registry/gpt2-tiny"))
            .arg("--adapter")
            .arg(fixture("registry/gpt2-tiny-lora"))
            .arg("--out")
            .arg(&merged);
        cmd
    };
    merge()
        .assert()
        .success()
        .stdout(contains("model.safetensors"));
    assert!(merged.join("config.json").is_file());
    // The merged directory loads as a plain model whose logits equal PEFT's adapter logits.
    let m = codex_registry::load_pretrained(
        merged.to_str().unwrap(),
        &codex_registry::candle_core::Device::Cpu,
        codex_registry::candle_core::DType::F32,
    )
    .unwrap();
    let e = codex_registry::source::read_safetensors(
        &fixture("registry/gpt2-tiny-lora").join("expected.safetensors"),
        &codex_registry::candle_core::Device::Cpu,
    )
    .unwrap();
    let logits = m
        .forward(
            &e["input_ids"]
                .to_dtype(codex_registry::candle_core::DType::U32)
                .unwrap(),
            false,
        )
        .unwrap();
    let d: f32 = (logits - &e["logits"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d < 1e-4, "merged logits differ from PEFT's by {d}");
    // A second merge into the same directory is refused without --force.
    merge().assert().code(1).stderr(contains("--force"));
}

#[test]
fn show_lora_r_counts_a_fresh_adapter_and_validates_targets() {
    let out = codex()
        .args(["--json", "model", "show", "--no-hash", "--lora-r", "4"])
        .arg(fixture("registry/gpt2-tiny"))
        .output()
        .unwrap();
    assert_ok(&out);
    let v = json_of(&out.stdout);
    // PEFT's default target for GPT-2 is c_attn: 2 layers × (A 4×32 + B 96×4).
    assert_eq!(v["params"]["lora"], 1024);
    assert_eq!(v["params"]["trainable"], 1024);
    assert_eq!(v["params"]["total"], 29_728 + 1024);
    codex()
        .args([
            "model",
            "show",
            "gpt-tiny",
            "--lora-r",
            "4",
            "--lora-targets",
            "q_proj",
        ])
        .assert()
        .code(1)
        .stderr(contains("q_proj").and(contains("c_attn, c_fc, c_proj")));
}
