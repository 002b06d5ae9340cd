//! What the trainer needs from a model, and the adapter over the registry's models.

use crate::error::{Error, Result};
use candle_core::{Tensor, Var};

/// A trainable language model: token ids `[batch, time]` (u32) → logits `[batch, time, vocab]`.
///
/// The shipped trainer builds models through `codex-registry` (see [`crate::trainer::build_model`]);
/// tests may implement this for small stand-ins.
pub trait TrainModel {
    /// Logits for `ids`; `train` enables dropout.
    fn forward(&self, ids: &Tensor, train: bool) -> candle_core::Result<Tensor>;
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
                .ok_or_else(|| Error::Checkpoint(format!("checkpoint has no tensor `{name}`")))?;
            if t.dims() != var.dims() {
                return Err(Error::Checkpoint(format!(
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
