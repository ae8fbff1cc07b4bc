//! Launch geometry of the tiled GEMM engine (`kernels/tiled_gemm.cuh`), shared by matmul and
//! conv2d: which tile instantiation runs, how the depth is split, and the grid. Public so the
//! tests can pin the choices down; the ops call it with the device's SM count.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::atomic::{AtomicU8, Ordering};

/// Tile shapes (rows x columns of C per block) in the order the planner tries them, with the
/// kernel-name infix of their instantiations (`GEMM_INSTANTIATE` in kernels/tiled_gemm.cuh).
const LARGE: (usize, usize, &str) = (128, 128, "");
const WIDE: (usize, usize, &str) = (64, 128, "wide_");
const SMALL: (usize, usize, &str) = (64, 64, "small_");
/// Threads per block of every GEMM kernel.
const THREADS: u32 = 256;
/// A depth split shorter than this costs more in partial sums than it gains in parallelism.
const MIN_SPLIT_DEPTH: usize = 512;

/// How one GEMM-shaped kernel is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    /// Tile shape: rows x columns of C per block (128 x 128, 64 x 128 or 64 x 64).
    pub tile: (usize, usize),
    infix: &'static str,
    /// Depth splits (1: none); each writes a partial sum the host adds up.
    pub splits: usize,
    grid: (u32, u32, u32),
}

impl GemmPlan {
    /// The kernel name for `base` (e.g. `conv2d_fwd`) and dtype name: `base_f32` for 128 x 128
    /// tiles, `base_wide_f32` for 64 x 128, `base_small_f32` for 64 x 64.
    pub fn kernel(&self, base: &str, dtype: impl std::fmt::Display) -> String {
        format!("{base}_{}{dtype}", self.infix)
    }

    /// The name infixes of the tile instantiations, for the kernel registries.
    pub fn infixes() -> [&'static str; 3] {
        [LARGE.2, WIDE.2, SMALL.2]
    }

    /// The launch configuration (the kernels use static shared memory only).
    pub fn config(&self) -> LaunchConfig {
        LaunchConfig { grid_dim: self.grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
    }
}

/// Plans a GEMM of `groups` independent `rows` x `cols` products of depth `depth` on a card with
/// `multiprocessors` SMs: 128 x 128 tiles (64 x 128 when there are at most 64 rows) if they
/// give every SM a block, else 64 x 64 ones; then, up to `max_splits`, enough depth splits (each
/// at least `MIN_SPLIT_DEPTH` deep) for about two blocks per SM. Grid axes beyond the hardware
/// limits are covered by the kernels' loops.
pub fn plan(
    rows: usize,
    cols: usize,
    depth: usize,
    groups: usize,
    multiprocessors: usize,
    max_splits: usize,
) -> GemmPlan {
    let blocks = |(tm, tn, _): (usize, usize, &str)| rows.div_ceil(tm) * cols.div_ceil(tn) * groups;
    let big = if rows <= WIDE.0 { WIDE } else { LARGE };
    let shape = if blocks(big) >= multiprocessors { big } else { SMALL };
    let splits = depth_splits(blocks(shape), depth, multiprocessors, max_splits);
    let grid = (
        cols.div_ceil(shape.1).clamp(1, 1 << 30) as u32,
        rows.div_ceil(shape.0).clamp(1, 65535) as u32,
        (groups * splits).clamp(1, 65535) as u32,
    );
    GemmPlan { tile: (shape.0, shape.1), infix: shape.2, splits, grid }
}

/// Depth splits for `blocks` blocks of a GEMM `depth` deep: enough for about two blocks per SM,
/// each split at least `MIN_SPLIT_DEPTH` deep, at most `max_splits`; 1 means none.
fn depth_splits(blocks: usize, depth: usize, multiprocessors: usize, max_splits: usize) -> usize {
    let wanted = (2 * multiprocessors).div_ceil(blocks.max(1));
    wanted.min(depth / MIN_SPLIT_DEPTH).min(max_splits).max(1)
}

/// The most depth splits a matrix product takes: each split writes an f32 partial product of
/// `count` = batch x m x n elements, so the workspace stays under 2^25 elements (128 MiB of f32)
/// and at most 64 splits.
pub fn max_matmul_splits(count: usize) -> usize {
    ((1usize << 25) / count.max(1)).clamp(1, 64)
}

/// How f32 matrix products may run, as PyTorch's `torch.set_float32_matmul_precision`: 0
/// "highest" (f32 on the FMA pipes, the default), 1 "high" and 2 "medium" (operands rounded to
/// TF32, 10 mantissa bits, on the tensor cores of sm_80+, f32 accumulation).
static FLOAT32_MATMUL_PRECISION: AtomicU8 = AtomicU8::new(0);
const PRECISIONS: [&str; 3] = ["highest", "high", "medium"];

/// Sets how f32 matmuls, linear layers and convolutions run on a GPU, for the whole process (as
/// `torch.set_float32_matmul_precision`): "highest" keeps f32 (the default); "high" and "medium"
/// round the operands to TF32 and multiply on the tensor cores of sm_80+ GPUs (about 8x the FP32
/// pipes' rate, relative error near 1e-3 per product), accumulating in f32. The CPU always
/// computes in f32. Any other name is an error.
pub fn set_float32_matmul_precision(precision: &str) -> crate::Result<()> {
    let index = PRECISIONS.iter().position(|&p| p == precision).ok_or_else(|| {
        crate::Error::invalid(
            "set_float32_matmul_precision",
            format!("`{precision}` is not one of {}", PRECISIONS.join(", ")),
        )
    })?;
    FLOAT32_MATMUL_PRECISION.store(index as u8, Ordering::Relaxed);
    Ok(())
}

/// The f32 matmul precision in force: "highest", "high" or "medium".
pub fn float32_matmul_precision() -> &'static str {
    PRECISIONS[FLOAT32_MATMUL_PRECISION.load(Ordering::Relaxed) as usize]
}

/// Which tensor-core GEMM runs f16/bf16 matrix products and linear layers: 1, the engine every
/// product can use (`kernels/mma_gemm.cuh`), or, wherever [`pipelined_layout`] accepts the
/// operands, 2 (the default), the `cp.async` pipeline with `ldmatrix`
/// (`kernels/mma_pipeline.cuh`, 32 deep a stage; 12.7x version 1's speed for bf16 at 4096³ on
/// an H200), or 3, the same pipeline 64 deep a stage in 96 KiB of dynamic shared memory (not yet
/// timed on a GPU; on a card that cannot give a block that much, version 2 runs instead).
/// 0 means not chosen yet: the first use reads `NABLA_TENSOR_CORE_GEMM`.
static TENSOR_CORE_GEMM: AtomicU8 = AtomicU8::new(0);

/// The version in `slot`, or, when the program has not chosen one (0), the environment
/// variable `var` if it names one of `versions`, else `default`; stored so later calls agree. A
/// value of the variable that is not a version is ignored, as `NABLA_NUM_THREADS` ignores one.
pub(crate) fn chosen_version(slot: &AtomicU8, var: &str, versions: std::ops::RangeInclusive<u8>, default: u8) -> u8 {
    match slot.load(Ordering::Relaxed) {
        0 => {
            let version = std::env::var(var)
                .ok()
                .and_then(|v| v.trim().parse::<u8>().ok())
                .filter(|v| versions.contains(v))
                .unwrap_or(default);
            // A concurrent explicit choice wins over the environment.
            match slot.compare_exchange(0, version, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => version,
                Err(chosen) => chosen,
            }
        }
        version => version,
    }
}

/// Stores `version` in `slot` for `op` (a `set_*` function) when it is one of `versions`, else an
/// error naming them.
pub(crate) fn store_version(
    slot: &AtomicU8,
    op: &'static str,
    versions: std::ops::RangeInclusive<u8>,
    version: u8,
) -> crate::Result<()> {
    if !versions.contains(&version) {
        let (first, last) = (versions.start(), versions.end());
        return Err(crate::Error::invalid(op, format!("version {version} is not one of {first} to {last}")));
    }
    slot.store(version, Ordering::Relaxed);
    Ok(())
}

/// The tensor-core GEMM versions.
const TENSOR_CORE_GEMM_VERSIONS: std::ops::RangeInclusive<u8> = 1..=3;

/// Dynamic shared memory a block of tensor-core GEMM version 3 uses: three stages of a 128 x 64
/// tile of A and of B, 16-bit values (`PIPE_STAGES`, `PIPE_BM` and `PIPE_V3_BK` in
/// kernels/mma_pipeline.cuh).
pub const TENSOR_CORE_V3_SHARED_BYTES: u32 = 2 * 3 * 128 * 64 * 2;

/// Chooses the tensor-core GEMM version for f16/bf16 matmuls and linear layers on a GPU, for the
/// whole process: 1, 2 (the default) or 3 (`NABLA_TENSOR_CORE_GEMM` chooses without code).
/// Products versions 2 and 3 cannot take run on version 1 either way; the bench
/// `matmul_*_flops` times all three. Any other version is an error.
pub fn set_tensor_core_gemm(version: u8) -> crate::Result<()> {
    store_version(&TENSOR_CORE_GEMM, "set_tensor_core_gemm", TENSOR_CORE_GEMM_VERSIONS, version)
}

/// The tensor-core GEMM version in force (see [`set_tensor_core_gemm`]; without a call,
/// `NABLA_TENSOR_CORE_GEMM`, else 2).
pub fn tensor_core_gemm() -> u8 {
    chosen_version(&TENSOR_CORE_GEMM, "NABLA_TENSOR_CORE_GEMM", TENSOR_CORE_GEMM_VERSIONS, 2)
}

/// Which tensor-core convolution runs f16/bf16 layers, and f32 layers as TF32 (under
/// [`set_float32_matmul_precision`] "high"): 1 (the default), the implicit GEMMs of
/// `mma_gemm.cuh` that gather every patch element through registers, or 2, the `cp.async`
/// pipeline of `mma_pipeline.cuh` over channels-last copies, for layers whose input channels
/// per group are a multiple of a 16-byte chunk (8 16-bit values, 4 f32): the forward
/// (`conv2d_fwd_v2_*`, `conv2d_fwd_tf32_v2_f32`), at stride 1 the input gradient (the same
/// kernel over dY, its taps stepping back), and the weight gradient (`conv2d_bwd_weight_v2_*`,
/// `..._tf32_v2_f32`, over dY in place where an output plane holds a whole number of chunks, else
/// over a packed copy: `conv2d_bwd_weight_packed_*`). The other passes run on version 1 either
/// way. Version 2 is opt-in until a GPU has timed it.
/// 0 means not chosen yet: the first use reads `NABLA_TENSOR_CORE_CONV`.
static TENSOR_CORE_CONV: AtomicU8 = AtomicU8::new(0);

/// Chooses the tensor-core convolution for the whole process: 1 (the default) or 2
/// (`NABLA_TENSOR_CORE_CONV` chooses without code). Any other version is an error.
pub fn set_tensor_core_conv(version: u8) -> crate::Result<()> {
    store_version(&TENSOR_CORE_CONV, "set_tensor_core_conv", 1..=2, version)
}

/// The tensor-core convolution in force (see [`set_tensor_core_conv`]; without a call,
/// `NABLA_TENSOR_CORE_CONV`, else 1).
pub fn tensor_core_conv() -> u8 {
    chosen_version(&TENSOR_CORE_CONV, "NABLA_TENSOR_CORE_CONV", 1..=2, 1)
}

/// Which convolution runs f32 layers (when they do not run as TF32): 1 (the default), the implicit
/// GEMMs of `tiled_gemm.cuh` on the FP32 pipes that gather every patch element one load at a
/// time, or, on sm_80+ over channels-last copies, for layers whose input channels per group are a
/// multiple of 4: the forward (`conv2d_fwd_v*_f32`), at stride 1 the input gradient (the same
/// kernel over dY, its taps stepping back), and the weight gradient (`conv2d_bwd_weight_v*_f32`,
/// or `conv2d_bwd_weight_packed_v*_f32` over a packed copy of dY where an output plane's pixels
/// are not a multiple of 4), on
/// - 2, the FP32 pipes: version 4's `cp.async` pipeline of the f32 GEMM (`kernels/sgemm_v4.cuh`);
/// - 3, the tensor cores in 3xTF32 (as version 5 of the f32 GEMM, f32's accuracy): the
///   `cp.async` pipeline of the tensor-core GEMM (`kernels/mma_pipeline.cuh`).
///
/// The other passes run on version 1 either way. Versions 2 and 3 are opt-in until a GPU has
/// timed them. 0 means not chosen yet: the first use reads `NABLA_F32_CONV`.
static F32_CONV: AtomicU8 = AtomicU8::new(0);

/// The f32 convolution versions.
const F32_CONV_VERSIONS: std::ops::RangeInclusive<u8> = 1..=3;

/// Chooses the f32 convolution for the whole process: 1 (the default), 2 or 3 (`NABLA_F32_CONV`
/// chooses without code). Any other version is an error.
pub fn set_f32_conv(version: u8) -> crate::Result<()> {
    store_version(&F32_CONV, "set_f32_conv", F32_CONV_VERSIONS, version)
}

/// The f32 convolution in force (see [`set_f32_conv`]; without a call, `NABLA_F32_CONV`, else 1).
pub fn f32_conv() -> u8 {
    chosen_version(&F32_CONV, "NABLA_F32_CONV", F32_CONV_VERSIONS, 1)
}

/// Which GEMM runs f32 matmuls and linear layers (when they do not run as TF32): 1, the tiled
/// engine on the FP32 pipes every product can use (`kernels/tiled_gemm.cuh`, the default,
/// measured at 55-59% of cuBLAS on an H200), or, wherever [`pipelined_layout`] accepts the
/// operands:
/// - 2, 3 or 4, on the FP32 pipes: a warp-tiled 8 x 8 register tile, 16 deep a step, 128 x 128
///   tiles. 2 and 3 (`kernels/sgemm_v2.cuh`) stage 16-byte loads through registers into two
///   shared buffers; 2 loops over a step's depths at two blocks a multiprocessor, 3 unrolls
///   them at one. 4 (`kernels/sgemm_v4.cuh`, sm_80+; version 2 runs on older cards) copies by
///   `cp.async` into a 4-stage pipeline in 80 KiB of dynamic shared memory.
/// - 5, on the tensor cores (sm_80+; version 2 runs on older cards): 3xTF32, each f32 operand
///   split into two TF32 parts and three m16n8k8 products taken per f32 product (CUTLASS's "fast
///   f32", as f32 attention version 2 does), on the `cp.async` pipeline of the 16-bit tensor-core
///   GEMM (`kernels/mma_pipeline.cuh`, 16 f32 values deep a stage). Its error is f32's order (the
///   dropped small x small term is 2^-22 of a product), not TF32's; the TF32 peak is 7x the FP32
///   pipes', so a third of it is still above them.
///
/// Versions 2-5 are not yet timed on a GPU: the bench `matmul_f32_*` times them all, so that a
/// GPU session can pick the default.
/// 0 means not chosen yet: the first use reads `NABLA_F32_GEMM`.
static F32_GEMM: AtomicU8 = AtomicU8::new(0);

/// The f32 GEMM versions.
const F32_GEMM_VERSIONS: std::ops::RangeInclusive<u8> = 1..=5;

/// Dynamic shared memory a block of FMA-pipe GEMM version 4 uses: four stages of A and of B, each
/// the larger of a 128 x (16 + 4) and a 16 x (128 + 4) f32 tile (`SGEMM4_STAGES` and
/// `SGEMM4_STAGE_FLOATS` in kernels/sgemm_v4.cuh).
pub const FMA_V4_SHARED_BYTES: u32 = 2 * 4 * 128 * 20 * 4;

/// Dynamic shared memory a block of the tensor-core pipeline takes for f32 operands (TF32 and
/// 3xTF32) `depth` values deep a stage: three stages of A and of B, each at most `depth` rows of
/// 128 + 8 f32 values (an mn-major tile's padded rows; `PIPE_STAGES`, `PIPE_BM` and
/// `PipeOperand::ROW_STRIDE` in kernels/mma_pipeline.cuh). Depth 16 (TF32 version 2, f32
/// version 5): 51 KiB; 32 (TF32 version 3): 102 KiB.
pub const fn f32_pipe_shared_bytes(depth: u32) -> u32 {
    2 * 3 * depth * (128 + 8) * 4
}

/// Whether `dev` can run the FMA pipeline of version 4 (the f32 GEMM's and version 2 of the f32
/// convolution): `cp.async` (sm_80+) and [`FMA_V4_SHARED_BYTES`] of shared memory for a block.
pub fn fma_pipeline_fits(dev: &super::CudaDevice) -> bool {
    dev.arch().0 >= 8 && FMA_V4_SHARED_BYTES as usize <= dev.max_shared_per_block()
}

/// Chooses the f32 GEMM version for f32 matmuls and linear layers on a GPU, for the whole
/// process: 1 (the default) to 5 (`NABLA_F32_GEMM` chooses without code). Products versions 2-5
/// cannot take run on version 1 either way. Any other version is an error.
pub fn set_f32_gemm(version: u8) -> crate::Result<()> {
    store_version(&F32_GEMM, "set_f32_gemm", F32_GEMM_VERSIONS, version)
}

/// The f32 GEMM version in force (see [`set_f32_gemm`]; without a call, `NABLA_F32_GEMM`, else
/// 1).
pub fn f32_gemm() -> u8 {
    chosen_version(&F32_GEMM, "NABLA_F32_GEMM", F32_GEMM_VERSIONS, 1)
}

/// The pipelined GEMM that runs products of `dtype` on `dev` under the versions in force, as its
/// kernels' name infix (`v2`, `v3` and `v4` of the 16-bit tensor-core or the f32 FMA GEMM,
/// `tf32_v2` and `tf32_v3` for f32 as TF32, `v5` for f32 in 3xTF32) and the dynamic shared
/// memory its block takes, or `None` for version 1 (the engines every product can use). A
/// version `dev` cannot run (too little shared memory a block, or `cp.async` before sm_80) falls
/// back to its family's version 2. The caller still asks [`pipelined_layout`] whether the
/// operands suit it.
pub fn pipelined_kernel(dtype: crate::DType, dev: &super::CudaDevice) -> Option<(&'static str, u32)> {
    use crate::DType::{BF16, F16, F32};
    let fits = |bytes: u32| bytes as usize <= dev.max_shared_per_block();
    match (dtype, uses_tensor_cores(dtype, dev)) {
        (F16 | BF16, true) => match tensor_core_gemm() {
            1 => None,
            3 if fits(TENSOR_CORE_V3_SHARED_BYTES) => Some(("v3", TENSOR_CORE_V3_SHARED_BYTES)),
            _ => Some(("v2", 0)),
        },
        (F32, true) => match tensor_core_gemm() {
            1 => None,
            3 if fits(f32_pipe_shared_bytes(32)) => Some(("tf32_v3", f32_pipe_shared_bytes(32))),
            _ => Some(("tf32_v2", f32_pipe_shared_bytes(16))),
        },
        (F32, false) => match f32_gemm() {
            1 => None,
            3 => Some(("v3", 0)),
            4 if fma_pipeline_fits(dev) => Some(("v4", FMA_V4_SHARED_BYTES)),
            5 if dev.arch().0 >= 8 && fits(f32_pipe_shared_bytes(16)) => Some(("v5", f32_pipe_shared_bytes(16))),
            _ => Some(("v2", 0)),
        },
        _ => None,
    }
}

/// The operand layout of a version-2 kernel for `m` x `k` times `k` x `n` products of `dtype`,
/// as its name infix (`kk`, `kn`, `mk` or `mn`: along which axis A, then B, is contiguous), or
/// `None` when version 2 cannot take them. A(r, k) is at `a_strides.0` r + `a_strides.1` k, B(k,
/// c) at `b_strides.0` k + `b_strides.1` c; `others` are the offsets and batch strides. Version 2
/// moves 16-byte chunks (8 elements of f16/bf16, 4 of f32), so the contiguous axis needs stride 1
/// and an extent that is a multiple of a chunk, and the other stride and every offset and batch
/// stride must be multiples of a chunk (every chunk whole and 16-byte aligned; buffers start
/// 256-byte aligned).
pub fn pipelined_layout(
    dtype: crate::DType,
    (m, n, k): (i64, i64, i64),
    a_strides: (i64, i64),
    b_strides: (i64, i64),
    others: impl IntoIterator<Item = i64>,
) -> Option<&'static str> {
    let chunk = 16 / dtype.size_in_bytes() as i64;
    let multiple = |v: i64| v % chunk == 0;
    // k-major (true) when contiguous along the depth, mn-major (false) when along its other axis,
    // for an operand whose strides along the depth and across it are given, `extent` across.
    let major = |along_k: i64, across: i64, extent: i64| {
        if along_k == 1 && multiple(across) && multiple(k) {
            Some(true)
        } else if across == 1 && multiple(along_k) && multiple(extent) {
            Some(false)
        } else {
            None
        }
    };
    let a_k_major = major(a_strides.1, a_strides.0, m)?;
    let b_k_major = major(b_strides.0, b_strides.1, n)?;
    if !others.into_iter().all(multiple) {
        return None;
    }
    Some(match (a_k_major, b_k_major) {
        (true, true) => "kk",
        (true, false) => "kn",
        (false, true) => "mk",
        (false, false) => "mn",
    })
}

/// The launch of version 2's kernel for `groups` batch entries of `rows` x `cols` products
/// `depth` deep on a card with `multiprocessors` SMs, and its depth splits (at most
/// `max_splits`; 1: none): one 256-thread block per 128 x 128 tile of C and split (grid axes
/// beyond the hardware's limits are covered by the kernel's loops), 48 KiB of static shared
/// memory. Products with fewer tiles than SMs split their depth as [`plan`] does: the weight
/// gradient of a 384 x 384 linear layer over 16,384 tokens has 9 tiles, which alone would leave
/// 123 of an H200's 132 SMs idle.
pub fn pipelined_config(
    (rows, cols, depth): (usize, usize, usize),
    groups: usize,
    multiprocessors: usize,
    max_splits: usize,
) -> (LaunchConfig, usize) {
    let blocks = rows.div_ceil(128) * cols.div_ceil(128) * groups;
    let splits = if blocks < multiprocessors { depth_splits(blocks, depth, multiprocessors, max_splits) } else { 1 };
    let grid = (
        cols.div_ceil(128).clamp(1, 1 << 30) as u32,
        rows.div_ceil(128).clamp(1, 65535) as u32,
        (groups * splits).clamp(1, 65535) as u32,
    );
    (LaunchConfig { grid_dim: grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }, splits)
}

/// Runs the `ldmatrix` intrinsics on `dev` (sm_80+) over a 16 x 16 matrix of 16-bit values
/// (row-major): matrix j of the x4 load covers rows 8 (j % 2).., columns 8 (j / 2)... Returns, per
/// lane, its four registers without `.trans`, then its four with: 256 values. A check of the
/// intrinsics against the PTX ISA's layout (the tests hold it to a CPU model).
pub fn ldmatrix_probe(dev: &std::sync::Arc<super::CudaDevice>, matrix: &[u16]) -> crate::Result<Vec<u32>> {
    const OP: &str = "ldmatrix_probe";
    if matrix.len() != 256 {
        return Err(crate::Error::shape(OP, format!("the matrix must hold 256 values, got {}", matrix.len())));
    }
    if dev.arch().0 < 8 {
        return Err(crate::Error::invalid(
            OP,
            format!("ldmatrix and cp.async need sm_80, this GPU is {:?}", dev.arch()),
        ));
    }
    let error = |e| super::cuda_error(OP, e);
    let dm = dev.stream.clone_htod(matrix).map_err(error)?;
    let mut out = dev.stream.alloc_zeros::<u32>(256).map_err(error)?;
    let f = dev.function(OP, "matmul", OP)?;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(&dm).arg(&mut out);
    // SAFETY: ldmatrix_probe(const unsigned short* m, unsigned* out) reads 256 values of m and
    // writes 8 per lane of its one warp, 256 in all.
    unsafe { launch.launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 }) }
        .map_err(|e| super::launch_error(OP, OP, e))?;
    dev.stream.clone_dtoh(&out).map_err(error)
}

/// Whether GEMM-shaped work of `dtype` on `dev` runs on the tensor cores (the `*_tc_*` kernels of
/// `kernels/mma_gemm.cuh`) on sm_80 and newer, with f32 accumulation: f16 and bf16 always, f32
/// (as TF32) when [`set_float32_matmul_precision`] allows it; f64 stays on the FMA pipes.
pub fn uses_tensor_cores(dtype: crate::DType, dev: &super::CudaDevice) -> bool {
    let tf32 = dtype == crate::DType::F32 && float32_matmul_precision() != "highest";
    (matches!(dtype, crate::DType::F16 | crate::DType::BF16) || tf32) && dev.arch().0 >= 8
}

/// The kernel-name base of `base` (e.g. `matmul`, `conv2d_fwd`) for `dtype` on `dev`: with `_tc`
/// when it runs on the tensor cores.
pub fn engine_base(base: &str, dtype: crate::DType, dev: &super::CudaDevice) -> String {
    if uses_tensor_cores(dtype, dev) { format!("{base}_tc") } else { base.to_string() }
}

/// Runs one warp-wide tensor-core product `D = A B + C` on `dev` through the `mma_m16n8k16`
/// intrinsic of `dtype` (f16 or bf16; sm_80+): `a` is 16 x 16 and `b` 16 x 8, both row-major
/// raw 16-bit values, `c` 16 x 8 f32. Returns D, 16 x 8. A check of the intrinsic and its
/// fragment layout (`nabla check` and the tests compare it with a CPU product).
pub fn mma_probe(
    dev: &std::sync::Arc<super::CudaDevice>,
    dtype: crate::DType,
    a: &[u16],
    b: &[u16],
    c: &[f32],
) -> crate::Result<Vec<f32>> {
    let kernel = match dtype {
        crate::DType::BF16 => "mma_probe_bf16",
        crate::DType::F16 => "mma_probe_f16",
        other => return Err(crate::Error::unsupported(PROBE, other, " (tensor-core products take f16 or bf16)")),
    };
    probe(dev, kernel, a, b, c, (256, 128))
}

/// [`mma_probe`] for the TF32 intrinsic `mma_m16n8k8_tf32`: `a` is 16 x 8 and `b` 8 x 8, both
/// row-major f32 (the kernel rounds them to TF32), `c` 16 x 8. Returns D, 16 x 8.
pub fn mma_probe_tf32(
    dev: &std::sync::Arc<super::CudaDevice>,
    a: &[f32],
    b: &[f32],
    c: &[f32],
) -> crate::Result<Vec<f32>> {
    probe(dev, "mma_probe_tf32", a, b, c, (128, 64))
}

/// [`mma_probe_tf32`] in 3xTF32 (`split_tf32` and `mma_3xtf32` in `kernels/nabla.cuh`, as f32
/// attention's version 2 multiplies): each f32 operand split into two TF32 parts, three
/// products, f32's accuracy where one TF32 product keeps about three decimal digits.
pub fn mma_probe_3xtf32(
    dev: &std::sync::Arc<super::CudaDevice>,
    a: &[f32],
    b: &[f32],
    c: &[f32],
) -> crate::Result<Vec<f32>> {
    probe(dev, "mma_probe_3xtf32", a, b, c, (128, 64))
}

const PROBE: &str = "mma_probe";

/// Launches one warp of the probe `kernel` on A and B (`sizes` elements each) and C (128).
fn probe<T: cudarc::driver::DeviceRepr>(
    dev: &std::sync::Arc<super::CudaDevice>,
    kernel: &str,
    a: &[T],
    b: &[T],
    c: &[f32],
    sizes: (usize, usize),
) -> crate::Result<Vec<f32>> {
    if (a.len(), b.len(), c.len()) != (sizes.0, sizes.1, 128) {
        return Err(crate::Error::shape(
            PROBE,
            format!(
                "A, B and C must hold {}, {} and 128 values, got {}, {}, {}",
                sizes.0,
                sizes.1,
                a.len(),
                b.len(),
                c.len()
            ),
        ));
    }
    if dev.arch().0 < 8 {
        return Err(crate::Error::invalid(
            PROBE,
            format!("tensor-core products need sm_80, this GPU is {:?}", dev.arch()),
        ));
    }
    let error = |e| super::cuda_error(PROBE, e);
    let (da, db, dc) = (
        dev.stream.clone_htod(a).map_err(error)?,
        dev.stream.clone_htod(b).map_err(error)?,
        dev.stream.clone_htod(c).map_err(error)?,
    );
    let mut dd = dev.stream.alloc_zeros::<f32>(128).map_err(error)?;
    let f = dev.function(PROBE, "matmul", kernel)?;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(&da).arg(&db).arg(&dc).arg(&mut dd);
    // SAFETY: mma_probe_<T>(const T* a, const T* b, const float* c, float* d) reads the element
    // counts checked above for A, B and C and writes 128, with one warp.
    unsafe { launch.launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 }) }
        .map_err(|e| super::launch_error(PROBE, kernel, e))?;
    dev.stream.clone_dtoh(&dd).map_err(error)
}
