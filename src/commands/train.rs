//! `codex train`: train a model from a TOML config plus `a.b=c` overrides; with no arguments,
//! the embedded default run (a tiny GPT on the shipped CPython corpus).

use crate::ctx::{Ctx, out_line, with_hint};
use crate::settings::{self, Base, TrainFlags, shell_quote};
use crate::sinks::{StdoutJson, Terminal};
use clap::builder::TypedValueParser as _;
use codex_core::event::{EventSink, RunStatus, RunSummary};
use codex_core::exit;
use codex_core::mode::SystemMetricsMode;
use codex_train::config::TrainConfig;
use codex_train::{Resume, RunOptions};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit codes: 0 done (also when stopped early), 1 invalid input or the run \
failed (non-finite losses), 2 internal error, 130 interrupted (a checkpoint was written).\n\n\
`--resume` without `--config` continues with the run's own config.toml.\n\n\
Data-parallel: `mpirun -np N codex train …` (or `--nproc N`) runs one rank per process; rank 0 \
writes the run. Needs a codex built with `--features mpi`."
)]
pub struct Args {
    /// TOML config; without it, the embedded default run (configs/default.toml), or with
    /// --resume the run's own config.toml.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// An override such as `training.steps=50` or `optimizer.lr=1e-3` (repeatable, applied in
    /// order).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = crate::commands::override_arg)]
    pub set: Vec<String>,
    /// Overrides without --set (the older spelling, still accepted).
    #[arg(value_name = "KEY=VALUE", hide = true, value_parser = crate::commands::override_arg)]
    pub overrides: Vec<String>,
    /// Continue from the newest valid checkpoint of the run directory.
    #[arg(long, conflicts_with = "resume_from")]
    pub resume: bool,
    /// Continue from this checkpoint directory.
    #[arg(long, value_name = "PATH")]
    pub resume_from: Option<PathBuf>,
    /// Sample system metrics into system_metrics.ndjson beside the loop.
    #[arg(long, value_name = "MODE", value_parser = clap::builder::PossibleValuesParser::new(SystemMetricsMode::NAMES).map(|s| s.parse::<SystemMetricsMode>().unwrap_or_default()))]
    pub system_metrics: Option<SystemMetricsMode>,
    /// Milliseconds between system-metrics samples (at least 200), as
    /// `system_metrics.interval_ms`.
    #[arg(long, value_name = "MS", conflicts_with = "system_metrics_interval")]
    pub system_metrics_interval_ms: Option<u64>,
    /// Old spelling: seconds between system-metrics samples.
    #[arg(long, value_name = "SECONDS", hide = true)]
    pub system_metrics_interval: Option<f64>,
    /// The run directory (same as `output.dir=…`).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Stop as Ctrl-C would once this many steps are done (checkpoint, exit 130).
    #[arg(long, value_name = "STEP", hide = true)]
    pub stop_at_step: Option<u64>,
    /// Also write the run to these trackers, live: tensorboard (<run>/tensorboard/), csv
    /// (<run>/metrics.csv), mlflow (MLFLOW_TRACKING_URI or tracking.mlflow). `codex sync`
    /// writes them after the fact.
    #[arg(long, value_name = "TRACKERS", value_delimiter = ',', value_enum)]
    pub track: Vec<crate::track::Tracker>,
    /// Run N data-parallel ranks on this machine: starts `mpirun -np N` with this command
    /// (needs a codex built with `--features mpi` and an MPI launcher on PATH).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub nproc: Option<u32>,
}

pub fn run(ctx: &Ctx, mut args: Args) -> anyhow::Result<u8> {
    // One list, in command-line order within each spelling: positional first, then --set.
    args.overrides.append(&mut args.set);
    if let Some(ms) = args.system_metrics_interval_ms {
        args.system_metrics_interval = Some(ms as f64 / 1000.0);
    }
    if let Some(n) = args.nproc.filter(|&n| n > 1)
        && codex_dist::launcher_world().is_none()
    {
        return launch(ctx, n);
    }
    let ranks = Ranks::start()?;
    let result = run_rank(ctx, args, &ranks);
    ranks.finish(ctx, result)
}

/// `--nproc N`: this same command line as N ranks under the local `mpirun`.
fn launch(ctx: &Ctx, n: u32) -> anyhow::Result<u8> {
    if !cfg!(feature = "mpi") {
        return Err(without_mpi());
    }
    let exe = std::env::current_exe()?;
    let mut argv: Vec<String> = Vec::new();
    let mut skip = false;
    for a in std::env::args().skip(1) {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == "--nproc" {
            skip = true;
        } else if !a.starts_with("--nproc=") {
            argv.push(a);
        }
    }
    let launcher = std::env::var("CODEX_MPIRUN").unwrap_or_else(|_| "mpirun".into());
    let mut cmd = std::process::Command::new(&launcher);
    cmd.arg("-np").arg(n.to_string());
    let open_mpi = std::process::Command::new(&launcher)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Open MPI"));
    if open_mpi {
        // Open MPI binds each rank to one core by default, which leaves the ranks' compute
        // threads one core each; and refuses more ranks than cores without --oversubscribe.
        cmd.args(["--bind-to", "none"]);
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        if n as usize > cores {
            cmd.arg("--oversubscribe");
        }
    }
    cmd.arg(&exe).args(&argv);
    let shown: Vec<String> = cmd
        .get_args()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect();
    ctx.info(format!(
        "starting {n} ranks: {launcher} {}",
        shown.join(" ")
    ));
    let status = cmd.status().map_err(|e| {
        with_hint(
            anyhow::anyhow!("cannot start `{launcher}`: {e}"),
            "install Open MPI (`apt-get install openmpi-bin libopenmpi-dev`) or MPICH, or set CODEX_MPIRUN",
        )
    })?;
    if !status.success() && codex_core::signal::interrupted() {
        // Ctrl-C reached the ranks too (one process group): they checkpointed and stopped,
        // but mpirun reports any rank's non-zero exit as its own failure.
        return Ok(exit::INTERRUPTED);
    }
    Ok(match status.code() {
        Some(c) => u8::try_from(c).unwrap_or(exit::INTERNAL),
        None => exit::INTERNAL,
    })
}

fn without_mpi() -> anyhow::Error {
    with_hint(
        anyhow::Error::new(codex_core::error::Internal(
            "this codex was built without data-parallel support (the `mpi` feature)".into(),
        )),
        "rebuild with `cargo build --release --features mpi` (needs libopenmpi-dev and libclang); see the README",
    )
}

/// The ranks this process is one of: MPI when a launcher started it, else a single process.
struct Ranks {
    #[cfg(feature = "mpi")]
    session: Option<codex_dist::mpi::MpiSession>,
    /// This process's place among the ranks on its host (the GPU it drives), and those ranks.
    #[cfg(feature = "nccl")]
    local_rank: usize,
    #[cfg(feature = "nccl")]
    host_ranks: Vec<usize>,
}

impl Ranks {
    fn start() -> anyhow::Result<Self> {
        let launched = codex_dist::launcher_world();
        #[cfg(feature = "mpi")]
        {
            let session = match launched {
                Some(_) => Some(codex_dist::mpi::init()?),
                None => None,
            };
            #[cfg(feature = "nccl")]
            let (local_rank, host_ranks) = session
                .as_ref()
                .map_or((0, vec![0]), codex_dist::mpi::MpiSession::host_ranks);
            Ok(Ranks {
                session,
                #[cfg(feature = "nccl")]
                local_rank,
                #[cfg(feature = "nccl")]
                host_ranks,
            })
        }
        #[cfg(not(feature = "mpi"))]
        {
            if launched.is_some_and(|w| w > 1) {
                return Err(without_mpi());
            }
            Ok(Ranks {})
        }
    }

    fn rank(&self) -> usize {
        #[cfg(feature = "mpi")]
        if let Some(s) = &self.session {
            return s.rank();
        }
        0
    }

    fn world(&self) -> usize {
        #[cfg(feature = "mpi")]
        if let Some(s) = &self.session {
            return s.world();
        }
        1
    }

    /// The collective the config asks for. With NCCL built in and a CUDA device, each rank
    /// drives the GPU of its host-local rank: `training.device = "cuda"` (or `auto`) becomes
    /// `cuda:<local rank>` on the ranks after the first of their host.
    fn collective(&self, cfg: &mut TrainConfig) -> anyhow::Result<Box<dyn codex_dist::Collective>> {
        use codex_train::config::{DistBackend, DistReduce};
        let d = cfg.distributed.clone();
        #[cfg(not(feature = "nccl"))]
        if d.backend == DistBackend::Nccl {
            return Err(with_hint(
                anyhow::anyhow!(
                    "distributed.backend = \"nccl\" needs a codex built with the `nccl` feature"
                ),
                "rebuild with `--features nccl` (CUDA and NCCL; see scripts/gpu-check.sh), or use backend = \"mpi\" (or \"auto\")",
            ));
        }
        #[cfg(feature = "nccl")]
        let gpu = d.backend != DistBackend::Mpi && self.bind_gpu(cfg, d.backend)?;
        #[cfg(feature = "mpi")]
        if let Some(s) = &self.session {
            let bytes = usize::try_from(d.bucket_mb).unwrap_or(usize::MAX / 2) << 20;
            let ordered = d.reduce == DistReduce::Ordered;
            #[cfg(feature = "nccl")]
            if gpu {
                return Ok(Box::new(codex_dist::nccl::Nccl::new(
                    s.collective(ordered, bytes),
                    ordered,
                    bytes,
                )));
            }
            return Ok(Box::new(s.collective(ordered, bytes)));
        }
        let _ = (DistReduce::Ordered, &cfg);
        Ok(Box::new(codex_dist::Single))
    }

    /// Whether this rank trains on a GPU, after pointing `training.device` at its host-local
    /// GPU. `nccl` on a CPU device is an error; `auto` then means MPI.
    #[cfg(feature = "nccl")]
    fn bind_gpu(
        &self,
        cfg: &mut TrainConfig,
        backend: codex_train::config::DistBackend,
    ) -> anyhow::Result<bool> {
        use codex_core::mode::DeviceSpec;
        let written = cfg.training.device.trim().to_string();
        let cuda = match written.parse::<DeviceSpec>() {
            Ok(DeviceSpec::Cuda(_)) => true,
            Ok(DeviceSpec::Auto) => codex_dist::nccl::device_count() > 0,
            _ => false,
        };
        if !cuda {
            if backend == codex_train::config::DistBackend::Nccl {
                return Err(with_hint(
                    anyhow::anyhow!(
                        "distributed.backend = \"nccl\" reduces GPU gradients, but training.device is `{written}`"
                    ),
                    "set training.device = \"cuda\", or use backend = \"mpi\" on CPUs",
                ));
            }
            return Ok(false);
        }
        if matches!(written.as_str(), "cuda" | "auto") {
            // Rank 0 is its host's first rank: its config (the one recorded) stays as written.
            if self.local_rank > 0 {
                cfg.training.device = format!("cuda:{}", self.local_rank);
            }
        } else if self.host_ranks.len() > 1 {
            return Err(with_hint(
                anyhow::anyhow!(
                    "training.device = `{written}` names one GPU, but this host runs ranks {:?}; NCCL needs a GPU per rank",
                    self.host_ranks
                ),
                "set training.device = \"cuda\": each rank then drives the GPU of its local rank",
            ));
        }
        Ok(true)
    }

    /// Ends this rank. A failure on one of several ranks ends the whole job (`MPI_Abort`):
    /// the other ranks may be waiting in a collective, and `MPI_Finalize` would wait for them.
    fn finish(self, ctx: &Ctx, result: anyhow::Result<u8>) -> anyhow::Result<u8> {
        #[cfg(feature = "mpi")]
        if let (Some(s), Err(e)) = (&self.session, &result)
            && s.world() > 1
        {
            let code = crate::exit_code_for(e);
            ctx.print_error(e);
            s.abort(i32::from(code));
        }
        let _ = ctx;
        result
    }
}

fn run_rank(ctx: &Ctx, args: Args, ranks: &Ranks) -> anyhow::Result<u8> {
    let (rank, world) = (ranks.rank(), ranks.world());
    let resume = match (&args.resume_from, args.resume) {
        (Some(p), _) => Resume::From(p.clone()),
        (None, true) => Resume::Latest,
        (None, false) => Resume::No,
    };
    let base = base_config(&args, &resume);
    let flags = TrainFlags {
        system_metrics: args.system_metrics,
        system_metrics_interval_s: args.system_metrics_interval,
        output: args.output.clone(),
    };
    let config_hint =
        "`codex config validate FILE` lists every problem; `codex config show` prints the defaults";
    let loaded =
        settings::load_from(&base, &args.overrides).map_err(|e| with_hint(e, config_hint))?;
    let mut cfg = loaded.cfg;
    let mut overrides = args.overrides.clone();
    overrides.extend(
        flags
            .apply(&mut cfg)
            .map_err(|e| with_hint(e, config_hint))?,
    );
    if args.system_metrics_interval.is_some() && cfg.system_metrics.mode == SystemMetricsMode::Off {
        ctx.warn("--system-metrics-interval-ms has no effect while system metrics are off (add --system-metrics cpu)");
    }
    if resume == Resume::No && args.output.is_none() && !loaded.explicit_dir && world == 1 {
        // The default directory is versioned instead of refused: runs/default, runs/default-2…
        let dir = PathBuf::from(&cfg.output.dir);
        let fresh = settings::fresh_dir(&dir);
        if fresh != dir {
            ctx.info(format!(
                "{} holds an earlier run; this run goes to {}",
                dir.display(),
                fresh.display()
            ));
            cfg.output.dir = fresh.display().to_string();
        }
    }
    if base == Base::Embedded && !ctx.quiet && rank == 0 {
        ctx.info(format!(
            "codex train: the embedded default run ({} steps of {} on the shipped CPython corpus) into {}",
            cfg.training.steps, cfg.model.preset, cfg.output.dir
        ));
    }
    let opts = RunOptions {
        resume,
        stop_at_step: args.stop_at_step,
        overrides,
    };
    let collective = ranks.collective(&mut cfg)?;
    if world > 1 && rank == 0 {
        let t = &cfg.training;
        ctx.info(format!(
            "{world} ranks: global batch {world} × {} × {} = {} sequences per step",
            t.batch_size,
            t.grad_accum,
            world * t.batch_size * t.grad_accum
        ));
    }
    let mut sinks: Vec<Box<dyn EventSink + '_>> = Vec::new();
    if ctx.json {
        sinks.push(Box::new(StdoutJson));
    }
    sinks.push(Box::new(Terminal::new(ctx)));
    sinks.extend(crate::track::sinks(
        ctx,
        &args.track,
        &cfg.tracking,
        Path::new(&cfg.output.dir),
    )?);
    let summary = codex_train::trainer::train_on(
        &cfg,
        &opts,
        sinks,
        &codex_train::model::build_model,
        collective,
    )
    .map_err(|e| {
        let hint = match &e {
            codex_train::Error::RunExists { .. } => {
                Some("add --resume to continue it, or pass `-o DIR` for a new run")
            }
            codex_train::Error::Checkpoint(codex_checkpoint::CheckpointError::Locked { .. }) => {
                Some("another `codex train` is writing this run; wait for it or choose another output directory")
            }
            codex_train::Error::NothingToResume { .. } => {
                Some("start it without --resume, or point --resume-from at a checkpoint directory")
            }
            _ => None,
        };
        let err = anyhow::Error::new(e);
        match hint {
            Some(h) => with_hint(err, h),
            None => err,
        }
    })?;
    if rank != 0 {
        // Rank 0 speaks for the run.
        let silent = Ctx {
            quiet: true,
            ..*ctx
        };
        return Ok(exit_for(&silent, &args, &cfg, &summary, world));
    }
    if !ctx.json {
        out_line(summary_line(&summary))?;
    }
    Ok(exit_for(ctx, &args, &cfg, &summary, world))
}

/// The exit code of a finished segment, with what the user needs to know on stderr.
/// `world`: the ranks of this run (the continue command keeps it).
fn exit_for(ctx: &Ctx, args: &Args, cfg: &TrainConfig, summary: &RunSummary, world: usize) -> u8 {
    match summary.status {
        RunStatus::Completed | RunStatus::EarlyStopped => exit::OK,
        RunStatus::Interrupted => {
            let continue_with = format!(
                "codex train --resume -o {}{}",
                shell_quote(&summary.run_dir.display().to_string()),
                if world > 1 {
                    format!(" --nproc {world}")
                } else {
                    String::new()
                }
            );
            match &summary.last_checkpoint {
                Some(ck) => ctx.warn(format!(
                    "interrupted at step {}; checkpoint {} written. Continue with: {continue_with}",
                    summary.steps,
                    ck.display()
                )),
                None if summary.steps == 0 => ctx.warn(format!(
                    "interrupted before the first step; no checkpoint was written. Start again with: codex train{}",
                    restart_args(args)
                )),
                None => ctx.warn(format!(
                    "interrupted at step {}; no checkpoint was written",
                    summary.steps
                )),
            }
            exit::INTERRUPTED
        }
        RunStatus::AnomalyStopped => {
            // The weights of the last applied update are what produced the non-finite values.
            let holds = match (&summary.last_checkpoint, summary.last_checkpoint_step) {
                (None, _) => "no checkpoint was written before the failure".to_string(),
                (Some(ck), Some(c)) if summary.last_update_step.is_some_and(|u| c >= u) => {
                    format!(
                        "the newest checkpoint, {}, holds the weights of the last applied update (step {c}), which the non-finite values came from",
                        ck.display()
                    )
                }
                (Some(ck), _) => format!(
                    "the newest checkpoint, {}, holds the weights from before the failing updates",
                    ck.display()
                ),
            };
            ctx.print_error(&anyhow::anyhow!(
                "stopped after {} non-finite losses or gradients in a row at step {}; {holds}",
                cfg.training.max_anomalies,
                summary.steps,
            ));
            exit::INVALID
        }
        // Failures come back as errors; the record says `failed` either way.
        RunStatus::Failed => exit::INVALID,
    }
}

/// The base config: `--config`, else the run's own config when resuming, else the default.
fn base_config(args: &Args, resume: &Resume) -> Base {
    if let Some(c) = &args.config {
        return Base::File(c.clone());
    }
    if *resume != Resume::No {
        let dir = args
            .output
            .clone()
            .or_else(|| override_value(&args.overrides, "output.dir").map(PathBuf::from))
            .or_else(|| match resume {
                // <run>/checkpoints/step-N
                Resume::From(p) => p.parent().and_then(Path::parent).map(Path::to_path_buf),
                _ => None,
            })
            .unwrap_or_else(|| PathBuf::from("runs/default"));
        let own = dir.join("config.toml");
        if own.is_file() {
            return Base::Run(own);
        }
    }
    Base::Embedded
}

fn override_value(overrides: &[String], key: &str) -> Option<String> {
    overrides.iter().rev().find_map(|o| {
        let (k, v) = o.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The same command line without the hidden test flag, for a restart.
fn restart_args(args: &Args) -> String {
    let mut s = String::new();
    if let Some(c) = &args.config {
        s.push_str(&format!(" -c {}", shell_quote(&c.display().to_string())));
    }
    if let Some(o) = &args.output {
        s.push_str(&format!(" -o {}", shell_quote(&o.display().to_string())));
    }
    for o in &args.overrides {
        s.push_str(" --set ");
        s.push_str(&shell_quote(o));
    }
    s
}

fn summary_line(s: &RunSummary) -> String {
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    let at = s
        .val_step
        .map(|st| format!(" @ step {st}"))
        .unwrap_or_default();
    let fell = match (s.first_val_loss, s.val_loss) {
        (Some(a), Some(_)) if s.steps > 0 => format!(" (first eval {a:.4})"),
        _ => String::new(),
    };
    format!(
        "{}: {} after {}/{} steps: val_loss {}{at}{fell}, val_ppl {}, val_token_acc {}, {:.0} tokens/s; run dir {}",
        s.run_id,
        s.status.as_str(),
        s.steps,
        s.total_steps,
        fmt(s.val_loss),
        fmt(s.val_ppl),
        fmt(s.val_token_acc),
        s.tokens_per_s,
        s.run_dir.display()
    )
}
