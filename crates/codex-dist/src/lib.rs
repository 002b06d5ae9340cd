//! codex-dist: the seam where data-parallel training attaches. Between backward and clipping,
//! every rank's accumulated gradients become the global mean. One process needs nothing, so
//! [`Single`] is a no-op; the MPI (CPU) and NCCL (GPU) engines implement the same trait.
//!
//! The trait works on candle tensors, not a flat host buffer, so a GPU engine can reduce
//! device memory in place without a round trip through the host.

use candle_core::Tensor;

/// What a collective operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectiveError {
    /// A tensor operation (flattening, copying back) failed.
    #[error("tensor operation failed in a collective: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The communication engine reported an error.
    #[error("{engine}: {message}")]
    Engine {
        engine: &'static str,
        message: String,
    },
}

/// Communication among the ranks of one run.
pub trait Collective {
    /// This process's rank, `0..world`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Replaces each rank's gradients (the sum of its micro-batches, already divided by
    /// `grad_accum`) with their mean over all ranks. Parameters are reduced in the given order,
    /// which is the same on every rank, so the result does not depend on arrival order.
    fn all_reduce_mean(&mut self, grads: &mut [Option<Tensor>]) -> Result<(), CollectiveError>;
    /// Waits until every rank reaches this point.
    fn barrier(&mut self) -> Result<(), CollectiveError>;
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
    fn all_reduce_mean(&mut self, _grads: &mut [Option<Tensor>]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_is_rank_zero_of_one_and_leaves_gradients_alone() {
        let mut s = Single;
        let t = Tensor::new(&[1f32, 2.0], &candle_core::Device::Cpu).unwrap();
        let mut grads = vec![Some(t.clone()), None];
        s.all_reduce_mean(&mut grads).unwrap();
        s.barrier().unwrap();
        assert_eq!((s.rank(), s.world()), (0, 1));
        assert_eq!(
            grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap(),
            [1.0, 2.0]
        );
        assert!(grads[1].is_none());
    }
}
