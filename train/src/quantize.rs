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

use super::base;
use super::config::BaseSpec;
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
    /// `repository`, with `metrics` and the size ratio.
    pub fn publish(
        &self,
        ty: GgufType,
        repository: &Repository,
        model: &str,
        metrics: &[(String, f64)],
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
        let mut recorded = metrics.to_vec();
        recorded.push(("size_ratio".to_owned(), quantized.size_ratio()));
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
