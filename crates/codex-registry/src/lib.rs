//! codex-registry: model architectures on candle (GPT-2, Llama, BERT), offline weight loading
//! (HF directories, the hf-hub cache, GGUF), and PEFT-compatible LoRA adapters.
//!
//! The trainer uses [`Model`]: build one with [`build_preset`] or [`load_pretrained`], optionally
//! [`apply_lora`], then call [`Model::forward`] and hand [`Model::named_trainable`] to the
//! optimizer. Every elementwise/normalisation op of the forward pass lives in [`ops`].

// Modules in layers; each uses only earlier layers (no cycles):
//   error, init, ops, kv | config, device, weights (safetensors I/O), params, gguf | nn | arch
//   | model | lora, registry, generate, export, gguf_write | run | source.
mod arch;
pub mod config;
pub mod device;
pub mod error;
pub mod export;
pub mod generate;
pub mod gguf;
pub mod gguf_write;
mod init;
pub mod kv;
pub mod lora;
mod model;
mod nn;
pub mod ops;
mod params;
pub mod registry;
pub mod run;
pub mod source;
mod weights;

/// The candle version the models are built on, for callers without their own dependency.
pub use candle_core;
pub use config::{ArchConfig, BertConfig, GptConfig, LlamaConfig};
pub use device::{parse_device, parse_dtype};
pub use error::{RegistryError, Result};
pub use generate::{Decoder, Sampling, Token};
pub use kv::KvCache;
pub use lora::{LoraConfig, apply_lora, load_adapter};
pub use model::{Model, ParamCounts};
pub use registry::{ARCHITECTURES, ArchInfo, PRESETS, PresetInfo, PresetOverrides, build_preset};
pub use run::TokenizerRef;
pub use source::{Loaded, ModelSource, load_model, load_pretrained, resolve_source, source_config};
