//! Layer norm on the CPU over dense `[rows, cols]` data in the compute type, rows in parallel:
//! the statistics accumulate in f64, in eight independent lanes (one sequential f64 sum per row
//! was latency-bound: 4 cycles an element); the parameter gradients sum rows in fixed blocks that
//! are combined in order (so they do not depend on the thread count).

use super::{Float, PARALLEL_MIN, install};
use rayon::prelude::*;

/// Rows per block of the parameter gradients.
const ROW_BLOCK: usize = 64;

fn par_rows<T: Send>(out: &mut [T], cols: usize, body: impl Fn(usize, &mut [T]) + Sync) {
    if cols == 0 {
        return;
    }
    let run = |(r, row): (usize, &mut [T])| super::vectorized(|| body(r, row));
    if out.len() < PARALLEL_MIN {
        out.chunks_mut(cols).enumerate().for_each(run);
    } else {
        install(|| out.par_chunks_mut(cols).enumerate().for_each(run));
    }
}

/// Σ term(j) over `0..n` in f64, in eight independent lanes (which vectorise) added pairwise.
#[inline(always)]
fn sum_lanes(n: usize, term: impl Fn(usize) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let full = n / 8 * 8;
    for j0 in (0..full).step_by(8) {
        for (k, lane) in lanes.iter_mut().enumerate() {
            *lane += term(j0 + k);
        }
    }
    for j in full..n {
        lanes[j - full] += term(j);
    }
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
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
    let stat = |r: usize| {
        let row = &x[r * cols..(r + 1) * cols];
        super::vectorized(|| {
            let mu = sum_lanes(cols, |j| row[j].to_f64_()) / cols as f64;
            let var = sum_lanes(cols, |j| (row[j].to_f64_() - mu).powi(2)) / cols as f64;
            (mu, 1.0 / (var + eps).sqrt())
        })
    };
    if x.len() < PARALLEL_MIN {
        stats.iter_mut().enumerate().for_each(|(r, s)| *s = stat(r));
    } else {
        install(|| stats.par_iter_mut().enumerate().for_each(|(r, s)| *s = stat(r)));
    }
    // Absent parameters are ones and zeros, so each row is one zipped loop (which vectorises).
    let (ones, zeros) = (vec![T::ONE; cols], vec![T::ZERO; cols]);
    let (w, b) = (w.unwrap_or(&ones), b.unwrap_or(&zeros));
    let mut y = vec![T::ZERO; x.len()];
    par_rows(&mut y, cols, |r, out| {
        let (mu, inv) = (T::from_f64_(stats[r].0), T::from_f64_(stats[r].1));
        let row = &x[r * cols..(r + 1) * cols];
        for (((o, &v), &wj), &bj) in out.iter_mut().zip(row).zip(w).zip(b) {
            *o = (v - mu) * inv * wj + bj;
        }
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
    let mut dx = vec![T::ZERO; x.len()];
    par_rows(&mut dx, cols, |r, out| {
        let (g, xr) = (&dy[r * cols..(r + 1) * cols], &x[r * cols..(r + 1) * cols]);
        let (mu, inv) = (T::from_f64_(mean[r]), T::from_f64_(rstd[r]));
        let mean_g = T::from_f64_(sum_lanes(cols, |j| (g[j] * w[j]).to_f64_()) / cols as f64);
        let mean_gx = T::from_f64_(sum_lanes(cols, |j| (g[j] * w[j] * ((xr[j] - mu) * inv)).to_f64_()) / cols as f64);
        for (((o, &gj), &xj), &wj) in out.iter_mut().zip(g).zip(xr).zip(w) {
            *o = inv * (gj * wj - mean_g - (xj - mu) * inv * mean_gx);
        }
    });
    dx
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
        for r in b * ROW_BLOCK..((b + 1) * ROW_BLOCK).min(rows) {
            let (g, xr) = (&dy[r * cols..(r + 1) * cols], &x[r * cols..(r + 1) * cols]);
            for j in 0..cols {
                let gj = g[j].to_f64_();
                dw[j] += gj * (xr[j].to_f64_() - mean[r]) * rstd[r];
                db[j] += gj;
            }
        }
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
