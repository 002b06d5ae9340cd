//! Gradients as one host f32 buffer in parameter order, and the ordered fold over gathered
//! buckets. Engine-independent, so the arithmetic is tested without MPI.

use crate::CollectiveError;
use candle_core::{DType, Device, Shape, Tensor};
use std::ops::Range;

/// The gradients of one rank, flattened in parameter order (absent ones take no space).
/// Values travel as f32, which holds bf16 and f16 exactly; sums of half-precision gradients
/// are rounded back after every addition, as candle's half-precision add does.
#[derive(Debug, Clone, PartialEq)]
pub struct Flat {
    /// Per parameter: its shape when it has a gradient.
    pub shapes: Vec<Option<Shape>>,
    /// Per parameter: the gradient's dtype (f32 where absent).
    pub dtypes: Vec<DType>,
    /// Per parameter: where its elements start in `data`.
    pub offsets: Vec<usize>,
    pub data: Vec<f32>,
}

impl Flat {
    /// Copies `grads` (f32, bf16 or f16) into one f32 buffer.
    pub fn from_grads(grads: &[Option<Tensor>]) -> Result<Self, CollectiveError> {
        let mut shapes = Vec::with_capacity(grads.len());
        let mut dtypes = Vec::with_capacity(grads.len());
        let mut offsets = Vec::with_capacity(grads.len());
        let total: usize = grads.iter().flatten().map(Tensor::elem_count).sum();
        let mut data = Vec::with_capacity(total);
        for g in grads {
            offsets.push(data.len());
            match g {
                Some(t) => {
                    if !matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) {
                        return Err(CollectiveError::Engine {
                            engine: "codex-dist",
                            message: format!(
                                "gradients must be f32, bf16 or f16, not {:?}",
                                t.dtype()
                            ),
                        });
                    }
                    // Widening to f32 is exact.
                    let wide = t.flatten_all()?.to_dtype(DType::F32)?;
                    data.extend(wide.to_vec1::<f32>()?);
                    shapes.push(Some(t.shape().clone()));
                    dtypes.push(t.dtype());
                }
                None => {
                    shapes.push(None);
                    dtypes.push(DType::F32);
                }
            }
        }
        Ok(Flat {
            shapes,
            dtypes,
            offsets,
            data,
        })
    }

    /// The layout every rank must share: per parameter, its element count + 1 (0 when it
    /// has no gradient), then per parameter its dtype.
    pub fn layout(&self) -> Vec<u64> {
        layout_of(&self.shapes, &self.dtypes)
    }

    /// Back to one tensor per parameter on `device`.
    pub fn into_grads(self, device: &Device) -> Result<Vec<Option<Tensor>>, CollectiveError> {
        let mut out = Vec::with_capacity(self.shapes.len());
        for ((shape, &off), &dtype) in self.shapes.into_iter().zip(&self.offsets).zip(&self.dtypes)
        {
            out.push(match shape {
                Some(s) => {
                    let n = s.elem_count();
                    // The values are representable in `dtype` (rounded after every add).
                    let t = Tensor::from_slice(&self.data[off..off + n], s, device)?;
                    Some(if dtype == DType::F32 {
                        t
                    } else {
                        t.to_dtype(dtype)?
                    })
                }
                None => None,
            });
        }
        Ok(out)
    }

    /// `[0, len)` in pieces of at most `bucket` elements.
    pub fn buckets(&self, bucket: usize) -> impl Iterator<Item = Range<usize>> + use<> {
        let (len, bucket) = (self.data.len(), bucket.max(1));
        (0..len.div_ceil(bucket)).map(move |i| i * bucket..((i + 1) * bucket).min(len))
    }
}

/// [`Flat::layout`] of gradients with these shapes (`None`: no gradient) and dtypes.
pub fn layout_of(shapes: &[Option<Shape>], dtypes: &[DType]) -> Vec<u64> {
    let counts = shapes
        .iter()
        .map(|s| s.as_ref().map_or(0, |s| s.elem_count() as u64 + 1));
    let dtypes = dtypes.iter().map(|d| match d {
        DType::BF16 => 1,
        DType::F16 => 2,
        _ => 0,
    });
    counts.chain(dtypes).collect()
}

/// Checks that every rank's layout (from [`Flat::layout`], gathered rank-major) is the same.
pub fn check_layouts(all: &[u64], world: usize) -> Result<(), CollectiveError> {
    let n = all.len() / world.max(1);
    let mine = &all[..n];
    for r in 1..world {
        if &all[r * n..(r + 1) * n] != mine {
            let p = (0..n).find(|&p| all[r * n + p] != mine[p]).unwrap_or(0);
            return Err(CollectiveError::Mismatch(format!(
                "rank {r} has another gradient layout than rank 0 (parameter {p}: {} vs {} elements+1)",
                all[r * n + p],
                mine[p]
            )));
        }
    }
    Ok(())
}

/// The accumulator of the ordered fold: like [`Flat`], plus which parameters already hold
/// a sum.
#[derive(Debug, Clone)]
pub struct OrderedAcc {
    pub flat: Flat,
    started: Vec<bool>,
}

impl OrderedAcc {
    /// From the trainer's accumulator (empty before the first micro-step) and this
    /// micro-step's gradients, which fix the layout.
    pub fn new(acc: &[Option<Tensor>], grads: &Flat) -> Result<Self, CollectiveError> {
        if acc.is_empty() {
            return Ok(OrderedAcc {
                flat: Flat {
                    shapes: grads.shapes.clone(),
                    dtypes: grads.dtypes.clone(),
                    offsets: grads.offsets.clone(),
                    data: vec![0.0; grads.data.len()],
                },
                started: vec![false; grads.shapes.len()],
            });
        }
        let flat = Flat::from_grads(acc)?;
        if flat.layout() != grads.layout() {
            return Err(CollectiveError::Mismatch(
                "this micro-step's gradients have another layout than the accumulated ones".into(),
            ));
        }
        let started = flat.shapes.iter().map(Option::is_some).collect();
        Ok(OrderedAcc { flat, started })
    }

    /// Adds the gathered bucket `range` of every rank, rank 0 first: `recv` holds `world`
    /// slices of `range.len()` elements, rank-major.
    pub fn fold_bucket(&mut self, range: Range<usize>, recv: &[f32], world: usize) {
        let n = range.len();
        debug_assert_eq!(recv.len(), n * world);
        let f = &mut self.flat;
        for p in 0..f.shapes.len() {
            let Some(len) = f.elems(p) else {
                continue;
            };
            let (start, end) = (f.offsets[p], f.offsets[p] + len);
            let (a, b) = (start.max(range.start), end.min(range.end));
            if a >= b {
                continue;
            }
            let acc = &mut f.data[a..b];
            let slice = |r: usize| &recv[r * n + (a - range.start)..r * n + (b - range.start)];
            let first = if self.started[p] {
                0
            } else {
                acc.copy_from_slice(slice(0));
                1
            };
            let round = round_to(f.dtypes[p]);
            for r in first..world {
                for (x, y) in acc.iter_mut().zip(slice(r)) {
                    *x = round(*x + *y);
                }
            }
        }
    }

    /// The accumulated gradients once every bucket was folded (`grads` fixed the layout).
    pub fn finish(mut self, grads: &Flat) -> Flat {
        for (s, g) in self.flat.shapes.iter_mut().zip(&grads.shapes) {
            if s.is_none() {
                s.clone_from(g);
            }
        }
        self.flat
    }
}

/// Rounding of an f32 sum to the gradient's dtype (what a bf16/f16 add stores).
fn round_to(dtype: DType) -> fn(f32) -> f32 {
    match dtype {
        DType::BF16 => |x| half::bf16::from_f32(x).to_f32(),
        DType::F16 => |x| half::f16::from_f32(x).to_f32(),
        _ => |x| x,
    }
}

/// Rounds every parameter's values to its dtype (after a sum computed in f32).
pub fn round_in_place(flat: &mut Flat) {
    for p in 0..flat.shapes.len() {
        let Some(len) = flat.elems(p) else { continue };
        let round = round_to(flat.dtypes[p]);
        let off = flat.offsets[p];
        for x in &mut flat.data[off..off + len] {
            *x = round(*x);
        }
    }
}

impl Flat {
    /// The element count of parameter `p` when it takes space in `data` — in an
    /// accumulator that did not start yet, the layout of the incoming gradients.
    fn elems(&self, p: usize) -> Option<usize> {
        let next = self.offsets.get(p + 1).copied().unwrap_or(self.data.len());
        let n = next - self.offsets[p];
        (n > 0).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Option<Tensor> {
        Some(Tensor::new(v, &Device::Cpu).unwrap())
    }

    /// Simulates `world` ranks: gathers their flats bucket by bucket and folds.
    fn fold(acc: &[Option<Tensor>], ranks: &[Vec<Option<Tensor>>], bucket: usize) -> Flat {
        let flats: Vec<Flat> = ranks.iter().map(|g| Flat::from_grads(g).unwrap()).collect();
        let all: Vec<u64> = flats.iter().flat_map(Flat::layout).collect();
        check_layouts(&all, ranks.len()).unwrap();
        let mut o = OrderedAcc::new(acc, &flats[0]).unwrap();
        for range in flats[0].buckets(bucket) {
            let recv: Vec<f32> = flats
                .iter()
                .flat_map(|f| f.data[range.clone()].to_vec())
                .collect();
            o.fold_bucket(range, &recv, ranks.len());
        }
        o.finish(&flats[0])
    }

    #[test]
    fn ordered_fold_equals_the_sequential_fold_bit_for_bit() {
        // Values whose sum depends on the order in f32.
        let g = [
            vec![t(&[1e8, 0.1, 3.0]), None, t(&[0.3])],
            vec![t(&[-1e8, 0.2, 1e-8]), None, t(&[0.7])],
            vec![t(&[1.0, 0.3, -3.0]), None, t(&[1e-9])],
        ];
        let mut seq = g[0].clone();
        let mut single = crate::Single;
        use crate::Collective;
        let mut acc = Vec::new();
        for gi in &g {
            single.fold_in_rank_order(&mut acc, gi.clone()).unwrap();
        }
        for gi in &g[1..] {
            for (a, b) in seq.iter_mut().zip(gi) {
                if let (Some(x), Some(y)) = (a.as_ref(), b) {
                    *a = Some((x + y).unwrap());
                }
            }
        }
        for bucket in [1, 2, 3, 100] {
            let f = fold(&[], &g, bucket);
            let got = f.into_grads(&Device::Cpu).unwrap();
            for (x, y) in got.iter().zip(&acc) {
                match (x, y) {
                    (Some(x), Some(y)) => {
                        let (x, y) = (x.to_vec1::<f32>().unwrap(), y.to_vec1::<f32>().unwrap());
                        assert_eq!(
                            x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "bucket {bucket}"
                        );
                    }
                    (None, None) => {}
                    _ => panic!("presence differs"),
                }
            }
        }
        // And continuing from a started accumulator adds to it.
        let f = fold(&g[0], &g[1..], 2);
        let got = f.into_grads(&Device::Cpu).unwrap();
        assert_eq!(
            got[0].as_ref().unwrap().to_vec1::<f32>().unwrap(),
            seq[0].as_ref().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn differing_layouts_are_named() {
        let a = Flat::from_grads(&[t(&[1.0, 2.0]), None]).unwrap();
        let b = Flat::from_grads(&[t(&[1.0, 2.0]), t(&[1.0])]).unwrap();
        let all: Vec<u64> = a.layout().into_iter().chain(b.layout()).collect();
        let e = check_layouts(&all, 2).unwrap_err().to_string();
        assert!(e.contains("rank 1") && e.contains("parameter 1"), "{e}");
    }

    #[test]
    fn f64_gradients_are_refused() {
        let g = Tensor::new(&[1f64], &Device::Cpu).unwrap();
        assert!(Flat::from_grads(&[Some(g)]).is_err());
    }

    #[test]
    fn bf16_fold_rounds_after_every_add_like_candle() {
        let bf = |v: &[f32]| {
            Some(
                Tensor::new(v, &Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap(),
            )
        };
        let g = [
            vec![bf(&[1.0, 3.0, 0.1])],
            vec![bf(&[0.00390625, 1e-3, 0.2])],
            vec![bf(&[0.00390625, 7.0, 0.3])],
        ];
        let mut acc = Vec::new();
        let mut single = crate::Single;
        use crate::Collective;
        for gi in &g {
            single.fold_in_rank_order(&mut acc, gi.clone()).unwrap();
        }
        let got = fold(&[], &g, 2).into_grads(&Device::Cpu).unwrap();
        assert_eq!(got[0].as_ref().unwrap().dtype(), DType::BF16);
        let bits = |t: &Tensor| -> Vec<u16> {
            t.to_vec1::<half::bf16>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(
            bits(got[0].as_ref().unwrap()),
            bits(acc[0].as_ref().unwrap())
        );
    }

    #[test]
    fn buckets_cover_the_buffer() {
        let f = Flat::from_grads(&[t(&[0.0; 7])]).unwrap();
        let b: Vec<_> = f.buckets(3).collect();
        assert_eq!(b, [0..3, 3..6, 6..7]);
        assert_eq!(f.buckets(100).count(), 1);
    }
}
