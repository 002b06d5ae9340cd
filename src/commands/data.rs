//! `codex data scan|prepare|list`: safety scanning of data files with a report a person can act
//! on, the data half of a training config without training, and the index of prepared datasets.

use crate::ctx::{Ctx, out_json, out_line, with_hint};
use codex_core::exit;
use codex_safety::files::{Job, redacted_path, scan_files};
use codex_safety::{Policy, ScanOptions, Stage, Tally};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Scan files for credentials, personal data and policy matches; exit 1 when a blocking
    /// rule matched.
    #[command(after_help = SCAN_HELP)]
    Scan(ScanArgs),
    /// Run the data half of a training config (read, filter, tokenize, shard, split) and print
    /// the dataset card.
    Prepare(PrepareArgs),
    /// List prepared datasets (token caches) under a directory.
    List(ListArgs),
}

const SCAN_HELP: &str = "\
Findings show file:line:column, the rule, its severity and a masked fragment (never the whole
match). The default policy is embedded (`--policy` takes a TOML file, or the Python original's
YAML/JSON format). CODEX_SAFETY_BYPASS=1 lets blocking matches through, reported as bypassed.";

#[derive(clap::Args, Debug)]
struct ScanArgs {
    /// Files, directories or globs.
    #[arg(required = true, value_name = "DATA")]
    data: Vec<String>,
    /// Policy file (TOML; .yaml/.yml/.json in the original's format); default: embedded.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The stage whose rules apply.
    #[arg(long, value_enum, default_value_t = StageArg::Train)]
    stage: StageArg,
    /// Write redacted copies (byte-identical outside the redacted spans).
    #[arg(long, requires = "out")]
    redact: bool,
    /// Where redacted copies go: a directory (inputs keep their relative paths), or a file
    /// when DATA is one file.
    #[arg(
        short = 'o',
        long = "output",
        alias = "out",
        value_name = "OUT",
        requires = "redact"
    )]
    out: Option<PathBuf>,
    /// Print at most N findings (the summary always counts all); 0 = all.
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_findings: usize,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
enum StageArg {
    Train,
    Eval,
    Prompt,
    Output,
}

impl From<StageArg> for Stage {
    fn from(s: StageArg) -> Stage {
        match s {
            StageArg::Train => Stage::Train,
            StageArg::Eval => Stage::Eval,
            StageArg::Prompt => Stage::Prompt,
            StageArg::Output => Stage::Output,
        }
    }
}

#[derive(clap::Args, Debug)]
struct PrepareArgs {
    /// Training config (TOML); default: the embedded one.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// An override such as `data.context_length=128` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = super::override_arg)]
    set: Vec<String>,
    /// Overrides without --set (the older spelling, still accepted).
    #[arg(value_name = "KEY=VALUE", hide = true, value_parser = super::override_arg)]
    overrides: Vec<String>,
    /// Drop documents identical to an earlier one (sha256 of the text).
    #[arg(long)]
    dedup: bool,
    /// Drop near-duplicates (MinHash-LSH) whose estimated Jaccard similarity to an earlier
    /// document is at least THRESHOLD.
    #[arg(long, value_name = "THRESHOLD", value_parser = parse_threshold)]
    near_dup: Option<f64>,
    /// Words per shingle for --near-dup.
    #[arg(long, default_value_t = 5, value_name = "K", value_parser = clap::value_parser!(u16).range(1..=64))]
    shingle: u16,
}

fn parse_threshold(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= 1.0 => Ok(t),
        _ => Err(format!("`{s}` is not a similarity in (0, 1]")),
    }
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    /// Where to look (recursively) for `manifest.json` of token caches.
    #[arg(default_value = ".")]
    dir: PathBuf,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    match args.command {
        Command::Scan(a) => scan(ctx, a),
        Command::Prepare(a) => prepare(ctx, a),
        Command::List(a) => list(ctx, a),
    }
}

fn load_policy(ctx: &Ctx, path: Option<&Path>) -> anyhow::Result<Policy> {
    let p = Policy::load_or_default(path)?;
    for w in &p.warnings {
        ctx.warn(format!("{}: {w}", p.source));
    }
    Ok(p)
}

fn scan(ctx: &Ctx, a: ScanArgs) -> anyhow::Result<u8> {
    let policy = load_policy(ctx, a.policy.as_deref())?;
    let corpus = codex_tokenizer::corpus::CorpusSpec::new(a.data.clone())
        .resolve()
        .map_err(|e| with_hint(e, "DATA takes files, directories or globs"))?;
    // One file given by name and -o not a directory: -o is the redacted file itself.
    let single_file_out = match (&a.out, a.data.as_slice()) {
        (Some(out), [one]) => Path::new(one).is_file() && !out.is_dir(),
        _ => false,
    };
    let jobs: Vec<Job> = corpus
        .files
        .iter()
        .map(|f| Job {
            path: f.path.clone(),
            redact_to: a.out.as_ref().map(|o| {
                if single_file_out {
                    o.clone()
                } else {
                    redacted_path(o, &f.path)
                }
            }),
        })
        .collect();
    let bypass = codex_safety::bypass_from_env();
    let opts = ScanOptions {
        stage: a.stage.into(),
        bypass,
    };
    let t0 = std::time::Instant::now();
    let reports = scan_files(&policy, &jobs, opts);
    let secs = t0.elapsed().as_secs_f64();
    let mut tally = Tally::default();
    let mut errors = 0;
    let mut bytes = 0;
    for r in &reports {
        bytes += r.bytes;
        if let Some(e) = &r.error {
            errors += 1;
            ctx.warn(format!("{}: {e}", r.path));
        }
        tally.add(&policy, &r.verdict);
    }
    let blocked = tally.any_blocked();
    if bypass && tally.documents_bypassed > 0 {
        ctx.warn(format!(
            "CODEX_SAFETY_BYPASS: {} file(s) with blocking matches let through",
            tally.documents_bypassed
        ));
    }
    let findings: Vec<&codex_safety::files::Located> =
        reports.iter().flat_map(|r| &r.findings).collect();
    let shown = if a.max_findings == 0 {
        findings.len()
    } else {
        a.max_findings.min(findings.len())
    };
    if ctx.json {
        out_json(&serde_json::json!({
            "policy": {"source": policy.source, "sha256": policy.hash},
            "stage": Stage::from(a.stage).name(),
            "files": reports.len(),
            "bytes": bytes,
            "seconds": secs,
            "blocked": blocked,
            "findings": &findings[..shown],
            "findings_total": findings.len(),
            "summary": tally,
            "errors": reports.iter().filter_map(|r| r.error.as_ref().map(|e| serde_json::json!({"path": r.path, "error": e}))).collect::<Vec<_>>(),
        }))?;
    } else {
        for f in &findings[..shown] {
            out_line(format!(
                "{}:{}:{}: {} {} [{}] {}",
                f.file,
                f.line,
                f.column,
                f.severity,
                f.rule,
                disposition_label(f.disposition),
                f.fragment
            ))?;
        }
        if shown < findings.len() {
            out_line(format!(
                "… {} more finding(s) (--max-findings 0 shows all)",
                findings.len() - shown
            ))?;
        }
        out_line(render_summary(&tally))?;
        out_line(format!(
            "{} file(s), {:.1} MB in {:.2}s; {} blocked, {} with redactions; policy {} (sha256 {})",
            reports.len(),
            bytes as f64 / 1e6,
            secs,
            tally.documents_blocked,
            tally.documents_redacted,
            policy.source,
            &policy.hash[..12]
        ))?;
    }
    if a.redact {
        ctx.info(format!(
            "wrote redacted copies under {}",
            a.out.as_deref().unwrap_or(Path::new(".")).display()
        ));
    }
    Ok(if blocked || errors > 0 {
        exit::INVALID
    } else {
        exit::OK
    })
}

fn disposition_label(d: codex_safety::Disposition) -> &'static str {
    use codex_safety::Disposition::*;
    match d {
        Blocked => "blocked",
        Overridden => "allowed by override",
        Bypassed => "BYPASSED",
        Redacted => "redact",
        Flagged => "flag",
        Allowed => "allow",
    }
}

fn render_summary(t: &Tally) -> String {
    let w = t.rules.keys().map(String::len).max().unwrap_or(4).max(4);
    let mut s = format!(
        "{:<w$}  {:<6}  {:<8}  {:>8}  {:>6}\n",
        "rule", "action", "severity", "matches", "files"
    );
    for (id, c) in &t.rules {
        s.push_str(&format!(
            "{id:<w$}  {:<6}  {:<8}  {:>8}  {:>6}\n",
            c.action, c.severity, c.matches, c.documents
        ));
    }
    if t.rules.is_empty() {
        s.push_str("(no findings)\n");
    }
    s.trim_end().to_string()
}

fn prepare(ctx: &Ctx, a: PrepareArgs) -> anyhow::Result<u8> {
    let overrides: Vec<String> = a.overrides.iter().chain(&a.set).cloned().collect();
    let cfg = crate::settings::load_config(a.config.as_deref(), &overrides)?;
    let cache = codex_train::data::cache_dir_for(&cfg, Path::new(&cfg.output.dir));
    let t0 = std::time::Instant::now();
    let opts = codex_train::data::DocOptions {
        exact_dedup: a.dedup,
        near_dup: a
            .near_dup
            .map(|threshold| codex_safety::minhash::MinHashConfig {
                shingle: usize::from(a.shingle),
                threshold,
                ..Default::default()
            }),
    };
    let prepared =
        codex_train::data::prepare_with(&cfg, cache.as_deref(), &opts, &mut |m| ctx.info(m))?;
    let ds = &prepared.dataset;
    let card = serde_json::json!({
        "sources": ds.sources,
        "tokenizer": ds.tokenizer_desc,
        "vocab_size": ds.vocab_size,
        "tokens": ds.n_tokens(),
        "context_length": ds.context_length,
        "train_blocks": ds.n_train(),
        "val_blocks": ds.n_val(),
        "cache_key_sha256": ds.data_hash,
        "cache_dir": cache,
        "cache_hit": ds.cache_hit,
        "safety": ds.safety,
        "documents": ds.documents,
        "seconds": t0.elapsed().as_secs_f64(),
        "codex_version": codex_core::VERSION,
    });
    if ctx.json {
        out_json(&card)?;
    } else {
        out_line(format!(
            "dataset {}\n  sources: {}\n  tokenizer: {} (vocab {})\n  tokens: {}, blocks of {}: {} train / {} val\n  cache: {} ({})",
            &ds.data_hash[..12],
            ds.sources
                .iter()
                .map(|s| format!("{} ({} B, sha256 {})", s.path, s.bytes, &s.sha256[..12]))
                .collect::<Vec<_>>()
                .join(", "),
            ds.tokenizer_desc,
            ds.vocab_size,
            ds.n_tokens(),
            ds.context_length,
            ds.n_train(),
            ds.n_val(),
            cache
                .as_deref()
                .map_or("off".into(), |c| c.display().to_string()),
            if ds.cache_hit { "reused" } else { "built" }
        ))?;
        if let Some(d) = &ds.documents {
            let mut prev: Option<&codex_train::data::StageCount> = None;
            for st in &d.stages {
                let removed = prev.map_or(String::new(), |p| {
                    format!(" (-{} removed)", p.documents.saturating_sub(st.documents))
                });
                out_line(format!(
                    "  {:<12} {:>8} documents {:>12} bytes{removed}",
                    st.stage, st.documents, st.bytes
                ))?;
                prev = Some(st);
            }
            let hist: Vec<String> = d
                .token_histogram
                .iter()
                .map(|(n, c)| format!("<={n}: {c}"))
                .collect();
            out_line(format!("  tokens per document: {}", hist.join(", ")))?;
        }
        match &ds.safety {
            None => out_line("  safety: off")?,
            Some(r) => {
                out_line(format!(
                    "  safety: {} document(s) in, {} out ({} dropped, {} redacted); policy {} (sha256 {})",
                    r.documents_in,
                    r.documents_out,
                    r.documents_dropped,
                    r.documents_redacted,
                    r.policy,
                    &r.policy_sha256[..12]
                ))?;
                out_line(render_summary(&r.tally))?;
            }
        }
    }
    Ok(exit::OK)
}

/// Largest manifest read by `list` (a real one is a few KiB per GiB of tokens).
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

fn list(ctx: &Ctx, a: ListArgs) -> anyhow::Result<u8> {
    if !a.dir.is_dir() {
        anyhow::bail!("{} is not a directory", a.dir.display());
    }
    let mut rows = Vec::new();
    let mut manifests = Vec::new();
    find_manifests(&a.dir, 8, &mut manifests);
    manifests.sort();
    for path in &manifests {
        let path = path.as_path();
        let Ok(bytes) = codex_core::fsutil::read_regular_capped(path, MAX_MANIFEST_BYTES) else {
            continue;
        };
        let Ok(m) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        // Token caches only (checkpoint and tokenizer manifests have other shapes).
        if m.get("shards").is_none() || m.get("total_tokens").is_none() {
            continue;
        }
        let modified = std::fs::metadata(path)
            .and_then(|md| md.modified())
            .ok()
            .map(epoch_secs);
        rows.push(serde_json::json!({
            "dir": path.parent().map(Path::to_path_buf),
            "key": m["key"],
            "sources": m["sources"],
            "tokenizer": m["tokenizer"],
            "vocab_size": m["vocab_size"],
            "total_tokens": m["total_tokens"],
            "shards": m["shards"].as_array().map_or(0, Vec::len),
            "policy_sha256": m.pointer("/safety/policy_sha256"),
            "policy": m.pointer("/safety/policy"),
            "schema_version": m["schema_version"],
            "modified": modified,
        }));
    }
    if ctx.json {
        out_json(&rows)?;
    } else if rows.is_empty() {
        out_line(format!("no prepared datasets under {}", a.dir.display()))?;
    } else {
        for r in &rows {
            let key = r["key"].as_str().unwrap_or("");
            out_line(format!(
                "{}  {}  {} tokens  {} source(s)  tokenizer {}  policy {}",
                r["dir"].as_str().unwrap_or(""),
                &key[..key.len().min(12)],
                r["total_tokens"],
                r["sources"].as_array().map_or(0, Vec::len),
                r["tokenizer"].as_str().unwrap_or("?"),
                r["policy_sha256"]
                    .as_str()
                    .map_or("off".to_string(), |h| h[..h.len().min(12)].to_string()),
            ))?;
        }
    }
    Ok(exit::OK)
}

/// Every `manifest.json` under `dir`, `depth` levels down at most (symlinks not followed, so
/// a link cycle cannot loop).
fn find_manifests(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() && depth > 0 {
            find_manifests(&e.path(), depth - 1, out);
        } else if kind.is_file() && e.file_name() == "manifest.json" {
            out.push(e.path());
        }
    }
}

/// Modification time as seconds since the Unix epoch (a plain number sorts and compares).
fn epoch_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
