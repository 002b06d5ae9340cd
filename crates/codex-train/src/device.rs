//! Opening the device of a [`DeviceSpec`] (the grammar lives in `codex_core::mode`). Asking for
//! CUDA on a build or machine without it is an error, never a silent fall back to the CPU.

use crate::error::{Error, Result};
use candle_core::Device;
pub use codex_core::mode::DeviceSpec;

/// Parses a device string (`cpu`, `cuda`, `cuda:N`, `auto`).
pub fn parse_device(s: &str) -> std::result::Result<DeviceSpec, String> {
    s.parse()
}

/// Opens the device named by `s`.
pub fn open_device(s: &str) -> Result<Device> {
    match parse_device(s).map_err(Error::Invalid)? {
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
