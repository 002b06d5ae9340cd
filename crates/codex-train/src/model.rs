//! What the trainer needs from a model, and the adapter over the registry's models.

use crate::config::{Dtype, TrainConfig};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};

/// A trainable language model: token ids `[batch, time]` (u32) → logits `[batch, time, vocab]`.
///
/// The shipped trainer builds models through `codex-registry` (see [`build_model`]);
/// tests may implement this for small stand-ins.
pub trait TrainModel {
    /// Logits for `ids`; `train` enables dropout.
    fn forward(&self, ids: &Tensor, train: bool) -> candle_core::Result<Tensor>;
    /// Mean next-token cross-entropy of `ids` against `targets` (both `[batch, time]`, u32) as
    /// a scalar; `train` enables dropout. This default goes through [`TrainModel::forward`]'s
    /// logits; the registry's causal LMs fuse the LM head with the loss instead.
    fn loss(&self, ids: &Tensor, targets: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        loss_from_logits(&self.forward(ids, train)?, targets)
    }
    /// The parameters the optimizer updates, with stable names (HF names, or LoRA adapter names).
    fn named_trainable(&self) -> Vec<(String, Var)>;
    /// The tensors a checkpoint's `model.safetensors` holds (for LoRA: the adapter only).
    fn state_for_save(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .named_trainable()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect())
    }
    /// Restores tensors saved by [`TrainModel::state_for_save`].
    fn load_state(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        let vars = self.named_trainable();
        for (name, var) in &vars {
            let t = tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| {
                    Error::CheckpointContents(format!("checkpoint has no tensor `{name}`"))
                })?;
            if t.dims() != var.dims() {
                return Err(Error::CheckpointContents(format!(
                    "tensor `{name}` has shape {:?} in the checkpoint, the model expects {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
    fn vocab_size(&self) -> usize;
    fn max_positions(&self) -> usize;
    /// Training FLOPs per token at `context` (for `mfu`); `None` when unknown.
    fn train_flops_per_token(&self, _context: usize) -> Option<f64> {
        None
    }
    /// Extra files a checkpoint carries beside the weights (LoRA: `adapter_config.json`).
    fn extra_files(&self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
    /// Dropout RNG state `(seed, counter)`, saved in checkpoints for exact resume.
    fn rng_state(&self) -> (u64, u64) {
        (0, 0)
    }
    fn set_rng_state(&self, _state: (u64, u64)) {}
    /// Name of the weights file in a checkpoint.
    fn weights_file(&self) -> &'static str {
        "model.safetensors"
    }
}

/// Builds the model named by `cfg.model` through the registry.
pub fn build_model(
    cfg: &TrainConfig,
    vocab_size: usize,
    device: &Device,
) -> Result<Box<dyn TrainModel>> {
    let dtype = match cfg.training.dtype {
        Dtype::F32 => DType::F32,
        Dtype::Bf16 => DType::BF16,
    };
    let m = &cfg.model;
    let mut model = if m.pretrained.trim().is_empty() {
        // The same rule `codex generate`/`export` use to rebuild a run's model.
        let arch = codex_registry::run::run_preset_config(
            &m.preset,
            &m.overrides,
            vocab_size,
            cfg.data.context_length,
        )?;
        codex_registry::registry::build_from_config(
            arch,
            &m.preset,
            device,
            dtype,
            cfg.training.seed,
        )?
    } else {
        // Any model source: an HF directory, a GGUF file, a cached hub id, or a codex run or
        // checkpoint (`RUN@best`, …) to continue from.
        codex_registry::load_pretrained(&m.pretrained, device, dtype)?
    };
    if !model.is_causal_lm() {
        return Err(Error::Invalid(format!(
            "model `{}` is a `{}` encoder; `codex train` trains causal language models (gpt2, llama)",
            if m.pretrained.is_empty() {
                &m.preset
            } else {
                &m.pretrained
            },
            model.arch_name()
        )));
    }
    if m.lora.enabled {
        let lc = codex_registry::LoraConfig {
            r: m.lora.r,
            alpha: m.lora.alpha,
            dropout: m.lora.dropout as f32,
            target_modules: m.lora.target_modules.clone(),
            ..Default::default()
        };
        codex_registry::apply_lora(&mut model, lc, cfg.training.seed)?;
    }
    if model.vocab_size() < vocab_size {
        return Err(Error::Invalid(format!(
            "the tokenizer has {vocab_size} tokens but the model's vocabulary is {}",
            model.vocab_size()
        )));
    }
    if model.max_positions() < cfg.data.context_length {
        return Err(Error::Invalid(format!(
            "data.context_length = {} exceeds the model's {} positions",
            cfg.data.context_length,
            model.max_positions()
        )));
    }
    Ok(Box::new(RegistryModel(model)))
}

/// Mean cross-entropy of logits `[batch, time, vocab]` (any float dtype, computed in f32)
/// against `targets` `[batch, time]`.
pub fn loss_from_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let (bs, t, v) = logits.dims3()?;
    let flat = logits.reshape((bs * t, v))?;
    let flat = if flat.dtype() == DType::F32 {
        flat
    } else {
        flat.to_dtype(DType::F32)?
    };
    codex_ops::cross_entropy(&flat, &targets.flatten_all()?)
}

/// The registry's model as a [`TrainModel`].
pub struct RegistryModel(pub codex_registry::Model);

impl TrainModel for RegistryModel {
    fn train_flops_per_token(&self, context: usize) -> Option<f64> {
        Some(self.0.train_flops_per_token(context))
    }
    fn forward(&self, ids: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.0
            .forward(ids, train)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
    fn loss(&self, ids: &Tensor, targets: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !self.0.is_causal_lm() {
            return loss_from_logits(&self.forward(ids, train)?, targets);
        }
        self.0
            .loss(ids, targets, train)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
    fn named_trainable(&self) -> Vec<(String, candle_core::Var)> {
        self.0.named_trainable()
    }
    fn state_for_save(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self.0.state_for_save())
    }
    fn load_state(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        self.0
            .load_state(tensors.iter().cloned())
            .map_err(Error::from)
    }
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn max_positions(&self) -> usize {
        self.0.max_positions()
    }
    fn extra_files(&self) -> Vec<(String, Vec<u8>)> {
        match self.0.lora_config() {
            Some(lc) => {
                let text = serde_json::to_vec_pretty(&lc.to_peft_json(&self.0)).unwrap_or_default();
                vec![(codex_checkpoint::ADAPTER_CONFIG_FILE.to_string(), text)]
            }
            None => Vec::new(),
        }
    }
    fn weights_file(&self) -> &'static str {
        if self.0.lora_config().is_some() {
            codex_checkpoint::ADAPTER_MODEL_FILE
        } else {
            codex_checkpoint::MODEL_FILE
        }
    }
    fn rng_state(&self) -> (u64, u64) {
        self.0.dropout_state()
    }
    fn set_rng_state(&self, state: (u64, u64)) {
        self.0.set_dropout_state(state.0, state.1)
    }
}
