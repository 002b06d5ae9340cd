//! LoRA adapters in the PEFT layout: `adapter_config.json` + `adapter_model.safetensors` with
//! `base_model.model.<module>.lora_A.weight` / `lora_B.weight`, so adapters move between
//! codex and Python `peft`.

use crate::error::{RegistryError, Result, io_err};
use crate::model::Model;
use crate::nn::LoraLayer;
use crate::params::Builder;
use crate::weights::{read_safetensors, write_safetensors};
use candle_core::{Tensor, Var};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

// Defined with the other configs so that `Model` can hold one without depending on this module.
pub use crate::config::LoraConfig;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

impl LoraConfig {
    /// The PEFT `adapter_config.json` for this adapter on `model`.
    pub fn to_peft_json(&self, model: &Model) -> Value {
        json!({
            "peft_type": "LORA",
            "task_type": if model.is_causal_lm() { Value::from("CAUSAL_LM") } else { Value::Null },
            "base_model_name_or_path": model.origin,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            // GPT-2's Conv1D stores weights [in, out]; PEFT needs this flag to match.
            "fan_in_fan_out": model.arch_name() == "gpt2",
            "bias": "none",
            "use_rslora": self.use_rslora,
            "use_dora": false,
            "modules_to_save": Value::Null,
            "init_lora_weights": true,
            "inference_mode": true,
            "rank_pattern": {},
            "alpha_pattern": {},
            "layers_to_transform": Value::Null,
            "layers_pattern": Value::Null,
            "revision": Value::Null,
        })
    }
}

/// PEFT's rule: a target matches a module when it equals the full path or its dotted suffix.
fn matches(module: &str, target: &str) -> bool {
    module == target || module.ends_with(&format!(".{target}"))
}

/// Attaches fresh adapters to the matching linear layers: A ~ U(±1/sqrt(in)) (PEFT's
/// kaiming-uniform init), B = 0, so the output is unchanged until B is trained. Freezes the
/// base: afterwards only A and B are trainable.
pub fn apply_lora(model: &mut Model, config: LoraConfig, seed: u64) -> Result<()> {
    config.validate()?;
    if model.lora.is_some() {
        return Err(RegistryError::Lora(format!(
            "{} already has a LoRA adapter",
            model.origin
        )));
    }
    let mut config = config;
    if config.target_modules.is_empty() {
        config.target_modules = LoraConfig::default_targets(model.arch_name());
    }
    let names = model.linear_module_names();
    let all_linear = config.target_modules.iter().any(|t| t == "all-linear");
    if !all_linear {
        let missing: Vec<&String> = config
            .target_modules
            .iter()
            .filter(|t| !names.iter().any(|n| matches(n, t)))
            .collect();
        if !missing.is_empty() {
            let leaves: BTreeSet<&str> =
                names.iter().filter_map(|n| n.rsplit('.').next()).collect();
            return Err(RegistryError::Lora(format!(
                "target module(s) {} not found in {} ({}); its linear modules are: {}",
                missing
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                model.origin,
                model.arch_name(),
                leaves.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    } else {
        let leaves: BTreeSet<String> = names
            .iter()
            .filter_map(|n| n.rsplit('.').next().map(String::from))
            .collect();
        config.target_modules = leaves.into_iter().collect();
    }
    // The rank of A·B cannot exceed either dimension of the layer, and A and B are r × in and
    // out × r: checked before anything is allocated, so r = 1e8 is an error, not an abort.
    let mut adapter_params: u64 = 0;
    for (name, in_dim, out_dim) in names_dims(model) {
        if !config.target_modules.iter().any(|t| matches(&name, t)) {
            continue;
        }
        let max = in_dim.min(out_dim);
        if config.r > max {
            return Err(RegistryError::Lora(format!(
                "r = {} exceeds the smaller dimension of `{name}` ({in_dim} → {out_dim}); \
                 r must be at most {max}",
                config.r
            )));
        }
        adapter_params = adapter_params
            .saturating_add((config.r as u64).saturating_mul((in_dim + out_dim) as u64));
    }
    crate::model::check_memory(
        Some(adapter_params),
        model.dtype().size_in_bytes(),
        &format!("LoRA adapter (r = {}) for {}", config.r, model.origin),
    )?;
    let (device, dtype) = (model.device().clone(), model.dtype());
    let mut b = Builder::init(&device, dtype, seed);
    let scale = config.scale();
    for l in model.linears_mut() {
        if !config.target_modules.iter().any(|t| matches(&l.name, t)) {
            continue;
        }
        let bound = 1.0 / (l.in_dim as f64).sqrt();
        let a = Var::from_tensor(&b.uniform(&[config.r, l.in_dim], bound)?)?;
        let bz = Var::from_tensor(&Tensor::zeros((l.out_dim, config.r), dtype, &device)?)?;
        l.lora = Some(LoraLayer {
            a,
            b: bz,
            scale,
            dropout: config.dropout,
            merged_from: None,
        });
    }
    model.lora = Some(config);
    Ok(())
}

/// Reads a PEFT adapter directory and attaches it to `model`.
pub fn load_adapter(model: &mut Model, dir: &Path) -> Result<()> {
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let bytes = crate::weights::read_bounded(&cfg_path, crate::weights::MAX_JSON_BYTES)?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::Lora(format!("{}: {e}", cfg_path.display())))?;
    let cfg = LoraConfig::from_peft_json(&v, &cfg_path)?;
    let w_path = dir.join(ADAPTER_WEIGHTS);
    let tensors = read_safetensors(&w_path, &candle_core::Device::Cpu)?;
    apply_lora(model, cfg, 0)?;
    // PEFT also writes keys with the adapter name (`lora_A.default.weight`) in some versions.
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| (k.replace(".default.weight", ".weight"), t))
        .collect();
    model.load_state(tensors).map_err(|e| match e {
        RegistryError::MissingTensor { name, expected, .. } => RegistryError::MissingTensor {
            name,
            expected,
            origin: w_path.display().to_string(),
        },
        RegistryError::ShapeMismatch {
            name,
            expected,
            found,
            ..
        } => RegistryError::ShapeMismatch {
            name,
            expected,
            found,
            origin: w_path.display().to_string(),
        },
        RegistryError::UnexpectedTensors { names, .. } => RegistryError::UnexpectedTensors {
            names,
            origin: w_path.display().to_string(),
        },
        e => e,
    })
}

impl Model {
    /// Folds `scale · B A` into every adapted base weight; the adapter path is then skipped.
    pub fn merge_lora(&mut self) -> Result<()> {
        self.require_lora()?;
        for l in self.linears_mut() {
            l.merge()?;
        }
        Ok(())
    }

    /// Restores the base weights saved at merge time (bit-exact).
    pub fn unmerge_lora(&mut self) -> Result<()> {
        self.require_lora()?;
        for l in self.linears_mut() {
            l.unmerge()?;
        }
        Ok(())
    }

    fn require_lora(&self) -> Result<()> {
        if self.lora.is_none() {
            return Err(RegistryError::Lora(format!(
                "{} has no LoRA adapter",
                self.origin
            )));
        }
        Ok(())
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (PEFT layout) into `dir`.
    pub fn save_adapter(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        self.require_lora()?;
        let Some(cfg) = &self.lora else {
            return Ok(vec![]);
        };
        codex_core::fsutil::create_dir_all(dir).map_err(io_err(dir))?;
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let text = serde_json::to_string_pretty(&cfg.to_peft_json(self))
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        codex_core::fsutil::atomic_write(&cfg_path, format!("{text}\n").as_bytes())
            .map_err(io_err(&cfg_path))?;
        let w = dir.join(ADAPTER_WEIGHTS);
        write_safetensors(&w, &self.state_for_save(), &[("format", "pt")])?;
        Ok(vec![cfg_path, w])
    }

    /// The PEFT `adapter_config.json` of the attached adapter (for checkpoints that write
    /// `adapter_model.safetensors` themselves from [`Model::state_for_save`]).
    pub fn adapter_config_json(&self) -> Option<Value> {
        self.lora.as_ref().map(|c| c.to_peft_json(self))
    }

    /// Names of the adapted modules.
    pub fn lora_modules(&mut self) -> Vec<String> {
        self.linears_mut()
            .into_iter()
            .filter(|l| l.lora.is_some())
            .map(|l| l.name.clone())
            .collect()
    }
}

/// `(name, in, out)` of every linear layer.
fn names_dims(model: &mut Model) -> Vec<(String, usize, usize)> {
    model
        .linears_mut()
        .into_iter()
        .map(|l| (l.name.clone(), l.in_dim, l.out_dim))
        .collect()
}
