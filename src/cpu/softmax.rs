//! Row-wise softmax, log-softmax and cross-entropy on the CPU: one pass per row for the max,
//! one for the exponentials (the vectorisable f32 exponential for f32 and 16-bit floats) with
//! their sum accumulated in f64, one to normalise. Rows run in parallel in fixed blocks.

use super::elementwise::new_vec;
use super::reduce::sum_slice;
use super::{Float, Lane, PARALLEL_MIN, install};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per parallel task.
fn rows_per_task(cols: usize) -> usize {
    (PARALLEL_MIN / cols.max(1)).max(1)
}

/// The NaN-propagating maximum of a row (−inf when empty), in eight lanes of plain selects
/// (which vectorise) with NaN detected separately.
#[inline(always)]
fn row_max<C: Float>(row: &[C]) -> C {
    let mut lanes = [C::from_f64_(f64::NEG_INFINITY); 8];
    let mut nan = false;
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            lanes[j] = if c[j] > lanes[j] { c[j] } else { lanes[j] };
            nan |= c[j].is_nan_();
        }
    }
    for &v in tail {
        lanes[0] = if v > lanes[0] { v } else { lanes[0] };
        nan |= v.is_nan_();
    }
    if nan {
        return C::from_f64_(f64::NAN);
    }
    lanes.iter().fold(lanes[0], |a, &b| if b > a { b } else { a })
}

/// Softmax (or log-softmax when `log`) of each `cols`-long row of dense `x`.
pub(crate) fn softmax<S: Lane>(x: &[S], cols: usize, log: bool) -> Vec<S> {
    if cols == 0 {
        return Vec::new();
    }
    let per = rows_per_task(cols) * cols;
    let body = |(t, block): (usize, &mut [MaybeUninit<S>])| {
        let mut wide: Vec<S::C> = vec![S::C::ZERO; cols];
        super::vectorized(
            #[inline(always)]
            || {
                for (r, dst) in block.chunks_mut(cols).enumerate() {
                    let src = &x[t * per + r * cols..t * per + (r + 1) * cols];
                    wide.iter_mut().zip(src).for_each(|(w, &v)| *w = v.widen());
                    let max = row_max(&wide);
                    wide.iter_mut().for_each(|w| *w = *w - max);
                    if log {
                        let sum = sum_exp(&wide);
                        let ln = S::C::from_f64_(sum.ln());
                        dst.iter_mut().zip(&wide).for_each(|(d, &w)| {
                            d.write(S::narrow(w - ln));
                        });
                    } else {
                        wide.iter_mut().for_each(|w| *w = w.exp_());
                        let inv = S::C::from_f64_(1.0 / sum_slice(&wide));
                        dst.iter_mut().zip(&wide).for_each(|(d, &w)| {
                            d.write(S::narrow(w * inv));
                        });
                    }
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

/// Σ exp(w) in f64 over a row already shifted by its max.
#[inline(always)]
fn sum_exp<C: Float + super::reduce::Wide>(shifted: &[C]) -> f64 {
    const LANES: usize = 64;
    let mut buf = [C::ZERO; LANES];
    let mut total = 0.0;
    for chunk in shifted.chunks(LANES) {
        buf.iter_mut().zip(chunk).for_each(|(b, &w)| *b = w.exp_());
        total += sum_slice(&buf[..chunk.len()]);
    }
    total
}

/// Per-row cross-entropy of dense `[rows, cols]` logits against labels already checked to lie
/// in `0..cols`: (loss, log-sum-exp) of each row, in f64.
pub(crate) fn cross_entropy<S: Lane>(x: &[S], cols: usize, labels: &[i64]) -> (Vec<f64>, Vec<f64>) {
    let row = |r: usize| {
        let src = &x[r * cols..(r + 1) * cols];
        let wide: Vec<S::C> = src.iter().map(|&v| v.widen()).collect();
        let max = row_max(&wide);
        let shifted: Vec<S::C> = wide.iter().map(|&w| w - max).collect();
        let lse = max.to_f64_() + sum_exp(&shifted).ln();
        (lse - wide[labels[r] as usize].to_f64_(), lse)
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
    };
    new_vec(x.len(), |out| {
        if x.len() < PARALLEL_MIN {
            out.chunks_mut(per).enumerate().for_each(body);
        } else {
            install(|| out.par_chunks_mut(per).enumerate().for_each(body));
        }
    })
}
