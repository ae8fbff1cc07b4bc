//! Layer norm on the CPU over dense `[rows, cols]` data in the compute type, rows in parallel:
//! the statistics accumulate in f64; the parameter gradients sum rows in fixed blocks that are
//! combined in order (so they do not depend on the thread count).

use super::{Float, PARALLEL_MIN, install};
use rayon::prelude::*;

/// Rows per block of the parameter gradients.
const ROW_BLOCK: usize = 64;

fn par_rows<T: Send>(out: &mut [T], cols: usize, body: impl Fn(usize, &mut [T]) + Sync) {
    if cols == 0 {
        return;
    }
    if out.len() < PARALLEL_MIN {
        out.chunks_mut(cols).enumerate().for_each(|(r, row)| body(r, row));
    } else {
        install(|| out.par_chunks_mut(cols).enumerate().for_each(|(r, row)| body(r, row)));
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
    let stat = |r: usize| {
        let row = &x[r * cols..(r + 1) * cols];
        let mu = row.iter().map(|v| v.to_f64_()).sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v.to_f64_() - mu).powi(2)).sum::<f64>() / cols as f64;
        (mu, 1.0 / (var + eps).sqrt())
    };
    if x.len() < PARALLEL_MIN {
        stats.iter_mut().enumerate().for_each(|(r, s)| *s = stat(r));
    } else {
        install(|| stats.par_iter_mut().enumerate().for_each(|(r, s)| *s = stat(r)));
    }
    let mut y = vec![T::ZERO; x.len()];
    par_rows(&mut y, cols, |r, out| {
        let (mu, inv) = (T::from_f64_(stats[r].0), T::from_f64_(stats[r].1));
        let row = &x[r * cols..(r + 1) * cols];
        for (j, (o, &v)) in out.iter_mut().zip(row).enumerate() {
            let scaled = (v - mu) * inv * w.map_or(T::ONE, |w| w[j]);
            *o = scaled + b.map_or(T::ZERO, |b| b[j]);
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
    let mut dx = vec![T::ZERO; x.len()];
    par_rows(&mut dx, cols, |r, out| {
        let (g, xr) = (&dy[r * cols..(r + 1) * cols], &x[r * cols..(r + 1) * cols]);
        let (mu, inv) = (T::from_f64_(mean[r]), T::from_f64_(rstd[r]));
        let gw = |j: usize| g[j] * w.map_or(T::ONE, |w| w[j]);
        let xhat = |j: usize| (xr[j] - mu) * inv;
        let mean_g = T::from_f64_((0..cols).map(|j| gw(j).to_f64_()).sum::<f64>() / cols as f64);
        let mean_gx = T::from_f64_((0..cols).map(|j| (gw(j) * xhat(j)).to_f64_()).sum::<f64>() / cols as f64);
        for (j, o) in out.iter_mut().enumerate() {
            *o = inv * (gw(j) - mean_g - xhat(j) * mean_gx);
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
