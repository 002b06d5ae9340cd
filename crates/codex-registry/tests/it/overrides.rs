//! `model.overrides`: each architecture's sizes under HF's names, validated together.

use codex_registry::registry::preset_config;
use codex_registry::{ArchConfig, PresetOverrides};

#[test]
fn gpt2_and_llama_sizes_apply() {
    let o = PresetOverrides {
        n_layer: Some(3),
        n_head: Some(4),
        n_embd: Some(64),
        n_positions: Some(32),
        tie_word_embeddings: Some(false),
        ..Default::default()
    };
    let ArchConfig::Gpt2(c) = preset_config("gpt-tiny", &o).unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.n_layer, c.n_head, c.n_embd, c.n_positions),
        (3, 4, 64, 32)
    );
    assert!(!c.tie_word_embeddings);
    let o = PresetOverrides {
        num_hidden_layers: Some(2),
        hidden_size: Some(96),
        intermediate_size: Some(160),
        num_attention_heads: Some(6),
        num_key_value_heads: Some(3),
        rope_theta: Some(5e5),
        tie_word_embeddings: Some(true),
        ..Default::default()
    };
    let ArchConfig::Llama(c) = preset_config("llama-tiny", &o).unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.intermediate_size),
        (2, 96, 160)
    );
    assert_eq!(
        (c.num_attention_heads, c.kv_heads(), c.head_dim()),
        (6, 3, 16)
    );
    assert_eq!(c.rope_theta, 5e5);
    assert!(c.tie_word_embeddings);
}

#[test]
fn every_problem_is_reported_at_once() {
    let o = PresetOverrides {
        n_layer: Some(0),
        n_head: Some(3),
        n_embd: Some(100),
        num_hidden_layers: Some(2),
        bias: Some(false),
        dropout: Some(1.5),
        ..Default::default()
    };
    let e = preset_config("gpt-tiny", &o).unwrap_err().to_string();
    for want in [
        "`n_layer` must be > 0",
        "multiple of `n_head`",
        "`num_hidden_layers` is not a gpt2 key",
        "bias = false",
        "`dropout` must be in [0, 1)",
    ] {
        assert!(e.contains(want), "missing `{want}` in: {e}");
    }
    let o = PresetOverrides {
        hidden_size: Some(100),
        num_attention_heads: Some(6),
        num_key_value_heads: Some(4),
        n_embd: Some(64),
        max_positions: Some(64),
        max_position_embeddings: Some(128),
        ..Default::default()
    };
    let e = preset_config("llama-tiny", &o).unwrap_err().to_string();
    for want in [
        "`hidden_size` (100) must be a multiple of `num_attention_heads` (6)",
        "multiple of `num_key_value_heads` (4)",
        "`n_embd` is not a llama key",
        "disagree",
    ] {
        assert!(e.contains(want), "missing `{want}` in: {e}");
    }
}
