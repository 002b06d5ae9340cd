//! `codex status`: the seed audit, measured live (capabilities, placeholders, runs,
//! reproducibility). Markdown on stdout, or `--json`.

use crate::ctx::{Ctx, out_json, out_line};
use codex_audit::status::{Capability, Level, StatusInput};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository root or experiment directory to audit. Repository rows (CI, container,
    /// README, lockfiles, placeholder scan) apply only where PATH has `.git`, `Cargo.toml` or
    /// `pyproject.toml`.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Directory holding run directories (default: PATH/runs).
    #[arg(long, value_name = "DIR")]
    pub runs: Option<PathBuf>,
    /// Rehash every checkpoint file (default: manifest and size checks only).
    #[arg(long)]
    pub verify: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    if !args.path.is_dir() {
        anyhow::bail!("{} is not a directory", args.path.display());
    }
    use clap::CommandFactory;
    let commands: Vec<String> = crate::Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect();
    // The registry links candle, so its row is probed here rather than in codex-audit.
    let archs: Vec<&str> = codex_registry::ARCHITECTURES
        .iter()
        .map(|a| a.name)
        .collect();
    let cmd_row = |cap: &str, cmd: &str, what: &str| {
        if commands.iter().any(|c| c == cmd) {
            Capability::new(
                cap,
                Level::Ok,
                format!("`codex {cmd}` is available ({what})"),
            )
        } else {
            Capability::new(
                cap,
                Level::Missing,
                format!("`codex {cmd}` is hidden from --help (not shipped in this build)"),
            )
        }
    };
    let mut extra = vec![cmd_row(
        "evaluation",
        "eval",
        "perplexity / accuracy on a split",
    )];
    if !commands.iter().any(|c| c == "train") {
        extra.push(cmd_row("training", "train", ""));
    }
    extra.push(Capability::new(
        "extensibility",
        Level::Degraded,
        format!(
            "registry tables: {} architectures, {} presets; no run-time plug-in discovery",
            archs.len(),
            codex_registry::PRESETS.len()
        ),
    ));
    extra.push(Capability::new(
        "modeling/LoRA",
        if archs.is_empty() {
            Level::Missing
        } else {
            Level::Ok
        },
        format!(
            "registry: {} architectures ({}), {} presets, LoRA adapters (PEFT layout)",
            archs.len(),
            archs.join(", "),
            codex_registry::PRESETS.len()
        ),
    ));
    // Replaces codex-audit's safety row, written before `codex generate` applied the policy;
    // the lockfile part is kept as it was.
    let lock = ["Cargo.lock", "uv.lock", "poetry.lock"]
        .iter()
        .any(|f| args.path.join(f).is_file());
    let scan = "secrets/PII policy: `codex data scan`, `[safety]` in training configs (off unless \
                enabled; per-rule counts in the start event and provenance), `codex generate` \
                prompt and output stages with banned strings masked in the logits (on by \
                default: the embedded policy, or --policy), run records mask credential-looking \
                values";
    extra.push(Capability::new(
        "safety",
        Level::Ok,
        if codex_audit::status::repository_marker(&args.path).is_some() {
            format!(
                "dependency lockfile {}; {scan}",
                if lock { "present" } else { "absent" }
            )
        } else {
            scan.to_string()
        },
    ));
    let report = codex_audit::probes::build_report(StatusInput {
        root: args.path,
        runs: args.runs,
        verify: args.verify,
        cuda_compiled: cfg!(feature = "cuda"),
        commands,
        extra,
    });
    if ctx.json {
        out_json(&report)?;
    } else {
        out_line(codex_audit::probes::render_markdown(&report).trim_end())?;
    }
    Ok(if report.ok {
        codex_core::exit::OK
    } else {
        codex_core::exit::INVALID
    })
}
