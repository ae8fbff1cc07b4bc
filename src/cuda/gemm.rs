//! Launch geometry of the tiled GEMM engine (`kernels/tiled_gemm.cuh`), shared by matmul and
//! conv2d: which tile instantiation runs, how the depth is split, and the grid. Public so the
//! tests can pin the choices down; the ops call it with the device's SM count.

use cudarc::driver::LaunchConfig;

/// Tile edge of the `name_dtype` instantiations.
const LARGE_TILE: usize = 128;
/// Tile edge of the `name_small_dtype` instantiations.
const SMALL_TILE: usize = 64;
/// Threads per block of every GEMM kernel.
const THREADS: u32 = 256;
/// A depth split shorter than this costs more in partial sums than it gains in parallelism.
const MIN_SPLIT_DEPTH: usize = 512;

/// How one GEMM-shaped kernel is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    /// Tile edge (128 or 64).
    pub tile: usize,
    /// Depth splits (1: none); each writes a partial sum the host adds up.
    pub splits: usize,
    grid: (u32, u32, u32),
}

impl GemmPlan {
    /// The kernel name for `base` (e.g. `conv2d_fwd`) and dtype name: `base_f32` for the large
    /// tiles, `base_small_f32` for the small ones.
    pub fn kernel(&self, base: &str, dtype: impl std::fmt::Display) -> String {
        if self.tile == SMALL_TILE { format!("{base}_small_{dtype}") } else { format!("{base}_{dtype}") }
    }

    /// The launch configuration (the kernels use static shared memory only).
    pub fn config(&self) -> LaunchConfig {
        LaunchConfig { grid_dim: self.grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
    }
}

/// Plans a GEMM of `groups` independent `rows` x `cols` products of depth `depth` on a card with
/// `multiprocessors` SMs: large tiles when they give every SM a block, else small ones; then, up
/// to `max_splits`, enough depth splits (each at least `MIN_SPLIT_DEPTH` deep) for about two
/// blocks per SM. Grid axes beyond the hardware limits are covered by the kernels' loops.
pub fn plan(
    rows: usize,
    cols: usize,
    depth: usize,
    groups: usize,
    multiprocessors: usize,
    max_splits: usize,
) -> GemmPlan {
    let blocks = |tile: usize| rows.div_ceil(tile) * cols.div_ceil(tile) * groups;
    let tile = if blocks(LARGE_TILE) >= multiprocessors { LARGE_TILE } else { SMALL_TILE };
    let wanted = (2 * multiprocessors).div_ceil(blocks(tile).max(1));
    let splits = wanted.min(depth / MIN_SPLIT_DEPTH).min(max_splits).max(1);
    let grid = (
        cols.div_ceil(tile).clamp(1, 1 << 30) as u32,
        rows.div_ceil(tile).clamp(1, 65535) as u32,
        (groups * splits).clamp(1, 65535) as u32,
    );
    GemmPlan { tile, splits, grid }
}
