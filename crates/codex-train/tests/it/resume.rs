// Exact resume: 2N steps in one run equal N steps + resume + N steps, bit for bit (CPU).

use crate::support::{base, corpus};
use codex_train::config::TrainConfig;
use codex_train::{Resume, RunOptions, RunStatus as Status, train};
use std::path::Path;

fn config(dir: &Path, run: &str, input: &str) -> TrainConfig {
    let mut c = base(dir, run);
    c.data.inputs = vec![input.to_string()];
    c.data.val_fraction = 0.1;
    c.training.steps = 8;
    c.training.grad_accum = 2;
    c.training.log_every = 1;
    c.training.eval_every = 4;
    c.schedule.warmup_steps = 2;
    c.checkpoint.every = 3;
    c.checkpoint.keep_last = 2;
    c
}

fn step_losses(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.ndjson")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "step")
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["train_loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn resume_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(dir.path());

    let a = config(dir.path(), "a", &input);
    let sa = train(&a, &RunOptions::default(), Vec::new()).unwrap();
    assert_eq!(sa.status, Status::Completed);
    assert_eq!(sa.steps, 8);

    let b = config(dir.path(), "b", &input);
    let first = train(
        &b,
        &RunOptions {
            stop_at_step: Some(4),
            ..Default::default()
        },
        Vec::new(),
    )
    .unwrap();
    assert_eq!(first.status, Status::Interrupted);
    assert_eq!(first.steps, 4);
    // A fresh run on a directory with checkpoints is refused.
    assert!(train(&b, &RunOptions::default(), Vec::new()).is_err());
    let second = train(
        &b,
        &RunOptions {
            resume: Resume::Latest,
            ..Default::default()
        },
        Vec::new(),
    )
    .unwrap();
    assert_eq!(second.status, Status::Completed);
    assert_eq!(second.steps, 8);

    let la = step_losses(Path::new(&a.output.dir));
    let lb = step_losses(Path::new(&b.output.dir));
    assert_eq!(la.len(), 8);
    assert_eq!(la, lb, "losses differ after resume");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let fa = std::fs::read(
            Path::new(&a.output.dir)
                .join("checkpoints/step-00000008")
                .join(file),
        )
        .unwrap();
        let fb = std::fs::read(
            Path::new(&b.output.dir)
                .join("checkpoints/step-00000008")
                .join(file),
        )
        .unwrap();
        assert!(fa == fb, "{file} differs after resume");
    }
    // The loss fell over 8 steps.
    assert!(la[7].1 < la[0].1, "{la:?}");
}
