//! Parsers for what servers send that doctor reads: RFC 3339 times (Ollama's `expires_at`); Prometheus text is
//! read by [`crate::backend::metric`], which the run's busy sampler shares. Small enough to keep here rather than
//! add a dependency.

/// Seconds since the Unix epoch of an RFC 3339 time (`2026-11-23T20:45:00.5+01:00`).
pub fn rfc3339_secs(s: &str) -> Option<f64> {
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let split = time.find(['Z', 'z', '+', '-']).unwrap_or(time.len());
    let (clock, zone) = time.split_at(split);
    let mut c = clock.splitn(3, ':');
    let (h, min): (i64, i64) = (c.next()?.parse().ok()?, c.next()?.parse().ok()?);
    let sec: f64 = c.next()?.parse().ok()?;
    let offset = match zone.chars().next() {
        Some(sign @ ('+' | '-')) => {
            let (oh, om) = zone[1..].split_once(':')?;
            let o = oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60;
            if sign == '+' {
                o
            } else {
                -o
            }
        }
        _ => 0,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60 - offset) as f64 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_with_offsets() {
        assert_eq!(rfc3339_secs("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(rfc3339_secs("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(rfc3339_secs("2000-03-01T01:00:00.5+01:00"), Some(951_868_800.5));
        assert_eq!(rfc3339_secs("not a time"), None);
    }
}
