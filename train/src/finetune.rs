//! The fine-tuning side of a job: the base version ([`super::base`]), the model prepared for the
//! method, held-out evaluation, and what each checkpoint publishes.
//!
//! Evaluation measures the held-out loss (over the answer tokens only) and its perplexity, and the
//! share of held-out questions whose greedy answer equals the reference after trimming
//! (`eval_accuracy`). The answers come from the serving runtime's own llama
//! ([`lantern_runtime::model::llama::Llama`]) loaded from the merged weights, with its KV cache:
//! what a user of the published version gets, and far faster than recomputing every prefix.
//!
//! A checkpoint publishes, under LoRA, an adapter version (PEFT's `adapter_model.safetensors` and
//! `adapter_config.json`, the manifest naming the base and its manifest digest); with `merge` —
//! and always under full fine-tuning — the version is a whole HF checkpoint that serving loads as
//! an ordinary llama (with the adapter files beside it under LoRA).

use std::path::Path;

use candle_core::Device;
use lantern_runtime::repository::{BaseVersion, MANIFEST_FILE, Manifest};

use super::base;
use super::config::{FineTuneMethod, FineTuneSpec, OutputSpec};
use super::data::{Question, Sequence};
use super::heldout;
use super::lm::{Pass, TrainLlama};
use super::params::model_error;
use crate::error::{Error, Result};

/// Held-out sequences per forward pass when measuring the loss.
const EVAL_CHUNK: usize = 8;
/// Prefix of the base's own metrics in every version's manifest.
pub const BASELINE_PREFIX: &str = "baseline_";

/// A pretrained llama being fine-tuned.
pub struct FineTune {
    pub model: TrainLlama,
    pub base: BaseVersion,
    method: FineTuneMethod,
    merge: bool,
}

impl FineTune {
    /// Reads and verifies the base `spec` names (importing it first when asked) and prepares it
    /// for the method on `device`.
    pub fn new(spec: &FineTuneSpec, output: &OutputSpec, seed: u64, device: &Device) -> Result<Self> {
        let repository = crate::config::open_repository(spec.base.repository(output), output)?;
        let (reference, _, dense) = base::read(&repository, &spec.base, "model.fine_tune.base")?;
        let limit = dense.config.max_position_embeddings;
        if spec.sequence_length > limit {
            return Err(Error::config(
                "model.fine_tune.sequence_length",
                format!("{} is beyond the base's context of {limit} tokens", spec.sequence_length),
            ));
        }
        let model = TrainLlama::fine_tune(dense, &spec.method, spec.sequence_length, spec.precision, seed, device)?;
        tracing::info!(
            base = %reference.model,
            version = reference.version,
            digest = %reference.manifest_digest,
            trained = model.params().len(),
            "fine-tuning a pretrained base"
        );
        Ok(Self { model, base: reference, method: spec.method.clone(), merge: spec.merge })
    }

    /// Held-out loss and perplexity over the answers of `sequences`, and the exact-match
    /// accuracy of greedy answers to `questions`.
    pub fn evaluate(&self, sequences: &[Sequence], questions: &[Question]) -> Result<Vec<(String, f64)>> {
        let targets: usize = sequences.iter().map(Sequence::target_count).sum();
        let mut loss = 0.0;
        for chunk in sequences.chunks(EVAL_CHUNK) {
            let chunk_loss =
                self.model.loss(chunk, 1.0 / targets as f64, Pass::Evaluation).and_then(|l| l.to_scalar::<f32>());
            loss += f64::from(chunk_loss.map_err(model_error)?);
        }
        let mut metrics = vec![("eval_loss".to_owned(), loss), ("eval_perplexity".to_owned(), loss.exp())];
        metrics.extend(heldout::accuracy(&self.model.to_serving()?, self.model.codec(), questions)?);
        Ok(metrics)
    }

    /// Writes the version's files and its manifest (naming the base) into `dir`.
    pub fn write_version(&self, dir: &Path) -> Result<()> {
        if let FineTuneMethod::Lora(lora) = &self.method {
            self.model.write_adapter(dir, lora, &format!("{}/{}", self.base.model, self.base.version))?;
        }
        let manifest = match self.merge || self.method == FineTuneMethod::Full {
            true => {
                self.model.write_checkpoint(dir)?;
                Manifest { base: Some(self.base.clone()), ..Manifest::hf_language_model() }
            }
            false => Manifest::lora_adapter(self.base.clone()),
        };
        let path = dir.join(MANIFEST_FILE);
        std::fs::write(&path, manifest.to_json()).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}
