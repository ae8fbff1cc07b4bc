//! Reductions over a view split into kept dims (the output) and reduced dims, accumulating in
//! f64 whatever the input dtype. Three shapes of work:
//! - *row* reductions, where each output's elements are one contiguous run: sums add blocks of
//!   128 values as trees in the compute type, then into sixteen f64 lanes (which the compiler
//!   vectorises; see [`sum_slice`]), long rows cut into fixed blocks that run in parallel and
//!   are combined in order;
//! - *column* reductions, where the kept dims are the contiguous ones (a bias gradient, the
//!   sum over a batch): whole input rows are added into a vector of accumulators;
//! - anything else walks each output's elements through the strided layout.

use super::elementwise::Walk;
use super::{Lane, PARALLEL_MIN, install};

/// A stored value widened exactly to f64, the accumulator type.
pub(crate) trait Wide: Copy {
    fn wide(self) -> f64;
}

impl<S: Lane> Wide for S {
    #[inline(always)]
    fn wide(self) -> f64 {
        super::Float::to_f64_(self.widen())
    }
}
use crate::layout::Layout;
use rayon::prelude::*;

/// Elements per parallel block of one long row. Fixed, so sums never depend on the thread count.
const BLOCK: usize = 1 << 16;

/// How elements combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fold {
    /// Σ x
    Sum,
    /// The largest, NaN-propagating.
    Max,
    /// The smallest, NaN-propagating.
    Min,
}

impl Fold {
    fn init(self) -> f64 {
        match self {
            Fold::Sum => 0.0,
            Fold::Max => f64::NEG_INFINITY,
            Fold::Min => f64::INFINITY,
        }
    }

    #[inline(always)]
    fn combine(self, a: f64, b: f64) -> f64 {
        match self {
            Fold::Sum => a + b,
            Fold::Max => {
                if a.is_nan() || a > b {
                    a
                } else {
                    b
                }
            }
            Fold::Min => {
                if a.is_nan() || a < b {
                    a
                } else {
                    b
                }
            }
        }
    }

    /// Folds a contiguous run.
    fn slice<T: Lane>(self, xs: &[T]) -> f64 {
        super::vectorized(
            #[inline(always)]
            || {
                if self == Fold::Sum {
                    return sum_slice(xs);
                }
                xs.iter().fold(self.init(), |acc, &x| self.combine(acc, x.wide()))
            },
        )
    }

    /// Folds a contiguous run of any length, in parallel fixed blocks when it is long.
    fn long_slice<T: Lane + Sync>(self, xs: &[T]) -> f64 {
        if xs.len() < PARALLEL_MIN {
            return self.slice(xs);
        }
        let partials: Vec<f64> = install(|| xs.par_chunks(BLOCK).map(|b| self.slice(b)).collect());
        partials.into_iter().fold(self.init(), |a, b| self.combine(a, b))
    }
}

/// Σ of a run in f64. Each block of 128 values is first added up in the compute type, as a
/// balanced tree of depth three over eight vectors of 16 (independent adds, which run at the
/// speed of the loads), and the block's 16 partial sums are widened into sixteen f64 lanes.
/// The tree's error is at most 3·u·Σ|x| of its eight terms, well inside the tolerance of a
/// rounded f32 result; the tail runs in the f64 lanes directly.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // j indexes the block at eight offsets and the lanes
pub(crate) fn sum_slice<T: Lane>(xs: &[T]) -> f64 {
    let mut wide = [0.0f64; 16];
    let blocks = xs.chunks_exact(128);
    let tail = blocks.remainder();
    for g in blocks {
        let x = |i: usize| g[i].widen();
        for j in 0..16 {
            let tree =
                ((x(j) + x(j + 16)) + (x(j + 32) + x(j + 48))) + ((x(j + 64) + x(j + 80)) + (x(j + 96) + x(j + 112)));
            wide[j] += tree.wide();
        }
    }
    let chunks = tail.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..16 {
            wide[j] += c[j].wide();
        }
    }
    for h in [8, 4, 2, 1] {
        for j in 0..h {
            wide[j] += wide[j + h];
        }
    }
    let mut total = wide[0];
    for &x in rest {
        total += x.wide();
    }
    total
}

/// Folds `view` of `src` (any float type, widened exactly to f64) over its last `view.rank() - kept_rank` dims: one f64 per element of
/// the kept dims, in row-major order.
pub(crate) fn reduce<T: Lane + Sync>(fold: Fold, src: &[T], view: &Layout, kept_rank: usize) -> Vec<f64> {
    let (shape, strides) = (view.shape(), view.strides());
    let kept = Layout::from_parts(shape[..kept_rank].to_vec(), strides[..kept_rank].to_vec(), 0);
    let gone = Layout::from_parts(shape[kept_rank..].to_vec(), strides[kept_rank..].to_vec(), 0);
    let (outer, inner) = (kept.numel(), gone.numel());
    if outer == 0 {
        return Vec::new();
    }
    if inner == 0 {
        return vec![fold.init(); outer];
    }
    // Each output's elements as one run: starting offset and stride.
    let gone_walk = Walk::new([&gone]);
    let single_run = gone_walk.runs_count() == 1;
    let kept_walk = Walk::new([&kept]);
    let mut out = vec![0.0f64; outer];
    if single_run && gone_walk.inner_stride(0) == 1 {
        // Row reductions: each output is a contiguous run.
        let row = |o: usize| {
            let base = view.offset() + kept_walk.offset_of(0, o);
            fold.long_slice(&src[base..base + inner])
        };
        if outer == 1 || outer * inner < PARALLEL_MIN {
            out.iter_mut().enumerate().for_each(|(o, d)| *d = row(o));
        } else {
            install(|| out.par_iter_mut().enumerate().for_each(|(o, d)| *d = row(o)));
        }
        return out;
    }
    if kept_walk.runs_count() == 1 && kept_walk.inner_stride(0) == 1 {
        // Column reductions: the outputs are a contiguous run of each reduced position's data.
        // Reduced positions `first..first + count` folded into `acc`, in wide vectors.
        let columns = |start: usize, (first, count): (usize, usize), acc: &mut [f64]| {
            super::vectorized(
                #[inline(always)]
                || {
                    acc.iter_mut().for_each(|a| *a = fold.init());
                    gone_walk.runs(
                        first,
                        count,
                        #[inline(always)]
                        |_, [o], run, [s]| {
                            for j in 0..run {
                                let base = view.offset() + o + j * s + start;
                                let xs = &src[base..base + acc.len()];
                                if fold == Fold::Sum {
                                    acc.iter_mut().zip(xs).for_each(|(a, &x)| *a += x.wide());
                                } else {
                                    acc.iter_mut().zip(xs).for_each(|(a, &x)| *a = fold.combine(*a, x.wide()));
                                }
                            }
                        },
                    );
                },
            )
        };
        const COLUMNS: usize = 1 << 10;
        if outer > COLUMNS && outer * inner >= PARALLEL_MIN {
            // Wide: blocks of columns in parallel, each over every reduced position.
            install(|| {
                out.par_chunks_mut(COLUMNS).enumerate().for_each(|(i, acc)| columns(i * COLUMNS, (0, inner), acc))
            });
            return out;
        }
        // Narrow (a bias gradient over a batch of tokens): the reduced positions in at most
        // `PARTS` blocks whose size depends only on the shape, folded in parallel and combined
        // in order, so the result does not depend on the thread count.
        const PARTS: usize = 64;
        let rows = inner.div_ceil(PARTS).max(64);
        let blocks: Vec<(usize, usize)> = (0..inner).step_by(rows).map(|r| (r, rows.min(inner - r))).collect();
        if blocks.len() == 1 {
            columns(0, blocks[0], &mut out);
            return out;
        }
        let part = |&b: &(usize, usize)| {
            let mut acc = vec![0.0; outer];
            columns(0, b, &mut acc);
            acc
        };
        let parts: Vec<Vec<f64>> = if outer * inner < PARALLEL_MIN {
            blocks.iter().map(part).collect()
        } else {
            install(|| blocks.par_iter().map(part).collect())
        };
        out.iter_mut().for_each(|o| *o = fold.init());
        for p in parts {
            out.iter_mut().zip(p).for_each(|(o, x)| *o = fold.combine(*o, x));
        }
        return out;
    }
    // General: walk each output's elements through the layout.
    let general = |o: usize| {
        let base = view.offset() + kept_walk.offset_of(0, o);
        let mut acc = fold.init();
        gone_walk.runs(0, inner, |_, [off], run, [s]| {
            let off = base + off;
            if s == 1 {
                acc = fold.combine(acc, fold.slice(&src[off..off + run]));
            } else {
                acc = (0..run).fold(acc, |a, j| fold.combine(a, src[off + j * s].wide()));
            }
        });
        acc
    };
    if outer * inner < PARALLEL_MIN {
        out.iter_mut().enumerate().for_each(|(o, d)| *d = general(o));
    } else {
        install(|| out.par_iter_mut().enumerate().for_each(|(o, d)| *d = general(o)));
    }
    out
}
