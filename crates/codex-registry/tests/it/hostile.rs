//! Hostile files and configs: every one an error naming the value, never a panic, an abort or
//! a runaway allocation. Inputs found by the fuzz targets (fuzz/) are kept here.

use candle_core::{DType, Device};
use codex_registry::config::{ArchConfig, LoraConfig};
use codex_registry::registry::{self, PresetOverrides};
use codex_registry::source::parse_safetensors_header;
use serde_json::json;
use std::path::Path;

fn config_err(v: serde_json::Value) -> String {
    ArchConfig::from_hf_json(&v, Path::new("config.json"))
        .unwrap_err()
        .to_string()
}

#[test]
fn config_sizes_are_bounded() {
    let e = config_err(json!({"model_type": "gpt2", "n_layer": 1_000_000_000u64}));
    assert!(
        e.contains("config.json") && e.contains("`n_layer` 1000000000 exceeds"),
        "{e}"
    );
    for (key, v) in [
        ("vocab_size", 1u64 << 30),
        ("hidden_size", 1 << 20),
        ("intermediate_size", 1 << 30),
        ("max_position_embeddings", 1 << 40),
        ("num_hidden_layers", 1 << 20),
    ] {
        let e = config_err(json!({"model_type": "llama", key: v}));
        assert!(e.contains(&format!("`{key}` {v} exceeds")), "{key}: {e}");
    }
    let e = config_err(json!({"model_type": "bert", "type_vocab_size": 1u64 << 40}));
    assert!(e.contains("`type_vocab_size`"), "{e}");
}

#[test]
fn param_count_is_checked() {
    // Unvalidated sizes whose product overflows: no wrap to a small count.
    let cfg = ArchConfig::Gpt2(codex_registry::config::GptConfig {
        n_embd: 1 << 40,
        ..Default::default()
    });
    assert_eq!(cfg.checked_param_count(), None);
    assert_eq!(cfg.param_count(), usize::MAX);
}

#[test]
fn fresh_weights_are_checked_against_memory() {
    // Every size within its bound, ~3e14 parameters together: over the 1 TiB cap on any
    // machine, refused before allocating.
    let v = json!({"model_type": "llama", "hidden_size": 65536, "intermediate_size": 262144,
        "num_hidden_layers": 4096, "num_attention_heads": 512});
    let cfg = ArchConfig::from_hf_json(&v, Path::new("config.json")).unwrap();
    let e = registry::build_from_config(cfg, "huge", &Device::Cpu, DType::F32, 0)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("huge (llama architecture)") && e.contains("parameters of 4 bytes need"),
        "{e}"
    );
}

#[test]
fn lora_rank_is_bounded_by_the_layer_dims() {
    let mut m = registry::build_preset(
        "gpt-tiny",
        &PresetOverrides::default(),
        &Device::Cpu,
        DType::F32,
        0,
    )
    .unwrap();
    let lc = LoraConfig {
        r: 100_000_000,
        ..Default::default()
    };
    let e = codex_registry::apply_lora(&mut m, lc, 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("r = 100000000 exceeds the smaller dimension"),
        "{e}"
    );
}

fn header(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn safetensors_headers_are_checked_against_the_data() {
    let ok = header(
        json!({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "BF16", "shape": [], "data_offsets": [24, 26]}}),
    );
    let t = parse_safetensors_header(&ok, 26).unwrap();
    assert_eq!(t.iter().map(|t| t.elements).sum::<u64>(), 7);
    // Truncated: offsets past the data section.
    let e = parse_safetensors_header(&ok, 13).unwrap_err();
    assert!(e.contains("outside the 13-byte data section"), "{e}");
    // [2^40, 2^40] counted as 0 parameters before (u64 wrap).
    let wrap = header(
        json!({"w": {"dtype": "F32", "shape": [1u64 << 40, 1u64 << 40],
        "data_offsets": [0, 4]}}),
    );
    let e = parse_safetensors_header(&wrap, 4).unwrap_err();
    assert!(e.contains("more than 2^64 elements"), "{e}");
    // dtype × shape disagrees with the offsets.
    let short = header(json!({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}));
    let e = parse_safetensors_header(&short, 8).unwrap_err();
    assert!(e.contains("needs 16 bytes"), "{e}");
    // Gaps, unknown dtypes and non-integer shapes.
    let gap = header(json!({"w": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}));
    assert!(
        parse_safetensors_header(&gap, 8)
            .unwrap_err()
            .contains("gap")
    );
    let dt = header(json!({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 4]}}));
    assert!(
        parse_safetensors_header(&dt, 4)
            .unwrap_err()
            .contains("unknown dtype")
    );
    let sh = header(json!({"w": {"dtype": "U8", "shape": [-4], "data_offsets": [0, 4]}}));
    assert!(
        parse_safetensors_header(&sh, 4)
            .unwrap_err()
            .contains("not a list of sizes")
    );
}

/// A GGUF v3 file: metadata `(key, u32 value)` pairs and one F32 tensor of `dims` at `offset`.
fn gguf(meta: &[(&str, u32)], dims: &[u64], offset: u64, data: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    let s = |b: &mut Vec<u8>, t: &str| {
        b.extend((t.len() as u64).to_le_bytes());
        b.extend(t.as_bytes());
    };
    for (k, v) in meta {
        s(&mut b, k);
        b.extend(4u32.to_le_bytes());
        b.extend(v.to_le_bytes());
    }
    s(&mut b, "token_embd.weight");
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(0u32.to_le_bytes()); // F32
    b.extend(offset.to_le_bytes());
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(vec![0u8; data]);
    b
}

fn gguf_err(bytes: Vec<u8>) -> String {
    codex_registry::gguf::read_gguf_header(&mut std::io::Cursor::new(bytes))
        .err()
        .unwrap_or_default()
}

#[test]
fn gguf_tensor_data_must_lie_inside_the_file() {
    assert!(
        codex_registry::gguf::read_gguf_header(&mut std::io::Cursor::new(gguf(
            &[],
            &[4, 2],
            0,
            32
        )))
        .is_ok()
    );
    let e = gguf_err(gguf(&[], &[4, 2], 0, 31));
    assert!(e.contains("ends past the"), "{e}");
    let e = gguf_err(gguf(&[], &[4, 2], u64::MAX - 8, 32));
    assert!(e.contains("ends past the"), "{e}");
    let e = gguf_err(gguf(&[], &[1 << 40, 1 << 40], 0, 32));
    assert!(e.contains("overflows"), "{e}");
    // candle divides by the alignment unchecked.
    let e = gguf_err(gguf(&[("general.alignment", 0)], &[4, 2], 0, 32));
    assert!(e.contains("`general.alignment` is 0"), "{e}");
}
