//! What a scenario prints: a small table for people, then one JSON line
//! for scripts.

use serde_json::{Map, Value};
use std::fmt::Write as _;

/// How a figure compares with the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No target for this figure.
    Info,
    /// The target is met.
    Met,
    /// The target is missed.
    Missed,
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What is measured.
    pub metric: String,
    /// The figure, formatted.
    pub value: String,
    /// The target, if there is one.
    pub target: String,
    /// Whether it is met.
    pub verdict: Verdict,
}

/// A scenario's result.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario's name (`throughput`, `latency`, …).
    pub scenario: String,
    /// Lines printed under the title (the set-up).
    pub notes: Vec<String>,
    /// Table rows, in order.
    pub rows: Vec<Row>,
    /// Lines printed under the table (details too wide for it).
    pub details: Vec<String>,
    /// The JSON line's fields (besides `scenario`).
    pub json: Map<String, Value>,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.to_string(),
            notes: Vec::new(),
            rows: Vec::new(),
            details: Vec::new(),
            json: Map::new(),
        }
    }

    /// Adds a line under the title.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Adds a line under the table.
    pub fn detail(&mut self, text: impl Into<String>) {
        self.details.push(text.into());
    }

    /// Adds a figure with no target.
    pub fn info(&mut self, metric: impl Into<String>, value: impl Into<String>) {
        self.rows.push(Row {
            metric: metric.into(),
            value: value.into(),
            target: String::new(),
            verdict: Verdict::Info,
        });
    }

    /// Adds a figure with its target and whether it is met.
    pub fn target(
        &mut self,
        metric: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        met: bool,
    ) {
        self.rows.push(Row {
            metric: metric.into(),
            value: value.into(),
            target: target.into(),
            verdict: if met { Verdict::Met } else { Verdict::Missed },
        });
    }

    /// Sets a field of the JSON line.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.json.insert(key.to_string(), value.into());
    }

    /// The table and the JSON line, as printed.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== {}", self.scenario);
        for note in &self.notes {
            let _ = writeln!(out, "   {note}");
        }
        let width = |f: fn(&Row) -> &str, title: &str| {
            self.rows
                .iter()
                .map(|r| f(r).chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        };
        let w_metric = width(|r| &r.metric, "metric");
        let w_value = width(|r| &r.value, "value");
        let w_target = width(|r| &r.target, "target");
        let _ = writeln!(
            out,
            "{:<w_metric$}  {:>w_value$}  {:<w_target$}  verdict",
            "metric", "value", "target"
        );
        for row in &self.rows {
            let verdict = match row.verdict {
                Verdict::Info => "",
                Verdict::Met => "met",
                Verdict::Missed => "MISSED",
            };
            let line = format!(
                "{:<w_metric$}  {:>w_value$}  {:<w_target$}  {verdict}",
                row.metric, row.value, row.target
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        for detail in &self.details {
            let _ = writeln!(out, "   {detail}");
        }
        let mut json = Map::new();
        json.insert("scenario".into(), Value::from(self.scenario.clone()));
        json.extend(self.json.clone());
        let _ = writeln!(out, "{}", Value::Object(json));
        out
    }
}

/// `12345.6` → `12,346`.
pub fn thousands(value: f64) -> String {
    let rounded = value.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Rounds to `places` decimals, for the JSON line.
pub fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// The nearest-rank percentile `p` (0–100) of sorted `values`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Per-thread figures as `name 1.23 s / 456 switches, …`.
pub fn threads(per_thread: &[(String, f64, u64)]) -> String {
    per_thread
        .iter()
        .map(|(name, cpu, switches)| format!("{name} {cpu:.2} s / {switches} sw"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per-thread figures for the JSON line.
pub fn threads_json(per_thread: &[(String, f64, u64)]) -> Value {
    Value::Array(
        per_thread
            .iter()
            .map(|(name, cpu, switches)| {
                serde_json::json!({
                    "thread": name,
                    "cpu_secs": round(*cpu, 3),
                    "context_switches": switches,
                })
            })
            .collect(),
    )
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-4200.0), "-4,200");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
