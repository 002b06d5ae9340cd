//! GGUF export read back by codex's own GGUF reader: f32 and f16 tensors equal (f16 within
//! its rounding), q8_0 within the format's quantization step.

use candle_core::{DType, Device};
use codex_registry::gguf_write::{GgufType, write_gguf};
use codex_registry::{Model, load_pretrained};
use std::collections::HashMap;

use crate::support::{fixture, max_diff};

fn roundtrip(m: &Model, ty: GgufType) -> Model {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    write_gguf(m, &p, ty, "test").unwrap();
    load_pretrained(p.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap()
}

fn check(m: &Model) {
    let orig: HashMap<String, _> = m.base_state().into_iter().collect();
    let back = roundtrip(m, GgufType::F32);
    // The sizes survive (eps and theta pass through f32 metadata, head_dim is implied).
    let (codex_registry::ArchConfig::Llama(a), codex_registry::ArchConfig::Llama(b)) =
        (back.config(), m.config())
    else {
        panic!("not llama")
    };
    assert_eq!(
        (
            a.vocab_size,
            a.hidden_size,
            a.intermediate_size,
            a.num_hidden_layers
        ),
        (
            b.vocab_size,
            b.hidden_size,
            b.intermediate_size,
            b.num_hidden_layers
        )
    );
    assert_eq!(
        (a.num_attention_heads, a.kv_heads(), a.head_dim()),
        (b.num_attention_heads, b.kv_heads(), b.head_dim())
    );
    assert_eq!(a.tie_word_embeddings, b.tie_word_embeddings);
    assert_eq!(a.max_position_embeddings, b.max_position_embeddings);
    for (n, t) in back.base_state() {
        assert_eq!(
            max_diff(&t, &orig[&n]),
            0.0,
            "{n}: f32 must round-trip exactly"
        );
    }
    for (ty, rel) in [(GgufType::F16, 1.0 / 1024.0), (GgufType::Q8_0, 1.0 / 127.0)] {
        let back = roundtrip(m, ty);
        for (n, t) in back.base_state() {
            let o = &orig[&n];
            let amax: f32 = o
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            // q8_0: each block of 32 stores round(x / d) with d = amax_block / 127 (f16), so
            // the error is at most d / 2 plus the f16 rounding of d; amax / 127 bounds it.
            let d = max_diff(&t, o);
            assert!(d <= amax * rel + 1e-7, "{ty:?} {n}: {d} > {}", amax * rel);
        }
        let ids = candle_core::Tensor::new(&[[1u32, 5, 9, 3, 7]], &Device::Cpu).unwrap();
        let d = max_diff(
            &back.forward(&ids, false).unwrap(),
            &m.forward(&ids, false).unwrap(),
        );
        assert!(d < 0.05, "{ty:?}: logits differ by {d}");
    }
}

#[test]
fn llama_gguf_export_reads_back() {
    check(
        &load_pretrained(
            fixture("llama-tiny").to_str().unwrap(),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap(),
    );
    let o = codex_registry::PresetOverrides {
        vocab_size: Some(96),
        ..Default::default()
    };
    check(&codex_registry::build_preset("llama-tiny", &o, &Device::Cpu, DType::F32, 3).unwrap());
}

#[test]
fn gguf_export_refuses_gpt2() {
    let m = load_pretrained(
        fixture("gpt2-tiny").to_str().unwrap(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = write_gguf(&m, &dir.path().join("x.gguf"), GgufType::F32, "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("llama family"), "{e}");
}
