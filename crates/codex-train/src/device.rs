//! The trainer's device: the one grammar (`codex_core::mode::DeviceSpec`) opened by the
//! registry, so `training.device` and every command's `--device` mean the same thing.

use crate::error::Result;
use candle_core::Device;
pub use codex_core::mode::DeviceSpec;

/// Parses a device string (`cpu`, `cuda`, `cuda:N`, `auto`) without opening it.
pub fn parse_device(s: &str) -> std::result::Result<DeviceSpec, String> {
    s.parse()
}

/// Opens the device named by `s`; CUDA on a build without it is an error, not the CPU.
pub fn open_device(s: &str) -> Result<Device> {
    Ok(codex_registry::parse_device(s)?)
}
