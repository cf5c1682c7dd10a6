//! A pretrained llama version a job reads — a fine-tune's base, a quantization's source, a
//! distillation's teacher — from the model repository (imported into it first when the job says
//! where from), verified by the digest of its manifest when the job pins one, then read as dense
//! tensors ([`read`]) or loaded as serving loads it ([`Base::serving`]). It is read into memory
//! once, so removing it from the repository later cannot touch what the job publishes.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use lantern_runtime::llm::codec::TextCodec;
use lantern_runtime::model::LoadedModel;
use lantern_runtime::model::dense::{self, DenseLlama};
use lantern_runtime::model::llama::Llama;
use lantern_runtime::repository::{self, BaseVersion, PublishRequest, Repository, VerifiedVersion};

use super::config::BaseSpec;
use crate::error::{Error, Result};

/// A version read and verified.
pub struct Base {
    /// The model, version and manifest digest.
    pub reference: BaseVersion,
    /// Its files' total size.
    pub bytes: u64,
    verified: VerifiedVersion,
    /// Where the job names it (`model.fine_tune.base`), for errors.
    field: String,
}

impl Base {
    /// The version `spec` names in `repository`. `field` names the spec in errors.
    pub fn open(repository: &Repository, spec: &BaseSpec, field: &str) -> Result<Self> {
        if let Some(source) = &spec.import_from {
            import(repository, spec, source, field)?;
        }
        let named = format!("{} version {}", spec.model, spec.version);
        let verified = repository
            .read_verified(&spec.model, spec.version)
            .map_err(|e| Error::config(field, format!("{named}: {e}")))?;
        if let Some(expected) = spec.digest.as_deref().filter(|&expected| expected != verified.digest) {
            return Err(Error::config(
                format!("{field}.digest"),
                format!("{named} has manifest digest {}, the job pins {expected}", verified.digest),
            ));
        }
        let reference =
            BaseVersion { model: spec.model.clone(), version: spec.version, manifest_digest: verified.digest.clone() };
        let bytes = verified.manifest.files.iter().map(|file| file.size).sum();
        Ok(Self { reference, bytes, verified, field: field.to_owned() })
    }

    /// Its weights as dense f32 tensors; a version that is not a whole llama is refused.
    pub fn dense(&self) -> Result<DenseLlama> {
        dense::read(&self.verified, &Device::Cpu).map_err(|e| self.refused(e))
    }

    /// The model as serving loads it (a GGUF on its quantized kernels), on `device`, and its
    /// codec; a version that is not a language model is refused.
    pub fn serving(&self, device: &Device) -> Result<(Llama, Arc<TextCodec>)> {
        let BaseVersion { model, version, .. } = &self.reference;
        match lantern_runtime::model::load(model, *version, &self.verified, device).map_err(|e| self.refused(e))? {
            LoadedModel::Generate { model, codec } => Ok((*model, codec)),
            _ => Err(self.refused("not a language model")),
        }
    }

    fn refused(&self, reason: impl std::fmt::Display) -> Error {
        Error::config(&self.field, format!("{} version {}: {reason}", self.reference.model, self.reference.version))
    }
}

/// The version `spec` names in `repository`, as a reference (model, version, manifest digest),
/// its files' total size, and its weights. `field` names the spec in errors
/// (`model.fine_tune.base`).
pub fn read(repository: &Repository, spec: &BaseSpec, field: &str) -> Result<(BaseVersion, u64, DenseLlama)> {
    let base = Base::open(repository, spec, field)?;
    let dense = base.dense()?;
    Ok((base.reference, base.bytes, dense))
}

/// Publishes `source` as the version `spec` names unless the repository holds it already.
/// Several ranks may race here: publishing an existing version fails without a trace, and the
/// winner's version is then read like any other.
fn import(repository: &Repository, spec: &BaseSpec, source: &Path, field: &str) -> Result<()> {
    if repository.versions(&spec.model)?.contains(&spec.version) {
        return Ok(());
    }
    let request = PublishRequest { repository, model: &spec.model, source, version: Some(spec.version), metrics: &[] };
    match repository::publish(&request) {
        Ok(version) => {
            tracing::info!(model = %spec.model, version, source = %source.display(), "imported the version");
            Ok(())
        }
        Err(_) if repository.versions(&spec.model)?.contains(&spec.version) => Ok(()),
        Err(e) => Err(Error::config(format!("{field}.import_from"), format!("{}: {e}", source.display()))),
    }
}
