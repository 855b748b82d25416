//! The server's own count of the requests it is processing, where it reports one: llama-server's `/slots`
//! (slots with `is_processing`; `/metrics` `llamacpp:requests_processing` when `/slots` is off) and vLLM's
//! `/metrics` (`vllm:num_requests_running`). Doctor's probe samples it per level, and a run with
//! `--concurrency auto` samples it for the controller ([`BusySampler::spawn`]): what a server says it runs at
//! once is evidence that rates measured on a shared machine are not (other work moves rates; it never makes a
//! one-slot server run two).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ApiKey, Getter, ServerKind};

/// Where a server counts the requests it is processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyCount {
    /// llama-server `/slots`: slots with `is_processing` (else `/metrics` `llamacpp:requests_processing`).
    LlamaSlots,
    /// vLLM `/metrics`: `vllm:num_requests_running`.
    VllmMetrics,
}

impl BusyCount {
    /// Where a server of `kind` counts its busy lanes; `None` for servers that do not (Ollama, LM Studio,
    /// unknown servers, the simulator's Ollama mode).
    pub fn of(kind: ServerKind) -> Option<BusyCount> {
        match kind {
            ServerKind::LlamaServer { .. } => Some(BusyCount::LlamaSlots),
            ServerKind::Vllm => Some(BusyCount::VllmMetrics),
            _ => None,
        }
    }

    /// One reading; `None` when the server did not answer it (no `/slots`, no `/metrics`, or a timeout).
    pub async fn read(self, get: &Getter) -> Option<u64> {
        match self {
            BusyCount::LlamaSlots => match get.json("/slots").await {
                Some(slots) => Some(slots.as_array()?.iter().filter(|s| s["is_processing"] == true).count() as u64),
                // `--no-slots` turns /slots off; `--metrics` may still count.
                None => Some(metric(&get.text("/metrics").await?, "llamacpp:requests_processing")?.round() as u64),
            },
            BusyCount::VllmMetrics => {
                let text = get.text("/metrics").await?;
                metric(&text, "vllm:num_requests_running").map(|n| n.round() as u64)
            }
        }
    }
}

/// Sum of a Prometheus metric's samples over its label sets (`name 3` or `name{labels} 3`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = if rest.starts_with('{') { &rest[rest.find('}')? + 1..] } else { rest };
            rest.strip_prefix(' ')?.split_whitespace().next()?.parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Failed readings in a row, with none ever answered, after which a sampler stops: the server does not report
/// a count, and asking on would cost requests for nothing.
const GIVE_UP_AFTER: u32 = 5;

/// Samples a server's busy count every `every` for as long as it runs.
#[derive(Clone)]
pub struct BusySampler {
    get: Getter,
    count: BusyCount,
    every: Duration,
}

impl BusySampler {
    /// How often the run samples: a few times a second is enough to see every lane busy at once (requests last
    /// far longer), and a GET of `/slots` costs the server next to nothing at that rate.
    pub const RUN_EVERY: Duration = Duration::from_millis(250);

    /// A sampler for a server of `kind` at `url`, or `None` when such a server reports no busy count.
    pub fn new(kind: ServerKind, url: &str, api_key: Option<&ApiKey>, every: Duration) -> Option<BusySampler> {
        let count = BusyCount::of(kind)?;
        // A reading slower than its period is stale by the time it lands; better none.
        let get = Getter::new(url, api_key, every.max(Duration::from_secs(1)) * 2);
        Some(BusySampler { get, count, every })
    }

    /// Starts the sampling task; each reading goes to the receiver (readings the receiver has no room for are
    /// dropped, so a slow consumer never backs the sampler up). The task ends when the receiver is dropped, or
    /// after [`GIVE_UP_AFTER`] failed readings with none answered.
    pub fn spawn(self) -> (mpsc::Receiver<usize>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            let (mut answered, mut failed) = (false, 0);
            let mut tick = tokio::time::interval(self.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !tx.is_closed() {
                tick.tick().await;
                match self.count.read(&self.get).await {
                    Some(n) => {
                        answered = true;
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(n as usize) {
                            break;
                        }
                    }
                    None if !answered => {
                        failed += 1;
                        if failed >= GIVE_UP_AFTER {
                            break;
                        }
                    }
                    None => {}
                }
            }
        });
        (rx, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prometheus_samples_with_and_without_labels() {
        let text = "# HELP x\nllamacpp:requests_processing 4\nllamacpp:requests_deferred 12\n\
                    vllm:num_requests_waiting{model_name=\"a\"} 3.0\nvllm:num_requests_waiting{model_name=\"b\"} 2\n";
        assert_eq!(metric(text, "llamacpp:requests_processing"), Some(4.0));
        assert_eq!(metric(text, "llamacpp:requests_deferred"), Some(12.0));
        assert_eq!(metric(text, "vllm:num_requests_waiting"), Some(5.0));
        assert_eq!(metric(text, "vllm:num_requests_running"), None);
    }

    #[test]
    fn only_servers_that_count_are_sampled() {
        assert_eq!(BusyCount::of(ServerKind::LlamaServer { slots: Some(1) }), Some(BusyCount::LlamaSlots));
        assert_eq!(BusyCount::of(ServerKind::Vllm), Some(BusyCount::VllmMetrics));
        assert_eq!(BusyCount::of(ServerKind::Ollama), None);
        assert!(BusySampler::new(ServerKind::Unknown, "http://127.0.0.1:1", None, Duration::from_secs(1)).is_none());
    }
}
