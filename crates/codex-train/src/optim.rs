//! Optimizers owned by codex: AdamW (fp32 moments, decoupled weight decay) and SGD with
//! momentum, plus global-norm clipping.
//!
//! candle's `AdamW` keeps its moments private, so a run using it cannot be checkpointed and
//! resumed exactly; and it runs a dozen allocating tensor ops per parameter. Here the state
//! is plain `Vec<f32>` per parameter and, on the CPU, the whole update is one fused loop that
//! writes the parameter in place (a candle `InplaceOp2`), parallel over chunks. On other
//! devices the parameter makes a round trip through host memory: correct, not fast.
//!
//! The update follows PyTorch's `torch.optim.AdamW` / `SGD` exactly (same formulas and
//! order of operations), so losses can be compared with a PyTorch run.

use crate::config::{OptimizerKind, OptimizerSection};
use crate::error::{Error, Result};
use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor, Var};
use half::bf16;
use rayon::prelude::*;
use std::borrow::Cow;
use std::cell::RefCell;

/// Elements per parallel chunk; below this a tensor is updated on one thread.
const CHUNK: usize = 1 << 14;

/// One trainable parameter and its optimizer state.
struct Param {
    name: String,
    var: Var,
    /// Weight decay applies (matrices); never for biases and norm weights (rank < 2).
    decay: bool,
    /// AdamW first moment, or the SGD momentum buffer.
    m: Vec<f32>,
    /// AdamW second moment (empty for SGD).
    v: Vec<f32>,
    /// fp32 master weights when the parameter itself is bf16 (empty otherwise).
    master: Vec<f32>,
}

/// A named tensor of optimizer state: borrowed from the optimizer when saving (a checkpoint
/// writes the moments and master weights from where they live instead of copying the whole state
/// first, which doubled its memory during a save), owned when loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct StateTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [f32]>,
}

/// AdamW or SGD over a fixed list of named parameters.
pub struct Optimizer {
    kind: OptimizerKind,
    cfg: OptimizerSection,
    params: Vec<Param>,
    /// Updates applied so far (AdamW bias correction).
    t: u64,
}

/// The hyper-parameters of one update.
#[derive(Debug, Clone, Copy)]
struct Hyper {
    kind: OptimizerKind,
    lr: f32,
    wd: f32,
    momentum: f32,
    /// Multiplies the raw gradient (clipping).
    gscale: f32,
    /// AdamW's parameters for this parameter (weight decay 0 where it is not decayed); every
    /// AdamW path runs codex-ops' one kernel, so all paths agree bit for bit.
    adamw: codex_ops::AdamWParams,
    /// The 1-based step (bias correction).
    t: u64,
}

impl Optimizer {
    /// Creates the optimizer; `params` are (name, variable) pairs, usually
    /// `model.named_trainable()`.
    pub fn new(cfg: &OptimizerSection, params: Vec<(String, Var)>) -> Result<Self> {
        let mut out = Vec::with_capacity(params.len());
        for (name, var) in params {
            let n = var.elem_count();
            let decay = var.rank() >= 2;
            let master = if var.dtype() == DType::F32 {
                Vec::new()
            } else {
                var.as_tensor()
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?
            };
            let v = match cfg.name {
                OptimizerKind::Adamw => vec![0.0; n],
                OptimizerKind::Sgd => Vec::new(),
            };
            out.push(Param {
                name,
                var,
                decay,
                m: vec![0.0; n],
                v,
                master,
            });
        }
        Ok(Self {
            kind: cfg.name,
            cfg: cfg.clone(),
            params: out,
            t: 0,
        })
    }

    /// Updates applied so far.
    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    /// The parameters, in order.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.var))
    }

    /// Applies one update with learning rate `lr` using `grads[i]` for parameter `i`,
    /// multiplied by `grad_scale` (the clipping coefficient). A parameter without a gradient
    /// (unused in the graph) is left as it is, as PyTorch does.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        self.step_with(grads, lr, grad_scale, false)
    }

    fn step_with(
        &mut self,
        grads: &[Option<Tensor>],
        lr: f64,
        grad_scale: f64,
        force_host: bool,
    ) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::Internal(format!(
                "optimizer has {} parameters but got {} gradients",
                self.params.len(),
                grads.len()
            )));
        }
        self.t += 1;
        let c = &self.cfg;
        let h = Hyper {
            kind: self.kind,
            lr: lr as f32,
            wd: c.weight_decay as f32,
            momentum: c.momentum as f32,
            gscale: grad_scale as f32,
            adamw: codex_ops::AdamWParams {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: c.weight_decay,
            },
            t: self.t,
        };
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let g = if g.dtype() == DType::F32 {
                g.clone()
            } else {
                g.to_dtype(DType::F32)?
            };
            let g = g.contiguous()?;
            let h = if p.decay {
                h
            } else {
                let adamw = codex_ops::AdamWParams {
                    weight_decay: 0.0,
                    ..h.adamw
                };
                Hyper {
                    wd: 0.0,
                    adamw,
                    ..h
                }
            };
            let t = p.var.as_tensor();
            if h.kind == OptimizerKind::Adamw && t.dtype() == DType::F32 && !force_host {
                // codex-ops' fused in-place AdamW on the parameter's own storage.
                codex_ops::adamw_step(&p.var, &g, &mut p.m, &mut p.v, &h.adamw, h.t, h.gscale)?;
            } else if t.device().is_cpu() && !force_host {
                let op = FusedUpdate {
                    h,
                    m: RefCell::new(&mut p.m),
                    v: RefCell::new(&mut p.v),
                    master: RefCell::new(&mut p.master),
                };
                t.inplace_op2(&g, &op)?;
            } else {
                // Host round trip (GPU).
                let gv = g.flatten_all()?.to_vec1::<f32>()?;
                let mut pv = if p.master.is_empty() {
                    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?
                } else {
                    std::mem::take(&mut p.master)
                };
                update_slice(&h, &mut pv, &gv, &mut p.m, &mut p.v)?;
                let new = Tensor::from_slice(&pv, t.shape(), t.device())?.to_dtype(t.dtype())?;
                p.var.set(&new)?;
                if t.dtype() != DType::F32 {
                    p.master = pv;
                }
            }
        }
        Ok(())
    }

    /// The optimizer state as named fp32 tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`,
    /// `<param>.momentum_buffer`, `<param>.master`), for checkpoints.
    pub fn state(&self) -> Vec<StateTensor<'_>> {
        let mut out = Vec::new();
        for p in &self.params {
            let shape = p.var.dims().to_vec();
            let first = match self.kind {
                OptimizerKind::Adamw => "exp_avg",
                OptimizerKind::Sgd => "momentum_buffer",
            };
            out.push(StateTensor {
                name: format!("{}.{first}", p.name),
                shape: shape.clone(),
                data: Cow::Borrowed(&p.m),
            });
            if !p.v.is_empty() {
                out.push(StateTensor {
                    name: format!("{}.exp_avg_sq", p.name),
                    shape: shape.clone(),
                    data: Cow::Borrowed(&p.v),
                });
            }
            if !p.master.is_empty() {
                out.push(StateTensor {
                    name: format!("{}.master", p.name),
                    shape,
                    data: Cow::Borrowed(&p.master),
                });
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state`] after `steps_taken` updates. Every
    /// expected tensor must be present with the right shape.
    pub fn load_state(&mut self, tensors: &[StateTensor<'_>], steps_taken: u64) -> Result<()> {
        let find = |name: &str, want: usize| -> Result<Vec<f32>> {
            let t = tensors.iter().find(|t| t.name == name).ok_or_else(|| {
                Error::CheckpointContents(format!("optimizer state has no tensor `{name}`"))
            })?;
            if t.data.len() != want {
                return Err(Error::CheckpointContents(format!(
                    "optimizer tensor `{name}` has {} elements, expected {want}",
                    t.data.len()
                )));
            }
            Ok(t.data.to_vec())
        };
        for p in &mut self.params {
            let n = p.var.elem_count();
            let first = match self.kind {
                OptimizerKind::Adamw => "exp_avg",
                OptimizerKind::Sgd => "momentum_buffer",
            };
            p.m = find(&format!("{}.{first}", p.name), n)?;
            if self.kind == OptimizerKind::Adamw {
                p.v = find(&format!("{}.exp_avg_sq", p.name), n)?;
            }
            if !p.master.is_empty() {
                p.master = find(&format!("{}.master", p.name), n)?;
            }
        }
        self.t = steps_taken;
        Ok(())
    }
}

/// Collects the gradient of each parameter (in optimizer order) from a `GradStore`.
pub fn grads_for(opt: &Optimizer, store: &GradStore) -> Vec<Option<Tensor>> {
    opt.params
        .iter()
        .map(|p| store.get(p.var.as_tensor()).cloned())
        .collect()
}

/// The global L2 norm of all gradients, computed in f64 over the f32 values.
///
/// The sum goes through `codex_ops::grad_sq_norm`, which adds per-chunk partial sums in chunk
/// order: a rayon `.sum()` groups by work stealing, so the clip coefficient (and the weights)
/// could differ in the last bit between two runs of one config.
pub fn global_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let present: Vec<&Tensor> = grads.iter().flatten().collect();
    Ok(codex_ops::grad_sq_norm(&present)?.sqrt())
}

/// The clipping coefficient for a gradient norm (PyTorch's `clip_grad_norm_`).
pub fn clip_coef(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 {
        return 1.0;
    }
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// One parameter's update over plain slices (PyTorch's formulas).
fn update_slice(
    h: &Hyper,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) -> candle_core::Result<()> {
    match h.kind {
        OptimizerKind::Adamw => {
            codex_ops::adamw_update_slices(p, g, m, v, &h.adamw, h.t, h.gscale)?;
        }
        OptimizerKind::Sgd => p
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .for_each(|((p, g), m)| sgd_chunk(h, p, g, m)),
    }
    Ok(())
}

#[inline]
fn sgd_chunk(h: &Hyper, p: &mut [f32], g: &[f32], buf: &mut [f32]) {
    for i in 0..p.len() {
        let gi = g[i] * h.gscale + h.wd * p[i];
        let b = if h.momentum > 0.0 {
            h.momentum * buf[i] + gi
        } else {
            gi
        };
        buf[i] = b;
        p[i] -= h.lr * b;
    }
}

/// The fused in-place CPU update: the parameter storage is written directly.
struct FusedUpdate<'a> {
    h: Hyper,
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
    master: RefCell<&'a mut Vec<f32>>,
}

impl candle_core::InplaceOp2 for FusedUpdate<'_> {
    fn name(&self) -> &'static str {
        "codex-fused-optimizer-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("fused optimizer update needs contiguous tensors");
        };
        let g = &s2.as_slice::<f32>()?[a2..b2];
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        match s1 {
            CpuStorage::F32(p) => update_slice(&self.h, &mut p[a1..b1], g, &mut m, &mut v)?,
            CpuStorage::BF16(p) => {
                let mut master = self.master.borrow_mut();
                update_slice(&self.h, &mut master, g, &mut m, &mut v)?;
                for (dst, &src) in p[a1..b1].iter_mut().zip(master.iter()) {
                    *dst = bf16::from_f32(src);
                }
            }
            other => candle_core::bail!(
                "fused optimizer update: unsupported dtype {:?}",
                other.dtype()
            ),
        }
        Ok(())
    }
}

/// Builds a tensor from a state tensor (used by tests and by `codex eval`).
pub fn state_to_tensor(t: &StateTensor, device: &candle_core::Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(
        &t.data,
        Shape::from(t.shape.clone()),
        device,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cfg(kind: OptimizerKind) -> OptimizerSection {
        OptimizerSection {
            name: kind,
            lr: 0.1,
            weight_decay: 0.1,
            ..Default::default()
        }
    }

    /// Reference values from PyTorch 2.x:
    /// ```python
    /// import torch
    /// w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    /// b = torch.nn.Parameter(torch.tensor([0.25, -0.75]))
    /// opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.1},
    ///                          {"params": [b], "weight_decay": 0.0}],
    ///                         lr=0.1, betas=(0.9, 0.95), eps=1e-8)
    /// for g in ([[0.5, -1.0], [2.0, 0.1]], [[-0.3, 0.2], [1.0, -0.4]]):
    ///     w.grad = torch.tensor(g); b.grad = torch.tensor([1.0, -1.0]); opt.step()
    /// print(w.tolist(), b.tolist())
    /// ```
    /// Worked by hand from the same formulas (decay first, then the Adam step).
    #[test]
    fn adamw_matches_pytorch_formulas() {
        let dev = Device::Cpu;
        let w = Var::from_slice(&[1.0f32, -2.0, 0.5, 3.0], (2, 2), &dev).unwrap();
        let b = Var::from_slice(&[0.25f32, -0.75], 2, &dev).unwrap();
        let mut opt = Optimizer::new(
            &cfg(OptimizerKind::Adamw),
            vec![("w".into(), w.clone()), ("b".into(), b.clone())],
        )
        .unwrap();
        let gb = Tensor::new(&[1.0f32, -1.0], &dev).unwrap();
        for g in [[0.5f32, -1.0, 2.0, 0.1], [-0.3, 0.2, 1.0, -0.4]] {
            let gw = Tensor::from_slice(&g, (2, 2), &dev).unwrap();
            opt.step(&[Some(gw), Some(gb.clone())], 0.1, 1.0).unwrap();
        }
        // Independent scalar reference in f64.
        let reference = |p0: f64, gs: [f64; 2], wd: f64| {
            let (mut p, mut m, mut v) = (p0, 0.0f64, 0.0f64);
            for (t, g) in gs.iter().enumerate() {
                let t = (t + 1) as i32;
                p *= 1.0 - 0.1 * wd;
                m = 0.9 * m + 0.1 * g;
                v = 0.95 * v + 0.05 * g * g;
                let denom = (v.sqrt() / (1.0 - 0.95f64.powi(t)).sqrt()) + 1e-8;
                p -= 0.1 / (1.0 - 0.9f64.powi(t)) * m / denom;
            }
            p
        };
        let got = w
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let init = [1.0, -2.0, 0.5, 3.0];
        let g1 = [0.5, -1.0, 2.0, 0.1];
        let g2 = [-0.3, 0.2, 1.0, -0.4];
        for i in 0..4 {
            let want = reference(init[i], [g1[i], g2[i]], 0.1);
            assert!(
                (f64::from(got[i]) - want).abs() < 1e-6,
                "w[{i}] = {} want {want}",
                got[i]
            );
        }
        let gotb = b.as_tensor().to_vec1::<f32>().unwrap();
        let wantb = reference(0.25, [1.0, 1.0], 0.0);
        assert!(
            (f64::from(gotb[0]) - wantb).abs() < 1e-6,
            "bias must not decay"
        );
    }

    #[test]
    fn fused_and_host_paths_agree_and_state_round_trips() {
        let dev = Device::Cpu;
        for kind in [OptimizerKind::Adamw, OptimizerKind::Sgd] {
            let n = 3 * CHUNK + 17;
            let init: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let grad: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
                .collect();
            let a = Var::from_slice(&init, (n, 1), &dev).unwrap();
            let b = Var::from_slice(&init, (n, 1), &dev).unwrap();
            let g = Tensor::from_slice(&grad, (n, 1), &dev).unwrap();
            let mut oa = Optimizer::new(&cfg(kind), vec![("p".into(), a.clone())]).unwrap();
            let mut ob = Optimizer::new(&cfg(kind), vec![("p".into(), b.clone())]).unwrap();
            for _ in 0..3 {
                oa.step(&[Some(g.clone())], 0.01, 0.5).unwrap();
                ob.step_with(&[Some(g.clone())], 0.01, 0.5, true).unwrap();
            }
            let va = a
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let vb = b
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let first_diff = va
                .iter()
                .zip(&vb)
                .position(|(x, y)| x.to_bits() != y.to_bits());
            assert_eq!(first_diff, None, "{kind:?}: fused and host paths differ");
            let mut oc = Optimizer::new(&cfg(kind), vec![("p".into(), a.clone())]).unwrap();
            oc.load_state(&oa.state(), oa.steps_taken()).unwrap();
            assert_eq!(oc.state(), oa.state());
            assert!(oc.load_state(&[], 1).is_err());
        }
    }

    #[test]
    fn bf16_params_keep_fp32_master_weights() {
        // A bf16 parameter follows the f32 trajectory through its fp32 master copy: updates far
        // below bf16's resolution (1e-4 per step on 1.0, where bf16's spacing is 2^-7) still
        // accumulate.
        let dev = Device::Cpu;
        let init = [1.0f32, -1.0, 0.5, 2.0];
        let p32 = Var::from_slice(&init, (2, 2), &dev).unwrap();
        let p16 = Var::from_tensor(
            &Tensor::from_slice(&init, (2, 2), &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let cfg = OptimizerSection {
            name: OptimizerKind::Adamw,
            lr: 1e-5,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut o32 = Optimizer::new(&cfg, vec![("p".into(), p32.clone())]).unwrap();
        let mut o16 = Optimizer::new(&cfg, vec![("p".into(), p16.clone())]).unwrap();
        let g = Tensor::from_slice(&[1.0f32, -1.0, 1.0, -1.0], (2, 2), &dev).unwrap();
        for _ in 0..100 {
            o32.step(&[Some(g.clone())], 1e-4, 1.0).unwrap();
            o16.step(&[Some(g.to_dtype(DType::BF16).unwrap())], 1e-4, 1.0)
                .unwrap();
        }
        let master = &o16
            .state()
            .into_iter()
            .find(|t| t.name == "p.master")
            .unwrap()
            .data;
        let want = p32
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (m, w) in master.iter().zip(&want) {
            assert!((m - w).abs() < 1e-6, "master {m} vs f32 {w}");
        }
        // 100 steps of 1e-4 moved the weight by 1e-2, more than bf16's spacing: visible.
        let got = p16
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(got[0] < 1.0, "{got:?}");
    }

    #[test]
    fn clip_coefficient_and_norm() {
        let dev = Device::Cpu;
        let g = Tensor::new(&[3.0f32, 4.0], &dev).unwrap();
        let n = global_norm(&[Some(g), None]).unwrap();
        assert!((n - 5.0).abs() < 1e-12);
        assert!((clip_coef(n, 1.0) - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
        assert_eq!(clip_coef(n, 10.0), 1.0);
        assert_eq!(clip_coef(n, 0.0), 1.0);
    }
}
