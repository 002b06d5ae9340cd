//! Device selection: `cpu`, `cuda`, `cuda:N`, `auto`. Asking for CUDA on a build or machine
//! without it is an error, never a silent fall back to the CPU.

use crate::error::{Error, Result};
use candle_core::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Auto,
}

/// Parses a device string.
pub fn parse_device(s: &str) -> std::result::Result<DeviceSpec, String> {
    match s.trim() {
        "cpu" => Ok(DeviceSpec::Cpu),
        "auto" => Ok(DeviceSpec::Auto),
        "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| format!("unknown device `{other}`")),
    }
}

/// Opens the device named by `s`.
pub fn open_device(s: &str) -> Result<Device> {
    let spec = parse_device(s).map_err(Error::Invalid)?;
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => {
            if cfg!(feature = "cuda")
                && let Ok(d) = Device::new_cuda(0)
            {
                return Ok(d);
            }
            Ok(Device::Cpu)
        }
        DeviceSpec::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                return Err(Error::NotCompiled {
                    feature: "cuda",
                    what: format!("device `{s}`"),
                });
            }
            Device::new_cuda(n)
                .map_err(|e| Error::Invalid(format!("cannot open device `{s}`: {e}")))
        }
    }
}
