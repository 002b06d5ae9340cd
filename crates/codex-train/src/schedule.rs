//! Learning-rate schedules: constant, linear decay and cosine decay, each after a linear
//! warm-up. A pure function of the step, so resuming needs only the step number.

use crate::config::{ScheduleKind, ScheduleSection};

/// The LR at optimizer step `step` (0-based) of `total` steps, with peak `peak`.
///
/// Warm-up goes linearly from `peak / warmup` at step 0 to `peak` at step `warmup - 1`
/// (never 0, so the first update does something); the decay then runs from `peak` at step
/// `warmup` to `peak * min_lr_ratio` at step `total - 1`.
pub fn lr_at(s: &ScheduleSection, peak: f64, step: u64, total: u64) -> f64 {
    if step < s.warmup_steps {
        return peak * (step + 1) as f64 / s.warmup_steps as f64;
    }
    let floor = peak * s.min_lr_ratio;
    let span = total.saturating_sub(s.warmup_steps).saturating_sub(1);
    let progress = if span == 0 {
        0.0
    } else {
        ((step - s.warmup_steps) as f64 / span as f64).min(1.0)
    };
    match s.kind {
        ScheduleKind::Constant => peak,
        ScheduleKind::Linear => peak + (floor - peak) * progress,
        ScheduleKind::Cosine => {
            floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: u64) -> ScheduleSection {
        ScheduleSection {
            kind,
            warmup_steps: warmup,
            min_lr_ratio: 0.1,
        }
    }

    #[test]
    fn warmup_then_constant() {
        let s = sched(ScheduleKind::Constant, 4);
        let lrs: Vec<f64> = (0..6).map(|i| lr_at(&s, 1.0, i, 10)).collect();
        assert_eq!(lrs, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn linear_and_cosine_endpoints() {
        for kind in [ScheduleKind::Linear, ScheduleKind::Cosine] {
            let s = sched(kind, 2);
            assert_eq!(lr_at(&s, 2.0, 2, 12), 2.0);
            assert!((lr_at(&s, 2.0, 11, 12) - 0.2).abs() < 1e-12);
            assert!(
                (lr_at(&s, 2.0, 50, 12) - 0.2).abs() < 1e-12,
                "past the end stays at the floor"
            );
        }
        // Midpoint: linear and cosine agree at half-way (both 0.55 of peak for ratio 0.1).
        let lin = lr_at(&sched(ScheduleKind::Linear, 0), 1.0, 5, 11);
        let cos = lr_at(&sched(ScheduleKind::Cosine, 0), 1.0, 5, 11);
        assert!((lin - 0.55).abs() < 1e-12 && (cos - 0.55).abs() < 1e-12);
        // Cosine stays above linear in the first half.
        assert!(
            lr_at(&sched(ScheduleKind::Cosine, 0), 1.0, 2, 11)
                > lr_at(&sched(ScheduleKind::Linear, 0), 1.0, 2, 11)
        );
    }
}
