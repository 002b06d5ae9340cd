//! `codex`: tokenize, build or load a model, train it with persisted metrics and checksummed
//! checkpoints, sample system telemetry, and audit the result.

mod clidoc;
mod commands;
#[cfg(test)]
mod configdoc;
mod ctx;
mod settings;
mod sinks;
mod track;

use clap::{FromArgMatches as _, Parser, Subcommand};
use ctx::{ColorChoice, Ctx};
use std::io::Write;
use std::process::ExitCode;

/// The help section of the options every command takes.
const GLOBAL: &str = "Global options";

#[derive(Parser, Debug)]
#[command(
    name = "codex",
    version,
    about = "ML training and telemetry runtime: tokenize, train, checkpoint, monitor, audit.",
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Only print errors.
    #[arg(short, long, global = true, help_heading = GLOBAL, conflicts_with = "verbose")]
    quiet: bool,
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, help_heading = GLOBAL, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true, help_heading = GLOBAL)]
    json: bool,
    /// When to color output.
    #[arg(long, global = true, help_heading = GLOBAL, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// Never draw progress bars.
    #[arg(long, global = true, help_heading = GLOBAL)]
    no_progress: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train, apply, inspect and validate tokenizers (HF tokenizer.json).
    Tokenizer(commands::tokenizer::Args),
    /// List, inspect models; merge LoRA adapters.
    Model(commands::model::Args),
    /// Train a model from a TOML config plus `--set KEY=VALUE` overrides.
    Train(commands::train::Args),
    /// Run a grid, random or seed sweep of training trials, with pruning and a summary.
    Sweep(commands::sweep::Args),
    /// Evaluate a model or checkpoint: loss, perplexity, token accuracy.
    Eval(commands::eval::Args),
    /// Sample text from a trained model (a run, checkpoint, HF directory or GGUF file).
    Generate(commands::generate::Args),
    /// Write a model as an HF directory (transformers-loadable) or a GGUF file.
    Export(commands::export::Args),
    /// List, verify and prune checksummed checkpoints.
    Checkpoint(commands::checkpoint::Args),
    /// Sample CPU and GPU telemetry.
    Metrics(commands::metrics::Args),
    /// Map a repository: languages, line counts, key files, public symbols.
    #[command(name = "repo-map")]
    RepoMap(commands::repo_map::Args),
    /// Audit capabilities, placeholders, runs and reproducibility.
    Status(commands::status::Args),
    /// Show or validate the effective configuration.
    Config(commands::config::Args),
    /// Replay runs' records into TensorBoard event files, CSV or MLflow, idempotently.
    Sync(commands::sync::Args),
    /// Draw runs' curves (one chart per metric, runs overlaid) as SVG or PNG.
    Plot(commands::plot::Args),
    /// Compare runs side by side: config differences, final and best metrics, speed.
    Compare(commands::compare::Args),
    /// Scan data for secrets and personal data, prepare datasets, list prepared ones.
    Data(commands::data::Args),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completions(clidoc::CompletionsArgs),
    /// Write man pages (one per command) into a directory.
    Man(clidoc::ManArgs),
}

/// candle's CPU barrier pool (elementwise ops) spins 25,000 iterations before parking after each
/// op; with few cores that spinning takes CPU from the gemm threads. 1,000 measured ~10% more
/// training tokens/s on 2 cores (`benches/compare_train.sh`). A user's own setting wins.
fn tune_candle_threads() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        // SAFETY: called before any thread exists (argument parsing starts none).
        unsafe { std::env::set_var(VAR, "1000") };
    }
}

/// Rayon's pool, set up before anything uses it:
/// - the main thread is worker 0 (`use_current_thread`), so a parallel op called from the
///   training loop runs on the caller and the other workers, instead of being handed to the
///   pool while the caller sleeps and woken again after it: two futex wake-ups per op, which
///   on the 2-core VM cost 25% of a single-threaded training step;
/// - idle workers busy-wait 3 ms for the next op before rayon's yield-and-sleep rounds (the
///   vendored rayon-core's `RAYON_SPIN_US`; OpenMP runtimes spin the same way): the training
///   step is a stream of short parallel ops with serial gaps, and waking a sleeping worker
///   costs more than many of the ops. Measured together on `configs/bench-small.toml`, 2
///   threads: +29% tokens/s (18,408 → 23,689, medians of 5 alternating pairs; medium +24%). A
///   user's own setting wins.
///
/// With one thread the main thread is the pool's only worker, and a job another thread sends to
/// the pool (a probe of `codex status` encoding text, say) while main blocks outside rayon would
/// wait forever; so one thread gets this only where no other thread uses rayon (`train`:
/// `compute_only`: +21% tokens/s on a one-thread small benchmark, the usual MPI rank), and
/// elsewhere rayon's own pool. No spinning with one thread (no idle worker to keep awake).
fn tune_threads(compute_only: bool) {
    tune_candle_threads();
    let env_count = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n > 0)
    };
    let threads = match env_count("RAYON_NUM_THREADS") {
        Some(n) => n,
        None => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            // A rank of an MPI job (Open MPI, MPICH's Hydra) shares the host's CPUs with the
            // host's other ranks: without this every rank would start a thread per CPU.
            let local = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
                .into_iter()
                .find_map(env_count)
                .unwrap_or(1);
            let n = (cpus / local).max(1);
            if local > 1 {
                // candle and codex's kernels read the variable too.
                // SAFETY: called before any thread exists (argument parsing starts none).
                unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
            }
            n
        }
    };
    if threads < 2 && !compute_only {
        return;
    }
    const SPIN: &str = "RAYON_SPIN_US";
    if threads >= 2 && std::env::var_os(SPIN).is_none() {
        // SAFETY: called before any thread exists (argument parsing starts none).
        unsafe { std::env::set_var(SPIN, "3000") };
    }
    // Fails only if the global pool already exists, which nothing before this can have made.
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .use_current_thread()
        .build_global()
    {
        eprintln!("warning: rayon's thread pool: {e}");
    }
}

fn main() -> ExitCode {
    let parsed = clidoc::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not errors.
            let code = if err.use_stderr() {
                codex_core::exit::INTERNAL
            } else {
                0
            };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    tune_threads(matches!(cli.command, Command::Train(_)));
    let ctx = Ctx::new(cli.quiet, cli.verbose, cli.json, cli.color, cli.no_progress);
    ctx.init_logging();
    codex_core_signal_install();

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&ctx, cli.command)));
    match result {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(err)) => {
            if is_broken_pipe(&err) {
                return ExitCode::from(0);
            }
            ctx.print_error(&err);
            ExitCode::from(exit_code_for(&err))
        }
        Err(_) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: internal error (a bug in codex); please report it with the command you ran"
            );
            ExitCode::from(codex_core::exit::INTERNAL)
        }
    }
}

fn run(ctx: &Ctx, command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Tokenizer(args) => commands::tokenizer::run(ctx, args),
        Command::Model(args) => commands::model::run(ctx, args),
        Command::Train(args) => commands::train::run(ctx, args),
        Command::Sweep(args) => commands::sweep::run(ctx, args),
        Command::Eval(args) => commands::eval::run(ctx, args),
        Command::Generate(args) => commands::generate::run(ctx, args),
        Command::Export(args) => commands::export::run(ctx, args),
        Command::Checkpoint(args) => commands::checkpoint::run(ctx, args),
        Command::Metrics(args) => commands::metrics::run(ctx, args),
        Command::RepoMap(args) => commands::repo_map::run(ctx, args),
        Command::Status(args) => commands::status::run(ctx, args),
        Command::Config(args) => commands::config::run(ctx, args),
        Command::Sync(args) => commands::sync::run(ctx, args),
        Command::Plot(args) => commands::plot::run(ctx, args),
        Command::Compare(args) => commands::compare::run(ctx, args),
        Command::Data(args) => commands::data::run(ctx, args),
        Command::Completions(args) => clidoc::completions(&args),
        Command::Man(args) => clidoc::man(ctx, &args),
    }
}

fn codex_core_signal_install() {
    // SIGINT and SIGTERM set the shared flag; long-running commands poll it and stop cleanly.
    let _ = ctrlc::set_handler(codex_core::signal::raise);
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Exit 2 for bugs and environment failures (tensor errors, panics caught in a loop), from
/// every command; 1 for everything the user can fix. Decided by error type, never by text.
fn exit_code_for(err: &anyhow::Error) -> u8 {
    use codex_registry::candle_core;
    let internal = err.chain().any(|e| {
        e.is::<codex_core::error::Internal>()
            || e.is::<candle_core::Error>()
            || e.downcast_ref::<codex_train::Error>()
                .is_some_and(codex_train::Error::is_internal)
            || matches!(
                e.downcast_ref::<codex_registry::RegistryError>(),
                Some(codex_registry::RegistryError::Candle(_))
            )
    });
    if internal {
        codex_core::exit::INTERNAL
    } else {
        codex_core::exit::INVALID
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
        super::clidoc::command().debug_assert();
    }
}
