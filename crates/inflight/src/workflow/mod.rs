//! Workflows: several steps per job, each with its own model, template and parameters, scheduled around
//! model swaps.
//!
//! - [`spec`] reads FLOW.yaml, [`graph`] compiles the templates, finds the dependencies they imply, rejects
//!   cycles and fingerprints each step; [`request`] renders one step of one job and checks its answer.
//! - [`schedule`] runs one loop per server that owns its scheduling state: which model is loaded, which work is
//!   in flight, when to switch ([`policy`]); [`task`] sends one step of one job with retries.
//!
//! The store keeps one result per (job, step); the plain one-step `run` path does not go through here.

mod graph;
mod group;
mod policy;
mod request;
mod schedule;
mod shared;
mod spec;
mod task;

pub use graph::{Step, Workflow};
pub use group::GroupConcurrency;
pub use policy::SwitchPolicy;
pub use request::{output_of, render, Unit};
pub use schedule::run_servers;
pub use shared::{FlowStats, ServerPlan, ServerView, Shared};

/// Why a workflow file is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkflowError {
    /// The file is not a valid workflow: the line (1-based, 0 when unknown) and the reason.
    #[error("line {line}: {message}")]
    Invalid {
        /// Where.
        line: usize,
        /// What is wrong.
        message: String,
    },
}
