//! [`Model`], the type the trainer drives: an architecture, its HF-named parameters and an
//! optional LoRA adapter. `Model::build` is the one place a config and weights (fresh or
//! loaded) become a model.

use crate::arch::{self, Architecture};
use crate::config::{ArchConfig, LoraConfig};
use crate::error::{RegistryError, Result};
use crate::kv::KvCache;
use crate::nn::{DropoutGen, Fwd, Linear, lm_head};
use crate::params::Builder;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Parameter counts; `trainable` is what [`Model::named_trainable`] hands the optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ParamCounts {
    /// Base weights plus LoRA adapters.
    pub total: usize,
    pub trainable: usize,
    /// LoRA adapter parameters (0 without LoRA).
    pub lora: usize,
}

/// A model on a device: an architecture, its HF-named parameters and an optional LoRA adapter.
pub struct Model {
    arch: Box<dyn Architecture>,
    config: ArchConfig,
    params: Vec<(String, Var)>,
    pub(crate) lora: Option<LoraConfig>,
    device: Device,
    dtype: DType,
    dropout: DropoutGen,
    /// Where the model came from (preset name or path), for messages and adapter configs.
    pub origin: String,
}

impl Model {
    /// Validates `config`, builds its architecture from `b`'s weights and warns about loaded
    /// tensors the architecture does not use.
    fn build(config: ArchConfig, mut b: Builder, origin: String) -> Result<Self> {
        config
            .validate()
            .map_err(|msg| RegistryError::Invalid(format!("{origin}: {msg}")))?;
        let arch = arch::build(&config, &mut b)?;
        let (device, dtype) = (b.device.clone(), b.dtype);
        let (params, left) = b.finish();
        let unused: Vec<&String> = left.iter().filter(|n| !arch::ignorable(n)).collect();
        if !unused.is_empty() {
            tracing::warn!(
                "{origin}: {} tensor(s) not used by the {} architecture: {}",
                unused.len(),
                config.arch_name(),
                unused
                    .iter()
                    .take(8)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(Self {
            arch,
            config,
            params,
            lora: None,
            device,
            dtype,
            dropout: DropoutGen {
                seed: AtomicU64::new(0),
                counter: AtomicU64::new(0),
            },
            origin,
        })
    }

    /// Builds the model from HF-named tensors (checked by name and shape).
    pub fn from_tensors(
        config: ArchConfig,
        mut tensors: HashMap<String, Tensor>,
        origin: &str,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        arch::normalize_names(&config, &mut tensors);
        let b = Builder::from_tensors(tensors, origin.to_string(), device, dtype);
        Self::build(config, b, origin.to_string())
    }

    /// Builds the model with fresh weights drawn from `seed` (HF's init: N(0,
    /// initializer_range), norms 1/0, biases 0) and seeds dropout with it.
    pub(crate) fn init(
        config: ArchConfig,
        origin: &str,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        // Validated first so the size check below sees bounded values.
        config
            .validate()
            .map_err(|msg| RegistryError::Invalid(format!("{origin}: {msg}")))?;
        check_memory(
            config.checked_param_count(),
            dtype.size_in_bytes(),
            &format!("{origin} ({} architecture)", config.arch_name()),
        )?;
        let model = Self::build(
            config,
            Builder::init(device, dtype, seed),
            origin.to_string(),
        )?;
        model.set_dropout_state(seed, 0);
        Ok(model)
    }

    fn fwd(&self, train: bool) -> Fwd<'_> {
        Fwd {
            frozen: self.lora.is_some(),
            train,
            drop: &self.dropout,
            upcast: self.computes_in_f32(),
        }
    }

    /// Whether the forward pass computes in f32 over parameters stored in a narrower dtype: on
    /// the CPU, candle's bf16/f16 kernels are scalar conversions around f32 arithmetic (27–36×
    /// slower than f32 on `benches/compare_train.sh`) and the fused kernels are f32 only, so
    /// half-precision parameters are stored (and checkpointed) as such and widened on use —
    /// except the linears' weight matrices while `codex_ops::bf16gemm` runs the products in bf16,
    /// which read bf16 weights as stored (`Fwd::matrix`). On CUDA the forward computes in the
    /// parameters' dtype.
    pub fn computes_in_f32(&self) -> bool {
        self.device.is_cpu() && self.dtype != DType::F32
    }

    /// Causal LM logits `[B, T, V]` for `input_ids` `[B, T]` (u32). For BERT, the last hidden
    /// state `[B, T, H]` with every token attended. `train` enables dropout (seeded, see
    /// [`Model::set_dropout_state`]).
    pub fn forward(&self, input_ids: &Tensor, train: bool) -> Result<Tensor> {
        self.check_ids(input_ids)?;
        self.arch.forward(input_ids, &self.fwd(train))
    }

    /// A causal LM's mean next-token cross-entropy of `input_ids` `[B, T]` against `targets`
    /// `[B, T]` (u32), as a scalar tensor. The LM head and the loss are one op
    /// (`codex_ops::linear_cross_entropy`): the `[B·T, V]` logits are computed at most 128 MiB
    /// at a time and overwritten by their own gradient, and with `train` (dropout on, gradients
    /// wanted) the head's gradients are computed in the same pass. Equal to `cross_entropy(forward(..))` (the same GEMMs and per-row sums).
    pub fn loss(&self, input_ids: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor> {
        self.check_ids(input_ids)?;
        let (h, head) = self.arch.causal(input_ids, &self.fwd(train), None)?;
        let (b, t, d) = h.dims3()?;
        Ok(codex_ops::linear_cross_entropy(
            &h.reshape((b * t, d))?,
            &head,
            &targets.flatten_all()?,
            train,
        )?)
    }

    /// Causal LM logits `[B, T, V]` for `input_ids` at positions `cache.len()..`, reusing the
    /// cached keys and values of the earlier positions and appending the new ones
    /// (inference: no dropout). An empty cache gives the same logits as [`Model::forward`].
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.check_ids(input_ids)?;
        let t = input_ids.dim(1)?;
        if cache.len() + t > self.max_positions() {
            return Err(RegistryError::Invalid(format!(
                "{} cached + {t} new positions exceed the model's context length {}",
                cache.len(),
                self.max_positions()
            )));
        }
        let f = self.fwd(false);
        let (h, head) = self.arch.causal(input_ids, &f, Some(cache))?;
        lm_head(&h, &head, &f)
    }

    fn check_ids(&self, ids: &Tensor) -> Result<()> {
        let (_, t) = ids.dims2().map_err(|_| {
            RegistryError::Invalid(format!(
                "input_ids must be [batch, time], got {:?}",
                ids.dims()
            ))
        })?;
        if ids.dtype() != DType::U32 {
            return Err(RegistryError::Invalid(format!(
                "input_ids must be u32, got {:?}",
                ids.dtype()
            )));
        }
        if t == 0 || t > self.max_positions() {
            return Err(RegistryError::Invalid(format!(
                "sequence length {t} outside 1..={} (the model's context length)",
                self.max_positions()
            )));
        }
        Ok(())
    }

    /// BERT encoder: last hidden state `[B, T, H]` with optional token types and 0/1
    /// attention mask `[B, T]`.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        self.check_ids(input_ids)?;
        match self.arch.encoder() {
            Some(e) => e.encode(input_ids, token_type_ids, attention_mask, &self.fwd(train)),
            None => Err(RegistryError::Invalid(format!(
                "encode() needs an encoder model; this is {}",
                self.config.arch_name()
            ))),
        }
    }

    /// Sentence embeddings as sentence-transformers computes them for MiniLM: mean of the
    /// token states over the attention mask, then L2-normalised. Returns `[B, H]` (f32).
    pub fn sentence_embeddings(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let h = self
            .encode(input_ids, None, Some(attention_mask), false)?
            .to_dtype(DType::F32)?;
        let m = attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = h.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norm)?)
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.arch.linears_mut()
    }

    /// HF module paths of every linear layer (the possible LoRA targets), in model order.
    pub fn linear_module_names(&mut self) -> Vec<String> {
        self.linears_mut()
            .into_iter()
            .map(|l| l.name.clone())
            .collect()
    }

    /// The tensors the optimizer trains, in a fixed order: every base weight with its HF name,
    /// or, under LoRA, only the adapters with their PEFT names.
    pub fn named_trainable(&self) -> Vec<(String, Var)> {
        if self.lora.is_none() {
            return self.params.clone();
        }
        let mut out = vec![];
        for l in self.arch.linears() {
            if let Some(lo) = &l.lora {
                out.push((peft_name(&l.name, "lora_A"), lo.a.clone()));
                out.push((peft_name(&l.name, "lora_B"), lo.b.clone()));
            }
        }
        out
    }

    /// Every base weight with its HF name (current values; merged if LoRA is merged).
    pub fn base_state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// What a checkpoint saves: the full HF-named weights, or only the adapter under LoRA.
    pub fn state_for_save(&self) -> Vec<(String, Tensor)> {
        if self.lora.is_some() {
            self.named_trainable()
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().detach()))
                .collect()
        } else {
            self.base_state()
        }
    }

    /// Restores what [`Model::state_for_save`] produced (resume): every name must be present
    /// with the same shape; unknown names are an error.
    pub fn load_state(&self, tensors: impl IntoIterator<Item = (String, Tensor)>) -> Result<()> {
        let mut given: HashMap<String, Tensor> = tensors.into_iter().collect();
        let origin = "the saved state".to_string();
        let targets = if self.lora.is_some() {
            self.named_trainable()
        } else {
            self.params.clone()
        };
        let mut updates = Vec::with_capacity(targets.len());
        for (name, var) in &targets {
            let t = given
                .remove(name)
                .ok_or_else(|| RegistryError::MissingTensor {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    origin: origin.clone(),
                })?;
            if t.dims() != var.dims() {
                return Err(RegistryError::ShapeMismatch {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                    origin,
                });
            }
            updates.push((var, t));
        }
        if !given.is_empty() {
            let mut names: Vec<String> = given.into_keys().collect();
            names.sort();
            return Err(RegistryError::UnexpectedTensors {
                names: names.join(", "),
                origin,
            });
        }
        // Only write once every tensor checked out, so a bad state changes nothing.
        for (var, t) in updates {
            var.set(&t.to_device(&self.device)?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size()
    }

    pub fn max_positions(&self) -> usize {
        self.config.max_positions()
    }

    pub fn config(&self) -> &ArchConfig {
        &self.config
    }

    pub fn arch_name(&self) -> &'static str {
        self.config.arch_name()
    }

    /// Whether the model predicts next tokens (GPT-2, Llama) rather than encoding (BERT).
    pub fn is_causal_lm(&self) -> bool {
        self.arch.encoder().is_none()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    pub fn param_counts(&self) -> ParamCounts {
        let base: usize = self.params.iter().map(|(_, v)| v.elem_count()).sum();
        let lora: usize = self
            .arch
            .linears()
            .into_iter()
            .filter_map(|l| l.lora.as_ref())
            .map(|lo| lo.a.elem_count() + lo.b.elem_count())
            .sum();
        let trainable = if self.lora.is_some() { lora } else { base };
        ParamCounts {
            total: base + lora,
            trainable,
            lora,
        }
    }

    /// Training FLOPs per token at context `t`, by nanoGPT's `estimate_mfu` (PaLM, appendix B):
    /// 6 per weight of every matmul (2 forward, 4 backward) plus `12 · layers · d_attn · t` for
    /// the attention scores and weighted values. A frozen base (LoRA) costs 4 per weight (no
    /// weight gradient) and its adapters 6. Lookup-only embeddings (positions, an untied input
    /// embedding) are not matmuls; a tied LM head is.
    pub fn train_flops_per_token(&self, t: usize) -> f64 {
        let pc = self.param_counts();
        let (layers, d_attn, lookup) = match &self.config {
            ArchConfig::Gpt2(c) => (c.n_layer, c.n_embd, c.n_positions * c.n_embd),
            ArchConfig::Llama(c) => (
                c.num_hidden_layers,
                c.num_attention_heads * c.head_dim(),
                if c.tie_word_embeddings {
                    0
                } else {
                    c.vocab_size * c.hidden_size
                },
            ),
            ArchConfig::Bert(c) => (
                c.num_hidden_layers,
                c.hidden_size,
                (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * c.hidden_size,
            ),
        };
        let base = pc.total.saturating_sub(pc.lora).saturating_sub(lookup) as f64;
        let attn = 12.0 * layers as f64 * d_attn as f64 * t as f64;
        if self.lora.is_some() {
            4.0 * base + 6.0 * pc.lora as f64 + attn
        } else {
            6.0 * base + attn
        }
    }

    /// Seeds dropout and resets its counter. Presets have dropout 0, so this only matters for
    /// configs that enable it.
    pub fn set_dropout_state(&self, seed: u64, counter: u64) {
        self.dropout.seed.store(seed, Ordering::Relaxed);
        self.dropout.counter.store(counter, Ordering::Relaxed);
    }

    /// `(seed, counter)` to save in a checkpoint; restoring it reproduces later masks.
    pub fn dropout_state(&self) -> (u64, u64) {
        (
            self.dropout.seed.load(Ordering::Relaxed),
            self.dropout.counter.load(Ordering::Relaxed),
        )
    }

    /// Writes `config.json` and `model.safetensors` (HF layout, base weights; merged values
    /// if a LoRA adapter is merged) atomically into `dir`.
    pub fn save_pretrained(&self, dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
        codex_core::fsutil::create_dir_all(dir).map_err(crate::error::io_err(dir))?;
        let cfg_path = dir.join("config.json");
        let mut cfg = self.config.to_hf_json();
        if let Some(map) = cfg.as_object_mut() {
            map.insert(
                "torch_dtype".into(),
                crate::device::torch_dtype(self.dtype).into(),
            );
        }
        let text = serde_json::to_string_pretty(&cfg)
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        codex_core::fsutil::atomic_write(&cfg_path, format!("{text}\n").as_bytes())
            .map_err(crate::error::io_err(&cfg_path))?;
        let st = dir.join("model.safetensors");
        crate::weights::write_safetensors(&st, &self.base_state(), &[("format", "pt")])?;
        Ok(vec![cfg_path, st])
    }
}

/// `base_model.model.<module>.lora_A.weight`, PEFT's key for a saved adapter tensor.
fn peft_name(module: &str, ab: &str) -> String {
    format!("base_model.model.{module}.{ab}.weight")
}

/// Most bytes of fresh parameters allocated at once, whatever the machine: 1 TiB.
pub const MAX_PARAM_BYTES: u64 = 1 << 40;

/// Refuses `params` parameters of `dtype_bytes` each when they exceed the memory available
/// now (or [`MAX_PARAM_BYTES`]): allocating them would abort the process rather than fail.
/// Fresh weights are drawn on the CPU before they move to a device, so RAM bounds them too.
pub fn check_memory(params: Option<u64>, dtype_bytes: usize, what: &str) -> Result<()> {
    let bytes = params.and_then(|p| p.checked_mul(dtype_bytes as u64));
    let mut limit = (MAX_PARAM_BYTES, "the limit");
    for (l, which) in [
        (available_memory(), "available memory"),
        (address_space_limit(), "the address-space limit (ulimit -v)"),
    ] {
        if let Some(l) = l
            && l < limit.0
        {
            limit = (l, which);
        }
    }
    let (limit, which) = limit;
    match bytes {
        Some(b) if b <= limit => Ok(()),
        _ => Err(RegistryError::Invalid(format!(
            "{what}: {} parameters of {dtype_bytes} bytes need {} bytes, more than {which} \
             ({limit} bytes)",
            params.map_or("more than 2^64".into(), |p| p.to_string()),
            bytes.map_or("more than 2^64".into(), |b| b.to_string()),
        ))),
    }
}

/// The line of a small /proc file that starts with `key`, split on whitespace.
fn proc_fields(file: &str, key: &str) -> Option<Vec<String>> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)
        .ok()?
        .take(1 << 16)
        .read_to_string(&mut text)
        .ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(
        line[key.len()..]
            .split_whitespace()
            .map(String::from)
            .collect(),
    )
}

/// `MemAvailable` from /proc/meminfo, in bytes (None where there is no such file).
fn available_memory() -> Option<u64> {
    let kb: u64 = proc_fields("/proc/meminfo", "MemAvailable:")?
        .first()?
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// The soft address-space limit (`ulimit -v`), in bytes; None when unlimited or unknown.
fn address_space_limit() -> Option<u64> {
    proc_fields("/proc/self/limits", "Max address space")?
        .first()?
        .parse()
        .ok()
}

#[cfg(test)]
mod flops_tests {
    use crate::PresetOverrides;

    /// nanoGPT's `estimate_mfu` for the same GPT-2: N = parameters without the position
    /// embeddings, 6N + 12·L·d·T.
    #[test]
    fn train_flops_follow_nanogpt_and_lora_drops_the_weight_gradients() {
        let o = PresetOverrides {
            vocab_size: Some(256),
            max_positions: Some(64),
            ..Default::default()
        };
        let dev = candle_core::Device::Cpu;
        let mut m = crate::build_preset("gpt-tiny", &o, &dev, candle_core::DType::F32, 1).unwrap();
        let crate::config::ArchConfig::Gpt2(c) = m.config().clone() else {
            panic!("gpt-tiny is a GPT-2")
        };
        let n = (m.param_counts().total - c.n_positions * c.n_embd) as f64;
        let t = 64;
        let attn = 12.0 * (c.n_layer * c.n_embd * t) as f64;
        assert_eq!(m.train_flops_per_token(t), 6.0 * n + attn);
        let lc = crate::LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["c_attn".into()],
            ..Default::default()
        };
        crate::lora::apply_lora(&mut m, lc, 2).unwrap();
        let lora = m.param_counts().lora as f64;
        assert!(lora > 0.0);
        assert_eq!(m.train_flops_per_token(t), 4.0 * n + 6.0 * lora + attn);
    }
}
