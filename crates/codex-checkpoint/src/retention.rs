//! Retention as a pure function: given the checkpoints that exist and their metrics, decide
//! which to keep and why. No disk access here; [`crate::CheckpointManager`] carries it out.

use crate::error::{CheckpointError, Result};
use codex_core::config::{ConfigIssue, Validate};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Whether a lower or a higher monitored metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Lower is better (losses).
    #[default]
    Min,
    /// Higher is better (accuracies).
    Max,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "min" => Ok(Self::Min),
            "max" => Ok(Self::Max),
            other => Err(format!("mode must be `min` or `max`, got `{other}`")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Min => "min",
            Self::Max => "max",
        })
    }
}

/// Which checkpoints to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Keep the K best by `monitor` (0 = none).
    pub keep_best: usize,
    /// Keep the N newest (at least 1: the newest is what resume uses).
    pub keep_last: usize,
    /// Never delete checkpoints whose step is a multiple of M (0 = none pinned).
    pub pin_every: u64,
    /// Whether lower or higher `monitor` is better.
    pub mode: Mode,
    /// The metric ranked for best-K (`val_loss`).
    pub monitor: String,
}

impl Default for RetentionPolicy {
    /// Keep the best 1 by `val_loss` (min) and the last 2.
    fn default() -> Self {
        Self {
            keep_best: 1,
            keep_last: 2,
            pin_every: 0,
            mode: Mode::Min,
            monitor: "val_loss".into(),
        }
    }
}

impl RetentionPolicy {
    /// Checks the values.
    ///
    /// # Errors
    /// [`CheckpointError::Policy`] when `keep_last` is 0 or `monitor` is empty.
    pub fn validate(&self) -> Result<()> {
        if self.keep_last == 0 {
            return Err(CheckpointError::Policy(
                "keep_last = 0: at least the newest checkpoint must be kept (resume starts from it)".into(),
            ));
        }
        if self.keep_best > 0 && self.monitor.trim().is_empty() {
            return Err(CheckpointError::Policy(
                "keep_best > 0 needs a metric to monitor, got an empty `monitor`".into(),
            ));
        }
        Ok(())
    }
}

/// Why a checkpoint is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeptBecause {
    /// Among the best K by the monitored metric.
    Best,
    /// Among the last N.
    Last,
    /// Its step is a multiple of `pin_every`.
    Pinned,
    /// The run resumed from it.
    Resumed,
}

impl fmt::Display for KeptBecause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Best => "best",
            Self::Last => "last",
            Self::Pinned => "pinned",
            Self::Resumed => "resumed",
        })
    }
}

/// One existing checkpoint as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Its step.
    pub step: u64,
    /// Its monitored metric (`None` or non-finite: not ranked).
    pub metric: Option<f64>,
}

/// The decision for one checkpoint: keep (with reasons) or delete (no reasons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The checkpoint's step.
    pub step: u64,
    /// Why it is kept; empty means delete.
    pub kept_because: Vec<KeptBecause>,
}

impl Decision {
    /// Whether the checkpoint is deleted.
    pub fn delete(&self) -> bool {
        self.kept_because.is_empty()
    }
}

/// Decides, for every candidate, whether it is kept and why. Sorted by step; duplicates of a
/// step are treated as one. `protect` (the checkpoint resumed from) is always kept.
pub fn plan(
    policy: &RetentionPolicy,
    candidates: &[Candidate],
    protect: Option<u64>,
) -> Vec<Decision> {
    let mut cands: Vec<Candidate> = candidates.to_vec();
    cands.sort_by_key(|c| c.step);
    cands.dedup_by_key(|c| c.step);

    let mut ranked: Vec<(u64, f64)> = cands
        .iter()
        .filter_map(|c| c.metric.filter(|m| m.is_finite()).map(|m| (c.step, m)))
        .collect();
    // Best first; on a tie the newer checkpoint wins (it has seen more data).
    ranked.sort_by(|a, b| {
        let by_metric = a.1.partial_cmp(&b.1).unwrap_or(Ordering::Equal);
        let by_metric = if policy.mode == Mode::Max {
            by_metric.reverse()
        } else {
            by_metric
        };
        by_metric.then(b.0.cmp(&a.0))
    });
    let best: Vec<u64> = ranked.iter().take(policy.keep_best).map(|r| r.0).collect();
    let last: Vec<u64> = cands
        .iter()
        .rev()
        .take(policy.keep_last)
        .map(|c| c.step)
        .collect();

    cands
        .iter()
        .map(|c| {
            let mut why = Vec::new();
            if best.contains(&c.step) {
                why.push(KeptBecause::Best);
            }
            if last.contains(&c.step) {
                why.push(KeptBecause::Last);
            }
            if policy.pin_every > 0 && c.step % policy.pin_every == 0 {
                why.push(KeptBecause::Pinned);
            }
            if protect == Some(c.step) {
                why.push(KeptBecause::Resumed);
            }
            Decision {
                step: c.step,
                kept_because: why,
            }
        })
        .collect()
}

/// The `[checkpoint]` section of a training config: the one definition, used by the trainer
/// and by `codex checkpoint prune`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckpointConfig {
    /// Save every N optimizer steps (and at the end); 0 = only at the end.
    #[serde(alias = "every_n_steps")]
    pub every: u64,
    /// Keep the K best by `monitor`.
    pub keep_best: usize,
    /// Keep the N newest.
    pub keep_last: usize,
    /// Never delete steps that are multiples of M (0 = off).
    pub pin_every: u64,
    /// The metric ranked for best-K.
    pub monitor: String,
    /// `min` or `max`.
    pub mode: Mode,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        let p = RetentionPolicy::default();
        Self {
            every: 100,
            keep_best: p.keep_best,
            keep_last: p.keep_last,
            pin_every: p.pin_every,
            monitor: p.monitor,
            mode: p.mode,
        }
    }
}

impl CheckpointConfig {
    /// The retention part.
    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            keep_best: self.keep_best,
            keep_last: self.keep_last,
            pin_every: self.pin_every,
            mode: self.mode,
            monitor: self.monitor.clone(),
        }
    }
}

impl Validate for CheckpointConfig {
    fn validate(&self, issues: &mut Vec<ConfigIssue>) {
        if self.keep_last == 0 {
            issues.push(ConfigIssue::invalid(
                "checkpoint.keep_last",
                0,
                "must be at least 1 (resume starts from the newest checkpoint)",
            ));
        }
        if self.keep_best > 0 && self.monitor.trim().is_empty() {
            issues.push(ConfigIssue::invalid(
                "checkpoint.monitor",
                "\"\"",
                "must name a metric when keep_best > 0",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(step: u64, metric: Option<f64>) -> Candidate {
        Candidate { step, metric }
    }

    fn kept(d: &[Decision]) -> Vec<u64> {
        d.iter().filter(|d| !d.delete()).map(|d| d.step).collect()
    }

    fn why(d: &[Decision], step: u64) -> Vec<KeptBecause> {
        d.iter()
            .find(|d| d.step == step)
            .unwrap()
            .kept_because
            .clone()
    }

    fn policy(keep_best: usize, keep_last: usize, pin_every: u64, mode: Mode) -> RetentionPolicy {
        RetentionPolicy {
            keep_best,
            keep_last,
            pin_every,
            mode,
            monitor: "val_loss".into(),
        }
    }

    #[test]
    fn best_k_min_plus_last_n() {
        let cands = [
            c(100, Some(3.0)),
            c(200, Some(1.0)),
            c(300, Some(2.0)),
            c(400, Some(5.0)),
            c(500, Some(4.0)),
        ];
        let d = plan(&policy(2, 1, 0, Mode::Min), &cands, None);
        assert_eq!(kept(&d), vec![200, 300, 500]);
        assert_eq!(why(&d, 200), vec![KeptBecause::Best]);
        assert_eq!(why(&d, 500), vec![KeptBecause::Last]);
        assert!(why(&d, 100).is_empty());
    }

    #[test]
    fn best_k_max() {
        let cands = [
            c(1, Some(0.1)),
            c(2, Some(0.9)),
            c(3, Some(0.5)),
            c(4, Some(0.2)),
        ];
        let d = plan(&policy(1, 1, 0, Mode::Max), &cands, None);
        assert_eq!(kept(&d), vec![2, 4]);
    }

    #[test]
    fn best_and_last_can_coincide() {
        let cands = [c(1, Some(3.0)), c(2, Some(1.0))];
        let d = plan(&policy(1, 1, 0, Mode::Min), &cands, None);
        assert_eq!(kept(&d), vec![2]);
        assert_eq!(why(&d, 2), vec![KeptBecause::Best, KeptBecause::Last]);
    }

    #[test]
    fn missing_and_nan_metrics_are_never_best() {
        let cands = [
            c(1, None),
            c(2, Some(f64::NAN)),
            c(3, Some(9.0)),
            c(4, None),
        ];
        let d = plan(&policy(1, 1, 0, Mode::Min), &cands, None);
        assert_eq!(kept(&d), vec![3, 4]);
        assert_eq!(why(&d, 3), vec![KeptBecause::Best]);
    }

    #[test]
    fn ties_prefer_the_newer_step() {
        let cands = [c(1, Some(1.0)), c(2, Some(1.0)), c(3, Some(5.0))];
        let d = plan(&policy(1, 1, 0, Mode::Min), &cands, None);
        assert_eq!(kept(&d), vec![2, 3]);
    }

    #[test]
    fn pinned_and_protected_are_never_deleted() {
        let cands: Vec<Candidate> = (1..=10).map(|i| c(i * 100, Some(i as f64))).collect();
        let d = plan(&policy(1, 2, 500, Mode::Min), &cands, Some(300));
        assert_eq!(kept(&d), vec![100, 300, 500, 900, 1000]);
        assert_eq!(why(&d, 300), vec![KeptBecause::Resumed]);
        assert_eq!(why(&d, 500), vec![KeptBecause::Pinned]);
        assert_eq!(why(&d, 1000), vec![KeptBecause::Last, KeptBecause::Pinned]);
    }

    #[test]
    fn fewer_candidates_than_limits_keeps_all_and_empty_is_empty() {
        let d = plan(
            &policy(3, 3, 0, Mode::Min),
            &[c(5, None), c(1, Some(1.0))],
            None,
        );
        assert_eq!(kept(&d), vec![1, 5]);
        assert!(plan(&policy(3, 3, 0, Mode::Min), &[], None).is_empty());
    }

    #[test]
    fn policy_validation() {
        assert!(policy(1, 0, 0, Mode::Min).validate().is_err());
        let mut p = policy(1, 1, 0, Mode::Min);
        p.monitor = String::new();
        assert!(p.validate().is_err());
        assert!(RetentionPolicy::default().validate().is_ok());
        let mut issues = Vec::new();
        CheckpointConfig {
            keep_last: 0,
            ..Default::default()
        }
        .validate(&mut issues);
        assert_eq!(issues[0].path, "checkpoint.keep_last");
    }

    #[test]
    fn config_section_parses_from_toml() {
        let cfg: CheckpointConfig =
            toml::from_str("keep_best = 3\nmode = \"max\"\nmonitor = \"acc\"").unwrap();
        assert_eq!(
            cfg.policy(),
            RetentionPolicy {
                keep_best: 3,
                keep_last: 2,
                pin_every: 0,
                mode: Mode::Max,
                monitor: "acc".into()
            }
        );
        assert!(toml::from_str::<CheckpointConfig>("mode = \"median\"").is_err());
    }
}
