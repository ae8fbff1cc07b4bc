//! 2-D convolution on the CPU as GEMMs over unfolded patches (im2col), one image per task:
//! for each group g, with K = C/groups · KH · KW rows of patch data and P = OH · OW columns,
//! - forward: `y[n, g] (O/groups × P) = W_g (O/groups × K) · col (K × P)` (+ bias, beta = 1);
//! - input gradient: `dcol = W_gᵀ · dy[n, g]`, folded back onto dx (col2im, a scatter-add);
//! - weight gradient: `dW_g += dy[n, g] · colᵀ` (with 16 or more filters per group as
//!   `dW_gᵀ += col · dy[n, g]ᵀ`, so the patches are read in place), accumulated per fixed block of
//!   images and the blocks summed in order, so results do not depend on the thread count.
//!
//! The patch matrix is unfolded a block of output rows at a time, about [`PATCH_BLOCK`] values
//! (K × the block's pixels), and each block's GEMM runs right after its unfolding, while the
//! block is still in L2. Unfolded whole, a 3×3, 64-channel, 56² layer's patch matrix is 7 MB in
//! f32: written out to memory and read back, it cost about as much time as the GEMM itself. The
//! blocks are fixed by the shape alone, so the sums' order still does not depend on the threads.
//! A 1×1 convolution with unit stride and no padding reads the image itself as its patch matrix.

use super::gemm::Gemm;
use super::install;
use rayon::prelude::*;
use std::ops::Range;

/// The sizes of one convolution (already validated by the op).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

/// Images per block of the weight gradient's accumulation. Fixed, so the order of the sums is.
const WEIGHT_BLOCK: usize = 4;

/// Where a patch row of `pixels` values starts after the previous one's: at a multiple of 16
/// values, so that in the 64-byte aligned scratch every row starts on a cache line and the GEMM
/// reads the patch matrix in place as its B operand (`sgemm::B_IN_PLACE_ROWS`) instead of
/// packing it. Packing was a fifth of LeNet-5's second convolution (100 pixels a row, 16 filters).
fn row_stride(pixels: usize) -> usize {
    pixels.next_multiple_of(16)
}

/// Extra scratch elements from which [`per_image`] finds a 64-byte boundary.
pub(super) const ALIGN_SLACK: usize = 16;

/// Values of patch data per unfolded block (512 KiB in f32: a quarter of a 2 MiB L2, beside the
/// weights and the output block the GEMM touches).
const PATCH_BLOCK: usize = 1 << 17;

impl ConvShape {
    pub(super) fn cg(&self) -> usize {
        self.c / self.groups
    }
    pub(super) fn og(&self) -> usize {
        self.o / self.groups
    }
    /// Rows of one group's patch matrix.
    pub(super) fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    /// Columns of the patch matrix: output pixels per image.
    fn p(&self) -> usize {
        self.oh * self.ow
    }
    /// Whether the image is its own patch matrix: a 1 × 1 unit-stride, unpadded convolution.
    pub(super) fn plain(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.padding == (0, 0)
    }

    /// Output rows per unfolded block: as many as keep it near [`PATCH_BLOCK`] values, at least one.
    fn rows_per_block(&self) -> usize {
        (PATCH_BLOCK / (self.k() * self.ow).max(1)).clamp(1, self.oh.max(1))
    }

    /// The blocks of output rows, in order, each with its taps: found once per pass, since
    /// every image, group and channel shares them (per image, finding them was 6% of LeNet-5's
    /// first convolution).
    fn blocks(&self) -> Vec<Block> {
        let rows = self.rows_per_block();
        (0..self.oh)
            .step_by(rows)
            .map(|oy| oy..(oy + rows).min(self.oh))
            .map(|rows| Block { taps: self.taps(&rows), rows })
            .collect()
    }

    /// Elements of the scratch patch block (none when the image is its own patch matrix), with
    /// the slack that [`per_image`] aligns it by.
    fn scratch(&self) -> usize {
        if self.plain() { 0 } else { self.k() * row_stride(self.rows_per_block() * self.ow) + ALIGN_SLACK }
    }

    /// For kernel column `kx`: the output columns whose input column lies inside the image,
    /// as (first ox, end ox, input column of the first).
    fn columns(&self, kx: usize) -> (usize, usize, isize) {
        let (sw, pw, dw) = (self.stride.1 as isize, self.padding.1 as isize, self.dilation.1 as isize);
        let start = |ox: isize| ox * sw - pw + kx as isize * dw;
        let lo = (0..self.ow as isize).find(|&ox| start(ox) >= 0).unwrap_or(self.ow as isize);
        let hi = (lo..self.ow as isize).find(|&ox| start(ox) >= self.w as isize).unwrap_or(self.ow as isize);
        (lo as usize, hi as usize, start(lo))
    }

    /// The input row under output row `oy` for kernel row `ky`, if inside the image.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.stride.0 + ky * self.dilation.0) as isize - self.padding.0 as isize;
        (0..self.h as isize).contains(&iy).then_some(iy as usize)
    }

    /// Kernel tap (`ky`, `kx`) over output rows `oys`: its columns (see [`Self::columns`]) and,
    /// where the tap reads one contiguous run of the input plane, that run.
    ///
    /// With unit strides and an output as wide as the input (a "same" convolution), pixel
    /// t = j · OW + ox of the block reads input value t + shift, row after row. The run is the
    /// block's pixels from the first inside pixel of its first row inside the image to the last
    /// of its last, with that shift; it also covers the padding columns between rows, which the
    /// callers clear. None where the layout has no such run or no pixel of the block is inside.
    fn tap(&self, oys: &Range<usize>, ky: usize, kx: usize) -> Tap {
        let (lo, hi, ix0) = self.columns(kx);
        let inside = |oy: &usize| self.input_row(*oy, ky).is_some();
        let run = (|| {
            if self.stride != (1, 1) || self.ow != self.w || lo >= hi {
                return None;
            }
            let (first, last) = (oys.clone().position(|oy| inside(&oy))?, oys.clone().rposition(|oy| inside(&oy))?);
            let iy = self.input_row(oys.start + first, ky)? as isize;
            let t0 = first * self.ow + lo;
            Some((t0..last * self.ow + hi, iy * self.w as isize + ix0 - t0 as isize))
        })();
        Tap { ky, lo, hi, ix0, run }
    }

    /// Every kernel tap over output rows `oys`, in the order of a patch's rows (ky, then kx):
    /// the same for every channel, so found once per block.
    fn taps(&self, oys: &Range<usize>) -> Vec<Tap> {
        (0..self.kh).flat_map(|ky| (0..self.kw).map(move |kx| (ky, kx))).map(|(ky, kx)| self.tap(oys, ky, kx)).collect()
    }

    /// The K rows of `pixels` values each in the patch block `col` (rows [`row_stride`] apart).
    fn patch_rows<'c, T>(&self, col: &'c mut [T], pixels: usize) -> impl Iterator<Item = &'c mut [T]> {
        let stride = row_stride(pixels);
        col[..self.k() * stride].chunks_mut(stride).map(move |row| &mut row[..pixels])
    }

    /// Unfolds the output rows of `block` in group `g` of one image (`x`: C × H × W) into `col`
    /// (K × the rows' pixels, rows [`row_stride`] apart).
    fn im2col<T: Gemm>(&self, x: &[T], g: usize, block: &Block, col: &mut [T]) {
        let (oys, taps) = (block.rows.clone(), &block.taps);
        let (p, sw, ow) = (oys.len() * self.ow, self.stride.1, self.ow);
        let planes = x[g * self.cg() * self.h * self.w..].chunks(self.h * self.w).take(self.cg());
        let rows = planes.flat_map(|plane| taps.iter().map(move |tap| (plane, tap)));
        for (row, (plane, tap)) in self.patch_rows(col, p).zip(rows) {
            let (lo, hi) = (tap.lo, tap.hi);
            if let Some((run, shift)) = tap.run.clone() {
                // One copy for the whole block (not one call per output row: 56 values in a
                // ResNet-style layer), then zeros around it and in the padding columns between
                // its rows.
                let from = (run.start as isize + shift) as usize;
                row[run.clone()].copy_from_slice(&plane[from..from + run.len()]);
                row[..run.start].fill(T::ZERO);
                row[run.end..].fill(T::ZERO);
                for gap in tap.gaps(&run, ow) {
                    row[gap].fill(T::ZERO);
                }
                continue;
            }
            for (out, oy) in row.chunks_mut(ow).zip(oys.clone()) {
                let Some(iy) = self.input_row(oy, tap.ky).filter(|_| lo < hi) else {
                    out.fill(T::ZERO);
                    continue;
                };
                out[..lo].fill(T::ZERO);
                out[hi..].fill(T::ZERO);
                let src = &plane[iy * self.w + tap.ix0.max(0) as usize..];
                if sw == 1 {
                    out[lo..hi].copy_from_slice(&src[..hi - lo]);
                } else {
                    out[lo..hi].iter_mut().zip(src.iter().step_by(sw)).for_each(|(o, &v)| *o = v);
                }
            }
        }
    }

    /// Folds `col` (K × the pixels of `block`'s output rows, rows [`row_stride`] apart) back
    /// onto group `g` of one image's gradient (`dx`: C × H × W), adding. `col` is scratch: its padding columns are cleared.
    fn col2im<T: Gemm>(&self, col: &mut [T], g: usize, block: &Block, dx: &mut [T]) {
        let (oys, taps) = (block.rows.clone(), &block.taps);
        let (p, sw, ow) = (oys.len() * self.ow, self.stride.1, self.ow);
        let planes = dx[g * self.cg() * self.h * self.w..].chunks_mut(self.h * self.w).take(self.cg());
        let mut rows = self.patch_rows(col, p);
        for plane in planes {
            // Taps first: a zip that ran out of taps after taking a row would lose that row.
            for (tap, row) in taps.iter().zip(rows.by_ref()) {
                let (lo, hi) = (tap.lo, tap.hi);
                if let Some((run, shift)) = tap.run.clone() {
                    // The padding columns inside the run belong to no input pixel: cleared, the
                    // run adds onto the plane in one vectorised pass.
                    for gap in tap.gaps(&run, ow) {
                        row[gap].fill(T::ZERO);
                    }
                    let from = (run.start as isize + shift) as usize;
                    let (src, dst) = (&row[run.clone()], &mut plane[from..from + run.len()]);
                    super::vectorized(|| dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v));
                    continue;
                }
                for (src, oy) in row.chunks(ow).zip(oys.clone()) {
                    let Some(iy) = self.input_row(oy, tap.ky).filter(|_| lo < hi) else { continue };
                    let dst = &mut plane[iy * self.w + tap.ix0.max(0) as usize..];
                    if sw == 1 {
                        dst[..hi - lo].iter_mut().zip(&src[lo..hi]).for_each(|(d, &v)| *d += v);
                    } else {
                        dst.iter_mut().step_by(sw).zip(&src[lo..hi]).for_each(|(d, &v)| *d += v);
                    }
                }
            }
        }
    }
}

/// A block of output rows unfolded at once, and its kernel taps.
struct Block {
    rows: Range<usize>,
    taps: Vec<Tap>,
}

/// One kernel tap over a block of output rows: see [`ConvShape::tap`].
struct Tap {
    ky: usize,
    /// The output columns whose input column lies inside the image, and the first's input column.
    lo: usize,
    hi: usize,
    ix0: isize,
    /// The block's pixels read as one run of the plane, and the shift from pixel to input.
    run: Option<(Range<usize>, isize)>,
}

impl Tap {
    /// The padding columns inside `run` (this tap's run over rows `ow` pixels wide): from each
    /// row's last inside column to the next row's first.
    fn gaps(&self, run: &Range<usize>, ow: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        (run.start / ow..(run.end - 1) / ow).map(move |j| j * ow + self.hi..(j + 1) * ow + self.lo)
    }
}

/// Elements a `rows × cols` matrix spans through its (row, column) strides: one past the last.
fn span(rows: usize, cols: usize, [rs, cs]: [usize; 2]) -> usize {
    if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 }
}

/// C = A · B (+ C when `accumulate`) for A m × k, B k × n and C m × n, each a slice read
/// through its (row, column) strides in elements (C's columns contiguous).
#[allow(clippy::too_many_arguments)]
fn gemm<T: Gemm>(
    [m, k, n]: [usize; 3],
    a: &[T],
    a_strides: [usize; 2],
    b: &[T],
    b_strides: [usize; 2],
    c: &mut [T],
    c_row: usize,
    accumulate: bool,
) {
    assert!(
        a.len() >= span(m, k, a_strides) && b.len() >= span(k, n, b_strides) && c.len() >= span(m, n, [c_row, 1]),
        "conv gemm operands too small"
    );
    let strides = |[r, c]: [usize; 2]| [r as isize, c as isize];
    let beta = if accumulate { T::ONE } else { T::ZERO };
    // SAFETY: the assert above keeps every addressed element inside its slice; `c` is a unique
    // borrow, so it overlaps neither input.
    unsafe {
        T::gemm_oriented(
            m,
            k,
            n,
            a.as_ptr(),
            strides(a_strides),
            b.as_ptr(),
            strides(b_strides),
            beta,
            c.as_mut_ptr(),
            [c_row as isize, 1],
        )
    }
}

/// Runs `body(patches, image, per_image_output)` over `out` cut into one chunk per image, in
/// parallel; `patches` is a scratch patch block from a 64-byte boundary, of `scratch` elements
/// less [`ALIGN_SLACK`], allocated once per worker's run of images rather than once per image.
pub(super) fn per_image<T: Gemm>(
    out: &mut [T],
    per: usize,
    scratch: usize,
    body: impl Fn(&mut [T], usize, &mut [T]) + Sync,
) {
    if per == 0 {
        return;
    }
    install(|| {
        out.par_chunks_mut(per).enumerate().for_each_init(
            || vec![T::ZERO; scratch],
            |col, (i, chunk)| {
                let start = col.as_ptr().align_offset(64).min(col.len());
                body(&mut col[start..], i, chunk)
            },
        )
    });
}

/// The forward pass in f32: directly where the layer has few filters per group and the CPU
/// AVX-512F (see [`super::conv_direct`]), else through the patch matrix.
pub(crate) fn forward_f32(s: &ConvShape, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if super::conv_direct::applies(s) {
        return super::conv_direct::forward(s, x, w, bias);
    }
    forward(s, x, w, bias)
}

/// The forward pass: `x` dense N × C × H × W, `w` dense O × C/groups × KH × KW, `bias` [O].
pub(crate) fn forward<T: Gemm>(s: &ConvShape, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
    let (k, p, og) = (s.k(), s.p(), s.og());
    let mut y = vec![T::ZERO; s.n * s.o * p];
    let blocks = if s.plain() { Vec::new() } else { s.blocks() };
    per_image(&mut y, s.o * p, s.scratch(), |col, i, yi| {
        let xi = &x[i * s.c * s.h * s.w..(i + 1) * s.c * s.h * s.w];
        for g in 0..s.groups {
            let out = &mut yi[g * og * p..(g + 1) * og * p];
            if let Some(b) = bias {
                out.chunks_mut(p).zip(&b[g * og..]).for_each(|(row, &v)| row.fill(v));
            }
            let wg = &w[g * og * k..(g + 1) * og * k];
            if s.plain() {
                let image = &xi[g * k * p..(g + 1) * k * p];
                gemm([og, k, p], wg, [k, 1], image, [p, 1], out, p, bias.is_some());
                continue;
            }
            for block in &blocks {
                let (first, pixels) = (block.rows.start * s.ow, block.rows.len() * s.ow);
                s.im2col(xi, g, block, col);
                gemm([og, k, pixels], wg, [k, 1], col, [row_stride(pixels), 1], &mut out[first..], p, bias.is_some());
            }
        }
    });
    y
}

/// The input gradient in f32: directly where the layer has few filters per group, unit strides
/// and the CPU AVX-512F (see [`super::conv_direct`]), else through the patch matrix.
pub(crate) fn backward_input_f32(s: &ConvShape, dy: &[f32], w: &[f32]) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if super::conv_direct::applies_to_input(s) {
        return super::conv_direct::backward_input(s, dy, w);
    }
    backward_input(s, dy, w)
}

/// The input gradient from `dy` (N × O × OH × OW) and the weight.
pub(crate) fn backward_input<T: Gemm>(s: &ConvShape, dy: &[T], w: &[T]) -> Vec<T> {
    let (k, p, og) = (s.k(), s.p(), s.og());
    let mut dx = vec![T::ZERO; s.n * s.c * s.h * s.w];
    let blocks = if s.plain() { Vec::new() } else { s.blocks() };
    per_image(&mut dx, s.c * s.h * s.w, s.scratch(), |col, i, dxi| {
        let dyi = &dy[i * s.o * p..(i + 1) * s.o * p];
        for g in 0..s.groups {
            // Wᵀ: K × O/groups, read through swapped strides.
            let wg = &w[g * og * k..(g + 1) * og * k];
            let dyg = &dyi[g * og * p..(g + 1) * og * p];
            if s.plain() {
                gemm([k, og, p], wg, [1, k], dyg, [p, 1], &mut dxi[g * k * p..(g + 1) * k * p], p, false);
                continue;
            }
            for block in &blocks {
                let (first, pixels) = (block.rows.start * s.ow, block.rows.len() * s.ow);
                gemm([k, og, pixels], wg, [1, k], &dyg[first..], [p, 1], col, row_stride(pixels), false);
                s.col2im(col, g, block, dxi);
            }
        }
    });
    dx
}

/// The weight gradient in f32: directly where the layer has few filters per group and the CPU
/// AVX-512F (see [`super::conv_direct`]), else through the patch matrix.
pub(crate) fn backward_weight_f32(s: &ConvShape, dy: &[f32], x: &[f32]) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if super::conv_direct::applies(s) {
        return super::conv_direct::backward_weight(s, dy, x);
    }
    backward_weight(s, dy, x)
}

/// The weight gradient (O × C/groups × KH × KW) from `dy` and the input.
pub(crate) fn backward_weight<T: Gemm>(s: &ConvShape, dy: &[T], x: &[T]) -> Vec<T> {
    let (k, p, og) = (s.k(), s.p(), s.og());
    let size = s.o * k;
    let blocks = s.n.div_ceil(WEIGHT_BLOCK);
    let mut partials = vec![T::ZERO; blocks * size];
    // With at least half a kernel panel (16 columns) of filters per group, the product runs as
    // dW_gᵀ (K × O/groups) += col · dyᵀ: the patches are then read in place as rows of A and only
    // dy is packed, where dW_g += dy · colᵀ packs (transposes) the whole patch matrix. With fewer
    // filters (LeNet-5's first layer: 6) most of each panel would be padding: dy · colᵀ.
    let transposed = og >= 16;
    let row_blocks = if s.plain() { Vec::new() } else { s.blocks() };
    per_image(&mut partials, size, s.scratch(), |col, b, dw| {
        let mut dwt = if transposed { vec![T::ZERO; size] } else { Vec::new() };
        for i in b * WEIGHT_BLOCK..((b + 1) * WEIGHT_BLOCK).min(s.n) {
            let xi = &x[i * s.c * s.h * s.w..(i + 1) * s.c * s.h * s.w];
            let dyi = &dy[i * s.o * p..(i + 1) * s.o * p];
            for g in 0..s.groups {
                let dyg = &dyi[g * og * p..(g + 1) * og * p];
                let dwg = if transposed {
                    &mut dwt[g * k * og..(g + 1) * k * og]
                } else {
                    &mut dw[g * og * k..(g + 1) * og * k]
                };
                // One product over the pixels of `rows` (K × pixels, its rows `stride` apart) and
                // dy's matching columns from pixel `first`.
                let mut product = |rows: &[T], stride: usize, first: usize, pixels: usize| {
                    if transposed {
                        gemm([k, pixels, og], rows, [stride, 1], &dyg[first..], [1, p], dwg, og, true)
                    } else {
                        gemm([og, pixels, k], &dyg[first..], [p, 1], rows, [1, stride], dwg, k, true)
                    }
                };
                if s.plain() {
                    product(&xi[g * k * p..(g + 1) * k * p], p, 0, p);
                    continue;
                }
                for block in &row_blocks {
                    let (first, pixels) = (block.rows.start * s.ow, block.rows.len() * s.ow);
                    s.im2col(xi, g, block, col);
                    product(col, row_stride(pixels), first, pixels);
                }
            }
        }
        if transposed {
            for (dwg, dwtg) in dw.chunks_mut(og * k).zip(dwt.chunks(k * og)) {
                for (kk, row) in dwtg.chunks(og).enumerate() {
                    row.iter().enumerate().for_each(|(o, &v)| dwg[o * k + kk] = v);
                }
            }
        }
    });
    // The blocks' partial sums, added in order (no images: zeros).
    let mut blocks = partials.chunks(size);
    let mut dw = blocks.next().map_or_else(|| vec![T::ZERO; size], <[T]>::to_vec);
    for block in blocks {
        dw.iter_mut().zip(block).for_each(|(a, &b)| *a += b);
    }
    dw
}
