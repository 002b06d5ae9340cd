//! Helpers shared by codex-train's integration tests.

use codex_train::config::TrainConfig;
use std::path::Path;

/// A tiny CPU run of 4 steps in `dir/run`, evaluated only at the end, checkpointed at the end.
pub fn base(dir: &Path, run: &str) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.data.context_length = 16;
    c.training.steps = 4;
    c.training.batch_size = 4;
    c.training.eval_every = 0;
    c.training.eval_batches = 2;
    c.checkpoint.every = 0;
    c.output.dir = dir.join(run).display().to_string();
    c
}

/// Every JSON line of an NDJSON file.
pub fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A small deterministic "code" corpus in `dir/corpus.py`.
pub fn corpus(dir: &Path) -> String {
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!(
            "def f{i}(x):\n    return x * {} + {}\n\n",
            i % 7,
            i % 13
        ));
    }
    let p = dir.join("corpus.py");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}
