//! The worker thread: owns the llama.cpp contexts and runs continuous batching.
//!
//! Each turn it takes new jobs, admits as many as sequence ids and KV cells allow, and makes one decode call
//! holding one token for every generating sequence plus, in the room left, prompt chunks (the shared
//! prefix's first, then the jobs' own). It samples every sequence that produced logits, ends those that hit
//! an end-of-generation token, a stop string or `max_tokens`, and frees their cells at once. Embedding jobs
//! go through a second context, packed as many inputs per decode call as fit.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use crate::budget::{Budget, Slot};
use crate::model::{backend, Loaded};
use crate::prefix::{common_prefix, Plan, PrefixCache, MIN_SHARED};
use crate::sample::Settings;
use crate::stats::{Shared, ThreadRate};
use crate::{Embedded, EngineConfig, Finish, Generated, JobError, LoadError, Params};

pub(crate) enum Command {
    Generate(Box<GenJob>),
    Embed(Box<EmbedJob>),
    PlanKv(u32),
    Stop,
}

pub(crate) struct GenJob {
    pub tokens: Vec<i32>,
    pub params: Params,
    pub sampler: Settings,
    pub reply: oneshot::Sender<Result<Generated, JobError>>,
}

pub(crate) struct EmbedJob {
    pub inputs: Vec<Vec<i32>>,
    pub reply: oneshot::Sender<Result<Embedded, JobError>>,
}

/// Tokens per job the KV cache is sized for when the caller gives no plan.
const DEFAULT_NEED: u32 = 1024;
/// The embedding context: tokens per decode call and inputs per call.
const EMBED_BATCH: u32 = 2048;
const EMBED_SEQS: usize = 128;

/// The settings the worker runs with, fixed at start.
#[derive(Debug, Clone)]
struct Setup {
    threads: usize,
    sequences: usize,
    batch: u32,
    context: Option<u32>,
    kv_tokens: Option<u32>,
    memory: Option<u64>,
}

pub(crate) struct Worker;

impl Worker {
    /// Measures the thread counts (unless fixed), then starts the worker thread.
    pub fn start(
        loaded: Arc<Loaded>,
        config: EngineConfig,
        stats: Arc<Shared>,
        rx: Receiver<Command>,
    ) -> Result<std::thread::JoinHandle<()>, LoadError> {
        let cores = crate::topology::physical_cores();
        let (threads, rates) = match config.threads {
            Some(n) => (n.max(1), Vec::new()),
            None => calibrate(&loaded, cores)?,
        };
        let batch = config.batch.max(32);
        let setup = Setup {
            threads,
            // Every generating sequence puts a token in each decode call: no more of them than a call holds.
            sequences: config.sequences.clamp(1, batch as usize),
            batch,
            context: config.context,
            kv_tokens: config.kv_tokens,
            memory: config.memory,
        };
        stats.update(|s| {
            s.threads = threads;
            s.physical_cores = cores;
            s.thread_rates = rates;
            s.sequences = setup.sequences;
            s.batch = setup.batch;
            s.gpu_layers = config.gpu_layers.unwrap_or(0).min(loaded.info.n_layer);
        });
        std::thread::Builder::new()
            .name("inflight-engine".into())
            .spawn(move || run(&loaded, &setup, &stats, rx))
            .map_err(|e| LoadError::Context(format!("cannot start the engine's thread: {e}")))
    }
}

/// Tokens per second of one decode call of `CALIBRATION_TOKENS` tokens (as many sequences decoding together)
/// for each thread count up to the physical cores; the fastest wins.
const CALIBRATION_TOKENS: usize = 32;

fn calibrate(loaded: &Loaded, cores: usize) -> Result<(usize, Vec<ThreadRate>), LoadError> {
    let backend = backend()?;
    let tokens: Vec<LlamaToken> = (0..CALIBRATION_TOKENS as i32).map(|i| LlamaToken(100 + i)).collect();
    let mut rates = Vec::new();
    for threads in 1..=cores.max(1) {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(256))
            .with_n_batch(64)
            .with_n_ubatch(64)
            .with_n_seq_max(1)
            .with_n_threads(threads as i32)
            .with_n_threads_batch(threads as i32);
        let mut ctx = loaded.model.new_context(backend, params).map_err(|e| LoadError::Context(e.to_string()))?;
        let mut best = f64::INFINITY;
        for round in 0..4 {
            let mut batch = LlamaBatch::new(CALIBRATION_TOKENS, 1);
            for (i, t) in tokens.iter().enumerate() {
                batch.add(*t, i as i32, &[0], i + 1 == tokens.len()).map_err(|e| LoadError::Context(e.to_string()))?;
            }
            let started = Instant::now();
            ctx.decode(&mut batch).map_err(|e| LoadError::Context(e.to_string()))?;
            let took = started.elapsed().as_secs_f64();
            if round > 0 {
                best = best.min(took);
            }
            let _ = ctx.clear_kv_cache_seq(None, None, None);
        }
        rates.push(ThreadRate { threads, tokens_per_s: CALIBRATION_TOKENS as f64 / best });
    }
    let fastest = rates.iter().max_by(|a, b| a.tokens_per_s.total_cmp(&b.tokens_per_s)).map(|r| r.threads).unwrap_or(1);
    Ok((fastest, rates))
}

/// Half of the memory available now.
fn default_memory() -> u64 {
    crate::topology::available_memory().unwrap_or(4 << 30) / 2
}

/// KV cells per sequence: room for twice the largest job seen in the caller's sample (at least 1,024), at most
/// the model's training context, within `memory` bytes for all `sequences` plus the prefix's own.
pub(crate) fn cells_per_sequence(
    sequences: usize,
    need: u32,
    n_ctx_train: u32,
    bytes_per_token: u64,
    memory: u64,
) -> u32 {
    let wanted = need.saturating_mul(2).max(1024).min(n_ctx_train.max(need));
    let affordable = memory / bytes_per_token.max(1) / (sequences as u64 + 1);
    (wanted as u64).min(affordable).min(u32::MAX as u64) as u32
}

struct Active {
    slot: Slot,
    job: GenJob,
    sampler: Option<LlamaSampler>,
    /// Prompt tokens already in the KV cache.
    done: usize,
    /// Waiting on the shared prefix being prefilled.
    parked: bool,
    /// The sampled token to feed next.
    next: Option<i32>,
    text: Vec<u8>,
    generated: u32,
    logits_at: Option<i32>,
}

impl Active {
    fn pos(&self) -> i32 {
        (self.done as u32 + self.generated.saturating_sub(1)) as i32
    }
}

struct Prefix {
    cache: PrefixCache,
    seq: i32,
    tokens: Vec<i32>,
    done: usize,
}

struct Gen<'m> {
    ctx: LlamaContext<'m>,
    budget: Budget,
    batch: LlamaBatch<'static>,
    batch_size: usize,
    active: Vec<Active>,
    waiting: VecDeque<GenJob>,
    prefix: Prefix,
    /// Each free sequence's last prompt, whose KV cells it still holds (as llama-server's slots keep theirs): a
    /// new job on it keeps the cells of the tokens it shares with that prompt and prefills only the rest.
    kept: Vec<Vec<i32>>,
}

struct Embedder<'m> {
    ctx: LlamaContext<'m>,
    queue: VecDeque<(EmbedJob, Vec<Vec<f32>>)>,
}

fn run(loaded: &Loaded, setup: &Setup, stats: &Shared, rx: Receiver<Command>) {
    let mut need = DEFAULT_NEED;
    let mut gen: Option<Gen<'_>> = None;
    let mut embedder: Option<Embedder<'_>> = None;
    loop {
        let busy = gen.as_ref().is_some_and(|g| !g.active.is_empty() || !g.waiting.is_empty())
            || embedder.as_ref().is_some_and(|e| !e.queue.is_empty());
        // Block only when there is nothing to decode.
        let mut first = if busy {
            rx.try_recv().ok()
        } else {
            let started = Instant::now();
            let got = match rx.recv_timeout(Duration::from_secs(3600)) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Command::Stop),
            };
            stats.update(|s| s.idle_time += started.elapsed());
            got
        };
        while let Some(command) = first.take().or_else(|| rx.try_recv().ok()) {
            match command {
                Command::Stop => {
                    if let Some(g) = gen.take() {
                        g.close();
                    }
                    if let Some(e) = embedder.take() {
                        for (job, _) in e.queue {
                            let _ = job.reply.send(Err(JobError::Closed));
                        }
                    }
                    return;
                }
                Command::PlanKv(n) => need = n.max(16),
                Command::Generate(job) => {
                    if gen.is_none() {
                        match Gen::new(loaded, setup, need, stats) {
                            Ok(g) => gen = Some(g),
                            Err(e) => {
                                let _ = job.reply.send(Err(e));
                                continue;
                            }
                        }
                    }
                    if let Some(g) = gen.as_mut() {
                        g.take(*job);
                    }
                }
                Command::Embed(job) => {
                    if embedder.is_none() {
                        match Embedder::new(loaded, setup) {
                            Ok(e) => embedder = Some(e),
                            Err(e) => {
                                let _ = job.reply.send(Err(e));
                                continue;
                            }
                        }
                    }
                    if let Some(e) = embedder.as_mut() {
                        e.take(*job);
                    }
                }
            }
        }
        if let Some(e) = embedder.as_mut() {
            e.step(stats);
        }
        if let Some(g) = gen.as_mut() {
            g.step(loaded, stats);
        }
    }
}

impl<'m> Gen<'m> {
    fn new(loaded: &'m Loaded, setup: &Setup, need: u32, stats: &Shared) -> Result<Gen<'m>, JobError> {
        let info = &loaded.info;
        let memory = setup.memory.unwrap_or_else(default_memory);
        let streams = setup.sequences as u32 + 1;
        let per_sequence = match (setup.context, setup.kv_tokens) {
            (Some(c), _) => c,
            (None, Some(total)) => total / streams,
            (None, None) => {
                cells_per_sequence(setup.sequences, need, info.n_ctx_train, info.kv_bytes_per_token, memory)
            }
        }
        .max(16);
        let cells = per_sequence.saturating_mul(streams);
        // One KV stream per sequence (not one unified pool): a sequence's cells are laid out as they would be if
        // it ran alone, so its answer does not depend on what else is in the batch.
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(cells))
            .with_n_batch(setup.batch)
            .with_n_ubatch(setup.batch)
            .with_n_seq_max(streams)
            .with_kv_unified(false)
            .with_n_threads(setup.threads as i32)
            .with_n_threads_batch(setup.threads as i32);
        let backend = backend().map_err(|e| JobError::Decode(e.to_string()))?;
        let ctx = loaded
            .model
            .new_context(backend, params)
            .map_err(|e| JobError::Decode(format!("cannot create a context of {cells} tokens: {e}")))?;
        let limit = per_sequence;
        stats.update(|s| {
            s.kv_tokens = cells;
            s.context = limit;
        });
        Ok(Gen {
            ctx,
            budget: Budget::new(limit, setup.sequences),
            batch: LlamaBatch::new(setup.batch as usize, 1),
            batch_size: setup.batch as usize,
            active: Vec::new(),
            waiting: VecDeque::new(),
            prefix: Prefix { cache: PrefixCache::default(), seq: setup.sequences as i32, tokens: Vec::new(), done: 0 },
            kept: vec![Vec::new(); setup.sequences],
        })
    }

    fn take(&mut self, mut job: GenJob) {
        job.params.max_tokens = job.params.max_tokens.max(1);
        let prompt = job.tokens.len() as u32;
        let limit = self.budget.cells();
        if prompt as u64 + job.params.max_tokens as u64 > limit as u64 {
            let err =
                JobError::ContextLengthExceeded { prompt_tokens: prompt, max_tokens: job.params.max_tokens, limit };
            let _ = job.reply.send(Err(err));
            return;
        }
        self.waiting.push_back(job);
    }

    /// Admits waiting jobs while ids and cells allow, in arrival order.
    fn admit(&mut self, loaded: &Loaded, stats: &Shared) {
        while let Some(job) = self.waiting.front() {
            let cells = job.tokens.len() as u32 + job.params.max_tokens;
            let Some(slot) = self.budget.admit(cells) else { break };
            let job = self.waiting.pop_front().expect("front exists");
            let sampler = match job.sampler.sampler(&loaded.model) {
                Ok(s) => s,
                Err(e) => {
                    self.budget.release(slot);
                    let _ = job.reply.send(Err(e));
                    continue;
                }
            };
            let mut active = Active {
                slot,
                job,
                sampler: Some(sampler),
                done: 0,
                parked: false,
                next: None,
                text: Vec::new(),
                generated: 0,
                logits_at: None,
            };
            self.start(&mut active, stats);
            self.active.push(active);
        }
    }

    /// Starts a job on its sequence from what the sequence still holds of its last prompt, when that is at
    /// least as much as the shared prefix would give; else clears the sequence and applies the prefix plan.
    fn start(&mut self, a: &mut Active, stats: &Shared) {
        let kept = std::mem::take(&mut self.kept[a.slot.id as usize]);
        let usable = |n: usize| n.min(a.job.tokens.len().saturating_sub(1));
        let reuse = usable(common_prefix(&kept, &a.job.tokens));
        let from_prefix = usable(self.prefix.cache.ready_common(&a.job.tokens));
        if reuse >= MIN_SHARED && reuse >= from_prefix {
            let _ = self.ctx.clear_kv_cache_seq(Some(a.slot.id as u32), Some(reuse as u32), None);
            a.done = reuse;
            stats.update(|s| s.kept_tokens += reuse as u64);
            return;
        }
        let _ = self.ctx.clear_kv_cache_seq(Some(a.slot.id as u32), None, None);
        self.plan(a, stats);
    }

    /// Applies the prefix plan for a job that holds a slot and has nothing in the KV cache yet.
    fn plan(&mut self, a: &mut Active, stats: &Shared) {
        a.parked = false;
        match self.prefix.cache.plan(&a.job.tokens) {
            Plan::Own => {}
            Plan::Wait => a.parked = true,
            Plan::Copy(n) => {
                // Sequences have their own streams, and llama.cpp copies between streams whole: take all of the
                // prefix's cells, then drop what this job does not share.
                let _ = self.ctx.copy_kv_cache_seq(self.prefix.seq, a.slot.id, None, None);
                if n < self.prefix.tokens.len() {
                    let _ = self.ctx.clear_kv_cache_seq(Some(a.slot.id as u32), Some(n as u32), None);
                }
                a.done = n;
                stats.update(|s| s.prefix_saved_tokens += n as u64);
            }
            Plan::Build(tokens) => {
                // Replace the old prefix; the jobs that copied it keep their copies.
                let _ = self.ctx.clear_kv_cache_seq(Some(self.prefix.seq as u32), None, None);
                stats.update(|s| s.prefix_tokens = s.prefix_tokens.max(tokens.len() as u32));
                // The job that revealed the prefix (admitted with this one, in a burst) waits for it too, rather
                // than computing the same tokens beside it.
                for other in self.active.iter_mut().filter(|o| o.done == 0 && o.next.is_none() && !o.parked) {
                    if other.job.tokens.len() > tokens.len() && other.job.tokens.starts_with(&tokens) {
                        other.parked = true;
                    }
                }
                self.prefix.tokens = tokens;
                self.prefix.done = 0;
                a.parked = true;
            }
        }
    }

    /// One decode call and the sampling after it.
    fn step(&mut self, loaded: &Loaded, stats: &Shared) {
        self.admit(loaded, stats);
        if self.active.is_empty() {
            return;
        }
        // In sequence order: llama.cpp puts consecutive sequence ids, as they come in the batch, in one pass.
        self.active.sort_unstable_by_key(|a| a.slot.id);
        self.batch.clear();
        let mut room = self.batch_size;
        let (mut prompt_tokens, mut gen_tokens) = (0usize, 0usize);
        for a in self.active.iter_mut() {
            a.logits_at = None;
            if let Some(t) = a.next {
                let _ = self.batch.add(LlamaToken(t), a.pos(), &[a.slot.id], true);
                a.logits_at = Some(self.batch.n_tokens() - 1);
                room -= 1;
                gen_tokens += 1;
            }
        }
        if self.prefix.cache.building() && room > 0 {
            let take = (self.prefix.tokens.len() - self.prefix.done).min(room);
            for i in self.prefix.done..self.prefix.done + take {
                let _ = self.batch.add(LlamaToken(self.prefix.tokens[i]), i as i32, &[self.prefix.seq], false);
            }
            self.prefix.done += take;
            room -= take;
            prompt_tokens += take;
        }
        for a in self.active.iter_mut().filter(|a| a.next.is_none() && !a.parked) {
            if room == 0 {
                break;
            }
            let take = (a.job.tokens.len() - a.done).min(room);
            for i in a.done..a.done + take {
                let last = i + 1 == a.job.tokens.len();
                let _ = self.batch.add(LlamaToken(a.job.tokens[i]), i as i32, &[a.slot.id], last);
                if last {
                    a.logits_at = Some(self.batch.n_tokens() - 1);
                }
            }
            a.done += take;
            room -= take;
            prompt_tokens += take;
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        let started = Instant::now();
        let result = self.ctx.decode(&mut self.batch);
        let took = started.elapsed();
        let sequences = self.active.iter().filter(|a| a.logits_at.is_some()).count();
        stats.update(|s| {
            let share = prompt_tokens as f64 / (prompt_tokens + gen_tokens).max(1) as f64;
            s.prefill_time += took.mul_f64(share);
            s.decode_time += took.mul_f64(1.0 - share);
            s.prefill_tokens += prompt_tokens as u64;
            s.decode_calls += 1;
            s.max_batch_sequences = s.max_batch_sequences.max(sequences);
        });
        if let Err(e) = result {
            // The call's KV cells are in an unknown state: end its jobs (they may be tried again) and the prefix.
            let message = e.to_string();
            for a in std::mem::take(&mut self.active) {
                self.finish_seq(a, Err(JobError::Decode(message.clone())));
            }
            let _ = self.ctx.clear_kv_cache_seq(Some(self.prefix.seq as u32), None, None);
            self.prefix.cache = PrefixCache::default();
            return;
        }
        if self.prefix.cache.building() && self.prefix.done == self.prefix.tokens.len() {
            self.prefix.cache.ready();
            let mut parked: Vec<Active> = Vec::new();
            let mut i = 0;
            while i < self.active.len() {
                if self.active[i].parked {
                    parked.push(self.active.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            for mut a in parked {
                self.plan(&mut a, stats);
                self.active.push(a);
            }
        }
        self.sample(loaded, stats);
    }

    fn sample(&mut self, loaded: &Loaded, stats: &Shared) {
        let started = Instant::now();
        let mut ended = Vec::new();
        let mut generated = 0u64;
        for (i, a) in self.active.iter_mut().enumerate() {
            let Some(at) = a.logits_at else { continue };
            let Some(sampler) = a.sampler.as_mut() else { continue };
            let token = sampler.sample(&self.ctx, at).0;
            a.generated += 1;
            generated += 1;
            if loaded.is_eog(token) {
                ended.push((i, Finish::Stop));
                continue;
            }
            a.text.extend_from_slice(&loaded.piece(token));
            if let Some(cut) = stop_at(&a.text, &a.job.params.stop) {
                a.text.truncate(cut);
                ended.push((i, Finish::Stop));
            } else if a.generated >= a.job.params.max_tokens {
                ended.push((i, Finish::Length));
            } else {
                a.next = Some(token);
            }
        }
        // Counted before the answers go out: a caller that has every answer sees every count.
        stats.update(|s| {
            s.sample_time += started.elapsed();
            s.decode_tokens += generated;
            s.jobs += ended.len() as u64;
        });
        for (i, finish) in ended.into_iter().rev() {
            let a = self.active.swap_remove(i);
            let answer = Generated {
                text: String::from_utf8_lossy(&a.text).into_owned(),
                prompt_tokens: a.job.tokens.len() as u32,
                completion_tokens: a.generated,
                finish,
            };
            self.finish_seq(a, Ok(answer));
        }
    }

    /// Ends a job: its answer goes out, and its sequence is free again, still holding the cells of its prompt
    /// for the next job on it when the job ended well (after a failed decode they are cleared).
    fn finish_seq(&mut self, a: Active, answer: Result<Generated, JobError>) {
        if answer.is_ok() && !a.parked {
            self.kept[a.slot.id as usize] = a.job.tokens[..a.done].to_vec();
        } else {
            let _ = self.ctx.clear_kv_cache_seq(Some(a.slot.id as u32), None, None);
        }
        self.budget.release(a.slot);
        let _ = a.job.reply.send(answer);
    }

    fn close(mut self) {
        for a in std::mem::take(&mut self.active) {
            self.finish_seq(a, Err(JobError::Closed));
        }
        for job in self.waiting.drain(..) {
            let _ = job.reply.send(Err(JobError::Closed));
        }
    }
}

/// Where the text must be cut: the start of the first stop string in it.
fn stop_at(text: &[u8], stops: &[String]) -> Option<usize> {
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.windows(s.len()).position(|w| w == s.as_bytes())).min()
}

impl<'m> Embedder<'m> {
    fn new(loaded: &'m Loaded, setup: &Setup) -> Result<Embedder<'m>, JobError> {
        let pooling = loaded.can_pool()?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(EMBED_BATCH))
            .with_n_batch(EMBED_BATCH)
            .with_n_ubatch(EMBED_BATCH)
            .with_n_seq_max(EMBED_SEQS as u32)
            .with_kv_unified(true)
            .with_embeddings(true)
            .with_pooling_type(pooling.llama())
            .with_n_threads(setup.threads as i32)
            .with_n_threads_batch(setup.threads as i32);
        let backend = backend().map_err(|e| JobError::Decode(e.to_string()))?;
        let ctx = loaded
            .model
            .new_context(backend, params)
            .map_err(|e| JobError::Decode(format!("cannot create the embedding context: {e}")))?;
        Ok(Embedder { ctx, queue: VecDeque::new() })
    }

    fn take(&mut self, job: EmbedJob) {
        if let Some(long) = job.inputs.iter().find(|t| t.len() as u32 > EMBED_BATCH) {
            let err =
                JobError::ContextLengthExceeded { prompt_tokens: long.len() as u32, max_tokens: 0, limit: EMBED_BATCH };
            let _ = job.reply.send(Err(err));
            return;
        }
        self.queue.push_back((job, Vec::new()));
    }

    /// One decode call holding as many waiting inputs as fit, from as many jobs as needed.
    fn step(&mut self, stats: &Shared) {
        if self.queue.is_empty() {
            return;
        }
        let mut batch = LlamaBatch::new(EMBED_BATCH as usize, 1);
        // (job index in the queue, input index) for each sequence of this call.
        let mut seqs: Vec<(usize, usize)> = Vec::new();
        let mut used = 0usize;
        'fill: for (j, (job, done)) in self.queue.iter().enumerate() {
            for (k, input) in job.inputs.iter().enumerate().skip(done.len()) {
                if used + input.len() > EMBED_BATCH as usize || seqs.len() == EMBED_SEQS {
                    break 'fill;
                }
                let seq = seqs.len() as i32;
                for (p, t) in input.iter().enumerate() {
                    let _ = batch.add(LlamaToken(*t), p as i32, &[seq], true);
                }
                used += input.len();
                seqs.push((j, k));
            }
        }
        let started = Instant::now();
        let result = self.ctx.decode(&mut batch);
        stats.update(|s| {
            s.embed_time += started.elapsed();
            s.embed_tokens += used as u64;
            s.decode_calls += 1;
            s.max_batch_sequences = s.max_batch_sequences.max(seqs.len());
        });
        match result {
            Ok(()) => {
                for (seq, (j, _)) in seqs.iter().enumerate() {
                    let vector = match self.ctx.embeddings_seq_ith(seq as i32) {
                        Ok(v) => normalized(v),
                        Err(_) => Vec::new(),
                    };
                    self.queue[*j].1.push(vector);
                }
            }
            Err(e) => {
                let message = e.to_string();
                let failed: std::collections::BTreeSet<usize> = seqs.iter().map(|(j, _)| *j).collect();
                for j in failed.into_iter().rev() {
                    if let Some((job, _)) = self.queue.remove(j) {
                        let _ = job.reply.send(Err(JobError::Decode(message.clone())));
                    }
                }
            }
        }
        let _ = self.ctx.clear_kv_cache_seq(None, None, None);
        while let Some((job, done)) = self.queue.front() {
            if done.len() < job.inputs.len() {
                break;
            }
            stats.update(|s| s.jobs += 1);
            let (job, vectors) = self.queue.pop_front().expect("front exists");
            let answer = if vectors.iter().any(Vec::is_empty) {
                Err(JobError::Decode("llama.cpp returned no pooled embedding".into()))
            } else {
                let prompt_tokens = job.inputs.iter().map(|t| t.len() as u32).sum();
                Ok(Embedded { vectors, prompt_tokens })
            };
            let _ = job.reply.send(answer);
        }
    }
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|x| (*x as f64 / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_at_the_earliest() {
        assert_eq!(stop_at(b"hello world. bye", &["bye".into(), ".".into()]), Some(11));
        assert_eq!(stop_at(b"hello", &["x".into(), String::new()]), None);
    }

    #[test]
    fn a_sequence_holds_twice_the_largest_job_within_the_model_and_memory() {
        // Jobs of 700 tokens: 1,400 cells a sequence when memory allows...
        assert_eq!(cells_per_sequence(8, 700, 8192, 1000, 1 << 40), 1400);
        // ...at least 1,024, at most the training context (but never less than the job itself)...
        assert_eq!(cells_per_sequence(8, 100, 8192, 1000, 1 << 40), 1024);
        assert_eq!(cells_per_sequence(8, 3000, 4096, 1000, 1 << 40), 4096);
        // ...and what memory allows for 9 streams when it does not.
        assert_eq!(cells_per_sequence(8, 700, 8192, 1000, 9_000_000), 1000);
    }
}
