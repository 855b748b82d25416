//! Streamed answers, timed token by token: what `inflight bench` needs for time to first token and
//! inter-token latency, which a whole answer cannot show.
//!
//! Each API streams its own way (OpenAI: server-sent events `data: {chunk}` ending in `data: [DONE]`; Ollama:
//! one JSON object per line ending in `"done": true`). Both reduce to the same events here: a content piece
//! arrived at time t, and the final figures (token counts and the server's own timings).

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::BackendError;

/// A streamed answer's timing and figures.
#[derive(Debug, Clone, Default)]
pub struct Streamed {
    /// Time from sending to the first content piece.
    pub first_token: Option<Duration>,
    /// Mean gap between content pieces after the first (inter-token latency).
    pub inter_token: Option<Duration>,
    /// Time from sending to the end of the stream.
    pub total: Duration,
    /// Output tokens, as the server counted them (else the number of content pieces).
    pub completion_tokens: u64,
    /// The server's own timings for this request, where it reports them.
    pub server: ServerTimings,
}

/// Per-request timings a server reports about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerTimings {
    /// Decode speed of this request alone (llama-server `timings.predicted_per_second`; Ollama
    /// `eval_count / eval_duration`).
    pub decode_tokens_per_s: Option<f64>,
    /// Prompt processing time, ms (llama-server `timings.prompt_ms`; Ollama `prompt_eval_duration`).
    pub prompt_ms: Option<f64>,
    /// Model load time spent on this request, ms (Ollama `load_duration`).
    pub load_ms: Option<f64>,
}

impl ServerTimings {
    /// From llama-server's `timings` object or Ollama's duration fields (both may sit in one answer body).
    pub fn of(v: &Value) -> ServerTimings {
        let t = &v["timings"];
        let ns_ms = |x: &Value| x.as_f64().map(|ns| ns / 1e6);
        let ollama_decode = match (v["eval_count"].as_f64(), v["eval_duration"].as_f64()) {
            (Some(n), Some(d)) if d > 0.0 => Some(n / d * 1e9),
            _ => None,
        };
        ServerTimings {
            decode_tokens_per_s: t["predicted_per_second"].as_f64().or(ollama_decode),
            prompt_ms: t["prompt_ms"].as_f64().or_else(|| ns_ms(&v["prompt_eval_duration"])),
            load_ms: ns_ms(&v["load_duration"]),
        }
    }
}

/// Accumulates a stream's events into a [`Streamed`].
#[derive(Debug, Default)]
pub struct TokenClock {
    first: Option<Duration>,
    last: Option<Duration>,
    pieces: u64,
    counted: Option<u64>,
    server: ServerTimings,
    done: bool,
    error: Option<String>,
}

impl TokenClock {
    /// One line of an OpenAI server-sent-events stream, arrived at `at`.
    pub fn openai_line(&mut self, line: &str, at: Duration) {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { return };
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            self.error.get_or_insert_with(|| format!("a stream chunk that is not JSON: {data:.80}"));
            return;
        };
        if let Some(message) = v["error"]["message"].as_str().or_else(|| v["error"].as_str()) {
            self.error.get_or_insert_with(|| message.to_owned());
        }
        let choice = &v["choices"][0];
        let piece = choice["delta"]["content"].as_str().or_else(|| choice["text"].as_str());
        if piece.is_some_and(|p| !p.is_empty()) {
            self.piece(at);
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            self.counted = Some(n);
        }
        if v.get("timings").is_some() {
            self.server = ServerTimings::of(&v);
        }
    }

    /// One line of an Ollama NDJSON stream, arrived at `at`.
    pub fn ollama_line(&mut self, line: &str, at: Duration) {
        if line.trim().is_empty() {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            self.error.get_or_insert_with(|| format!("a stream line that is not JSON: {line:.80}"));
            return;
        };
        if let Some(message) = v["error"].as_str() {
            self.error.get_or_insert_with(|| message.to_owned());
        }
        let piece = v["message"]["content"].as_str().or_else(|| v["response"].as_str());
        if piece.is_some_and(|p| !p.is_empty()) {
            self.piece(at);
        }
        if v["done"].as_bool() == Some(true) {
            self.done = true;
            self.counted = v["eval_count"].as_u64();
            self.server = ServerTimings::of(&v);
        }
    }

    fn piece(&mut self, at: Duration) {
        self.first.get_or_insert(at);
        self.last = Some(at);
        self.pieces += 1;
    }

    /// The result once the stream has ended at `total`. A stream that stopped before its end marker, or
    /// carried an error, is an error: its figures would be wrong.
    pub fn finish(self, total: Duration) -> Result<Streamed, BackendError> {
        if let Some(e) = self.error {
            return Err(BackendError::malformed(e));
        }
        if !self.done {
            return Err(BackendError::reset("the stream ended before its end marker"));
        }
        let inter_token = match (self.first, self.last) {
            (Some(f), Some(l)) if self.pieces > 1 => Some((l - f) / (self.pieces - 1) as u32),
            _ => None,
        };
        Ok(Streamed {
            first_token: self.first,
            inter_token,
            total,
            completion_tokens: self.counted.unwrap_or(self.pieces),
            server: self.server,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn openai_stream_times_pieces_and_takes_the_final_usage_and_timings() {
        let mut c = TokenClock::default();
        c.openai_line(r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#, ms(5));
        c.openai_line(r#"data: {"choices":[{"delta":{"content":"a"}}]}"#, ms(100));
        c.openai_line("", ms(100));
        c.openai_line(r#"data: {"choices":[{"delta":{"content":"b"}}]}"#, ms(120));
        c.openai_line(r#"data: {"choices":[{"delta":{"content":"c"}}]}"#, ms(140));
        c.openai_line(
            r#"data: {"choices":[],"usage":{"completion_tokens":3},"timings":{"predicted_per_second":50.0,"prompt_ms":7.5}}"#,
            ms(141),
        );
        c.openai_line("data: [DONE]", ms(141));
        let s = c.finish(ms(142)).unwrap();
        assert_eq!(s.first_token, Some(ms(100)));
        assert_eq!(s.inter_token, Some(ms(20)));
        assert_eq!(s.completion_tokens, 3);
        assert_eq!(s.server.decode_tokens_per_s, Some(50.0));
        assert_eq!(s.server.prompt_ms, Some(7.5));
    }

    #[test]
    fn ollama_stream_reads_durations_from_the_last_line() {
        let mut c = TokenClock::default();
        c.ollama_line(r#"{"message":{"content":"x"},"done":false}"#, ms(300));
        c.ollama_line(r#"{"message":{"content":"y"},"done":false}"#, ms(310));
        c.ollama_line(
            r#"{"message":{"content":""},"done":true,"eval_count":2,"eval_duration":40000000,"load_duration":250000000}"#,
            ms(311),
        );
        let s = c.finish(ms(311)).unwrap();
        assert_eq!(s.first_token, Some(ms(300)));
        assert_eq!(s.completion_tokens, 2);
        assert_eq!(s.server.decode_tokens_per_s, Some(50.0));
        assert_eq!(s.server.load_ms, Some(250.0));
    }

    #[test]
    fn a_stream_cut_short_or_carrying_an_error_fails() {
        let mut c = TokenClock::default();
        c.openai_line(r#"data: {"choices":[{"delta":{"content":"a"}}]}"#, ms(1));
        assert!(matches!(c.finish(ms(2)), Err(BackendError::Reset { source: None, .. })));
        let mut c = TokenClock::default();
        c.openai_line(r#"data: {"error":{"message":"context full"}}"#, ms(1));
        c.openai_line("data: [DONE]", ms(1));
        assert!(
            matches!(c.finish(ms(2)), Err(BackendError::Malformed { detail, source: None }) if detail == "context full")
        );
    }
}
