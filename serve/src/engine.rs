//! The generation engine of one language-model version: a dedicated thread that owns the model
//! and its paged KV cache and runs continuous batching. Requests wait in a bounded queue (full →
//! `RESOURCE_EXHAUSTED`); between steps the thread admits new sequences, drops the ones whose
//! client went away (their KV blocks are free at once) and asks [`lantern_runtime::llm::scheduler`] what the
//! next step feeds. One step runs every sequence together through [`Llama::forward`]; each
//! sampled token goes straight to its caller's channel as an [`Event`]. Every full block a step
//! writes is published to the cache's prefix index, so a later prompt that starts with the same
//! tokens (a shared system prompt, the earlier turns of a chat, a preempted sequence coming back)
//! skips their prefill; greedy output is the same either way.
//!
//! The thread ends when the last [`Engine`] handle is dropped and every accepted sequence has
//! finished, so streams in flight finish on their version; the `drained` receiver then fires.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::time::Instant;

use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use super::metrics::GenerationMetrics;
use crate::error::{Error, Result};
use lantern_runtime::llm::codec::TextCodec;
use lantern_runtime::llm::grammar::Constraint;
use lantern_runtime::llm::kv_cache::{self, BlockDigest, BlockTable, KvCache};
use lantern_runtime::llm::sampling::{self, Logprobs, Sampled, Sampler, SamplingParams};
use lantern_runtime::llm::scheduler::{self, Limits, Running};
use lantern_runtime::llm::stop::StopMatcher;
use lantern_runtime::llm::tokenizer::TextStream;
use lantern_runtime::model::VersionId;
use lantern_runtime::model::llama::{Config, Llama, Logits, SequenceStep};
use lantern_runtime::model::lora::LoraAdapter;

/// Engine knobs, per model version.
#[derive(Clone, Copy, Debug)]
pub struct EngineSettings {
    /// Memory for the KV cache; it is allocated in blocks of `block_size` tokens.
    pub kv_cache_bytes: usize,
    pub block_size: usize,
    /// Most tokens one step feeds: a longer prompt is prefilled in chunks of this size, between
    /// which running streams get their next token.
    pub max_step_tokens: usize,
    /// Most sequences decoded together.
    pub max_running: usize,
    /// Requests that may wait to start; one more is refused with `RESOURCE_EXHAUSTED`.
    pub max_waiting: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self { kv_cache_bytes: 256 << 20, block_size: 16, max_step_tokens: 256, max_running: 32, max_waiting: 256 }
    }
}

/// A LoRA adapter read against the engine's model ([`Engine::read_adapter`]), with the identity
/// its cached KV blocks are kept under (never shared with the bare model or another adapter) and
/// the adapter version's own metrics, which its sequences record into.
#[derive(Debug)]
pub struct ServedAdapter {
    pub weights: LoraAdapter,
    /// The adapter version's manifest digest (`sha256:…`).
    pub identity: String,
    pub metrics: GenerationMetrics,
}

/// One generation request, already tokenized and validated by the caller.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    /// The adapter the request runs with; `None`: the bare model.
    pub adapter: Option<Arc<ServedAdapter>>,
    /// Sequences generated from the prompt (OpenAI's `n`, at least 1): the prompt is prefilled
    /// once and its KV blocks shared ([`KvCache::fork`]); each is a choice with its own events.
    pub choices: usize,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// End-of-sequence tokens are masked until this many tokens are generated.
    pub min_tokens: usize,
    /// End-of-sequence tokens are never sampled: generation runs to `max_tokens` or a stop string.
    pub ignore_eos: bool,
    pub sampling: SamplingParams,
    /// The grammar every choice's text must match (a JSON schema), applied as a mask before each
    /// token; the choice ends where the grammar is complete.
    pub constraint: Option<Constraint>,
    /// Strings that end generation; they are not part of the output.
    pub stop: Vec<String>,
    /// Score the prompt with this many alternatives per token: [`Event::Prompt`], before any
    /// choice's first token. Its prefill then takes nothing from the prefix cache.
    pub prompt_logprobs: Option<usize>,
}

/// Why a sequence ended (OpenAI's `finish_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens taken from the prefix cache rather than prefilled.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

/// What a caller receives: for each choice, in order, its tokens then its `Finished`; choices
/// interleave. A `Failed` ends the whole request.
#[derive(Debug)]
pub enum Event {
    /// The prompt scored (asked for with `prompt_logprobs`); `choice` is the request's first (0).
    Prompt {
        choice: usize,
        scored: ScoredPrompt,
    },
    /// A generated token of choice `choice` and the text it adds (empty while a character or a
    /// possible stop string is incomplete, and for the end-of-sequence token, which is sent so
    /// token ids and usage agree), with its log-probabilities when they were asked for (never for
    /// the end-of-sequence token, which adds no text).
    Token {
        choice: usize,
        id: u32,
        text: String,
        logprobs: Option<Logprobs>,
    },
    /// The end of choice `choice`: the last text held back, why it ended and its token counts.
    Finished {
        choice: usize,
        text: String,
        reason: FinishReason,
        usage: Usage,
    },
    Failed(Error),
}

/// A prompt scored by the model: its tokens and the log-probabilities of each after the ones
/// before it (the first token has none: `logprobs` is one shorter than `tokens`).
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredPrompt {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<Logprobs>,
}

/// The receiving end of one request's events. Dropping it cancels the request.
pub type EventStream = tokio_mpsc::UnboundedReceiver<Event>;

/// What callers share with the engine thread.
#[derive(Debug)]
struct Shared {
    id: VersionId,
    /// Submitted sequences not yet admitted.
    waiting: AtomicUsize,
    max_waiting: usize,
    context_length: usize,
    capacity_tokens: usize,
    /// What adapters are read against: the model's sizes, its MLP width and its device.
    config: Config,
    intermediate: usize,
    device: candle_core::Device,
}

/// The handle to a version's engine thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    submissions: mpsc::Sender<Sequence>,
}

impl Engine {
    /// Starts the engine thread for `model`; the receiver fires when the thread has ended.
    pub fn spawn(
        id: VersionId,
        model: Llama,
        codec: Arc<TextCodec>,
        settings: EngineSettings,
        metrics: GenerationMetrics,
    ) -> Result<(Self, oneshot::Receiver<()>)> {
        let cache = KvCache::with_budget(model.kv_shape(), settings.block_size, settings.kv_cache_bytes);
        let shared = Arc::new(Shared {
            id: id.clone(),
            waiting: AtomicUsize::new(0),
            max_waiting: settings.max_waiting,
            context_length: model.config().context_length,
            capacity_tokens: cache.capacity_tokens(),
            config: model.config().clone(),
            intermediate: model
                .intermediate_size()
                .map_err(|e| Error::Shutdown(format!("reading the model's sizes: {e}")))?,
            device: model.device().clone(),
        });
        let (submissions, inbox) = mpsc::channel();
        let (drained_tx, drained) = oneshot::channel();
        let state = Loop {
            shared: shared.clone(),
            model,
            codec,
            cache,
            settings,
            metrics,
            inbox,
            waiting: VecDeque::new(),
            running: Vec::new(),
        };
        std::thread::Builder::new()
            .name(format!("generate-{}-{}", id.model, id.version))
            .spawn(move || {
                state.run();
                let _ = drained_tx.send(());
            })
            .map_err(|e| Error::io(format!("starting the generation thread of {} v{}", id.model, id.version), e))?;
        Ok((Self { shared, submissions }, drained))
    }

    /// The model's context length in tokens.
    pub fn context_length(&self) -> usize {
        self.shared.context_length
    }

    /// Tokens the KV cache holds; no request may need more.
    pub fn capacity_tokens(&self) -> usize {
        self.shared.capacity_tokens
    }

    /// Reads the PEFT adapter in a version's `files` against this engine's model.
    pub fn read_adapter(
        &self,
        files: &std::collections::BTreeMap<String, Vec<u8>>,
    ) -> lantern_runtime::Result<LoraAdapter> {
        let Shared { config, intermediate, device, .. } = &*self.shared;
        LoraAdapter::from_files(files, config, *intermediate, device)
    }

    /// Queues a request (sampling parameters already validated); its events arrive on the
    /// returned stream. Refuses an empty prompt, a request that cannot fit the context or the KV
    /// cache, and a full queue.
    pub fn submit(&self, request: GenerateRequest) -> Result<EventStream> {
        let shared = &self.shared;
        check_fits(&request, shared.context_length, shared.capacity_tokens)?;
        if shared.waiting.fetch_add(1, Ordering::AcqRel) >= shared.max_waiting {
            shared.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::QueueFull {
                model: shared.id.model.clone(),
                version: shared.id.version,
                capacity: shared.max_waiting,
            });
        }
        let (events, stream) = tokio_mpsc::unbounded_channel();
        let sequence = Sequence::new(request, events);
        self.submissions.send(sequence).map_err(|_| {
            shared.waiting.fetch_sub(1, Ordering::AcqRel);
            Error::Shutdown(format!("model {:?} version {} is shutting down", shared.id.model, shared.id.version))
        })?;
        Ok(stream)
    }
}

/// The identity of the weights a sequence runs with beyond the model's own (its adapter's), which
/// its KV blocks are named under.
fn weights(adapter: &Option<Arc<ServedAdapter>>) -> &[u8] {
    adapter.as_ref().map_or(&[], |adapter| adapter.identity.as_bytes())
}

/// Where a sequence's own figures go: its adapter version's metrics, or the engine's (the
/// engine-wide gauges — running, waiting, KV blocks — always carry the engine's labels).
fn metrics<'a>(engine: &'a GenerationMetrics, adapter: &'a Option<Arc<ServedAdapter>>) -> &'a GenerationMetrics {
    adapter.as_ref().map_or(engine, |adapter| &adapter.metrics)
}

/// Refuses what could never run: an empty prompt, no choices, more tokens than the context or
/// than the whole KV cache holds (for every choice together). The messages give the numbers.
fn check_fits(request: &GenerateRequest, context: usize, capacity: usize) -> Result<()> {
    let prompt = request.prompt.len();
    if prompt == 0 {
        return Err(Error::invalid("the prompt is empty"));
    }
    if request.max_tokens == 0 {
        return Err(Error::invalid("max_tokens must be at least 1"));
    }
    if request.choices == 0 {
        return Err(Error::invalid("n must be at least 1"));
    }
    if request.min_tokens > request.max_tokens {
        return Err(Error::invalid(format!(
            "min_tokens ({}) is more than max_tokens ({})",
            request.min_tokens, request.max_tokens
        )));
    }
    if prompt >= context {
        return Err(Error::invalid(format!(
            "the prompt has {prompt} tokens; this model's context is {context} tokens, \
             which must also hold at least one generated token"
        )));
    }
    // `prompt < context` here, and no sum of request numbers is formed: a `max_tokens` near
    // `usize::MAX` must be refused, not wrapped into a small number.
    if request.max_tokens > context - prompt {
        return Err(Error::invalid(format!(
            "max_tokens is {} but the context of {context} tokens leaves {} after the {prompt}-token prompt",
            request.max_tokens,
            context - prompt
        )));
    }
    // Each choice may need its whole length at once (a preempted one re-prefills its prompt).
    // `prompt + max_tokens ≤ context` here, so only the product can overflow.
    let choice = prompt + request.max_tokens;
    if choice.checked_mul(request.choices).is_none_or(|all| all > capacity) {
        return Err(Error::invalid(format!(
            "{} choice(s) of the prompt ({prompt} tokens) plus max_tokens ({}) need more than the \
             KV cache of {capacity} tokens; lower n or max_tokens or give the worker a larger --kv-cache-mib",
            request.choices, request.max_tokens
        )));
    }
    Ok(())
}

/// One choice of a request inside the engine.
struct Sequence {
    /// Which of its request's choices this is.
    choice: usize,
    /// Choices still to fork from this one once its prompt is in (the first choice's, until then).
    forks: usize,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    max_tokens: usize,
    min_tokens: usize,
    ignore_eos: bool,
    constraint: Option<Constraint>,
    table: BlockTable,
    /// The digests of the full blocks of `tokens`.
    digests: Vec<BlockDigest>,
    adapter: Option<Arc<ServedAdapter>>,
    /// Prompt tokens attached from the prefix cache when it was last admitted.
    cached_prompt: usize,
    /// The prompt's scores so far, while they are wanted and not yet sent.
    prompt_scores: Option<PromptScores>,
    sampler: Sampler,
    stop: StopMatcher,
    text: TextStream,
    events: tokio_mpsc::UnboundedSender<Event>,
    enqueued: Instant,
    started: Option<Instant>,
    last_token: Option<Instant>,
}

impl Sequence {
    fn new(request: GenerateRequest, events: tokio_mpsc::UnboundedSender<Event>) -> Self {
        Self {
            choice: 0,
            forks: request.choices - 1,
            sampler: Sampler::new(request.sampling),
            prompt_len: request.prompt.len(),
            tokens: request.prompt,
            max_tokens: request.max_tokens,
            min_tokens: request.min_tokens,
            ignore_eos: request.ignore_eos,
            constraint: request.constraint,
            table: BlockTable::default(),
            digests: Vec::new(),
            adapter: request.adapter,
            cached_prompt: 0,
            prompt_scores: request
                .prompt_logprobs
                .map(|alternatives| PromptScores { alternatives, logprobs: Vec::new() }),
            stop: StopMatcher::new(request.stop),
            text: TextStream::default(),
            events,
            enqueued: Instant::now(),
            started: None,
            last_token: None,
        }
    }

    /// Choice `choice` of this one's request, over `table` (this one's prompt, forked), before
    /// this one has generated anything.
    fn fork(&self, choice: usize, table: BlockTable) -> Self {
        debug_assert_eq!(self.generated(), 0, "forks are made after the prompt; this is a bug");
        Self {
            choice,
            forks: 0,
            tokens: self.tokens.clone(),
            prompt_len: self.prompt_len,
            max_tokens: self.max_tokens,
            min_tokens: self.min_tokens,
            ignore_eos: self.ignore_eos,
            constraint: self.constraint.clone(),
            table,
            digests: self.digests.clone(),
            adapter: self.adapter.clone(),
            cached_prompt: self.cached_prompt,
            // The first choice sends the prompt's scores.
            prompt_scores: None,
            sampler: self.sampler.sibling(choice),
            stop: self.stop.clone(),
            text: TextStream::default(),
            events: self.events.clone(),
            enqueued: self.enqueued,
            started: self.started,
            last_token: None,
        }
    }

    /// Whether the end-of-sequence tokens are masked for the next token.
    fn eos_masked(&self) -> bool {
        self.ignore_eos || self.generated() < self.min_tokens
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn pending(&self) -> usize {
        self.tokens.len() - self.table.len()
    }

    fn usage(&self) -> Usage {
        Usage { prompt_tokens: self.prompt_len, cached_tokens: self.cached_prompt, completion_tokens: self.generated() }
    }

    /// The leading full blocks that may come from the prefix cache, named in `digests`: the last
    /// token always runs through the model, since its logits are needed, and a prompt being
    /// scored runs through whole.
    fn reusable_blocks(&mut self, block_size: usize) -> usize {
        kv_cache::block_digests(&mut self.digests, weights(&self.adapter), &self.tokens, block_size);
        match self.prompt_scores {
            Some(_) => 0,
            None => (self.tokens.len() - 1) / block_size,
        }
    }

    /// Scores the prompt tokens that `rows` (the logits after each token fed from position
    /// `start`) predict and that are not scored yet; once the prompt is all in, sends the scores.
    fn score_prompt(&mut self, start: usize, rows: &mut [Vec<f32>]) {
        let Some(scores) = &mut self.prompt_scores else { return };
        for (position, row) in (start..).zip(rows.iter_mut()) {
            if position + 1 < self.prompt_len && position == scores.logprobs.len() {
                scores.logprobs.push(sampling::score(row, self.tokens[position + 1], scores.alternatives));
            }
        }
        if start + rows.len() >= self.prompt_len {
            let logprobs = std::mem::take(&mut scores.logprobs);
            self.prompt_scores = None;
            let scored = ScoredPrompt { tokens: self.tokens[..self.prompt_len].to_vec(), logprobs };
            let _ = self.events.send(Event::Prompt { choice: self.choice, scored });
        }
    }

    /// How the scheduler sees this queued sequence, given what the cache holds of its prefix.
    fn queued(&mut self, cache: &KvCache) -> Running {
        let reusable = self.reusable_blocks(cache.block_size());
        let hit = cache.lookup(&self.digests[..reusable]);
        let cached = hit.blocks * cache.block_size();
        Running { cached, pending: self.tokens.len() - cached, blocks: hit.blocks - hit.idle, exclusive: 0 }
    }
}

/// A prompt's scores, gathered as it is prefilled.
#[derive(Debug)]
struct PromptScores {
    /// Alternatives reported per token.
    alternatives: usize,
    /// One per prompt token after the first, in order.
    logprobs: Vec<Logprobs>,
}

/// The engine thread's state.
struct Loop {
    shared: Arc<Shared>,
    model: Llama,
    codec: Arc<TextCodec>,
    cache: KvCache,
    settings: EngineSettings,
    metrics: GenerationMetrics,
    inbox: mpsc::Receiver<Sequence>,
    waiting: VecDeque<Sequence>,
    /// Oldest first.
    running: Vec<Sequence>,
}

impl Loop {
    fn run(mut self) {
        while self.intake() {
            self.drop_cancelled();
            if !self.running.is_empty() || !self.waiting.is_empty() {
                self.step();
            }
            self.publish_gauges();
        }
        self.publish_gauges();
    }

    /// Moves submitted requests into the queue, blocking while there is nothing to do. False when
    /// every handle is gone and nothing is left to run.
    fn intake(&mut self) -> bool {
        if self.running.is_empty() && self.waiting.is_empty() {
            match self.inbox.recv() {
                Ok(sequence) => self.waiting.push_back(sequence),
                Err(_) => return false,
            }
        }
        loop {
            match self.inbox.try_recv() {
                Ok(sequence) => self.waiting.push_back(sequence),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// Forgets sequences whose caller hung up and frees their blocks.
    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.events.is_closed());
        self.shared.waiting.fetch_sub(before - self.waiting.len(), Ordering::AcqRel);
        let cache = &mut self.cache;
        self.running.retain_mut(|s| {
            let closed = s.events.is_closed();
            if closed {
                cache.release(&mut s.table);
            }
            !closed
        });
    }

    /// Plans, feeds and samples one step.
    fn step(&mut self) {
        let view: Vec<Running> = self
            .running
            .iter()
            .map(|s| Running {
                cached: s.table.len(),
                pending: s.pending(),
                blocks: s.table.blocks(),
                exclusive: self.cache.exclusive_blocks(&s.table),
            })
            .collect();
        let cache = &self.cache;
        let queue: Vec<Running> = self.waiting.iter_mut().map(|s| s.queued(cache)).collect();
        let limits = Limits {
            block_size: self.cache.block_size(),
            free_blocks: self.cache.free_blocks(),
            max_step_tokens: self.settings.max_step_tokens,
            max_running: self.settings.max_running,
        };
        let plan = scheduler::plan(&view, &queue, &limits);
        let mut chunks = plan.chunks;
        let now = Instant::now();
        for &chunk in &plan.admit {
            let mut sequence = self.waiting.pop_front().expect("the plan admits only queued sequences; this is a bug");
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
            if sequence.started.is_none() {
                metrics(&self.metrics, &sequence.adapter)
                    .queue_duration
                    .observe((now - sequence.enqueued).as_secs_f64());
                sequence.started = Some(now);
            }
            let reusable = sequence.reusable_blocks(self.cache.block_size());
            let cached = self.cache.attach(&mut sequence.table, &sequence.digests[..reusable]);
            sequence.cached_prompt = cached.min(sequence.prompt_len);
            metrics(&self.metrics, &sequence.adapter).prefix_cache_hits.inc_by(sequence.cached_prompt as u64);
            self.running.push(sequence);
            chunks.push(chunk);
        }
        for &index in plan.preempt.iter().rev() {
            let mut sequence = self.running.remove(index);
            chunks.remove(index);
            self.cache.release(&mut sequence.table);
            metrics(&self.metrics, &sequence.adapter).preemptions.inc();
            self.shared.waiting.fetch_add(1, Ordering::AcqRel);
            self.waiting.push_front(sequence);
        }
        self.run_step(&chunks);
    }

    /// Feeds `chunks[i]` tokens of running sequence `i`, scores the prompt tokens of those
    /// scoring theirs, then samples for every sequence whose pending tokens are all in.
    fn run_step(&mut self, chunks: &[usize]) {
        // (sequence, first position fed, rows of logits it gets, whether the last is sampled from)
        let mut fed = Vec::new();
        let mut steps = Vec::new();
        for (index, (sequence, &chunk)) in self.running.iter_mut().zip(chunks).enumerate() {
            let start = sequence.table.len();
            if chunk == 0 || !self.cache.reserve(&mut sequence.table, start + chunk) {
                continue;
            }
            let complete = start + chunk == sequence.tokens.len();
            let logits = match (sequence.prompt_scores.is_some(), complete) {
                (true, _) => Logits::Every,
                (false, true) => Logits::Last,
                (false, false) => Logits::None,
            };
            let prompt_tokens = chunk.min(sequence.prompt_len.saturating_sub(start));
            metrics(&self.metrics, &sequence.adapter).prompt_tokens.inc_by(prompt_tokens as u64);
            match logits {
                Logits::Every => fed.push((index, start, chunk, complete)),
                Logits::Last => fed.push((index, start + chunk - 1, 1, true)),
                Logits::None => {}
            }
            steps.push(SequenceStep {
                tokens: &sequence.tokens[start..start + chunk],
                table: &mut sequence.table,
                logits,
                adapter: sequence.adapter.as_ref().map(|adapter| &adapter.weights),
            });
        }
        if steps.is_empty() {
            return;
        }
        let result = self.model.forward(&mut steps, &mut self.cache).and_then(|l| l.to_vec2::<f32>());
        drop(steps);
        let rows = match result {
            Ok(rows) => rows,
            Err(error) => return self.fail_all(error.to_string()),
        };
        for sequence in &mut self.running {
            self.cache.publish(&mut sequence.table, &sequence.digests);
        }
        let mut finished = Vec::new();
        let mut rows = rows.into_iter();
        for (index, start, count, complete) in fed {
            let mut asked: Vec<Vec<f32>> = rows.by_ref().take(count).collect();
            self.running[index].score_prompt(start, &mut asked);
            let Some(logits) = asked.pop().filter(|_| complete) else { continue };
            let forks = self.fork(index);
            let mut each = forks.map(|fork| (fork, logits.clone())).collect::<Vec<_>>();
            each.push((index, logits));
            for (index, logits) in each {
                let ended = match self.sample(index, logits) {
                    Ok(sampled) => self.accept(index, sampled).map(Ok),
                    Err(error) => Some(Err(error)),
                };
                finished.extend(ended.map(|end| (index, end)));
            }
        }
        finished.sort_unstable_by_key(|&(index, _)| index);
        for (index, end) in finished.into_iter().rev() {
            let mut sequence = self.running.remove(index);
            match end {
                Ok(reason) => self.finish(sequence, reason),
                Err(error) => {
                    self.cache.release(&mut sequence.table);
                    let _ = sequence.events.send(Event::Failed(error));
                }
            }
        }
    }

    /// Makes the choices still to fork from running sequence `index`, now that its prompt is in:
    /// each shares its KV blocks and runs from the next step; one for which no block is free goes
    /// to the front of the queue instead, to prefill again (from the prefix cache where it can).
    /// Returns the indices of those now running.
    fn fork(&mut self, index: usize) -> std::ops::Range<usize> {
        let parent = &mut self.running[index];
        let forks = std::mem::take(&mut parent.forks);
        let first = self.running.len();
        for choice in 1..=forks {
            let parent = &self.running[index];
            match self.cache.fork(&parent.table) {
                Some(table) => {
                    let sequence = parent.fork(choice, table);
                    self.running.push(sequence);
                }
                None => {
                    let sequence = parent.fork(choice, BlockTable::default());
                    self.shared.waiting.fetch_add(1, Ordering::AcqRel);
                    self.waiting.push_front(sequence);
                }
            }
        }
        first..self.running.len()
    }

    /// Samples the next token of running sequence `index` from its `logits`, masked by its
    /// grammar and, where it may not end yet, without the end-of-sequence tokens.
    fn sample(&mut self, index: usize, mut logits: Vec<f32>) -> Result<Sampled> {
        let sequence = &mut self.running[index];
        if let Some(constraint) = &mut sequence.constraint {
            constraint.mask(&mut logits)?;
        }
        if sequence.eos_masked() {
            for &eos in self.codec.tokenizer().eos() {
                if let Some(logit) = logits.get_mut(eos as usize) {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
        let (prompt, output) = sequence.tokens.split_at(sequence.prompt_len);
        let sampled = sequence.sampler.sample(&mut logits, prompt, output);
        if let Some(constraint) = &mut sequence.constraint {
            constraint.accept(sampled.token)?;
        }
        Ok(sampled)
    }

    /// Appends a sampled token to sequence `index` and sends it; returns why the sequence ends, if
    /// it does.
    fn accept(&mut self, index: usize, sampled: Sampled) -> Option<FinishReason> {
        let Sampled { token, logprobs } = sampled;
        let now = Instant::now();
        let sequence = &mut self.running[index];
        sequence.tokens.push(token);
        let block_size = self.cache.block_size();
        kv_cache::block_digests(&mut sequence.digests, weights(&sequence.adapter), &sequence.tokens, block_size);
        let recorded = metrics(&self.metrics, &sequence.adapter);
        recorded.generated_tokens.inc();
        match sequence.last_token {
            Some(last) => recorded.inter_token_latency.observe((now - last).as_secs_f64()),
            None => recorded.time_to_first_token.observe((now - sequence.enqueued).as_secs_f64()),
        }
        sequence.last_token = Some(now);
        if self.codec.tokenizer().eos().contains(&token) {
            // Counted in usage like any generated token; it adds no text.
            let _ = sequence.events.send(Event::Token {
                choice: sequence.choice,
                id: token,
                text: String::new(),
                logprobs: None,
            });
            return Some(FinishReason::Stop);
        }
        let delta = match sequence.text.next(self.codec.tokenizer(), &sequence.tokens[sequence.prompt_len..]) {
            Ok(delta) => delta,
            Err(error) => {
                tracing::warn!(%error, "cannot decode a generated token");
                String::new()
            }
        };
        let release = sequence.stop.push(&delta);
        let _ = sequence.events.send(Event::Token { choice: sequence.choice, id: token, text: release.text, logprobs });
        let complete = sequence.constraint.as_ref().is_some_and(Constraint::is_finished);
        if release.stopped || complete {
            Some(FinishReason::Stop)
        } else if sequence.generated() >= sequence.max_tokens || sequence.tokens.len() >= self.shared.context_length {
            Some(FinishReason::Length)
        } else {
            None
        }
    }

    /// Sends the last held-back text and the usage, and frees the sequence's blocks.
    fn finish(&mut self, mut sequence: Sequence, reason: FinishReason) {
        self.cache.release(&mut sequence.table);
        let seconds = sequence.enqueued.elapsed().as_secs_f64();
        metrics(&self.metrics, &sequence.adapter).duration.observe(seconds);
        let generated = &sequence.tokens[sequence.prompt_len..];
        let generated = match generated.last() {
            Some(last) if self.codec.tokenizer().eos().contains(last) => &generated[..generated.len() - 1],
            _ => generated,
        };
        let tail = sequence.text.finish(self.codec.tokenizer(), generated).unwrap_or_default();
        let release = sequence.stop.push(&tail);
        let (text, reason) = match release.stopped {
            true => (release.text, FinishReason::Stop),
            false => (release.text + &sequence.stop.finish(), reason),
        };
        let _ =
            sequence.events.send(Event::Finished { choice: sequence.choice, text, reason, usage: sequence.usage() });
    }

    /// A step failed (a bug or a corrupt model): every running sequence gets the error and its
    /// blocks back; queued requests are untouched.
    fn fail_all(&mut self, reason: String) {
        tracing::error!(model = %self.shared.id.model, version = self.shared.id.version, %reason, "generation step failed");
        for mut sequence in self.running.drain(..) {
            self.cache.release(&mut sequence.table);
            let error = Error::Inference {
                model: self.shared.id.model.clone(),
                version: self.shared.id.version,
                reason: reason.clone(),
            };
            let _ = sequence.events.send(Event::Failed(error));
        }
    }

    fn publish_gauges(&self) {
        self.metrics.running.set(self.running.len() as i64);
        self.metrics.waiting.set(self.waiting.len() as i64);
        let free = self.cache.free_blocks();
        self.metrics.kv_blocks_free.set(free as i64);
        self.metrics.kv_blocks_used.set((self.cache.total_blocks() - free) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: usize, max_tokens: usize) -> GenerateRequest {
        GenerateRequest {
            prompt: vec![7; prompt],
            adapter: None,
            choices: 1,
            max_tokens,
            min_tokens: 0,
            ignore_eos: false,
            sampling: SamplingParams::greedy(),
            constraint: None,
            stop: Vec::new(),
            prompt_logprobs: None,
        }
    }

    #[test]
    fn requests_that_cannot_fit_are_refused_with_the_numbers() {
        assert!(check_fits(&request(10, 20), 100, 1000).is_ok());
        assert!(check_fits(&request(0, 20), 100, 1000).unwrap_err().to_string().contains("empty"));
        assert!(check_fits(&request(10, 0), 100, 1000).unwrap_err().to_string().contains("max_tokens"));
        let long = check_fits(&request(120, 1), 100, 1000).unwrap_err().to_string();
        assert!(long.contains("120 tokens") && long.contains("100 tokens"), "{long}");
        let over = check_fits(&request(10, 95), 100, 1000).unwrap_err().to_string();
        assert!(over.contains("95") && over.contains("leaves 90"), "{over}");
        let cache = check_fits(&request(10, 50), 100, 40).unwrap_err().to_string();
        assert!(cache.contains("KV cache of 40 tokens"), "{cache}");
    }

    #[test]
    fn a_max_tokens_near_the_integer_limit_is_refused_not_wrapped() {
        for max_tokens in [usize::MAX, usize::MAX - 5, usize::MAX / 2 + 1] {
            let err = check_fits(&request(10, max_tokens), 100, 1000).unwrap_err().to_string();
            assert!(err.contains("leaves 90"), "{err}");
        }
        assert!(check_fits(&request(50, usize::MAX), 100, 40).is_err());
    }

    #[test]
    fn every_choice_must_fit_the_kv_cache_and_min_tokens_within_max_tokens() {
        let choices = |n| GenerateRequest { choices: n, ..request(10, 20) };
        assert!(check_fits(&choices(4), 100, 120).is_ok());
        let over = check_fits(&choices(5), 100, 120).unwrap_err().to_string();
        assert!(over.contains("5 choice(s)") && over.contains("KV cache of 120 tokens"), "{over}");
        assert!(check_fits(&choices(usize::MAX), 100, 120).is_err(), "no overflow");
        assert!(check_fits(&choices(0), 100, 120).unwrap_err().to_string().contains("n must"));
        let min = GenerateRequest { min_tokens: 21, ..request(10, 20) };
        assert!(check_fits(&min, 100, 1000).unwrap_err().to_string().contains("min_tokens"));
    }
}
