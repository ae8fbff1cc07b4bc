//! Batched matrix products on the CPU: `matrixmultiply`'s packed, runtime-dispatched (AVX/FMA
//! where the CPU has them) single-threaded kernels, threaded here on the shared pool by cutting
//! the output into tiles of rows or columns. Each output element's sum over k runs in the same
//! order whatever the tiling, so results do not depend on the thread count.
//!
//! Operands are read in place through their strides (transposed views cost nothing); the
//! output is dense `[batch, m, n]`; an optional bias row is written first and accumulated onto
//! (beta = 1), so `x Wᵀ + b` is one pass.

use super::{Float, install, num_threads};
use crate::layout::Layout;
use rayon::prelude::*;

/// A float type with a GEMM kernel.
pub(crate) trait Gemm: Float {
    /// C = alpha A B + beta C over raw strided matrices.
    ///
    /// # Safety
    /// Every element addressed through the sizes and strides lies inside its allocation, and C
    /// does not overlap A or B.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        a_strides: [isize; 2],
        b: *const Self,
        b_strides: [isize; 2],
        beta: Self,
        c: *mut Self,
        c_strides: [isize; 2],
    );

    /// [`Gemm::gemm`] in the better orientation: the packed kernels run fastest with many rows,
    /// so a product with few rows and many columns is computed as Cᵀ = Bᵀ Aᵀ (every operand
    /// read through swapped strides; measured 1.6x faster for a 64 x 576 x 3136 convolution).
    /// Each element's sum over k runs in the same order either way.
    ///
    /// # Safety
    /// As for [`Gemm::gemm`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_oriented(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        [rsa, csa]: [isize; 2],
        b: *const Self,
        [rsb, csb]: [isize; 2],
        beta: Self,
        c: *mut Self,
        [rsc, csc]: [isize; 2],
    ) {
        // SAFETY: the same elements are addressed either way.
        unsafe { oriented(m, k, n, a, [rsa, csa], b, [rsb, csb], beta, c, [rsc, csc], Self::gemm) }
    }
}

/// The GEMM type of [`Gemm::gemm`], for [`oriented`].
type GemmFn<T> = unsafe fn(usize, usize, usize, *const T, [isize; 2], *const T, [isize; 2], T, *mut T, [isize; 2]);

/// `gemm` in matrixmultiply's better orientation (see [`Gemm::gemm_oriented`]).
///
/// # Safety
/// As for [`Gemm::gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn oriented<T>(
    m: usize,
    k: usize,
    n: usize,
    a: *const T,
    [rsa, csa]: [isize; 2],
    b: *const T,
    [rsb, csb]: [isize; 2],
    beta: T,
    c: *mut T,
    [rsc, csc]: [isize; 2],
    gemm: GemmFn<T>,
) {
    // SAFETY: the same elements are addressed either way.
    unsafe {
        if m < 256 && n > m {
            gemm(n, k, m, b, [csb, rsb], a, [csa, rsa], beta, c, [csc, rsc])
        } else {
            gemm(m, k, n, a, [rsa, csa], b, [rsb, csb], beta, c, [rsc, csc])
        }
    }
}

impl Gemm for f32 {
    unsafe fn gemm(
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
        #[cfg(target_arch = "x86_64")]
        if super::sgemm::available() {
            // SAFETY: forwarded from the caller's contract; the CPU has AVX-512F.
            return unsafe { super::sgemm::sgemm(m, k, n, a, [rsa, csa], b, [rsb, csb], beta, c, [rsc, csc]) };
        }
        // SAFETY: forwarded from the caller's contract.
        unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }

    unsafe fn gemm_oriented(
        m: usize,
        k: usize,
        n: usize,
        a: *const f32,
        a_strides: [isize; 2],
        b: *const f32,
        b_strides: [isize; 2],
        beta: f32,
        c: *mut f32,
        c_strides: [isize; 2],
    ) {
        // nabla's own kernel stores rows of C and pads both edges alike: no orientation to pick.
        #[cfg(target_arch = "x86_64")]
        if super::sgemm::available() {
            // SAFETY: forwarded from the caller's contract; the CPU has AVX-512F.
            return unsafe { super::sgemm::sgemm(m, k, n, a, a_strides, b, b_strides, beta, c, c_strides) };
        }
        // SAFETY: the same elements are addressed either way.
        unsafe { oriented(m, k, n, a, a_strides, b, b_strides, beta, c, c_strides, Self::gemm) }
    }
}

impl Gemm for f64 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f64,
        [rsa, csa]: [isize; 2],
        b: *const f64,
        [rsb, csb]: [isize; 2],
        beta: f64,
        c: *mut f64,
        [rsc, csc]: [isize; 2],
    ) {
        // SAFETY: forwarded from the caller's contract.
        unsafe { matrixmultiply::dgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}

/// The output pointer, shared by tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
struct OutPtr<T>(*mut T);
// SAFETY: each task writes only its own tile (disjoint rows or columns of one batch entry).
unsafe impl<T> Send for OutPtr<T> {}
unsafe impl<T> Sync for OutPtr<T> {}

impl<T> OutPtr<T> {
    /// The pointer to element `i` (a method, so closures capture the whole `Send` wrapper).
    ///
    /// # Safety
    /// `i` lies inside the allocation.
    unsafe fn at(&self, i: usize) -> *mut T {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.add(i) }
    }
}

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_FLOPS: usize = 1 << 18;

/// A batched product whose B is shared by every batch entry (a linear layer on `[batch, tokens,
/// features]`), with A's batch entries and rows one run of equal strides, as one product of
/// `batch · m` rows: the layouts of that `[batch · m, k]` x `[k, n]` product. One large product
/// packs B once and fills the kernel's tiles, where `batch` small ones pack it `batch` times.
fn fold_batch_into_rows(la: &Layout, lb: &Layout, batch_shape: &[usize], m: usize) -> Option<(Layout, Layout)> {
    let r = batch_shape.len();
    let (sa, sb) = (la.strides(), lb.strides());
    if r == 0 || (0..r).any(|d| batch_shape[d] > 1 && sb[d] != 0) {
        return None;
    }
    // Walking out from the rows, each batch dim of A must step over all of the dims inside it.
    let mut span = sa[r] * m;
    for d in (0..r).rev() {
        if batch_shape[d] > 1 && sa[d] != span {
            return None;
        }
        span *= batch_shape[d];
    }
    let rows = batch_shape.iter().product::<usize>() * m;
    let k = la.shape()[r + 1];
    let n = lb.shape()[r + 1];
    Some((
        Layout::from_parts(vec![rows, k], vec![sa[r], sa[r + 1]], la.offset()),
        Layout::from_parts(vec![k, n], vec![sb[r], sb[r + 1]], lb.offset()),
    ))
}

/// `a x b (+ bias)` for `a` viewed as `batch_shape + [m, k]` through `la` and `b` as
/// `batch_shape + [k, n]` through `lb` (broadcast batch dims have stride 0): dense
/// `[batch, m, n]`.
pub(crate) fn matmul<T: Gemm>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    batch_shape: &[usize],
    [m, k, n]: [usize; 3],
    bias: Option<&[T]>,
) -> Vec<T> {
    if let Some((la, lb)) = fold_batch_into_rows(la, lb, batch_shape, m) {
        let rows = la.shape()[0];
        return matmul(a, &la, b, &lb, &[], [rows, k, n], bias);
    }
    let batch: usize = batch_shape.iter().product();
    let len = batch * m * n;
    // With β = 0 the GEMM never reads C (matrixmultiply's contract), so C is written, not
    // zeroed first, unless there is a bias to start from or no depth to write anything.
    let mut c: Vec<T> = Vec::with_capacity(len);
    if len == 0 {
        return c;
    }
    match bias {
        // β = 1 over the bias in every row (copied in, not zeroed first).
        Some(bias) => (0..batch * m).for_each(|_| c.extend_from_slice(bias)),
        None if k == 0 => c.resize(len, T::ZERO),
        None => {}
    }
    let initialised = !c.is_empty();
    let beta = if bias.is_some() { T::ONE } else { T::ZERO };
    let r = batch_shape.len();
    let (sa, sb) = (la.strides(), lb.strides());
    let a_strides = [sa[r] as isize, sa[r + 1] as isize];
    let b_strides = [sb[r] as isize, sb[r + 1] as isize];
    // Storage offsets of each batch entry's A and B.
    let base = |i: usize| {
        let (mut oa, mut ob, mut rest) = (la.offset(), lb.offset(), i);
        for d in (0..r).rev() {
            let idx = rest % batch_shape[d];
            rest /= batch_shape[d];
            oa += idx * sa[d];
            ob += idx * sb[d];
        }
        (oa, ob)
    };
    // Tiles: (batch entry, first row, rows, first column, columns).
    let threads = num_threads();
    let flops = batch * m * n * k;
    // One tile per thread; a tile packs all of the operand it does not cut, so cut the output
    // along the longer side: rows when B is the smaller operand, columns when A is.
    let wanted = if threads == 1 || flops < PARALLEL_FLOPS { 1 } else { threads.div_ceil(batch) };
    let (row_parts, col_parts) =
        if m >= n { (wanted.min(m.div_ceil(16)).max(1), 1) } else { (1, wanted.min(n.div_ceil(16)).max(1)) };
    let (mb, nb) = (m.div_ceil(row_parts), n.div_ceil(col_parts));
    let tiles: Vec<(usize, usize, usize)> = (0..batch)
        .flat_map(|i| (0..m).step_by(mb).flat_map(move |r0| (0..n).step_by(nb).map(move |c0| (i, r0, c0))))
        .collect();
    if k == 0 {
        return c; // zeros, or the bias in every row
    }
    let out = OutPtr(c.as_mut_ptr());
    let run = |&(i, r0, c0): &(usize, usize, usize)| {
        let (oa, ob) = base(i);
        let (rows, cols) = (mb.min(m - r0), nb.min(n - c0));
        // SAFETY: the views lie inside `a` and `b` (they are layouts of those storages, and the
        // tile stays within [m, k] and [k, n]); the tile lies inside `c`'s allocation of `len`
        // elements, and no two tiles overlap.
        unsafe {
            T::gemm_oriented(
                rows,
                k,
                cols,
                a.as_ptr().add(oa + r0 * sa[r]),
                a_strides,
                b.as_ptr().add(ob + c0 * sb[r + 1]),
                b_strides,
                beta,
                out.at(i * m * n + r0 * n + c0),
                [n as isize, 1],
            )
        }
    };
    if tiles.len() == 1 {
        tiles.iter().for_each(run);
    } else {
        install(|| tiles.par_iter().for_each(run));
    }
    if !initialised {
        // SAFETY: the tiles cover every (batch, row, column) of the `len` elements, and each
        // GEMM with β = 0 wrote all of its tile.
        unsafe { c.set_len(len) };
    }
    c
}
