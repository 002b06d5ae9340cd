//! `codex config show|validate` and config errors of `codex train`.

use crate::support::{codex, expect_exit, fixture, json_of, stdout_json, stdout_of, tempdir};

#[test]
fn validate_reports_every_bad_key_at_once() {
    let err = expect_exit(
        codex()
            .args(["config", "validate"])
            .arg(fixture("train/bad.toml")),
        1,
    )
    .stderr;
    for p in [
        "optimizer.name",
        "training.steps",
        "training.batch_sz",
        "schedule.warmup_stepz",
    ] {
        assert!(err.contains(p), "missing {p} in:\n{err}");
    }
    assert!(err.contains("did you mean `batch_size`"), "{err}");
    assert!(err.contains("did you mean `warmup_steps`"), "{err}");
}

#[test]
fn validate_reports_every_invalid_value_at_once() {
    let err = expect_exit(
        codex()
            .args(["config", "validate"])
            .arg(fixture("train/invalid_values.toml")),
        1,
    )
    .stderr;
    for p in [
        "optimizer.lr",
        "optimizer.beta2",
        "training.batch_size",
        "training.device",
        "checkpoint.keep_last",
    ] {
        assert!(err.contains(p), "missing {p} in:\n{err}");
    }
    // --json: the same issues as data, still exit 1.
    let out = expect_exit(
        codex()
            .args(["--json", "config", "validate"])
            .arg(fixture("train/invalid_values.toml")),
        1,
    );
    let v = json_of(out.stdout.as_bytes());
    assert_eq!(v["valid"], false);
    assert_eq!(v["issues"].as_array().unwrap().len(), 5);
}

#[test]
fn train_with_bad_overrides_exits_1_listing_all() {
    let err = expect_exit(
        codex().args([
            "train",
            "optimizer.lr=-1",
            "training.stepz=3",
            "training.batch_size=zero",
        ]),
        1,
    )
    .stderr;
    for p in ["training.stepz", "training.batch_size"] {
        assert!(err.contains(p), "missing {p} in:\n{err}");
    }
}

#[test]
fn show_prints_the_effective_config() {
    let v = stdout_json(codex().args(["--json", "config", "show", "training.steps=5"]));
    assert_eq!(v["training"]["steps"], 5);
    assert_eq!(v["model"]["preset"], "gpt-tiny");
    assert_eq!(v["tokenizer"]["kind"], "byte");
    let text = stdout_of(
        codex()
            .args(["config", "show", "--config"])
            .arg(fixture("train/tiny.toml")),
    );
    assert!(text.contains("context_length = 16"), "{text}");
    // The printed TOML is itself a valid config.
    let dir = tempdir();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text).unwrap();
    codex()
        .args(["config", "validate"])
        .arg(&p)
        .assert()
        .success();
}

#[test]
fn show_documents_the_override_keys_of_the_preset_with_their_values() {
    let text = stdout_of(codex().args(["config", "show", "model.overrides.n_layer=3"]));
    assert!(
        text.contains("# [model.overrides] keys of preset \"gpt-tiny\" (gpt2)"),
        "{text}"
    );
    assert!(text.contains("\n#   n_layer = 3"), "{text}");
    assert!(text.contains("\n#   n_head = "), "{text}");
    // A Llama preset lists the Llama keys.
    let text = stdout_of(codex().args(["config", "show", "model.preset=llama-tiny"]));
    assert!(text.contains("#   num_key_value_heads = "), "{text}");
    assert!(!text.contains("#   n_layer"), "{text}");
}

#[test]
fn every_stage_reports_at_once() {
    // A malformed override, an unknown key and three bad values: one report, all five.
    let out = expect_exit(
        codex()
            .args(["--json", "config", "validate"])
            .arg(fixture("train/tiny.toml"))
            .args([
                "training.steps=0",
                "optimizer.lr=-1",
                "data.val_fraction=2",
                "foo.bar=1",
                "nonsense",
                "training.batch_size=zero",
            ]),
        1,
    );
    let v = json_of(out.stdout.as_bytes());
    let paths: Vec<&str> = v["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    for p in [
        "nonsense",
        "foo",
        "training.steps",
        "optimizer.lr",
        "data.val_fraction",
        "training.batch_size",
    ] {
        assert!(paths.contains(&p), "missing {p} in {paths:?}");
    }
}

#[test]
fn validate_checks_presets_inputs_and_foreign_key_names() {
    let dir = tempdir();
    let cfg = dir.path().join("hf.toml");
    std::fs::write(
        &cfg,
        "[model]\npreset = \"gpt-tiyn\"\n[data]\ninputs = [\"/no/such/dir/*.py\"]\n\
         [training]\nlearning_rate = 1e-4\nper_device_train_batch_size = 8\n\
         num_train_epochs = 3\nwarmup_steps = 10\n[lora]\nr = 8\n",
    )
    .unwrap();
    let err = expect_exit(codex().args(["config", "validate"]).arg(&cfg), 1).stderr;
    for (path, hint) in [
        ("model.preset", "did you mean `gpt-tiny`?"),
        ("data.inputs.0", "no files match"),
        ("training.learning_rate", "did you mean `optimizer.lr`?"),
        (
            "training.per_device_train_batch_size",
            "did you mean `training.batch_size`?",
        ),
        (
            "training.num_train_epochs",
            "did you mean `training.epochs`?",
        ),
        (
            "training.warmup_steps",
            "did you mean `schedule.warmup_steps`?",
        ),
        ("lora", "did you mean `model.lora`?"),
    ] {
        let line = err
            .lines()
            .find(|l| l.trim_start().starts_with(path))
            .unwrap_or_else(|| panic!("no line for {path} in:\n{err}"));
        assert!(line.contains(hint), "{path}: want {hint:?} in {line:?}");
    }
    // An existing input and a known preset pass.
    let ok = dir.path().join("ok.toml");
    let corpus = crate::support::corpus(dir.path());
    std::fs::write(&ok, format!("[data]\ninputs = [{corpus:?}]\n")).unwrap();
    codex()
        .args(["config", "validate"])
        .arg(&ok)
        .assert()
        .success();
}

#[test]
fn sizes_have_upper_bounds() {
    let out = expect_exit(
        codex()
            .args(["--json", "config", "validate"])
            .arg(fixture("train/tiny.toml"))
            .args([
                "training.epochs=18446744073709551",
                "training.steps=18446744073709551",
                "training.batch_size=100000000",
                "training.grad_accum=100000000",
                "data.context_length=100000000",
                "tokenizer.kind=train",
                "tokenizer.vocab_size=4000000000",
                "model.lora.enabled=true",
                "model.lora.r=100000000",
            ]),
        1,
    );
    let v = json_of(out.stdout.as_bytes());
    let issues = v["issues"].as_array().unwrap();
    for p in [
        "training.epochs",
        "training.steps",
        "training.batch_size",
        "training.grad_accum",
        "data.context_length",
        "tokenizer.vocab_size",
        "model.lora.r",
    ] {
        let i = issues
            .iter()
            .find(|i| i["path"] == p)
            .unwrap_or_else(|| panic!("missing {p} in {issues:?}"));
        assert!(
            i["message"].as_str().unwrap().starts_with("must be <="),
            "{i}"
        );
    }
    // `train` stops on the bound with exit 1 instead of aborting on the allocation.
    let err = expect_exit(
        crate::support::codex_limited().args(["train", "training.batch_size=100000000"]),
        1,
    )
    .stderr;
    assert!(err.contains("training.batch_size"), "{err}");
}
