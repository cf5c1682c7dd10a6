//! A pretrained llama version a job starts from — a fine-tune's base, a quantization's source —
//! read from the model repository (imported into it first when the job says where from),
//! verified by the digest of its manifest when the job pins one, and read as dense tensors. It
//! is read into memory once, so removing it from the repository later cannot touch what the job
//! publishes.

use std::path::Path;

use candle_core::Device;
use lantern_runtime::model::dense::{self, DenseLlama};
use lantern_runtime::repository::{self, BaseVersion, PublishRequest, Repository};

use super::config::BaseSpec;
use crate::error::{Error, Result};

/// The version `spec` names in `repository`, as a reference (model, version, manifest digest),
/// its files' total size, and its weights. `field` names the spec in errors
/// (`model.fine_tune.base`).
pub fn read(repository: &Repository, spec: &BaseSpec, field: &str) -> Result<(BaseVersion, u64, DenseLlama)> {
    if let Some(source) = &spec.import_from {
        import(repository, spec, source, field)?;
    }
    let named = || format!("{} version {}", spec.model, spec.version);
    let verified = repository
        .read_verified(&spec.model, spec.version)
        .map_err(|e| Error::config(field, format!("{}: {e}", named())))?;
    if let Some(expected) = spec.digest.as_deref().filter(|&expected| expected != verified.digest) {
        return Err(Error::config(
            format!("{field}.digest"),
            format!("{} has manifest digest {}, the job pins {expected}", named(), verified.digest),
        ));
    }
    let reference =
        BaseVersion { model: spec.model.clone(), version: spec.version, manifest_digest: verified.digest.clone() };
    let bytes = verified.manifest.files.iter().map(|file| file.size).sum();
    let dense = dense::read(&verified, &Device::Cpu).map_err(|e| Error::config(field, format!("{}: {e}", named())))?;
    Ok((reference, bytes, dense))
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
