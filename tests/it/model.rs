//! `codex model list|show|lora merge` through the real binary.

use crate::support::{assert_ok, codex, codex_limited, fixture, json_of, tempdir};
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

/// A copy of a fixture model directory in `dir`.
fn copy_model(from: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let to = dir.join(from.rsplit('/').next().unwrap());
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(fixture(from)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to
}

#[test]
fn absurd_config_sizes_and_lora_ranks_are_errors_not_aborts() {
    // Regression: each aborted (exit 134) allocating hundreds of GB.
    let dir = tempdir();
    let m = copy_model("registry/gpt2-tiny", dir.path());
    let cfg = m.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["n_layer"] = 1_000_000_000u64.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    for extra in [&[][..], &["--lora-r", "8"][..]] {
        codex_limited()
            .args(["model", "show"])
            .arg(&m)
            .args(extra)
            .assert()
            .code(1)
            .stderr(contains("config.json").and(contains("`n_layer` 1000000000 exceeds")));
    }
    codex_limited()
        .args(["model", "show", "gpt-tiny", "--lora-r", "100000000"])
        .assert()
        .code(1)
        .stderr(contains("r = 100000000 exceeds the smaller dimension"));
    codex_limited()
        .args(["model", "show", "gpt2", "--vocab-size", "4000000000"])
        .assert()
        .code(1)
        .stderr(contains("`vocab_size` 4000000000 exceeds"));
    // Within every bound, but 13e9 parameters: refused against the memory limit.
    codex_limited()
        .args([
            "model",
            "show",
            "gpt2",
            "--vocab-size",
            "16777216",
            "--lora-r",
            "8",
        ])
        .assert()
        .code(1)
        .stderr(contains("12970744320 parameters of 4 bytes need"));
}

#[test]
fn show_checks_tensor_offsets_against_the_file() {
    let dir = tempdir();
    let m = copy_model("registry/gpt2-tiny", dir.path());
    let st = m.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    // Regression: exit 0 for a half-truncated file.
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    codex()
        .args(["model", "show"])
        .arg(&m)
        .assert()
        .code(1)
        .stderr(contains("model.safetensors").and(contains("(truncated file?)")));
    // Regression: a [2^40, 2^40] tensor counted as 0 parameters (integer wrap).
    let header =
        br#"{"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend([0u8; 4]);
    std::fs::write(&st, file).unwrap();
    codex()
        .args(["model", "show"])
        .arg(&m)
        .assert()
        .code(1)
        .stderr(contains(
            "tensor `w`: shape [1099511627776, 1099511627776] has more than 2^64",
        ));
}

#[test]
fn show_checks_gguf_tensor_offsets_against_the_file() {
    let dir = tempdir();
    let g = dir.path().join("t.gguf");
    let bytes = std::fs::read(fixture("registry/llama-tiny.q8_0.gguf")).unwrap();
    std::fs::write(&g, &bytes[..bytes.len() - 100]).unwrap();
    codex_limited()
        .args(["model", "show"])
        .arg(&g)
        .assert()
        .code(1)
        .stderr(contains("t.gguf").and(contains("(truncated?)")));
}
