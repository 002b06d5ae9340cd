//! Live capability probes and the assembled status report (markdown or JSON).

use crate::status::{self, Capability, CheckItem, Level, StatusInput, StatusReport};
use std::path::Path;

/// The most read of a README, config.toml or provenance.json (each a few KiB in practice).
const MAX_TEXT_BYTES: u64 = 8 << 20;

fn tokenization() -> Capability {
    use codex_tokenizer::{TrainConfig, corpus::Document};
    let sample = "codex tokenizes text. Round trips must be exact: ünïcödé, tabs\tand 123.";
    let docs = (0..8).map(|i| {
        Ok(Document {
            text: format!("{sample} {i}"),
            file: 0,
            line: i + 1,
        })
    });
    let cfg = TrainConfig {
        vocab_size: 300,
        min_frequency: 1,
        ..TrainConfig::default()
    };
    let trained = match codex_tokenizer::train(&cfg, docs, &|_| {}) {
        Ok(t) => t,
        Err(e) => {
            return Capability::new(
                "tokenization",
                Level::Missing,
                format!("training a probe BPE failed: {e}"),
            );
        }
    };
    let tok = trained.tokenizer;
    let result = tok
        .encode(sample, false)
        .map_err(|e| e.to_string())
        .and_then(|enc| {
            tok.decode(enc.get_ids(), false)
                .map(|d| (enc.get_ids().len(), d))
                .map_err(|e| e.to_string())
        });
    match result {
        Ok((n, decoded)) if decoded == sample => Capability::new(
            "tokenization",
            Level::Ok,
            format!(
                "byte-level BPE trained on a sample (vocab {}), {} bytes -> {n} ids -> identical text",
                tok.get_vocab_size(true),
                sample.len()
            ),
        ),
        Ok((_, decoded)) => Capability::new(
            "tokenization",
            Level::Missing,
            format!("round trip differs: {decoded:?}"),
        ),
        Err(e) => Capability::new(
            "tokenization",
            Level::Missing,
            format!("encode/decode failed: {e}"),
        ),
    }
}

fn configuration() -> Capability {
    #[derive(serde::Serialize, serde::Deserialize, Default)]
    #[serde(default)]
    struct Probe {
        learning_rate: f64,
    }
    impl codex_core::config::Validate for Probe {
        fn validate(&self, issues: &mut Vec<codex_core::config::ConfigIssue>) {
            if self.learning_rate <= 0.0 {
                issues.push(codex_core::config::ConfigIssue::invalid(
                    "learning_rate",
                    self.learning_rate,
                    "must be > 0",
                ));
            }
        }
    }
    let text = "learning_rate = -1.0\nlearnin_rate = 3\n";
    let mut table = match codex_core::config::parse_toml(text, "probe.toml") {
        Ok(t) => t,
        Err(e) => {
            return Capability::new(
                "configuration",
                Level::Missing,
                format!("parse failed: {e}"),
            );
        }
    };
    let override_issues =
        codex_core::config::apply_overrides(&mut table, &["learning_rate=-2".into()]);
    match codex_core::config::load::<Probe>(table, "probe.toml") {
        Err(e) if override_issues.is_empty() => {
            let msg = e.to_string();
            let both = msg.contains("learnin_rate") && msg.contains("learning_rate");
            let level = if both { Level::Ok } else { Level::Degraded };
            Capability::new(
                "configuration",
                level,
                format!(
                    "TOML + override probe: unknown key and invalid value reported together ({} chars of diagnostics)",
                    msg.len()
                ),
            )
        }
        Err(e) => Capability::new(
            "configuration",
            Level::Degraded,
            format!("override rejected: {e}"),
        ),
        Ok(_) => Capability::new(
            "configuration",
            Level::Missing,
            "an unknown key and an invalid value were accepted",
        ),
    }
}

fn monitoring() -> Capability {
    match codex_telemetry::sample_once(codex_telemetry::GpuMode::Gpu) {
        Ok((s, _)) => {
            let cpu = format!(
                "CPU sample {:.1}% over {} cores",
                s.cpu_util_pct, s.cpu_count
            );
            if s.gpus.is_empty() {
                let why = s.gpu_reason.unwrap_or_else(|| "no GPU reported".into());
                Capability::new("monitoring", Level::Degraded, format!("{cpu}; NVML: {why}"))
            } else {
                Capability::new(
                    "monitoring",
                    Level::Ok,
                    format!("{cpu}; NVML: {} GPU(s)", s.gpus.len()),
                )
            }
        }
        Err(e) => Capability::new("monitoring", Level::Missing, format!("sampler failed: {e}")),
    }
}

fn checkpointing() -> Capability {
    use codex_checkpoint::{CheckpointFile, CheckpointManager, CheckpointSpec, RetentionPolicy};
    let run = || -> Result<String, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let mut m = CheckpointManager::open(dir.path(), RetentionPolicy::default())
            .map_err(|e| e.to_string())?;
        let spec = CheckpointSpec {
            step: 1,
            metric: Some(1.0),
            files: vec![CheckpointFile::bytes("probe.bin", vec![7u8; 4096])],
            trainer_state: serde_json::json!({"step": 1}),
            config_hash: String::new(),
        };
        let saved = m.save(spec).map_err(|e| e.to_string())?;
        let ckpt = saved.dir.clone();
        let good = codex_checkpoint::verify(&ckpt).map_err(|e| e.to_string())?;
        let file = ckpt.join("probe.bin");
        let mut bytes = std::fs::read(&file).map_err(|e| e.to_string())?;
        bytes[100] ^= 1;
        std::fs::write(&file, &bytes).map_err(|e| e.to_string())?;
        let bad = codex_checkpoint::verify(&ckpt).map_err(|e| e.to_string())?;
        drop(m);
        if good.ok && !bad.ok {
            Ok("saved a checkpoint in a temp dir, sha256 verified, a flipped byte detected".into())
        } else {
            Err(format!(
                "verify: intact ok={}, corrupted ok={}",
                good.ok, bad.ok
            ))
        }
    };
    match run() {
        Ok(ev) => Capability::new("checkpointing", Level::Ok, ev),
        Err(e) => Capability::new("checkpointing", Level::Missing, e),
    }
}

fn data() -> Capability {
    let run = || -> Result<String, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let f = dir.path().join("probe.txt");
        std::fs::write(&f, "one\ntwo\nthree\n").map_err(|e| e.to_string())?;
        let spec = codex_tokenizer::corpus::CorpusSpec::new([f.to_string_lossy().into_owned()]);
        let corpus = spec.resolve().map_err(|e| e.to_string())?;
        let n = corpus.documents().filter(Result::is_ok).count();
        let digests = corpus.digests().map_err(|e| e.to_string())?;
        Ok(format!(
            "corpus reader streamed {n} documents from a probe file, {} sha256 digest(s) recorded",
            digests.len()
        ))
    };
    match run() {
        Ok(ev) => Capability::new("data", Level::Ok, ev),
        Err(e) => Capability::new("data", Level::Missing, format!("corpus probe failed: {e}")),
    }
}

fn file_row(name: &str, root: &Path, candidates: &[&str], what: &str) -> Capability {
    let found: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|c| root.join(c).exists())
        .collect();
    if found.is_empty() {
        Capability::new(
            name,
            Level::Missing,
            format!(
                "no {what} found in {} (looked for {})",
                root.display(),
                candidates.join(", ")
            ),
        )
    } else {
        Capability::new(name, Level::Ok, format!("{what}: {}", found.join(", ")))
    }
}

fn documentation(root: &Path, commands: &[String]) -> Capability {
    // Capped and lossy: a huge or non-UTF-8 README is still a README.
    let Ok((readme, _)) = crate::ndjson::read_text_capped(&root.join("README.md"), MAX_TEXT_BYTES)
    else {
        return Capability::new(
            "documentation",
            Level::Missing,
            format!("no README.md in {}", root.display()),
        );
    };
    let missing: Vec<&str> = commands
        .iter()
        .filter(|c| !readme.contains(&format!("codex {c}")))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Capability::new(
            "documentation",
            Level::Ok,
            format!("README.md documents all {} commands", commands.len()),
        )
    } else {
        Capability::new(
            "documentation",
            Level::Degraded,
            format!(
                "README.md documents {}/{} commands; missing: {}",
                commands.len() - missing.len(),
                commands.len(),
                missing.join(", ")
            ),
        )
    }
}

/// Runs every probe and scan. The CPU sample needs ~200 ms of wall time, so it runs beside
/// the filesystem work.
pub fn build_report(input: StatusInput) -> StatusReport {
    let root = input.root.as_path();
    let runs_dir = input.runs.clone().unwrap_or_else(|| root.join("runs"));
    let marker = status::repository_marker(root);
    let repo = marker.is_some();
    let (mut caps, placeholders, runs) =
        std::thread::scope(|s| {
            let mon = s.spawn(monitoring);
            let tok = s.spawn(tokenization);
            let scan = s.spawn(|| {
                if repo {
                    status::scan_placeholders(root)
                } else {
                    Vec::new()
                }
            });
            let runs: Vec<_> = status::find_runs(&runs_dir)
                .iter()
                .map(|d| status::summarize_run(d, input.verify))
                .collect();
            let mut caps = vec![configuration(), checkpointing(), data()];
            caps.push(tok.join().unwrap_or_else(|_| {
                Capability::new("tokenization", Level::Missing, "probe panicked")
            }));
            caps.push(mon.join().unwrap_or_else(|_| {
                Capability::new("monitoring", Level::Missing, "probe panicked")
            }));
            (caps, scan.join().unwrap_or_default(), runs)
        });
    if repo {
        caps.push(file_row(
            "CI",
            root,
            &[".ci/run", ".github/workflows", ".gitlab-ci.yml"],
            "CI entry point",
        ));
        caps.push(file_row(
            "deployment",
            root,
            &["Dockerfile", "docker/Dockerfile", "Containerfile"],
            "container build",
        ));
        caps.push(documentation(root, &input.commands));
    }
    caps.push(if runs.iter().any(|r| r.last_step.is_some()) {
        let n = runs.iter().filter(|r| r.last_step.is_some()).count();
        Capability::new(
            "tracking",
            Level::Ok,
            format!(
                "{n} run(s) with persisted metrics.ndjson under {}",
                runs_dir.display()
            ),
        )
    } else {
        Capability::new(
            "tracking",
            Level::Degraded,
            format!(
                "no run with metrics under {} to show local NDJSON tracking",
                runs_dir.display()
            ),
        )
    });
    let lock = root.join("Cargo.lock").is_file()
        || root.join("uv.lock").is_file()
        || root.join("poetry.lock").is_file();
    // Degraded, not ok: the policy filters training data (when `[safety]` is on) and `codex data
    // scan` checks files, but `codex generate` does not yet apply the prompt/output stages.
    let no_scan = "secrets/PII policy: `codex data scan` and `[safety]` in training configs (off \
                   unless enabled); `codex generate` applies no prompt/output policy yet";
    caps.push(Capability::new(
        "safety",
        Level::Degraded,
        if repo {
            format!(
                "dependency lockfile {}; {no_scan}",
                if lock { "present" } else { "absent" }
            )
        } else {
            no_scan.to_string()
        },
    ));
    caps.push(Capability::new(
        "training",
        if input.cuda_compiled {
            Level::Ok
        } else {
            Level::Degraded
        },
        if input.cuda_compiled {
            "cuda feature compiled in"
        } else {
            "cuda feature not compiled in: CPU training only"
        },
    ));
    for e in input.extra {
        caps.retain(|c| c.capability != e.capability);
        caps.push(e);
    }
    for name in status::CAPABILITIES {
        if !repo && status::REPOSITORY_CAPABILITIES.contains(name) {
            continue;
        }
        if !caps.iter().any(|c| c.capability == *name) {
            caps.push(Capability::new(
                name,
                Level::Missing,
                "no live probe is wired for this capability",
            ));
        }
    }
    caps.sort_by_key(|c| {
        status::CAPABILITIES
            .iter()
            .position(|n| *n == c.capability)
            .unwrap_or(usize::MAX)
    });

    let repro = reproducibility(root, repo, &runs);
    let ckpt_bad = runs
        .iter()
        .any(|r| r.checkpoints.iter().any(|c| c.status == "invalid"));
    let ok = !ckpt_bad
        && caps.iter().all(|c| c.status != Level::Missing)
        && repro.iter().all(|c| c.status != Level::Missing);
    StatusReport {
        schema_version: codex_core::SCHEMA_VERSION,
        root: root.display().to_string(),
        runs_dir: runs_dir.display().to_string(),
        repository: repo,
        repository_marker: marker,
        capabilities: caps,
        placeholders,
        runs,
        reproducibility: repro,
        ok,
    }
}

fn reproducibility(root: &Path, repo: bool, runs: &[status::RunSummary]) -> Vec<CheckItem> {
    let mut out = Vec::new();
    // Lockfiles belong to a repository; an experiment directory has none to pin.
    if repo {
        let locks: Vec<&str> = ["Cargo.lock", "uv.lock", "poetry.lock", "requirements.lock"]
            .into_iter()
            .filter(|f| root.join(f).is_file())
            .collect();
        out.push(CheckItem {
            item: "Dependency pins / lockfiles",
            status: if locks.is_empty() {
                Level::Missing
            } else {
                Level::Ok
            },
            notes: if locks.is_empty() {
                format!("no lockfile in {}", root.display())
            } else {
                locks.join(", ")
            },
        });
    }
    if runs.is_empty() {
        for item in [
            "Deterministic seeds recorded",
            "Provenance capture",
            "Metrics artefacts persisted",
        ] {
            out.push(CheckItem {
                item,
                status: Level::Degraded,
                notes: "no runs to check".into(),
            });
        }
        return out;
    }
    let mut seeded = Vec::new();
    let mut prov = Vec::new();
    let mut metrics = Vec::new();
    for r in runs {
        let rd = codex_core::rundir::RunDir::new(&r.path);
        // Capped and lossy: these files are only searched for a seed, and a stray byte or a
        // huge file must not make a run look as if it had none.
        let read = |p: &Path| crate::ndjson::read_text_capped(p, MAX_TEXT_BYTES).ok();
        let cfg = read(&rd.config()).map(|(t, _)| t).unwrap_or_default();
        let provenance = read(&rd.provenance()).map(|(t, _)| t);
        let has_seed = cfg.lines().any(|l| l.trim_start().starts_with("seed"))
            || provenance
                .as_deref()
                .is_some_and(|p| p.contains("\"seed\""));
        if !has_seed {
            seeded.push(r.name.as_str());
        }
        if provenance.is_none() {
            prov.push(r.name.as_str());
        }
        if r.last_step.is_none() {
            metrics.push(r.name.as_str());
        }
    }
    let row = |item, missing: Vec<&str>, what: &str| CheckItem {
        item,
        status: if missing.is_empty() {
            Level::Ok
        } else {
            Level::Missing
        },
        notes: if missing.is_empty() {
            format!("all {} run(s) have {what}", runs.len())
        } else {
            format!("without {what}: {}", missing.join(", "))
        },
    };
    out.push(row(
        "Deterministic seeds recorded",
        seeded,
        "a seed in config.toml or provenance.json",
    ));
    out.push(row("Provenance capture", prov, "provenance.json"));
    out.push(row(
        "Metrics artefacts persisted",
        metrics,
        "metrics.ndjson events",
    ));
    out
}

fn cell(s: &str) -> String {
    crate::printable(s).replace('|', "\\|")
}

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    crate::printable(s)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.4}"))
}

/// Markdown in the seed audit's shape: capability table, placeholders, runs, checklist.
pub fn render_markdown(r: &StatusReport) -> String {
    let mark = |l: Level| match l {
        Level::Ok => "✅ ok",
        Level::Degraded => "⚠️ degraded",
        Level::Missing => "❌ missing",
    };
    let mut o = format!("# codex status: {}\n\n", esc(&r.root));
    if !r.repository {
        o.push_str(&format!(
            "Not a repository (none of {} at its root): CI, deployment, documentation, lockfiles and the placeholder scan are not checked.\n\n",
            status::REPOSITORY_MARKERS.join(", ")
        ));
    }
    o.push_str("## Capability Audit Table\n\n| Capability | Status | Evidence (live probe) |\n| --- | --- | --- |\n");
    for c in &r.capabilities {
        o.push_str(&format!(
            "| {} | {} | {} |\n",
            c.capability,
            mark(c.status),
            cell(&c.evidence)
        ));
    }
    // Outside a repository the scan did not run, so there is no section to show.
    if r.repository {
        o.push_str(&format!("\n## Placeholders ({})\n\n", r.placeholders.len()));
        if r.placeholders.is_empty() {
            o.push_str("None found.\n");
        } else {
            o.push_str("| Location | Pattern | Snippet |\n| --- | --- | --- |\n");
            for p in &r.placeholders {
                o.push_str(&format!(
                    "| {}:{} | {} | `{}` |\n",
                    cell(&p.path),
                    p.line,
                    p.pattern,
                    cell(&p.snippet).replace('`', "'")
                ));
            }
        }
    }
    o.push_str(&format!(
        "\n## Runs ({} under {})\n\n",
        r.runs.len(),
        esc(&r.runs_dir)
    ));
    if !r.runs.is_empty() {
        o.push_str("| Run | State | Step | Train loss | Loss curve | Best val loss | CPU % mean/max | GPU % mean/max | GPU W mean/max | Checkpoints | Anomalies |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        for run in &r.runs {
            let mm = |m: &status::MetricSummary| {
                if m.samples == 0 {
                    "–".to_string()
                } else {
                    format!("{:.1}/{:.1}", m.mean.unwrap_or(0.0), m.max.unwrap_or(0.0))
                }
            };
            let ck: Vec<String> = run
                .checkpoints
                .iter()
                .map(|c| {
                    format!(
                        "{} {}{}",
                        c.step,
                        c.status,
                        if c.kept_because.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", c.kept_because.join("+"))
                        }
                    )
                })
                .collect();
            o.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                cell(&run.name),
                run.state,
                match (run.last_step, run.total_steps) {
                    (Some(s), Some(t)) => format!("{s}/{t}"),
                    (Some(s), None) => s.to_string(),
                    (None, _) => "–".into(),
                },
                opt(run.train_loss),
                if run.loss_sparkline.is_empty() {
                    "–"
                } else {
                    &run.loss_sparkline
                },
                match (run.best_val_loss, run.best_val_loss_step) {
                    (Some(v), Some(at)) => format!("{v:.4} @ step {at}"),
                    (v, _) => opt(v),
                },
                mm(&run.cpu_util_pct),
                mm(&run.gpu_util_pct),
                mm(&run.gpu_power_w),
                if ck.is_empty() {
                    "–".into()
                } else {
                    ck.join(", ")
                },
                run.anomaly_count,
            ));
        }
        for run in &r.runs {
            for c in run.checkpoints.iter().filter(|c| c.reason.is_some()) {
                o.push_str(&format!(
                    "\n- {} step {}: {}",
                    esc(&run.name),
                    c.step,
                    esc(c.reason.as_deref().unwrap_or(""))
                ));
            }
            for a in &run.anomalies {
                o.push_str(&format!("\n- {} anomaly: {}", esc(&run.name), esc(a)));
            }
            let unlisted = run.anomaly_count.saturating_sub(run.anomalies.len() as u64);
            if unlisted > 0 {
                o.push_str(&format!(
                    "\n- {}: {unlisted} more anomalies not listed",
                    esc(&run.name)
                ));
            }
            if let Some(e) = &run.error {
                o.push_str(&format!("\n- {} {}: {}", esc(&run.name), run.state, esc(e)));
            }
            for p in &run.problems {
                o.push_str(&format!("\n- {}: {}", esc(&run.name), esc(p)));
            }
            if let Some(h) = run
                .lock_holder
                .as_ref()
                .filter(|_| run.state == status::RunState::Crashed)
            {
                o.push_str(&format!(
                    "\n- {}: stale lock from pid {} on {} (started {})",
                    esc(&run.name),
                    h.pid,
                    esc(&h.host),
                    esc(&h.started)
                ));
            }
        }
        o.push('\n');
    }
    o.push_str(
        "\n## Reproducibility Checklist\n\n| Item | Status | Notes |\n| --- | --- | --- |\n",
    );
    for c in &r.reproducibility {
        o.push_str(&format!(
            "| {} | {} | {} |\n",
            c.item,
            mark(c.status),
            cell(&c.notes)
        ));
    }
    o.push_str(&format!(
        "\nOverall: {}\n",
        if r.ok {
            "ok"
        } else {
            "not ok (something missing or a checkpoint failed verification)"
        }
    ));
    o
}
