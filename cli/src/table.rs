//! The small formatters the CLI's tables share (relative times, sizes); the
//! tables themselves are `protocol::text::Table`, the renderer the master's text
//! mode uses too.

use std::time::SystemTime;

pub use protocol::text::{clean, Align, Table};

/// An RFC 3339 timestamp as a short age (`12s ago`, `5m ago`, `3h ago`,
/// `2d ago`) relative to `now`; text that is no timestamp is shown as is.
pub fn ago(timestamp: &str, now: SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(timestamp) else {
        return timestamp.to_string();
    };
    // A clock that runs ahead on the master makes `then` later than `now`;
    // that is not worth more than "just now".
    let seconds = now.duration_since(then).map_or(0, |age| age.as_secs());
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3_600 => format!("{}m ago", seconds / 60),
        3_600..86_400 => format!("{}h ago", seconds / 3_600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// A size in GiB with one decimal, as `7.6G`.
pub fn gigabytes(gb: f64) -> String {
    format!("{gb:.1}G")
}

/// An optional cell: its text, or `-` when absent.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        let now = humantime::parse_rfc3339("2024-01-15T10:31:00Z").expect("a valid timestamp");
        let check = |timestamp: &str, expect: &str| assert_eq!(ago(timestamp, now), expect);
        check("2024-01-15T10:30:48Z", "12s ago");
        check("2024-01-15T10:30:59.5Z", "0s ago");
        check("2024-01-15T10:26:00Z", "5m ago");
        check("2024-01-15T07:00:00Z", "3h ago");
        check("2024-01-13T10:31:00Z", "2d ago");
        check("2024-01-15T10:32:00Z", "0s ago");
        check("yesterday", "yesterday");
    }
}
