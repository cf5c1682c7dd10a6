//! Where a worker runs its models: the host's CPUs, or an NVIDIA GPU when the binary is built
//! with the `cuda` feature. Chosen once per process (`--device`, `LANTERN_DEVICE`) and opened at
//! start-up, so a worker that cannot reach its GPU fails before it claims to serve or train.
//!
//! On a GPU the matrix work runs there: every layer of the MLP and BERT, the projections and
//! feed-forward layers of llama (candle's CUDA kernels, Q4_1 included), and training's forward
//! and backward passes. The paged KV cache and its attention stay in host memory, and training
//! averages gradients over gRPC from host copies, as on CPU.

use candle_core::Device;

use crate::error::{Error, Result};

pub use lantern_contract::device::DeviceSpec;

/// Opens the device: for CUDA, creates its context and streams, which fails when the driver or
/// the GPU is missing, or when this binary was built without the `cuda` feature.
pub fn open(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|error| {
            let reason = match error {
                candle_core::Error::NotCompiledWithCudaSupport => {
                    "this lantern-worker was built without the `cuda` feature; use the CUDA worker image".to_owned()
                }
                other => other.to_string(),
            };
            Error::Device { device: spec.to_string(), reason }
        }),
    }
}

/// The CPU's model name, thread count and the vector extensions the kernels use, as figures
/// print it beside their numbers.
pub fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split(':').nth(1))
            .map(str::trim)
            .unwrap_or("unknown")
            .to_owned()
    };
    let flags = field("flags");
    let present: Vec<&str> = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"]
        .into_iter()
        .filter(|flag| flags.split_whitespace().any(|f| f == *flag))
        .collect();
    format!(
        "{}, {} threads, {}",
        field("model name"),
        std::thread::available_parallelism().map_or(0, usize::from),
        present.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_opens_everywhere() {
        assert!(open(DeviceSpec::Cpu).unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_only_build_refuses_cuda_and_says_which_image_to_use() {
        let error = open(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert_eq!(
            error,
            "device cuda:0: this lantern-worker was built without the `cuda` feature; use the CUDA worker image"
        );
    }
}
