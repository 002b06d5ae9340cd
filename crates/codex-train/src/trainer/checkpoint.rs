//! Writing the trainer's state into a checkpoint and reading it back, verified and validated.

use super::state::TrainerState;
use crate::error::{Error, Result};
use crate::eval::load_weights;
use crate::model::TrainModel;
use crate::optim::{Optimizer, StateTensor};
use candle_core::{DType, Device, Tensor};
use codex_checkpoint::{
    CheckpointFile, CheckpointManager, CheckpointSpec, LoadedCheckpoint, TensorData,
};
use codex_core::event::CheckpointSaved;
use std::path::PathBuf;
use std::time::Instant;

/// A written checkpoint.
pub(super) struct Saved {
    pub dir: PathBuf,
    pub event: CheckpointSaved,
}

/// The typed, validated `trainer_state.json` of a verified checkpoint.
pub(super) fn read_state(ck: &LoadedCheckpoint) -> Result<TrainerState> {
    let bad = |message: String| Error::TrainerState {
        dir: ck.dir.clone(),
        message,
    };
    let bytes = ck
        .file(codex_checkpoint::format::TRAINER_STATE)
        .ok_or_else(|| bad("missing".into()))?;
    let st = TrainerState::from_slice(bytes).map_err(bad)?;
    st.validate(ck.step).map_err(bad)?;
    Ok(st)
}

/// Restores weights, optimizer moments and the dropout RNG from `ck` (whose state is `st`).
pub(super) fn restore(
    ck: &LoadedCheckpoint,
    st: &TrainerState,
    model: &dyn TrainModel,
    opt: &mut Optimizer,
    device: &Device,
) -> Result<()> {
    load_weights(ck, model, device)?;
    let mut state = Vec::new();
    for (name, view) in ck.tensors(codex_checkpoint::OPTIMIZER_FILE)? {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::CheckpointContents(format!(
                "optimizer tensor `{name}` is not f32"
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        state.push(StateTensor {
            name,
            shape: view.shape().to_vec(),
            data: data.into(),
        });
    }
    opt.load_state(&state, st.optimizer_steps)?;
    model.set_rng_state((st.rng.dropout_seed, st.rng.dropout_counter));
    Ok(())
}

/// Writes the model, the optimizer, `st` and every rank's own state (`ranks`: file name and
/// bytes; none for one process) as the checkpoint of `st.step`.
pub(super) fn save(
    manager: &mut CheckpointManager,
    model: &dyn TrainModel,
    opt: &Optimizer,
    st: &TrainerState,
    config_hash: &str,
    ranks: Vec<(String, Vec<u8>)>,
) -> Result<Saved> {
    let t0 = Instant::now();
    let weights = model
        .state_for_save()?
        .into_iter()
        .map(|(n, t)| tensor_data(n, &t))
        .collect::<Result<Vec<_>>>()?;
    let optimizer: Vec<TensorData<'_>> = opt
        .state()
        .into_iter()
        .map(|s| TensorData::f32(s.name, s.shape, s.data))
        .collect();
    let mut files = vec![
        CheckpointFile::safetensors(model.weights_file(), weights),
        CheckpointFile::safetensors(codex_checkpoint::OPTIMIZER_FILE, optimizer),
    ];
    for (name, bytes) in model.extra_files().into_iter().chain(ranks) {
        files.push(CheckpointFile::bytes(name, bytes));
    }
    let trainer_state = serde_json::to_value(st)
        .map_err(|e| Error::Internal(format!("cannot serialize the trainer state: {e}")))?;
    let saved = manager.save(CheckpointSpec {
        step: st.step,
        metric: st.metric,
        files,
        trainer_state,
        config_hash: config_hash.to_string(),
    })?;
    Ok(Saved {
        dir: saved.dir.clone(),
        event: CheckpointSaved {
            path: saved.dir,
            size_bytes: saved.size_bytes,
            metric: st.metric,
            monitor: st.monitor.clone(),
            deleted_steps: saved.deleted,
            save_time_ms: 1e3 * t0.elapsed().as_secs_f64(),
        },
    })
}

fn tensor_data(name: String, t: &Tensor) -> Result<TensorData<'static>> {
    let shape = t.dims().to_vec();
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => TensorData::f32(name, shape, flat.to_vec1::<f32>()?),
        DType::BF16 => {
            let v = flat.to_vec1::<half::bf16>()?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            TensorData::raw(name, codex_checkpoint::Dtype::BF16, shape, bytes)
        }
        DType::F16 => {
            let v = flat.to_vec1::<half::f16>()?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            TensorData::raw(name, codex_checkpoint::Dtype::F16, shape, bytes)
        }
        other => {
            return Err(Error::Internal(format!(
                "cannot checkpoint tensor `{name}` of dtype {other:?}"
            )));
        }
    })
}
