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
use lantern_runtime::model::llama::Llama;

use super::base::Base;
use super::config::{BaseSpec, DataSpec, JobConfig, JsonlSpec, Overlong, QuantizeSpec};
use super::data::{Question, Sequence};
use super::finetune::BASELINE_PREFIX;
use super::progress::Progress;
use super::trainer::Outcome;
use super::{heldout, jsonl};
use crate::error::{Error, Result};

/// The file a quantized version holds.
pub const GGUF_FILE: &str = "model.gguf";

/// What a quantization published.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub version: u64,
    /// `sha256:<hex>` of its manifest.
    pub digest: String,
    /// What its manifest records: the size ratio and any held-out metrics.
    pub metrics: Vec<(String, f64)>,
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
        Self::of_data(&spec, source)
    }

    /// The held-out part of `spec`'s examples: its `eval_path`, or the last `eval_fraction` of
    /// `path` — what a fine-tune on the same data holds out.
    pub fn of_data(spec: &JsonlSpec, source: &Source) -> Result<Self> {
        let examples = jsonl::load(spec, source.dense.config.max_position_embeddings, &source.dense.codec)?;
        Ok(Self { sequences: examples.held_out, questions: examples.questions })
    }

    /// `eval_loss`, `eval_perplexity` and `eval_accuracy` of `model`.
    fn measure(&self, model: &Llama, codec: &TextCodec) -> Result<Vec<(String, f64)>> {
        let mut metrics = heldout::loss(model, &self.sequences)?;
        metrics.extend(heldout::accuracy(model, codec, &self.questions)?);
        Ok(metrics)
    }
}

/// A source read for quantizing.
pub struct Source {
    /// The version, which is also loaded as serving loads it to be measured.
    pub base: Base,
    pub dense: DenseLlama,
}

impl Source {
    /// Reads and verifies the version `spec` names in `repository` (`field` names it in errors).
    pub fn read(repository: &Repository, spec: &BaseSpec, field: &str) -> Result<Self> {
        let base = Base::open(repository, spec, field)?;
        let dense = base.dense()?;
        Ok(Self { base, dense })
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
        let reference = &self.base.reference;
        let manifest = Manifest {
            base: Some(reference.clone()),
            config: serde_json::json!({ "quantization": ty.to_string() }),
            ..Manifest::gguf_language_model()
        };
        let manifest_path = staging.path().join(MANIFEST_FILE);
        std::fs::write(&manifest_path, manifest.to_json())
            .map_err(|e| Error::io(format!("writing {}", manifest_path.display()), e))?;
        let size_ratio = bytes as f64 / self.base.bytes.max(1) as f64;
        let mut recorded = vec![("size_ratio".to_owned(), size_ratio)];
        if let Some(heldout) = heldout {
            // The written file, loaded as serving loads a GGUF version.
            let written = std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let mut reader = std::io::Cursor::new(written.as_slice());
            let content =
                gguf_file::Content::read(&mut reader).map_err(|e| Error::candle("reading the written GGUF file", e))?;
            let codec = TextCodec::from_gguf(&content.metadata)?;
            let quantized_model = Llama::from_gguf(&content, &mut reader, &Device::Cpu)?;
            recorded.extend(heldout.measure(&quantized_model, &codec)?);
            let (source_model, codec) = self.base.serving(&Device::Cpu)?;
            let baseline = heldout.measure(&source_model, &codec)?;
            recorded.extend(baseline.into_iter().map(|(name, value)| (format!("{BASELINE_PREFIX}{name}"), value)));
        }
        let request = PublishRequest { repository, model, source: staging.path(), version: None, metrics: &recorded };
        let version = repository::publish(&request)?;
        let quantized = Quantized {
            version,
            digest: repository.manifest_digest(model, version)?,
            metrics: recorded.clone(),
            source: reference.clone(),
            bytes,
            source_bytes: self.base.bytes,
        };
        tracing::info!(
            model,
            version = quantized.version,
            source = %reference.model,
            source_version = reference.version,
            %ty,
            bytes,
            "published a quantized version"
        );
        Ok(quantized)
    }
}

/// Runs a quantize job: reads and verifies the source, writes and measures the quantized file
/// and the source on the held-out part of the job's JSONL data, publishes the version as the
/// next of `output.model`, and reports it in rank 0's `progress` as a training job reports a
/// checkpoint.
pub fn run(config: &JobConfig, spec: &QuantizeSpec, progress: Option<&Progress>) -> Result<Outcome> {
    let started = std::time::Instant::now();
    let output = &config.output;
    let DataSpec::Jsonl(data) = &config.data else {
        return Err(Error::config("data", "a quantize job is measured on jsonl data (its held-out part)"));
    };
    let source_repository = crate::config::open_repository(spec.source.repository(output), output)?;
    let source = Source::read(&source_repository, &spec.source, "model.quantize.source")?;
    let heldout = Heldout::of_data(data, &source)?;
    let repository = crate::config::open_repository(&output.repository, output)?;
    let done = source.publish(spec.ty, &repository, &output.model, Some(&heldout))?;
    if let Some(progress) = progress {
        progress.published(done.version, &done.metrics, &done.digest);
    }
    Ok(Outcome {
        step: 1,
        loss: f64::NAN,
        published: vec![done.version],
        interrupted: false,
        trained_steps: 0,
        tokens: 0,
        seconds: started.elapsed().as_secs_f64(),
        checkpoint_seconds: 0.0,
    })
}
