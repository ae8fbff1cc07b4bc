//! The forward pass of a convolution with at most 16 filters per group, computed directly in
//! f32 on x86-64 CPUs with AVX-512F, without a patch matrix.
//!
//! Why: through the patch matrix, LeNet-5's second convolution (16 filters over 6 × 14², 5 × 5,
//! output rows 10 wide) copied each 10-value input run separately and handed a 16-row product
//! to a GEMM built for wider ones: 4.3-4.8 ms a batch of 256 on one thread of a Zen 4, where
//! PyTorch's took 1.25.
//!
//! Algorithm: a group's filters are one 16-lane vector per patch position (ci, ky, kx), filter o
//! in lane o (zeros past the group's filters), and one more vector holds the biases. A step
//! takes up to [`MAX_PIXELS`] adjacent pixels of one output row (a row is cut into equal steps)
//! and keeps their sums in that many registers, 16 filters each, started from the biases; for
//! each patch position it loads the filter vector once and meets it with each pixel's input
//! value, broadcast from memory, in one fused multiply-add. At the end the step's registers are
//! transposed 16 × 16, so each filter's pixels leave in one masked store. A padded layer reads
//! a copy of the group's planes with zero borders, made once per image and group.
//!
//! Bound: the FMA pipe, one 16-lane FMA a patch position and a pixel. Lanes past the group's
//! filters are idle: LeNet-5's second layer uses all 16, its first 6.
//!
//! Each output's sum runs from its bias over (ci, ky, kx) in order, whatever the threads, so
//! results do not depend on the thread count.

use super::conv::{ALIGN_SLACK, ConvShape, per_image};
use super::sgemm::{lanes, transpose16};
use std::arch::x86_64::*;

/// Filters per group that fit the vector: one lane each.
const LANES: usize = 16;

/// The most output pixels a step keeps in registers (of the 32): 12 sums, a filter vector,
/// and room for the broadcasts.
const MAX_PIXELS: usize = 12;

/// Whether `s`'s forward runs here: at most 16 filters per group on a CPU with AVX-512F (a 1 × 1
/// unit-stride, unpadded layer excepted: its image is already its patch matrix).
pub(crate) fn applies(s: &ConvShape) -> bool {
    s.og() <= LANES && !s.plain() && std::arch::is_x86_feature_detected!("avx512f")
}

/// The sizes the kernel walks: the (possibly zero-bordered) planes it reads and the output.
#[derive(Clone, Copy)]
struct Geometry {
    cg: usize,
    og: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: (usize, usize),
    dilation: (usize, usize),
}

/// Per group: the bias vector, then one filter vector per patch position (see the module doc).
fn filter_vectors(s: &ConvShape, w: &[f32], bias: Option<&[f32]>) -> Vec<[f32; LANES]> {
    let (k, og) = (s.k(), s.og());
    let mut vectors = vec![[0.0; LANES]; s.groups * (k + 1)];
    for (g, group) in vectors.chunks_mut(k + 1).enumerate() {
        if let Some(b) = bias {
            group[0][..og].copy_from_slice(&b[g * og..(g + 1) * og]);
        }
        for (o, filter) in w[g * og * k..(g + 1) * og * k].chunks(k).enumerate() {
            group[1..].iter_mut().zip(filter).for_each(|(vector, &v)| vector[o] = v);
        }
    }
    vectors
}

/// The planes the kernels read for `s` (bordered by the padding, when there is any), and
/// whether they are a bordered copy. Panics if the output's reads would leave them: the kernels
/// read them unchecked.
fn geometry(s: &ConvShape) -> (Geometry, bool) {
    let ((ph, pw), (sh, sw), (dh, dw)) = (s.padding, s.stride, s.dilation);
    let g = Geometry {
        cg: s.cg(),
        og: s.og(),
        h: s.h + 2 * ph,
        w: s.w + 2 * pw,
        kh: s.kh,
        kw: s.kw,
        oh: s.oh,
        ow: s.ow,
        stride: s.stride,
        dilation: s.dilation,
    };
    assert!(
        s.oh == 0 || s.ow == 0 || ((s.oh - 1) * sh + (s.kh - 1) * dh < g.h && (s.ow - 1) * sw + (s.kw - 1) * dw < g.w),
        "conv2d: the direct kernels' output shape does not fit the input"
    );
    (g, s.padding != (0, 0))
}

/// One group's input planes as the kernels read them: `own` itself, or, when `padded`, its copy
/// inside `bordered` (whose borders are zero: the copy writes only the interior, into scratch
/// that starts zeroed and holds nothing else).
fn group_planes<'a>(s: &ConvShape, g: &Geometry, padded: bool, own: &'a [f32], bordered: &'a mut [f32]) -> &'a [f32] {
    if !padded {
        return own;
    }
    let plane = g.h * g.w;
    for (to, from) in bordered.chunks_mut(plane).zip(own.chunks(s.h * s.w)) {
        for (iy, row) in from.chunks(s.w).enumerate() {
            let at = (iy + s.padding.0) * g.w + s.padding.1;
            to[at..at + s.w].copy_from_slice(row);
        }
    }
    &bordered[..g.cg * plane]
}

/// The forward pass (see the module doc): `x` dense N × C × H × W, `w` dense O × C/groups × KH ×
/// KW, `bias` [O]. The caller checked [`applies`].
pub(crate) fn forward(s: &ConvShape, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert!(applies(s), "conv2d: the direct forward needs AVX-512F and at most 16 filters per group");
    let (geometry, padded) = geometry(s);
    let (cg, og, k, p) = (s.cg(), s.og(), s.k(), s.oh * s.ow);
    let mut y = vec![0.0f32; s.n * s.o * p];
    if p == 0 {
        return y;
    }
    let filters = filter_vectors(s, w, bias);
    let scratch = if padded { cg * geometry.h * geometry.w + ALIGN_SLACK } else { 0 };
    per_image(&mut y, s.o * p, scratch, |bordered, i, yi| {
        let xi = &x[i * s.c * s.h * s.w..(i + 1) * s.c * s.h * s.w];
        for g in 0..s.groups {
            let planes =
                group_planes(s, &geometry, padded, &xi[g * cg * s.h * s.w..(g + 1) * cg * s.h * s.w], bordered);
            let out = &mut yi[g * og * p..(g + 1) * og * p];
            // SAFETY: `applies` found AVX-512F; `planes` holds the group's cg planes of the
            // geometry's size and `out` its og output planes; `geometry` checked that every
            // read lies inside a plane.
            unsafe { group(&geometry, planes, &filters[g * (k + 1)..(g + 1) * (k + 1)], out) };
        }
    });
    y
}

/// One group of one image: every output row, cut into equal steps of at most [`MAX_PIXELS`].
///
/// # Safety
/// AVX-512F is present; `planes` holds `cg` planes of `h × w` and `out` `og` planes of `oh × ow`;
/// the geometry's reads stay inside its planes; `filters` holds `1 + cg · kh · kw` vectors.
#[target_feature(enable = "avx512f")]
unsafe fn group(s: &Geometry, planes: &[f32], filters: &[[f32; LANES]], out: &mut [f32]) {
    debug_assert!(planes.len() >= s.cg * s.h * s.w && out.len() >= s.og * s.oh * s.ow);
    debug_assert!(filters.len() > s.cg * s.kh * s.kw);
    let steps = s.ow.div_ceil(MAX_PIXELS);
    let unit = s.stride.1 == 1;
    for oy in 0..s.oh {
        let mut ox = 0;
        for step in 0..steps {
            let px = (s.ow - ox).div_ceil(steps - step);
            macro_rules! step {
                ($($n:literal)*) => {
                    match (px, unit) {
                        $(($n, true) => pixels::<$n, true>(s, planes, filters, oy, ox, out),)*
                        $(($n, false) => pixels::<$n, false>(s, planes, filters, oy, ox, out),)*
                        _ => unreachable!("a step has 1 to MAX_PIXELS pixels"),
                    }
                };
            }
            // SAFETY: forwarded; ox + px ≤ ow.
            unsafe { step!(1 2 3 4 5 6 7 8 9 10 11 12) };
            ox += px;
        }
    }
}

/// Output pixels `ox..ox + PX` of row `oy` for the group's filters (see the module doc); with
/// `UNIT` the horizontal stride is 1, so the pixels' input offsets are constants.
///
/// # Safety
/// As for [`group`], and `ox + PX ≤ ow`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn pixels<const PX: usize, const UNIT: bool>(
    s: &Geometry,
    planes: &[f32],
    filters: &[[f32; LANES]],
    oy: usize,
    ox: usize,
    out: &mut [f32],
) {
    let ((sh, sw), (dh, dw)) = (s.stride, s.dilation);
    let sw = if UNIT { 1 } else { sw };
    // SAFETY (the whole body): the caller's bounds; the filter pointer walks `filters` in order.
    unsafe {
        let mut acc = [_mm512_loadu_ps(filters[0].as_ptr()); PX];
        let mut filter = filters.as_ptr().add(1);
        for ci in 0..s.cg {
            let plane = planes.as_ptr().add(ci * s.h * s.w);
            for ky in 0..s.kh {
                let line = plane.add((oy * sh + ky * dh) * s.w + ox * sw);
                for kx in 0..s.kw {
                    let f = _mm512_loadu_ps((*filter).as_ptr());
                    filter = filter.add(1);
                    let at = line.add(kx * dw);
                    for (p, sums) in acc.iter_mut().enumerate() {
                        *sums = _mm512_fmadd_ps(_mm512_set1_ps(*at.add(p * sw)), f, *sums);
                    }
                }
            }
        }
        let mut rows = [_mm512_setzero_ps(); LANES];
        rows[..PX].copy_from_slice(&acc);
        let by_filter = transpose16(rows);
        let (mask, at) = (lanes(PX), oy * s.ow + ox);
        for (channel, sums) in out.chunks_mut(s.oh * s.ow).take(s.og).zip(by_filter) {
            _mm512_mask_storeu_ps(channel[at..at + PX].as_mut_ptr(), mask, sums);
        }
    }
}

/// Images per block of the weight gradient's accumulation, as in the patch-matrix path: fixed,
/// so the order of the sums is.
const WEIGHT_BLOCK: usize = 4;

/// The most patch positions whose sums a weight-gradient sweep keeps in registers.
const MAX_TAPS: usize = 12;

/// The weight gradient (O × C/groups × KH × KW) from `dy` (N × O × OH × OW) and `x`, directly.
///
/// dW[o, ci, ky, kx] sums dy[o, pixel] · x[ci, the pixel's input under (ky, kx)] over every
/// output pixel of every image. Per image and group, dy is transposed into one 16-lane vector per
/// pixel (filter o in lane o); a sweep over the pixels then keeps the sums of up to
/// [`MAX_TAPS`] patch positions in registers, meeting each pixel's dy vector with each
/// position's input value, broadcast from memory, in one fused multiply-add. The sums carry from
/// image to image through a block of [`WEIGHT_BLOCK`] images; the blocks' sums are added in
/// order. Bound: the FMA pipe, one FMA a patch position and a pixel, as in the forward. The
/// caller checked [`applies`].
pub(crate) fn backward_weight(s: &ConvShape, dy: &[f32], x: &[f32]) -> Vec<f32> {
    assert!(applies(s), "conv2d: the direct weight gradient needs AVX-512F and at most 16 filters per group");
    let (geometry, padded) = geometry(s);
    let (cg, og, k, p) = (s.cg(), s.og(), s.k(), s.oh * s.ow);
    let mut dw = vec![0.0f32; s.o * k];
    if p == 0 || s.n == 0 {
        return dw;
    }
    let plane = geometry.h * geometry.w;
    // Where each patch position (ci, ky, kx) reads, from the input under an output pixel.
    let offsets: Vec<usize> = (0..cg)
        .flat_map(|ci| (0..s.kh).flat_map(move |ky| (0..s.kw).map(move |kx| (ci, ky, kx))))
        .map(|(ci, ky, kx)| ci * plane + ky * s.dilation.0 * geometry.w + kx * s.dilation.1)
        .collect();
    let per_block = s.groups * k * LANES;
    let blocks = s.n.div_ceil(WEIGHT_BLOCK);
    let mut partials = vec![0.0f32; blocks * per_block];
    // The scratch: the pixels' dy vectors (aligned first), then the bordered planes if padded.
    let vectors = p * LANES;
    let scratch = vectors + if padded { cg * plane } else { 0 } + ALIGN_SLACK;
    per_image(&mut partials, per_block, scratch, |scratch, b, sums| {
        let (dy_vectors, bordered) = scratch.split_at_mut(vectors);
        for i in b * WEIGHT_BLOCK..((b + 1) * WEIGHT_BLOCK).min(s.n) {
            let xi = &x[i * s.c * s.h * s.w..(i + 1) * s.c * s.h * s.w];
            let dyi = &dy[i * s.o * p..(i + 1) * s.o * p];
            for g in 0..s.groups {
                let planes =
                    group_planes(s, &geometry, padded, &xi[g * cg * s.h * s.w..(g + 1) * cg * s.h * s.w], bordered);
                // SAFETY: `applies` found AVX-512F; `dy_vectors` holds p vectors; the group's dy
                // is og planes of p values; every offset plus a pixel's input start lies inside
                // `planes` (checked in `geometry`).
                unsafe {
                    transpose_dy(&dyi[g * og * p..(g + 1) * og * p], og, p, dy_vectors);
                    sweep(&geometry, planes, dy_vectors, &offsets, &mut sums[g * k * LANES..(g + 1) * k * LANES]);
                }
            }
        }
    });
    // The blocks' sums in order, then each position's lanes to its filters' rows.
    let mut total = partials[..per_block].to_vec();
    for block in partials.chunks(per_block).skip(1) {
        total.iter_mut().zip(block).for_each(|(a, &v)| *a += v);
    }
    for (g, group) in total.chunks(k * LANES).enumerate() {
        for (t, lanes) in group.chunks(LANES).enumerate() {
            for (o, &v) in lanes[..og].iter().enumerate() {
                dw[(g * og + o) * k + t] = v;
            }
        }
    }
    dw
}

/// dy's `og` planes of `p` values as one 16-lane vector per pixel (filter o in lane o, zeros
/// past `og`), 16 pixels at a time through a 16 × 16 transpose.
///
/// # Safety
/// AVX-512F is present; `dy` holds `og · p` values, `vectors` at least `16 · p`.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_dy(dy: &[f32], og: usize, p: usize, vectors: &mut [f32]) {
    assert!(dy.len() >= og * p && vectors.len() >= p * LANES && og <= LANES);
    for p0 in (0..p).step_by(LANES) {
        let count = LANES.min(p - p0);
        let rows: [__m512; LANES] = std::array::from_fn(|o| {
            if o < og {
                // SAFETY: `count` values of plane o from pixel p0 lie inside `dy`.
                unsafe { _mm512_maskz_loadu_ps(lanes(count), dy[o * p + p0..].as_ptr()) }
            } else {
                _mm512_setzero_ps()
            }
        });
        for (q, column) in transpose16(rows).into_iter().take(count).enumerate() {
            // SAFETY: pixel p0 + q's vector lies inside `vectors`.
            unsafe { _mm512_storeu_ps(vectors[(p0 + q) * LANES..].as_mut_ptr(), column) };
        }
    }
}

/// Adds one image's products into `sums` (one 16-lane vector per patch position), the positions
/// in equal chunks of at most [`MAX_TAPS`], each chunk a sweep over every output pixel.
///
/// # Safety
/// AVX-512F is present; `planes` holds the geometry's `cg` planes and every `offsets[t]` plus an
/// output pixel's input start lies inside it; `dy_vectors` holds `oh · ow` vectors and `sums`
/// one per offset.
#[target_feature(enable = "avx512f")]
unsafe fn sweep(s: &Geometry, planes: &[f32], dy_vectors: &[f32], offsets: &[usize], sums: &mut [f32]) {
    debug_assert!(dy_vectors.len() >= s.oh * s.ow * LANES && sums.len() >= offsets.len() * LANES);
    let chunks = offsets.len().div_ceil(MAX_TAPS);
    let mut t0 = 0;
    for chunk in 0..chunks {
        let taps = (offsets.len() - t0).div_ceil(chunks - chunk);
        macro_rules! chunk {
            ($($n:literal)*) => {
                match taps {
                    $($n => positions::<$n>(s, planes, dy_vectors, &offsets[t0..t0 + $n], &mut sums[t0 * LANES..(t0 + $n) * LANES]),)*
                    _ => unreachable!("a chunk has 1 to MAX_TAPS positions"),
                }
            };
        }
        // SAFETY: forwarded.
        unsafe { chunk!(1 2 3 4 5 6 7 8 9 10 11 12) };
        t0 += taps;
    }
}

/// One chunk of `T` patch positions over every output pixel (see [`sweep`]).
///
/// # Safety
/// As for [`sweep`], with `offsets` and `sums` the chunk's `T` positions.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn positions<const T: usize>(
    s: &Geometry,
    planes: &[f32],
    dy_vectors: &[f32],
    offsets: &[usize],
    sums: &mut [f32],
) {
    let ((sh, sw), offsets): (_, [usize; T]) = (s.stride, offsets.try_into().expect("T offsets"));
    // SAFETY (the whole body): the caller's bounds.
    unsafe {
        let mut acc: [__m512; T] = std::array::from_fn(|t| _mm512_loadu_ps(sums[t * LANES..].as_ptr()));
        let mut d = dy_vectors.as_ptr();
        for oy in 0..s.oh {
            let line = planes.as_ptr().add(oy * sh * s.w);
            for ox in 0..s.ow {
                let (at, v) = (line.add(ox * sw), _mm512_loadu_ps(d));
                d = d.add(LANES);
                for (sum, &offset) in acc.iter_mut().zip(&offsets) {
                    *sum = _mm512_fmadd_ps(_mm512_set1_ps(*at.add(offset)), v, *sum);
                }
            }
        }
        for (t, sum) in acc.into_iter().enumerate() {
            _mm512_storeu_ps(sums[t * LANES..].as_mut_ptr(), sum);
        }
    }
}

/// Whether `s`'s input gradient runs here: [`applies`], unit strides, and padding no wider than
/// the kernel's reach (so every input pixel lies under some output pixel's patch).
pub(crate) fn applies_to_input(s: &ConvShape) -> bool {
    let reach = |k: usize, d: usize| d * (k - 1);
    applies(s)
        && s.stride == (1, 1)
        && s.padding.0 <= reach(s.kh, s.dilation.0)
        && s.padding.1 <= reach(s.kw, s.dilation.1)
}

/// The most input channels whose sums a grad-input step keeps in registers.
const MAX_CHANNELS: usize = 12;

/// The input gradient (N × C × H × W) from `dy` (N × O × OH × OW) and `w`, directly, for unit
/// strides.
///
/// dx[ci, iy, ix] sums w[o, ci, ky, kx] · dy[o, iy + ph − ky·dh, ix + pw − kx·dw] over the
/// filters and the taps whose output pixel exists. Here 16 adjacent input pixels of a row share
/// a vector: a step keeps the sums of up to [`MAX_CHANNELS`] input channels over one such
/// vector in registers and, for each filter and each tap whose output row exists, loads dy's
/// 16 values once and meets them with each channel's weight, broadcast from memory, in one
/// fused multiply-add. dy is read from a copy bordered left and right by the kernel's reach
/// less the padding, so a row's taps that fall outside it read zeros. Each sum runs over
/// (o, ky, kx) in order. Bound: the FMA pipe, with the lanes past a row's end idle (LeNet-5's
/// second layer: rows of 14, 14 of 16 lanes). The caller checked [`applies_to_input`].
pub(crate) fn backward_input(s: &ConvShape, dy: &[f32], w: &[f32]) -> Vec<f32> {
    assert!(applies_to_input(s), "conv2d: the direct input gradient needs unit strides and at most 16 filters");
    let (cg, og, k, p) = (s.cg(), s.og(), s.k(), s.oh * s.ow);
    let ((ph, pw), dw) = (s.padding, s.dilation.1);
    let mut dx = vec![0.0f32; s.n * s.c * s.h * s.w];
    if p == 0 || dx.is_empty() {
        return dx;
    }
    // The bordered dy rows: `border` zeros on each side of every row.
    let border = dw * (s.kw - 1) - pw;
    let width = s.ow + 2 * border;
    // Per group, the weights as [o][ky][kx][ci], so a step's channels are adjacent.
    let mut packed = vec![0.0f32; s.o * k];
    for (g, group) in packed.chunks_mut(og * k).enumerate() {
        for (o, filter) in w[g * og * k..(g + 1) * og * k].chunks(k).enumerate() {
            for (t, &v) in filter.iter().enumerate() {
                let (ci, tap) = (t / (s.kh * s.kw), t % (s.kh * s.kw));
                group[(o * s.kh * s.kw + tap) * cg + ci] = v;
            }
        }
    }
    let geometry = Geometry {
        cg,
        og,
        h: s.h,
        w: s.w,
        kh: s.kh,
        kw: s.kw,
        oh: s.oh,
        ow: s.ow,
        stride: (1, 1),
        dilation: s.dilation,
    };
    let rows = Rows { width, border, padding: (ph, pw) };
    let scratch = og * s.oh * width + ALIGN_SLACK;
    per_image(&mut dx, s.c * s.h * s.w, scratch, |bordered, i, dxi| {
        let dyi = &dy[i * s.o * p..(i + 1) * s.o * p];
        for g in 0..s.groups {
            // The borders stay zero: only the interior is ever written.
            for (to, from) in bordered.chunks_mut(width).zip(dyi[g * og * p..(g + 1) * og * p].chunks(s.ow)) {
                to[border..border + s.ow].copy_from_slice(from);
            }
            let out = &mut dxi[g * cg * s.h * s.w..(g + 1) * cg * s.h * s.w];
            // SAFETY: `applies` found AVX-512F; `bordered` holds og · oh rows of `width`, the
            // group's packed weights og · k values, `out` its cg planes.
            unsafe {
                input_group(
                    &geometry,
                    &rows,
                    &bordered[..og * s.oh * width],
                    &packed[g * og * k..(g + 1) * og * k],
                    out,
                )
            };
        }
    });
    dx
}

/// How the grad-input kernel reads dy's bordered rows.
struct Rows {
    /// Values per bordered row: the output row and a border on each side.
    width: usize,
    /// Zeros on each side of a row.
    border: usize,
    /// The convolution's padding, (vertical, horizontal).
    padding: (usize, usize),
}

/// One group of one image's input gradient: per input row, each 16-pixel vector, the channels in
/// equal chunks of at most [`MAX_CHANNELS`].
///
/// # Safety
/// AVX-512F is present; `dy` holds `og · oh` bordered rows, `weights` the group's `og · k`
/// packed weights, `out` its `cg` planes of `h × w`.
#[target_feature(enable = "avx512f")]
unsafe fn input_group(s: &Geometry, rows: &Rows, dy: &[f32], weights: &[f32], out: &mut [f32]) {
    assert!(dy.len() >= s.og * s.oh * rows.width && weights.len() >= s.og * s.kh * s.kw * s.cg);
    assert!(out.len() >= s.cg * s.h * s.w && rows.border + s.ow + rows.border == rows.width);
    let chunks = s.cg.div_ceil(MAX_CHANNELS);
    for iy in 0..s.h {
        for x0 in (0..s.w).step_by(LANES) {
            let mut c0 = 0;
            for chunk in 0..chunks {
                let count = (s.cg - c0).div_ceil(chunks - chunk);
                macro_rules! step {
                    ($($n:literal)*) => {
                        match count {
                            $($n => input_vector::<$n>(s, rows, dy, weights, iy, x0, c0, out),)*
                            _ => unreachable!("a chunk has 1 to MAX_CHANNELS channels"),
                        }
                    };
                }
                // SAFETY: forwarded; c0 + count ≤ cg, x0 < w.
                unsafe { step!(1 2 3 4 5 6 7 8 9 10 11 12) };
                c0 += count;
            }
        }
    }
}

/// Input pixels `x0..x0 + 16` (those inside the row) of row `iy`, channels `c0..c0 + C` (see
/// [`backward_input`]).
///
/// # Safety
/// As for [`input_group`], with `x0 < w` and `c0 + C ≤ cg`.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn input_vector<const C: usize>(
    s: &Geometry,
    rows: &Rows,
    dy: &[f32],
    weights: &[f32],
    iy: usize,
    x0: usize,
    c0: usize,
    out: &mut [f32],
) {
    let ((ph, pw), (dh, dw)) = (rows.padding, s.dilation);
    let mask = lanes(s.w - x0);
    // SAFETY (the whole body): the caller's bounds. Input pixel ix reads bordered column
    // ix + pw − kx·dw + border = ix + dw·(kw − 1 − kx), inside the row for every ix < w; lanes
    // past the row's end are masked off (a masked load does not touch them).
    unsafe {
        let mut acc = [_mm512_setzero_ps(); C];
        for o in 0..s.og {
            for ky in 0..s.kh {
                // The output row under this tap, if it exists: oy = iy + ph − ky·dh.
                let Some(oy) = (iy + ph).checked_sub(ky * dh).filter(|&oy| oy < s.oh) else { continue };
                let line = dy.as_ptr().add((o * s.oh + oy) * rows.width + x0 + pw + rows.border);
                let taps = weights.as_ptr().add((o * s.kh + ky) * s.kw * s.cg + c0);
                for kx in 0..s.kw {
                    let v = _mm512_maskz_loadu_ps(mask, line.sub(kx * dw));
                    let channel_weights = taps.add(kx * s.cg);
                    for (c, sum) in acc.iter_mut().enumerate() {
                        *sum = _mm512_fmadd_ps(_mm512_set1_ps(*channel_weights.add(c)), v, *sum);
                    }
                }
            }
        }
        for (c, sum) in acc.into_iter().enumerate() {
            _mm512_mask_storeu_ps(out[((c0 + c) * s.h + iy) * s.w + x0..].as_mut_ptr(), mask, sum);
        }
    }
}
