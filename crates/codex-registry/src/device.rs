//! Device and dtype names as users write them: `cpu`, `cuda`, `cuda:N`; `f32`, `bf16`, `f16`.

use crate::error::{RegistryError, Result};
use candle_core::{DType, Device};

/// Parses `cpu`, `cuda` or `cuda:N`. CUDA without the `cuda` feature is an error, never a
/// silent fallback to the CPU.
pub fn parse_device(spec: &str) -> Result<Device> {
    let s = spec.trim();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = if s == "cuda" {
        0
    } else if let Some(n) = s.strip_prefix("cuda:") {
        n.parse::<usize>().map_err(|_| RegistryError::Device {
            device: spec.to_string(),
            msg: "expected `cuda:N` with N a GPU index".into(),
        })?
    } else {
        return Err(RegistryError::Device {
            device: spec.to_string(),
            msg: "expected `cpu`, `cuda` or `cuda:N`".into(),
        });
    };
    cuda_device(spec, ordinal)
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
