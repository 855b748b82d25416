//! Integration tests: `inflight` against real servers on loopback (the simulator, and llama-server from the
//! test bed), with state on disk.

/// Shared helpers: temp dirs, job files, running the binary, reading outputs.
mod util;

/// The attempt budget holds across SIGKILL and resume, for plain jobs and workflow steps alike.
mod attempts;
/// Automatic concurrency finds the lanes and names a serialized server.
mod auto;
/// A 10,000-line input with 100 bad lines of assorted kinds.
mod bad_input;
/// `inflight bench`: sweep, recommendation and reports.
mod bench;
/// The response cache across runs: edits rerun alone, shared safely by runs at once.
mod cache;
/// SIGKILL at random moments, restart, every job exactly once.
mod crash;
/// `inflight doctor`: verdicts against the simulator, and against the real llama-server (ignored).
mod doctor;
/// The embedded engine on the test bed's model: llama-server's answers, embeddings, context, prefix, resume.
#[cfg(feature = "engine")]
mod engine;
/// Transient faults are retried to success; permanent ones fail at once; outages pause the run.
mod faults;
/// The Ollama API, against the simulator's Ollama-compatible mode.
mod ollama;
/// Packed embeddings: lines share requests but keep their own results; a bad input fails only its line.
mod pack;
/// Real llama-server from the test bed: chat, completion and embeddings.
mod real_server;
/// Runs against the simulator's OpenAI API: shapes, resume, identity, export, status, dry run.
mod run_sim;
/// Output lines validate against docs/schema/.
mod schema;
/// The API key appears nowhere a run writes or prints, at any verbosity.
mod secrets;
/// `inflight serve`: the OpenAI Files and Batches APIs over the simulator, auth, cancel, kill -9, metrics.
mod serve;
/// Helpers for the serve tests: the server on port 0, an HTTP client, a strict Prometheus text parser.
mod serve_util;
/// One run over several servers: per-server levels, model-aware routing, an outage handed to the others.
mod servers;
/// Setup errors name the path or URL, exit 2, and leave no file behind.
mod setup;
/// Several worker processes share one run through PostgreSQL: each job once, a dead or stalled worker's jobs
/// taken by the others, every copy of the output equal to `export`'s.
mod shared_run;
/// The store contract (claims, leases, fenced writes, commit order), each property against SQLite and PostgreSQL.
mod store_contract;
/// Workflows: validation, scheduling around model swaps, per-step durability.
mod workflow;
