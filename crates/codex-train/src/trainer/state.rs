//! `trainer_state.json`: the loop state a checkpoint restores, as one typed document that is
//! validated against the checkpoint it came from before anything is trusted.

use crate::config::ScheduleKind;
use crate::eval::EvalResult;
use serde::{Deserialize, Serialize};

/// The LR schedule's position when the checkpoint was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub kind: ScheduleKind,
    pub position: u64,
    pub lr: f64,
}

/// Seeds and counters of every random stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    pub data_seed: u64,
    pub init_seed: u64,
    /// How the per-epoch shuffle derives from `data_seed` (documentation for readers).
    pub shuffle: String,
    pub dropout_seed: u64,
    pub dropout_counter: u64,
}

/// The whole `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub schema_version: u32,
    pub run_id: String,
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u64,
    /// Training blocks consumed so far (the next batch starts here).
    pub data_cursor: u64,
    pub optimizer_steps: u64,
    pub schedule: ScheduleState,
    pub rng: RngState,
    pub monitor: String,
    pub metric: Option<f64>,
    pub best_metric: Option<f64>,
    pub evals_since_best: u64,
    pub consecutive_anomalies: u64,
    pub last_eval: Option<EvalResult>,
    /// The step `last_eval` was measured at (absent in checkpoints of codex before 0.1.1).
    #[serde(default)]
    pub last_eval_step: Option<u64>,
    /// The run's first validation loss (absent in older checkpoints).
    #[serde(default)]
    pub first_val_loss: Option<f64>,
    /// The largest number of sequences one step consumed so far, over every segment (absent
    /// in older checkpoints). Bounds `data_cursor`.
    #[serde(default)]
    pub max_samples_per_step: Option<u64>,
    /// Sequences per step over all ranks (`world × batch_size × grad_accum`) when this
    /// checkpoint was written (absent in older checkpoints); a resume that changes it warns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<u64>,
    pub data_hash: String,
    pub config_hash: String,
}

/// Without `max_samples_per_step` (older checkpoints), the cursor may be at most this many
/// sequences per step: far above any real batch, far below the overflow a forged file aims at.
const LEGACY_MAX_SAMPLES_PER_STEP: u64 = 1 << 24;

impl TrainerState {
    /// The state before the first step of a new run.
    pub fn fresh(cfg: &crate::config::TrainConfig, run_id: String) -> Self {
        TrainerState {
            schema_version: codex_core::SCHEMA_VERSION,
            run_id,
            step: 0,
            total_steps: 0,
            epoch: 0,
            data_cursor: 0,
            optimizer_steps: 0,
            schedule: ScheduleState {
                kind: cfg.schedule.kind,
                position: 0,
                lr: 0.0,
            },
            rng: RngState {
                data_seed: cfg.data.seed,
                init_seed: cfg.training.seed,
                shuffle: "chacha8 per epoch (seed ^ f(epoch))".into(),
                dropout_seed: 0,
                dropout_counter: 0,
            },
            monitor: cfg.checkpoint_monitor().name().to_string(),
            metric: None,
            best_metric: None,
            evals_since_best: 0,
            consecutive_anomalies: 0,
            last_eval: None,
            last_eval_step: None,
            first_val_loss: None,
            max_samples_per_step: None,
            global_batch: None,
            data_hash: String::new(),
            config_hash: String::new(),
        }
    }

    /// Parses the verified bytes of `trainer_state.json`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Checks that the state agrees with the checkpoint (`step` from its directory name and
    /// manifest) and with itself. What it refuses could otherwise run a loop for a forged
    /// number of steps or index data far outside the corpus.
    pub fn validate(&self, checkpoint_step: u64) -> Result<(), String> {
        if self.schema_version != codex_core::SCHEMA_VERSION {
            return Err(format!(
                "schema_version {} is not {} (written by another codex version)",
                self.schema_version,
                codex_core::SCHEMA_VERSION
            ));
        }
        if self.step != checkpoint_step {
            return Err(format!(
                "says step {} but the checkpoint is step {checkpoint_step}",
                self.step
            ));
        }
        if self.run_id.is_empty()
            || self.run_id.len() > 200
            || self.run_id.chars().any(char::is_control)
        {
            return Err(format!("run_id {:?} is not a run id", self.run_id));
        }
        if self.optimizer_steps > self.step {
            return Err(format!(
                "optimizer_steps {} exceeds step {}",
                self.optimizer_steps, self.step
            ));
        }
        let per_step = self
            .max_samples_per_step
            .unwrap_or(LEGACY_MAX_SAMPLES_PER_STEP);
        let max_cursor = self.step.saturating_mul(per_step);
        if self.data_cursor < self.step || self.data_cursor > max_cursor {
            return Err(format!(
                "data_cursor {} does not fit step {} (at least one and at most {per_step} sequences a step)",
                self.data_cursor, self.step
            ));
        }
        if self.epoch > self.data_cursor {
            return Err(format!(
                "epoch {} exceeds the data cursor {}",
                self.epoch, self.data_cursor
            ));
        }
        for (name, v) in [
            ("metric", self.metric),
            ("best_metric", self.best_metric),
            ("first_val_loss", self.first_val_loss),
            ("schedule.lr", Some(self.schedule.lr)),
        ] {
            if v.is_some_and(|x| !x.is_finite()) {
                return Err(format!("{name} is not a finite number"));
            }
        }
        if let Some(e) = &self.last_eval {
            let finite = e.val_loss.is_finite() && e.val_ppl.is_finite();
            if !finite || !(0.0..=1.0).contains(&e.val_token_acc) {
                return Err("last_eval holds impossible values".into());
            }
        }
        if self.last_eval_step.is_some_and(|s| s > self.step) {
            return Err("last_eval_step is after the checkpoint's step".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> TrainerState {
        TrainerState {
            schema_version: codex_core::SCHEMA_VERSION,
            run_id: "r-1".into(),
            step: 20,
            total_steps: 25,
            epoch: 0,
            data_cursor: 80,
            optimizer_steps: 20,
            schedule: ScheduleState {
                kind: ScheduleKind::Cosine,
                position: 20,
                lr: 1e-3,
            },
            rng: RngState {
                data_seed: 1,
                init_seed: 2,
                shuffle: "chacha8".into(),
                dropout_seed: 3,
                dropout_counter: 4,
            },
            monitor: "val_loss".into(),
            metric: Some(2.0),
            best_metric: Some(2.0),
            evals_since_best: 0,
            consecutive_anomalies: 0,
            last_eval: None,
            last_eval_step: None,
            first_val_loss: None,
            max_samples_per_step: Some(4),
            global_batch: None,
            data_hash: "d".into(),
            config_hash: "c".into(),
        }
    }

    #[test]
    fn accepts_a_consistent_state_and_round_trips() {
        let s = state();
        s.validate(20).unwrap();
        let bytes = serde_json::to_vec(&s).unwrap();
        assert_eq!(TrainerState::from_slice(&bytes).unwrap(), s);
    }

    #[test]
    fn refuses_states_that_disagree_with_the_checkpoint() {
        let err = state().validate(5).unwrap_err();
        assert!(err.contains("step 20") && err.contains("step 5"), "{err}");
        let mut s = state();
        s.data_cursor = 1_000_000_000_000_000;
        assert!(s.validate(20).unwrap_err().contains("data_cursor"));
        let mut s = state();
        s.optimizer_steps = 21;
        assert!(s.validate(20).is_err());
        let mut s = state();
        s.metric = Some(f64::NAN);
        assert!(s.validate(20).is_err());
        let mut s = state();
        s.max_samples_per_step = None;
        s.data_cursor = 1 << 60;
        assert!(s.validate(20).is_err());
        // A negative step is not a u64: refused at parse time.
        let text = serde_json::to_string(&state())
            .unwrap()
            .replace("\"step\":20", "\"step\":-1");
        assert!(TrainerState::from_slice(text.as_bytes()).is_err());
    }
}
