//! Value parsers for the command line: durations (`30s`, `10m`, `500ms`, `30d`), counts (`10k`, `1M`), sizes
//! (`800M`, `6G`), `key=value` parameters.

use std::time::Duration;

use crate::backend::InputsPerRequest;

/// Parses `500ms`, `30s`, `10m`, `2h`, `30d`, or a bare number of seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a duration like 30s, 10m or 500ms"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{s:?} must be a positive duration"));
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use ms, s, m, h or d")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `1000`, `10k`, `1M`.
pub fn count(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1_000),
        Some('m' | 'M') => (&s[..s.len() - 1], 1_000_000),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a count like 500, 10k or 1M"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses a size in bytes: `800M`, `6G`, `1.5G`, `4096` (binary units: `K`, `M`, `G`, `T`, with or without a
/// trailing `B` or `iB`).
pub fn bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let stripped = upper.strip_suffix("IB").or_else(|| upper.strip_suffix('B')).unwrap_or(&upper);
    let (num, shift) = match stripped.chars().last() {
        Some('K') => (&stripped[..stripped.len() - 1], 10),
        Some('M') => (&stripped[..stripped.len() - 1], 20),
        Some('G') => (&stripped[..stripped.len() - 1], 30),
        Some('T') => (&stripped[..stripped.len() - 1], 40),
        _ => (stripped, 0),
    };
    let n: f64 = num.trim().parse().map_err(|_| format!("{t:?} is not a size like 800M, 6G or 4096"))?;
    let value = n * (1u64 << shift) as f64;
    if !(value.is_finite() && value >= 1.0 && value < u64::MAX as f64) {
        return Err(format!("{t:?} is not a size inflight can use"));
    }
    Ok(value as u64)
}

/// `--concurrency`: `auto` or a fixed number of requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// The controller finds and holds the best level.
    Auto,
    /// Exactly this many.
    Fixed(usize),
}

/// Parses `auto` or a positive count.
pub fn concurrency(s: &str) -> Result<Concurrency, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(Concurrency::Auto);
    }
    match count(s)? {
        0 => Err("concurrency must be at least 1 (or auto)".into()),
        n => Ok(Concurrency::Fixed(n as usize)),
    }
}

/// Parses `--inputs-per-request`: `auto`, or a positive count (`1` turns packing off).
pub fn inputs_per_request(s: &str) -> Result<InputsPerRequest, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(InputsPerRequest::Auto);
    }
    match count(s)? {
        0 => Err("inputs per request must be at least 1 (1 sends each line alone) or auto".into()),
        n if n > MAX_INPUTS_PER_REQUEST => {
            Err(format!("{n} inputs per request is more than {MAX_INPUTS_PER_REQUEST}; servers refuse far fewer"))
        }
        n => Ok(InputsPerRequest::Fixed(n as usize)),
    }
}

/// The most `--inputs-per-request` takes.
const MAX_INPUTS_PER_REQUEST: u64 = 4096;

/// Parses `key=value`; the value is JSON when it parses as JSON (`0.9`, `true`, `["a"]`), a string otherwise.
pub fn param(s: &str) -> Result<(String, serde_json::Value), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not key=value"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
    Ok((k.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2"), Ok(Duration::from_secs(2)));
        assert!(duration("5x").is_err());
        assert!(duration("-1s").is_err());
    }

    #[test]
    fn days() {
        assert_eq!(duration("30d"), Ok(Duration::from_secs(30 * 86400)));
    }

    #[test]
    fn counts() {
        assert_eq!(count("10k"), Ok(10_000));
        assert_eq!(count("1M"), Ok(1_000_000));
        assert_eq!(count("7"), Ok(7));
        assert!(count("k").is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes("4096"), Ok(4096));
        assert_eq!(bytes("800M"), Ok(800 << 20));
        assert_eq!(bytes("6G"), Ok(6 << 30));
        assert_eq!(bytes("6GiB"), Ok(6 << 30));
        assert_eq!(bytes("1.5g"), Ok(3 << 29));
        assert_eq!(bytes("2kb"), Ok(2048));
        for bad in ["", "G", "-1G", "0", "lots"] {
            assert!(bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn concurrency_values() {
        assert_eq!(concurrency("auto"), Ok(Concurrency::Auto));
        assert_eq!(concurrency("16"), Ok(Concurrency::Fixed(16)));
        assert!(concurrency("0").is_err());
        assert!(concurrency("many").is_err());
    }

    #[test]
    fn inputs_per_request_values() {
        assert_eq!(inputs_per_request("auto"), Ok(InputsPerRequest::Auto));
        assert_eq!(inputs_per_request("AUTO"), Ok(InputsPerRequest::Auto));
        assert_eq!(inputs_per_request("1"), Ok(InputsPerRequest::Fixed(1)));
        assert_eq!(inputs_per_request("64"), Ok(InputsPerRequest::Fixed(64)));
        assert_eq!(inputs_per_request("4k"), Ok(InputsPerRequest::Fixed(4000)));
        for bad in ["0", "5k", "some", ""] {
            assert!(inputs_per_request(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn params() {
        assert_eq!(param("top_p=0.9"), Ok(("top_p".into(), serde_json::json!(0.9))));
        assert_eq!(param("stop=[\"\\n\"]"), Ok(("stop".into(), serde_json::json!(["\n"]))));
        assert_eq!(param("x=hello"), Ok(("x".into(), serde_json::json!("hello"))));
        assert!(param("nokey").is_err());
    }
}
