//! Row-wise softmax, log-softmax and cross-entropy on the CPU, three passes over each row: the
//! max; the exponentials of the shifted row (the vectorisable f32 exponential for f32 and 16-bit
//! floats) into an L1-sized scratch row, summed in sixteen lanes per block of 256 values and
//! the blocks in f64; the scaled write. Rows run in parallel in fixed blocks, inside
//! [`super::vectorized`].

use super::elementwise::new_vec;
use super::{Float, Lane, PARALLEL_MIN, install};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per parallel task.
fn rows_per_task(cols: usize) -> usize {
    (PARALLEL_MIN / cols.max(1)).max(1)
}

/// Lanes of the row loops: one AVX-512 vector of f32.
const LANES: usize = 16;

/// The maximum of a row in its compute type (−inf when empty), in sixteen lanes of selects
/// (which vectorise). A NaN needs no detection here: its exponential is NaN, and so are the
/// row's sum and every output of the row.
#[inline(always)]
pub(crate) fn row_max<S: Lane>(row: &[S]) -> S::C {
    #[inline(always)]
    fn keep_max<C: Float>(m: C, v: C) -> C {
        if v > m { v } else { m }
    }
    let mut lanes = [S::C::from_f64_(f64::NEG_INFINITY); LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            lanes[j] = keep_max(lanes[j], c[j].widen());
        }
    }
    let head = lanes.iter().fold(lanes[0], |m, &v| keep_max(m, v));
    tail.iter().fold(head, |m, &v| keep_max(m, v.widen()))
}

/// Σ exp(x − shift) over a row, in sixteen lanes of the compute type across blocks of 256
/// elements (sixteen terms a lane, so an f32 lane sum stays within 16 ulp) and f64 across blocks;
/// each run of exponentials is also handed to `keep` with the index of its first (to store them,
/// or not). (Sixteen f64 lanes updated per vector were spilled and shuffled by the compiler; one
/// vector of the compute type stays in a register.)
#[inline(always)]
pub(crate) fn sum_exp<S: Lane>(row: &[S], shift: S::C, mut keep: impl FnMut(usize, &[S::C])) -> f64 {
    const BLOCK: usize = 16 * LANES;
    let mut total = 0.0f64;
    for (b, block) in row.chunks(BLOCK).enumerate() {
        let mut lanes = [S::C::ZERO; LANES];
        let chunks = block.chunks_exact(LANES);
        let tail = chunks.remainder();
        for (c, chunk) in chunks.enumerate() {
            let mut exps = [S::C::ZERO; LANES];
            for j in 0..LANES {
                exps[j] = (chunk[j].widen() - shift).exp_();
            }
            keep(b * BLOCK + c * LANES, &exps);
            for j in 0..LANES {
                lanes[j] += exps[j];
            }
        }
        let base = b * BLOCK + block.len() - tail.len();
        for (j, &v) in tail.iter().enumerate() {
            let e = (v.widen() - shift).exp_();
            keep(base + j, &[e]);
            lanes[j] += e;
        }
        total += lanes.iter().map(|l| l.to_f64_()).sum::<f64>();
    }
    total
}

/// Softmax (or log-softmax when `log`) of one row into `dst`, with `scratch` a row of the
/// compute type.
#[inline(always)]
fn softmax_row<S: Lane>(src: &[S], dst: &mut [MaybeUninit<S>], scratch: &mut [S::C], log: bool) {
    let max = row_max(src);
    if log {
        let ln = S::C::from_f64_(sum_exp(src, max, |_, _| {}).ln());
        dst.iter_mut().zip(src).for_each(|(d, &v)| {
            d.write(S::narrow(v.widen() - max - ln));
        });
    } else {
        let sum = sum_exp(src, max, |i, e| scratch[i..i + e.len()].copy_from_slice(e));
        let inv = S::C::from_f64_(1.0 / sum);
        dst.iter_mut().zip(scratch.iter()).for_each(|(d, &e)| {
            d.write(S::narrow(e * inv));
        });
    }
}

/// Softmax (or log-softmax when `log`) of each `cols`-long row of dense `x`.
pub(crate) fn softmax<S: Lane>(x: &[S], cols: usize, log: bool) -> Vec<S> {
    if cols == 0 {
        return Vec::new();
    }
    let per = rows_per_task(cols) * cols;
    let body = |(t, block): (usize, &mut [MaybeUninit<S>])| {
        let mut scratch: Vec<S::C> = vec![S::C::ZERO; cols];
        super::vectorized(
            #[inline(always)]
            || {
                let rows = x[t * per..].chunks(cols);
                for (dst, src) in block.chunks_mut(cols).zip(rows) {
                    softmax_row(src, dst, &mut scratch, log);
                }
            },
        )
    };
    // Every element is written (each row in full), so the output is never zeroed first.
    new_vec(x.len(), |out| {
        if x.len() < PARALLEL_MIN {
            out.chunks_mut(per).enumerate().for_each(body);
        } else {
            install(|| out.par_chunks_mut(per).enumerate().for_each(body));
        }
    })
}

/// Per-row cross-entropy of dense `[rows, cols]` logits against labels already checked to lie
/// in `0..cols`: (loss, log-sum-exp) of each row, in f64.
pub(crate) fn cross_entropy<S: Lane>(x: &[S], cols: usize, labels: &[i64]) -> (Vec<f64>, Vec<f64>) {
    let row = |r: usize| {
        let src = &x[r * cols..(r + 1) * cols];
        let (max, sum) = super::vectorized(
            #[inline(always)]
            || {
                let max = row_max(src);
                (max, sum_exp(src, max, |_, _| {}))
            },
        );
        let lse = max.to_f64_() + sum.ln();
        (lse - src[labels[r] as usize].widen().to_f64_(), lse)
    };
    let rows = labels.len();
    let pairs: Vec<(f64, f64)> = if rows * cols < PARALLEL_MIN {
        (0..rows).map(row).collect()
    } else {
        install(|| (0..rows).into_par_iter().map(row).collect())
    };
    pairs.into_iter().unzip()
}

/// The cross-entropy gradient (softmax(x) − onehot(label)) · factor for dense logits, given
/// each row's log-sum-exp.
pub(crate) fn cross_entropy_grad<S: Lane>(x: &[S], cols: usize, labels: &[i64], lse: &[f64], factor: f64) -> Vec<S> {
    if cols == 0 {
        return Vec::new();
    }
    let per = rows_per_task(cols) * cols;
    let f = S::C::from_f64_(factor);
    let body = |(t, block): (usize, &mut [MaybeUninit<S>])| {
        super::vectorized(
            #[inline(always)]
            || {
                for (r, dst) in block.chunks_mut(cols).enumerate() {
                    let row = t * per / cols + r;
                    let src = &x[row * cols..(row + 1) * cols];
                    let l = S::C::from_f64_(lse[row]);
                    dst.iter_mut().zip(src).for_each(|(d, &v)| {
                        d.write(S::narrow((v.widen() - l).exp_() * f));
                    });
                    let hit = labels[row] as usize;
                    dst[hit].write(S::narrow(((src[hit].widen() - l).exp_() - S::C::ONE) * f));
                }
            },
        )
    };
    new_vec(x.len(), |out| {
        if x.len() < PARALLEL_MIN {
            out.chunks_mut(per).enumerate().for_each(body);
        } else {
            install(|| out.par_chunks_mut(per).enumerate().for_each(body));
        }
    })
}
