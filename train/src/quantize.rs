//! Quantization: a llama version (HF safetensors, or GGUF of a higher precision) written again as
//! one GGUF file with its matrices in a smaller type ([`DenseLlama::write_gguf`]: the tokenizer
//! and chat template in its metadata, so serving loads it like any GGUF) and published as a
//! version of its own. Its manifest names the source version and digest (`base`, as a merged
//! fine-tune names its origin), the type (`config.quantization`), and the size against the
//! source's (`size_ratio`, beside whatever metrics the caller measured).
//!
//! The file is written into a staging directory and published from there, so an interrupted
//! quantization leaves no visible version.

use std::io::BufWriter;

use super::config::GgufType;
use lantern_runtime::model::dense::DenseLlama;
use lantern_runtime::repository::{self, BaseVersion, MANIFEST_FILE, Manifest, PublishRequest, Repository};

use candle_core::Device;
use candle_core::quantized::gguf_file;
use lantern_runtime::llm::codec::TextCodec;
use lantern_runtime::model::LoadedModel;
use lantern_runtime::model::llama::Llama;

use super::base;
use super::config::{BaseSpec, JsonlSpec, Overlong};
use super::data::{Question, Sequence};
use super::finetune::BASELINE_PREFIX;
use super::{heldout, jsonl};
use crate::error::{Error, Result};

/// The file a quantized version holds.
pub const GGUF_FILE: &str = "model.gguf";

/// What a quantization published.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub version: u64,
    pub source: BaseVersion,
    /// The new version's size, and its source's, in bytes of files.
    pub bytes: u64,
    pub source_bytes: u64,
}

impl Quantized {
    /// The new version's size over its source's.
    pub fn size_ratio(&self) -> f64 {
        self.bytes as f64 / self.source_bytes.max(1) as f64
    }
}

/// Held-out examples a quantization is measured on, tokenized with the source's codec.
pub struct Heldout {
    pub sequences: Vec<Sequence>,
    pub questions: Vec<Question>,
}

impl Heldout {
    /// Every example of the JSONL file `path` (chat or prompt/completion, as fine-tuning reads
    /// them), for `source`'s context.
    pub fn read(path: &std::path::Path, source: &Source) -> Result<Self> {
        let spec = JsonlSpec {
            path: path.to_owned(),
            eval_path: Some(path.to_owned()),
            eval_fraction: 0.0,
            overlong: Overlong::Refuse,
        };
        let examples = jsonl::load(&spec, source.dense.config.max_position_embeddings, &source.dense.codec)?;
        Ok(Self { sequences: examples.held_out, questions: examples.questions })
    }

    /// `eval_loss`, `eval_perplexity` and `eval_accuracy` of `model`.
    fn measure(&self, model: &Llama, codec: &TextCodec) -> Result<Vec<(String, f64)>> {
        let mut metrics = heldout::loss(model, &self.sequences)?;
        metrics.push(heldout::accuracy(model, codec, &self.questions)?);
        Ok(metrics)
    }
}

/// A source read for quantizing.
pub struct Source {
    pub reference: BaseVersion,
    pub bytes: u64,
    pub dense: DenseLlama,
}

impl Source {
    /// Reads and verifies the version `spec` names (`field` names it in errors).
    pub fn read(repository: &Repository, spec: &BaseSpec, field: &str) -> Result<Self> {
        let (reference, bytes, dense) = base::read(repository, spec, field)?;
        Ok(Self { reference, bytes, dense })
    }

    /// Writes the source as GGUF in `ty` and publishes it as the next version of `model` in
    /// `repository`, with the size ratio and, given `heldout`, the held-out metrics of the
    /// quantized file and (prefixed `baseline_`) of the source, each measured as serving loads
    /// it.
    pub fn publish(
        &self,
        ty: GgufType,
        repository: &Repository,
        model: &str,
        heldout: Option<&Heldout>,
    ) -> Result<Quantized> {
        let staging = tempfile::tempdir().map_err(|e| Error::io("creating a staging directory", e))?;
        let path = staging.path().join(GGUF_FILE);
        let file = std::fs::File::create(&path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut out = BufWriter::new(file);
        self.dense.write_gguf(ty, &mut out)?;
        let file = out.into_inner().map_err(|e| Error::io(format!("writing {}", path.display()), e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        let bytes = file.metadata().map_err(|e| Error::io(format!("reading {}", path.display()), e))?.len();
        let manifest = Manifest {
            base: Some(self.reference.clone()),
            config: serde_json::json!({ "quantization": ty.to_string() }),
            ..Manifest::gguf_language_model()
        };
        let manifest_path = staging.path().join(MANIFEST_FILE);
        std::fs::write(&manifest_path, manifest.to_json())
            .map_err(|e| Error::io(format!("writing {}", manifest_path.display()), e))?;
        let mut quantized = Quantized { version: 0, source: self.reference.clone(), bytes, source_bytes: self.bytes };
        let mut recorded = vec![("size_ratio".to_owned(), quantized.size_ratio())];
        if let Some(heldout) = heldout {
            // The written file, loaded as serving loads a GGUF version.
            let written = std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let mut reader = std::io::Cursor::new(written.as_slice());
            let content =
                gguf_file::Content::read(&mut reader).map_err(|e| Error::candle("reading the written GGUF file", e))?;
            let codec = TextCodec::from_gguf(&content.metadata)?;
            let quantized_model = Llama::from_gguf(&content, &mut reader, &Device::Cpu)?;
            recorded.extend(heldout.measure(&quantized_model, &codec)?);
            let source = repository.read_verified(&self.reference.model, self.reference.version)?;
            let LoadedModel::Generate { model: source_model, codec } =
                lantern_runtime::model::load(&self.reference.model, self.reference.version, &source, &Device::Cpu)?
            else {
                return Err(Error::config("(quantize)", "the source does not load as a language model"));
            };
            let baseline = heldout.measure(&source_model, &codec)?;
            recorded.extend(baseline.into_iter().map(|(name, value)| (format!("{BASELINE_PREFIX}{name}"), value)));
        }
        let request = PublishRequest { repository, model, source: staging.path(), version: None, metrics: &recorded };
        quantized.version = repository::publish(&request)?;
        tracing::info!(
            model,
            version = quantized.version,
            source = %self.reference.model,
            source_version = self.reference.version,
            %ty,
            bytes,
            "published a quantized version"
        );
        Ok(quantized)
    }
}
