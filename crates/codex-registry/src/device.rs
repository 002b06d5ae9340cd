//! Device and dtype names as users write them: `cpu`, `cuda`, `cuda:N`; `f32`, `bf16`, `f16`.

use crate::error::{RegistryError, Result};
use candle_core::{DType, Device};
use codex_core::mode::DeviceSpec;

/// Opens `cpu`, `cuda`, `cuda:N` or `auto`: the one grammar, `codex_core::mode::DeviceSpec`,
/// used by every command and the trainer. Naming CUDA on a build without the `cuda` feature is
/// an error, never a silent fallback to the CPU; `auto` is the first GPU when this build has
/// CUDA and one opens, else the CPU.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec.parse::<DeviceSpec>() {
        Ok(DeviceSpec::Cpu) => Ok(Device::Cpu),
        Ok(DeviceSpec::Cuda(ordinal)) => cuda_device(spec, ordinal),
        Ok(DeviceSpec::Auto) => Ok(cuda_device(spec, 0).unwrap_or(Device::Cpu)),
        Err(msg) => Err(RegistryError::Device {
            device: spec.to_string(),
            msg,
        }),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(spec: &str, ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| RegistryError::Device {
        device: spec.to_string(),
        msg: format!("cannot open CUDA device {ordinal}: {e}"),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(spec: &str, _ordinal: usize) -> Result<Device> {
    Err(RegistryError::Device {
        device: spec.to_string(),
        msg: "this codex was built without CUDA support; rebuild with `cargo build --release \
              --features cuda` (needs nvcc) or use `--device cpu`"
            .into(),
    })
}

/// Parses `f32`, `bf16` or `f16`.
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec.trim() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(RegistryError::Invalid(format!(
            "unknown dtype `{other}`: expected f32, bf16 or f16"
        ))),
    }
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F64 => "f64",
        _ => "other",
    }
}

pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".into(),
        },
        Device::Metal(_) => "metal".into(),
    }
}

/// The `torch_dtype` string HF writes into `config.json`.
pub fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}
