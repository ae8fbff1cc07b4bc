//! Scaled dot-product attention on the CPU, one (batch, head) per task, as GEMMs on the
//! head's dense `[s, d]` matrices: S = scale · Q Kᵀ, row softmax (causal rows stop at their
//! own position), O = P V. The backward recomputes P from the saved log-sum-exp and forms
//! dV = Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − rowsum(dO ∘ O)), dQ = scale · dS K,
//! dK = scale · dSᵀ Q. The score matrix of one head (sq × sk) is the only temporary, so memory
//! stays linear in the batch.

use super::gemm::Gemm;
use super::softmax::row_max;
use super::{Lane, install, sum_lanes};
use rayon::prelude::*;

/// One attention call's sizes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionShape {
    /// batch × heads
    pub bh: usize,
    pub sq: usize,
    pub sk: usize,
    pub d: usize,
    pub causal: bool,
    pub scale: f64,
}

impl AttentionShape {
    /// Keys visible to query `i`.
    fn visible(&self, i: usize) -> usize {
        if self.causal { (i + 1).min(self.sk) } else { self.sk }
    }
}

/// C (m × n) = A B (+ C) for dense row-major operands, either read transposed.
#[allow(clippy::too_many_arguments)]
fn mm<T: Gemm>(m: usize, k: usize, n: usize, a: &[T], a_t: bool, b: &[T], b_t: bool, c: &mut [T], beta: T) {
    let a_strides = if a_t { [1, m as isize] } else { [k as isize, 1] };
    let b_strides = if b_t { [1, k as isize] } else { [n as isize, 1] };
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "attention operands too small");
    // SAFETY: the assert keeps every addressed element inside its slice; `c` is a unique borrow.
    unsafe {
        T::gemm_oriented(m, k, n, a.as_ptr(), a_strides, b.as_ptr(), b_strides, beta, c.as_mut_ptr(), [n as isize, 1])
    }
}

/// The probabilities of one head in place of its scaled scores, and each row's log-sum-exp.
fn softmax_rows<T: Gemm + Lane<C = T>>(s: &AttentionShape, scores: &mut [T], lse: &mut [f64]) {
    let mut exps = vec![T::ZERO; s.sk];
    super::vectorized(
        #[inline(always)]
        || {
            for (i, row) in scores.chunks_mut(s.sk).enumerate() {
                // Exponentials in whole vectors (a causal row's visible part mostly ends in a
                // scalar tail), those of masked scores then set to 0. (Not −∞ before: an
                // exponential that underflows costs a microcode assist.)
                let seen = s.visible(i);
                let max = row_max(&row[..seen]);
                let whole = seen.next_multiple_of(16).min(row.len());
                let (values, out) = (&row[..whole], &mut exps[..whole]);
                for j in 0..whole {
                    out[j] = (values[j] - max).exp_();
                }
                exps[seen..].iter_mut().for_each(|e| *e = T::ZERO);
                let sum = sum_lanes(&exps, &exps, &exps, |e, _, _| e.to_f64_());
                let inv = T::from_f64_(1.0 / sum);
                row.iter_mut().zip(&exps).for_each(|(x, &e)| *x = e * inv);
                lse[i] = max.to_f64_() + sum.ln();
            }
        },
    )
}

/// The scaled scores of one head, Q Kᵀ · scale, into `scores` (sq × sk).
fn scores<T: Gemm>(s: &AttentionShape, q: &[T], k: &[T], out: &mut [T]) {
    mm(s.sq, s.d, s.sk, q, false, k, true, out, T::ZERO);
    let scale = T::from_f64_(s.scale);
    out.iter_mut().for_each(|x| *x *= scale);
}

/// The output (`[bh, sq, d]`) and each query's log-sum-exp, from dense `[bh, s, d]` inputs.
pub(crate) fn forward<T: Gemm + Lane<C = T>>(s: &AttentionShape, q: &[T], k: &[T], v: &[T]) -> (Vec<T>, Vec<f64>) {
    let (sq, sk, d) = (s.sq, s.sk, s.d);
    let mut out = vec![T::ZERO; s.bh * sq * d];
    let mut lse = vec![0.0; s.bh * sq];
    let head = |h: usize, (o, l): (&mut [T], &mut [f64])| {
        let mut p = vec![T::ZERO; sq * sk];
        scores(s, &q[h * sq * d..(h + 1) * sq * d], &k[h * sk * d..(h + 1) * sk * d], &mut p);
        softmax_rows(s, &mut p, l);
        mm(sq, sk, d, &p, false, &v[h * sk * d..(h + 1) * sk * d], false, o, T::ZERO);
    };
    if sq * sk * d == 0 {
        return (out, lse);
    }
    install(|| out.par_chunks_mut(sq * d).zip(lse.par_chunks_mut(sq)).enumerate().for_each(|(h, pair)| head(h, pair)));
    (out, lse)
}

/// (dQ, dK, dV) from the forward's inputs, output, log-sum-exp and the output's gradient.
pub(crate) fn backward<T: Gemm + Lane<C = T>>(
    s: &AttentionShape,
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: &[f64],
    dout: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (sq, sk, d) = (s.sq, s.sk, s.d);
    let (mut dq, mut dk, mut dv) = (vec![T::ZERO; q.len()], vec![T::ZERO; k.len()], vec![T::ZERO; v.len()]);
    if sq * sk * d == 0 {
        return (dq, dk, dv);
    }
    let scale = T::from_f64_(s.scale);
    let head = |h: usize, dqh: &mut [T], dkh: &mut [T], dvh: &mut [T]| {
        let (qh, kh, vh) = (&q[h * sq * d..][..sq * d], &k[h * sk * d..][..sk * d], &v[h * sk * d..][..sk * d]);
        let (oh, gh) = (&out[h * sq * d..][..sq * d], &dout[h * sq * d..][..sq * d]);
        // P from the saved log-sum-exp: exp(scale · q·k − lse), zero past the causal edge.
        let mut p = vec![T::ZERO; sq * sk];
        scores(s, qh, kh, &mut p);
        super::vectorized(
            #[inline(always)]
            || {
                for (i, row) in p.chunks_mut(sk).enumerate() {
                    let l = T::from_f64_(lse[h * sq + i]);
                    // In whole vectors, as in the forward's softmax.
                    let seen = s.visible(i);
                    row[..seen.next_multiple_of(16).min(sk)].iter_mut().for_each(|x| *x = (*x - l).exp_());
                    row[seen..].iter_mut().for_each(|x| *x = T::ZERO);
                }
            },
        );
        mm(sk, sq, d, &p, true, gh, false, dvh, T::ZERO);
        let mut dp = vec![T::ZERO; sq * sk];
        mm(sq, d, sk, gh, false, vh, true, &mut dp, T::ZERO);
        super::vectorized(
            #[inline(always)]
            || {
                for i in 0..sq {
                    let (go, oo) = (&gh[i * d..(i + 1) * d], &oh[i * d..(i + 1) * d]);
                    let delta = T::from_f64_(sum_lanes(go, oo, oo, |g, o, _| (g * o).to_f64_()));
                    let (prow, dprow) = (&p[i * sk..(i + 1) * sk], &mut dp[i * sk..(i + 1) * sk]);
                    // dS, scaled once here for both dQ and dK.
                    dprow.iter_mut().zip(prow).for_each(|(x, &pr)| *x = pr * (*x - delta) * scale);
                }
            },
        );
        mm(sq, sk, d, &dp, false, kh, false, dqh, T::ZERO);
        mm(sk, sq, d, &dp, true, qh, false, dkh, T::ZERO);
    };
    install(|| {
        dq.par_chunks_mut(sq * d)
            .zip(dk.par_chunks_mut(sk * d))
            .zip(dv.par_chunks_mut(sk * d))
            .enumerate()
            .for_each(|(h, ((a, b), c))| head(h, a, b, c))
    });
    (dq, dk, dv)
}
