//! Autoregressive decoding over a [`KvCache`]: the prompt is run once (prefill), then each new
//! token costs one single-position forward. Sampling follows HF's logits processors in HF's
//! order (repetition penalty, temperature, top-k, top-p), so greedy decoding matches
//! `transformers`' `generate(do_sample=False)` token for token.

use crate::error::{RegistryError, Result};
use crate::kv::KvCache;
use crate::model::Model;
use candle_core::{DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (argmax, the lowest id on ties, as torch's argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1 = all.
    pub top_p: f32,
    /// HF's CTRL-style penalty on tokens already in the sequence; 1 = none.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl Sampling {
    /// Every out-of-range value at once.
    pub fn validate(&self) -> Result<()> {
        let mut bad = vec![];
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bad.push(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bad.push(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            bad.push(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(RegistryError::Invalid(bad.join("; ")))
        }
    }
}

/// One chosen token: its id and its log-probability under the model (the raw logits'
/// log-softmax, before any sampling processor).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Token {
    pub id: u32,
    pub logprob: f32,
}

/// A decoding session on one sequence: the model, its cache, the sequence so far and the RNG.
pub struct Decoder<'m> {
    model: &'m Model,
    cache: KvCache,
    /// Prompt and generated ids (the repetition penalty looks at all of them).
    pub ids: Vec<u32>,
    /// Logits `[V]` (f32) for the next position.
    next: Vec<f32>,
    sampling: Sampling,
    rng: ChaCha8Rng,
}

impl<'m> Decoder<'m> {
    /// Runs the prompt through the model once (prefill).
    pub fn new(model: &'m Model, prompt: &[u32], sampling: Sampling) -> Result<Self> {
        sampling.validate()?;
        if !model.is_causal_lm() {
            return Err(RegistryError::Invalid(format!(
                "{} is a {} encoder; only causal language models generate",
                model.origin,
                model.arch_name()
            )));
        }
        if prompt.is_empty() {
            return Err(RegistryError::Invalid(
                "the prompt is empty: generation needs at least one token".into(),
            ));
        }
        let vocab = model.vocab_size();
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(RegistryError::Invalid(format!(
                "prompt token id {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        let mut cache = KvCache::new();
        let ids_t = Tensor::from_slice(prompt, (1, prompt.len()), model.device())?;
        let logits = model.forward_cached(&ids_t, &mut cache)?;
        let next = last_logits(&logits)?;
        let rng = ChaCha8Rng::seed_from_u64(sampling.seed);
        Ok(Self {
            model,
            cache,
            ids: prompt.to_vec(),
            next,
            sampling,
            rng,
        })
    }

    /// A copy of this session (shared prefill) that samples from RNG stream `stream`.
    pub fn fork(&self, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(self.sampling.seed);
        rng.set_stream(stream);
        Self {
            model: self.model,
            cache: self.cache.clone(),
            ids: self.ids.clone(),
            next: self.next.clone(),
            sampling: self.sampling.clone(),
            rng,
        }
    }

    /// Positions left before the model's context is full.
    pub fn room(&self) -> usize {
        self.model.max_positions().saturating_sub(self.cache.len())
    }

    /// The logits for the next position (f32, `[V]`).
    pub fn next_logits(&self) -> &[f32] {
        &self.next
    }

    /// Chooses the next token from the current logits.
    pub fn choose(&mut self) -> Token {
        self.choose_masked(&[], &[])
            .expect("an empty mask leaves every token")
    }

    /// Chooses the next token with the logits of every id in `masks` set to −inf first
    /// (after the repetition penalty, before temperature, top-k and top-p), so no processor or
    /// draw can pick one. `None` when every token is masked. The log-prob reported is still the
    /// raw model's.
    pub fn choose_masked(&mut self, mask_a: &[u32], mask_b: &[u32]) -> Option<Token> {
        let logprob_of = log_softmax_at(&self.next);
        let mut l = self.next.clone();
        apply_repetition_penalty(&mut l, &self.ids, self.sampling.repetition_penalty);
        for &b in mask_a.iter().chain(mask_b) {
            if let Some(x) = l.get_mut(b as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
        if !mask_a.is_empty() || !mask_b.is_empty() {
            l.iter().any(|&x| x > f32::NEG_INFINITY).then_some(())?;
        }
        let id = if self.sampling.temperature == 0.0 {
            argmax(&l)
        } else {
            let u = (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            sample(&mut l, &self.sampling, u)
        };
        Some(Token {
            id,
            logprob: logprob_of(id as usize),
        })
    }

    /// Appends `token` and runs one cached forward step for the position after it.
    pub fn push(&mut self, token: u32) -> Result<()> {
        self.ids.push(token);
        let t = Tensor::from_slice(&[token], (1, 1), self.model.device())?;
        let logits = self.model.forward_cached(&t, &mut self.cache)?;
        self.next = last_logits(&logits)?;
        Ok(())
    }
}

/// The last position's logits of `[1, T, V]` as f32.
fn last_logits(logits: &Tensor) -> Result<Vec<f32>> {
    let t = logits.dim(1)?;
    Ok(logits
        .narrow(1, t - 1, 1)?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec1()?)
}

/// `log_softmax(logits)[i]` as a closure over the normaliser (computed once, in f64).
fn log_softmax_at(logits: &[f32]) -> impl Fn(usize) -> f32 + '_ {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    move |i| (logits[i] as f64 - lse) as f32
}

/// The first index of the largest value (NaN never wins).
pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] || (l[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best as u32
}

/// HF `RepetitionPenaltyLogitsProcessor`: a seen token's logit is divided by `p` when
/// positive and multiplied by it when negative.
pub fn apply_repetition_penalty(l: &mut [f32], seen: &[u32], p: f32) {
    if p == 1.0 {
        return;
    }
    let mut done = vec![false; l.len()];
    for &t in seen {
        let i = t as usize;
        if i < l.len() && !done[i] {
            done[i] = true;
            l[i] = if l[i] > 0.0 { l[i] / p } else { l[i] * p };
        }
    }
}

/// Temperature, top-k and top-p (HF's order), then inverse-CDF sampling with `u` in [0, 1).
fn sample(l: &mut [f32], s: &Sampling, u: f64) -> u32 {
    for x in l.iter_mut() {
        *x /= s.temperature;
    }
    // Candidates by descending logit; ties by id so the order is deterministic. Masked
    // (−inf) ids are left out, so not even the rounding fallback below can pick one.
    let mut order: Vec<usize> = (0..l.len())
        .filter(|&i| !l[i].is_nan() && l[i] > f32::NEG_INFINITY)
        .collect();
    order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
    if s.top_k > 0 && s.top_k < order.len() {
        order.truncate(s.top_k);
    }
    let max = order.first().map_or(0.0, |&i| l[i]) as f64;
    let mut probs: Vec<f64> = order.iter().map(|&i| (l[i] as f64 - max).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if s.top_p < 1.0 {
        // Keep tokens until the cumulative probability reaches top_p (at least one).
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (n, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= s.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
        order.truncate(keep);
        probs.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
    }
    let mut cum = 0.0;
    for (n, p) in probs.iter().enumerate() {
        cum += p;
        if u < cum {
            return order[n] as u32;
        }
    }
    order.last().map_or(0, |&i| i as u32)
}

/// The end-of-sequence token ids of a model source: an HF directory's `generation_config.json`
/// `eos_token_id` (an int or a list), else its `config.json`'s; a GGUF file's
/// `tokenizer.ggml.eos_token_id`; a run or checkpoint fine-tuned from a pretrained source, that
/// source's. Empty when the source names none (a run trained from a preset: codex's tokenizers
/// add no end-of-text token to training documents).
pub fn eos_ids(source: &crate::ModelSource) -> Result<Vec<u32>> {
    eos_depth(source, 0)
}

fn eos_depth(source: &crate::ModelSource, depth: usize) -> Result<Vec<u32>> {
    use crate::ModelSource;
    Ok(match source {
        ModelSource::Preset(_) => vec![],
        ModelSource::HfDir(dir) => {
            for f in ["generation_config.json", "config.json"] {
                let p = dir.join(f);
                if !p.is_file() {
                    continue;
                }
                let bytes = codex_core::fsutil::read_regular_capped(&p, 16 << 20)
                    .map_err(crate::error::io_err(&p))?;
                let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                    RegistryError::Invalid(format!("{}: not JSON: {e}", p.display()))
                })?;
                match v.get("eos_token_id") {
                    None | Some(serde_json::Value::Null) => continue,
                    Some(e) => return token_ids(e, &p),
                }
            }
            vec![]
        }
        ModelSource::Gguf(path) => crate::gguf::read_gguf_tokenizer(path)?
            .and_then(|t| t.eos)
            .into_iter()
            .collect(),
        ModelSource::Checkpoint(ck) => {
            let cfg = crate::run::read_run_config(&ck.run)?;
            let pretrained = cfg.model.pretrained.trim();
            if pretrained.is_empty() || depth >= 8 {
                vec![]
            } else {
                eos_depth(&crate::resolve_source(pretrained)?, depth + 1)?
            }
        }
    })
}

/// An `eos_token_id` value: a non-negative int or a list of them.
fn token_ids(v: &serde_json::Value, p: &std::path::Path) -> Result<Vec<u32>> {
    let one = |x: &serde_json::Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                RegistryError::Invalid(format!(
                    "{}: eos_token_id must be a token id or a list of them, got {v}",
                    p.display()
                ))
            })
    };
    match v {
        serde_json::Value::Array(xs) => xs.iter().map(one).collect(),
        x => Ok(vec![one(x)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eos_from_generation_config_int_or_list_else_config() {
        let d = tempfile::tempdir().unwrap();
        let src = crate::ModelSource::HfDir(d.path().to_path_buf());
        assert_eq!(eos_ids(&src).unwrap(), Vec::<u32>::new());
        std::fs::write(d.path().join("config.json"), r#"{"eos_token_id": 7}"#).unwrap();
        assert_eq!(eos_ids(&src).unwrap(), vec![7]);
        std::fs::write(
            d.path().join("generation_config.json"),
            r#"{"eos_token_id": [2, 9]}"#,
        )
        .unwrap();
        assert_eq!(eos_ids(&src).unwrap(), vec![2, 9]);
        std::fs::write(
            d.path().join("generation_config.json"),
            r#"{"eos_token_id": -1}"#,
        )
        .unwrap();
        assert!(
            eos_ids(&src)
                .unwrap_err()
                .to_string()
                .contains("eos_token_id")
        );
    }

    #[test]
    fn masked_ids_are_never_chosen() {
        let mut l = vec![0.5f32, 3.0, 2.0];
        for x in &mut l {
            if *x == 3.0 {
                *x = f32::NEG_INFINITY;
            }
        }
        assert_eq!(argmax(&l), 2);
        let s = Sampling {
            temperature: 1.0,
            ..Sampling::default()
        };
        for u in [0.0, 0.3, 0.6, 0.999] {
            assert_ne!(sample(&mut l.clone(), &s, u), 1);
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.2]), 1);
    }

    #[test]
    fn repetition_penalty_matches_hf() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_draw() {
        let s = Sampling {
            temperature: 0.7,
            top_k: 1,
            ..Sampling::default()
        };
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(sample(&mut [0.1, 2.0, 1.9], &s, u), 1);
        }
    }

    #[test]
    fn top_p_drops_the_tail() {
        // probs ≈ [0.665, 0.245, 0.090]: top_p 0.8 keeps the first two only.
        let s = Sampling {
            top_p: 0.8,
            ..Sampling::default()
        };
        let l = [2.0f32, 1.0, 0.0];
        assert_eq!(sample(&mut l.to_vec(), &s, 0.999), 1);
        assert_eq!(sample(&mut l.to_vec(), &s, 0.1), 0);
        // Without top_p the last token is reachable.
        assert_eq!(sample(&mut l.to_vec(), &Sampling::default(), 0.999), 2);
    }

    #[test]
    fn bad_settings_are_all_reported() {
        let s = Sampling {
            temperature: -1.0,
            top_p: 0.0,
            repetition_penalty: 0.0,
            seed: 0,
            top_k: 0,
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("temperature") && e.contains("top_p") && e.contains("repetition"));
    }
}
