//! The training loop as a [`Trainer`]: setup (lock, resume, data, model, run record), then a
//! loop of [`Trainer::step`] (forward, backward, collective all-reduce, clip, update),
//! `maybe_eval` and `maybe_checkpoint`, then teardown. Everything it reports is an
//! [`Event`](codex_core::event::Event) emitted into [`Sinks`]; `metrics.ndjson` is written
//! whatever happens, ending every segment with an `end` event.

mod checkpoint;
mod dist;
mod record;
mod state;

pub use dist::RankState;
pub use record::{Provenance, new_run_id};
pub use state::{RngState, ScheduleState, TrainerState};

use crate::config::{SystemMetricsMode, TrainConfig};
use crate::data::{self, Dataset, TextTokenizer};
use crate::error::{Error, Result};
use crate::eval::{EvalResult, evaluate};
use crate::model::{TrainModel, build_model};
use crate::optim::{self, Optimizer};
use crate::schedule::lr_at;
use candle_core::{DType, Device};
use codex_checkpoint::{CheckpointManager, LoadedCheckpoint, RetentionPolicy};
use codex_core::event::{
    Anomaly, AnomalyKind, EventKind, EventSink, NdjsonSink, Progress, RunStatus, RunSummary, Sinks,
    StepMetrics, Warning, WarningKind,
};
use codex_core::ndjson::NdjsonWriter;
use codex_core::rundir::RunDir;
use codex_dist::{Collective, Single};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Where to start from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Resume {
    /// A fresh run (refused when the run directory already has checkpoints).
    #[default]
    No,
    /// The newest checkpoint that verifies.
    Latest,
    /// A given checkpoint directory.
    From(PathBuf),
}

/// Options that are not part of the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: Resume,
    /// Stop as an interrupt would once this many steps are done (checkpoint, `Interrupted`).
    pub stop_at_step: Option<u64>,
    /// The overrides and typed flags the config was built with, for the run record.
    pub overrides: Vec<String>,
}

/// Builds the model for a config and vocabulary (tests pass small stand-ins).
pub type Builder<'b> = dyn Fn(&TrainConfig, usize, &Device) -> Result<Box<dyn TrainModel>> + 'b;

/// Trains as `cfg` says, with the model from the registry. `sinks` receive every event beside
/// `metrics.ndjson` (stdout JSON, a progress display, trackers).
pub fn train<'a>(
    cfg: &TrainConfig,
    opts: &RunOptions,
    sinks: Vec<Box<dyn EventSink + 'a>>,
) -> Result<RunSummary> {
    train_with(cfg, opts, sinks, &build_model)
}

/// [`train`] with a given model builder.
pub fn train_with<'a>(
    cfg: &TrainConfig,
    opts: &RunOptions,
    sinks: Vec<Box<dyn EventSink + 'a>>,
    build: &Builder<'_>,
) -> Result<RunSummary> {
    train_on(cfg, opts, sinks, build, Box::new(Single))
}

/// [`train_with`] as one rank of a data-parallel run: `collective` connects the ranks. Rank
/// 0 owns the run directory (lock, record, metrics, checkpoints); the others only compute,
/// and their `sinks` are dropped.
pub fn train_on<'a>(
    cfg: &TrainConfig,
    opts: &RunOptions,
    sinks: Vec<Box<dyn EventSink + 'a>>,
    build: &Builder<'_>,
    collective: Box<dyn Collective>,
) -> Result<RunSummary> {
    let started = Instant::now();
    // Every step re-allocates the same large buffers; keep them mapped (no per-step faults).
    codex_ops::keep_freed_memory();
    // Nothing is written before the lock is held and the resume point is known: a refused
    // run touches nothing.
    let (mut trainer, resume) = Trainer::open(cfg, opts, sinks, started, collective)?;
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| trainer.run(resume, build)))
            .unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(Error::Internal(format!(
                    "panic in the training loop: {msg}"
                )))
            });
    trainer.teardown(result)
}

/// Loop counters that are not checkpointed.
#[derive(Debug, Default)]
struct Counters {
    tokens: u64,
    train_time: f64,
    last_loss: Option<f64>,
    anomalies: u64,
    /// The last step whose update was applied in this segment.
    last_update_step: Option<u64>,
    last_anomaly: Option<AnomalyKind>,
    /// Steps, seconds, loss sum and tokens since the last step event.
    window: (u64, f64, f64, u64),
    /// Seconds spent exchanging gradients between ranks, and over how many steps.
    comm: (f64, u64),
}

/// What [`Trainer::step`] did.
enum StepOutcome {
    Updated,
    /// The update was skipped (non-finite loss or gradient); `stop` when too many in a row.
    Skipped {
        stop: bool,
    },
}

/// The parts that exist once setup succeeded.
struct Live {
    device: Device,
    ds: Dataset,
    model: Box<dyn TrainModel>,
    opt: Optimizer,
    total_steps: u64,
    config_hash: String,
    sampler: Option<codex_telemetry::SamplerHandle>,
    step_counter: Arc<AtomicU64>,
    /// Training FLOPs per token and the device's peak FLOP/s, for `mfu` (root rank).
    flops: Option<(f64, f64)>,
    /// The hardware energy counter behind `joules_per_token`, where one is readable.
    energy: Option<codex_telemetry::EnergyMeter>,
}

/// One process segment of a run.
pub struct Trainer<'a, 'c> {
    cfg: &'c TrainConfig,
    opts: &'c RunOptions,
    run: RunDir,
    sinks: Sinks<'a>,
    /// Rank 0's (it holds the run lock); `None` on the other ranks.
    manager: Option<CheckpointManager>,
    collective: Box<dyn Collective>,
    /// Dropout streams one training forward draws (set in setup when there are ranks).
    dropout_per_forward: u64,
    /// With several ranks: the ranks on this one's host (set in setup).
    host_peers: Option<codex_dist::HostPeers>,
    started: Instant,
    st: TrainerState,
    live: Option<Live>,
    counters: Counters,
    status: RunStatus,
    resumed_from: Option<PathBuf>,
    last_checkpoint: Option<PathBuf>,
    /// The step of `last_checkpoint`.
    last_checkpoint_step: Option<u64>,
}

impl<'a, 'c> Trainer<'a, 'c> {
    /// Takes the run lock, finds the checkpoint to resume (verified), and opens the record.
    fn open(
        cfg: &'c TrainConfig,
        opts: &'c RunOptions,
        extra: Vec<Box<dyn EventSink + 'a>>,
        started: Instant,
        mut collective: Box<dyn Collective>,
    ) -> Result<(Self, Option<LoadedCheckpoint>)> {
        let run = RunDir::new(&cfg.output.dir);
        let root_rank = collective.rank() == 0;
        let mut manager = if root_rank {
            codex_core::fsutil::create_dir_all(run.root()).map_err(|source| Error::Write {
                path: run.root().to_path_buf(),
                source,
            })?;
            let policy = RetentionPolicy {
                monitor: cfg.checkpoint_monitor().name().to_string(),
                ..cfg.checkpoint.policy()
            };
            // The lock comes first: a second `codex train` on this run stops here, touching
            // nothing.
            Some(CheckpointManager::open(run.root(), policy)?)
        } else {
            None
        };
        // The other ranks look only after rank 0 holds the lock.
        collective.barrier()?;
        let resume = match &opts.resume {
            Resume::No => {
                let existing = codex_checkpoint::list(run.root())
                    .map(|l| l.len())
                    .unwrap_or(0);
                if existing > 0 {
                    return Err(Error::RunExists {
                        dir: run.root().to_path_buf(),
                        checkpoints: existing,
                    });
                }
                None
            }
            Resume::Latest => Some(newest_usable(run.root(), u64::MAX)?.ok_or_else(|| {
                Error::NothingToResume {
                    dir: run.checkpoints(),
                }
            })?),
            Resume::From(p) => Some(codex_checkpoint::load(p)?),
        };
        let mut st = match &resume {
            Some(ck) => {
                if let Some(m) = manager.as_mut() {
                    m.protect(ck.step);
                }
                checkpoint::read_state(ck)?
            }
            None => TrainerState::fresh(cfg, new_run_id(run.root())),
        };
        if collective.world() > 1 {
            // One run id: rank 0's.
            let ids = collective.all_gather_bytes(st.run_id.as_bytes())?;
            st.run_id = String::from_utf8_lossy(&ids[0]).into_owned();
        }
        // Only rank 0 keeps the record; the other ranks' events go nowhere.
        let sinks = if root_rank {
            let writer = if resume.is_some() {
                NdjsonWriter::append(&run.metrics())
            } else {
                NdjsonWriter::create(&run.metrics())
            }
            .map_err(|source| Error::Write {
                path: run.metrics(),
                source,
            })?;
            let mut sinks = Sinks::new(st.run_id.clone(), Some(Box::new(NdjsonSink::new(writer))));
            for s in extra {
                sinks.add(s);
            }
            sinks
        } else {
            Sinks::new(st.run_id.clone(), None)
        };
        let trainer = Trainer {
            cfg,
            opts,
            run,
            sinks,
            manager,
            collective,
            dropout_per_forward: 0,
            host_peers: None,
            started,
            st,
            live: None,
            counters: Counters::default(),
            status: RunStatus::Completed,
            resumed_from: None,
            last_checkpoint: None,
            last_checkpoint_step: None,
        };
        Ok((trainer, resume))
    }

    /// Setup, then the loop.
    fn run(&mut self, resume: Option<LoadedCheckpoint>, build: &Builder<'_>) -> Result<()> {
        self.setup(resume, build)?;
        let total = self.live().total_steps;
        let first_step = self.st.step;
        if self.st.step == 0 && self.cfg.training.eval_at_start {
            // Baseline of the untrained model, so the fall of the validation loss is visible.
            self.eval_now()?;
        }
        while self.st.step < total {
            let stop = codex_core::signal::interrupted()
                || self.opts.stop_at_step.is_some_and(|s| self.st.step >= s);
            if dist::any_rank(self.collective.as_mut(), stop)? {
                self.status = RunStatus::Interrupted;
                break;
            }
            match self.step()? {
                StepOutcome::Skipped { stop: true } => {
                    self.status = RunStatus::AnomalyStopped;
                    break;
                }
                StepOutcome::Skipped { stop: false } => continue,
                StepOutcome::Updated => {}
            }
            let stop_early = self.maybe_eval()?;
            if stop_early {
                self.status = RunStatus::EarlyStopped;
                break;
            }
            self.maybe_checkpoint()?;
        }
        // Final checkpoint (also on interrupt and anomaly stop: the weights are the last good
        // ones), unless this step's is already written.
        let already = self.last_checkpoint.as_ref().and_then(|p| p.file_name())
            == Some(codex_checkpoint::step_dir_name(self.st.step).as_ref());
        // After non-finite losses the weights are the ones that produced them: not worth a
        // checkpoint. (Non-finite gradients with a finite loss leave usable weights.)
        let failing_weights = self.status == RunStatus::AnomalyStopped
            && self.counters.last_anomaly == Some(AnomalyKind::NonFiniteLoss);
        if self.st.step > first_step && !already && !failing_weights {
            self.save_checkpoint()?;
        }
        Ok(())
    }

    fn live(&self) -> &Live {
        self.live
            .as_ref()
            .expect("the loop runs only after setup succeeded")
    }

    /// Data, model, optimizer, restored state, run record, sampler.
    fn setup(&mut self, resume: Option<LoadedCheckpoint>, build: &Builder<'_>) -> Result<()> {
        let cfg = self.cfg;
        let device = crate::device::open_device(&cfg.training.device)?;
        let blas = load_blas(&cfg.training.blas, &device)?;
        let root_rank = self.collective.rank() == 0;
        // Only rank 0 writes the run directory, the data cache included.
        let cache = data::cache_dir_for(cfg, self.run.root()).filter(|_| root_rank);
        let prepared = data::prepare(cfg, cache.as_deref(), &mut |m| tracing::info!("{m}"))?;
        let ds = prepared.dataset;
        let model = build(cfg, ds.vocab_size, &device)?;
        let config_text = codex_core::config::to_toml_string(cfg)
            .map_err(|e| Error::Internal(format!("cannot serialize the config: {e}")))?;
        let config_hash = codex_core::hash::sha256_bytes(config_text.as_bytes());
        if let (TextTokenizer::Hf(t), true) = (&prepared.tokenizer, root_rank) {
            let text = t
                .to_string(true)
                .map_err(|e| Error::Internal(format!("cannot serialize the tokenizer: {e}")))?;
            write_file(&self.run.tokenizer(), text.as_bytes())?;
        }
        let tr = &cfg.training;
        let per_step = (tr.batch_size * tr.grad_accum * self.collective.world()) as u64;
        let total_steps = if tr.steps > 0 {
            tr.steps
        } else {
            tr.epochs
                .checked_mul(ds.n_train() as u64)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "training.epochs = {} over {} training blocks is more steps than codex can count",
                        tr.epochs,
                        ds.n_train()
                    ))
                })?
                .div_ceil(per_step)
                .max(1)
        };
        let mut opt = Optimizer::new(&cfg.optimizer, model.named_trainable())?;
        let mut resumed = None;
        let resume = self.restore_or_fall_back(resume, &ds, model.as_ref(), &mut opt, &device)?;
        if let Some(ck) = &resume {
            let r = self.resume_warnings(ck, &ds, total_steps, opt.steps_taken());
            self.resumed_from = Some(ck.dir.clone());
            // Until this segment writes one, the newest checkpoint is the one it resumed.
            self.last_checkpoint = Some(ck.dir.clone());
            self.last_checkpoint_step = Some(ck.step);
            resumed = Some(r);
            let (rank, world) = (self.collective.rank(), self.collective.world());
            match dist::check_rank_states(ck, self.st.data_cursor, rank, world)? {
                Some(w) if w != world => {
                    tracing::info!("the checkpoint was written by {w} ranks; resuming on {world}")
                }
                _ => {}
            }
            let prev = self.st.global_batch.unwrap_or(per_step);
            if prev != per_step {
                self.warn(
                    WarningKind::DataChanged,
                    format!(
                        "the global batch (ranks × batch_size × grad_accum) changed from {prev} to {per_step} sequences since this checkpoint; the run goes on, but no longer equals an uninterrupted one"
                    ),
                );
            }
        }
        drop(resume);
        self.st.global_batch = Some(per_step);
        self.st.total_steps = total_steps;
        // The monitor in force now ranks this segment's checkpoints.
        if resume_monitor_changed(&self.st, cfg) {
            self.st.metric = self.st.last_eval.map(|e| e.get(cfg.checkpoint_monitor()));
        }
        self.st.monitor = cfg.checkpoint_monitor().name().to_string();
        self.st.data_hash = ds.data_hash.clone();
        self.st.config_hash = config_hash.clone();
        self.st.max_samples_per_step =
            Some(self.st.max_samples_per_step.unwrap_or(0).max(per_step));
        let trainable: u64 = model
            .named_trainable()
            .iter()
            .map(|(_, v)| v.elem_count() as u64)
            .sum();
        // bf16 parameters on the CPU: products in bf16 where the CPU has the instructions (and
        // the config allows), else everything widened to f32 (the registry's
        // `Model::computes_in_f32`) — said here and in the `start` event, never silently. The
        // switch is process-wide, so every run sets it, on or off — on every rank.
        let cpu_bf16 = cfg.training.dtype == crate::config::Dtype::Bf16 && device.is_cpu();
        let want = cpu_bf16 && cfg.training.bf16_matmul;
        let mut bf16_products = codex_ops::bf16gemm::enable(want);
        // The ranks stay one computation: if one rank's CPU lacks the instructions, all compute
        // in f32 (every rank asks, as every rank has the same config).
        if want && dist::any_rank(self.collective.as_mut(), !bf16_products)? {
            bf16_products = codex_ops::bf16gemm::enable(false);
        }
        let world = self.collective.info()?;
        let step_counter = Arc::new(AtomicU64::new(self.st.step));
        // Several ranks: one system sampler per host, on its first rank (dist::host_sampler).
        if world.world > 1 {
            self.host_peers = Some(codex_dist::host_peers(
                self.collective.as_mut(),
                &world.hosts,
            )?);
        }
        if !root_rank {
            let sampler = self.start_sampler(&step_counter);
            self.live = Some(Live {
                device,
                ds,
                model,
                opt,
                total_steps,
                config_hash,
                sampler,
                step_counter,
                flops: None,
                energy: None,
            });
            return self.setup_ranks();
        }
        let invocation = record::write_record(
            &self.run,
            cfg,
            &config_text,
            &config_hash,
            &self.opts.overrides,
            &ds,
            &device,
            trainable,
            self.resumed_from.as_deref(),
            (world.world > 1).then_some((&world, per_step)),
        )?;
        // Efficiency accounting: FLOPs per token of the architecture over the device's peak
        // (given, or probed once), and the energy counter where the hardware has one.
        let per_token = model.train_flops_per_token(cfg.data.context_length);
        let (peak, peak_source) = if cfg.training.peak_tflops > 0.0 {
            (Some(cfg.training.peak_tflops * 1e12), "config")
        } else {
            (probe_peak_flops(&device), "probe")
        };
        let energy = codex_telemetry::EnergyMeter::for_device(match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => Some(gpu_id),
            _ => None,
        });
        let flops = per_token
            .zip(peak)
            .map(|(per_token, peak)| codex_core::event::FlopsInfo {
                per_token,
                peak,
                peak_source: peak_source.to_string(),
                energy_source: energy.as_ref().map(|e| e.source().to_string()),
            });
        let compute_dtype =
            cpu_bf16.then(|| if bf16_products { "bf16" } else { "f32" }.to_string());
        if bf16_products {
            tracing::info!(
                "dtype bf16 on the CPU: parameters stored in bf16 (fp32 master weights in the optimizer), matrix products in bf16 with f32 accumulation (AVX512-BF16), the rest in f32"
            );
        } else if cpu_bf16 {
            let why = if !cfg.training.bf16_matmul {
                "training.bf16_matmul = false"
            } else if codex_ops::bf16gemm::supported() {
                "another rank's CPU has no AVX512-BF16"
            } else {
                "this CPU has no AVX512-BF16"
            };
            tracing::info!(
                "dtype bf16 on the CPU: parameters stored in bf16 (fp32 master weights in the optimizer), compute in f32 ({why})"
            );
        }
        self.sinks.emit(
            self.st.step,
            EventKind::Start(codex_core::event::Start {
                invocation,
                data: record::data_summary(&ds),
                total_steps,
                global_batch: per_step,
                trainable_params: trainable,
                threads: u32::try_from(rayon::current_num_threads()).ok(),
                compute_dtype,
                flops: flops.clone(),
                blas,
                resumed,
            }),
        );
        // The system sampler runs beside the loop; dropping the handle (any exit) joins it.
        let sampler = self.start_sampler(&step_counter);
        self.live = Some(Live {
            device,
            ds,
            model,
            opt,
            total_steps,
            config_hash,
            sampler,
            step_counter,
            flops: flops.as_ref().map(|f| (f.per_token, f.peak)),
            energy,
        });
        self.setup_ranks()
    }

    /// With several ranks: the dropout streams per forward, and proof that every rank starts
    /// from the same parameters.
    fn setup_ranks(&mut self) -> Result<()> {
        if self.collective.world() == 1 {
            return Ok(());
        }
        let live = self.live.as_ref().expect("setup built it");
        self.dropout_per_forward = dist::dropout_per_forward(live, &self.cfg.training)?;
        dist::check_params(live.model.as_ref(), self.collective.as_mut(), self.st.step)
    }

    /// Restores `resume` into the model and optimizer. With `--resume`, a checkpoint that does
    /// not fit (state against data, tensor shapes) is skipped like a corrupt one and the next
    /// older that verifies is tried; returns the one restored.
    fn restore_or_fall_back(
        &mut self,
        resume: Option<LoadedCheckpoint>,
        ds: &Dataset,
        model: &dyn TrainModel,
        opt: &mut Optimizer,
        device: &Device,
    ) -> Result<Option<LoadedCheckpoint>> {
        let mut resume = resume;
        while let Some(ck) = &resume {
            let restored = check_against_data(&self.st, ds)
                .map_err(|message| Error::TrainerState {
                    dir: ck.dir.clone(),
                    message,
                })
                .and_then(|()| checkpoint::restore(ck, &self.st, model, opt, device));
            let Err(e) = restored else { break };
            if self.opts.resume != Resume::Latest {
                return Err(e);
            }
            // `--resume` means the newest checkpoint that works: skip this one like a corrupt
            // one, and try the next older (every tensor is overwritten by the next restore).
            let (failed, step) = (ck.dir.clone(), ck.step);
            self.warn(
                WarningKind::SkippedCheckpoint,
                format!(
                    "skipped checkpoint {}: {}",
                    failed.display(),
                    error_chain(&e)
                ),
            );
            let older = newest_usable(self.run.root(), step)?.ok_or(Error::NothingToResume {
                dir: self.run.checkpoints(),
            })?;
            let mut older = older;
            older.skipped.retain(|(_, why)| why != NEWER_THAN_FAILED);
            if let Some(m) = self.manager.as_mut() {
                m.protect(older.step);
            }
            self.st = checkpoint::read_state(&older)?;
            resume = Some(older);
        }
        Ok(resume)
    }

    /// Warnings about what changed since the checkpoint; the `resumed` part of `start`.
    fn resume_warnings(
        &mut self,
        ck: &LoadedCheckpoint,
        ds: &Dataset,
        total_steps: u64,
        optimizer_updates: u64,
    ) -> codex_core::event::Resumed {
        let step = self.st.step;
        if self.st.data_hash != ds.data_hash {
            self.warn(WarningKind::DataChanged, "the data changed since this checkpoint; the data cursor no longer means the same batches".into());
        }
        if self.st.total_steps != total_steps {
            self.warn(
                WarningKind::ScheduleChanged,
                format!(
                    "training.steps changed from {} to {total_steps} since this checkpoint; the LR schedule differs",
                    self.st.total_steps
                ),
            );
        }
        for (dir, why) in &ck.skipped {
            self.warn(
                WarningKind::SkippedCheckpoint,
                format!("skipped invalid checkpoint {}: {why}", dir.display()),
            );
        }
        codex_core::event::Resumed {
            from: ck.dir.clone(),
            step,
            files_verified: ck.manifest.files.len() as u64,
            optimizer_updates,
            data_cursor: self.st.data_cursor,
            monitor: self.st.metric.map(|_| self.st.monitor.clone()),
            metric: self.st.metric,
        }
    }

    fn warn(&mut self, kind: WarningKind, message: String) {
        self.sinks
            .emit(self.st.step, EventKind::Warning(Warning { kind, message }));
    }

    fn start_sampler(&mut self, step: &Arc<AtomicU64>) -> Option<codex_telemetry::SamplerHandle> {
        let cfg = self.cfg;
        if cfg.system_metrics.mode == SystemMetricsMode::Off {
            return None;
        }
        let (out, host_ranks) =
            dist::host_sampler(&self.run, self.collective.rank(), &self.host_peers)?;
        let sc = codex_telemetry::SamplerConfig {
            interval: std::time::Duration::from_millis(cfg.system_metrics.interval_ms),
            gpu: cfg.system_metrics.mode,
            out,
            run_id: Some(self.st.run_id.clone()),
            step: Some(Arc::clone(step)),
            aggregate: false,
            host_ranks,
        };
        match codex_telemetry::Sampler::start(sc) {
            Ok(h) => Some(h),
            Err(e) => {
                // Optional component: the run goes on and says so.
                self.warn(
                    WarningKind::SystemMetrics,
                    format!("system metrics are off: {e}"),
                );
                None
            }
        }
    }

    /// One optimizer step: forward and backward over `grad_accum` micro-batches, the
    /// collective all-reduce, the anomaly guard, clipping and the update.
    fn step(&mut self) -> Result<StepOutcome> {
        let t0 = Instant::now();
        let tr = &self.cfg.training;
        let live = self.live.as_mut().expect("setup ran");
        let lr = lr_at(
            &self.cfg.schedule,
            self.cfg.optimizer.lr,
            self.st.step,
            live.total_steps,
        );
        // Data-parallel ranks exchange gradients in here, before the norm and the clip.
        let (acc, loss) = dist::accumulate(
            live,
            tr,
            &mut self.st.data_cursor,
            self.collective.as_mut(),
            self.dropout_per_forward,
            &mut self.counters.comm.0,
        )?;
        self.counters.comm.1 += 1;
        let grad_norm = optim::global_norm(&acc)?;
        self.st.step += 1;
        live.step_counter.store(self.st.step, Ordering::Relaxed);
        if !loss.is_finite() || !grad_norm.is_finite() {
            // Anomaly guard: the update is skipped, so the weights stay the last good ones.
            self.st.consecutive_anomalies += 1;
            self.counters.anomalies += 1;
            let stop = self.st.consecutive_anomalies >= tr.max_anomalies;
            let kind = if loss.is_finite() {
                AnomalyKind::NonFiniteGrad
            } else {
                AnomalyKind::NonFiniteLoss
            };
            self.counters.last_anomaly = Some(kind);
            self.sinks.emit(
                self.st.step,
                EventKind::Anomaly(Anomaly {
                    kind,
                    train_loss: loss,
                    grad_norm,
                    consecutive: self.st.consecutive_anomalies,
                    action: "skipped_update".into(),
                }),
            );
            return Ok(StepOutcome::Skipped { stop });
        }
        self.st.consecutive_anomalies = 0;
        self.counters.last_update_step = Some(self.st.step);
        live.opt
            .step(&acc, lr, optim::clip_coef(grad_norm, tr.clip_norm))?;
        drop(acc);
        let rank = self.collective.rank();
        dist::maybe_perturb(live.model.as_ref(), rank, self.st.step)?;
        let every = self.cfg.distributed.check_every;
        if every > 0 && self.st.step.is_multiple_of(every) {
            dist::check_params(live.model.as_ref(), self.collective.as_mut(), self.st.step)?;
        }
        self.record_step(t0.elapsed().as_secs_f64(), loss, lr, grad_norm);
        Ok(StepOutcome::Updated)
    }

    /// Counts a finished update, feeds the live displays, and emits a step event every
    /// `log_every` steps (and at the last).
    fn record_step(&mut self, dt: f64, loss: f64, lr: f64, grad_norm: f64) {
        let tr = &self.cfg.training;
        let step_tokens = (tr.batch_size
            * tr.grad_accum
            * self.collective.world()
            * self.cfg.data.context_length) as u64;
        let c = &mut self.counters;
        c.tokens += step_tokens;
        c.train_time += dt;
        c.last_loss = Some(loss);
        c.window = (
            c.window.0 + 1,
            c.window.1 + dt,
            c.window.2 + loss,
            c.window.3 + step_tokens,
        );
        let live = self.live.as_mut().expect("setup ran");
        let total_steps = live.total_steps;
        self.sinks.progress(&Progress {
            step: self.st.step,
            total_steps,
            train_loss: loss,
            tokens_per_s: step_tokens as f64 / dt.max(1e-9),
        });
        if self.st.step.is_multiple_of(tr.log_every) || self.st.step == total_steps {
            let (n, secs, loss_sum, tokens) = std::mem::take(&mut c.window);
            let epoch = live.ds.epoch_of(self.st.data_cursor.saturating_sub(1));
            let tokens_per_s = tokens as f64 / secs.max(1e-9);
            let mfu = live
                .flops
                .map(|(per_token, peak)| per_token * tokens_per_s / peak);
            // Energy since the previous step event (the first window includes setup).
            let joules_per_token = live
                .energy
                .as_mut()
                .and_then(|e| e.joules_since_last())
                .filter(|_| tokens > 0)
                .map(|j| j / tokens as f64);
            let m = StepMetrics {
                train_loss: loss,
                train_loss_mean: loss_sum / n as f64,
                lr,
                grad_norm,
                tokens_per_s,
                step_time_ms: 1e3 * secs / n as f64,
                epoch,
                tokens_seen: self.st.data_cursor * self.cfg.data.context_length as u64,
                total_steps,
                mfu,
                joules_per_token,
            };
            self.sinks.emit(self.st.step, EventKind::Step(m));
        }
    }

    /// Evaluates when due (every `eval_every` steps and at the last); returns whether early
    /// stopping ends the run.
    fn maybe_eval(&mut self) -> Result<bool> {
        let tr = &self.cfg.training;
        let last = self.st.step == self.live().total_steps;
        if !(last || (tr.eval_every > 0 && self.st.step.is_multiple_of(tr.eval_every))) {
            return Ok(false);
        }
        let e = self.eval_now()?;
        let mon = tr.early_stopping_monitor;
        let v = e.get(mon);
        let better = self
            .st
            .best_metric
            .is_none_or(|b| if mon.higher_is_better() { v > b } else { v < b });
        if better {
            self.st.best_metric = Some(v);
            self.st.evals_since_best = 0;
        } else {
            self.st.evals_since_best += 1;
        }
        Ok(
            tr.early_stopping_patience > 0
                && self.st.evals_since_best >= tr.early_stopping_patience,
        )
    }

    /// Evaluates now and records it.
    fn eval_now(&mut self) -> Result<EvalResult> {
        let tr = &self.cfg.training;
        let live = self.live();
        let e = evaluate(
            live.model.as_ref(),
            &live.ds,
            tr.batch_size,
            tr.eval_batches,
            &live.device,
        )?;
        self.st.first_val_loss.get_or_insert(e.val_loss);
        self.st.last_eval = Some(e);
        self.st.last_eval_step = Some(self.st.step);
        self.st.metric = Some(e.get(self.cfg.checkpoint_monitor()));
        self.sinks.emit(self.st.step, EventKind::Eval(e.metrics()));
        Ok(e)
    }

    /// Checkpoints every `checkpoint.every` steps (the last step's is written by teardown).
    fn maybe_checkpoint(&mut self) -> Result<()> {
        let every = self.cfg.checkpoint.every;
        let last = self.st.step == self.live().total_steps;
        if !last && every > 0 && self.st.step.is_multiple_of(every) {
            self.save_checkpoint()?;
        }
        Ok(())
    }

    /// Writes the checkpoint of this step, unless the weights are not finite: a checkpoint
    /// never holds NaN or infinite weights, so the newest one is always usable.
    fn save_checkpoint(&mut self) -> Result<()> {
        let live = self.live.as_ref().expect("setup ran");
        if !weights_finite(live.model.as_ref())? {
            let newest = self
                .last_checkpoint
                .as_ref()
                .map_or("none".to_string(), |p| p.display().to_string());
            self.warn(
                WarningKind::NonFiniteWeights,
                format!(
                    "the weights are not finite at step {}; no checkpoint written (newest usable checkpoint: {newest})",
                    self.st.step
                ),
            );
            return Ok(());
        }
        self.st.epoch = live.ds.epoch_of(self.st.data_cursor.saturating_sub(1));
        self.st.optimizer_steps = live.opt.steps_taken();
        let pos = self.st.step.min(live.total_steps.saturating_sub(1));
        self.st.schedule = ScheduleState {
            kind: self.cfg.schedule.kind,
            position: self.st.step,
            lr: lr_at(
                &self.cfg.schedule,
                self.cfg.optimizer.lr,
                pos,
                live.total_steps,
            ),
        };
        let (seed, counter) = live.model.rng_state();
        self.st.rng.dropout_seed = seed;
        self.st.rng.dropout_counter = counter;
        let (rank, world) = (self.collective.rank(), self.collective.world());
        let mine = RankState {
            rank,
            world,
            step: self.st.step,
            data_cursor: self.st.data_cursor,
            micro_batches: (rank..self.cfg.training.grad_accum * world)
                .step_by(world)
                .collect(),
            dropout_seed: seed,
            dropout_counter: counter,
        };
        // Every rank's part reaches rank 0, which writes them with the rest and the manifest
        // last: a checkpoint is complete only when every rank's part is.
        let ranks = dist::gather_rank_states(self.collective.as_mut(), &mine)?;
        let Some(manager) = self.manager.as_mut() else {
            self.last_checkpoint = Some(
                self.run
                    .checkpoints()
                    .join(codex_checkpoint::step_dir_name(self.st.step)),
            );
            self.last_checkpoint_step = Some(self.st.step);
            // Rank 0 reports a failed write; the others must not run ahead of it.
            return Ok(self.collective.barrier()?);
        };
        let saved = checkpoint::save(
            manager,
            live.model.as_ref(),
            &live.opt,
            &self.st,
            &live.config_hash,
            ranks,
        )?;
        self.collective.barrier()?;
        self.sinks
            .emit(self.st.step, EventKind::Checkpoint(saved.event));
        self.sinks.flush(self.st.step);
        self.last_checkpoint = Some(saved.dir);
        self.last_checkpoint_step = Some(self.st.step);
        Ok(())
    }

    /// Stops the sampler, writes the `end` event and syncs the record, whatever happened.
    fn teardown(mut self, result: Result<()>) -> Result<RunSummary> {
        let ((secs, n), world) = (self.counters.comm, self.collective.world());
        if world > 1 && n > 0 && self.collective.rank() == 0 {
            tracing::info!(
                "{world} ranks: {:.2} ms/step exchanging gradients ({:.1}% of the step time)",
                1e3 * secs / n as f64,
                100.0 * secs / self.counters.train_time.max(1e-9)
            );
        }
        if let Some(h) = self.live.as_mut().and_then(|l| l.sampler.take()) {
            let summary = h.stop();
            for w in summary.warnings {
                self.warn(WarningKind::SystemMetrics, format!("system metrics: {w}"));
            }
        }
        let e = self.st.last_eval;
        let c = &self.counters;
        let mut summary = RunSummary {
            run_dir: self.run.root().to_path_buf(),
            run_id: self.st.run_id.clone(),
            status: self.status,
            steps: self.st.step,
            total_steps: self
                .live
                .as_ref()
                .map_or(self.st.total_steps, |l| l.total_steps),
            tokens: c.tokens,
            tokens_per_s: if c.train_time > 0.0 {
                c.tokens as f64 / c.train_time
            } else {
                0.0
            },
            train_loss: c.last_loss,
            val_loss: e.map(|e| e.val_loss),
            val_step: e.and(self.st.last_eval_step),
            val_ppl: e.map(|e| e.val_ppl),
            val_token_acc: e.map(|e| e.val_token_acc),
            first_val_loss: self.st.first_val_loss,
            resumed_from: self.resumed_from.clone(),
            last_checkpoint: self.last_checkpoint.clone(),
            last_checkpoint_step: self.last_checkpoint_step,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            anomalies: c.anomalies,
            last_update_step: c.last_update_step,
            peak_rss_bytes: peak_rss_bytes(),
            error: None,
            metrics_write_error: None,
        };
        if let Err(err) = &result {
            summary.status = RunStatus::Failed;
            summary.error = Some(error_chain(err));
        }
        summary.metrics_write_error = self.sinks.record_error().map(str::to_string);
        self.sinks
            .emit(summary.steps, EventKind::End(summary.clone()));
        self.sinks.flush(summary.steps);
        self.sinks.finish();
        result.map(|()| summary)
    }
}

/// Why [`newest_usable`] passes over checkpoints at or after one that failed to restore (they
/// were reported already).
const NEWER_THAN_FAILED: &str = "newer than one that failed to restore";

/// The newest checkpoint before `below` (a step) whose files verify and whose
/// `trainer_state.json` is valid; the ones skipped are listed in its `skipped`.
fn newest_usable(run: &Path, below: u64) -> Result<Option<LoadedCheckpoint>> {
    let mut accept = |ck: &LoadedCheckpoint| {
        if ck.step >= below {
            return Err(NEWER_THAN_FAILED.to_string());
        }
        checkpoint::read_state(ck)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    Ok(codex_checkpoint::latest_valid_where(run, &mut accept)?)
}

/// A state written for this very data must agree with it: the epoch follows from the cursor.
/// (After a data change the cursor means other batches; `resume_warnings` says so.)
fn check_against_data(st: &TrainerState, ds: &Dataset) -> std::result::Result<(), String> {
    if st.data_hash == ds.data_hash && st.epoch != ds.epoch_of(st.data_cursor.saturating_sub(1)) {
        return Err(format!(
            "epoch {} does not follow from data cursor {} over {} training blocks",
            st.epoch,
            st.data_cursor,
            ds.n_train()
        ));
    }
    Ok(())
}

/// Whether every trainable weight is finite (`w × 0` is 0 for finite values and NaN for the
/// rest, so the sum is NaN exactly when one is not finite; summing `w` itself could overflow).
fn weights_finite(model: &dyn TrainModel) -> Result<bool> {
    for (_, var) in model.named_trainable() {
        let t = var.as_tensor();
        let s = (t * 0.0)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        if !s.is_finite() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether the checkpoint's metric was of another monitor than the config's.
fn resume_monitor_changed(st: &TrainerState, cfg: &TrainConfig) -> bool {
    st.metric.is_some() && st.last_eval.is_some() && st.monitor != cfg.checkpoint_monitor().name()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    codex_core::fsutil::atomic_write(path, bytes).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Peak resident set size of this process (`VmHWM`), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `training.blas`: loads OpenBLAS or MKL for the fused ops' large products (CPU only), logged and
/// recorded in the `start` event. A library that cannot be used is the user's to fix (exit 1).
fn load_blas(spec: &str, device: &Device) -> Result<Option<Box<codex_core::event::BlasInfo>>> {
    if spec.is_empty() {
        return Ok(None);
    }
    if !device.is_cpu() {
        tracing::warn!("training.blas = {spec:?} is for CPU training; unused on this device");
        return Ok(None);
    }
    let info = codex_ops::blas::load(std::path::Path::new(spec))
        .map_err(|e| Error::Invalid(format!("training.blas: {e}")))?;
    tracing::info!("GEMM: {} ({}) from {}", info.config, info.core, info.path);
    Ok(Some(Box::new(codex_core::event::BlasInfo {
        path: info.path,
        config: info.config,
        core: info.core,
    })))
}

/// The device's f32 matmul throughput, FLOP/s: a 512³ matmul (the kernels training uses) timed
/// eight times after a warm-up, best of. About 10 ms on a CPU; `None` if the device fails it.
fn probe_peak_flops(device: &Device) -> Option<f64> {
    const N: usize = 512;
    let a = candle_core::Tensor::ones((N, N), candle_core::DType::F32, device).ok()?;
    let b = candle_core::Tensor::ones((N, N), candle_core::DType::F32, device).ok()?;
    a.matmul(&b).ok()?;
    device.synchronize().ok()?;
    let mut best = f64::MAX;
    for _ in 0..8 {
        let t = std::time::Instant::now();
        a.matmul(&b).ok()?;
        device.synchronize().ok()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best > 0.0).then(|| 2.0 * (N * N * N) as f64 / best)
}
