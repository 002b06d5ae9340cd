//! The seam where data-parallel training attaches: between backward and clipping, every rank's
//! accumulated gradients become the global mean. One process needs nothing, so [`Single`] is a
//! no-op; the MPI and NCCL engines implement the same trait.

use crate::error::Result;
use candle_core::Tensor;

/// Communication among the ranks of one run.
pub trait Collective {
    /// This process's rank, `0..world`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Replaces each rank's gradients (the sum of its micro-batches, already divided by
    /// `grad_accum`) with their mean over all ranks. Parameters are reduced in the given order,
    /// which is the same on every rank, so the result does not depend on arrival order.
    fn all_reduce_mean(&mut self, grads: &mut [Option<Tensor>]) -> Result<()>;
    /// Waits until every rank reaches this point.
    fn barrier(&mut self) -> Result<()>;
}

/// One process: nothing to exchange.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_mean(&mut self, _grads: &mut [Option<Tensor>]) -> Result<()> {
        Ok(())
    }
    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }
}
