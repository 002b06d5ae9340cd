//! The NCCL engine (feature `nccl`): the gradients of CUDA tensors are reduced on the device by
//! NCCL (cudarc, through candle-core's `nccl` feature); MPI starts it and carries everything
//! small (layouts, rank states, barriers, the run's facts). llm.c's split: rank 0 makes the
//! NCCL unique id and broadcasts it over MPI; every rank drives the GPU of its host-local rank
//! (the caller opens `cuda:<local_rank>`, see [`crate::mpi::MpiSession::host_ranks`]).
//!
//! The gradients travel as one f32 device buffer in parameter order (bf16 and f16 widen
//! exactly), in NCCL calls of at most `bucket` elements, as candle ops on the gradients' own
//! stream, so they are ordered after the backward and before the optimizer without a host
//! synchronisation:
//! - **native**: `ncclAllReduce(sum)` in place on that buffer (an [`InplaceOp1`]); NCCL picks
//!   the order of the sum.
//! - **ordered**: `ncclAllGather` of every rank's buffer, then the rank-order left fold with
//!   candle's own adds in each gradient's dtype — the very additions one process makes when
//!   it accumulates the same micro-batches on the same device, so N ranks stay bit-identical
//!   to one process with `grad_accum × N`. It holds `world` copies of the gradients (f32) for
//!   the fold: reproducibility, not memory, is what this mode is for.
//!
//! The NCCL communicator is created at the first gradient exchange, from the stream of the
//! gradients' device, so it shares the trainer's stream whatever device object opened it.

use crate::flat::{check_layouts, layout_of};
use crate::mpi::{Mpi, broadcast_from_root};
use crate::{Collective, CollectiveError, WorldInfo};
use candle_core::cuda::WrapErr as _;
use candle_core::cuda::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Device, InplaceOp1, Layout, Shape, Tensor,
};

const ENGINE: &str = "nccl";

/// [`Collective`] whose gradient exchanges run on NCCL; the rest goes over `mpi`.
pub struct Nccl {
    mpi: Mpi,
    ordered: bool,
    /// Elements per NCCL call.
    bucket: usize,
    comm: Option<Comm>,
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("mpi", &self.mpi)
            .field("ordered", &self.ordered)
            .field("bucket", &self.bucket)
            .field("communicator", &self.comm.is_some())
            .finish()
    }
}

/// Number of CUDA devices this process sees (0 when the driver is missing).
pub fn device_count() -> usize {
    candle_core::cuda::cudarc::driver::CudaContext::device_count()
        .map_or(0, |n| usize::try_from(n).unwrap_or(0))
}

fn engine_err(message: impl Into<String>) -> CollectiveError {
    CollectiveError::Engine {
        engine: ENGINE,
        message: message.into(),
    }
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("NCCL {what} failed: {e:?}"))
}

/// The gradients of one rank as one f32 device buffer.
struct DeviceFlat {
    flat: Option<Tensor>,
    shapes: Vec<Option<Shape>>,
    dtypes: Vec<DType>,
    offsets: Vec<usize>,
}

impl DeviceFlat {
    fn new(grads: &[Option<Tensor>]) -> Result<Self, CollectiveError> {
        let mut parts = Vec::new();
        let (mut shapes, mut dtypes, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
        let mut at = 0;
        for g in grads {
            offsets.push(at);
            match g {
                Some(t) => {
                    if !matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) {
                        return Err(engine_err(format!(
                            "gradients must be f32, bf16 or f16, not {:?}",
                            t.dtype()
                        )));
                    }
                    parts.push(t.flatten_all()?.to_dtype(DType::F32)?);
                    at += t.elem_count();
                    shapes.push(Some(t.shape().clone()));
                    dtypes.push(t.dtype());
                }
                None => {
                    shapes.push(None);
                    dtypes.push(DType::F32);
                }
            }
        }
        // A fresh buffer: the native reduce writes into it, never into a gradient.
        let flat = match parts.len() {
            0 => None,
            1 => Some(parts[0].copy()?),
            _ => Some(Tensor::cat(&parts, 0)?),
        };
        Ok(DeviceFlat {
            flat,
            shapes,
            dtypes,
            offsets,
        })
    }

    /// Parameter `p`'s gradient out of `row` (a buffer of this layout), in its own dtype.
    fn grad(&self, row: &Tensor, p: usize) -> Result<Option<Tensor>, CollectiveError> {
        let Some(shape) = &self.shapes[p] else {
            return Ok(None);
        };
        let t = row
            .narrow(0, self.offsets[p], shape.elem_count())?
            .reshape(shape)?;
        // The values are representable in the dtype (widened from it, or summed by NCCL in
        // f32 and rounded here once).
        Ok(Some(t.to_dtype(self.dtypes[p])?))
    }
}

impl Nccl {
    /// The NCCL engine over the ranks of `mpi` (every rank calls this, in the same order as
    /// its other collectives). `bucket_bytes` bounds one NCCL call.
    pub fn new(mpi: Mpi, ordered: bool, bucket_bytes: usize) -> Self {
        Nccl {
            mpi,
            ordered,
            bucket: (bucket_bytes / 4).max(1),
            comm: None,
        }
    }

    /// The layout of this rank's gradients, checked against every rank's over MPI.
    fn flatten(&mut self, grads: &[Option<Tensor>]) -> Result<DeviceFlat, CollectiveError> {
        let df = DeviceFlat::new(grads)?;
        let all = self
            .mpi
            .all_gather_u64(&layout_of(&df.shapes, &df.dtypes))?;
        check_layouts(&all, self.mpi.world())?;
        Ok(df)
    }

    /// The communicator, created at the first exchange: rank 0 makes the unique id, MPI
    /// carries it, every rank joins on the stream of `device`. Every rank first says whether
    /// it can (a CUDA device, an id on rank 0), so a failure on one rank is an error on all
    /// of them instead of a hang in the broadcast.
    fn comm(&mut self, device: &Device) -> Result<&Comm, CollectiveError> {
        if self.comm.is_none() {
            let rank = self.mpi.rank();
            let mut problem = None;
            let cuda = match device.as_cuda_device() {
                Ok(c) => Some(c.clone()),
                Err(_) => {
                    problem = Some(format!(
                        "rank {rank}'s gradients are on {device:?}; NCCL reduces CUDA tensors (training.device = \"cuda\")"
                    ));
                    None
                }
            };
            let mut id = [0u8; 128];
            if rank == 0 && problem.is_none() {
                match Id::new() {
                    // c_char is i8 or u8 by platform: the id's bytes either way.
                    Ok(new) => id = new.internal().map(|c| c as u8),
                    Err(e) => problem = Some(format!("ncclGetUniqueId failed: {e:?}")),
                }
            }
            let ok = self.mpi.all_gather_u64(&[u64::from(problem.is_none())])?;
            if let Some(bad) = ok.iter().position(|&v| v == 0) {
                return Err(engine_err(problem.unwrap_or_else(|| {
                    format!("rank {bad} cannot start NCCL (its error says why)")
                })));
            }
            broadcast_from_root(&self.mpi, &mut id);
            let Some(cuda) = cuda else {
                return Err(engine_err("no CUDA device"));
            };
            let stream = cuda.cuda_stream();
            // ncclCommInitRank works on the calling thread's current device.
            stream.context().bind_to_thread().w()?;
            let comm = Comm::from_rank(
                stream,
                rank,
                self.mpi.world(),
                Id::uninit(id.map(|b| b as _)),
            )
            .map_err(|e| engine_err(format!("ncclCommInitRank failed: {e:?}")))?;
            self.comm = Some(comm);
        }
        self.comm
            .as_ref()
            .ok_or_else(|| engine_err("no communicator"))
    }
}

fn device_of(grads: &[Option<Tensor>]) -> Device {
    grads
        .iter()
        .flatten()
        .next()
        .map_or(Device::Cpu, |t| t.device().clone())
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }

    fn world(&self) -> usize {
        self.mpi.world()
    }

    fn ordered(&self) -> bool {
        self.ordered
    }

    fn exchanges_gradients(&self) -> bool {
        true
    }

    fn fold_in_rank_order(
        &mut self,
        acc: &mut Vec<Option<Tensor>>,
        grads: Vec<Option<Tensor>>,
    ) -> Result<(), CollectiveError> {
        let device = device_of(&grads);
        let df = self.flatten(&grads)?;
        drop(grads);
        if acc.is_empty() {
            acc.resize(df.shapes.len(), None);
        }
        if acc.len() != df.shapes.len() {
            return Err(CollectiveError::Mismatch(
                "this micro-step's gradients have another layout than the accumulated ones".into(),
            ));
        }
        let Some(flat) = &df.flat else {
            return Ok(());
        };
        let world = self.world();
        let bucket = self.bucket;
        let comm = self.comm(&device)?;
        // [world, len]: row r is rank r's buffer.
        let all = flat.apply_op1_no_bwd(&AllGather {
            comm,
            bucket,
            world,
        })?;
        for r in 0..world {
            let row = all.get(r)?;
            for (p, a) in acc.iter_mut().enumerate() {
                let g = df.grad(&row, p)?;
                // The fold of one process: ((acc + g0) + g1) + …, an absent acc starting as g0.
                *a = match (a.take(), g) {
                    (Some(x), Some(y)) => Some((x + y)?),
                    (x, y) => x.or(y),
                };
            }
        }
        Ok(())
    }

    fn all_reduce_sum(&mut self, grads: &mut [Option<Tensor>]) -> Result<(), CollectiveError> {
        let device = device_of(grads);
        let df = self.flatten(grads)?;
        let Some(flat) = &df.flat else {
            return Ok(());
        };
        let bucket = self.bucket;
        let comm = self.comm(&device)?;
        flat.inplace_op1(&AllReduce { comm, bucket })?;
        for (p, g) in grads.iter_mut().enumerate() {
            *g = df.grad(flat, p)?;
        }
        Ok(())
    }

    fn all_gather_u64(&mut self, local: &[u64]) -> Result<Vec<u64>, CollectiveError> {
        self.mpi.all_gather_u64(local)
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.mpi.barrier()
    }

    fn info(&mut self) -> Result<WorldInfo, CollectiveError> {
        let mut info = self.mpi.info()?;
        info.engine = ENGINE.into();
        Ok(info)
    }
}

/// The contiguous f32 elements of `storage` under `layout`.
fn contiguous(layout: &Layout, op: &str) -> candle_core::Result<(usize, usize)> {
    layout.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(format!("{op}: the gradient buffer is not contiguous"))
    })
}

fn cpu_refused(op: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: NCCL reduces CUDA tensors, not CPU ones"))
}

/// `ncclAllReduce(sum)` in place, bucket by bucket.
struct AllReduce<'a> {
    comm: &'a Comm,
    bucket: usize,
}

impl InplaceOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        Err(cpu_refused(self.name()))
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let (start, end) = contiguous(layout, self.name())?;
        let slice = storage.as_cuda_slice_mut::<f32>()?;
        let mut a = start;
        while a < end {
            let b = (a + self.bucket).min(end);
            self.comm
                .all_reduce_in_place(&mut slice.slice_mut(a..b), &ReduceOp::Sum)
                .map_err(|e| nccl_err("all-reduce", e))?;
            a = b;
        }
        Ok(())
    }
}

/// `ncclAllGather` bucket by bucket into a `[world, len]` buffer (row r: rank r's elements).
struct AllGather<'a> {
    comm: &'a Comm,
    bucket: usize,
    world: usize,
}

impl CustomOp1 for AllGather<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-gather"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cpu_refused(self.name()))
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (start, end) = contiguous(layout, self.name())?;
        let (len, world) = (end - start, self.world);
        let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let stream = storage.device.cuda_stream();
        let mut out = stream.alloc_zeros::<f32>(len * world).w()?;
        let bucket = self.bucket.min(len).max(1);
        let mut tmp = stream.alloc_zeros::<f32>(bucket * world).w()?;
        let mut a = 0;
        while a < len {
            let b = (a + bucket).min(len);
            let n = b - a;
            self.comm
                .all_gather(&src.slice(a..b), &mut tmp.slice_mut(..n * world))
                .map_err(|e| nccl_err("all-gather", e))?;
            // The gather is rank-major per call; each rank's piece goes to its row.
            for r in 0..world {
                stream
                    .memcpy_dtod(
                        &tmp.slice(r * n..(r + 1) * n),
                        &mut out.slice_mut(r * len + a..r * len + b),
                    )
                    .w()?;
            }
            a = b;
        }
        let out = CudaStorage::wrap_cuda_slice(out, storage.device.clone());
        Ok((out, Shape::from((world, len))))
    }
}
