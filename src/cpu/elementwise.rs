//! Elementwise loops over strided views, written so the compiler vectorises the contiguous
//! case: the operands' layouts are first coalesced (size-1 dims dropped, neighbouring dims
//! merged wherever every operand's strides allow), then the output is cut into fixed-size
//! chunks that the pool runs in parallel, and each chunk walks runs of the innermost dim with
//! the stride pattern (1, 0 or other) chosen once per run, not per element.

use super::{PARALLEL_MIN, install};
use crate::layout::Layout;
use rayon::prelude::*;

/// Output elements per parallel task: large enough to amortise the hand-off, small enough to
/// balance two to sixteen threads. Fixed, so the split never depends on the thread count.
const CHUNK: usize = 1 << 14;

/// `N` views of one shape, reduced to the fewest dims that describe them all.
#[derive(Debug)]
pub(crate) struct Walk<const N: usize> {
    shape: Vec<usize>,
    strides: [Vec<usize>; N],
    offsets: [usize; N],
}

impl<const N: usize> Walk<N> {
    /// Coalesces `layouts`, which must all have the same shape.
    pub(crate) fn new(layouts: [&Layout; N]) -> Self {
        let shape = layouts[0].shape();
        debug_assert!(layouts.iter().all(|l| l.shape() == shape), "walk over views of different shapes");
        let mut dims: Vec<usize> = Vec::new();
        let mut strides: [Vec<usize>; N] = std::array::from_fn(|_| Vec::new());
        for d in 0..shape.len() {
            if shape[d] == 1 {
                continue;
            }
            // Merge d into the previous kept dim when, for every operand, stepping the
            // previous dim once equals stepping d through its whole length.
            let mergeable = !dims.is_empty()
                && (0..N).all(|i| strides[i].last().copied() == Some(layouts[i].strides()[d] * shape[d]));
            if mergeable {
                *dims.last_mut().expect("non-empty") *= shape[d];
                for i in 0..N {
                    *strides[i].last_mut().expect("non-empty") = layouts[i].strides()[d];
                }
            } else {
                dims.push(shape[d]);
                for i in 0..N {
                    strides[i].push(layouts[i].strides()[d]);
                }
            }
        }
        if dims.is_empty() {
            dims.push(1);
            strides.iter_mut().for_each(|s| s.push(0));
        }
        Walk { shape: dims, strides, offsets: std::array::from_fn(|i| layouts[i].offset()) }
    }

    /// The number of innermost runs (every dim but the last).
    pub(crate) fn runs_count(&self) -> usize {
        self.shape[..self.shape.len() - 1].iter().product()
    }

    /// Operand `i`'s stride along the innermost dim.
    pub(crate) fn inner_stride(&self, i: usize) -> usize {
        self.strides[i][self.shape.len() - 1]
    }

    /// Operand `i`'s storage offset of the element at row-major position `flat`.
    pub(crate) fn offset_of(&self, i: usize, flat: usize) -> usize {
        let mut rest = flat;
        let mut offset = self.offsets[i];
        for d in (0..self.shape.len()).rev() {
            offset += (rest % self.shape[d]) * self.strides[i][d];
            rest /= self.shape[d];
        }
        offset
    }

    /// Calls `f(position, offsets, run, inner_strides)` for each run of the innermost dim among
    /// the elements `start..start + len` in row-major order: `run` elements at `position` of the
    /// output, operand i starting at `offsets[i]` and stepping `inner_strides[i]`.
    pub(crate) fn runs(&self, start: usize, len: usize, mut f: impl FnMut(usize, [usize; N], usize, [usize; N])) {
        if len == 0 {
            return;
        }
        let rank = self.shape.len();
        let inner = self.shape[rank - 1];
        let inner_strides: [usize; N] = std::array::from_fn(|i| self.strides[i][rank - 1]);
        // The multi-index of `start`, and the operands' offsets there.
        let mut index = vec![0usize; rank];
        let mut rest = start;
        for d in (0..rank).rev() {
            index[d] = rest % self.shape[d];
            rest /= self.shape[d];
        }
        let mut offsets: [usize; N] =
            std::array::from_fn(|i| self.offsets[i] + (0..rank).map(|d| index[d] * self.strides[i][d]).sum::<usize>());
        let (mut pos, end) = (start, start + len);
        while pos < end {
            let run = (inner - index[rank - 1]).min(end - pos);
            f(pos, offsets, run, inner_strides);
            pos += run;
            // Advance the odometer by `run` along the innermost dim, carrying outwards.
            index[rank - 1] += run;
            for i in 0..N {
                offsets[i] += run * inner_strides[i];
            }
            let mut d = rank - 1;
            while index[d] == self.shape[d] && d > 0 {
                for i in 0..N {
                    offsets[i] -= self.shape[d] * self.strides[i][d];
                    offsets[i] += self.strides[i][d - 1];
                }
                index[d] = 0;
                index[d - 1] += 1;
                d -= 1;
            }
        }
    }
}

/// Runs `body(start, chunk)` over `out` cut into fixed chunks, in parallel when it is large.
pub(crate) fn for_chunks<U: Send>(out: &mut [U], body: impl Fn(usize, &mut [U]) + Sync) {
    if out.len() < PARALLEL_MIN {
        body(0, out);
        return;
    }
    install(|| out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| body(i * CHUNK, chunk)));
}

/// `out[i] = f(x[i])` for the view `layout` of `src`, `out` being contiguous.
pub(crate) fn map<T: Copy + Sync, U: Send>(src: &[T], layout: &Layout, out: &mut [U], f: impl Fn(T) -> U + Sync) {
    let walk = Walk::new([layout]);
    for_chunks(out, |start, chunk| {
        walk.runs(start, chunk.len(), |pos, [o], run, [s]| {
            let dst = &mut chunk[pos - start..pos - start + run];
            match s {
                1 => dst.iter_mut().zip(&src[o..o + run]).for_each(|(d, &x)| *d = f(x)),
                _ => dst.iter_mut().enumerate().for_each(|(j, d)| *d = f(src[o + j * s])),
            }
        })
    });
}

/// `out[i] = f(a[i], b[i])` for the views `la` of `a` and `lb` of `b` (same shape), `out`
/// being contiguous.
pub(crate) fn zip_map<T: Copy + Sync, U: Send>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    out: &mut [U],
    f: impl Fn(T, T) -> U + Sync,
) {
    let walk = Walk::new([la, lb]);
    for_chunks(out, |start, chunk| {
        walk.runs(start, chunk.len(), |pos, [oa, ob], run, [sa, sb]| {
            let dst = &mut chunk[pos - start..pos - start + run];
            match (sa, sb) {
                (1, 1) => {
                    let (xa, xb) = (&a[oa..oa + run], &b[ob..ob + run]);
                    dst.iter_mut().zip(xa.iter().zip(xb)).for_each(|(d, (&x, &y))| *d = f(x, y));
                }
                (1, 0) => {
                    let y = b[ob];
                    dst.iter_mut().zip(&a[oa..oa + run]).for_each(|(d, &x)| *d = f(x, y));
                }
                (0, 1) => {
                    let x = a[oa];
                    dst.iter_mut().zip(&b[ob..ob + run]).for_each(|(d, &y)| *d = f(x, y));
                }
                _ => dst.iter_mut().enumerate().for_each(|(j, d)| *d = f(a[oa + j * sa], b[ob + j * sb])),
            }
        })
    });
}

/// e^x in f32 within a few ulp, branch-free so loops over it vectorise: x = n ln2 + r with
/// |r| ≤ ln2/2 (ln2 split in two for an exact product), e^r by its Taylor series to r^7
/// (truncation below 1e-8 relative), and 2^n applied as two exact power-of-two factors so
/// results that underflow into subnormals are rounded once. NaN stays NaN, ±inf give inf and 0.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits: n is read from
    // there, with no float-to-integer conversion (which would not vectorise).
    const ROUNDER: f32 = 12_582_912.0;
    // Comparisons rather than `clamp`, so NaN passes through as a select.
    let x = if x < -104.0 {
        -104.0
    } else if x > 89.0 {
        89.0
    } else {
        x
    };
    let shifted = x * LOG2E + ROUNDER;
    let n = shifted - ROUNDER;
    let ni = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let half = ni >> 1;
    let scale = |e: i32| f32::from_bits((e.wrapping_add(127) as u32) << 23);
    p * scale(half) * scale(ni - half)
}
