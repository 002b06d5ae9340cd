//! codex-dist: the seam where data-parallel training attaches. Every rank computes the
//! gradients of its micro-batches; before the norm and the clip they become the gradients of
//! the whole global batch. One process needs nothing, so [`Single`] is a no-op; the MPI
//! engine (`mpi`, feature `mpi`) and the NCCL engine for CUDA tensors (`nccl`, feature
//! `nccl`) implement the same trait.
//!
//! Two ways to sum, chosen per run:
//! - **ordered** ([`Collective::fold_in_rank_order`], after every micro-step): each rank's
//!   micro-batch gradients are gathered and added to the accumulator in rank order. Rank `r`
//!   holds micro-batch `j·world + r` at micro-step `j`, so the additions happen in micro-batch
//!   order — exactly the left fold `((g0 + g1) + g2) + …` of one process that accumulates
//!   `grad_accum × world` micro-batches. With the loss of every micro-batch scaled by
//!   `1 / (grad_accum × world)` on both paths, N ranks are bit-identical to one process.
//! - **native** ([`Collective::all_reduce_sum`], once per step): the library's all-reduce over
//!   each rank's local sum; faster, in the library's order.
//!
//! The trait works on candle tensors, not a flat host buffer, so a GPU engine can reduce
//! device memory in place without a round trip through the host.

pub mod flat;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

pub use flat::Flat;

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
    /// The ranks disagree where they must agree (gradient layout, buffer sizes).
    #[error("ranks disagree: {0}")]
    Mismatch(String),
}

/// Facts about the ranks of a run, for its provenance.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct WorldInfo {
    /// `single`, `mpi` or `nccl`.
    pub engine: String,
    pub world: usize,
    /// Host name of every rank, by rank.
    pub hosts: Vec<String>,
    /// The communication library's own version string (MPI_Get_library_version).
    pub library: Option<String>,
    /// `ordered` or `native`.
    pub reduce: String,
}

/// Communication among the ranks of one run.
pub trait Collective {
    /// This process's rank, `0..world`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Whether the trainer sends its gradients through this collective: whenever there are
    /// several ranks, and on an engine that proves itself with one rank too (NCCL: a
    /// one-rank run on a one-GPU machine must go through NCCL to be compared with the plain
    /// run).
    fn exchanges_gradients(&self) -> bool {
        self.world() > 1
    }
    /// Whether gradients are folded in micro-batch order after every micro-step
    /// ([`Self::fold_in_rank_order`]) rather than all-reduced once per step.
    fn ordered(&self) -> bool {
        true
    }
    /// Adds every rank's `grads` of this micro-step to `acc`, rank 0's first: for each
    /// parameter `acc = ((acc + g_0) + g_1) + …` (an absent `acc` starts as `g_0`). `acc` is
    /// empty before the first micro-step. Every rank ends with the same `acc`.
    fn fold_in_rank_order(
        &mut self,
        acc: &mut Vec<Option<Tensor>>,
        grads: Vec<Option<Tensor>>,
    ) -> Result<(), CollectiveError>;
    /// Replaces each rank's gradients (its local sum, already scaled by
    /// `1 / (grad_accum × world)`) with their sum over all ranks.
    fn all_reduce_sum(&mut self, grads: &mut [Option<Tensor>]) -> Result<(), CollectiveError>;
    /// Every rank's `local` (the same length on every rank), concatenated in rank order.
    fn all_gather_u64(&mut self, local: &[u64]) -> Result<Vec<u64>, CollectiveError>;
    /// Every rank's bytes (any length), by rank.
    fn all_gather_bytes(&mut self, local: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        let lens = self.all_gather_u64(&[local.len() as u64])?;
        let max = lens.iter().copied().max().unwrap_or(0);
        // Padded to the longest, in u64 words (small messages: rank states, host names).
        let words = max.div_ceil(8) as usize;
        let mut mine = vec![0u64; words];
        for (i, chunk) in local.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            mine[i] = u64::from_le_bytes(b);
        }
        let all = self.all_gather_u64(&mine)?;
        Ok(lens
            .iter()
            .enumerate()
            .map(|(r, &len)| {
                let bytes: Vec<u8> = all[r * words..(r + 1) * words]
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .collect();
                bytes[..len as usize].to_vec()
            })
            .collect())
    }
    /// Waits until every rank reaches this point.
    fn barrier(&mut self) -> Result<(), CollectiveError>;
    /// Ranks, hosts and library, for the run record.
    fn info(&mut self) -> Result<WorldInfo, CollectiveError>;
}

/// The ranks that share this rank's host, as one host's system sampler speaks for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPeers {
    pub host: String,
    /// The ranks on this host, ascending; the first runs the host's sampler.
    pub ranks: Vec<usize>,
    /// The process id of each of `ranks`, in the same order.
    pub pids: Vec<u32>,
}

/// This rank's [`HostPeers`], from `hosts` (every rank's host name, by rank, as
/// [`Collective::info`] gives them) and every rank's process id, gathered here. Collective:
/// every rank calls it.
pub fn host_peers(c: &mut dyn Collective, hosts: &[String]) -> Result<HostPeers, CollectiveError> {
    let pids = c.all_gather_u64(&[u64::from(std::process::id())])?;
    let me = c.rank();
    let host = hosts.get(me).cloned().unwrap_or_default();
    let ranks: Vec<usize> = (0..c.world())
        .filter(|&r| hosts.get(r).map_or(r == me, |h| *h == host))
        .collect();
    let pids = ranks
        .iter()
        .map(|&r| u32::try_from(pids[r]).unwrap_or(u32::MAX))
        .collect();
    Ok(HostPeers { host, ranks, pids })
}

/// The world size a launcher (`mpirun`, MPICH's hydra, `srun --mpi=pmix`) gave this process,
/// from its environment; `None` when it was not started by one.
pub fn launcher_world() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.trim().parse().ok())
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
    fn fold_in_rank_order(
        &mut self,
        acc: &mut Vec<Option<Tensor>>,
        grads: Vec<Option<Tensor>>,
    ) -> Result<(), CollectiveError> {
        if acc.is_empty() {
            *acc = grads;
            return Ok(());
        }
        for (a, g) in acc.iter_mut().zip(grads) {
            *a = match (a.take(), g) {
                (Some(x), Some(y)) => Some((x + y)?),
                (x, y) => x.or(y),
            };
        }
        Ok(())
    }
    fn all_reduce_sum(&mut self, _grads: &mut [Option<Tensor>]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn all_gather_u64(&mut self, local: &[u64]) -> Result<Vec<u64>, CollectiveError> {
        Ok(local.to_vec())
    }
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn info(&mut self) -> Result<WorldInfo, CollectiveError> {
        Ok(WorldInfo {
            engine: "single".into(),
            world: 1,
            hosts: Vec::new(),
            library: None,
            reduce: "ordered".into(),
        })
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
        s.all_reduce_sum(&mut grads).unwrap();
        s.barrier().unwrap();
        assert_eq!((s.rank(), s.world()), (0, 1));
        assert_eq!(
            grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap(),
            [1.0, 2.0]
        );
        assert!(grads[1].is_none());
    }

    #[test]
    fn single_fold_is_the_left_fold() {
        let mut s = Single;
        let dev = candle_core::Device::Cpu;
        let mut acc = Vec::new();
        s.fold_in_rank_order(
            &mut acc,
            vec![Some(Tensor::new(&[1f32], &dev).unwrap()), None],
        )
        .unwrap();
        s.fold_in_rank_order(
            &mut acc,
            vec![
                Some(Tensor::new(&[2f32], &dev).unwrap()),
                Some(Tensor::new(&[5f32], &dev).unwrap()),
            ],
        )
        .unwrap();
        assert_eq!(acc[0].as_ref().unwrap().to_vec1::<f32>().unwrap(), [3.0]);
        assert_eq!(acc[1].as_ref().unwrap().to_vec1::<f32>().unwrap(), [5.0]);
    }

    #[test]
    fn one_process_is_alone_on_its_host() {
        let peers = host_peers(&mut Single, &["a".into()]).unwrap();
        assert_eq!(peers.ranks, [0]);
        assert_eq!(peers.pids, [std::process::id()]);
        assert_eq!(peers.host, "a");
    }

    #[test]
    fn bytes_gather_round_trips_odd_lengths() {
        let mut s = Single;
        assert_eq!(s.all_gather_bytes(b"abcdefghij").unwrap(), [b"abcdefghij"]);
        assert_eq!(s.all_gather_bytes(b"").unwrap(), [b""]);
    }
}
