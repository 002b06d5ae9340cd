//! The MPI engine (feature `mpi`): rsmpi over the system's Open MPI or MPICH. One process per
//! rank, started by `mpirun`/`srun`; gradients travel as f32 host buffers in buckets.
//!
//! MPI's default error handler is `MPI_ERRORS_ARE_FATAL`, and `mpirun` ends every rank when
//! one dies: a lost rank never leaves the others waiting in a collective.

use crate::flat::{Flat, OrderedAcc, check_layouts};
use crate::{Collective, CollectiveError, WorldInfo};
use ::mpi::collective::{CommunicatorCollectives, SystemOperation};
use ::mpi::environment::Universe;
use ::mpi::topology::{Communicator, SimpleCommunicator};
use ::mpi::traits::Root;
use candle_core::Tensor;

const ENGINE: &str = "mpi";

/// The initialized MPI library: finalized when dropped. Keep it alive until the process
/// ends; on a failure that not every rank shares, [`MpiSession::abort`] instead, because
/// `MPI_Finalize` waits for the other ranks.
pub struct MpiSession {
    universe: Universe,
}

impl std::fmt::Debug for MpiSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiSession").finish_non_exhaustive()
    }
}

/// Initializes MPI (once per process). Only the main thread calls MPI.
pub fn init() -> Result<MpiSession, CollectiveError> {
    let (universe, _) =
        ::mpi::initialize_with_threading(::mpi::Threading::Funneled).ok_or_else(|| {
            CollectiveError::Engine {
                engine: ENGINE,
                message: "MPI was already initialized".into(),
            }
        })?;
    Ok(MpiSession { universe })
}

impl MpiSession {
    /// The collective over all ranks. `ordered` picks the fold in micro-batch order over the
    /// library's all-reduce; `bucket_bytes` bounds one exchange.
    pub fn collective(&self, ordered: bool, bucket_bytes: usize) -> Mpi {
        Mpi {
            world: self.universe.world(),
            ordered,
            bucket: (bucket_bytes / 4).max(1),
        }
    }

    pub fn rank(&self) -> usize {
        self.universe.world().rank() as usize
    }

    pub fn world(&self) -> usize {
        self.universe.world().size() as usize
    }

    /// The ranks on this process's host (`MPI_COMM_TYPE_SHARED`), ascending, and this
    /// process's place among them: its local rank, the GPU it drives. Collective: every rank
    /// calls it.
    pub fn host_ranks(&self) -> (usize, Vec<usize>) {
        let world = self.universe.world();
        let host = world.split_shared(world.rank());
        let mut ranks = vec![0i32; host.size() as usize];
        host.all_gather_into(&world.rank(), &mut ranks[..]);
        let ranks = ranks.into_iter().map(|r| r as usize).collect();
        (host.rank() as usize, ranks)
    }

    /// Ends every rank of the job now with `code` (`MPI_Abort`).
    pub fn abort(&self, code: i32) -> ! {
        self.universe.world().abort(code)
    }
}

/// [`Collective`] over `MPI_COMM_WORLD`.
pub struct Mpi {
    world: SimpleCommunicator,
    ordered: bool,
    /// Elements per exchange.
    bucket: usize,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.world.rank())
            .field("world", &self.world.size())
            .field("ordered", &self.ordered)
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl Mpi {
    /// The gradients as one buffer, after checking that every rank has the same layout.
    fn flatten(&mut self, grads: &[Option<Tensor>]) -> Result<Flat, CollectiveError> {
        let flat = Flat::from_grads(grads)?;
        let all = self.all_gather_u64(&flat.layout())?;
        check_layouts(&all, self.world())?;
        Ok(flat)
    }

    fn device(grads: &[Option<Tensor>]) -> candle_core::Device {
        grads
            .iter()
            .flatten()
            .next()
            .map_or(candle_core::Device::Cpu, |t| t.device().clone())
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world(&self) -> usize {
        self.world.size() as usize
    }

    fn ordered(&self) -> bool {
        self.ordered
    }

    fn fold_in_rank_order(
        &mut self,
        acc: &mut Vec<Option<Tensor>>,
        grads: Vec<Option<Tensor>>,
    ) -> Result<(), CollectiveError> {
        let device = Self::device(&grads);
        let flat = self.flatten(&grads)?;
        drop(grads);
        let mut folded = OrderedAcc::new(acc, &flat)?;
        let world = self.world();
        let mut recv = Vec::new();
        for range in flat.buckets(self.bucket) {
            recv.resize(range.len() * world, 0.0f32);
            self.world
                .all_gather_into(&flat.data[range.clone()], &mut recv[..]);
            folded.fold_bucket(range, &recv, world);
        }
        *acc = folded.finish(&flat).into_grads(&device)?;
        Ok(())
    }

    fn all_reduce_sum(&mut self, grads: &mut [Option<Tensor>]) -> Result<(), CollectiveError> {
        let device = Self::device(grads);
        let mut flat = self.flatten(grads)?;
        let mut out = vec![0.0f32; self.bucket.min(flat.data.len())];
        for range in flat.buckets(self.bucket) {
            let out = &mut out[..range.len()];
            self.world
                .all_reduce_into(&flat.data[range.clone()], out, SystemOperation::sum());
            flat.data[range].copy_from_slice(out);
        }
        crate::flat::round_in_place(&mut flat);
        for (g, t) in grads.iter_mut().zip(flat.into_grads(&device)?) {
            *g = t;
        }
        Ok(())
    }

    fn all_gather_u64(&mut self, local: &[u64]) -> Result<Vec<u64>, CollectiveError> {
        // Every rank must send the same count; gather the counts first so a mismatch is an
        // error, not undefined behaviour inside MPI.
        let mut counts = vec![0u64; self.world()];
        self.world
            .all_gather_into(&(local.len() as u64), &mut counts[..]);
        if counts.iter().any(|&c| c != local.len() as u64) {
            return Err(CollectiveError::Mismatch(format!(
                "ranks sent different counts to an all-gather: {counts:?}"
            )));
        }
        let mut out = vec![0u64; local.len() * self.world()];
        self.world.all_gather_into(local, &mut out[..]);
        Ok(out)
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.world.barrier();
        Ok(())
    }

    fn info(&mut self) -> Result<WorldInfo, CollectiveError> {
        let host = ::mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
        let hosts = self
            .all_gather_bytes(host.as_bytes())?
            .into_iter()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect();
        let library = ::mpi::environment::library_version()
            .ok()
            .map(|v| v.trim_end_matches(['\0', '\n', ' ']).to_string());
        Ok(WorldInfo {
            engine: ENGINE.into(),
            world: self.world(),
            hosts,
            library,
            reduce: if self.ordered { "ordered" } else { "native" }.into(),
        })
    }
}

/// Broadcasts `bytes` from rank 0 (e.g. an NCCL unique id) to every rank.
pub fn broadcast_from_root(mpi: &Mpi, bytes: &mut [u8]) {
    mpi.world.process_at_rank(0).broadcast_into(bytes);
}
