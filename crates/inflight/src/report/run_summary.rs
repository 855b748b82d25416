//! What `inflight run` says when it ends: the store's [`Summary`] plus what only this session knows (the
//! concurrency it ran at, a workflow's servers, the files, the exit code). Built once, rendered as text or, with
//! `--json`, as one JSON object pinned by `docs/schema/run-summary.schema.json`.

use std::time::Duration;

use serde::Serialize;

use super::progress::format_duration;
use super::Summary;
use crate::backend::PackReport;
use crate::tune::FaultCounts;

/// The end of a run, as text ([`RunSummary::render`]) or JSON (`serde`).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// What the embedded engine chose and measured; `None` for a server run.
    pub engine: Option<EngineReport>,
    /// Counts, time, rates, latency, tokens and per-step counts (the object `inflight status --json` prints).
    pub summary: Summary,
    /// The concurrency of a one-step run; `None` for a workflow, whose models each have their own.
    pub concurrency: Option<ConcurrencyReport>,
    /// A workflow's scheduling; `None` for a one-step run.
    pub workflow: Option<WorkflowReport>,
    /// What the run took from and added to the response cache; `None` when it used none.
    pub cache: Option<crate::cache::CacheReport>,
    /// How embedding inputs were packed into requests (the first server's); `None` with `--inputs-per-request 1`,
    /// the engine, a workflow, or when no embedding request went out.
    pub packing: Option<PackReport>,
    /// Each server's share of a one-step run over several servers (`concurrency` is then the first one's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerShare>,
    /// Where the results, errors and state are.
    pub files: FilesReport,
    /// The exit code and what it means.
    pub exit: ExitReport,
}

/// One server's share of a run over several.
#[derive(Debug, Clone, Serialize)]
pub struct ServerShare {
    /// The server.
    pub url: String,
    /// Jobs it answered in this session.
    pub done: u64,
    /// Jobs that failed on it for good.
    pub failed: u64,
    /// Jobs in flight on it when it went away, handed to the other servers (no attempt charged).
    pub returned: u64,
    /// Times it became unreachable (each one ended by its rejoining, or by the run's end).
    pub outages: u64,
    /// The level its controller held, or the fixed level.
    pub held: usize,
    /// The slots it reports, if any.
    pub server_slots: Option<usize>,
}

impl ServerShare {
    fn render(&self) -> String {
        let mut s =
            format!("\n  server {}: {} done, {} failed, concurrency {}", self.url, self.done, self.failed, self.held);
        if let Some(n) = self.server_slots {
            s += &format!(" ({n} slots)");
        }
        if self.outages > 0 {
            s += &format!(
                "; {} outage{} ({} jobs in flight handed to the others)",
                self.outages,
                if self.outages == 1 { "" } else { "s" },
                self.returned
            );
        }
        s
    }
}

/// `--concurrency auto` or a fixed number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyMode {
    /// The controller chose the level.
    Auto,
    /// `--concurrency N`.
    Fixed,
}

/// The concurrency of a one-step run.
#[derive(Debug, Clone, Serialize)]
pub struct ConcurrencyReport {
    /// Auto or fixed.
    pub mode: ConcurrencyMode,
    /// The level held at the end: the one auto settled on (or, when it was still searching, its limit at the
    /// end), or the fixed level.
    pub held: usize,
    /// Auto had not settled on a level when the run ended.
    pub searching: bool,
    /// Highest level auto tried (`None` when fixed).
    pub max_tried: Option<usize>,
    /// Level changes auto made (`None` when fixed).
    pub changes: Option<u64>,
    /// Where throughput stopped growing, once auto saw it.
    pub effective_lanes: Option<usize>,
    /// The slots the server reports (llama-server's `/props`), when it reports any.
    pub server_slots: Option<usize>,
    /// The most requests the server reported processing at once while auto ran (llama-server `/slots`, vLLM
    /// `/metrics`), when it reports a count: the evidence auto's best level is capped by.
    pub server_busy_max: Option<usize>,
    /// Auto's messages for the user, such as that the server runs one request at a time, with its fix.
    pub notes: Vec<String>,
    /// The failed attempts auto measured, and how it judged them (`None` when fixed).
    pub faults: Option<FaultCounts>,
}

/// What the embedded engine (`--engine`) chose and measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineReport {
    /// Decode threads in use.
    pub threads: usize,
    /// The physical cores seen: the ceiling for `threads`.
    pub physical_cores: usize,
    /// Each thread count measured at start (empty when fixed).
    pub thread_rates: Vec<ThreadRateReport>,
    /// Sequences that can decode together.
    pub sequences: usize,
    /// The most sequences one decode call carried.
    pub max_batch_sequences: usize,
    /// Tokens per decode call.
    pub batch: u32,
    /// KV cache cells shared by the sequences.
    pub kv_tokens: u32,
    /// The most tokens one job may use.
    pub context: u32,
    /// Layers on a GPU.
    pub gpu_layers: u32,
    /// Jobs the engine answered in this session.
    pub jobs: u64,
    /// Tokens of the longest shared prompt prefix it found.
    pub prefix_tokens: u32,
    /// Prompt tokens computed.
    pub prefill_tokens: u64,
    /// Prompt tokens copied from the shared prefix instead of computed.
    pub prefix_saved_tokens: u64,
    /// Prompt tokens a job's sequence still held from its previous job, not computed again.
    pub kept_tokens: u64,
    /// Tokens generated.
    pub decode_tokens: u64,
    /// Tokens embedded.
    pub embed_tokens: u64,
    /// Seconds in decode calls, the prompt tokens' share.
    pub prefill_s: f64,
    /// Seconds in decode calls, the generated tokens' share.
    pub decode_s: f64,
    /// Seconds in embedding decode calls.
    pub embed_s: f64,
    /// Seconds sampling.
    pub sampling_s: f64,
    /// Seconds the engine waited for jobs.
    pub waiting_s: f64,
}

/// One measured thread count.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ThreadRateReport {
    /// Threads.
    pub threads: usize,
    /// Tokens per second of the calibration decode call.
    pub tokens_per_s: f64,
}

impl EngineReport {
    /// `engine: 2 threads of 2 physical cores (1: 95 tok/s, 2: 160 tok/s), 24 sequences, batch 512, ...`
    fn render(&self) -> String {
        let rates: Vec<String> =
            self.thread_rates.iter().map(|r| format!("{}: {:.0} tok/s", r.threads, r.tokens_per_s)).collect();
        let threads = if rates.is_empty() {
            format!("{} threads (fixed)", self.threads)
        } else {
            format!("{} threads of {} physical cores ({})", self.threads, self.physical_cores, rates.join(", "))
        };
        let mut s = format!(
            "\n  engine: {threads}, {} sequences (at most {} decoded together), batch {}",
            self.sequences, self.max_batch_sequences, self.batch
        );
        if self.kv_tokens > 0 {
            s += &format!(", KV cache {} tokens ({} a sequence)", self.kv_tokens, self.context);
        }
        if self.prefill_tokens + self.prefix_saved_tokens + self.kept_tokens > 0 {
            s += &format!(
                "\n  engine prefill: {} prompt tokens computed, {} copied from a shared prefix ({} tokens), {} kept \
                 from the sequence's previous job",
                self.prefill_tokens, self.prefix_saved_tokens, self.prefix_tokens, self.kept_tokens
            );
        }
        s += &format!(
            "\n  engine time: prefill {:.1}s, decode {:.1}s, embed {:.1}s, sampling {:.1}s, waiting {:.1}s",
            self.prefill_s, self.decode_s, self.embed_s, self.sampling_s, self.waiting_s
        );
        s
    }
}

/// A workflow's scheduling, per server.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowReport {
    /// Auto or fixed, for every model's controller.
    pub mode: ConcurrencyMode,
    /// Answers refused by a step's JSON Schema in this session (each asked again with another seed).
    pub invalid_answers: u64,
    /// One entry per server, in the order of the `--server` flags.
    pub servers: Vec<ServerReport>,
}

/// One server of a workflow.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    /// Its URL.
    pub url: String,
    /// Model switches, the first load included.
    pub switches: u64,
    /// Seconds spent switching, as measured.
    pub switching_s: f64,
    /// The slots the server reports, when it reports any.
    pub server_slots: Option<usize>,
    /// Each model's concurrency at the end.
    pub models: Vec<ModelConcurrency>,
}

/// One model's concurrency on a workflow's server.
#[derive(Debug, Clone, Serialize)]
pub struct ModelConcurrency {
    /// The model.
    pub model: String,
    /// The level held (or the limit, while its controller still searched).
    pub held: usize,
    /// Its controller's phase (`climbing`, `refining`, `holding`, `probing`), or `fixed`.
    pub phase: &'static str,
}

/// Where a run's files are.
#[derive(Debug, Clone, Serialize)]
pub struct FilesReport {
    /// Results.
    pub results: String,
    /// Failures and bad lines.
    pub errors: String,
    /// The state database.
    pub state: String,
}

/// The exit code and its meaning.
#[derive(Debug, Clone, Serialize)]
pub struct ExitReport {
    /// The process's exit code.
    pub code: i32,
    /// `success`, `some_failed`, `setup_error` or `interrupted`.
    pub meaning: &'static str,
    /// Why the run stopped, when it stopped before the end.
    pub message: Option<String>,
}

impl RunSummary {
    /// The human-readable summary.
    pub fn render(&self) -> String {
        let mut s = self.summary.render();
        match (&self.concurrency, self.servers.is_empty()) {
            (Some(c), true) => s += &c.render(),
            _ => s += &self.servers.iter().map(ServerShare::render).collect::<String>(),
        }
        if let Some(w) = &self.workflow {
            s += &w.render();
        }
        if let Some(e) = &self.engine {
            s += &e.render();
        }
        if let Some(p) = &self.packing {
            s += &render_packing(p);
        }
        if let Some(c) = &self.cache {
            s += "\n";
            s += &c.render();
        }
        let f = &self.files;
        s += &format!("\n  results: {}  errors: {}  state: {}", f.results, f.errors, f.state);
        s
    }
}

/// `inputs per request: auto, 47.9 at the end (mean 45.2 over 1,234 requests, largest 128, at most 256)`.
fn render_packing(p: &PackReport) -> String {
    let mut s = format!(
        "\n  inputs per request: {}, {:.1} at the end (mean {:.1} over {} requests, largest {}, at most {})",
        p.mode,
        p.recent_mean,
        p.mean(),
        p.requests,
        p.largest,
        p.max
    );
    if p.splits > 0 {
        s += &format!("; {} refused requests split and sent again in halves", p.splits);
    }
    if let Some(cap) = p.server_cap {
        s += &format!("; the server refused more than {cap} inputs a request (413)");
    }
    s
}

impl ConcurrencyReport {
    fn render(&self) -> String {
        if self.mode == ConcurrencyMode::Fixed {
            return format!("\n  concurrency fixed at {}", self.held);
        }
        let held = if self.searching { format!("{} (still searching)", self.held) } else { self.held.to_string() };
        // Effective lanes are where throughput stopped growing; beside the slots a server reports they say
        // whether its queue kept those slots busier (more) or its cores could not feed them all (fewer).
        let reported = match self.server_slots {
            Some(1) => " (the server reports 1 slot)".to_owned(),
            Some(n) => format!(" (the server reports {n} slots)"),
            None => String::new(),
        };
        let busy = self.server_busy_max.map_or(String::new(), |n| format!("; server busy <= {n}"));
        let mut s = format!(
            "\n  concurrency auto: held {held} in flight (tried up to {}, {} changes); effective lanes seen: {}{reported}\
             {busy}",
            self.max_tried.unwrap_or(self.held),
            self.changes.unwrap_or(0),
            self.effective_lanes.map(|h| h.to_string()).unwrap_or_else(|| "not yet known".into())
        );
        if let Some(f) = self.faults.filter(|f| f.failed > 0) {
            s += &format!(
                "\n  faults: {} of {} attempts measured failed ({:.1}%); backpressure (a share growing with the \
                 level): {} cuts; a steady share, not backpressure: {} checks",
                f.failed,
                f.attempts,
                f.failed as f64 * 100.0 / f.attempts.max(1) as f64,
                f.cuts,
                f.steady_checks
            );
        }
        for note in &self.notes {
            s += &format!("\n  note: {note}");
        }
        s
    }
}

impl WorkflowReport {
    fn render(&self) -> String {
        let mut s = String::new();
        if self.invalid_answers > 0 {
            s += &format!(
                "\n  {} answers refused by a step's JSON Schema this session, each asked again with another seed",
                self.invalid_answers
            );
        }
        for v in &self.servers {
            let models: Vec<String> =
                v.models.iter().map(|m| format!("{} {} ({})", m.model, m.held, m.phase)).collect();
            s += &format!(
                "\n  server {}: {} model switches, {} switching; concurrency per model: {}",
                v.url,
                v.switches,
                format_duration(Duration::from_secs_f64(v.switching_s)),
                models.join(", ")
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SummaryInput;
    use crate::store::Counts;

    fn summary() -> Summary {
        Summary::new(SummaryInput {
            counts: Counts { done: 4, ..Default::default() },
            latency: hdrhistogram::Histogram::new(3).unwrap(),
            session: Some((4, 40, Duration::from_secs(2))),
            retries: 0,
            cached_prompt_tokens: 0,
            steps: Vec::new(),
        })
    }

    fn run_summary(concurrency: Option<ConcurrencyReport>, workflow: Option<WorkflowReport>) -> RunSummary {
        RunSummary {
            engine: None,
            summary: summary(),
            concurrency,
            workflow,
            cache: None,
            packing: None,
            servers: Vec::new(),
            files: FilesReport { results: "o.jsonl".into(), errors: "o.errors.jsonl".into(), state: "o.db".into() },
            exit: ExitReport { code: 0, meaning: "success", message: None },
        }
    }

    #[test]
    fn packing_is_rendered_with_its_splits_and_the_servers_cap() {
        let packing = PackReport {
            mode: "auto",
            max: 32,
            requests: 40,
            inputs: 1000,
            largest: 64,
            recent_mean: 31.5,
            splits: 2,
            server_cap: Some(32),
        };
        let text = RunSummary { packing: Some(packing), ..run_summary(None, None) }.render();
        assert!(
            text.contains(
                "\n  inputs per request: auto, 31.5 at the end (mean 25.0 over 40 requests, largest 64, at most 32); \
                 2 refused requests split and sent again in halves; the server refused more than 32 inputs a request \
                 (413)"
            ),
            "{text}"
        );
    }

    #[test]
    fn auto_concurrency_is_rendered_with_lanes_slots_and_notes() {
        let c = ConcurrencyReport {
            mode: ConcurrencyMode::Auto,
            held: 3,
            searching: true,
            max_tried: Some(8),
            changes: Some(5),
            effective_lanes: Some(1),
            server_slots: Some(1),
            server_busy_max: None,
            notes: vec!["the server runs one request at a time".into()],
            faults: Some(FaultCounts { attempts: 1000, failed: 100, cuts: 0, steady_checks: 1 }),
        };
        let text = run_summary(Some(c), None).render();
        assert!(text.starts_with("4 jobs: 4 done"), "{text}");
        assert!(
            text.contains(
                "\n  concurrency auto: held 3 (still searching) in flight (tried up to 8, 5 changes); \
                 effective lanes seen: 1 (the server reports 1 slot)\n  faults: 100 of 1000 attempts measured \
                 failed (10.0%); backpressure (a share growing with the level): 0 cuts; a steady share, not \
                 backpressure: 1 checks\n  note: the server runs one request at a time"
            ),
            "{text}"
        );
        assert!(text.ends_with("\n  results: o.jsonl  errors: o.errors.jsonl  state: o.db"), "{text}");
    }

    #[test]
    fn json_has_every_section_with_nulls_where_a_run_has_none() {
        let c = ConcurrencyReport {
            mode: ConcurrencyMode::Fixed,
            held: 4,
            searching: false,
            max_tried: None,
            changes: None,
            effective_lanes: None,
            server_slots: Some(4),
            server_busy_max: None,
            notes: Vec::new(),
            faults: None,
        };
        let r = run_summary(Some(c), None);
        assert!(r.render().contains("\n  concurrency fixed at 4\n"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["concurrency"]["mode"], "fixed");
        assert_eq!(v["summary"]["done"], 4);
        assert!(v["workflow"].is_null() && v["exit"]["message"].is_null(), "{v}");
    }

    #[test]
    fn workflow_servers_are_rendered_per_model() {
        let w = WorkflowReport {
            mode: ConcurrencyMode::Auto,
            invalid_answers: 2,
            servers: vec![ServerReport {
                url: "http://x".into(),
                switches: 3,
                switching_s: 1.5,
                server_slots: None,
                models: vec![ModelConcurrency { model: "A".into(), held: 4, phase: "holding" }],
            }],
        };
        let text = run_summary(None, Some(w)).render();
        assert!(text.contains("\n  2 answers refused by a step's JSON Schema this session"), "{text}");
        assert!(text.contains("\n  server http://x: 3 model switches, "), "{text}");
        assert!(text.contains("concurrency per model: A 4 (holding)\n"), "{text}");
    }
}
