//! Knowledge distillation: a student llama learns a teacher version's next-token distributions.
//!
//! The teacher is any llama version the repository serves (HF or GGUF), loaded as serving loads
//! it — a quantized GGUF runs on its quantized kernels — and run forward in every rank over that
//! rank's share of each batch; no server is involved. At every target token the teacher's
//! logits, softened by the temperature `T`, give its `top_k` most likely tokens and their
//! probabilities renormalized over them ([`top_k`]); the student is trained on
//! `(1 − w) · T² · KL(teacher ‖ student) + w · CE` ([`TrainLlama::distillation_loss`]).
//!
//! The student shares the teacher's tokenizer and chat template. It starts as a subset of the
//! teacher's layers ([`shallower`]), as fresh weights of the sizes given, or as a published
//! version whose vocabulary must be the teacher's ([`same_vocabulary`]). Every parameter is
//! trained; checkpoints, resume and the data-parallel step are the trainer's, as for any job.
//!
//! Each version is the student as an HF checkpoint whose manifest names the teacher (`base`) and
//! the settings (`config.distillation`), with the student's held-out loss and perplexity, the
//! share of held-out targets where its greedy token is the teacher's (`eval_agreement`),
//! `eval_accuracy` where the data has references, and `parameter_ratio` (student over teacher);
//! the teacher's own metrics are the baseline.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use lantern_runtime::llm::codec::TextCodec;
use lantern_runtime::model::dense::DenseLlama;
use lantern_runtime::model::llama::{HfConfig, Llama};
use lantern_runtime::repository::{BaseVersion, MANIFEST_FILE, Manifest};

use super::base::Base;
use super::config::{BaseSpec, DistillSpec, FineTuneMethod, OutputSpec, StudentSizes, StudentSpec};
use super::data::{Question, Sequence};
use super::heldout;
use super::lm::{Pass, SoftTargets, TrainLlama};
use super::params::model_error;
use crate::error::{Error, Result};

/// A student being distilled from its teacher.
pub struct Distill {
    pub student: TrainLlama,
    teacher: Llama,
    pub teacher_version: BaseVersion,
    teacher_parameters: usize,
    temperature: f64,
    top_k: usize,
    cross_entropy_weight: f64,
    /// The teacher's greedy token at every held-out target, measured at the first evaluation.
    teacher_greedy: OnceCell<Vec<u32>>,
}

impl Distill {
    /// Reads and verifies the teacher (and a student version) `spec` names, loads the teacher
    /// for its forward passes and prepares the student, on `device`.
    pub fn new(spec: &DistillSpec, output: &OutputSpec, seed: u64, device: &Device) -> Result<Self> {
        let open = |base: &BaseSpec, field: &str| {
            Base::open(&crate::config::open_repository(base.repository(output), output)?, base, field)
        };
        let teacher = open(&spec.teacher, "model.distill.teacher")?;
        let (teacher_model, _) = teacher.serving(device)?;
        let dense = teacher.dense()?;
        let teacher_parameters = dense.tensors.values().map(Tensor::elem_count).sum();
        let context = dense.config.max_position_embeddings;
        if spec.sequence_length > context {
            return Err(Error::config(
                "model.distill.sequence_length",
                format!("{} is beyond the teacher's context of {context} tokens", spec.sequence_length),
            ));
        }
        let shape = (spec.sequence_length, spec.precision);
        let full = |dense| {
            TrainLlama::fine_tune(dense, &FineTuneMethod::Full, spec.sequence_length, spec.precision, seed, device)
        };
        let student = match &spec.student {
            StudentSpec::Layers(layers) => full(shallower(dense, layers)?)?,
            StudentSpec::Sizes(sizes) => {
                let config = student_config(&dense.config, sizes);
                TrainLlama::fresh(config, dense.codec, shape, seed, device)?
            }
            StudentSpec::Base(base) => {
                let student = open(base, "model.distill.student.base")?.dense()?;
                same_vocabulary((&dense.config, &dense.codec), (&student.config, &student.codec))
                    .map_err(|reason| Error::config("model.distill.student.base", reason))?;
                if spec.sequence_length > student.config.max_position_embeddings {
                    return Err(Error::config(
                        "model.distill.sequence_length",
                        format!("{} is beyond the student's context", spec.sequence_length),
                    ));
                }
                full(student)?
            }
        };
        tracing::info!(
            teacher = %teacher.reference.model,
            version = teacher.reference.version,
            teacher_parameters,
            student_parameters = student.params().len(),
            "distilling a student from its teacher"
        );
        Ok(Self {
            student,
            teacher: teacher_model,
            teacher_version: teacher.reference,
            teacher_parameters,
            temperature: spec.temperature,
            top_k: spec.top_k,
            cross_entropy_weight: spec.cross_entropy_weight,
            teacher_greedy: OnceCell::new(),
        })
    }

    /// `scale` times the distillation loss over the targets of `sequences`, the teacher run
    /// forward over them first.
    pub fn loss(&self, sequences: &[Sequence], scale: f64, pass: Pass<'_>) -> candle_core::Result<Tensor> {
        let teacher = self.soft_targets(sequences).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        self.student.distillation_loss(sequences, &teacher, scale, pass)
    }

    /// The teacher's top tokens and probabilities at every target of `sequences`.
    fn soft_targets(&self, sequences: &[Sequence]) -> Result<SoftTargets> {
        let k = self.top_k.min(self.student.config().vocab_size);
        let (mut tokens, mut probabilities) = (Vec::new(), Vec::new());
        heldout::for_each_target(&self.teacher, sequences, |logits, _| {
            let (top, weights) = top_k(logits, k, self.temperature);
            tokens.extend(top);
            probabilities.extend(weights);
        })?;
        let rows = tokens.len() / k;
        let device = self.student.params().device();
        let tensor = |result: candle_core::Result<Tensor>| result.map_err(model_error);
        Ok(SoftTargets {
            tokens: tensor(Tensor::from_vec(tokens, (rows, k), device))?,
            probabilities: tensor(Tensor::from_vec(probabilities, (rows, k), device))?,
            temperature: self.temperature,
            cross_entropy_weight: self.cross_entropy_weight,
        })
    }

    /// The student as serving runs it: held-out loss and perplexity, agreement with the
    /// teacher's greedy tokens, exact-match accuracy where the data has references, and its
    /// size against the teacher's.
    pub fn evaluate(&self, sequences: &[Sequence], questions: &[Question]) -> Result<Vec<(String, f64)>> {
        if self.teacher_greedy.get().is_none() {
            let _ = self.teacher_greedy.set(heldout::greedy_targets(&self.teacher, sequences)?);
        }
        let expected = self.teacher_greedy.get().map_or(&[][..], Vec::as_slice);
        let served = self.student.to_serving()?;
        let mut metrics = heldout::loss(&served, sequences)?;
        metrics.push(heldout::agreement(&served, sequences, expected)?);
        metrics.extend(heldout::accuracy(&served, self.student.codec(), questions)?);
        let ratio = self.student.params().len() as f64 / self.teacher_parameters.max(1) as f64;
        metrics.push(("parameter_ratio".to_owned(), ratio));
        Ok(metrics)
    }

    /// The teacher's held-out loss, perplexity and accuracy: the baseline a student is read
    /// against.
    pub fn baseline(&self, sequences: &[Sequence], questions: &[Question]) -> Result<Vec<(String, f64)>> {
        let mut metrics = heldout::loss(&self.teacher, sequences)?;
        metrics.extend(heldout::accuracy(&self.teacher, self.student.codec(), questions)?);
        Ok(metrics)
    }

    /// Writes the student as an HF checkpoint with a manifest naming its teacher into `dir`.
    pub fn write_version(&self, dir: &Path) -> Result<()> {
        self.student.write_checkpoint(dir)?;
        let manifest = Manifest {
            base: Some(self.teacher_version.clone()),
            config: serde_json::json!({ "distillation": {
                "temperature": self.temperature,
                "top_k": self.top_k,
                "cross_entropy_weight": self.cross_entropy_weight,
            }}),
            ..Manifest::hf_language_model()
        };
        let path = dir.join(MANIFEST_FILE);
        std::fs::write(&path, manifest.to_json()).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}

/// The `k` largest of `logits` (highest first) and their probabilities at `temperature`,
/// renormalized over those `k`.
pub fn top_k(logits: &[f32], k: usize, temperature: f64) -> (Vec<u32>, Vec<f32>) {
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(order.len());
    if k == 0 {
        return (Vec::new(), Vec::new());
    }
    let descending = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    order.select_nth_unstable_by(k - 1, descending);
    order.truncate(k);
    order.sort_unstable_by(descending);
    let top = f64::from(logits[order[0] as usize]);
    let weights: Vec<f64> =
        order.iter().map(|&i| ((f64::from(logits[i as usize]) - top) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    (order, weights.into_iter().map(|w| (w / total) as f32).collect())
}

/// The teacher with only `layers` (0-based, ascending) of its layers, renumbered from 0.
pub fn shallower(teacher: DenseLlama, layers: &[usize]) -> Result<DenseLlama> {
    let field = "model.distill.student.layers";
    let count = teacher.config.num_hidden_layers;
    if layers.is_empty() {
        return Err(Error::config(field, "names no layer"));
    }
    if let Some(&beyond) = layers.iter().find(|&&layer| layer >= count) {
        return Err(Error::config(field, format!("layer {beyond} is beyond the teacher's {count} layers")));
    }
    if layers.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(Error::config(field, format!("{layers:?} must be ascending, each layer once")));
    }
    let DenseLlama { config, tensors, codec } = teacher;
    let kept: HashMap<usize, usize> = layers.iter().enumerate().map(|(new, &old)| (old, new)).collect();
    let tensors = tensors
        .into_iter()
        .filter_map(|(name, tensor)| match layer_of(&name) {
            None => Some((name, tensor)),
            Some((layer, rest)) => kept.get(&layer).map(|new| (format!("model.layers.{new}.{rest}"), tensor)),
        })
        .collect();
    let config = HfConfig { num_hidden_layers: layers.len(), ..config };
    Ok(DenseLlama { config, tensors, codec })
}

/// `(3, "mlp.up_proj.weight")` for `model.layers.3.mlp.up_proj.weight`.
fn layer_of(name: &str) -> Option<(usize, &str)> {
    let (layer, rest) = name.strip_prefix("model.layers.")?.split_once('.')?;
    Some((layer.parse().ok()?, rest))
}

/// A fresh student's architecture: `sizes`, with the teacher's vocabulary, rotary and norm
/// settings and context.
fn student_config(teacher: &HfConfig, sizes: &StudentSizes) -> HfConfig {
    HfConfig {
        hidden_size: sizes.hidden_size,
        intermediate_size: sizes.intermediate_size,
        num_hidden_layers: sizes.layers,
        num_attention_heads: sizes.heads,
        num_key_value_heads: Some(sizes.kv_heads.unwrap_or(sizes.heads)),
        head_dim: None,
        tie_word_embeddings: true,
        ..teacher.clone()
    }
}

/// Whether a student's vocabulary is its teacher's: the same output width and the same token
/// spellings, id by id.
pub fn same_vocabulary(
    (teacher_config, teacher): (&HfConfig, &TextCodec),
    (student_config, student): (&HfConfig, &TextCodec),
) -> std::result::Result<(), String> {
    if student_config.vocab_size != teacher_config.vocab_size {
        return Err(format!(
            "the student's vocabulary has {} tokens, the teacher's {}",
            student_config.vocab_size, teacher_config.vocab_size
        ));
    }
    let teacher = teacher.tokenizer().spellings().map_err(|e| e.to_string())?;
    let student = student.tokenizer().spellings().map_err(|e| e.to_string())?;
    match teacher.iter().zip(student).position(|(a, b)| a != b) {
        Some(id) => Err(format!(
            "the student's token {id} is {:?}, the teacher's {:?}: the tokenizers differ",
            String::from_utf8_lossy(&student[id]),
            String::from_utf8_lossy(&teacher[id])
        )),
        None if teacher.len() != student.len() => Err("the tokenizers differ in length".to_owned()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_and_renormalizes_at_the_temperature() {
        let logits = [0.0, 3.0, 1.0, 2.0];
        let (tokens, probabilities) = top_k(&logits, 2, 1.0);
        assert_eq!(tokens, vec![1, 3]);
        let expected = 1.0 / (1.0 + (-1.0f32).exp());
        assert!((probabilities[0] - expected).abs() < 1e-6 && (probabilities[1] - (1.0 - expected)).abs() < 1e-6);
        let (_, softer) = top_k(&logits, 2, 4.0);
        assert!(softer[0] < probabilities[0], "a higher temperature flattens: {softer:?}");
        let (all, _) = top_k(&logits, 10, 1.0);
        assert_eq!(all, vec![1, 3, 2, 0], "k beyond the vocabulary takes all of it");
    }

    #[test]
    fn layer_names_are_read_and_others_are_not_layers() {
        assert_eq!(layer_of("model.layers.12.self_attn.q_proj.weight"), Some((12, "self_attn.q_proj.weight")));
        assert_eq!(layer_of("model.norm.weight"), None);
        assert_eq!(layer_of("model.embed_tokens.weight"), None);
    }
}
