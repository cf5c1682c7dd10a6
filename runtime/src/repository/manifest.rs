//! The version manifest (`manifest.json`): what a version is (format, architecture, task), how it
//! is called (input/output signature), what it was measured at (eval metrics), and every file it
//! consists of with its size and sha256. A version without a manifest does not exist.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tensor::DataType;

/// The manifest's file name inside a version directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// How the weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Safetensors,
    /// llama.cpp's single-file format: weights (often quantized), tokenizer and chat template.
    Gguf,
    /// A LoRA adapter in PEFT's layout (`adapter_model.safetensors`, `adapter_config.json`),
    /// applied over the version the manifest's `base` names.
    Lora,
}

/// Which model implementation loads the version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// A multi-layer perceptron ([`crate::model::mlp`]).
    Mlp,
    /// A llama-architecture decoder language model ([`crate::model::llama`]).
    Llama,
    /// A BERT encoder producing sentence embeddings ([`crate::model::bert`]).
    Bert,
}

/// What the model does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Tensors in, tensors out, batched along dimension 0.
    Tensor,
    /// Text in, generated text out (streamed token by token).
    Generate,
    /// Texts in, one unit-length embedding per text out.
    Embed,
}

/// One input or output of the model. `-1` in `shape` marks a variable dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// A file of the version, relative to the version directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
}

/// The contents of `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: Format,
    pub architecture: Architecture,
    pub task: Task,
    /// Architecture-specific hyper-parameters (for an MLP: layer sizes and activation).
    #[serde(default)]
    pub config: serde_json::Value,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Evaluation metrics recorded by whoever produced the version (loss, accuracy, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// The version this one was made from (an adapter's base, a merged model's origin, a
    /// quantization's source, a distilled student's teacher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseVersion>,
    /// The training job that published it, by its state directory (or state URI): how a resumed
    /// job tells its own versions from other jobs' versions of the same model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Every file of the version. Filled in by `publish`; required when loading.
    #[serde(default)]
    pub files: Vec<FileEntry>,
}

/// A version of another model, pinned by the digest of its manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseVersion {
    pub model: String,
    pub version: u64,
    /// `sha256:<hex>` of the base's `manifest.json`.
    pub manifest_digest: String,
}

/// Name of the text input of a language model's signature.
pub const TEXT_INPUT: &str = "text_input";
/// Name of the text output of a language model's signature.
pub const TEXT_OUTPUT: &str = "text_output";
/// Name of the output of an embedding model's signature.
pub const EMBEDDING_OUTPUT: &str = "embedding";

impl Manifest {
    /// The manifest of a llama model in one GGUF file: one text in, one text out.
    pub fn gguf_language_model() -> Self {
        let text = |name: &str| TensorSpec { name: name.to_owned(), datatype: DataType::Bytes, shape: vec![1] };
        Self::text_model(Format::Gguf, Architecture::Llama, Task::Generate, text(TEXT_INPUT), text(TEXT_OUTPUT))
    }

    /// The manifest of a llama model in HF layout (`config.json`, safetensors, `tokenizer.json`).
    pub fn hf_language_model() -> Self {
        Self { format: Format::Safetensors, ..Self::gguf_language_model() }
    }

    /// The manifest of a LoRA adapter over `base` (a llama language model).
    pub fn lora_adapter(base: BaseVersion) -> Self {
        Self { format: Format::Lora, base: Some(base), ..Self::gguf_language_model() }
    }

    /// The manifest of a BERT sentence encoder in HF layout: texts in, `dimension`-wide FP32
    /// embeddings out.
    pub fn bert_embeddings(dimension: usize) -> Self {
        let input = TensorSpec { name: TEXT_INPUT.to_owned(), datatype: DataType::Bytes, shape: vec![-1] };
        let output = TensorSpec {
            name: EMBEDDING_OUTPUT.to_owned(),
            datatype: DataType::F32,
            shape: vec![-1, dimension as i64],
        };
        Self::text_model(Format::Safetensors, Architecture::Bert, Task::Embed, input, output)
    }

    fn text_model(
        format: Format,
        architecture: Architecture,
        task: Task,
        input: TensorSpec,
        output: TensorSpec,
    ) -> Self {
        Self {
            format,
            architecture,
            task,
            config: serde_json::Value::Null,
            inputs: vec![input],
            outputs: vec![output],
            metrics: BTreeMap::new(),
            base: None,
            job: None,
            files: Vec::new(),
        }
    }

    /// Parses and validates a manifest; `origin` names the file in errors.
    pub fn from_json(bytes: &[u8], origin: &Path) -> Result<Self> {
        let manifest: Self = serde_json::from_slice(bytes)
            .map_err(|e| Error::Manifest { path: origin.to_owned(), reason: format!("malformed manifest: {e}") })?;
        manifest.validate().map_err(|reason| Error::Manifest { path: origin.to_owned(), reason })?;
        Ok(manifest)
    }

    /// Pretty JSON, as written to disk.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest always serializes; this is a bug");
        bytes.push(b'\n');
        bytes
    }

    /// The file entry called `path`.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err("a manifest needs at least one input and one output".into());
        }
        for spec in self.inputs.iter().chain(&self.outputs) {
            if spec.name.is_empty() {
                return Err("a tensor in the signature has an empty name".into());
            }
            if spec.shape.iter().any(|&d| d < -1 || d == 0) {
                return Err(format!("tensor {:?} has invalid shape {:?}", spec.name, spec.shape));
            }
        }
        for file in &self.files {
            if !is_plain_relative(&file.path) || file.path == MANIFEST_FILE {
                return Err(format!(
                    "file path {:?} must be relative, inside the version and not the manifest",
                    file.path
                ));
            }
            if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(format!("file {:?} has an invalid sha256 {:?}", file.path, file.sha256));
            }
        }
        Ok(())
    }
}

/// A relative path with no `.`/`..` components, no leading dot-files and no empty components.
fn is_plain_relative(path: &str) -> bool {
    !path.is_empty() && path.split('/').all(|part| !part.is_empty() && !part.starts_with('.') && !part.contains('\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> serde_json::Value {
        serde_json::json!({
            "format": "safetensors",
            "architecture": "mlp",
            "task": "tensor",
            "config": {"layers": [4, 3], "activation": "relu"},
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
            "files": [{"path": "model.safetensors", "size": 10, "sha256": "ab".repeat(32)}]
        })
    }

    fn parse(value: &serde_json::Value) -> Result<Manifest> {
        Manifest::from_json(value.to_string().as_bytes(), Path::new("m/1/manifest.json"))
    }

    #[test]
    fn a_valid_manifest_round_trips() {
        let manifest = parse(&sample()).unwrap();
        assert_eq!(Manifest::from_json(&manifest.to_json(), Path::new("x")).unwrap(), manifest);
        assert_eq!(manifest.inputs[0].datatype, DataType::F32);
    }

    #[test]
    fn malformed_manifests_name_the_problem() {
        let mut unknown_field = sample();
        unknown_field["colour"] = "blue".into();
        let mut bad_datatype = sample();
        bad_datatype["inputs"][0]["datatype"] = "FLOAT".into();
        let mut escaping_path = sample();
        escaping_path["files"][0]["path"] = "../other/model.safetensors".into();
        let mut bad_digest = sample();
        bad_digest["files"][0]["sha256"] = "xyz".into();
        let mut unknown_arch = sample();
        unknown_arch["architecture"] = "transformer9000".into();
        for (case, needle) in [
            (unknown_field, "colour"),
            (bad_datatype, "FLOAT"),
            (escaping_path, "../other"),
            (bad_digest, "sha256"),
            (unknown_arch, "transformer9000"),
        ] {
            let err = parse(&case).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("m/1/manifest.json"), "{err}");
        }
        assert!(parse(&serde_json::json!("not an object")).is_err());
    }
}
