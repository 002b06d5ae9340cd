//! Decoding with the KV cache: the cached forward gives the logits of the full recompute, and
//! sampling is a function of the seed.

use candle_core::{DType, Device, Tensor};
use codex_registry::{Decoder, KvCache, Model, PresetOverrides, Sampling, build_preset};

use crate::support::{fixture, max_diff};

/// Cached vs full-recompute f32 forward: the same ops on the same values, summed in another
/// order (one query row instead of a block); observed max |diff| about 1e-6.
const KV_TOL: f32 = 1e-4;

fn preset(name: &str) -> Model {
    let o = PresetOverrides {
        vocab_size: Some(97),
        ..Default::default()
    };
    build_preset(name, &o, &Device::Cpu, DType::F32, 11).unwrap()
}

fn fixture_model(dir: &str) -> Model {
    codex_registry::load_pretrained(fixture(dir).to_str().unwrap(), &Device::Cpu, DType::F32)
        .unwrap()
}

/// Feeds `ids` as a prefill of `prefill` tokens then in chunks of `chunk`, comparing every
/// position's cached logits with the full forward over the whole sequence.
fn check_cached(m: &Model, prefill: usize, chunk: usize) {
    let n = 24.min(m.max_positions());
    let ids: Vec<u32> = (0..n as u32)
        .map(|i| (i * 31 + 7) % m.vocab_size() as u32)
        .collect();
    let full = m
        .forward(
            &Tensor::from_slice(&ids, (1, n), &Device::Cpu).unwrap(),
            false,
        )
        .unwrap();
    let mut cache = KvCache::new();
    let mut pos = 0;
    while pos < n {
        let len = if pos == 0 { prefill } else { chunk }.min(n - pos);
        let part = Tensor::from_slice(&ids[pos..pos + len], (1, len), &Device::Cpu).unwrap();
        let got = m.forward_cached(&part, &mut cache).unwrap();
        let want = full.narrow(1, pos, len).unwrap();
        let d = max_diff(&got, &want);
        assert!(
            d < KV_TOL,
            "{}: positions {pos}..{}: max |cached - full| = {d}",
            m.origin,
            pos + len
        );
        pos += len;
        assert_eq!(cache.len(), pos);
    }
}

#[test]
fn gpt2_kv_cache_matches_full_forward() {
    let m = preset("gpt-tiny");
    check_cached(&m, 5, 1);
    check_cached(&m, 1, 3);
    check_cached(&fixture_model("gpt2-tiny"), 4, 1);
}

#[test]
fn llama_kv_cache_matches_full_forward() {
    // llama-tiny has grouped-query attention (4 heads, 2 kv heads).
    let m = preset("llama-tiny");
    check_cached(&m, 5, 1);
    check_cached(&m, 2, 4);
    check_cached(&fixture_model("llama-tiny"), 3, 1);
    // Qwen2: q/k/v biases.
    check_cached(&fixture_model("qwen2-tiny"), 3, 2);
}

#[test]
fn cache_refuses_to_run_past_the_context() {
    let m = preset("gpt-tiny");
    let mut cache = KvCache::new();
    let ctx = m.max_positions();
    let ids = Tensor::zeros((1, ctx), DType::U32, &Device::Cpu).unwrap();
    m.forward_cached(&ids, &mut cache).unwrap();
    let one = Tensor::zeros((1, 1), DType::U32, &Device::Cpu).unwrap();
    let e = m.forward_cached(&one, &mut cache).unwrap_err().to_string();
    assert!(e.contains("context length"), "{e}");
}

fn run(m: &Model, s: Sampling, n: usize) -> Vec<u32> {
    let mut d = Decoder::new(m, &[1, 2, 3], s).unwrap();
    let mut out = vec![];
    for _ in 0..n {
        let t = d.choose();
        assert!(t.logprob <= 0.0 && t.logprob.is_finite());
        out.push(t.id);
        d.push(t.id).unwrap();
    }
    out
}

#[test]
fn same_seed_same_tokens_other_seed_other_tokens() {
    let m = preset("llama-tiny");
    let s = |seed| Sampling {
        temperature: 1.5,
        seed,
        ..Sampling::default()
    };
    let a = run(&m, s(1), 20);
    assert_eq!(a, run(&m, s(1), 20));
    assert_ne!(a, run(&m, s(2), 20));
    // Forked streams differ from each other but each is reproducible.
    let d = Decoder::new(&m, &[1, 2, 3], s(1)).unwrap();
    let (mut f0, mut f1) = (d.fork(0), d.fork(1));
    let draw = |f: &mut Decoder| {
        (0..10)
            .map(|_| {
                let t = f.choose();
                f.push(t.id).unwrap();
                t.id
            })
            .collect::<Vec<_>>()
    };
    let x = draw(&mut f0);
    assert_ne!(x, draw(&mut f1));
    assert_eq!(x, draw(&mut d.fork(0)));
}

#[test]
fn greedy_decoding_follows_the_full_forward_argmax() {
    let m = fixture_model("gpt2-tiny");
    let greedy = Sampling {
        temperature: 0.0,
        ..Sampling::default()
    };
    let got = run(&m, greedy, 12);
    // The same tokens by recomputing the whole sequence each step (no cache).
    let mut ids = vec![1u32, 2, 3];
    for _ in 0..12 {
        let t = Tensor::from_slice(&ids, (1, ids.len()), &Device::Cpu).unwrap();
        let l = m.forward(&t, false).unwrap();
        let last: Vec<f32> = l
            .narrow(1, ids.len() - 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        ids.push(codex_registry::generate::argmax(&last));
    }
    assert_eq!(got, ids[3..]);
}

#[test]
fn bad_prompts_are_refused() {
    let m = preset("gpt-tiny");
    let e = Decoder::new(&m, &[], Sampling::default()).err().unwrap();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = Decoder::new(&m, &[500], Sampling::default()).err().unwrap();
    assert!(e.to_string().contains("vocabulary"), "{e}");
}
