//! Where a worker runs its models: the host's CPUs, or an NVIDIA GPU when the binary is built
//! with the `cuda` feature. Chosen once per process (`--device`, `LANTERN_DEVICE`) and opened at
//! start-up, so a worker that cannot reach its GPU fails before it claims to serve or train.
//!
//! On a GPU the matrix work runs there: every layer of the MLP and BERT, the projections and
//! feed-forward layers of llama (candle's CUDA kernels, Q4_1 included), and training's forward
//! and backward passes. The paged KV cache and its attention stay in host memory, and training
//! averages gradients over gRPC from host copies, as on CPU.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A device by name: `cpu`, `cuda` (the first GPU the process can see) or `cuda:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// Opens the device: for CUDA, creates its context and streams, which fails when the driver
    /// or the GPU is missing, or when this binary was built without the `cuda` feature.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|error| {
                let reason = match error {
                    candle_core::Error::NotCompiledWithCudaSupport => {
                        "this lantern-worker was built without the `cuda` feature; use the CUDA worker image".to_owned()
                    }
                    other => other.to_string(),
                };
                Error::Device { device: self.to_string(), reason }
            }),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|ordinal| ordinal.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {other:?}: expected cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (text, spec) in [("cpu", DeviceSpec::Cpu), ("cuda:0", DeviceSpec::Cuda(0)), ("cuda:3", DeviceSpec::Cuda(3))]
        {
            assert_eq!(text.parse::<DeviceSpec>(), Ok(spec));
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA", ""] {
            let error = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(error.contains("expected cpu, cuda or cuda:N"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn the_cpu_opens_everywhere() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_only_build_refuses_cuda_and_says_which_image_to_use() {
        let error = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert_eq!(
            error,
            "device cuda:0: this lantern-worker was built without the `cuda` feature; use the CUDA worker image"
        );
    }
}
