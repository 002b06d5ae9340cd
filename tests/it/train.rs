//! `codex train` / `codex eval` end to end, running the real binary.

use crate::support::{
    codex, codex_process, corpus, expect_exit, json_of, lines, ndjson, newest_step,
    reseal_manifest, sigint, stdout_json, tempdir, tiny_args,
};
use serde_json::Value;
use std::path::Path;

/// The `val_loss` of every eval event, in order.
fn val_losses(events: &[Value]) -> Vec<f64> {
    events
        .iter()
        .filter(|e| e["event"] == "eval")
        .map(|e| e["val_loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn default_config_shortened_end_to_end() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let out = codex()
        .current_dir(dir.path())
        .args([
            "--json",
            "train",
            "training.steps=40",
            "training.eval_every=20",
            "checkpoint.every=20",
        ])
        .arg(format!("output.dir={:?}", run.display().to_string()))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    // stdout: the same events as metrics.ndjson, one JSON object per line.
    let events = ndjson(&out);
    let file = lines(&run.join("metrics.ndjson"));
    assert_eq!(events.len(), file.len());
    for e in &file {
        for k in ["event", "schema_version", "run_id", "ts", "step"] {
            assert!(e.get(k).is_some(), "{k} missing in {e}");
        }
    }
    let steps: Vec<&Value> = file.iter().filter(|e| e["event"] == "step").collect();
    assert_eq!(steps.len(), 4);
    for k in [
        "train_loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "step_time_ms",
    ] {
        assert!(steps[0][k].is_number(), "{k} in {}", steps[0]);
    }
    let evals = val_losses(&file);
    // Step 0 (untrained baseline), 20 and 40. Untrained is about ln 256 = 5.55; the loss must
    // fall well below it and keep falling.
    assert_eq!(evals.len(), 3);
    assert!(
        evals[0] > 5.0 && evals[1] < 4.5 && evals[2] < evals[1],
        "val_loss did not fall: {evals:?}"
    );
    let end = file.last().unwrap();
    assert_eq!(end["event"], "end");
    assert_eq!(end["status"], "completed");
    assert!(end["tokens_per_s"].as_f64().unwrap() > 0.0);
    // A complete run directory.
    for f in [
        "config.toml",
        "metrics.ndjson",
        "provenance.json",
        "checkpoints/index.json",
        "checkpoints/step-00000040/MANIFEST.json",
        "checkpoints/step-00000040/model.safetensors",
        "checkpoints/step-00000040/optimizer.safetensors",
        "checkpoints/step-00000040/trainer_state.json",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let prov = json_of(&std::fs::read(run.join("provenance.json")).unwrap());
    assert!(prov["rustc"].as_str().unwrap().starts_with("rustc"));
    assert_eq!(prov["data"]["sources"][0]["bytes"], 999_748);
    // The resolved config round-trips through `config validate`.
    codex()
        .arg("config")
        .arg("validate")
        .arg(run.join("config.toml"))
        .assert()
        .success();

    // `codex eval` on the run: NDJSON + CSV + JSON summary, same val loss as the final eval
    // when the same batches are used.
    let summary = stdout_json(
        codex()
            .args(["--json", "eval"])
            .arg(&run)
            .args(["--max-batches", "16"]),
    );
    assert!(
        (summary["loss"].as_f64().unwrap() - evals[2]).abs() < 1e-4,
        "{summary} vs {}",
        evals[2]
    );
    assert!(run.join("eval/eval.csv").is_file());
    assert!(lines(&run.join("eval/eval.ndjson")).last().unwrap()["event"] == "eval_summary");
}

#[test]
fn sigkill_at_random_moments_then_resume_matches_uninterrupted() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let a = dir.path().join("a");
    let long = |out: &Path| tiny_args(&input, out, &["training.steps=60"]);
    codex().args(long(&a)).assert().success();

    let b = dir.path().join("b");
    // Kills land at pseudo-random training steps (LCG, fixed seed) plus a pseudo-random few
    // milliseconds, found by watching the run's metrics: the same test must land them on a slow
    // debug build and on a fast release build. Steps inside a checkpoint write are included.
    let mut state: u64 = 0x5eed;
    let mut kills = 0;
    let mut finished = false;
    for attempt in 0..30 {
        let mut args = long(&b);
        if codex_has_checkpoint(&b) {
            args.push("--resume".into());
        }
        let mut child = codex_process()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if attempt < 8 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let target = 1 + 6 * attempt as u64 + (state >> 33) % 6; // ≤ 48 of 60 steps
            let extra_ms = (state >> 20) % 8;
            while newest_step(&b) < target && child.try_wait().unwrap().is_none() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            std::thread::sleep(std::time::Duration::from_millis(extra_ms));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
            }
        }
        let status = child.wait().unwrap();
        if status.success() {
            finished = true;
            break;
        }
    }
    assert!(finished, "never finished");
    eprintln!("{kills} SIGKILLs");
    assert!(
        kills >= 5,
        "only {kills} kills landed; the run is too short for this test"
    );
    let end = lines(&b.join("metrics.ndjson"))
        .into_iter()
        .rev()
        .find(|e| e["event"] == "end")
        .unwrap();
    assert_eq!(end["status"], "completed");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let fa = std::fs::read(a.join("checkpoints/step-00000060").join(f)).unwrap();
        let fb = std::fs::read(b.join("checkpoints/step-00000060").join(f)).unwrap();
        assert!(fa == fb, "{f} differs from the uninterrupted run");
    }
}

fn codex_has_checkpoint(run: &Path) -> bool {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .any(|e| e.path().join("MANIFEST.json").is_file())
        })
        .unwrap_or(false)
}

#[test]
fn interrupt_writes_checkpoint_and_exits_130_then_resume_completes() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("r");
    let args = tiny_args(
        &input,
        &run,
        &[
            "--stop-at-step=5",
            "--system-metrics=cpu",
            "--system-metrics-interval=0.2",
        ],
    );
    codex().args(&args).assert().code(130);
    // The sampler ran beside the loop and was stopped; its lines carry the step.
    let samples = lines(&run.join("system_metrics.ndjson"));
    assert!(
        samples.iter().all(|s| s.get("step").is_some()),
        "{samples:?}"
    );
    assert!(
        run.join("checkpoints/step-00000005/MANIFEST.json")
            .is_file()
    );
    let end = lines(&run.join("metrics.ndjson")).last().cloned().unwrap();
    assert_eq!(end["status"], "interrupted");
    // A fresh run on it is refused; --resume continues and reports what it restored.
    codex().args(tiny_args(&input, &run, &[])).assert().code(1);
    let args = tiny_args(&input, &run, &["--resume"]);
    let stderr = expect_exit(codex().args(&args), 0).stderr;
    assert!(
        stderr.contains("resumed from") && stderr.contains("step 5"),
        "{stderr}"
    );
}

#[test]
fn non_finite_losses_stop_with_exit_1_and_metrics() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("nan");
    // An absurd LR blows the weights up to inf within a step or two.
    let args = tiny_args(
        &input,
        &run,
        &[
            "optimizer.lr=1e30",
            "schedule.warmup_steps=0",
            "training.max_anomalies=2",
            "training.clip_norm=0",
        ],
    );
    let out = codex().args(&args).assert().code(1).get_output().clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ev = lines(&run.join("metrics.ndjson"));
    assert!(ev.iter().filter(|e| e["event"] == "anomaly").count() >= 2);
    let end = ev.last().unwrap();
    assert_eq!(end["event"], "end");
    assert_eq!(end["status"], "anomaly_stopped");
    // The message says what the newest checkpoint holds; the weights that gave the non-finite
    // losses are not checkpointed at the stop, and one said to predate them evaluates finite
    // (`codex eval` exits 1 on a non-finite loss).
    assert!(
        !run.join("checkpoints/step-00000003").exists(),
        "no checkpoint of the failing weights"
    );
    match end["last_checkpoint"].as_str() {
        Some(ck) if stderr.contains("from before the failing updates") => {
            codex()
                .arg("eval")
                .arg(ck)
                .args(["--max-batches", "1"])
                .assert()
                .success();
        }
        Some(_) => assert!(
            stderr.contains("which the non-finite values came from"),
            "{stderr}"
        ),
        None => assert!(
            stderr.contains("no checkpoint was written before the failure"),
            "{stderr}"
        ),
    }
    assert!(!stderr.contains("last good weights"), "{stderr}");
}

#[test]
fn eval_of_non_finite_weights_exits_1() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("ok");
    codex()
        .args(tiny_args(&input, &run, &["training.steps=2"]))
        .assert()
        .success();
    // Overwrite the weights with NaN, then re-seal the manifest as a forger would: the hashes
    // verify, the values do not.
    let ck = run.join("checkpoints/step-00000002");
    let path = ck.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for chunk in bytes[8 + header..].chunks_exact_mut(4) {
        chunk.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&path, &bytes).unwrap();
    reseal_manifest(&ck);
    let out = codex()
        .arg("eval")
        .arg(&ck)
        .args(["--max-batches", "1"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not finite"), "{stderr}");
}

#[test]
fn bad_input_file_is_exit_1_and_still_leaves_metrics() {
    let dir = tempdir();
    let run = dir.path().join("missing");
    let args = tiny_args(
        &dir.path().join("nope.txt").display().to_string(),
        &run,
        &[],
    );
    let stderr = expect_exit(codex().args(&args), 1).stderr;
    assert!(stderr.contains("nope.txt"), "{stderr}");
    let end = lines(&run.join("metrics.ndjson")).last().cloned().unwrap();
    assert_eq!(end["event"], "end");
    assert_eq!(end["status"], "failed");
}

#[test]
fn real_sigint_finishes_the_step_checkpoints_and_exits_130() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("int");
    let args = tiny_args(&input, &run, &["training.steps=100000"]);
    let mut child = codex_process()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until training is under way (the first checkpoint exists), then Ctrl-C.
    let t0 = std::time::Instant::now();
    while !run
        .join("checkpoints/step-00000002/MANIFEST.json")
        .is_file()
    {
        assert!(t0.elapsed().as_secs() < 60, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    sigint(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let end = lines(&run.join("metrics.ndjson")).pop().unwrap();
    assert_eq!(end["status"], "interrupted");
    let step = end["steps"].as_u64().unwrap();
    assert!(
        run.join(format!("checkpoints/step-{step:08}/MANIFEST.json"))
            .is_file(),
        "no checkpoint at the interrupted step {step}"
    );
}

#[test]
fn bf16_trains_and_checkpoints_bf16_weights() {
    let dir = tempdir();
    let input = corpus(dir.path());
    let run = dir.path().join("run");
    let args = tiny_args(
        &input,
        &run,
        &[
            "training.dtype=bf16",
            "training.steps=24",
            "training.eval_every=12",
            "checkpoint.every=12",
        ],
    );
    codex().args(&args).assert().success();
    let file = lines(&run.join("metrics.ndjson"));
    let evals = val_losses(&file);
    assert!(
        evals.len() >= 2 && evals.last().unwrap() < &(evals[0] - 0.3),
        "bf16 val_loss did not fall: {evals:?}"
    );
    assert_eq!(file.last().unwrap()["status"], "completed");
    // The checkpoint holds the model in its compute dtype, per the safetensors header.
    let bytes = std::fs::read(run.join("checkpoints/step-00000024/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let dtypes: Vec<&str> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap())
        .collect();
    assert!(
        !dtypes.is_empty() && dtypes.iter().all(|d| *d == "BF16"),
        "{dtypes:?}"
    );
    // Stored in bf16; the products ran in bf16 where this CPU has AVX512-BF16, else in f32,
    // and the run record says which.
    let start = file.iter().find(|e| e["event"] == "start").unwrap();
    let bf16_cpu = cfg!(target_arch = "x86_64") && {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512bf16")
                && std::arch::is_x86_feature_detected!("avx512bw")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    };
    let want = if bf16_cpu { "bf16" } else { "f32" };
    assert_eq!(start["compute_dtype"], want, "{start}");
}

#[test]
fn bf16_products_can_be_turned_off_and_stay_deterministic() {
    // `training.bf16_matmul = false` widens every product to f32 (on any CPU); either way two
    // runs of the same config are bit-identical, and with a LoRA adapter (whose frozen base the
    // bf16 products read as stored) the two settings train to nearly the same loss.
    let dir = tempdir();
    let input = corpus(dir.path());
    for lora in [false, true] {
        let mut last_loss = Vec::new();
        for matmul in ["true", "false"] {
            let mut weights = Vec::new();
            for rep in 0..2 {
                let run = dir.path().join(format!("run-{lora}-{matmul}-{rep}"));
                let mut extra = vec![
                    "training.dtype=bf16".to_string(),
                    format!("training.bf16_matmul={matmul}"),
                    "training.steps=6".into(),
                    "training.eval_every=0".into(),
                    "checkpoint.every=6".into(),
                ];
                if lora {
                    extra.extend(["model.lora.enabled=true".into(), "model.lora.r=4".into()]);
                }
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                codex()
                    .args(tiny_args(&input, &run, &extra))
                    .assert()
                    .success();
                let file = lines(&run.join("metrics.ndjson"));
                let start = file.iter().find(|e| e["event"] == "start").unwrap();
                if matmul == "false" {
                    assert_eq!(start["compute_dtype"], "f32", "{start}");
                }
                let step = file.iter().rev().find(|e| e["event"] == "step").unwrap();
                last_loss.push(step["train_loss"].as_f64().unwrap());
                // A LoRA checkpoint holds the adapter (the frozen base is not saved).
                let name = if lora {
                    "adapter_model.safetensors"
                } else {
                    "model.safetensors"
                };
                let path = run.join("checkpoints/step-00000006").join(name);
                weights.push(std::fs::read(path).unwrap());
            }
            assert!(
                weights[0] == weights[1],
                "lora={lora} bf16_matmul={matmul}: runs differ"
            );
        }
        let (on, off) = (last_loss[0], last_loss[2]);
        assert!(
            (on - off).abs() <= 0.05 * off.abs(),
            "lora={lora}: loss {on} with bf16 products vs {off} in f32"
        );
    }
}

#[test]
fn fine_tunes_a_pretrained_hf_dir_fully_and_with_lora() {
    use codex_registry::candle_core::{DType, Device};
    let dir = tempdir();
    let input = corpus(dir.path());
    // An HF model directory (config.json + model.safetensors) written by the registry.
    let hf = dir.path().join("hf-gpt2");
    let o = codex_registry::PresetOverrides {
        vocab_size: Some(256),
        max_positions: Some(32),
        dropout: None,
        ..Default::default()
    };
    codex_registry::build_preset("gpt-tiny", &o, &Device::Cpu, DType::F32, 3)
        .unwrap()
        .save_pretrained(&hf)
        .unwrap();
    let hf_names = |p: &Path| -> Vec<String> {
        let mut n: Vec<String> = codex_registry::source::read_safetensors(p, &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
        n.sort();
        n
    };
    for (name, extra) in [
        ("full", vec![]),
        ("lora", vec!["model.lora.enabled=true", "model.lora.r=4"]),
    ] {
        let run = dir.path().join(name);
        let pretrained = format!("model.pretrained={:?}", hf.display().to_string());
        let mut args = tiny_args(&input, &run, &[pretrained.as_str()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["training.steps=12".into(), "optimizer.lr=1e-2".into()]);
        codex().args(&args).assert().success();
        let file = lines(&run.join("metrics.ndjson"));
        let evals = val_losses(&file);
        assert!(
            evals.len() >= 2 && evals.last().unwrap() < &evals[0],
            "{name}: val_loss did not fall: {evals:?}"
        );
        let ck = run.join("checkpoints/step-00000012");
        if name == "full" {
            // The fine-tuned weights keep the pretrained model's HF tensor names.
            assert_eq!(
                hf_names(&ck.join("model.safetensors")),
                hf_names(&hf.join("model.safetensors"))
            );
        } else {
            assert!(ck.join("adapter_model.safetensors").is_file());
            assert!(!ck.join("model.safetensors").exists());
        }
    }
}

#[test]
fn step_events_carry_mfu_from_a_probed_or_configured_peak_and_never_a_zero_energy() {
    let dir = tempdir();
    let input = corpus(dir.path());
    for (name, extra) in [
        ("probe", None),
        ("config", Some("training.peak_tflops=2.5")),
    ] {
        let run = dir.path().join(name);
        let mut args = tiny_args(&input, &run, &["training.steps=6", "training.log_every=2"]);
        args.extend(extra.map(String::from));
        codex().args(&args).assert().success();
        let file = lines(&run.join("metrics.ndjson"));
        let start = file.iter().find(|e| e["event"] == "start").unwrap();
        // The thread count bit-identical weights depend on is part of the record.
        assert_eq!(
            start["threads"].as_u64().map(|t| t.to_string()).as_deref(),
            Some(crate::support::RAYON_THREADS),
            "{start}"
        );
        let flops = &start["flops"];
        assert_eq!(flops["peak_source"], name, "{start}");
        let (per_token, peak) = (
            flops["per_token"].as_f64().unwrap(),
            flops["peak"].as_f64().unwrap(),
        );
        assert!(per_token > 0.0 && peak > 0.0, "{flops}");
        if name == "config" {
            assert_eq!(peak, 2.5e12);
        }
        let steps: Vec<&Value> = file.iter().filter(|e| e["event"] == "step").collect();
        assert!(!steps.is_empty());
        for s in steps {
            // mfu is the record's own arithmetic: FLOPs per token × tokens/s ÷ peak.
            let mfu = s["mfu"].as_f64().unwrap_or_else(|| panic!("no mfu in {s}"));
            let want = per_token * s["tokens_per_s"].as_f64().unwrap() / peak;
            assert!((mfu - want).abs() <= 1e-9 * want, "{mfu} vs {want}");
            assert!(mfu > 0.0 && mfu < 2.0, "{mfu}");
            // No energy counter is null, never 0 (RAPL/NVML where readable: positive).
            let j = &s["joules_per_token"];
            assert!(j.is_null() || j.as_f64().unwrap() > 0.0, "{s}");
        }
    }
}

/// `training.blas`: OpenBLAS (the PyPI wheel `scipy-openblas32`, fetched by
/// scripts/test-assets.sh) runs the large products: recorded in the `start` event, bitwise
/// repeatable, and training the same model as the built-in GEMM up to float rounding.
#[test]
#[ignore = "needs CODEX_TEST_OPENBLAS"]
fn openblas_runs_are_recorded_repeatable_and_match_the_builtin_gemm() {
    blas_runs_are_recorded_repeatable_and_match_the_builtin_gemm("CODEX_TEST_OPENBLAS", "OpenBLAS");
}

/// The same with Intel MKL (`libmkl_rt` of the PyPI wheel `mkl`), sequential per block in
/// strict reproducibility mode.
#[test]
#[ignore = "needs CODEX_TEST_MKL"]
fn mkl_runs_are_recorded_repeatable_and_match_the_builtin_gemm() {
    blas_runs_are_recorded_repeatable_and_match_the_builtin_gemm(
        "CODEX_TEST_MKL",
        "Math Kernel Library",
    );
}

fn blas_runs_are_recorded_repeatable_and_match_the_builtin_gemm(var: &str, vendor: &str) {
    let lib = crate::support::asset_var(var);
    let dir = tempdir();
    let input = corpus(dir.path());
    // Wide enough that every linear is above the size OpenBLAS takes over at (2^21 MACs).
    let sizes = [
        "model.overrides.n_embd=128",
        "data.context_length=64",
        "training.batch_size=16",
        "training.steps=6",
        "training.eval_every=0",
        "checkpoint.every=6",
    ];
    let blas = format!("training.blas={:?}", lib.display().to_string());
    let train = |name: &str, extra: Option<&str>| {
        let run = dir.path().join(name);
        let mut args: Vec<&str> = sizes.to_vec();
        args.extend(extra);
        codex()
            .args(tiny_args(&input, &run, &args))
            .assert()
            .success();
        let events = lines(&run.join("metrics.ndjson"));
        let weights =
            std::fs::read(run.join("checkpoints/step-00000006/model.safetensors")).unwrap();
        (events, weights)
    };
    let (a, wa) = train("blas-a", Some(&blas));
    let (_, wb) = train("blas-b", Some(&blas));
    let (c, wc) = train("builtin", None);
    assert!(wa == wb, "two {vendor} runs wrote different weights");
    assert!(
        wa != wc,
        "the {vendor} run wrote the built-in GEMM's exact bytes: was it used?"
    );
    let start = a.iter().find(|e| e["event"] == "start").unwrap();
    assert_eq!(start["blas"]["path"], lib.display().to_string(), "{start}");
    assert!(
        start["blas"]["config"].as_str().unwrap().contains(vendor),
        "{start}"
    );
    let builtin_start = c.iter().find(|e| e["event"] == "start").unwrap();
    assert!(builtin_start.get("blas").is_none(), "{builtin_start}");
    let losses = |ev: &[Value]| -> Vec<f64> {
        ev.iter()
            .filter(|e| e["event"] == "step")
            .map(|e| e["train_loss"].as_f64().unwrap())
            .collect()
    };
    let (la, lc) = (losses(&a), losses(&c));
    assert_eq!(la.len(), 6);
    for (x, y) in la.iter().zip(&lc) {
        assert!(
            (x - y).abs() < 1e-3 * y.abs(),
            "losses {la:?} vs built-in {lc:?}"
        );
    }
}

#[test]
fn an_unusable_blas_is_exit_1_naming_the_key() {
    let dir = tempdir();
    let input = corpus(dir.path());
    for (lib, why) in [
        ("/nonexistent/libopenblas.so", "cannot open shared object"),
        ("libm.so.6", "not a CBLAS library"),
    ] {
        let run = dir.path().join(why.replace(' ', "-"));
        let set = format!("training.blas={lib:?}");
        let out = expect_exit(codex().args(tiny_args(&input, &run, &[&set])), 1);
        assert!(
            out.stderr.contains("training.blas") && out.stderr.contains(why),
            "{}",
            out.stderr
        );
    }
}
