//! Layer norm on the CPU over dense `[rows, cols]` data in the compute type, rows in parallel:
//! the statistics accumulate in f64, in eight independent lanes (one sequential f64 sum per row
//! was latency-bound: 4 cycles an element); the parameter gradients sum rows in fixed blocks that
//! are combined in order (so they do not depend on the thread count).

use super::elementwise::new_vec;
use super::{Float, PARALLEL_MIN, install, sum_lanes};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per block of the parameter gradients.
const ROW_BLOCK: usize = 64;

/// About this many values per task of the row-parallel passes.
const TASK_VALUES: usize = 1 << 13;

/// Runs `body(first_row, rows, side)` over blocks of whole rows of `out` (`cols` values each,
/// every one written by `body`) and the matching entries of `side` (one per row), blocks in
/// parallel when `out` is large. Each block runs inside [`super::vectorized`], so `body` (marked
/// `#[inline(always)]`, as the helpers of its hot loops) gets the CPU's wide vectors.
fn row_blocks<T: Send, S: Send>(
    out: &mut [T],
    cols: usize,
    side: &mut [S],
    body: impl Fn(usize, &mut [T], &mut [S]) + Sync,
) {
    if cols == 0 {
        return;
    }
    let rows_per_block = (TASK_VALUES / cols).max(1);
    let run = |(b, (rows, side)): (usize, (&mut [T], &mut [S]))| {
        super::vectorized(
            #[inline(always)]
            || body(b * rows_per_block, rows, side),
        )
    };
    if out.len() < PARALLEL_MIN {
        run((0, (out, side)));
    } else {
        install(|| {
            out.par_chunks_mut(rows_per_block * cols).zip(side.par_chunks_mut(rows_per_block)).enumerate().for_each(run)
        });
    }
}

/// y, and each row's mean and reciprocal standard deviation.
pub(crate) fn forward<T: Float>(
    x: &[T],
    cols: usize,
    w: Option<&[T]>,
    b: Option<&[T]>,
    eps: f64,
) -> (Vec<T>, Vec<f64>, Vec<f64>) {
    let rows = x.len().checked_div(cols).unwrap_or(0);
    let mut stats = vec![(0.0f64, 0.0f64); rows];
    // Absent parameters are ones and zeros, so each row is one zipped loop (which vectorises).
    let (ones, zeros) = (vec![T::ONE; cols], vec![T::ZERO; cols]);
    let (w, b) = (w.unwrap_or(&ones), b.unwrap_or(&zeros));
    let y = new_vec(x.len(), |y| {
        row_blocks(
            y,
            cols,
            &mut stats,
            #[inline(always)]
            |first, out, stats| {
                for (i, (out, stat)) in out.chunks_exact_mut(cols).zip(stats).enumerate() {
                    let row = &x[(first + i) * cols..(first + i + 1) * cols];
                    let mu = sum_lanes(row, row, row, |v, _, _| v.to_f64_()) / cols as f64;
                    let var = sum_lanes(row, row, row, |v, _, _| (v.to_f64_() - mu).powi(2)) / cols as f64;
                    let inv = 1.0 / (var + eps).sqrt();
                    *stat = (mu, inv);
                    let (mu, inv) = (T::from_f64_(mu), T::from_f64_(inv));
                    for (((o, &v), &wj), &bj) in out.iter_mut().zip(row).zip(w).zip(b) {
                        *o = MaybeUninit::new((v - mu) * inv * wj + bj);
                    }
                }
            },
        )
    });
    let (mean, rstd) = stats.into_iter().unzip();
    (y, mean, rstd)
}

/// dx = (g − mean(g) − x̂ · mean(g x̂)) · rstd with g = dy γ.
pub(crate) fn grad_input<T: Float>(
    dy: &[T],
    x: &[T],
    cols: usize,
    w: Option<&[T]>,
    mean: &[f64],
    rstd: &[f64],
) -> Vec<T> {
    let ones = vec![T::ONE; cols];
    let w = &w.unwrap_or(&ones)[..cols];
    new_vec(x.len(), |dx| {
        row_blocks(
            dx,
            cols,
            &mut vec![(); mean.len()],
            #[inline(always)]
            |first, out, _| {
                for (i, out) in out.chunks_exact_mut(cols).enumerate() {
                    let r = first + i;
                    let (g, xr) = (&dy[r * cols..(r + 1) * cols], &x[r * cols..(r + 1) * cols]);
                    let (mu, inv) = (T::from_f64_(mean[r]), T::from_f64_(rstd[r]));
                    let mean_g = T::from_f64_(sum_lanes(g, w, xr, |gj, wj, _| (gj * wj).to_f64_()) / cols as f64);
                    let mean_gx = sum_lanes(g, w, xr, |gj, wj, xj| (gj * wj * ((xj - mu) * inv)).to_f64_());
                    let mean_gx = T::from_f64_(mean_gx / cols as f64);
                    for (((o, &gj), &xj), &wj) in out.iter_mut().zip(g).zip(xr).zip(w) {
                        *o = MaybeUninit::new(inv * (gj * wj - mean_g - (xj - mu) * inv * mean_gx));
                    }
                }
            },
        )
    })
}

/// (dγ, dβ) = (Σ_r dy x̂, Σ_r dy) in f64.
pub(crate) fn grad_params<T: Float>(
    dy: &[T],
    x: &[T],
    cols: usize,
    mean: &[f64],
    rstd: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len().checked_div(cols).unwrap_or(0);
    let block = |b: usize| {
        let (mut dw, mut db) = (vec![0.0f64; cols], vec![0.0f64; cols]);
        super::vectorized(
            #[inline(always)]
            || {
                for r in b * ROW_BLOCK..((b + 1) * ROW_BLOCK).min(rows) {
                    let (g, xr) = (&dy[r * cols..(r + 1) * cols], &x[r * cols..(r + 1) * cols]);
                    let (mu, inv) = (mean[r], rstd[r]);
                    for (((dwj, dbj), &gj), &xj) in dw.iter_mut().zip(db.iter_mut()).zip(g).zip(xr) {
                        let gj = gj.to_f64_();
                        *dwj += gj * (xj.to_f64_() - mu) * inv;
                        *dbj += gj;
                    }
                }
            },
        );
        (dw, db)
    };
    let blocks = rows.div_ceil(ROW_BLOCK);
    let parts: Vec<(Vec<f64>, Vec<f64>)> = if x.len() < PARALLEL_MIN {
        (0..blocks).map(block).collect()
    } else {
        install(|| (0..blocks).into_par_iter().map(block).collect())
    };
    let (mut dw, mut db) = (vec![0.0; cols], vec![0.0; cols]);
    for (pw, pb) in parts {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (dw, db)
}
