//! inflight: push large batches of jobs through local LLM servers at the fastest sustainable rate, durably.
//!
//! The data flow (see docs/ARCHITECTURE.md): input lines are parsed and rendered ([`job`]) into the
//! [`store`]; the [`dispatch`] loop claims pending jobs and sends them through a [`backend`] under permits
//! from the [`tune`] limiter; outcomes go back to the store's single writer, which also appends the
//! [`output`] files; [`report`] shows progress and the summary. The [`cache`] answers requests a run has
//! already had answered, across runs. [`bench`] measures a server and [`doctor`]
//! finds its bottleneck. [`serve`] offers OpenAI's Files and Batches APIs, each batch a run. [`cli`] wires it
//! together per command.

pub mod backend;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod code;
pub mod dispatch;
pub mod doctor;
pub mod job;
pub mod live;
pub mod output;
pub mod report;
pub mod serve;
pub mod store;
pub mod tune;
pub mod workflow;
