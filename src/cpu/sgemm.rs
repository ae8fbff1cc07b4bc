//! nabla's own f32 GEMM for x86-64 CPUs with AVX-512F: C = A B + β C over strided operands.
//!
//! Why hand-written (the crates were measured first, 2 threads of this project's 2-vCPU Xeon):
//! on the products of a transformer's training step (768 x 128 x 384, 768 x 512 x 128 and the
//! like, in the three layouts of a linear layer's forward and backward) `matrixmultiply`'s
//! AVX-512 kernel reached 100-190 GFLOP/s and `gemm` 0.19 less, where PyTorch's oneDNN reached
//! 240-320. matrixmultiply's 16 x 16 micro-tile issues one broadcast load per two FMAs into 16
//! accumulators, and its packing transposes one value at a time. This kernel reaches 250-290 on
//! those products (1 thread: 135-165, PyTorch 130-175).
//!
//! Algorithm: Goto/BLIS's five loops. B is packed in blocks of `KC` x `NC` into panels of `NR`
//! columns (each depth step's `NR` values contiguous, zero-padded at the right edge), except that
//! products of few rows read a B with contiguous rows in place (all but its right edge); a B whose
//! columns are contiguous (`Wᵀ` of `x Wᵀ`) is transposed 16 x 16 at a time in registers. A is read
//! in place when its rows are contiguous (`x`, `g`) or when each depth step's values are (`gᵀ` of
//! `gᵀ x`: twelve rows of a step are twelve adjacent values), else packed in blocks of `MC` x `KC`
//! into panels of `MR` rows; in place, only a bottom edge of fewer than `MR` rows is packed. The `MR` x `NR` micro-kernel keeps its tile of C in 24 of the 32 zmm
//! registers (12 rows x 2 vectors of 16) while it walks the depth: per step two vector loads of
//! B, twelve broadcasts of A, 24 FMAs. A B panel (`KC` x `NR`, 32 KiB) stays in L1 while the rows
//! of A stream past it. Edges are masked loads and stores, never an access outside an operand.
//!
//! Each element's sum runs over k in the same order (blocks of `KC`, ascending) whatever the
//! caller's tiling, so results do not depend on the thread count. Bound: the FMA pipes, two
//! 16-lane FMAs a cycle per core where the CPU has two 512-bit units.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};

/// Rows of C per micro-tile.
const MR: usize = 12;
/// Columns of C per micro-tile: two 16-lane vectors.
const NR: usize = 32;
/// Depth of one packed block.
const KC: usize = 256;
/// Rows of A per packed block (a multiple of `MR`): 144 x 256 floats, 144 KiB, in L2.
const MC: usize = 144;
/// Columns of B per packed block (a multiple of `NR`).
const NC: usize = 1024;

/// Whether f32 products run on this kernel: the CPU has AVX-512F and the environment does not
/// ask for matrixmultiply's (`NABLA_CPU_GEMM=matrixmultiply`, to compare the two or rule this
/// one out). Decided once per process.
pub(crate) fn available() -> bool {
    static STATE: AtomicU8 = AtomicU8::new(0);
    match STATE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let has = std::arch::is_x86_feature_detected!("avx512f")
                && std::env::var("NABLA_CPU_GEMM").map_or(true, |v| v != "matrixmultiply");
            STATE.store(if has { 1 } else { 2 }, Ordering::Relaxed);
            has
        }
    }
}

thread_local! {
    /// Each thread's packing buffers for A and B, grown on demand and kept between calls.
    static PACKS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// C = A B + β C for A `m x k`, B `k x n`, C `m x n`, each addressed through its (row, column)
/// strides in elements. With β = 0, C is only written (it may be uninitialised).
///
/// # Safety
/// [`available`] returned true; every element addressed through the sizes and strides lies
/// inside its allocation, and C overlaps neither A nor B.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    [rsa, csa]: [isize; 2],
    b: *const f32,
    [rsb, csb]: [isize; 2],
    beta: f32,
    c: *mut f32,
    [rsc, csc]: [isize; 2],
) {
    if m == 0 || n == 0 {
        return;
    }
    if csc != 1 && rsc == 1 {
        // A column-major C is the row-major Cᵀ = Bᵀ Aᵀ: the micro-kernel stores rows.
        // SAFETY: the same elements, addressed through swapped strides.
        return unsafe { sgemm(n, k, m, b, [csb, rsb], a, [csa, rsa], beta, c, [csc, rsc]) };
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: (i, j) lies inside C.
                unsafe {
                    let p = c.offset(i as isize * rsc + j as isize * csc);
                    *p = if beta == 0.0 { 0.0 } else { beta * *p };
                }
            }
        }
        return;
    }
    PACKS.with(|packs| {
        let (a_buffer, b_buffer) = &mut *packs.borrow_mut();
        let a_pack = aligned(a_buffer, MC.min(m.next_multiple_of(MR)) * KC.min(k));
        let b_pack = aligned(b_buffer, NC.min(n.next_multiple_of(NR)) * KC.min(k));
        // What is read in place rather than packed, decided once per product.
        // In place only where each depth step's run starts on a cache line (see `aligned`).
        let lines_aligned = (b as usize).is_multiple_of(64) && rsb % 16 == 0;
        let b_in_place = m <= B_IN_PLACE_ROWS && in_place(csb, rsb) && lines_aligned;
        let a_rows = in_place(csa, rsa);
        let a_cols = !a_rows && in_place(rsa, csa);
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                // Later depth blocks accumulate onto the earlier ones.
                let beta = if pc == 0 { beta } else { 1.0 };
                // SAFETY: the block starts inside B.
                let b_block = unsafe { b.offset(pc as isize * rsb + jc as isize * csb) };
                // Rows of B are read in place only when few rows of A meet each B panel (a
                // convolution's patch matrix against a handful of filters, one attention head):
                // there the copy is a large share of the product. Where a panel is reused by many
                // tiles, packed it stays in L1, and in place measured no faster.
                let b_edge = if b_in_place { nc - nc % NR } else { 0 };
                // SAFETY: the block (in place: its right edge, fewer than NR columns) lies inside
                // B; the buffer holds ceil(nc / NR) panels.
                unsafe { pack_panels(kc, nc - b_edge, NR, b_block.offset(b_edge as isize * csb), [csb, rsb], b_pack) };
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    // SAFETY: the block starts inside A.
                    let a_block = unsafe { a.offset(ic as isize * rsa + pc as isize * csa) };
                    let a_edge = if a_rows || a_cols { mc - mc % MR } else { 0 };
                    // SAFETY: as for B: only what is not read in place is packed, so the kernel
                    // never reads a row past A.
                    unsafe {
                        pack_panels(kc, mc - a_edge, MR, a_block.offset(a_edge as isize * rsa), [rsa, csa], a_pack)
                    };
                    for jr in (0..nc).step_by(NR) {
                        // SAFETY: column jr of the block lies inside B; panel (jr - b_edge) / NR
                        // of the buffer holds kc steps.
                        let b_panel = if jr < b_edge {
                            Panel { at: unsafe { b_block.offset(jr as isize * csb) }, step: rsb }
                        } else {
                            Panel { at: unsafe { b_pack.as_ptr().add((jr - b_edge) * kc) }, step: NR as isize }
                        };
                        for ir in (0..mc).step_by(MR) {
                            let corner = (MR.min(mc - ir), NR.min(nc - jr));
                            // SAFETY: the A panel holds MR rows of kc steps (in place: whole rows
                            // of A; packed: zero-padded), the B panel kc steps of NR values; the
                            // tile's corner lies inside C.
                            unsafe {
                                let c_tile = c.offset((ic + ir) as isize * rsc + (jc + jr) as isize * csc);
                                let in_block = a_block.offset(ir as isize * rsa);
                                if a_rows && ir < a_edge {
                                    let a_panel = Panel { at: in_block, step: rsa };
                                    micro_kernel::<true>(kc, a_panel, b_panel, c_tile, [rsc, csc], corner, beta)
                                } else {
                                    let a_panel = if a_cols && ir < a_edge {
                                        Panel { at: in_block, step: csa }
                                    } else {
                                        Panel { at: a_pack.as_ptr().add((ir - a_edge) * kc), step: MR as isize }
                                    };
                                    micro_kernel::<false>(kc, a_panel, b_panel, c_tile, [rsc, csc], corner, beta)
                                }
                            }
                        }
                    }
                }
            }
        }
    });
}

/// `len` values of `buffer` (grown as needed) from a 64-byte boundary, so that each vector load
/// of a packed panel reads one cache line. The allocator aligns a `Vec<f32>` to 16 bytes only:
/// at the other offsets every load of B's panel spans two lines, and the products of a process
/// that got such a buffer ran at 50-65% of the speed of one that did not.
fn aligned(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const LINE: usize = 64 / std::mem::size_of::<f32>();
    if buffer.len() < len + LINE {
        buffer.resize(len + LINE, 0.0);
    }
    let skip = buffer.as_ptr().align_offset(64).min(LINE);
    &mut buffer[skip..skip + len]
}

/// Products of at most this many rows read the rows of B in place (each B panel then meets at
/// most 14 tiles). Measured on whole steps, alternating step by step (2 threads): LeNet-5 at
/// batch 256 5% faster than packing every B, the char-GPT (whose attention products have 64 rows)
/// 2-7%; a bound of 24 rows gained only on LeNet-5's first convolution.
const B_IN_PLACE_ROWS: usize = 160;

/// Whether an operand may be read in place rather than packed, given the stride between the
/// values the kernel reads together (`along`: 1 when they are contiguous: a row of B's panel, a
/// row of A along the depth, or A's twelve rows of one depth step) and the stride between those
/// runs (`across`). In place, the rows of
/// `x` and `g` (in `x Wᵀ` and `g W`) measured 5-10% faster single-threaded than packed, the
/// columns of `gᵀ` (in `gᵀ x`) 1-2% on whole transformer steps. Not when that stride is a
/// multiple of 4 KiB: then every line the kernel walks would fall into one L1 set.
fn in_place(along: isize, across: isize) -> bool {
    along == 1 && across % 1024 != 0
}

/// Where the micro-kernel reads one operand's panel: its first value and the stride between
/// the lines it steps over (depth steps of a packed panel or of columns of A read in place, or
/// rows of A read in place along the depth).
#[derive(Clone, Copy)]
struct Panel {
    at: *const f32,
    step: isize,
}

/// Lanes `0..n` of a 16-lane mask.
pub(super) fn lanes(n: usize) -> __mmask16 {
    if n >= 16 { 0xffff } else { (1u16 << n) - 1 }
}

/// Transposes a 16 x 16 block held as 16 rows: in three rounds of in-lane unpacks (pairs of
/// 32-bit, then of 64-bit values) and one of 128-bit lane shuffles, 64 shuffles for 256 values.
#[target_feature(enable = "avx512f")]
pub(super) fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // t[2i], t[2i + 1]: rows 2i and 2i + 1 interleaved, per 128-bit lane.
    let t: [__m512; 16] = std::array::from_fn(|x| {
        let (a, b) = (r[x & !1], r[x | 1]);
        if x % 2 == 0 { _mm512_unpacklo_ps(a, b) } else { _mm512_unpackhi_ps(a, b) }
    });
    // u[4g + j]: rows 4g..4g + 4 of column j of each 128-bit lane.
    let u: [__m512; 16] = std::array::from_fn(|x| {
        let (g, j) = (x / 4, x % 4);
        let (a, b) = (_mm512_castps_pd(t[4 * g + j / 2]), _mm512_castps_pd(t[4 * g + 2 + j / 2]));
        _mm512_castpd_ps(if j % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
    });
    // Column 4L + j gathers lane L of u[j], u[4 + j], u[8 + j], u[12 + j].
    std::array::from_fn(|col| {
        let (lane, j) = (col / 4, col % 4);
        let (lo, hi) = if lane % 2 == 0 {
            (_mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]), _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]))
        } else {
            (_mm512_shuffle_f32x4::<0xdd>(u[j], u[4 + j]), _mm512_shuffle_f32x4::<0xdd>(u[8 + j], u[12 + j]))
        };
        if lane < 2 { _mm512_shuffle_f32x4::<0x88>(lo, hi) } else { _mm512_shuffle_f32x4::<0xdd>(lo, hi) }
    })
}

/// Packs `lines` (at most 16) strided lines of `kc` contiguous values, line i at `src + i * line`,
/// transposed: step p's values land at `dst[p * width + i]`, `count` (at most 16) of them per
/// step, lines past `lines` as zeros. 16 steps at a time through [`transpose16`].
///
/// # Safety
/// Each line's `kc` values lie inside its allocation; `dst` holds `(kc - 1) * width + count` values.
#[target_feature(enable = "avx512f")]
unsafe fn pack_transposed(
    kc: usize,
    lines: usize,
    src: *const f32,
    line: isize,
    width: usize,
    count: usize,
    dst: &mut [f32],
) {
    let store = lanes(count);
    for p0 in (0..kc).step_by(16) {
        let steps = 16.min(kc - p0);
        let rows: [__m512; 16] = std::array::from_fn(|i| {
            if i < lines {
                // SAFETY: `steps` values of line i from step p0 lie inside it.
                unsafe { _mm512_maskz_loadu_ps(lanes(steps), src.offset(i as isize * line + p0 as isize)) }
            } else {
                _mm512_setzero_ps()
            }
        });
        let cols = transpose16(rows);
        for (q, col) in cols.iter().enumerate().take(steps) {
            let at = &mut dst[(p0 + q) * width..(p0 + q) * width + count];
            // SAFETY: `at` holds the `count` stored lanes.
            unsafe { _mm512_mask_storeu_ps(at.as_mut_ptr(), store, *col) };
        }
    }
}

/// Packs `extent` lines of `kc` depth steps (the rows of an A block, or the columns of a B
/// block), line l's step p at `src + l * line + p * step`, into panels of `width` lines
/// (`MR` for A, `NR` for B): panel q holds, for each step, its `width` values contiguous; lines
/// past `extent` are zeros.
///
/// # Safety
/// Every addressed value lies inside its allocation; `dst` holds ceil(extent / width) panels.
#[target_feature(enable = "avx512f")]
unsafe fn pack_panels(
    kc: usize,
    extent: usize,
    width: usize,
    src: *const f32,
    [line, step]: [isize; 2],
    dst: &mut [f32],
) {
    if line == 1 && step != 1 {
        // Steps contiguous across the lines (gᵀ of gᵀ x, a row-major B): each step's values are
        // one run in memory, read from start to end and scattered into the panels. Walking one
        // panel down all steps instead reads 128 bytes every `step` (4 KiB apart in a 1024-wide
        // B), which the prefetchers do not follow: the 1024³ product ran 3-7% slower that way.
        for p in 0..kc {
            // SAFETY (all reads below): step p's `extent` values lie inside the block.
            let run = unsafe { src.offset(p as isize * step) };
            for (panel, l0) in (0..extent).step_by(width).enumerate() {
                let lines = width.min(extent - l0);
                let at = &mut dst[(panel * kc + p) * width..(panel * kc + p + 1) * width];
                for h in (0..width).step_by(16) {
                    // SAFETY: the load reads this step's lines from l0 + h; the store writes inside `at`.
                    unsafe {
                        let values = _mm512_maskz_loadu_ps(lanes(lines.saturating_sub(h)), run.add(l0 + h));
                        _mm512_mask_storeu_ps(at.as_mut_ptr().add(h), lanes(width - h), values);
                    }
                }
            }
        }
        return;
    }
    for (panel, l0) in (0..extent).step_by(width).enumerate() {
        let lines = width.min(extent - l0);
        let out = &mut dst[panel * width * kc..(panel + 1) * width * kc];
        // SAFETY (all reads below): lines l0..l0 + lines and kc steps lie inside the block.
        let base = unsafe { src.offset(l0 as isize * line) };
        if step == 1 {
            // Lines contiguous along the depth (x of x Wᵀ, Wᵀ of x Wᵀ): transposed 16 lines at a time.
            for h in (0..width).step_by(16) {
                let (part, count) = (lines.saturating_sub(h).min(16), (width - h).min(16));
                unsafe { pack_transposed(kc, part, base.offset(h as isize * line), line, width, count, &mut out[h..]) };
            }
        } else {
            for p in 0..kc {
                for l in 0..lines {
                    out[p * width + l] = unsafe { *base.offset(l as isize * line + p as isize * step) };
                }
                out[p * width + lines..(p + 1) * width].fill(0.0);
            }
        }
    }
}

/// One `MR x NR` tile: C = Ã B̃ + β C over `kc` depth steps, storing only the `rows x cols`
/// corner that lies inside C (β = 0: C is not read). B's panel holds each step's `NR` values
/// contiguous, `b.step` apart (packed). A's panel holds each step's
/// `MR` values contiguous, `a.step` apart (packed, or columns of A read in place) when `A_ROWS` is
/// false; when true, `MR` rows of A `a.step` apart, each contiguous along the depth.
///
/// # Safety
/// Both panels hold `kc` steps as described; the corner lies inside C.
#[target_feature(enable = "avx512f")]
unsafe fn micro_kernel<const A_ROWS: bool>(
    kc: usize,
    a: Panel,
    b: Panel,
    c: *mut f32,
    [rsc, csc]: [isize; 2],
    (rows, cols): (usize, usize),
    beta: f32,
) {
    let mut left = [_mm512_setzero_ps(); MR];
    let mut right = [_mm512_setzero_ps(); MR];
    // SAFETY: kc steps of MR values of A and NR values of B, as the panels describe.
    unsafe {
        for p in 0..kc {
            let step_b = b.at.offset(p as isize * b.step);
            let b0 = _mm512_loadu_ps(step_b);
            let b1 = _mm512_loadu_ps(step_b.add(16));
            for i in 0..MR {
                let ai = _mm512_set1_ps(if A_ROWS {
                    *a.at.offset(i as isize * a.step + p as isize)
                } else {
                    *a.at.offset(p as isize * a.step + i as isize)
                });
                left[i] = _mm512_fmadd_ps(ai, b0, left[i]);
                right[i] = _mm512_fmadd_ps(ai, b1, right[i]);
            }
        }
    }
    if csc == 1 {
        let (mask0, mask1) = (lanes(cols), lanes(cols.saturating_sub(16)));
        let betav = _mm512_set1_ps(beta);
        for i in 0..rows.min(MR) {
            // SAFETY: the masks cover only the corner's columns of row i, inside C; masked-off
            // lanes are neither read nor written.
            unsafe {
                let row = c.offset(i as isize * rsc);
                let (mut l, mut r) = (left[i], right[i]);
                if beta != 0.0 {
                    l = _mm512_fmadd_ps(betav, _mm512_maskz_loadu_ps(mask0, row), l);
                    r = _mm512_fmadd_ps(betav, _mm512_maskz_loadu_ps(mask1, row.add(16)), r);
                }
                _mm512_mask_storeu_ps(row, mask0, l);
                _mm512_mask_storeu_ps(row.add(16), mask1, r);
            }
        }
    } else {
        let mut tile = [0f32; MR * NR];
        for i in 0..MR {
            // SAFETY: 32 values per row of the local tile.
            unsafe {
                _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR), left[i]);
                _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR + 16), right[i]);
            }
        }
        for i in 0..rows {
            for j in 0..cols {
                // SAFETY: (i, j) lies inside the corner.
                unsafe {
                    let p = c.offset(i as isize * rsc + j as isize * csc);
                    *p = tile[i * NR + j] + if beta == 0.0 { 0.0 } else { beta * *p };
                }
            }
        }
    }
}
