//! Names users write in configs and flags, defined once for every crate: the system-metrics
//! mode and the device grammar.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What the system sampler records: nothing, host CPU/memory/process tree, or that plus GPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemMetricsMode {
    /// No sampler.
    #[default]
    Off,
    /// Host CPU, memory, swap and this process tree.
    Cpu,
    /// CPU fields plus every GPU NVML sees.
    Gpu,
}

impl SystemMetricsMode {
    /// Every value, as written.
    pub const NAMES: [&'static str; 3] = ["off", "cpu", "gpu"];

    pub fn as_str(self) -> &'static str {
        match self {
            SystemMetricsMode::Off => "off",
            SystemMetricsMode::Cpu => "cpu",
            SystemMetricsMode::Gpu => "gpu",
        }
    }
}

impl fmt::Display for SystemMetricsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SystemMetricsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" => Ok(SystemMetricsMode::Off),
            "cpu" => Ok(SystemMetricsMode::Cpu),
            "gpu" => Ok(SystemMetricsMode::Gpu),
            other => Err(format!("unknown mode `{other}`: expected off, cpu or gpu")),
        }
    }
}

/// A device as written: `cpu`, `cuda`, `cuda:N`, or `auto` (the first GPU when codex is built
/// with CUDA and one opens, else the CPU). Parsing is pure; opening is the tensor crates' job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    format!("unknown device `{other}`: expected cpu, cuda, cuda:N or auto")
                }),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grammar() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!(" cuda ".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        for bad in ["tpu", "cuda:", "cuda:-1", "gpu", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
        for name in SystemMetricsMode::NAMES {
            assert_eq!(name.parse::<SystemMetricsMode>().unwrap().as_str(), name);
        }
    }
}
