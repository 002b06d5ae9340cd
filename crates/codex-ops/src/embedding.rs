//! Token embedding lookup, with GPT-2's learned positions added in the same pass.
//!
//! candle's composition (`index_select`, then `broadcast_add` of the position rows) runs the
//! add on candle's own elementwise pool while rayon's workers wait, and its backward sums the
//! position gradient over the batch and scatters the token gradient into a zeroed table copy on
//! the calling thread alone. Here forward writes each output row once (table row plus position
//! row, never zero-filled first) and backward computes both gradients on rayon's pool; each
//! gradient row is a sum in token order, so results do not depend on the thread count.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::simd::with_avx2;
use crate::util::{ROWS_PER_TASK, cpu_tensor, f32_slice, is_cpu_f32, par_collect, with_f32};

/// The lookup's data: flattened ids and the `[B, T]` shape they came in.
struct Lookup {
    ids: Vec<u32>,
    b: usize,
    t: usize,
}

impl Lookup {
    /// Reads `ids` (`[B, T]`, any integer dtype) and checks each against the table's rows.
    fn new(ids: &Tensor, vocab: usize) -> Result<Self> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if let Some(&bad) = flat.iter().find(|&&i| i as usize >= vocab) {
            bail!("embedding: token id {bad} is out of range for a table of {vocab} rows");
        }
        Ok(Self { ids: flat, b, t })
    }

    /// `out[i] = table[ids[i]] (+ pos[i mod T])`, every element written once.
    fn forward(&self, table: &[f32], pos: Option<&[f32]>, d: usize) -> Vec<f32> {
        let (ids, t) = (&self.ids, self.t);
        par_collect(ids.len() * d, d * ROWS_PER_TASK, |range| {
            (range.start / d..range.end / d).flat_map(move |i| {
                let row = &table[ids[i] as usize * d..][..d];
                let p = pos.map(|p| &p[(i % t) * d..][..d]);
                row.iter()
                    .enumerate()
                    .map(move |(c, &x)| p.map_or(x, |p| x + p[c]))
            })
        })
    }

    /// `dtable[v] = Σ grad[i]` over the positions `i` holding token `v`, in position order (as
    /// candle's `index_add` into zeros). Tasks own disjoint blocks of table rows and each scans
    /// all ids, so no two tasks touch the same row and the order within a row is fixed.
    fn table_grad(&self, grad: &[f32], vocab: usize, d: usize) -> Vec<f32> {
        // At most ~256 tasks: a task's scan of the ids costs far less than the rows it owns.
        let rows = vocab.div_ceil(256).max(ROWS_PER_TASK);
        let mut out = vec![0f32; vocab * d];
        out.par_chunks_mut(rows * d)
            .enumerate()
            .for_each(|(task, block)| {
                let first = task * rows;
                let owned = first..first + block.len() / d;
                with_avx2(
                    #[inline(always)]
                    || {
                        for (i, &id) in self.ids.iter().enumerate() {
                            let id = id as usize;
                            if owned.contains(&id) {
                                let dst = &mut block[(id - first) * d..][..d];
                                for (a, &g) in dst.iter_mut().zip(&grad[i * d..][..d]) {
                                    *a += g;
                                }
                            }
                        }
                    },
                )
            });
        out
    }

    /// `dpos[t] = Σ_b grad[b, t]`, batches in order (as candle's sum over the broadcast dim).
    fn pos_grad(&self, grad: &[f32], d: usize) -> Vec<f32> {
        let (b, t) = (self.b, self.t);
        let mut out = vec![0f32; t * d];
        out.par_chunks_mut(d).enumerate().for_each(|(ti, dst)| {
            with_avx2(
                #[inline(always)]
                || {
                    for bi in 0..b {
                        for (a, &g) in dst.iter_mut().zip(&grad[(bi * t + ti) * d..][..d]) {
                            *a += g;
                        }
                    }
                },
            )
        });
        out
    }
}

/// Table dimensions `(rows, d)` of a `[rows, d]` layout.
fn table_dims(l: &Layout, op: &str) -> Result<(usize, usize)> {
    match l.shape().dims() {
        &[v, d] if d > 0 => Ok((v, d)),
        dims => bail!("{op}: expected a [rows, d] table, got {dims:?}"),
    }
}

struct TokenEmbedding(Lookup);

impl CustomOp1 for TokenEmbedding {
    fn name(&self) -> &'static str {
        "codex-embedding"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, d) = table_dims(l, "embedding")?;
        let table = f32_slice(s, l, "embedding (table)")?;
        let y = self.0.forward(table, None, d);
        Ok((CpuStorage::F32(y), Shape::from((self.0.b, self.0.t, d))))
    }

    fn bwd(&self, table: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (v, d) = table_dims(table.layout(), "embedding backward")?;
        let dt = with_f32(grad, "embedding backward", |g| {
            Ok(self.0.table_grad(g, v, d))
        })?;
        Ok(Some(cpu_tensor(dt, table.shape())?))
    }
}

struct PositionalEmbedding(Lookup);

impl CustomOp2 for PositionalEmbedding {
    fn name(&self) -> &'static str {
        "codex-embedding-positions"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, d) = table_dims(l1, "embedding")?;
        if l2.shape().dims() != [self.0.t, d] {
            bail!(
                "embedding: positions must be [{}, {d}], got {:?}",
                self.0.t,
                l2.shape().dims()
            );
        }
        let table = f32_slice(s1, l1, "embedding (table)")?;
        let pos = f32_slice(s2, l2, "embedding (positions)")?;
        let y = self.0.forward(table, Some(pos), d);
        Ok((CpuStorage::F32(y), Shape::from((self.0.b, self.0.t, d))))
    }

    fn bwd(
        &self,
        table: &Tensor,
        pos: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (v, d) = table_dims(table.layout(), "embedding backward")?;
        let (dt, dp) = with_f32(grad, "embedding backward", |g| {
            Ok(rayon::join(
                || self.0.table_grad(g, v, d),
                || self.0.pos_grad(g, d),
            ))
        })?;
        Ok((
            Some(cpu_tensor(dt, table.shape())?),
            Some(cpu_tensor(dp, pos.shape())?),
        ))
    }
}

/// `table[ids]` for `[B, T]` ids → `[B, T, d]`, plus `positions[t]` (`[T, d]`) at time `t` when
/// given (GPT-2's learned positions). One fused op forward and backward for a CPU f32 table;
/// the candle composition ([`embedding_reference`]) otherwise. An id outside the table is an
/// error, not a panic.
pub fn embedding(table: &Tensor, ids: &Tensor, positions: Option<&Tensor>) -> Result<Tensor> {
    let fused = is_cpu_f32(table) && positions.is_none_or(is_cpu_f32);
    if !fused {
        return embedding_reference(table, ids, positions);
    }
    let (vocab, _) = table_dims(table.layout(), "embedding")?;
    let lookup = Lookup::new(ids, vocab)?;
    let table = table.contiguous()?;
    match positions {
        None => table.apply_op1(TokenEmbedding(lookup)),
        Some(p) => table.apply_op2(&p.contiguous()?, PositionalEmbedding(lookup)),
    }
}

/// The candle composition: `index_select` of the rows, then `broadcast_add` of the positions.
pub fn embedding_reference(
    table: &Tensor,
    ids: &Tensor,
    positions: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let d = table.dim(1)?;
    let h = table.embedding(&ids.flatten_all()?)?.reshape((b, t, d))?;
    match positions {
        Some(p) => h.broadcast_add(p),
        None => Ok(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::testing::{assert_close, rand};
    use candle_core::{Device, Var};

    fn ids(b: usize, t: usize, vocab: u32) -> Result<Tensor> {
        // Repeats on purpose: several positions share a token, so the table gradient sums.
        let v: Vec<u32> = (0..(b * t) as u32)
            .map(|i| (i * 7 + i / 5) % vocab)
            .collect();
        Tensor::from_vec(v, (b, t), &Device::Cpu)
    }

    #[test]
    fn values_and_grads_match_candle() -> Result<()> {
        // 300 rows: more than one task's block of table rows.
        let (b, t, v, d) = (3, 37, 300, 24);
        let table = Var::from_tensor(&rand(1, &[v, d], 1.0)?)?;
        let pos = Var::from_tensor(&rand(2, &[t, d], 1.0)?)?;
        let r = rand(3, &[b, t, d], 1.0)?;
        let ids = ids(b, t, v as u32)?;
        for with_pos in [false, true] {
            let p = with_pos.then_some(pos.as_tensor());
            let y1 = embedding(&table, &ids, p)?;
            let y2 = embedding_reference(&table, &ids, p)?;
            // Same additions in the same order: equal to the bit, not just close.
            assert_eq!(
                y1.flatten_all()?.to_vec1::<f32>()?,
                y2.flatten_all()?.to_vec1::<f32>()?
            );
            let g1 = (y1 * &r)?.sum_all()?.backward()?;
            let g2 = (y2 * &r)?.sum_all()?.backward()?;
            let mut vars = vec![("table", &table)];
            if with_pos {
                vars.push(("positions", &pos));
            }
            for (name, x) in vars {
                let (Some(a), Some(b)) = (g1.get(x), g2.get(x)) else {
                    panic!("missing grad of {name}")
                };
                assert_close(a, b, 1e-6, name)?;
            }
        }
        Ok(())
    }

    #[test]
    fn an_id_outside_the_table_is_an_error() -> Result<()> {
        let table = rand(1, &[10, 4], 1.0)?;
        let ids = Tensor::from_vec(vec![3u32, 10], (1, 2), &Device::Cpu)?;
        let err = embedding(&table, &ids, None).unwrap_err();
        assert!(err.to_string().contains("token id 10"), "{err}");
        Ok(())
    }

    #[test]
    fn positions_of_the_wrong_length_are_an_error() -> Result<()> {
        let table = rand(1, &[10, 4], 1.0)?;
        let pos = rand(2, &[3, 4], 1.0)?;
        let err = embedding(&table, &ids(1, 2, 10)?, Some(&pos)).unwrap_err();
        assert!(
            err.to_string().contains("positions must be [2, 4]"),
            "{err}"
        );
        Ok(())
    }
}
