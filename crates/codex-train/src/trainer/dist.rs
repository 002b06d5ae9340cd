//! What changes when a run has several ranks: which micro-batches a rank reads, how the
//! micro-batch gradients and losses are combined, the parameter-hash check, the agreement on
//! stopping, and each rank's own state in a checkpoint.
//!
//! The global step has `grad_accum × world` micro-batches `m = 0, 1, …`; rank `r` reads
//! `m = j·world + r` at its micro-step `j`. Every micro-batch's loss is scaled by
//! `1 / (grad_accum × world)` before backward, its dropout masks are the ones micro-batch `m`
//! gets in one process, and the gradients are folded in `m` order (`ordered`), so N ranks and
//! one process with `grad_accum × N` compute the same bits.

use super::Live;
use crate::config::TrainingSection;
use crate::error::{Error, Result};
use crate::model::TrainModel;
use crate::optim;
use candle_core::{DType, Tensor};
use codex_dist::Collective;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Forward and backward over this rank's micro-batches of the step starting at `cursor`
/// (advanced past the whole global batch): the gradients of the global mean loss, summed over
/// every rank, in optimizer order, and the global batch's mean loss. `comm_secs` grows by the
/// time spent exchanging gradients and losses.
pub(super) fn accumulate(
    live: &Live,
    tr: &TrainingSection,
    cursor: &mut u64,
    coll: &mut dyn Collective,
    dropout_per_forward: u64,
    comm_secs: &mut f64,
) -> Result<(Vec<Option<Tensor>>, f64)> {
    let (rank, world) = (coll.rank(), coll.world());
    let micro = tr.grad_accum * world;
    let exchange = coll.exchanges_gradients();
    let ordered = exchange && coll.ordered();
    let (seed, base) = live.model.rng_state();
    let mut acc: Vec<Option<Tensor>> = Vec::new();
    let mut losses = Vec::with_capacity(tr.grad_accum);
    for j in 0..tr.grad_accum {
        let m = j * world + rank;
        if world > 1 {
            // The dropout streams micro-batch `m` draws in one process.
            live.model
                .set_rng_state((seed, base + m as u64 * dropout_per_forward));
        }
        let b = live.ds.train_batch(
            *cursor + (m * tr.batch_size) as u64,
            tr.batch_size,
            &live.device,
        )?;
        let loss = live.model.loss(&b.inputs, &b.targets, true)?;
        losses.push(f64::from(loss.to_scalar::<f32>()?));
        let scaled = if micro > 1 {
            (loss / micro as f64)?
        } else {
            loss
        };
        let grads = optim::grads_for(&live.opt, &scaled.backward()?);
        if ordered {
            let t = Instant::now();
            coll.fold_in_rank_order(&mut acc, grads)?;
            *comm_secs += t.elapsed().as_secs_f64();
        } else if acc.is_empty() {
            acc = grads;
        } else {
            for (a, g) in acc.iter_mut().zip(grads) {
                *a = match (a.take(), g) {
                    (Some(x), Some(y)) => Some((x + y)?),
                    (x, y) => x.or(y),
                };
            }
        }
    }
    *cursor += (micro * tr.batch_size) as u64;
    if world == 1 {
        if exchange && !ordered {
            // An engine with one rank (NCCL on a one-GPU machine) still reduces, to prove it.
            let t = Instant::now();
            coll.all_reduce_sum(&mut acc)?;
            *comm_secs += t.elapsed().as_secs_f64();
        }
        let loss_sum = losses.iter().fold(0.0, |s, l| s + l);
        return Ok((acc, loss_sum / micro as f64));
    }
    live.model
        .set_rng_state((seed, base + micro as u64 * dropout_per_forward));
    let t = Instant::now();
    if !ordered {
        coll.all_reduce_sum(&mut acc)?;
    }
    // Every micro-batch's loss, summed in micro-batch order as one process sums them.
    let bits: Vec<u64> = losses.iter().map(|l| l.to_bits()).collect();
    let all = coll.all_gather_u64(&bits)?;
    let g = tr.grad_accum;
    let loss_sum = (0..micro)
        .map(|m| f64::from_bits(all[(m % world) * g + m / world]))
        .fold(0.0, |s, l| s + l);
    *comm_secs += t.elapsed().as_secs_f64();
    Ok((acc, loss_sum / micro as f64))
}

/// How many dropout streams one training forward draws (0 without dropout): one forward on
/// the first batch, with the RNG put back afterwards. Rank `r` needs it before its first
/// micro-batch, which one process reaches after `r` forwards.
pub(super) fn dropout_per_forward(live: &Live, tr: &TrainingSection) -> Result<u64> {
    let before = live.model.rng_state();
    let b = live.ds.train_batch(0, tr.batch_size, &live.device)?;
    live.model.forward(&b.inputs, true)?;
    let after = live.model.rng_state();
    live.model.set_rng_state(before);
    Ok(after.1.wrapping_sub(before.1))
}

/// A 64-bit digest of every trainable parameter's bytes, in optimizer order.
pub(super) fn param_hash(model: &dyn TrainModel) -> Result<u64> {
    use std::io::Write as _;
    let mut h = codex_core::hash::HashingWriter::new(std::io::sink());
    for (name, var) in model.named_trainable() {
        let t = var.as_tensor().flatten_all()?.to_dtype(DType::F32)?;
        let bytes: Vec<u8> = t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        // Writing into a sink cannot fail.
        let _ = h.write_all(name.as_bytes());
        let _ = h.write_all(&bytes);
    }
    let (_, hex, _) = h.finish();
    u64::from_str_radix(&hex[..16], 16).map_err(|e| Error::Internal(format!("parameter hash: {e}")))
}

/// Compares the parameter hash of every rank with rank 0's; a difference stops the run.
pub(super) fn check_params(
    model: &dyn TrainModel,
    coll: &mut dyn Collective,
    step: u64,
) -> Result<()> {
    if coll.world() == 1 {
        return Ok(());
    }
    let all = coll.all_gather_u64(&[param_hash(model)?])?;
    let ranks: Vec<usize> = (1..all.len()).filter(|&r| all[r] != all[0]).collect();
    if ranks.is_empty() {
        return Ok(());
    }
    Err(Error::Diverged { step, ranks })
}

/// Test hook (debug builds only): `CODEX_TEST_PERTURB_RANK=R:S` nudges one weight of rank
/// `R` after step `S`, so the divergence check has something to find.
pub(super) fn maybe_perturb(model: &dyn TrainModel, rank: usize, step: u64) -> Result<()> {
    if !cfg!(debug_assertions) {
        return Ok(());
    }
    let Ok(spec) = std::env::var("CODEX_TEST_PERTURB_RANK") else {
        return Ok(());
    };
    let Some((r, s)) = spec.split_once(':') else {
        return Ok(());
    };
    if r.parse() != Ok(rank) || s.parse() != Ok(step) {
        return Ok(());
    }
    if let Some((_, var)) = model.named_trainable().into_iter().next() {
        let t = var.as_tensor();
        var.set(&(t + 1e-3)?)?;
    }
    Ok(())
}

/// Where this rank's system sampler writes, with the ranks it speaks for; `None` when this
/// rank runs none. One process: `system_metrics.ndjson`, untagged. Several ranks: the first
/// rank of every host samples it, tagged with the host and its ranks; rank 0's host keeps
/// `system_metrics.ndjson`, another host writes `system_metrics.<host>.ndjson` beside it —
/// in the run directory when that directory is shared, else under the same path on that
/// host's own disk.
pub(super) fn host_sampler(
    run: &codex_core::rundir::RunDir,
    rank: usize,
    peers: &Option<codex_dist::HostPeers>,
) -> Option<(std::path::PathBuf, Option<codex_telemetry::HostRanks>)> {
    let Some(p) = peers else {
        return (rank == 0).then(|| (run.system_metrics(), None));
    };
    if p.ranks.first() != Some(&rank) {
        return None;
    }
    let out = if p.ranks.contains(&0) {
        run.system_metrics()
    } else {
        // A host name as one path component.
        let safe: String = p
            .host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        run.root().join(format!("system_metrics.{safe}.ndjson"))
    };
    let tag = codex_telemetry::HostRanks {
        host: p.host.clone(),
        ranks: p.ranks.clone(),
        pids: p.pids.clone(),
    };
    Some((out, Some(tag)))
}

/// Whether any rank wants to stop (Ctrl-C reaches the ranks at different moments; every rank
/// must leave the loop at the same step or the others wait in a collective).
pub(super) fn any_rank(coll: &mut dyn Collective, mine: bool) -> Result<bool> {
    if coll.world() == 1 {
        return Ok(mine);
    }
    Ok(coll.all_gather_u64(&[u64::from(mine)])?.contains(&1))
}

/// One rank's own part of a checkpoint (`rank-R.json`): what it read and its RNG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankState {
    pub rank: usize,
    pub world: usize,
    pub step: u64,
    /// The global cursor after this step (every rank advances it by the global batch).
    pub data_cursor: u64,
    /// The micro-batches of a step this rank reads (`m` with `m mod world == rank`).
    pub micro_batches: Vec<usize>,
    pub dropout_seed: u64,
    pub dropout_counter: u64,
}

/// The file name of rank `r`'s state in a checkpoint.
pub(super) fn rank_file(r: usize) -> String {
    format!("rank-{r}.json")
}

/// Every rank's state, gathered on every rank (rank 0 writes them): `(file name, bytes)`.
pub(super) fn gather_rank_states(
    coll: &mut dyn Collective,
    mine: &RankState,
) -> Result<Vec<(String, Vec<u8>)>> {
    let bytes = serde_json::to_vec_pretty(mine)
        .map_err(|e| Error::Internal(format!("cannot serialize the rank state: {e}")))?;
    if coll.world() == 1 {
        return Ok(Vec::new());
    }
    Ok(coll
        .all_gather_bytes(&bytes)?
        .into_iter()
        .enumerate()
        .map(|(r, b)| (rank_file(r), b))
        .collect())
}

/// Checks the rank states of a checkpoint against its trainer state: rank 0's always, this
/// rank's own when the world size is the same. Returns the world size that wrote it (`None`
/// for a checkpoint of one process, which has no rank states).
pub(super) fn check_rank_states(
    ck: &codex_checkpoint::LoadedCheckpoint,
    data_cursor: u64,
    rank: usize,
    world: usize,
) -> Result<Option<usize>> {
    let bad = |message: String| Error::TrainerState {
        dir: ck.dir.clone(),
        message,
    };
    let read = |r: usize| -> Result<Option<RankState>> {
        let Some(bytes) = ck.file(&rank_file(r)) else {
            return Ok(None);
        };
        let st: RankState =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("{}: {e}", rank_file(r))))?;
        if st.rank != r || st.rank >= st.world || st.step != ck.step {
            return Err(bad(format!(
                "{} says rank {} of {} at step {}, in the checkpoint of step {}",
                rank_file(r),
                st.rank,
                st.world,
                st.step,
                ck.step
            )));
        }
        if st.data_cursor != data_cursor {
            return Err(bad(format!(
                "{} has data cursor {}, trainer_state.json {data_cursor}",
                rank_file(r),
                st.data_cursor
            )));
        }
        Ok(Some(st))
    };
    let Some(first) = read(0)? else {
        return Ok(None);
    };
    if first.world == world && rank > 0 && read(rank)?.is_none() {
        return Err(bad(format!(
            "written by {world} ranks but {} is missing",
            rank_file(rank)
        )));
    }
    Ok(Some(first.world))
}
