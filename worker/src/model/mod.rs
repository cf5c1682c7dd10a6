//! Model implementations and the loader that turns a verified version into a runnable model.
//! One file per architecture, candle-transformers style: [`mlp`] (tensor model, served through
//! [`load`]) and [`llama`] (language model, batched forward over GGUF weights).

pub mod llama;
pub mod mlp;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::repository::{Architecture, Format, Task, VerifiedVersion};

/// A model that maps a batch of rows to a batch of rows. Called from one batching thread.
pub trait TensorModel: Send {
    /// Runs a batch: `input` is `[rows, in_features]`, the result `[rows, out_features]`.
    fn forward(&self, input: &Tensor) -> candle_core::Result<Tensor>;
}

/// Builds the model a verified version describes, on `device`. Errors carry the model and version.
pub fn load(model: &str, version: u64, verified: &VerifiedVersion, device: &Device) -> Result<Box<dyn TensorModel>> {
    let manifest = &verified.manifest;
    let fail = |reason: String| Error::Load { model: model.to_owned(), version, reason };
    match (manifest.architecture, manifest.format, manifest.task) {
        (Architecture::Mlp, Format::Safetensors, Task::Tensor) => {
            let config: mlp::Config = serde_json::from_value(manifest.config.clone())
                .map_err(|e| fail(format!("invalid mlp config in manifest: {e}")))?;
            config.check_signature(manifest).map_err(fail)?;
            let weights = verified
                .files
                .get(mlp::WEIGHTS_FILE)
                .ok_or_else(|| fail(format!("the manifest lists no {}", mlp::WEIGHTS_FILE)))?;
            let tensors = candle_core::safetensors::load_buffer(weights, device)
                .map_err(|e| fail(format!("{} is not valid safetensors: {e}", mlp::WEIGHTS_FILE)))?;
            let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, device);
            let mlp = mlp::Mlp::load(vb, &config).map_err(|e| fail(format!("weights do not match the config: {e}")))?;
            Ok(Box::new(mlp))
        }
    }
}
