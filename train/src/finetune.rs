//! The fine-tuning side of a job: the base version read from the model repository (imported into
//! it first when the job says where from) and verified by digest, the model prepared for the
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
//! an ordinary llama (with the adapter files beside it under LoRA). The base is read into memory
//! once at the start, so removing it from the repository later cannot touch published versions.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use lantern_runtime::llm::greedy::{self, Prompt};
use lantern_runtime::model::dense;
use lantern_runtime::model::llama::Llama;
use lantern_runtime::repository::{self, BaseVersion, MANIFEST_FILE, Manifest, PublishRequest, Repository};

use super::config::{BaseSpec, FineTuneMethod, FineTuneSpec, OutputSpec};
use super::data::{Question, Sequence};
use super::jsonl;
use super::lm::{Pass, TrainLlama};
use super::params::model_error;
use crate::error::{Error, Result};

/// Held-out sequences per forward pass when measuring the loss.
const EVAL_CHUNK: usize = 8;
/// Held-out questions answered together.
const ANSWER_CHUNK: usize = 32;
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
        let base = &spec.base;
        let repository = crate::config::open_repository(base.repository(output), output)?;
        if let Some(source) = &base.import_from {
            import(&repository, base, source)?;
        }
        let field = "model.fine_tune.base";
        let verified = repository
            .read_verified(&base.model, base.version)
            .map_err(|e| Error::config(field, format!("{} version {}: {e}", base.model, base.version)))?;
        if let Some(expected) = base.digest.as_deref().filter(|&expected| expected != verified.digest) {
            return Err(Error::config(
                "model.fine_tune.base.digest",
                format!(
                    "{} version {} has manifest digest {}, the job pins {expected}",
                    base.model, base.version, verified.digest
                ),
            ));
        }
        let reference =
            BaseVersion { model: base.model.clone(), version: base.version, manifest_digest: verified.digest.clone() };
        let dense = dense::read(&verified, &Device::Cpu)
            .map_err(|e| Error::config(field, format!("{} version {}: {e}", base.model, base.version)))?;
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
        let served = self.served()?;
        let codec = self.model.codec();
        let mut right = 0;
        for chunk in questions.chunks(ANSWER_CHUNK) {
            let prompts: Vec<Prompt<'_>> = chunk
                .iter()
                .map(|q| Prompt { tokens: q.prompt.clone(), max_tokens: q.max_tokens, adapter: None })
                .collect();
            let answers = greedy::generate(&served, &prompts, codec.tokenizer().eos()).map_err(model_error)?;
            for (question, answer) in chunk.iter().zip(answers) {
                let text = codec.tokenizer().decode(&answer, true)?;
                right += usize::from(jsonl::exact_match(&text, &question.reference));
            }
        }
        Ok(vec![
            ("eval_loss".to_owned(), loss),
            ("eval_perplexity".to_owned(), loss.exp()),
            ("eval_accuracy".to_owned(), right as f64 / questions.len().max(1) as f64),
        ])
    }

    /// The model as serving would load it: the merged weights in the runtime's llama.
    fn served(&self) -> Result<Llama> {
        let tensors: HashMap<String, Tensor> = self.model.merged_weights().map_err(model_error)?.into_iter().collect();
        let device = self.model.params().device().clone();
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &device);
        Ok(Llama::from_hf(vb, self.model.config())?)
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

/// Publishes `source` as the base's version unless the repository holds it already. Several
/// ranks may race here: publishing an existing version fails without a trace, and the winner's
/// version is then read like any other.
fn import(repository: &Repository, base: &BaseSpec, source: &Path) -> Result<()> {
    if repository.versions(&base.model)?.contains(&base.version) {
        return Ok(());
    }
    let request = PublishRequest { repository, model: &base.model, source, version: Some(base.version), metrics: &[] };
    match repository::publish(&request) {
        Ok(version) => {
            tracing::info!(model = %base.model, version, source = %source.display(), "imported the base");
            Ok(())
        }
        Err(_) if repository.versions(&base.model)?.contains(&base.version) => Ok(()),
        Err(e) => Err(Error::config("model.fine_tune.base.import_from", format!("{}: {e}", source.display()))),
    }
}
