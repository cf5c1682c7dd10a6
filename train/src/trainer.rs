//! The training loop: resume from the newest complete state, join the other ranks, then for each
//! step read this rank's share of the global batch, compute the loss and gradients, average the
//! gradients over the ranks, clip, and apply AdamW. Every rank applies the same update to the
//! same parameters, so they stay identical. Every `checkpoint.every_steps` steps and at the end,
//! rank 0 saves the training state and publishes the weights as the next model version with the
//! held-out metrics.
//!
//! The loss and a stop flag travel with the gradients, so every rank sees the same mean loss
//! (and stops together on a non-finite one) and a termination request on any rank stops all of
//! them after the same step, rank 0 saving the state first.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lantern_proto::lantern::v1::TrainingPhase;

use sha2::{Digest, Sha256};

use super::checkpoint::{self, OPTIMIZER_FILE, PARAMS_FILE, Saved};
use super::collective::{Collective, Placement};
use super::config::{CheckpointSpec, DataSpec, JobConfig, ModelSpec, ScheduleSpec};
use super::curves::{self, Curves, Point};
use super::data::{self, Batch, Dataset, HeldOut, Order, Sequence};
use super::distill::Distill;
use super::finetune::{BASELINE_PREFIX, FineTune};
use super::lm::{Pass, TrainLlama};
use super::mlp::TrainMlp;
use super::optim::{self, AdamW};
use super::params::{Params, model_error};
use super::progress::{Progress, ProgressServer};
use super::quantize;
use crate::error::{Error, Result};
use lantern_runtime::repository::{self, ObjectDir, PublishRequest, Repository, retention};

/// The metric a published version records its training step under.
pub const STEP_METRIC: &str = "step";
/// Longest answer generated for an addition problem.
const ANSWER_TOKENS: usize = 8;

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Steps completed (all of them unless interrupted).
    pub step: u64,
    /// The training loss of the last step.
    pub loss: f64,
    /// Versions this run published.
    pub published: Vec<u64>,
    /// Stopped early by a termination request, after saving a state.
    pub interrupted: bool,
    /// Steps trained by this run, the tokens they read over all ranks (padding excluded), and
    /// the seconds they took (startup, resuming and rendezvous excluded; checkpoints included).
    pub trained_steps: u64,
    pub tokens: u64,
    pub seconds: f64,
    /// The part of `seconds` rank 0 spent saving, evaluating and publishing checkpoints.
    pub checkpoint_seconds: f64,
}

impl Outcome {
    /// Steps and tokens per second of training, checkpoints excluded.
    pub fn rates(&self) -> (f64, f64) {
        let seconds = (self.seconds - self.checkpoint_seconds).max(f64::EPSILON);
        (self.trained_steps as f64 / seconds, self.tokens as f64 / seconds)
    }
}

/// The model being trained.
enum Model {
    Llama(Box<TrainLlama>),
    FineTune(Box<FineTune>),
    Distill(Box<Distill>),
    Mlp(TrainMlp),
}

impl Model {
    /// The model `config` describes, on the rank's device, and the data it trains on (a
    /// fine-tuned base's tokenizer and template read the data).
    fn with_data(config: &JobConfig, schedule: &ScheduleSpec) -> Result<(Self, Dataset)> {
        let device = lantern_runtime::device::open(config.cluster.device)?;
        let (batch, seed) = (schedule.global_batch, config.seed);
        let data = |codec| Dataset::load(&config.data, sequence_length(config), batch, seed, codec);
        match (&config.model, &config.data) {
            (ModelSpec::Llama(spec), _) => {
                let dataset = data(None)?;
                Ok((Self::Llama(Box::new(TrainLlama::new(spec, seed, &device)?)), dataset))
            }
            (ModelSpec::FineTune(spec), _) => {
                let tuned = FineTune::new(spec, &config.output, seed, &device)?;
                let dataset = data(Some(tuned.model.codec()))?;
                Ok((Self::FineTune(Box::new(tuned)), dataset))
            }
            (ModelSpec::Distill(spec), _) => {
                let distill = Distill::new(spec, &config.output, seed, &device)?;
                let dataset = data(Some(distill.student.codec()))?;
                Ok((Self::Distill(Box::new(distill)), dataset))
            }
            (ModelSpec::Mlp(spec), DataSpec::Csv(csv)) => {
                let dataset = data(None)?;
                let mlp = TrainMlp::new(spec, dataset.features(), csv.classes, seed, &device)?;
                Ok((Self::Mlp(mlp), dataset))
            }
            (ModelSpec::Mlp(_), _) => Err(Error::config("data", "an mlp trains on csv data")),
            (ModelSpec::Quantize(_), _) => Err(Error::config("model", "a quantize job trains nothing")),
        }
    }

    fn params(&self) -> &Params {
        match self {
            Self::Llama(model) => model.params(),
            Self::FineTune(tuned) => tuned.model.params(),
            Self::Distill(distill) => distill.student.params(),
            Self::Mlp(model) => model.params(),
        }
    }

    /// The loss of this rank's share of a step. A token loss is the sum over the share's
    /// targets divided by the global batch's `targets` and multiplied by the `world` size, so
    /// the ranks' mean is the global batch's mean however the targets fall between them.
    fn loss(&self, share: &Share, targets: usize, world: usize) -> candle_core::Result<candle_core::Tensor> {
        let scale = world as f64 / targets.max(1) as f64;
        let pass = Pass::Training { positions: &share.positions };
        match (self, &share.batch) {
            (Self::Llama(model), Batch::Tokens(sequences)) => model.loss(sequences, scale, pass),
            (Self::FineTune(tuned), Batch::Tokens(sequences)) => tuned.model.loss(sequences, scale, pass),
            (Self::Distill(distill), Batch::Tokens(sequences)) => distill.loss(sequences, scale, pass),
            (Self::Mlp(model), Batch::Rows { features, targets }) => model.loss(features, targets),
            _ => candle_core::bail!("the batch does not suit the model; this is a bug"),
        }
    }

    /// The held-out metrics of what training starts from, which every version records beside its
    /// own: a fine-tune's base, a distillation's teacher; none for the other tasks.
    fn baseline(&self, held_out: &HeldOut) -> Result<Option<Vec<(String, f64)>>> {
        match (self, held_out) {
            (Self::FineTune(_), _) => self.evaluate(held_out).map(Some),
            (Self::Distill(distill), HeldOut::Answers { sequences, questions }) => {
                distill.baseline(sequences, questions).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Held-out metrics.
    fn evaluate(&self, held_out: &HeldOut) -> Result<Vec<(String, f64)>> {
        let mean_loss = |model: &TrainLlama, sequences: &[Sequence]| -> Result<f64> {
            let targets: usize = sequences.iter().map(Sequence::target_count).sum();
            let loss =
                model.loss(sequences, 1.0 / targets.max(1) as f64, Pass::Evaluation).and_then(|l| l.to_scalar::<f32>());
            loss.map(f64::from).map_err(model_error)
        };
        match (self, held_out) {
            (Self::Llama(model), HeldOut::Addition { problems, windows }) => {
                let mut right = 0;
                for &(a, b) in problems {
                    let prompt = data::bytes_to_tokens(data::addition_prompt(a, b).as_bytes());
                    let answer = model.greedy(&prompt, ANSWER_TOKENS).map_err(model_error)?;
                    right += usize::from(answer == data::bytes_to_tokens((a + b).to_string().as_bytes()));
                }
                Ok(vec![
                    ("eval_loss".to_owned(), mean_loss(model, windows)?),
                    ("eval_accuracy".to_owned(), right as f64 / problems.len() as f64),
                ])
            }
            (Self::Llama(model), HeldOut::Tokens(windows)) => {
                Ok(vec![("eval_loss".to_owned(), mean_loss(model, windows)?)])
            }
            (Self::FineTune(tuned), HeldOut::Answers { sequences, questions }) => tuned.evaluate(sequences, questions),
            (Self::Distill(distill), HeldOut::Answers { sequences, questions }) => {
                distill.evaluate(sequences, questions)
            }
            (Self::Mlp(model), HeldOut::Rows { features, targets }) => model.evaluate(features, targets),
            _ => Err(Error::config("data", "the held-out data does not suit the model")),
        }
    }

    fn write_version(&self, dir: &Path) -> Result<()> {
        match self {
            Self::Llama(model) => model.write_checkpoint(dir),
            Self::FineTune(tuned) => tuned.write_version(dir),
            Self::Distill(distill) => distill.write_version(dir),
            Self::Mlp(model) => model.write_checkpoint(dir),
        }
    }
}

/// Runs the job to its last step, or until `interrupt` is set on any rank (then rank 0 saves a
/// state first). Rank 0 serves its progress meanwhile.
pub fn train(config: &JobConfig, interrupt: &AtomicBool) -> Result<Outcome> {
    let cluster = &config.cluster;
    let progress = (cluster.rank == 0).then(|| {
        // A quantize job is one step that publishes one version.
        let (steps, batch) = config.schedule.as_ref().map_or((1, 0), |s| (s.steps, s.global_batch));
        let progress = Progress::new(&config.output.model, steps, cluster.world_size, batch);
        progress.hold(config.output.held_versions.clone());
        progress
    });
    let token = cluster.token_file.as_deref().map(lantern_proto::auth::read_token_file).transpose()?;
    let _server = match &progress {
        Some(progress) => {
            let listen = cluster.progress_address.as_deref().unwrap_or("127.0.0.1:0");
            let server = ProgressServer::start(progress.clone(), listen, token.as_deref())?;
            tracing::info!(address = %server.address(), "serving training progress (TrainingService, /metrics)");
            Some(server)
        }
        None => None,
    };
    let result = match &config.model {
        ModelSpec::Quantize(spec) => quantize::run(config, spec, progress.as_deref()),
        _ => run(config, interrupt, progress.clone(), token),
    };
    if let Some(progress) = &progress {
        match &result {
            Ok(outcome) if !outcome.interrupted => progress.set_phase(TrainingPhase::Succeeded),
            Ok(_) => {}
            Err(error) => progress.failed(&error.to_string()),
        }
    }
    // Rank 0's message is its final progress; another rank's is why it failed, the same text
    // rank 0 would give, so the job reads alike whichever rank the operator sees fail first.
    let message = match (&progress, &result) {
        (Some(progress), _) => Some(progress.termination_message()),
        (None, Err(error)) => Some(error.to_string()),
        (None, Ok(_)) => None,
    };
    if let (Some(path), Some(message)) = (&cluster.termination_log, message)
        && let Err(error) = std::fs::write(path, message)
    {
        tracing::warn!(path = %path.display(), %error, "writing the termination message");
    }
    if progress.is_some() && matches!(&result, Ok(outcome) if !outcome.interrupted) {
        // Rank 0 stops serving as it returns: give pollers a moment to see the end.
        std::thread::sleep(Duration::from_secs_f64(cluster.progress_linger_seconds));
    }
    result
}

fn run(
    config: &JobConfig,
    interrupt: &AtomicBool,
    progress: Option<Arc<Progress>>,
    token: Option<String>,
) -> Result<Outcome> {
    let cluster = &config.cluster;
    let (Some(schedule), Some(checkpoint_spec)) = (&config.schedule, &config.checkpoint) else {
        return Err(Error::config("schedule", "a training job needs its schedule and checkpoint settings"));
    };
    let batch_size = schedule.global_batch;
    let (model, dataset) = Model::with_data(config, schedule)?;
    let optimizer = AdamW::new(config.optimizer.clone(), model.params().decay_mask());
    let repository = crate::config::open_repository(&config.output.repository, &config.output)?;
    let states = checkpoint_spec.state_uri.as_deref().map(ObjectDir::open).transpose()?;
    if let Some(states) = &states {
        checkpoint::restore(&checkpoint_spec.state_dir, states)?;
    }
    let mut job = Job {
        config,
        checkpoint_spec,
        model,
        dataset,
        optimizer,
        progress,
        repository,
        states,
        published: Vec::new(),
        baseline: Vec::new(),
        curves: None,
    };
    let (mut step, mut loss) = (0, f64::NAN);
    let latest = checkpoint::latest(&checkpoint_spec.state_dir)?;
    if job.progress.is_some() {
        let resumed_at = latest.as_ref().map_or(0, |saved| saved.state.step);
        job.curves = Some(Curves::resume(&checkpoint_spec.state_dir, resumed_at)?);
    }
    if let Some(saved) = latest {
        job.model.params().load(&saved.params())?;
        job.optimizer.load(&saved.optimizer(), saved.state.step)?;
        (step, loss) = (saved.state.step, saved.state.loss);
        tracing::info!(step, dir = %saved.dir.display(), "resuming from a saved training state");
        job.baseline = checkpoint::read_baseline(&checkpoint_spec.state_dir)?;
        if let Some(progress) = &job.progress {
            progress.baseline(&job.baseline);
        }
        // A crash between saving the state and publishing its version: publish it now.
        job.publish_once(&saved)?;
    } else {
        job.measure_baseline()?;
    }
    let mut collective = match cluster.world_size {
        1 => None,
        _ => Some(Collective::join(placement(config, token), step, job.progress.clone())?),
    };
    let mut order = Order::new(config.seed, job.dataset.len());
    if let Some(progress) = &job.progress {
        progress.training_from(step);
    }
    let (started, first_step) = (std::time::Instant::now(), step);
    let (mut trained_tokens, mut checkpoint_seconds) = (0, 0.0);
    let outcome = |step: u64, loss: f64, published: Vec<u64>, interrupted: bool, tokens, checkpoint_seconds| Outcome {
        step,
        loss,
        published,
        interrupted,
        trained_steps: step - first_step,
        tokens,
        seconds: started.elapsed().as_secs_f64(),
        checkpoint_seconds,
    };
    while step < schedule.steps {
        let step_started = std::time::Instant::now();
        let share = Share {
            batch: job.dataset.gather(&order.batch(step, batch_size, cluster.rank, cluster.world_size)),
            positions: data::share(step, batch_size, cluster.rank, cluster.world_size).map(|p| p as u64).collect(),
        };
        let global = order.global_batch(step, batch_size);
        let (targets, tokens) = (job.dataset.target_count(&global), job.dataset.token_count(&global));
        let (mut gradients, local_loss) =
            gradients(&job.model, &share, targets, cluster.world_size).map_err(|e| stopped(step, e))?;
        // The loss and the stop flag ride along, averaged with the gradients.
        gradients.extend([local_loss as f32, f32::from(u8::from(interrupt.load(Ordering::Relaxed)))]);
        if let Some(collective) = collective.as_mut() {
            collective.all_reduce_mean(&mut gradients, step, collective_timeout(config, checkpoint_spec, step))?;
        }
        let stop = gradients.pop().is_some_and(|flag| flag > 0.0);
        let step_loss = f64::from(gradients.pop().expect("the loss rides with the gradients; this is a bug"));
        if stop {
            tracing::info!(step, "termination requested; saving the training state");
            if let Some(progress) = &job.progress {
                progress.set_phase(TrainingPhase::Stopping);
            }
            job.checkpoint(step, loss)?;
            if let Some(collective) = collective {
                collective.finish();
            }
            return Ok(outcome(step, loss, job.published, true, trained_tokens, checkpoint_seconds));
        }
        if !step_loss.is_finite() {
            return Err(Error::Training {
                step,
                reason: format!("the loss is {step_loss}; the last saved state and its version are kept"),
            });
        }
        let gradient_norm = optim::clip(&mut gradients, config.optimizer.grad_clip);
        let mut values = job.model.params().read_flat()?;
        let learning_rate = optim::learning_rate(&config.optimizer, schedule, step);
        job.optimizer.update(&mut values, &gradients, learning_rate);
        job.model.params().write_flat(&values)?;
        step += 1;
        loss = step_loss;
        if let Some(curves) = job.curves.as_mut() {
            let mut scalars = vec![
                (curves::LOSS.to_owned(), step_loss as f32),
                (curves::LEARNING_RATE.to_owned(), learning_rate as f32),
                (curves::GRADIENT_NORM.to_owned(), gradient_norm as f32),
            ];
            if tokens > 0 {
                let rate = tokens as f64 / step_started.elapsed().as_secs_f64();
                scalars.push((curves::TOKENS_PER_SECOND.to_owned(), rate as f32));
            }
            curves.append(&Point::now(step, scalars))?;
        }
        if let Some(progress) = &job.progress {
            progress.step_done(step, loss, learning_rate, order.epoch_of(step - 1, batch_size), tokens);
        }
        trained_tokens += tokens as u64;
        if step % checkpoint_spec.every_steps == 0 || step == schedule.steps {
            tracing::info!(step, loss, "checkpoint");
            let started = std::time::Instant::now();
            job.checkpoint(step, loss)?;
            checkpoint_seconds += started.elapsed().as_secs_f64();
        }
    }
    if let Some(collective) = collective {
        collective.finish();
    }
    Ok(outcome(step, loss, job.published, false, trained_tokens, checkpoint_seconds))
}

/// Tokens per training sequence (0 for tabular data).
fn sequence_length(config: &JobConfig) -> usize {
    match &config.model {
        ModelSpec::Llama(spec) => spec.context,
        ModelSpec::FineTune(spec) => spec.sequence_length,
        ModelSpec::Distill(spec) => spec.sequence_length,
        ModelSpec::Mlp(_) | ModelSpec::Quantize(_) => 0,
    }
}

/// How long a rank waits for its neighbour in the all-reduce of `step`. Right after a checkpoint
/// rank 0 has been saving, evaluating and publishing while the others went on to this step, so
/// they wait for that as well.
fn collective_timeout(config: &JobConfig, checkpoint: &CheckpointSpec, step: u64) -> Duration {
    let after_checkpoint = step > 0 && step.is_multiple_of(checkpoint.every_steps);
    let seconds = match after_checkpoint {
        true => config.cluster.timeout_seconds + checkpoint.timeout_seconds,
        false => config.cluster.timeout_seconds,
    };
    Duration::from_secs_f64(seconds)
}

/// This rank's place in the ring, from the cluster settings.
fn placement(config: &JobConfig, token: Option<String>) -> Placement {
    let cluster = &config.cluster;
    Placement {
        token,
        rank: cluster.rank,
        world_size: cluster.world_size,
        coordinator: cluster.coordinator.clone().unwrap_or_default(),
        address: cluster.address.clone(),
        job: job_identity(config),
        rendezvous_timeout: Duration::from_secs_f64(cluster.rendezvous_timeout_seconds),
    }
}

/// A digest of everything that must be equal on every rank: model, data, optimizer, schedule,
/// seed and output model. The data files count by their contents, not their paths: each pod may
/// see its volumes elsewhere (a ConfigMap's files are the pod's own), and two files at one path
/// that differ must not train together.
fn job_identity(config: &JobConfig) -> String {
    let mut data = config.data.clone();
    for path in data.paths_mut() {
        *path = file_digest(path).into();
    }
    let shared =
        serde_json::json!([config.model, data, config.optimizer, config.schedule, config.seed, config.output.model]);
    hex::encode(&Sha256::digest(shared.to_string().as_bytes())[..8])
}

/// `sha256:<hex>` of a file's bytes, or why it cannot be read (which the data's loading reports).
fn file_digest(path: &Path) -> String {
    let hashed = std::fs::File::open(path).and_then(|mut file| {
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(hasher.finalize())
    });
    match hashed {
        Ok(digest) => format!("sha256:{}", hex::encode(digest)),
        Err(error) => format!("unreadable: {error}"),
    }
}

/// This rank's share of a step: its examples and their places in the global reading order.
struct Share {
    batch: Batch,
    positions: Vec<u64>,
}

/// This rank's gradients (flat) and loss for its share of a step whose global batch holds
/// `targets` target tokens.
fn gradients(model: &Model, share: &Share, targets: usize, world: usize) -> candle_core::Result<(Vec<f32>, f64)> {
    let loss = model.loss(share, targets, world)?;
    let grads = loss.backward()?;
    let flat = model.params().gradients_flat(&grads).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Ok((flat, f64::from(loss.to_scalar::<f32>()?)))
}

fn stopped(step: u64, error: candle_core::Error) -> Error {
    Error::Training { step, reason: error.to_string() }
}

/// Everything a rank trains with. Only rank 0 (the one with `progress`) writes states and
/// publishes versions.
struct Job<'a> {
    config: &'a JobConfig,
    /// The job's checkpoint settings (a training job has them).
    checkpoint_spec: &'a CheckpointSpec,
    model: Model,
    dataset: Dataset,
    optimizer: AdamW,
    progress: Option<Arc<Progress>>,
    /// Where versions are published.
    repository: Repository,
    /// Where states are copied, with a remote repository.
    states: Option<ObjectDir>,
    /// Versions this run published.
    published: Vec<u64>,
    /// The held-out metrics of the model before any training (only a fine-tuned base's are
    /// measured), recorded in every version's manifest with [`BASELINE_PREFIX`].
    baseline: Vec<(String, f64)>,
    /// Rank 0's training curves, which every version carries up to its step.
    curves: Option<Curves>,
}

impl Job<'_> {
    /// Rank 0 measures a fine-tuned base or a distillation's teacher on the held-out data once,
    /// before the first step, and keeps the result beside the training states for a resumed run.
    fn measure_baseline(&mut self) -> Result<()> {
        if self.progress.is_none() {
            return Ok(());
        }
        let Some(baseline) = self.model.baseline(&self.dataset.held_out)? else { return Ok(()) };
        self.baseline = baseline;
        tracing::info!(metrics = ?self.baseline, "the held-out metrics training starts from (the baseline)");
        if let Some(progress) = &self.progress {
            progress.baseline(&self.baseline);
        }
        checkpoint::write_baseline(&self.checkpoint_spec.state_dir, &self.baseline)
    }

    /// Saves the training state for `step` (and copies it to the remote repository's store),
    /// publishes its version, and prunes old states.
    fn checkpoint(&mut self, step: u64, loss: f64) -> Result<()> {
        if self.progress.is_none() {
            return Ok(());
        }
        let state_dir = &self.checkpoint_spec.state_dir;
        let saved = checkpoint::save(state_dir, step, loss, |dir| {
            self.model.params().save(&dir.join(PARAMS_FILE))?;
            self.optimizer.save(&dir.join(OPTIMIZER_FILE))
        })?;
        if let Some(states) = &self.states {
            checkpoint::mirror(&saved, states, self.checkpoint_spec.keep)?;
        }
        self.publish_once(&saved)?;
        checkpoint::prune(state_dir, self.checkpoint_spec.keep)
    }

    /// Publishes the model (holding `saved`'s weights) as the next version, with the training
    /// loss, the held-out metrics and the step, unless this job published a version of that step
    /// already (other jobs' versions of the model do not count: a distillation may publish into
    /// the model its teacher was fine-tuned as).
    fn publish_once(&mut self, saved: &Saved) -> Result<()> {
        let Some(progress) = &self.progress else { return Ok(()) };
        let output = &self.config.output;
        let job = job_name(self.checkpoint_spec);
        if job_steps(&self.repository, &output.model, Some(&job))?.contains_key(&saved.state.step) {
            return Ok(());
        }
        let mut metrics =
            vec![(STEP_METRIC.to_owned(), saved.state.step as f64), ("loss".to_owned(), saved.state.loss)];
        metrics.extend(self.model.evaluate(&self.dataset.held_out)?);
        metrics.extend(self.baseline.iter().map(|(name, value)| (format!("{BASELINE_PREFIX}{name}"), *value)));
        let staging = tempfile::tempdir().map_err(|e| Error::io("creating a staging directory", e))?;
        self.model.write_version(staging.path())?;
        if let Some(curves) = self.curves.as_mut() {
            curves.append(&Point::held_out(saved.state.step, &metrics))?;
            curves.write_version(staging.path(), saved.state.step)?;
        }
        stamp_job(staging.path(), job)?;
        let request = PublishRequest {
            repository: &self.repository,
            model: &output.model,
            source: staging.path(),
            version: None,
            metrics: &metrics,
        };
        let version = repository::publish(&request)?;
        let digest = self.repository.manifest_digest(&output.model, version)?;
        tracing::info!(model = %output.model, version, step = saved.state.step, ?metrics, %digest, "published a version");
        progress.published(version, &metrics, &digest);
        self.published.push(version);
        if let Some(keep) = output.keep_versions {
            // Retention never fails the job: a removal that fails is retried after the next publish.
            match retention::retain(&self.repository, &output.model, keep, &progress.held()) {
                Ok(removed) => progress.removed(&removed),
                Err(error) => tracing::warn!(%error, "listing versions for retention failed"),
            }
        }
        Ok(())
    }
}

/// The training step each published version of `model` records, and the version.
pub fn published_steps(repository: &Repository, model: &str) -> Result<BTreeMap<u64, u64>> {
    job_steps(repository, model, None)
}

/// As [`published_steps`], of the versions `job` published when given.
fn job_steps(repository: &Repository, model: &str, job: Option<&str>) -> Result<BTreeMap<u64, u64>> {
    let mut steps = BTreeMap::new();
    for version in repository.versions(model)? {
        let manifest = repository.manifest(model, version)?;
        if let Some(&step) =
            manifest.metrics.get(STEP_METRIC).filter(|_| job.is_none() || manifest.job.as_deref() == job)
        {
            steps.insert(step as u64, version);
        }
    }
    Ok(steps)
}

/// A job's name in the manifests it publishes: where its states are kept, which no other job
/// shares.
fn job_name(checkpoint: &CheckpointSpec) -> String {
    checkpoint.state_uri.clone().unwrap_or_else(|| checkpoint.state_dir.display().to_string())
}

/// Records `job` in the manifest of the version a model wrote into `dir` (written out when the
/// model's files imply it).
fn stamp_job(dir: &Path, job: String) -> Result<()> {
    let manifest = repository::Manifest { job: Some(job), ..repository::source_manifest(dir)? };
    let path = dir.join(repository::MANIFEST_FILE);
    std::fs::write(&path, manifest.to_json()).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_after_a_checkpoint_waits_for_rank_0_to_publish() {
        let mut config = crate::config::from_json(
            serde_json::json!({
                "model": {"mlp": {"hidden": [4], "activation": "tanh"}},
                "data": {"csv": {"path": "/rows.csv", "target": "y"}},
                "schedule": {"steps": 100, "global_batch": 4},
                "checkpoint": {"every_steps": 10, "state_dir": "/state", "timeout_seconds": 300},
                "output": {"repository": "/models", "model": "m"},
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        config.cluster.timeout_seconds = 5.0;
        let checkpoint = config.checkpoint.clone().unwrap();
        let waits: Vec<u64> =
            [0, 9, 10, 11, 20].map(|step| collective_timeout(&config, &checkpoint, step).as_secs()).to_vec();
        assert_eq!(waits, vec![5, 5, 305, 5, 305]);
    }

    #[test]
    fn ranks_agree_on_data_by_its_contents_wherever_each_sees_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let job = |path: &Path| {
            let text = serde_json::json!({
                "model": {"mlp": {"hidden": [4], "activation": "tanh"}},
                "data": {"csv": {"path": path, "target": "y"}},
                "schedule": {"steps": 100, "global_batch": 4},
                "output": {"repository": "/models", "model": "m"},
            });
            job_identity(&crate::config::from_json(text.to_string().as_bytes()).unwrap())
        };
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let (here, there) = (write("a.csv", "x,y\n1,2\n"), write("b.csv", "x,y\n1,2\n"));
        assert_eq!(job(&here), job(&there), "the same rows under two pods' paths");
        let other = write("c.csv", "x,y\n1,3\n");
        assert_ne!(job(&here), job(&other), "other rows");
    }
}
