//! Durations as Go, CEL and the CRD schema write them (`30s`, `5m`, `1h30m`, `100ms`): one
//! parser for the operator, the agent, the webhook, the client library and the CLI.

use std::time::Duration;

/// Why a text is not a duration (the rule it breaks, for a message such as "must be a duration
/// such as 30s: <this>").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

impl From<String> for DurationError {
    fn from(reason: String) -> Self {
        DurationError(reason)
    }
}

impl From<&str> for DurationError {
    fn from(reason: &str) -> Self {
        DurationError(reason.to_string())
    }
}

const UNITS_HINT: &str = "use ns, us, µs, ms, s, m or h";

/// Nanoseconds per unit. `µs` is U+00B5 MICRO SIGN, as in the CRD's duration pattern.
const UNITS: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Go's and CEL's limit: an i64 of nanoseconds, about 292 years.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Fraction digits beyond this cannot change the result by a nanosecond (an hour is 3.6e12 ns).
const MAX_FRACTION_DIGITS: usize = 20;

/// Go/CEL-style duration: one or more number+unit groups such as `30s`, `5m`, `1h30m`, `100ms`,
/// `1.5h`; units ns, us, µs, ms, s, m, h; no sign, not empty. The grammar is the CRD's
/// [`crate::crd::DURATION_PATTERN`], so a bare `0` (which Go accepts) needs a unit here, and
/// the result is at most Go's limit of about 292 years.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if s.starts_with(['+', '-']) {
        return Err("a duration has no sign".into());
    }
    let too_large = || "too large (at most about 292 years)".to_owned();
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if int_len == 0 {
            return Err("expected a number before each unit".into());
        }
        let (int_part, mut after) = rest.split_at(int_len);
        let mut fraction = "";
        if let Some(tail) = after.strip_prefix('.') {
            let len = tail.bytes().take_while(u8::is_ascii_digit).count();
            if len == 0 {
                return Err("expected digits after the decimal point".into());
            }
            (fraction, after) = tail.split_at(len);
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!("missing unit ({UNITS_HINT})").into());
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!("unknown unit {unit:?} ({UNITS_HINT})").into());
        };
        let mut whole: u128 = 0;
        for digit in int_part.bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add(u128::from(digit - b'0')))
                .filter(|w| *w <= MAX_NANOS)
                .ok_or_else(too_large)?;
        }
        let fraction = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
        let mut numerator: u128 = 0;
        let mut denominator: u128 = 1;
        for digit in fraction.bytes() {
            numerator = numerator * 10 + u128::from(digit - b'0');
            denominator *= 10;
        }
        let group = whole
            .checked_mul(scale)
            .and_then(|w| w.checked_add(numerator * scale / denominator))
            .ok_or_else(too_large)?;
        total = total
            .checked_add(group)
            .filter(|t| *t <= MAX_NANOS)
            .ok_or_else(too_large)?;
        rest = next;
    }
    let nanos = u64::try_from(total).map_err(|_| too_large())?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_go_forms() {
        let cases = [
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("100ms", Duration::from_millis(100)),
            ("1.5h", Duration::from_secs(5400)),
            ("10ns", Duration::from_nanos(10)),
            ("7us", Duration::from_micros(7)),
            ("7µs", Duration::from_micros(7)),
            ("1m0.25s", Duration::from_millis(60_250)),
            ("0s", Duration::ZERO),
            ("1.00000000000000000000000001s", Duration::from_secs(1)),
            ("2562047h", Duration::from_secs(2_562_047 * 3600)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn rejects_malformed_text() {
        let cases = [
            ("", "empty"),
            ("-5s", "sign"),
            ("+5s", "sign"),
            ("5", "missing unit"),
            ("s", "expected a number"),
            ("5x", "unknown unit \"x\""),
            ("1h 30m", "unknown unit \"h \""),
            ("5μs", "unknown unit"), // U+03BC GREEK SMALL LETTER MU: not in the CRD's pattern
            ("1.s", "digits after the decimal point"),
            (".5s", "expected a number"),
            ("1e3s", "unknown unit \"e\""),
            ("2562048h", "too large"),
            ("99999999999999999999999999999999999999999h", "too large"),
        ];
        for (text, reason) in cases {
            let error = parse(text).expect_err(text).to_string();
            assert!(
                error.contains(reason),
                "{text:?}: {error:?} should say {reason:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC*") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_duration_like_text(text in "[0-9.nsuµμmh+ -]{0,24}") {
            let _ = parse(&text);
        }

        #[test]
        fn round_trips_hours_minutes_seconds(
            h in 0u64..100_000,
            m in 0u64..10_000,
            s in 0u64..10_000,
        ) {
            let text = format!("{h}h{m}m{s}s");
            prop_assert_eq!(parse(&text), Ok(Duration::from_secs(h * 3600 + m * 60 + s)));
        }
    }
}
