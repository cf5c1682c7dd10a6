//! Model implementations and the loader that turns a verified version into a runnable model
//! ([`load`], by the manifest's architecture, format and task). One file per architecture,
//! candle-transformers style: [`mlp`] (tensor model), [`llama`] (language model from GGUF,
//! batched forward over a paged KV cache, with [`quantized`] linear layers) and [`bert`]
//! (sentence embeddings from an HF checkpoint). [`dense`] reads a llama version as plain f32
//! tensors, for fine-tuning; [`lora`] reads PEFT adapters against the llama they adapt and
//! applies several in one step.

pub mod bert;
pub mod dense;
pub mod llama;
pub mod lora;
pub mod mlp;
pub mod quantized;

use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::llm::codec::TextCodec;
use crate::llm::tokenizer::Tokenizer;
use crate::repository::{Architecture, Format, Task, VerifiedVersion};

/// Identifies a loaded model version in errors, metrics and thread names.
#[derive(Clone, Debug)]
pub struct VersionId {
    pub model: String,
    pub version: u64,
}

/// A model that maps a batch of rows to a batch of rows. Called from one batching thread.
pub trait TensorModel: Send {
    /// Runs a batch: `input` is `[rows, in_features]`, the result `[rows, out_features]`.
    fn forward(&self, input: &Tensor) -> candle_core::Result<Tensor>;
}

/// A model ready to serve, by task.
pub enum LoadedModel {
    Tensor(Box<dyn TensorModel>),
    Generate { model: Box<llama::Llama>, codec: Arc<TextCodec> },
    Embed(Box<bert::SentenceEncoder>),
}

/// Builds the model a verified version describes, on `device`. Errors carry the model and version.
pub fn load(model: &str, version: u64, verified: &VerifiedVersion, device: &Device) -> Result<LoadedModel> {
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
            Ok(LoadedModel::Tensor(Box::new(mlp)))
        }
        (Architecture::Llama, Format::Gguf, Task::Generate) => {
            let (path, bytes) = single_gguf(verified).map_err(fail)?;
            let mut reader = std::io::Cursor::new(bytes);
            let content = gguf_file::Content::read(&mut reader).map_err(|e| fail(format!("{path}: {e}")))?;
            let codec = TextCodec::from_gguf(&content.metadata).map_err(|e| fail(format!("{path}: {e}")))?;
            let llama =
                llama::Llama::from_gguf(&content, &mut reader, device).map_err(|e| fail(format!("{path}: {e}")))?;
            Ok(LoadedModel::Generate { model: Box::new(llama), codec: Arc::new(codec) })
        }
        (Architecture::Llama, Format::Safetensors, Task::Generate) => {
            let file = |name: &str| verified.files.get(name).ok_or_else(|| fail(format!("the version has no {name}")));
            let config: llama::HfConfig = serde_json::from_slice(file("config.json")?)
                .map_err(|e| fail(format!("config.json is not a llama config: {e}")))?;
            let tensors = safetensors(verified, device).map_err(fail)?;
            let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, device);
            let llama = llama::Llama::from_hf(vb, &config).map_err(|e| fail(e.to_string()))?;
            let codec = TextCodec::from_hf(
                file("tokenizer.json")?,
                verified.files.get("tokenizer_config.json").map(Vec::as_slice),
            )
            .map_err(|e| fail(e.to_string()))?;
            Ok(LoadedModel::Generate { model: Box::new(llama), codec: Arc::new(codec) })
        }
        (Architecture::Bert, Format::Safetensors, Task::Embed) => {
            let file = |name: &str| verified.files.get(name).ok_or_else(|| fail(format!("the version has no {name}")));
            let config: bert::Config = serde_json::from_slice(file("config.json")?)
                .map_err(|e| fail(format!("config.json is not a BERT config: {e}")))?;
            config.validate().map_err(|e| fail(format!("config.json: {e}")))?;
            let tensors = candle_core::safetensors::load_buffer(file("model.safetensors")?, device)
                .map_err(|e| fail(format!("model.safetensors is not valid safetensors: {e}")))?;
            let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, device);
            let bert =
                bert::Bert::load(vb, &config).map_err(|e| fail(format!("weights do not match config.json: {e}")))?;
            let tokenizer = Tokenizer::from_json(file("tokenizer.json")?, &[])?;
            // sentence-transformers' own limit when the checkpoint states one.
            let max_tokens = verified
                .files
                .get("sentence_bert_config.json")
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok())
                .and_then(|v| v["max_seq_length"].as_u64())
                .map_or(config.max_position_embeddings, |n| n as usize);
            Ok(LoadedModel::Embed(Box::new(bert::SentenceEncoder::new(bert, tokenizer, max_tokens))))
        }
        (Architecture::Llama, Format::Lora, _) => Err(fail(format!(
            "a LoRA adapter of {} has no model of its own: it runs on its base's (Llama::read_adapter)",
            manifest.base.as_ref().map_or("a base".to_owned(), |b| format!("{} version {}", b.model, b.version))
        ))),
        (architecture, format, task) => Err(fail(format!(
            "no model implementation for architecture {architecture:?} in format {format:?} for task {task:?}"
        ))),
    }
}

/// The one `.gguf` file of a version, with its path.
fn single_gguf(verified: &VerifiedVersion) -> std::result::Result<(&str, &[u8]), String> {
    let mut ggufs = verified.files.iter().filter(|(path, _)| path.ends_with(".gguf"));
    match (ggufs.next(), ggufs.next()) {
        (Some((path, bytes)), None) => Ok((path, bytes)),
        _ => Err("a GGUF version needs exactly one .gguf file".into()),
    }
}

/// Every `.safetensors` file of a version (one, or the shards of a large checkpoint) as one set of
/// tensors, as stored.
fn safetensors(
    verified: &VerifiedVersion,
    device: &Device,
) -> std::result::Result<std::collections::HashMap<String, Tensor>, String> {
    let mut tensors = std::collections::HashMap::new();
    for (path, bytes) in verified.files.iter().filter(|(path, _)| path.ends_with(".safetensors")) {
        let file = candle_core::safetensors::load_buffer(bytes, device)
            .map_err(|e| format!("{path} is not valid safetensors: {e}"))?;
        tensors.extend(file);
    }
    if tensors.is_empty() {
        return Err("the version has no .safetensors file".into());
    }
    Ok(tensors)
}
