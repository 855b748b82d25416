//! Small pieces shared by both APIs: the fake generated text, prompt token
//! estimates, deterministic embeddings and timestamps.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// One word per token, so clients can count tokens in the text if they want to.
const WORDS: [&str; 16] = [
    "the ",
    "quick ",
    "brown ",
    "fox ",
    "jumps ",
    "over ",
    "a ",
    "lazy ",
    "dog ",
    "while ",
    "simulated ",
    "lanes ",
    "decode ",
    "tokens ",
    "in ",
    "batches ",
];

/// Text of generated token number `i`.
pub(crate) fn token_text(i: u32) -> &'static str {
    WORDS[i as usize % WORDS.len()]
}

/// Text of a whole completion of `n` tokens.
pub(crate) fn completion_text(n: u32) -> String {
    (0..n).map(token_text).collect()
}

/// Rough token count of a text: four bytes per token, like common BPE vocabularies.
pub(crate) fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.len().div_ceil(4)).unwrap_or(u32::MAX)
}

/// Tokens of a chat `messages` array; content may be a string or a list of parts.
pub(crate) fn message_tokens(messages: &Value) -> u32 {
    let Some(list) = messages.as_array() else {
        return 0;
    };
    list.iter()
        .map(|m| match &m["content"] {
            Value::String(s) => estimate_tokens(s),
            Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).map(estimate_tokens).sum(),
            _ => 0,
        })
        .sum()
}

/// An `input`/`prompt` field that may be a string or an array of strings.
pub(crate) fn string_or_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

/// A unit-length 8-dimensional vector that depends only on the text.
pub(crate) fn embedding(text: &str) -> Vec<f32> {
    let mut h = hash(text.as_bytes());
    let raw: Vec<f32> = (0..8)
        .map(|_| {
            h = mix(h, 0x9e37_79b9);
            (h >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

/// Stable hash of bytes (the same in every run, unlike a randomly keyed hasher).
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Combines two values into a well-spread seed (splitmix64 finaliser).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// RFC 3339 UTC timestamp with nanoseconds, as Ollama prints them.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn embeddings_are_unit_length_and_deterministic() {
        let e = embedding("hello");
        assert_eq!(e.len(), 8);
        assert_eq!(e, embedding("hello"));
        assert_ne!(e, embedding("world"));
        assert!((e.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
    }
}
