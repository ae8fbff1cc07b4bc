//! 2-D pooling on the CPU in one pass per plane, planes in parallel. The op hands over each
//! output row's and column's window, already clipped to the image; max pooling records the
//! in-plane index of each chosen element, so its backward is a scatter of one value per output.

use super::{Float, Lane, PARALLEL_MIN, install};
use rayon::prelude::*;

/// One pooling: the windows of each output row and column (clipped input ranges), and the
/// divisor of each window for averages (`None` for max pooling).
pub(crate) struct PoolWindows<'a> {
    pub h: usize,
    pub w: usize,
    pub rows: &'a [(usize, usize)],
    pub cols: &'a [(usize, usize)],
    /// Averages: the divisor of output (oy, ox), given the two windows' full (unclipped) sizes.
    pub divisor: Option<&'a (dyn Fn(usize, usize) -> f64 + Sync)>,
}

impl PoolWindows<'_> {
    fn plane_in(&self) -> usize {
        self.h * self.w
    }
    fn plane_out(&self) -> usize {
        self.rows.len() * self.cols.len()
    }
}

fn planes_in_parallel<T: Send>(out: &mut [T], per: usize, work: usize, body: impl Fn(usize, &mut [T]) + Sync) {
    if per == 0 {
        return;
    }
    if work < PARALLEL_MIN {
        out.chunks_mut(per).enumerate().for_each(|(i, c)| body(i, c));
    } else {
        install(|| out.par_chunks_mut(per).enumerate().for_each(|(i, c)| body(i, c)));
    }
}

/// Pools dense `[planes, h, w]` input: the outputs, and for max pooling the index of each
/// chosen element within its plane (the first largest, NaN winning).
pub(crate) fn forward<S: Lane>(x: &[S], win: &PoolWindows) -> (Vec<S>, Vec<i64>) {
    let (pin, pout) = (win.plane_in(), win.plane_out());
    let planes = x.len().checked_div(pin).unwrap_or(0);
    let mut y = vec![S::default(); planes * pout];
    let is_max = win.divisor.is_none();
    let mut idx = vec![0i64; if is_max { y.len() } else { 0 }];
    let ow = win.cols.len();
    if is_max {
        // One parallel pass over planes writes outputs and indices together.
        let mut tasks: Vec<(&mut [S], &mut [i64])> =
            y.chunks_mut(pout.max(1)).zip(idx.chunks_mut(pout.max(1))).collect();
        let pairs = |windows: &[(usize, usize)]| windows.iter().enumerate().all(|(o, &w)| w == (2 * o, 2 * o + 2));
        let two_by_two = pairs(win.rows) && pairs(win.cols);
        let plane_max = |p: usize, (out, slots): &mut (&mut [S], &mut [i64])| {
            let plane = &x[p * pin..(p + 1) * pin];
            if two_by_two {
                max_2x2(plane, win.w, win.cols.len(), out, slots);
                return;
            }
            for (oy, &(y0, y1)) in win.rows.iter().enumerate() {
                for (ox, &(x0, x1)) in win.cols.iter().enumerate() {
                    let mut best = y0 * win.w + x0;
                    let mut b = plane[best].widen();
                    for iy in y0..y1 {
                        for (ix, &v) in plane[iy * win.w + x0..iy * win.w + x1].iter().enumerate() {
                            let v = v.widen();
                            let better = replaces(b, v);
                            best = if better { iy * win.w + x0 + ix } else { best };
                            b = if better { v } else { b };
                        }
                    }
                    out[oy * ow + ox] = plane[best];
                    slots[oy * ow + ox] = best as i64;
                }
            }
        };
        if x.len() < PARALLEL_MIN {
            tasks.iter_mut().enumerate().for_each(|(p, t)| plane_max(p, t));
        } else {
            install(|| tasks.par_iter_mut().enumerate().for_each(|(p, t)| plane_max(p, t)));
        }
        drop(tasks);
        return (y, idx);
    }
    let divisor = win.divisor.expect("averages have a divisor");
    planes_in_parallel(&mut y, pout, x.len(), |p, out| {
        let plane = &x[p * pin..(p + 1) * pin];
        for (oy, &(y0, y1)) in win.rows.iter().enumerate() {
            for (ox, &(x0, x1)) in win.cols.iter().enumerate() {
                let mut sum = 0.0f64;
                for iy in y0..y1 {
                    sum += plane[iy * win.w + x0..iy * win.w + x1]
                        .iter()
                        .map(|v| super::Float::to_f64_(v.widen()))
                        .sum::<f64>();
                }
                out[oy * ow + ox] = S::narrow(super::Float::from_f64_(sum / divisor(oy, ox)));
            }
        }
    });
    (y, idx)
}

/// Whether `v`, met after `best` in a window, becomes the maximum: the first largest wins, and
/// the first NaN over everything. Selects without short-circuit, so the loops hold no
/// data-dependent branch (those mispredict half the time on real activations) and vectorise.
#[inline(always)]
fn replaces<C: Float>(best: C, v: C) -> bool {
    !best.is_nan_() & ((v > best) | v.is_nan_())
}

/// Max pooling with 2x2 windows at stride 2 and no padding (LeNet's and most CNNs' pooling):
/// the four taps of each output compared in row-major order by a chain of selects ([`replaces`]),
/// over whole output rows, inside [`super::vectorized`] so the stride-2 loads and
/// the selects run on vectors.
fn max_2x2<S: Lane>(plane: &[S], w: usize, ow: usize, out: &mut [S], slots: &mut [i64]) {
    if ow == 0 {
        return;
    }
    super::vectorized(
        #[inline(always)]
        || {
            for (oy, (orow, srow)) in out.chunks_mut(ow).zip(slots.chunks_mut(ow)).enumerate() {
                let top = &plane[2 * oy * w..2 * oy * w + 2 * ow];
                let bottom = &plane[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * ow];
                for ox in 0..ow {
                    let corner = (2 * oy * w + 2 * ox) as i64;
                    let (mut best, mut at) = (top[2 * ox].widen(), corner);
                    let taps = [
                        (top[2 * ox + 1], corner + 1),
                        (bottom[2 * ox], corner + w as i64),
                        (bottom[2 * ox + 1], corner + w as i64 + 1),
                    ];
                    for (tap, offset) in taps {
                        let v = tap.widen();
                        let better = replaces(best, v);
                        at = if better { offset } else { at };
                        best = if better { v } else { best };
                    }
                    orow[ox] = S::narrow(best);
                    srow[ox] = at;
                }
            }
        },
    )
}

/// The input gradient of a pooling from the dense output gradient `dy` (`[planes, oh, ow]`) and,
/// for max pooling, the chosen indices.
pub(crate) fn backward<S: Lane>(dy: &[S], idx: Option<&[i64]>, win: &PoolWindows) -> Vec<S> {
    let (pin, pout) = (win.plane_in(), win.plane_out());
    let planes = dy.len().checked_div(pout).unwrap_or(0);
    let mut dx = vec![S::default(); planes * pin];
    let ow = win.cols.len();
    let work = dx.len();
    // Windows that do not overlap (LeNet's 2x2 at stride 2) choose each input at most once, so
    // its gradient is one output's, stored as it is: the f64 sum of a single term, narrowed.
    let apart = |windows: &[(usize, usize)]| windows.windows(2).all(|pair| pair[0].1 <= pair[1].0);
    let disjoint = apart(win.rows) && apart(win.cols);
    planes_in_parallel(&mut dx, pin, work, |p, out| {
        let g = &dy[p * pout..(p + 1) * pout];
        if let (Some(idx), true) = (idx, disjoint) {
            let idx = &idx[p * pout..(p + 1) * pout];
            g.iter().zip(idx).for_each(|(&v, &i)| out[i as usize] = v);
            return;
        }
        let mut acc = vec![0.0f64; pin];
        match idx {
            Some(idx) => {
                let idx = &idx[p * pout..(p + 1) * pout];
                g.iter().zip(idx).for_each(|(&v, &i)| acc[i as usize] += super::Float::to_f64_(v.widen()));
            }
            None => {
                let divisor = win.divisor.expect("averages have a divisor");
                for (oy, &(y0, y1)) in win.rows.iter().enumerate() {
                    for (ox, &(x0, x1)) in win.cols.iter().enumerate() {
                        let share = super::Float::to_f64_(g[oy * ow + ox].widen()) / divisor(oy, ox);
                        for iy in y0..y1 {
                            acc[iy * win.w + x0..iy * win.w + x1].iter_mut().for_each(|a| *a += share);
                        }
                    }
                }
            }
        }
        out.iter_mut().zip(&acc).for_each(|(o, &a)| *o = S::narrow(super::Float::from_f64_(a)));
    });
    dx
}
