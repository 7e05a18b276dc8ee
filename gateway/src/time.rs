//! Time as a value: instants are whole seconds since the Unix epoch (`i64`), durations are
//! seconds. Pure code never reads the clock; callers pass `now` in, so tests can pin it. This
//! module also parses and formats RFC 3339 instants and the short duration strings of the
//! agreement and config files (`"30s"`, `"15m"`, `"1h"`, `"7d"`).

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Seconds since the Unix epoch.
pub type Instant = i64;

/// Longest duration string accepted: no legitimate value needs more digits.
const MAX_DURATION_CHARS: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    #[error("not an RFC 3339 date-time: {0:?}")]
    BadInstant(String),
    #[error("not a duration like 30s, 15m, 1h or 7d: {0:?}")]
    BadDuration(String),
}

/// The wall clock, for the binary's edges (CLI, server). Pure code takes the result as a value.
pub fn now() -> Instant {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(_) => 0,
    }
}

/// Milliseconds since the epoch, for audit timestamps and latencies.
pub fn now_millis() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(_) => 0,
    }
}

/// Parses an RFC 3339 date-time (any offset) into epoch seconds (fractions are dropped).
pub fn parse_rfc3339(s: &str) -> Result<Instant, TimeError> {
    OffsetDateTime::parse(s.trim(), &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| TimeError::BadInstant(s.to_string()))
}

/// Formats epoch seconds as RFC 3339 in UTC (`2026-11-25T23:32:01Z`).
pub fn format_rfc3339(t: Instant) -> String {
    match OffsetDateTime::from_unix_timestamp(t) {
        Ok(dt) => dt.format(&Rfc3339).unwrap_or_else(|_| t.to_string()),
        Err(_) => t.to_string(),
    }
}

/// Formats epoch milliseconds as RFC 3339 in UTC with millisecond precision.
pub fn format_rfc3339_millis(ms: i64) -> String {
    let nanos = (ms as i128) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(dt) => {
            let base = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.millisecond()
            );
            base
        }
        Err(_) => ms.to_string(),
    }
}

/// Parses `"<n><unit>"` with unit `s`, `m`, `h` or `d` into seconds. `"0s"` is allowed; callers
/// that need a positive value check it themselves.
pub fn parse_duration(s: &str) -> Result<i64, TimeError> {
    let bad = || TimeError::BadDuration(s.to_string());
    // ASCII only, so the split below is on a character boundary (found by fuzzing: a
    // multi-byte last character panicked).
    if s.is_empty() || s.len() > MAX_DURATION_CHARS || !s.is_ascii() {
        return Err(bad());
    }
    let (num, unit) = s.split_at(s.len() - 1);
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: i64 = num.parse().map_err(|_| bad())?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(mul).ok_or_else(bad)
}

/// Like [`parse_duration`], in milliseconds, also accepting the unit `ms` (for timeouts).
pub fn parse_duration_millis(s: &str) -> Result<u64, TimeError> {
    if let Some(n) = s.strip_suffix("ms") {
        if n.is_empty() || n.len() > MAX_DURATION_CHARS || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TimeError::BadDuration(s.to_string()));
        }
        return n.parse().map_err(|_| TimeError::BadDuration(s.to_string()));
    }
    let secs = parse_duration(s)?;
    u64::try_from(secs)
        .ok()
        .and_then(|x| x.checked_mul(1000))
        .ok_or_else(|| TimeError::BadDuration(s.to_string()))
}

/// Formats seconds back into the shortest exact duration string.
pub fn format_duration(secs: i64) -> String {
    if secs != 0 && secs % 86_400 == 0 {
        format!("{}d", secs / 86_400)
    } else if secs != 0 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs != 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_rfc3339("2026-03-27T14:00:05Z").unwrap();
        assert_eq!(format_rfc3339(t), "2026-03-27T14:00:05Z");
        assert_eq!(parse_rfc3339("2026-03-27T16:00:05+02:00").unwrap(), t);
        assert!(parse_rfc3339("2026-03-27 14:00").is_err());
        assert!(parse_rfc3339("").is_err());
    }

    #[test]
    fn durations_in_millis() {
        assert_eq!(parse_duration_millis("250ms").unwrap(), 250);
        assert_eq!(parse_duration_millis("2s").unwrap(), 2000);
        assert_eq!(parse_duration_millis("1m").unwrap(), 60_000);
        for bad in ["ms", "-1ms", "1.5s", "", "10x"] {
            assert!(parse_duration_millis(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn millis_format() {
        assert_eq!(
            format_rfc3339_millis(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        for bad in [
            "",
            "s",
            "10",
            "-5s",
            "1.5h",
            "5w",
            "1h30m",
            "99999999999999999999d",
            "1M\u{2d2}",
            "1\u{e9}",
            "\u{e9}",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
            assert!(parse_duration_millis(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(900), "15m");
        assert_eq!(format_duration(61), "61s");
        assert_eq!(format_duration(0), "0s");
    }
}
