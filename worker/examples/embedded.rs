//! A program that embeds a Retire-Cluster worker with a task type written in Rust.
//!
//! ```sh
//! cargo run -p worker --example embedded -- 127.0.0.1:8080
//! retire submit --type word_count --payload '{"text": "one two three"}' --wait
//! ```
//!
//! The worker runs the built-in types as usual, plus `word_count`, which counts the
//! words of `payload.text` and reports its progress every thousand words. Ctrl-C stops
//! it.

use std::thread;

use serde_json::json;
use worker::ExecutionConfig;
use worker::{Handlers, StopHandle, WorkerConfig};
use worker::{Progress, TaskOutcome};

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let master = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());

    let handlers = Handlers::new().add("word_count", |task, context| {
        let Some(text) = task.payload.get("text").and_then(|text| text.as_str()) else {
            return TaskOutcome::failed("payload.text (a string) is missing");
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        for (idx, _) in words.iter().enumerate() {
            // A handler checks its cancel token now and then and stops when asked.
            if context.is_cancelled() {
                return TaskOutcome::failed("cancelled");
            }
            if idx % 1000 == 999 {
                context.report_progress(Progress {
                    done: Some(idx as u64 + 1),
                    total: Some(words.len() as u64),
                    ..Progress::default()
                });
            }
        }
        TaskOutcome::completed(json!(words.len())).with_field("unique", json!(unique(&words)))
    });

    let stop = StopHandle::new();
    let ctrl_c = stop.clone();
    // A real program would hook SIGINT (the worker binary uses signal-hook); this
    // example stops when its standard input closes, which Ctrl-D or a pipe does.
    thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        ctrl_c.stop();
    });

    let config = WorkerConfig {
        master,
        role: "embedded".into(),
        ..WorkerConfig::default()
    };
    worker::run_with(config, ExecutionConfig::default(), handlers, stop)?;
    Ok(())
}

fn unique(words: &[&str]) -> usize {
    words
        .iter()
        .map(|word| word.to_lowercase())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}
