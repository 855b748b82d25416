//! How to give a server more lanes: the one rule behind the run's serialized-server message
//! ([`ServerKind::parallel_fix`]) and doctor's fix line, which rewrites the server's own command line with it.
//!
//! llama-server shares its context (`-c`) among its slots (`-np`): each slot holds `c / np` tokens, so raising
//! the slots alone shrinks what each request can hold (`-np 4 -c 1024` leaves 256 tokens a request). The fix
//! therefore grows `-c` in proportion, keeping each slot's context. Ollama gives every parallel request its own
//! full context, and vLLM's sequences share one pool it sizes itself, so their fix is the lanes setting alone.

use super::ServerKind;

/// Lanes to suggest for a serialized server: llama-server's own automatic choice.
pub const SUGGESTED_LANES: u64 = 4;
/// vLLM sequences to suggest: a serialized vLLM was started with far fewer than its default.
const VLLM_SEQS: u64 = 64;
/// llama-server's spellings of its slots.
pub const LLAMA_SLOTS: &[&str] = &["-np", "--parallel"];
/// llama-server's spellings of its context, shared by the slots.
pub const LLAMA_CONTEXT: &[&str] = &["-c", "--ctx-size"];

/// One setting a lane fix changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneSetting {
    /// The name users know it by (`--parallel`, `OLLAMA_NUM_PARALLEL`).
    pub name: &'static str,
    /// Its command-line spellings, the one to append first; empty for environment variables and GUI settings.
    pub flags: &'static [&'static str],
    /// The new value.
    pub value: u64,
}

/// What to change for more lanes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneFix {
    /// The settings, the lanes first (then llama-server's context, when each slot's context is known).
    pub settings: Vec<LaneSetting>,
    /// A line to paste when the server's own command line is unknown.
    pub line: String,
}

impl ServerKind {
    /// The fix for a server that runs one request at a time: [`SUGGESTED_LANES`] lanes by the server's own
    /// setting and, for llama-server, `-c` grown so that each slot keeps `context_per_slot` tokens. Unknown, the
    /// context is left out of the settings (a guessed `-c` could be smaller than the server's) and the line says
    /// how to choose it.
    pub fn lane_fix(self, context_per_slot: Option<u64>) -> LaneFix {
        let n = SUGGESTED_LANES;
        let one = |name, flags, value, line| LaneFix { settings: vec![LaneSetting { name, flags, value }], line };
        match self {
            ServerKind::LlamaServer { .. } => {
                let mut fix = one("--parallel", LLAMA_SLOTS, n, format!("llama-server ... --parallel {n}"));
                match context_per_slot.filter(|&c| c > 0) {
                    Some(c) => {
                        fix.settings.push(LaneSetting { name: "-c", flags: LLAMA_CONTEXT, value: c * n });
                        fix.line += &format!(" -c {}", c * n);
                    }
                    None => fix.line += &format!(" -c <{n} × the context each slot has now>"),
                }
                fix
            }
            ServerKind::Ollama => one("OLLAMA_NUM_PARALLEL", &[], n, format!("OLLAMA_NUM_PARALLEL={n} ollama serve")),
            ServerKind::Vllm => one(
                "--max-num-seqs",
                &["--max-num-seqs"],
                VLLM_SEQS,
                format!("vllm serve MODEL --max-num-seqs {VLLM_SEQS}"),
            ),
            ServerKind::LmStudio => one(
                "Max Concurrent Predictions",
                &[],
                n,
                format!(
                    "set \"Max Concurrent Predictions\" to {n} in LM Studio's model load settings, and reload the model"
                ),
            ),
            ServerKind::Engine { .. } => one(
                "--engine-sequences",
                &["--engine-sequences"],
                n * 4,
                format!("inflight run ... --engine-sequences {}", n * 4),
            ),
            ServerKind::Unknown => LaneFix {
                settings: Vec::new(),
                line: format!(
                    "raise the server's parallel lanes to {n} (llama-server --parallel with -c grown to match, Ollama \
                     OLLAMA_NUM_PARALLEL, vLLM --max-num-seqs, LM Studio \"Max Concurrent Predictions\")"
                ),
            },
        }
    }

    /// The server's own setting for running more requests at once, as a line to act on (the run knows no
    /// slot's context, so llama-server's line says how to size `-c`).
    pub fn parallel_fix(self) -> String {
        let line = self.lane_fix(None).line;
        match self {
            ServerKind::Ollama => format!("Fix: restart Ollama with more lanes, e.g. `{line}`"),
            ServerKind::LlamaServer { .. } => format!(
                "Fix: start llama-server with more slots and the context to match, e.g. `{line}` (`-np` splits `-c` \
                 among the slots, so -c must grow with them for each request to keep its context)"
            ),
            ServerKind::Vllm => format!("Fix: raise vLLM's `--max-num-seqs`, e.g. `{line}`"),
            ServerKind::LmStudio | ServerKind::Unknown | ServerKind::Engine { .. } => format!("Fix: {line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_llama_slots_keep_each_slots_context() {
        let fix = ServerKind::LlamaServer { slots: Some(1) }.lane_fix(Some(1024));
        assert_eq!(fix.settings[1], LaneSetting { name: "-c", flags: LLAMA_CONTEXT, value: 4096 });
        assert_eq!(fix.line, "llama-server ... --parallel 4 -c 4096");
        let unknown = ServerKind::LlamaServer { slots: None }.lane_fix(None);
        assert_eq!(unknown.settings.len(), 1, "no guessed -c");
        assert!(unknown.line.contains("-c <4 × the context each slot has now>"), "{}", unknown.line);
        assert!(ServerKind::LlamaServer { slots: None }.parallel_fix().contains("--parallel 4"));
    }

    #[test]
    fn other_servers_change_their_lanes_setting_only() {
        assert_eq!(ServerKind::Ollama.lane_fix(Some(8192)).line, "OLLAMA_NUM_PARALLEL=4 ollama serve");
        assert_eq!(ServerKind::Vllm.lane_fix(Some(8192)).settings[0].value, 64);
        assert!(ServerKind::Unknown.lane_fix(None).settings.is_empty());
    }
}
