//! `codex sweep`: run a grid, random or seed sweep of `codex train` trials, each an ordinary
//! run directory under `-o DIR`, named by its overrides.
//!
//! A trial is a child `codex train` process in its own process group: a crash of one trial
//! cannot take the others down, `RAYON_NUM_THREADS` is split between concurrent trials, and
//! Ctrl-C reaches each child exactly once (forwarded by this process), so every trial
//! checkpoints and exits 130. `DIR/sweep.json` records the plan (the resolved base config and
//! the trial matrix) and the pruned trials; a re-run skips finished trials, resumes interrupted
//! ones from their checkpoints and refuses a changed plan unless `--force`.

use crate::ctx::{Ctx, out_json, out_line, with_hint};
use crate::settings::{self, Base};
use anyhow::{Context as _, bail};
use codex_core::exit;
use codex_core::rundir::RunDir;
use codex_train::config::Monitor;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Each trial is a run directory DIR/<overrides> (`codex status`, `eval`, `plot`, `compare` work on \
it). Running the same sweep again skips finished trials and resumes interrupted ones. \
DIR/summary.csv lists the trials, best first.\n\n\
Exit codes: 0 every trial finished (completed, stopped early or pruned), 1 invalid input or a \
trial failed, 2 internal error, 130 interrupted (each running trial wrote a checkpoint)."
)]
pub struct Args {
    /// A sweep file whose `[sweep]` table gives defaults for these flags (config, output, grid,
    /// random, trials, seeds, set, parallel, prune, …; paths relative to the file).
    #[arg(value_name = "SWEEP_TOML")]
    pub file: Option<PathBuf>,
    /// The base training config every trial starts from (default: the embedded default run).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A grid axis: every trial takes one of these values (repeat for a cartesian product).
    #[arg(long = "grid", value_name = "KEY=V1,V2,…")]
    pub grid: Vec<String>,
    /// A random-search axis: uniform in [LO, HI] (integers when both are), `:log` for
    /// log-uniform; needs --trials.
    #[arg(long = "random", value_name = "KEY=LO:HI[:log]")]
    pub random: Vec<String>,
    /// Random samples per grid point (with --random).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub trials: Option<u32>,
    /// Repeat every trial with N weight-init seeds (training.seed = base seed + 0..N).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub seeds: Option<u32>,
    /// An override applied to every trial, such as `training.steps=200`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The sweep directory: one run directory per trial, sweep.json and summary.csv.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Trials run at once; RAYON_NUM_THREADS is split between them.
    #[arg(long, short = 'p', value_name = "P", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub parallel: Option<u32>,
    /// Stop unpromising trials: `median` stops a trial whose monitored metric
    /// (checkpoint.monitor) is worse than the median of completed trials at the same step.
    #[arg(long, value_enum, value_name = "RULE")]
    pub prune: Option<Prune>,
    /// Completed trials needed before the median rule prunes anything (default 5).
    #[arg(long, value_name = "N")]
    pub prune_startup_trials: Option<u32>,
    /// Never prune at evaluations before this step (default 0; step 0 is never judged).
    #[arg(long, value_name = "STEP")]
    pub prune_warmup_steps: Option<u64>,
    /// Seed of the random-search samples.
    #[arg(long, value_name = "SEED")]
    pub sample_seed: Option<u64>,
    /// Print the trial matrix (each trial's overrides) and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run even though the base config or the trial matrix changed since DIR/sweep.json was
    /// written; the old trials' directories are moved to DIR/superseded-N/ when the base
    /// config changed.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prune {
    None,
    Median,
}

/// The `[sweep]` table of a sweep file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    config: Option<PathBuf>,
    output: Option<PathBuf>,
    #[serde(default)]
    grid: toml::Table,
    #[serde(default)]
    random: BTreeMap<String, String>,
    trials: Option<u32>,
    seeds: Option<u32>,
    #[serde(default)]
    set: Vec<String>,
    parallel: Option<u32>,
    prune: Option<Prune>,
    prune_startup_trials: Option<u32>,
    prune_warmup_steps: Option<u64>,
    sample_seed: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepDoc {
    sweep: SweepFile,
}

/// One trial: its directory name and the overrides that define it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Trial {
    name: String,
    overrides: Vec<String>,
}

/// `DIR/sweep.json`.
#[derive(Serialize, Deserialize, Debug)]
struct State {
    schema_version: u32,
    /// The resolved base config (with `--set` applied, output.dir cleared), as TOML.
    base_config: String,
    /// The base config file the trials are started with (None: the embedded default).
    config_file: Option<PathBuf>,
    /// Overrides every trial gets.
    set: Vec<String>,
    trials: Vec<Trial>,
    /// Trials the median rule stopped, with the step they were stopped at.
    #[serde(default)]
    pruned: BTreeMap<String, u64>,
}

const STATE_FILE: &str = "sweep.json";
const SUMMARY_FILE: &str = "summary.csv";
const LOG_FILE: &str = "train.log";
const MAX_NAME: usize = 150;

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    let opts = Options::resolve(args)?;
    let base = match &opts.config {
        Some(c) => Base::File(c.clone()),
        None => Base::Embedded,
    };
    let config_hint = "`codex config validate -c FILE` lists every problem of a config";
    let loaded = settings::load_from(&base, &opts.set).map_err(|e| with_hint(e, config_hint))?;
    let monitor = loaded.cfg.checkpoint_monitor();
    let mut base_cfg = loaded.cfg.clone();
    base_cfg.output.dir = String::new();
    let base_config = toml::to_string(&base_cfg).context("cannot render the base config")?;
    let trials = matrix(&opts, loaded.cfg.training.seed)?;
    // Every trial's config must be valid before anything runs.
    for t in &trials {
        let all: Vec<String> = opts.set.iter().chain(&t.overrides).cloned().collect();
        settings::load_from(&base, &all)
            .map_err(|e| with_hint(e, config_hint).context(format!("trial {}", t.name)))?;
    }
    if opts.dry_run {
        return dry_run(ctx, &opts, &trials);
    }
    let dir = opts.output.clone().ok_or_else(|| {
        with_hint(
            anyhow::anyhow!("no sweep directory"),
            "pass `-o DIR` (or `output = \"DIR\"` in the sweep file)",
        )
    })?;
    codex_core::fsutil::create_dir_all(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut state = State {
        schema_version: 1,
        base_config,
        config_file: opts.config.clone(),
        set: opts.set.clone(),
        trials,
        pruned: BTreeMap::new(),
    };
    reconcile(ctx, &dir, &mut state, opts.force)?;
    save_state(&dir, &state)?;
    let code = execute(ctx, &opts, &dir, &mut state, monitor)?;
    let rows = summarize(&dir, &state, monitor);
    write_summary(&dir, &rows, monitor)?;
    report(ctx, &dir, &rows, monitor)?;
    Ok(code)
}

/// The flags, with the sweep file's values where a flag is not given.
#[derive(Debug)]
struct Options {
    config: Option<PathBuf>,
    output: Option<PathBuf>,
    /// (key, values) in order.
    grid: Vec<(String, Vec<String>)>,
    random: Vec<(String, Range)>,
    trials: Option<u32>,
    seeds: Option<u32>,
    set: Vec<String>,
    parallel: u32,
    prune: Prune,
    prune_startup_trials: u32,
    prune_warmup_steps: u64,
    sample_seed: u64,
    dry_run: bool,
    force: bool,
}

#[derive(Debug, Clone, Copy)]
struct Range {
    lo: f64,
    hi: f64,
    log: bool,
    int: bool,
}

impl Options {
    fn resolve(args: Args) -> anyhow::Result<Self> {
        let (file, rel) = match &args.file {
            Some(p) => {
                if p.extension().is_some_and(|e| e == "toml") && !p.is_file() {
                    bail!("sweep file {} does not exist", p.display());
                }
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read sweep file {}", p.display()))?;
                let doc: SweepDoc = toml::from_str(&text).map_err(|e| {
                    with_hint(
                        anyhow::anyhow!("{}: {}", p.display(), e.message().trim()),
                        "a sweep file holds one `[sweep]` table; see `codex sweep --help`",
                    )
                })?;
                let rel = p.parent().map(Path::to_path_buf).unwrap_or_default();
                (doc.sweep, rel)
            }
            None => (SweepFile::default(), PathBuf::new()),
        };
        let mut grid = Vec::new();
        for (key, value) in &file.grid {
            let values = match value {
                toml::Value::Array(a) if !a.is_empty() => a.iter().map(override_value).collect(),
                _ => bail!("sweep file: grid.{key} must be a non-empty array of values"),
            };
            grid.push((key.clone(), values));
        }
        for g in &args.grid {
            let (key, values) = split_kv(g, "--grid", "KEY=V1,V2,…")?;
            let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
            if values.iter().any(String::is_empty) {
                bail!("--grid {g}: an empty value");
            }
            grid.retain(|(k, _)| k != &key);
            grid.push((key, values));
        }
        let mut random = Vec::new();
        for (key, spec) in &file.random {
            random.push((key.clone(), parse_range(key, spec)?));
        }
        for r in &args.random {
            let (key, spec) = split_kv(r, "--random", "KEY=LO:HI[:log]")?;
            let range = parse_range(&key, &spec)?;
            random.retain(|(k, _)| k != &key);
            random.push((key, range));
        }
        let trials = args.trials.or(file.trials);
        if !random.is_empty() && trials.is_none() {
            bail!("--random needs --trials N (how many samples to draw)");
        }
        if random.is_empty() && trials.is_some() {
            bail!("--trials counts random samples; add a --random KEY=LO:HI axis");
        }
        let mut keys: Vec<&str> = grid.iter().map(|(k, _)| k.as_str()).collect();
        keys.extend(random.iter().map(|(k, _)| k.as_str()));
        let seeds = args.seeds.or(file.seeds);
        if seeds.is_some() {
            keys.push("training.seed");
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].contains(k) {
                bail!("{k} is swept twice (grid, random or --seeds)");
            }
        }
        if keys.is_empty() {
            return Err(with_hint(
                anyhow::anyhow!("nothing to sweep"),
                "give --grid KEY=V1,V2, --random KEY=LO:HI with --trials N, or --seeds N",
            ));
        }
        let mut set = file.set.clone();
        set.extend(args.set.iter().cloned());
        for s in &set {
            split_kv(s, "--set", "KEY=VALUE")?;
        }
        let parallel = args.parallel.or(file.parallel).unwrap_or(1);
        if parallel == 0 {
            bail!("parallel must be at least 1");
        }
        let join = |p: PathBuf| if p.is_absolute() { p } else { rel.join(p) };
        Ok(Options {
            config: args.config.or(file.config.map(join)),
            output: args.output.or(file.output.map(join)),
            grid,
            random,
            trials,
            seeds,
            set,
            parallel,
            prune: args.prune.or(file.prune).unwrap_or(Prune::None),
            prune_startup_trials: args
                .prune_startup_trials
                .or(file.prune_startup_trials)
                .unwrap_or(5),
            prune_warmup_steps: args
                .prune_warmup_steps
                .or(file.prune_warmup_steps)
                .unwrap_or(0),
            sample_seed: args.sample_seed.or(file.sample_seed).unwrap_or(0),
            dry_run: args.dry_run,
            force: args.force,
        })
    }
}

/// A sweep-file grid value as override text: strings quoted, everything else as TOML writes it.
fn override_value(v: &toml::Value) -> String {
    v.to_string()
}

fn split_kv(text: &str, flag: &str, form: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => bail!("{flag} {text:?}: expected {form}"),
    }
}

fn parse_range(key: &str, spec: &str) -> anyhow::Result<Range> {
    let bad = || anyhow::anyhow!("--random {key}={spec}: expected LO:HI or LO:HI:log");
    let parts: Vec<&str> = spec.split(':').map(str::trim).collect();
    let log = match parts.as_slice() {
        [_, _] => false,
        [_, _, "log"] => true,
        _ => return Err(bad()),
    };
    let is_int = |s: &str| s.parse::<i64>().is_ok();
    let int = is_int(parts[0]) && is_int(parts[1]);
    let lo: f64 = parts[0].parse().map_err(|_| bad())?;
    let hi: f64 = parts[1].parse().map_err(|_| bad())?;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        bail!("--random {key}={spec}: needs finite LO < HI");
    }
    if log && lo <= 0.0 {
        bail!("--random {key}={spec}: a log range needs LO > 0");
    }
    Ok(Range { lo, hi, log, int })
}

/// Draws one value of `r`, formatted as the override (and the trial name) will show it.
fn sample(r: &Range, rng: &mut ChaCha8Rng) -> String {
    // 53 random bits: a uniform f64 in [0, 1).
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let v = if r.log {
        (r.lo.ln() + u * (r.hi.ln() - r.lo.ln())).exp()
    } else {
        r.lo + u * (r.hi - r.lo)
    };
    if r.int {
        // Inclusive of HI: floor over [LO, HI + 1).
        let (lo, hi) = (r.lo as i64, r.hi as i64);
        let span = (hi - lo + 1) as f64;
        let i = lo + ((u * span).floor() as i64).min(hi - lo);
        if r.log {
            return (v.round() as i64).clamp(lo, hi).to_string();
        }
        return i.to_string();
    }
    // Four significant digits: a readable directory name that is exactly the value trained.
    format!("{v:.3e}")
}

/// The trial matrix: grid points (first axis slowest) × random samples × seeds.
fn matrix(opts: &Options, base_seed: u64) -> anyhow::Result<Vec<Trial>> {
    let mut points: Vec<Vec<String>> = vec![Vec::new()];
    for (key, values) in &opts.grid {
        points = points
            .iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push(format!("{key}={v}"));
                    q
                })
            })
            .collect();
    }
    if !opts.random.is_empty() {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.sample_seed);
        let n = opts.trials.unwrap_or(1);
        let mut out = Vec::new();
        for p in &points {
            for _ in 0..n {
                let mut q = p.clone();
                for (key, r) in &opts.random {
                    q.push(format!("{key}={}", sample(r, &mut rng)));
                }
                out.push(q);
            }
        }
        points = out;
    }
    if let Some(n) = opts.seeds {
        points = points
            .iter()
            .flat_map(|p| {
                (0..u64::from(n)).map(move |i| {
                    let mut q = p.clone();
                    q.push(format!("training.seed={}", base_seed.wrapping_add(i)));
                    q
                })
            })
            .collect();
    }
    const MAX_TRIALS: usize = 100_000;
    if points.len() > MAX_TRIALS {
        bail!(
            "{} trials is more than {MAX_TRIALS}; sweep fewer values",
            points.len()
        );
    }
    let mut trials: Vec<Trial> = Vec::with_capacity(points.len());
    for (i, overrides) in points.into_iter().enumerate() {
        let mut name = trial_name(&overrides);
        if name.len() > MAX_NAME || trials.iter().any(|t| t.name == name) {
            name = format!("trial-{:04}", i + 1);
        }
        trials.push(Trial { name, overrides });
    }
    Ok(trials)
}

/// `optimizer.lr=1e-3_training.seed=7`: the overrides, with characters that are awkward in a
/// path replaced by `-`.
fn trial_name(overrides: &[String]) -> String {
    overrides
        .iter()
        .map(|o| {
            o.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._=+-".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("_")
}

fn dry_run(ctx: &Ctx, opts: &Options, trials: &[Trial]) -> anyhow::Result<u8> {
    if ctx.json {
        out_json(&serde_json::json!({
            "dir": opts.output,
            "config": opts.config,
            "set": opts.set,
            "trials": trials,
        }))?;
    } else {
        for t in trials {
            out_line(format!("{}\t{}", t.name, t.overrides.join(" ")))?;
        }
        ctx.info(format!(
            "{} trials (dry run: nothing was trained)",
            trials.len()
        ));
    }
    Ok(exit::OK)
}

/// Compares the plan with the one recorded in `DIR/sweep.json`; refuses a change unless
/// `force`, keeps the record of pruned trials otherwise.
fn reconcile(ctx: &Ctx, dir: &Path, state: &mut State, force: bool) -> anyhow::Result<()> {
    let path = dir.join(STATE_FILE);
    let old: State = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a sweep record", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
                return Err(with_hint(
                    anyhow::anyhow!("{} is not empty and holds no {STATE_FILE}", dir.display()),
                    "choose a new directory for the sweep",
                ));
            }
            return Ok(());
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())));
        }
    };
    // The resolved config decides, not the path it was read from (another cwd, a copy).
    let base_changed = old.base_config != state.base_config;
    let trials_changed = old.trials != state.trials;
    if !base_changed && !trials_changed {
        state.pruned = old.pruned;
        return Ok(());
    }
    let what = match (base_changed, trials_changed) {
        (true, true) => "the base config and the trial matrix",
        (true, false) => "the base config",
        _ => "the trial matrix",
    };
    if !force {
        return Err(with_hint(
            anyhow::anyhow!(
                "{what} changed since this sweep was started in {}",
                dir.display()
            ),
            "use a new -o DIR, or --force to run the new plan here",
        ));
    }
    if base_changed {
        // Trials of the old base are not results of the new one: set them aside, whole.
        let aside = (1..)
            .map(|n| dir.join(format!("superseded-{n}")))
            .find(|p| !p.exists())
            .expect("an unused name");
        codex_core::fsutil::create_dir_all(&aside)?;
        for t in &old.trials {
            let from = dir.join(&t.name);
            if from.exists() {
                std::fs::rename(&from, aside.join(&t.name))
                    .with_context(|| format!("cannot move {}", from.display()))?;
            }
        }
        let _ = std::fs::rename(dir.join(SUMMARY_FILE), aside.join(SUMMARY_FILE));
        let _ = std::fs::rename(&path, aside.join(STATE_FILE));
        ctx.warn(format!(
            "{what} changed (--force): the earlier trials were moved to {}",
            aside.display()
        ));
    } else {
        // Same base: a trial with the same overrides is the same trial.
        state.pruned = old
            .pruned
            .into_iter()
            .filter(|(n, _)| state.trials.iter().any(|t| &t.name == n))
            .collect();
        ctx.warn(format!(
            "{what} changed (--force): trials with unchanged overrides are kept"
        ));
    }
    Ok(())
}

fn save_state(dir: &Path, state: &State) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(state)?;
    codex_core::fsutil::atomic_write(&dir.join(STATE_FILE), &bytes)
        .with_context(|| format!("cannot write {}", dir.join(STATE_FILE).display()))
}

/// What a trial's run directory says about it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Found {
    /// Nothing trained yet.
    Fresh,
    /// Started, not finished: resume from its checkpoint (or start over without one).
    Unfinished { checkpoint: bool },
    /// Completed or stopped early by the trainer's own early stopping.
    Done,
    /// The trainer reported a failure (non-finite losses, an error).
    Failed,
}

fn found(run: &Path) -> Found {
    let events = read_events(run);
    let checkpoint =
        std::fs::read_dir(RunDir::new(run).checkpoints()).is_ok_and(|mut d| d.next().is_some());
    let last_end = events.iter().rev().find(|e| e["event"] == "end");
    match last_end.and_then(|e| e["status"].as_str()) {
        Some("completed" | "early_stopped") => Found::Done,
        Some("failed" | "anomaly_stopped") => Found::Failed,
        _ if checkpoint || !events.is_empty() => Found::Unfinished { checkpoint },
        _ => Found::Fresh,
    }
}

/// The events of a run's `metrics.ndjson` (a partial last line is skipped).
fn read_events(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(RunDir::new(run).metrics())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The monitored metric at each evaluation step of a run.
fn curve(run: &Path, monitor: Monitor) -> BTreeMap<u64, f64> {
    read_events(run)
        .iter()
        .filter(|e| e["event"] == "eval")
        .filter_map(|e| Some((e["step"].as_u64()?, e[monitor.name()].as_f64()?)))
        .collect()
}

struct Running {
    index: usize,
    child: Child,
    started: Instant,
    /// Bytes of metrics.ndjson already read.
    offset: u64,
    pending: String,
    pruned_at: Option<u64>,
}

/// Runs the trials that are not finished; returns the exit code.
fn execute(
    ctx: &Ctx,
    opts: &Options,
    dir: &Path,
    state: &mut State,
    monitor: Monitor,
) -> anyhow::Result<u8> {
    let total = state.trials.len();
    let mut queue: Vec<(usize, bool)> = Vec::new();
    let mut completed: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    let mut failed = 0usize;
    for (i, t) in state.trials.iter().enumerate() {
        let run = dir.join(&t.name);
        if state.pruned.contains_key(&t.name) {
            ctx.info(format!(
                "[{}/{total}] {}: pruned earlier, skipped",
                i + 1,
                t.name
            ));
            continue;
        }
        match found(&run) {
            Found::Done => {
                ctx.info(format!(
                    "[{}/{total}] {}: finished earlier, skipped",
                    i + 1,
                    t.name
                ));
                completed.insert(t.name.clone(), curve(&run, monitor));
            }
            Found::Failed => {
                ctx.warn(format!(
                    "[{}/{total}] {}: failed earlier (see {}); not run again (delete the directory to retry)",
                    i + 1,
                    t.name,
                    run.join(LOG_FILE).display()
                ));
                failed += 1;
            }
            Found::Unfinished { checkpoint: true } => queue.push((i, true)),
            Found::Unfinished { checkpoint: false } | Found::Fresh => queue.push((i, false)),
        }
    }
    queue.reverse();
    let threads = thread_split(ctx, opts.parallel as usize);
    let exe = std::env::current_exe().context("cannot find the codex executable")?;
    let mut running: Vec<Running> = Vec::new();
    let mut forwarded = false;
    loop {
        let interrupted = codex_core::signal::interrupted();
        if interrupted && !forwarded {
            forwarded = true;
            for r in &running {
                signal(&r.child, libc::SIGINT);
            }
        }
        while !interrupted && running.len() < opts.parallel as usize {
            let Some((i, resume)) = queue.pop() else {
                break;
            };
            let t = &state.trials[i];
            let run = dir.join(&t.name);
            ctx.info(format!(
                "[{}/{total}] {}: {}",
                i + 1,
                t.name,
                if resume { "resuming" } else { "training" }
            ));
            let child = spawn(&exe, opts, state, t, &run, resume, threads)?;
            running.push(Running {
                index: i,
                child,
                started: Instant::now(),
                offset: 0,
                pending: String::new(),
                pruned_at: None,
            });
        }
        if running.is_empty() {
            break;
        }
        let mut k = 0;
        while k < running.len() {
            let r = &mut running[k];
            let name = state.trials[r.index].name.clone();
            let run = dir.join(&name);
            if opts.prune == Prune::Median && r.pruned_at.is_none() && !interrupted {
                for (step, value) in new_evals(&run, r, monitor) {
                    if should_prune(opts, &completed, monitor, step, value) {
                        ctx.info(format!(
                            "[{}/{total}] {name}: pruned at step {step} ({} {value:.4} is worse than the median of completed trials)",
                            r.index + 1,
                            monitor.name()
                        ));
                        signal(&r.child, libc::SIGINT);
                        r.pruned_at = Some(step);
                        break;
                    }
                }
            }
            let Some(status) = r.child.try_wait()? else {
                k += 1;
                continue;
            };
            let r = running.swap_remove(k);
            let secs = r.started.elapsed().as_secs_f64();
            let now = found(&run);
            if let Some(step) = r.pruned_at.filter(|_| now != Found::Done) {
                state.pruned.insert(name.clone(), step);
                save_state(dir, state)?;
                continue;
            }
            match now {
                Found::Done => {
                    ctx.info(format!(
                        "[{}/{total}] {name}: completed in {secs:.1} s",
                        r.index + 1
                    ));
                    completed.insert(name, curve(&run, monitor));
                }
                _ if status.code() == Some(i32::from(exit::INTERRUPTED)) => {
                    ctx.info(format!("[{}/{total}] {name}: interrupted", r.index + 1));
                }
                _ => {
                    failed += 1;
                    ctx.warn(format!(
                        "[{}/{total}] {name}: failed ({status}); see {}",
                        r.index + 1,
                        run.join(LOG_FILE).display()
                    ));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if codex_core::signal::interrupted() {
        ctx.warn(format!(
            "sweep interrupted; run the same command again to resume it ({} trials left)",
            state
                .trials
                .iter()
                .filter(|t| !state.pruned.contains_key(&t.name)
                    && !matches!(found(&dir.join(&t.name)), Found::Done | Found::Failed))
                .count()
        ));
        return Ok(exit::INTERRUPTED);
    }
    Ok(if failed > 0 { exit::INVALID } else { exit::OK })
}

/// Rayon threads per trial: the user's RAYON_NUM_THREADS (else the cores) split P ways.
fn thread_split(ctx: &Ctx, parallel: usize) -> usize {
    let total = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if parallel > total {
        ctx.warn(format!(
            "--parallel {parallel} is more than the {total} threads available; each trial gets one"
        ));
    }
    split_threads(total, parallel)
}

/// `total` threads shared by `parallel` trials: the floor, at least one each, so that the
/// trials together never use more threads than the user gave (unless P > total).
fn split_threads(total: usize, parallel: usize) -> usize {
    (total / parallel.max(1)).max(1)
}

fn spawn(
    exe: &Path,
    opts: &Options,
    state: &State,
    t: &Trial,
    run: &Path,
    resume: bool,
    threads: usize,
) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt as _;
    codex_core::fsutil::create_dir_all(run)
        .with_context(|| format!("cannot create {}", run.display()))?;
    if !resume && RunDir::new(run).metrics().exists() {
        // Stopped before its first checkpoint: nothing to resume; start it over.
        std::fs::remove_file(RunDir::new(run).metrics())?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.join(LOG_FILE))
        .with_context(|| format!("cannot open {}", run.join(LOG_FILE).display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("train");
    if let Some(c) = &opts.config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(&state.set)
        .args(&t.overrides)
        .arg("--output")
        .arg(run)
        .arg("--no-progress");
    if resume {
        cmd.arg("--resume");
    }
    cmd.env("RAYON_NUM_THREADS", threads.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a terminal's Ctrl-C reaches only this process, which
        // forwards it once (a second SIGINT would make the trial exit without a checkpoint).
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            // If the sweep dies, its trials checkpoint and stop instead of running on.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("cannot start {}", exe.display()))
}

fn signal(child: &Child, sig: i32) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with the pid of a child we have not yet reaped.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// The monitored metric of the evaluations a running trial wrote since the last look.
fn new_evals(run: &Path, r: &mut Running, monitor: Monitor) -> Vec<(u64, f64)> {
    let Ok(mut f) = std::fs::File::open(RunDir::new(run).metrics()) else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(r.offset)).is_err() {
        return Vec::new();
    }
    let mut chunk = String::new();
    let Ok(n) = f.take(1 << 24).read_to_string(&mut chunk) else {
        return Vec::new();
    };
    r.offset += n as u64;
    r.pending.push_str(&chunk);
    let mut out = Vec::new();
    while let Some(end) = r.pending.find('\n') {
        let line: String = r.pending.drain(..=end).collect();
        if let Ok(e) = serde_json::from_str::<serde_json::Value>(&line)
            && e["event"] == "eval"
            && let (Some(step), Some(v)) = (e["step"].as_u64(), e[monitor.name()].as_f64())
        {
            out.push((step, v));
        }
    }
    out
}

/// The median stopping rule: prune when `value` at `step` is worse than the median of the
/// completed trials' values at that same step.
fn should_prune(
    opts: &Options,
    completed: &BTreeMap<String, BTreeMap<u64, f64>>,
    monitor: Monitor,
    step: u64,
    value: f64,
) -> bool {
    // Step 0 is the untrained model: it says nothing about the hyperparameters.
    if step == 0 || step < opts.prune_warmup_steps {
        return false;
    }
    let mut at: Vec<f64> = completed
        .values()
        .filter_map(|c| c.get(&step).copied())
        .filter(|v| v.is_finite())
        .collect();
    if at.is_empty() || at.len() < opts.prune_startup_trials as usize {
        return false;
    }
    at.sort_by(f64::total_cmp);
    let n = at.len();
    let median = if n % 2 == 1 {
        at[n / 2]
    } else {
        (at[n / 2 - 1] + at[n / 2]) / 2.0
    };
    if !value.is_finite() {
        return true;
    }
    if monitor.higher_is_better() {
        value < median
    } else {
        value > median
    }
}

/// One row of the summary.
#[derive(Serialize, Debug)]
struct Row {
    trial: String,
    overrides: Vec<String>,
    status: String,
    best: Option<f64>,
    best_step: Option<u64>,
    steps: Option<u64>,
    train_loss: Option<f64>,
    val_loss: Option<f64>,
    val_ppl: Option<f64>,
    val_token_acc: Option<f64>,
    tokens_per_s: Option<f64>,
    wall_s: Option<f64>,
    run_dir: PathBuf,
}

fn summarize(dir: &Path, state: &State, monitor: Monitor) -> Vec<Row> {
    let mut rows: Vec<Row> = state
        .trials
        .iter()
        .map(|t| {
            let run = dir.join(&t.name);
            let events = read_events(&run);
            let ends: Vec<&serde_json::Value> =
                events.iter().filter(|e| e["event"] == "end").collect();
            let last = ends.last();
            let status = if state.pruned.contains_key(&t.name) {
                "pruned".to_string()
            } else if let Some(s) = last.and_then(|e| e["status"].as_str()) {
                s.to_string()
            } else if events.is_empty() {
                "pending".to_string()
            } else {
                "interrupted".to_string()
            };
            let better = |a: f64, b: f64| {
                if monitor.higher_is_better() {
                    a > b
                } else {
                    a < b
                }
            };
            let mut best: Option<(f64, u64)> = None;
            for (step, v) in curve(&run, monitor) {
                if v.is_finite() && best.is_none_or(|(b, _)| better(v, b)) {
                    best = Some((v, step));
                }
            }
            let f = |k: &str| last.and_then(|e| e[k].as_f64());
            let wall: f64 = ends.iter().filter_map(|e| e["elapsed_s"].as_f64()).sum();
            Row {
                trial: t.name.clone(),
                overrides: t.overrides.clone(),
                status,
                best: best.map(|b| b.0),
                best_step: best.map(|b| b.1),
                steps: last.and_then(|e| e["steps"].as_u64()),
                train_loss: f("train_loss"),
                val_loss: f("val_loss"),
                val_ppl: f("val_ppl"),
                val_token_acc: f("val_token_acc"),
                tokens_per_s: f("tokens_per_s"),
                wall_s: (!ends.is_empty()).then_some(wall),
                run_dir: run,
            }
        })
        .collect();
    rows.sort_by(|a, b| match (a.best, b.best) {
        (Some(x), Some(y)) => {
            let o = x.total_cmp(&y);
            if monitor.higher_is_better() {
                o.reverse()
            } else {
                o
            }
        }
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.trial.cmp(&b.trial),
    });
    rows
}

/// RFC 4180 quoting of one field (the workspace has no CSV crate; this is all the summary
/// needs).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_summary(dir: &Path, rows: &[Row], monitor: Monitor) -> anyhow::Result<()> {
    let num = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    let int = |v: Option<u64>| v.map_or(String::new(), |x| x.to_string());
    let mut text = format!(
        "trial,overrides,status,best_{m},best_step,steps,train_loss,val_loss,val_ppl,val_token_acc,tokens_per_s,wall_s\n",
        m = monitor.name()
    );
    for r in rows {
        let fields = [
            csv_field(&r.trial),
            csv_field(&r.overrides.join(" ")),
            r.status.clone(),
            num(r.best),
            int(r.best_step),
            int(r.steps),
            num(r.train_loss),
            num(r.val_loss),
            num(r.val_ppl),
            num(r.val_token_acc),
            num(r.tokens_per_s),
            num(r.wall_s),
        ];
        text.push_str(&fields.join(","));
        text.push('\n');
    }
    codex_core::fsutil::atomic_write(&dir.join(SUMMARY_FILE), text.as_bytes())
        .with_context(|| format!("cannot write {}", dir.join(SUMMARY_FILE).display()))
}

fn report(ctx: &Ctx, dir: &Path, rows: &[Row], monitor: Monitor) -> anyhow::Result<()> {
    let best = rows
        .iter()
        .find(|r| r.best.is_some() && r.status != "pruned");
    if ctx.json {
        out_json(&serde_json::json!({
            "dir": dir,
            "monitor": monitor.name(),
            "mode": if monitor.higher_is_better() { "max" } else { "min" },
            "best": best.map(|r| &r.trial),
            "trials": rows,
        }))?;
        return Ok(());
    }
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    out_line(format!(
        "{:<40} {:<13} {:>10} {:>6} {:>10}",
        "trial",
        "status",
        monitor.name(),
        "step",
        "tokens/s"
    ))?;
    for r in rows {
        out_line(format!(
            "{:<40} {:<13} {:>10} {:>6} {:>10}",
            r.trial,
            r.status,
            fmt(r.best),
            r.best_step.map_or("-".into(), |s| s.to_string()),
            r.tokens_per_s.map_or("-".into(), |t| format!("{t:.0}"))
        ))?;
    }
    match best {
        Some(b) => out_line(format!(
            "best: {} ({} {} at step {}); run dir {}",
            b.trial,
            monitor.name(),
            fmt(b.best),
            b.best_step.unwrap_or(0),
            b.run_dir.display()
        ))?,
        None => out_line("best: none (no trial has an evaluation yet)")?,
    }
    ctx.info(format!("summary: {}", dir.join(SUMMARY_FILE).display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            config: None,
            output: None,
            grid: vec![
                ("optimizer.lr".into(), vec!["1e-3".into(), "3e-3".into()]),
                ("training.batch_size".into(), vec!["4".into(), "8".into()]),
            ],
            random: Vec::new(),
            trials: None,
            seeds: Some(2),
            set: Vec::new(),
            parallel: 1,
            prune: Prune::Median,
            prune_startup_trials: 1,
            prune_warmup_steps: 0,
            sample_seed: 0,
            dry_run: false,
            force: false,
        }
    }

    #[test]
    fn grid_times_seeds_first_axis_slowest() {
        let t = matrix(&opts(), 10).unwrap();
        assert_eq!(t.len(), 8);
        assert_eq!(
            t[0].name,
            "optimizer.lr=1e-3_training.batch_size=4_training.seed=10"
        );
        assert_eq!(t[1].overrides[2], "training.seed=11");
        assert_eq!(
            t[7].name,
            "optimizer.lr=3e-3_training.batch_size=8_training.seed=11"
        );
    }

    #[test]
    fn random_samples_are_seeded_and_in_range() {
        let mut o = opts();
        o.grid.clear();
        o.seeds = None;
        o.trials = Some(50);
        o.random = vec![(
            "optimizer.lr".into(),
            parse_range("optimizer.lr", "1e-4:1e-2:log").unwrap(),
        )];
        let a = matrix(&o, 0).unwrap();
        assert_eq!(a, matrix(&o, 0).unwrap());
        for t in &a {
            let v: f64 = t.overrides[0].split_once('=').unwrap().1.parse().unwrap();
            assert!((1e-4..=1e-2).contains(&v), "{v}");
        }
        // Log-uniform: about half the samples below the geometric middle 1e-3.
        let below = a
            .iter()
            .filter(|t| {
                t.overrides[0]
                    .split_once('=')
                    .unwrap()
                    .1
                    .parse::<f64>()
                    .unwrap()
                    < 1e-3
            })
            .count();
        assert!((15..=35).contains(&below), "{below}");
        o.random = vec![(
            "training.batch_size".into(),
            parse_range("k", "2:4").unwrap(),
        )];
        let ints: Vec<i64> = matrix(&o, 0)
            .unwrap()
            .iter()
            .map(|t| t.overrides[0].split_once('=').unwrap().1.parse().unwrap())
            .collect();
        assert!(ints.iter().all(|v| (2..=4).contains(v)));
        assert!([2, 3, 4].iter().all(|v| ints.contains(v)));
    }

    #[test]
    fn median_rule() {
        let o = opts();
        let mut done = BTreeMap::new();
        for (n, v) in [("a", 1.0), ("b", 2.0), ("c", 3.0)] {
            done.insert(n.to_string(), BTreeMap::from([(0, 9.0), (6, v)]));
        }
        let m = Monitor::ValLoss;
        assert!(should_prune(&o, &done, m, 6, 2.5));
        assert!(!should_prune(&o, &done, m, 6, 2.0));
        assert!(
            !should_prune(&o, &done, m, 0, 99.0),
            "step 0 is never judged"
        );
        assert!(
            !should_prune(&o, &done, m, 12, 99.0),
            "no completed trial has step 12"
        );
        assert!(should_prune(&o, &done, m, 6, f64::NAN));
        assert!(should_prune(&o, &done, Monitor::ValTokenAcc, 6, 1.5));
        let strict = Options {
            prune_startup_trials: 4,
            ..opts()
        };
        assert!(!should_prune(&strict, &done, m, 6, 2.5));
    }

    #[test]
    fn threads_are_split_between_concurrent_trials() {
        assert_eq!(split_threads(16, 1), 16);
        assert_eq!(split_threads(16, 3), 5);
        assert_eq!(split_threads(2, 2), 1);
        assert_eq!(split_threads(2, 4), 1);
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(parse_range("k", "1:0").is_err());
        assert!(parse_range("k", "0:1:log").is_err());
        assert!(parse_range("k", "a:b").is_err());
        assert!(parse_range("k", "1:2:lin").is_err());
        assert!(split_kv("novalue", "--grid", "KEY=V").is_err());
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
    }
}
