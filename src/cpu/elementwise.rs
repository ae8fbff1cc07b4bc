//! Elementwise loops over strided views, written so the compiler vectorises the contiguous
//! case: the operands' layouts are first coalesced (size-1 dims dropped, neighbouring dims
//! merged wherever every operand's strides allow), then the output is cut into fixed-size
//! chunks that the pool runs in parallel, and each chunk walks runs of the innermost dim with
//! the stride pattern (1, 0 or other) chosen once per run, not per element.

use super::{PARALLEL_MIN, install};
use crate::layout::Layout;
use rayon::prelude::*;
use std::mem::MaybeUninit;

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
    #[allow(clippy::needless_range_loop)] // d indexes the shape and every operand's strides
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
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // i indexes every operand's offsets and strides
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

/// A fresh vector of `n` elements, every one written by `fill` (never zeroed first: zeroing a
/// large output costs as much as an elementwise op itself).
pub(crate) fn new_vec<U>(n: usize, fill: impl FnOnce(&mut [MaybeUninit<U>])) -> Vec<U> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: `fill` wrote all n elements (every caller's loop covers the whole slice).
    unsafe { v.set_len(n) };
    v
}

/// An initialised slice viewed as possibly-uninitialised, to be overwritten.
pub(crate) fn as_uninit<U>(out: &mut [U]) -> &mut [MaybeUninit<U>] {
    // SAFETY: MaybeUninit<U> has U's layout, and writing initialised values keeps it valid.
    unsafe { &mut *(out as *mut [U] as *mut [MaybeUninit<U>]) }
}

/// `map` into a fresh vector.
pub(crate) fn map_vec<T: Copy + Sync, U: Send>(src: &[T], layout: &Layout, f: impl Fn(T) -> U + Sync) -> Vec<U> {
    new_vec(layout.numel(), |out| map(src, layout, out, f))
}

/// `zip_map` into a fresh vector.
pub(crate) fn zip_map_vec<T: Copy + Sync, U: Send>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    f: impl Fn(T, T) -> U + Sync,
) -> Vec<U> {
    new_vec(la.numel(), |out| zip_map(a, la, b, lb, out, f))
}

/// `out[i] = f(x[i])` for the view `layout` of `src`, `out` being contiguous.
pub(crate) fn map<T: Copy + Sync, U: Send>(
    src: &[T],
    layout: &Layout,
    out: &mut [MaybeUninit<U>],
    f: impl Fn(T) -> U + Sync,
) {
    let walk = Walk::new([layout]);
    let stream = streams(out);
    for_chunks(out, |start, chunk| {
        super::vectorized(
            #[inline(always)]
            || {
                walk.runs(
                    start,
                    chunk.len(),
                    #[inline(always)]
                    |pos, [o], run, [s]| {
                        // Plain indexed loops over pre-cut slices: iterator adapters are separate
                        // functions the wide-vector wrapper may not inline.
                        let dst = &mut chunk[pos - start..pos - start + run];
                        if s == 1 {
                            map_run(dst, &src[o..o + run], &f, stream);
                        } else {
                            for j in 0..run {
                                dst[j] = MaybeUninit::new(f(src[o + j * s]));
                            }
                        }
                    },
                );
                fence_streams(stream);
            },
        )
    });
}

/// Independent values per step of [`map_run`]: four 16-lane vectors, whose dependency chains
/// (GELU's is about 40 operations deep) the CPU overlaps.
const INTERLEAVE: usize = 64;

/// `dst[j] = f(x[j])` over one contiguous run, [`INTERLEAVE`] values a step: a loop of one
/// vector a step left a long function latency-bound (GELU ran at 5 cycles a value). With
/// `stream`, each step's values are staged and written with [`stream_step`].
#[inline(always)]
fn map_run<T: Copy, U>(dst: &mut [MaybeUninit<U>], x: &[T], f: &impl Fn(T) -> U, stream: bool) {
    let x = &x[..dst.len()];
    let ((dst_steps, dst_tail), (x_steps, x_tail)) = (dst.as_chunks_mut::<INTERLEAVE>(), x.as_chunks::<INTERLEAVE>());
    if stream {
        for (d, x) in dst_steps.iter_mut().zip(x_steps) {
            let mut staged = [const { MaybeUninit::uninit() }; INTERLEAVE];
            for k in 0..INTERLEAVE {
                staged[k] = MaybeUninit::new(f(x[k]));
            }
            stream_step(d, &staged);
        }
    } else {
        for (d, x) in dst_steps.iter_mut().zip(x_steps) {
            for k in 0..INTERLEAVE {
                d[k] = MaybeUninit::new(f(x[k]));
            }
        }
    }
    // An indexed loop, which vectorises (the zipped iterators here compiled to scalar code).
    let x_tail = &x_tail[..dst_tail.len()];
    for j in 0..dst_tail.len() {
        dst_tail[j] = MaybeUninit::new(f(x_tail[j]));
    }
}

/// `dst[j] = f(a[j], b[j])` over one contiguous run, as [`map_run`].
#[inline(always)]
fn zip_run<T: Copy, U>(dst: &mut [MaybeUninit<U>], a: &[T], b: &[T], f: &impl Fn(T, T) -> U, stream: bool) {
    let (a, b) = (&a[..dst.len()], &b[..dst.len()]);
    let (dst_steps, dst_tail) = dst.as_chunks_mut::<INTERLEAVE>();
    let ((a_steps, a_tail), (b_steps, b_tail)) = (a.as_chunks::<INTERLEAVE>(), b.as_chunks::<INTERLEAVE>());
    if stream {
        for ((d, a), b) in dst_steps.iter_mut().zip(a_steps).zip(b_steps) {
            let mut staged = [const { MaybeUninit::uninit() }; INTERLEAVE];
            for k in 0..INTERLEAVE {
                staged[k] = MaybeUninit::new(f(a[k], b[k]));
            }
            stream_step(d, &staged);
        }
    } else {
        for ((d, a), b) in dst_steps.iter_mut().zip(a_steps).zip(b_steps) {
            for k in 0..INTERLEAVE {
                d[k] = MaybeUninit::new(f(a[k], b[k]));
            }
        }
    }
    let (a_tail, b_tail) = (&a_tail[..dst_tail.len()], &b_tail[..dst_tail.len()]);
    for j in 0..dst_tail.len() {
        dst_tail[j] = MaybeUninit::new(f(a_tail[j], b_tail[j]));
    }
}

/// Outputs of at least this many bytes are written with non-temporal (streaming) stores, which
/// skip reading each destination line into the cache before overwriting it: a quarter less
/// memory traffic for `a + b`. Measured on this project's 2-vCPU EPYC (32 MiB L3), adding two
/// 2²² f32 vectors on one thread: 1.7-2.0 ms with ordinary stores, 1.15-1.25 ms streamed.
/// Smaller outputs are likely read again while still cached, which streaming would forfeit;
/// at 16 MiB an output fills half of a typical server L3 on its own.
const STREAM_MIN_BYTES: usize = 16 << 20;

/// Whether a loop writing `out` streams its stores (see [`STREAM_MIN_BYTES`]).
fn streams<U>(out: &[MaybeUninit<U>]) -> bool {
    cfg!(target_arch = "x86_64") && std::mem::size_of_val(out) >= STREAM_MIN_BYTES
}

/// Writes one step's staged values to `dst` with 16-byte non-temporal stores where `dst` starts
/// on 16 bytes and the step is a whole number of them (SSE2, part of every x86-64 CPU);
/// otherwise, and on other targets, as an ordinary copy.
#[inline(always)]
fn stream_step<U, const N: usize>(dst: &mut [MaybeUninit<U>; N], staged: &[MaybeUninit<U>; N]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let bytes = std::mem::size_of_val(staged);
        if bytes.is_multiple_of(16) && (dst.as_ptr() as usize).is_multiple_of(16) {
            let (from, to) = (staged.as_ptr() as *const __m128i, dst.as_mut_ptr() as *mut __m128i);
            for q in 0..bytes / 16 {
                // SAFETY: both arrays hold `bytes` bytes, so q < bytes / 16 stays inside each;
                // `to` is 16-byte aligned (checked) as the streaming store requires, and the
                // load is unaligned. Every staged value was written before.
                unsafe { _mm_stream_si128(to.add(q), _mm_loadu_si128(from.add(q))) };
            }
            return;
        }
    }
    // SAFETY: two distinct arrays of N elements.
    unsafe { std::ptr::copy_nonoverlapping(staged.as_ptr(), dst.as_mut_ptr(), N) };
}

/// Orders this thread's streaming stores before whatever it does next (the end of its task,
/// after which other threads read the output): streaming stores are weakly ordered.
#[inline(always)]
fn fence_streams(stream: bool) {
    #[cfg(target_arch = "x86_64")]
    if stream {
        // SAFETY: SSE2's store fence, present on every x86-64 CPU.
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = stream;
}

/// `out[i] = f(a[i], b[i])` for the views `la` of `a` and `lb` of `b` (same shape), `out`
/// being contiguous.
pub(crate) fn zip_map<T: Copy + Sync, U: Send>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    out: &mut [MaybeUninit<U>],
    f: impl Fn(T, T) -> U + Sync,
) {
    let walk = Walk::new([la, lb]);
    let stream = streams(out);
    for_chunks(out, |start, chunk| {
        super::vectorized(
            #[inline(always)]
            || {
                walk.runs(
                    start,
                    chunk.len(),
                    #[inline(always)]
                    |pos, [oa, ob], run, [sa, sb]| {
                        let dst = &mut chunk[pos - start..pos - start + run];
                        match (sa, sb) {
                            (1, 1) => zip_run(dst, &a[oa..oa + run], &b[ob..ob + run], &f, stream),
                            (1, 0) => {
                                let (xa, y) = (&a[oa..oa + run], b[ob]);
                                for j in 0..run {
                                    dst[j] = MaybeUninit::new(f(xa[j], y));
                                }
                            }
                            (0, 1) => {
                                let (x, xb) = (a[oa], &b[ob..ob + run]);
                                for j in 0..run {
                                    dst[j] = MaybeUninit::new(f(x, xb[j]));
                                }
                            }
                            _ => {
                                for j in 0..run {
                                    dst[j] = MaybeUninit::new(f(a[oa + j * sa], b[ob + j * sb]));
                                }
                            }
                        }
                    },
                );
                fence_streams(stream);
            },
        )
    });
}

/// e^x in f32 within a few ulp, branch-free so loops over it vectorise: x = n ln2 + r with
/// |r| ≤ ln2/2 (ln2 split in two, each product fused, for an exact reduction), e^r by its Taylor
/// series to r^7 (truncation below 1e-8 relative) in Horner form of fused multiply-adds, and 2^n
/// applied as two exact power-of-two factors so results that underflow into subnormals are
/// rounded once. NaN stays NaN, ±inf give inf and 0. Fused multiply-adds round the same on every
/// path (a hardware FMA inside [`super::vectorized`], libm's `fmaf` outside it), so results do not
/// depend on the CPU; callers in hot loops run inside `vectorized`, where it is one instruction.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits: n is read from
    // there, with no float-to-integer conversion (which would not vectorise).
    const ROUNDER: f32 = 12_582_912.0;
    // Taylor coefficients 1/k!, highest first.
    const C: [f32; 8] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
    // NaN passes through the clamp (and the rest) as NaN.
    let x = x.clamp(-104.0, 89.0);
    let shifted = x.mul_add(LOG2E, ROUNDER);
    let n = shifted - ROUNDER;
    let ni = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let p = C[1..].iter().fold(C[0], |acc, &c| acc.mul_add(r, c));
    let half = ni >> 1;
    let scale = |e: i32| f32::from_bits((e.wrapping_add(127) as u32) << 23);
    p * scale(half) * scale(ni - half)
}

/// The standard normal CDF Φ(x) in f32 with relative error near 1e-7 over the whole line (also
/// deep in the left tail, where GELU's value is tiny): Φ(x) = erfc(−x/√2)/2, with erfc from its
/// Chebyshev-fitted form t·exp(−z² + P(t)), t = 1/(1 + z/2), whose fractional error is below
/// 1.2e-7 for z ≥ 0 (Press et al., *Numerical Recipes*, §6.2). Branch-free apart from selects.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, as printed
pub(crate) fn normal_cdf_f32(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    // Horner's rule in fused multiply-adds, highest coefficient first.
    const P: [f32; 10] = [
        0.170_872_77,
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ];
    let poly = P[1..].iter().fold(P[0], |acc, &c| acc.mul_add(t, c));
    let erfc = t * exp_f32((-z).mul_add(z, poly));
    // erfc(z) for z = |x|/√2: the left tail is half of it, the right side one minus that.
    if x < 0.0 { 0.5 * erfc } else { 1.0 - 0.5 * erfc }
}

/// GELU x·Φ(x) in f32 (vectorisable).
#[inline(always)]
pub(crate) fn gelu_f32(x: f32) -> f32 {
    x * normal_cdf_f32(x)
}

/// GELU's derivative Φ(x) + x·φ(x) in f32 (vectorisable).
#[inline(always)]
pub(crate) fn gelu_grad_f32(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    normal_cdf_f32(x) + x * INV_SQRT_2PI * exp_f32(-0.5 * x * x)
}

/// The destination pointer of [`copy_into_view`], shared by tasks writing disjoint elements.
#[derive(Clone, Copy)]
struct ViewPtr<U>(*mut U);
// SAFETY: each task writes the elements of its own positions, and a non-broadcast view maps
// distinct positions to distinct elements.
unsafe impl<U> Send for ViewPtr<U> {}
unsafe impl<U> Sync for ViewPtr<U> {}

impl<U> ViewPtr<U> {
    /// Writes `value` at element `i`.
    ///
    /// # Safety
    /// `i` lies inside the allocation and no other task writes it.
    unsafe fn write(&self, i: usize, value: U) {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.add(i).write(value) }
    }
}

/// `dst[dst_layout[i]] = f(src[src_layout[i]])` for every position i of two views of one shape:
/// a copy into a strided destination (a slice of a larger tensor), run by runs of the innermost
/// dim the two share, in parallel when large. `dst_layout` must not be a broadcast view (two
/// positions would write one element); callers refuse those first.
pub(crate) fn copy_into_view<T: Copy + Sync, U: Send>(
    src: &[T],
    src_layout: &Layout,
    dst: &mut [U],
    dst_layout: &Layout,
    f: impl Fn(T) -> U + Sync,
) {
    assert!(!dst_layout.is_broadcast(), "copy_into_view: a broadcast destination");
    let n = dst_layout.numel();
    if n == 0 {
        return;
    }
    // Every offset the walk yields lies inside the view, which lies inside `dst`.
    let last = dst_layout.offset()
        + (0..dst_layout.rank()).map(|d| (dst_layout.shape()[d] - 1) * dst_layout.strides()[d]).sum::<usize>();
    assert!(last < dst.len(), "copy_into_view: the view leaves its storage");
    let walk = Walk::new([dst_layout, src_layout]);
    let out = ViewPtr(dst.as_mut_ptr());
    let body = |start: usize, len: usize| {
        walk.runs(start, len, |_, [o, i], run, [so, si]| {
            for j in 0..run {
                // SAFETY: o + j so is an element of the view (checked above: inside `dst`), and
                // this task alone writes its positions' elements.
                unsafe { out.write(o + j * so, f(src[i + j * si])) };
            }
        })
    };
    if n < PARALLEL_MIN {
        body(0, n);
    } else {
        install(|| (0..n.div_ceil(CHUNK)).into_par_iter().for_each(|c| body(c * CHUNK, CHUNK.min(n - c * CHUNK))));
    }
}
