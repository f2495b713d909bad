//! Durations as people write them in manifests: `"24h"`, `"90m"`, `"30s"`, `"1h30m"` (the Go
//! `time.Duration` subset of hours, minutes and seconds, which CEL's `duration()` also reads).

use std::{fmt, time::Duration as StdDuration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of a duration in the CRD schema: one or more `<number><unit>` with unit `h`, `m`, `s`.
pub const PATTERN: &str = "^([0-9]+(h|m|s))+$";

/// A duration kept in the form the user wrote it, so that server-side apply round-trips it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct Duration(#[schemars(regex(pattern = PATTERN))] pub String);

impl Duration {
    pub fn new(text: &str) -> Self {
        Self(text.to_owned())
    }

    /// The duration, or an error naming what cannot be read.
    pub fn to_std(&self) -> Result<StdDuration, InvalidDuration> {
        parse(&self.0)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected a sequence like \"24h\", \"90m\", \"1h30m\" or \"30s\"")]
pub struct InvalidDuration(pub String);

/// Parses `<number><unit>...` with units `h`, `m` and `s`.
pub fn parse(text: &str) -> Result<StdDuration, InvalidDuration> {
    let invalid = || InvalidDuration(text.to_owned());
    if text.is_empty() {
        return Err(invalid());
    }

    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        match c {
            '0'..='9' => {
                let digit = u64::from(c as u8 - b'0');
                let value = number
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(digit));
                number = Some(value.ok_or_else(invalid)?);
            }
            'h' | 'm' | 's' => {
                let unit = match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                let seconds = number.take().ok_or_else(invalid)?.checked_mul(unit);
                total = seconds
                    .and_then(|s| total.checked_add(s))
                    .ok_or_else(invalid)?;
            }
            _ => return Err(invalid()),
        }
    }
    if number.is_some() {
        return Err(invalid());
    }
    Ok(StdDuration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hours_minutes_seconds_and_combinations() {
        assert_eq!(parse("24h"), Ok(StdDuration::from_secs(86_400)));
        assert_eq!(parse("90m"), Ok(StdDuration::from_secs(5_400)));
        assert_eq!(parse("30s"), Ok(StdDuration::from_secs(30)));
        assert_eq!(parse("1h30m5s"), Ok(StdDuration::from_secs(5_405)));
    }

    #[test]
    fn rejects_missing_units_unknown_units_and_empty_text() {
        for text in ["", "10", "h", "5d", "1.5h", "-1s", "1h 2m"] {
            assert!(parse(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn rejects_overflow_instead_of_wrapping() {
        assert!(parse("99999999999999999999s").is_err());
        assert!(parse("9999999999999999h").is_err());
    }
}
