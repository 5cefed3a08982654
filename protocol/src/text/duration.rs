//! The one reading of a duration that a person typed: a flag of the master, the
//! worker or the CLI (`--timeout 1.5`, `--drain-timeout 1m30s`). Pure: text in, a
//! `Duration` or the reason out.

use std::time::Duration;

/// The shortest duration a setting accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortest {
    /// Zero is allowed (for example "do not wait").
    Zero,
    /// It must be longer than zero (a timeout, an interval).
    AboveZero,
}

/// Why a duration was refused. The messages name what is expected, for a flag's
/// error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// Neither a number of seconds nor a duration like `1m30s`.
    #[error("expected seconds or a duration like 1m30s: {0}")]
    Unreadable(String),
    /// A number of seconds below the shortest allowed, or not finite.
    #[error("must be a {} number of seconds, got {text:?}", if *.shortest == Shortest::Zero { "non-negative" } else { "positive" })]
    OutOfRange {
        /// What was given.
        text: String,
        /// The shortest allowed.
        shortest: Shortest,
    },
    /// Zero where it must be longer.
    #[error("must be longer than zero")]
    Zero,
    /// More seconds than a `Duration` holds.
    #[error("{0}")]
    TooLong(String),
}

/// Reads `text` as a number of seconds (`90`, `0.5`) or in humantime form (`1m30s`,
/// `2h`), no shorter than `shortest`.
pub fn parse_duration(text: &str, shortest: Shortest) -> Result<Duration, DurationError> {
    let text = text.trim();
    let duration = match text.parse::<f64>() {
        Ok(seconds) => seconds_to_duration(seconds, shortest).map_err(|error| match error {
            DurationError::OutOfRange { shortest, .. } => DurationError::OutOfRange {
                text: text.to_string(),
                shortest,
            },
            other => other,
        })?,
        Err(_) => humantime::parse_duration(text)
            .map_err(|error| DurationError::Unreadable(error.to_string()))?,
    };
    if duration.is_zero() && shortest == Shortest::AboveZero {
        return Err(DurationError::Zero);
    }
    Ok(duration)
}

/// A number of seconds (fractions allowed) as a `Duration`, no shorter than
/// `shortest`; for a setting that arrives as a number already.
pub fn seconds_to_duration(seconds: f64, shortest: Shortest) -> Result<Duration, DurationError> {
    let in_range = seconds.is_finite()
        && match shortest {
            Shortest::Zero => seconds >= 0.0,
            Shortest::AboveZero => seconds > 0.0,
        };
    if !in_range {
        return Err(DurationError::OutOfRange {
            text: seconds.to_string(),
            shortest,
        });
    }
    Duration::try_from_secs_f64(seconds).map_err(|error| DurationError::TooLong(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let check = |text: &str, shortest: Shortest, expect: Result<Duration, ()>| {
            assert_eq!(
                parse_duration(text, shortest).map_err(|_| ()),
                expect,
                "input: {text:?}, {shortest:?}"
            )
        };
        use Shortest::{AboveZero, Zero};
        check("10", AboveZero, Ok(Duration::from_secs(10)));
        check(" 0.25 ", AboveZero, Ok(Duration::from_millis(250)));
        check("1m30s", AboveZero, Ok(Duration::from_secs(90)));
        check("0", AboveZero, Err(()));
        check("-1", AboveZero, Err(()));
        check("0s", AboveZero, Err(()));
        check("soon", AboveZero, Err(()));
        check("NaN", AboveZero, Err(()));
        check("inf", AboveZero, Err(()));
        check("1e30", AboveZero, Err(()));
        check("0", Zero, Ok(Duration::ZERO));
        check("0s", Zero, Ok(Duration::ZERO));
        check("2.5", Zero, Ok(Duration::from_millis(2500)));
        check("-0.5", Zero, Err(()));
        check("soon", Zero, Err(()));
    }

    #[test]
    fn numbers_of_seconds() {
        use Shortest::{AboveZero, Zero};
        assert_eq!(
            seconds_to_duration(1.5, AboveZero),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(seconds_to_duration(0.0, Zero), Ok(Duration::ZERO));
        assert!(seconds_to_duration(0.0, AboveZero).is_err());
        assert!(seconds_to_duration(-1.0, Zero).is_err());
        assert!(seconds_to_duration(f64::NAN, Zero).is_err());
        assert!(seconds_to_duration(f64::INFINITY, AboveZero).is_err());
    }

    #[test]
    fn messages_name_what_is_expected() {
        let message = |text: &str, shortest| {
            parse_duration(text, shortest)
                .map(|_| String::new())
                .unwrap_or_else(|error| error.to_string())
        };
        assert_eq!(
            message("-1", Shortest::AboveZero),
            "must be a positive number of seconds, got \"-1\""
        );
        assert_eq!(
            message("-1", Shortest::Zero),
            "must be a non-negative number of seconds, got \"-1\""
        );
        assert_eq!(
            message("0s", Shortest::AboveZero),
            "must be longer than zero"
        );
        assert!(message("soon", Shortest::Zero).starts_with("expected seconds or a duration"));
    }
}
