//! Tuning: how many requests are in flight. The dispatcher never decides that; the [`Limiter`] does, and a
//! controller sets the limiter (a fixed `--concurrency N` is a controller that never moves).

pub mod best;
mod controller;
mod driver;
mod limiter;
mod window;

pub use controller::{Controller, ControllerConfig, Decision, FaultCounts, Phase, Sample, SampleOutcome};
pub use driver::{spawn_controller, spawn_controller_with, Clock, SystemClock, TuneHandle, TuneStatus};
pub use limiter::{Limiter, Permit};
pub use window::RateWindow;
