// A tiled GEMM engine over index functors: C(r, c) = Σ_k A(r, k) B(k, c) for every group g
// (a batch entry of a matmul, a channel group of a convolution) and every split of the depth.
//
// A Problem supplies rows(), cols(), depth(), groups(), splits() and group(g, s), the view of
// group g for depth split s. A view has per-row and per-column contexts, computed once per tile
// (a pointer, a pixel's coordinates), and loaders that finish the address from the context and
// a depth index: a_row(r) / a(ctx, k), b_col(c) / b(ctx, k), plus store(r, c, value).
// Implicit-GEMM kernels (convolutions) gather their operands in the loaders instead of
// materialising an im2col matrix; the contexts keep the expensive index arithmetic (64-bit
// divisions) out of the inner loop.
//
// Tiling: a 256-thread block computes a BM x BN tile of C (128 x 128; 64 x 128 for problems of
// at most 64 rows, such as 64-channel convolutions; 64 x 64 for problems too small to fill the
// card), stepping 8 deep. Each thread holds a (BM/16) x (BN/16) register
// tile made of runs of four adjacent rows and columns, 64 apart (thread (tx, ty) owns rows
// 4 ty .. 4 ty + 3 and, in a 128-row tile, 64 + 4 ty .. 64 + 4 ty + 3), so each run is one
// 16-byte shared-memory read (LDS.128; a warp's reads of A are broadcasts, of B 256 contiguous
// bytes) and an 8 x 8 tile does 64 FMAs per 4 shared loads, where runs of one (rows 16 apart)
// took 16 (Boehm's SGEMM worklog: its step that vectorised global and shared loads together
// went from 69% to 78% of cuBLAS).
// The next step's operands are fetched into
// registers while the current step computes (one tile of shared memory, register prefetch);
// every fetch loads (a depth past the range reads its last depth instead) and then selects
// zero for what lies outside, as a branch around each load cost more than the load.
// A is loaded with consecutive threads on consecutive k, B and C with consecutive threads on
// consecutive columns, so problems whose contiguous axis is the columns coalesce. Split-K
// (splits() > 1) gives each split a contiguous, step-aligned depth range; the problem's store
// for split s writes a partial sum that the host reduces. Compute bound on the FMA pipes for
// large problems: the goal is most of the card's FP32 peak.
#pragma once
#include "nabla.cuh"

#define GEMM_TILE_K 8
#define GEMM_THREADS 256

// For problems whose loaders take the group index: group(g, s) binds it (no split-K).
template <typename P, typename A>
struct GroupOf {
    const P& p;
    i64 g;
    typedef typename P::ARow ARow;
    typedef typename P::BCol BCol;
    __device__ ARow a_row(i64 r) const { return p.a_row(g, r); }
    __device__ BCol b_col(i64 c) const { return p.b_col(g, c); }
    __device__ A a(const ARow& row, i64 k) const { return p.a(row, k); }
    __device__ A b(const BCol& col, i64 k) const { return p.b(col, k); }
    __device__ void store(i64 r, i64 c, A v) const { p.store(g, r, c, v); }
};

// Calls body(q, row0, col0, k_begin, k_end) for every BM x BN tile of C this block owns, in
// every group and depth split (grid-stride on each axis): q is the group's view for the split,
// whose depth range [k_begin, k_end) is a whole number of BK steps but the last.
template <int BM, int BN, int BK, typename Problem, typename Body>
__device__ __forceinline__ void for_each_tile(const Problem& p, Body body) {
    const i64 rows = p.rows(), cols = p.cols(), depth = p.depth(), splits = p.splits();
    const i64 tiles_m = (rows + BM - 1) / BM, tiles_n = (cols + BN - 1) / BN;
    const i64 chunk = ((depth + splits - 1) / splits + BK - 1) / BK * BK;
    for (i64 z = blockIdx.z; z < p.groups() * splits; z += gridDim.z) {
        const i64 g = z / splits, s = z % splits;
        const i64 k_begin = s * chunk, k_end = k_begin + chunk < depth ? k_begin + chunk : depth;
        const auto q = p.group(g, s);
        for (i64 tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
            for (i64 tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) body(q, tm * BM, tn * BN, k_begin, k_end);
        }
    }
}

// A warp's MI x NI m16n8 accumulator fragments of the tensor-core engines (mma_gemm.cuh,
// mma_pipeline.cuh; zeroed by zero_fragments in nabla.cuh), stored through the problem view q
// with the warp's top-left at (row0, col0) of C. Element e of fragment (i, j) is row 16 i +
// group (+ 8 for e >= 2), column 8 j + 2 tig + (e & 1); elements outside the rows x cols of C
// are dropped.
template <int MI, int NI, typename Q>
__device__ __forceinline__ void store_fragments(const Q& q, const float (&acc)[MI][NI][4], i64 row0, i64 col0,
                                                i64 rows, i64 cols, int group, int tig) {
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const i64 r = row0 + 16 * i + group + 8 * (e / 2);
                const i64 c = col0 + 8 * j + 2 * tig + (e & 1);
                if (r < rows && c < cols) q.store(r, c, acc[i][j][e]);
            }
}

// One thread's operand contexts in a tile: the LA rows of A it loads (first_row, then every
// row_step) and its column of B, each with whether it lies inside C (outside, the context of
// row or column 0 stands in, and the loads give 0).
template <typename Q, int LA>
struct TileContexts {
    typedef decltype(((const Q*)nullptr)->a_row(0)) ARow;
    typedef decltype(((const Q*)nullptr)->b_col(0)) BCol;
    ARow a[LA];
    bool a_ok[LA];
    BCol b;
    bool b_ok;
    __device__ __forceinline__ TileContexts(const Q& q, i64 rows, i64 cols, i64 first_row, int row_step, i64 col) {
#pragma unroll
        for (int i = 0; i < LA; ++i) {
            const i64 r = first_row + i * row_step;
            a_ok[i] = r < rows;
            a[i] = q.a_row(a_ok[i] ? r : 0);
        }
        b_ok = col < cols;
        b = q.b_col(b_ok ? col : 0);
    }
};

// Four adjacent values of a 16-byte aligned shared-memory row, read as one access (two for f64).
template <typename A> struct __align__(4 * sizeof(A)) Quad {
    A v[4];
};

template <typename A, int BM, int BN, typename Problem>
__device__ void tiled_gemm(const Problem& p) {
    constexpr int BK = GEMM_TILE_K;
    constexpr int TM = BM / 16, TN = BN / 16;                 // register tile
    constexpr int LA = BM * BK / GEMM_THREADS;                // A elements each thread loads
    constexpr int LB = BK * BN / GEMM_THREADS;                // B elements each thread loads
    constexpr int A_ROW_STEP = GEMM_THREADS / BK, B_K_STEP = GEMM_THREADS / BN;
    static_assert(TM % 4 == 0 && TN % 4 == 0, "the register tile is made of runs of four");
    // +4: the k-major stores of A hit 32 distinct banks, and rows stay 16-byte aligned.
    __shared__ __align__(4 * sizeof(A)) A as[BK][BM + 4];
    __shared__ __align__(4 * sizeof(A)) A bs[BK][BN];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    // Row i of the thread's register tile (column j likewise with tx): runs of 4, 64 apart.
    auto tile_row = [&](int i) { return 64 * (i / 4) + 4 * ty + i % 4; };
    auto tile_col = [&](int j) { return 64 * (j / 4) + 4 * tx + j % 4; };
    const int a_k = threadIdx.x % BK, a_r = threadIdx.x / BK;  // A: row a_r + i A_ROW_STEP, depth a_k
    const int b_c = threadIdx.x % BN, b_k = threadIdx.x / BN;  // B: column b_c, depth b_k + i B_K_STEP
    const i64 rows = p.rows(), cols = p.cols();
    typedef decltype(p.group(0, 0)) View;
    for_each_tile<BM, BN, BK>(p, [&](const View& q, i64 row0, i64 col0, i64 k_begin, i64 k_end) {
                const TileContexts<View, LA> ctx(q, rows, cols, row0 + a_r, A_ROW_STEP, col0 + b_c);
                A next_a[LA], next_b[LB];
                // Every load is made, at the range's last depth where k is past its end (any
                // context and any depth of the range is a valid address), and its value then
                // selected: a load under a condition compiled to a branch around each element.
                auto fetch = [&](i64 k0) {
#pragma unroll
                    for (int i = 0; i < LA; ++i) {
                        const i64 k = k0 + a_k;
                        const A v = q.a(ctx.a[i], k < k_end ? k : k_end - 1);
                        next_a[i] = (ctx.a_ok[i] && k < k_end) ? v : A(0);
                    }
#pragma unroll
                    for (int i = 0; i < LB; ++i) {
                        const i64 k = k0 + b_k + i * B_K_STEP;
                        const A v = q.b(ctx.b, k < k_end ? k : k_end - 1);
                        next_b[i] = (ctx.b_ok && k < k_end) ? v : A(0);
                    }
                };
                A acc[TM][TN];
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i][j] = A(0);
                if (k_begin < k_end) fetch(k_begin);
                for (i64 k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
                    for (int i = 0; i < LA; ++i) as[a_k][a_r + i * A_ROW_STEP] = next_a[i];
#pragma unroll
                    for (int i = 0; i < LB; ++i) bs[b_k + i * B_K_STEP][b_c] = next_b[i];
                    __syncthreads();
                    if (k0 + BK < k_end) fetch(k0 + BK);  // in flight while this step computes
#pragma unroll
                    for (int kk = 0; kk < BK; ++kk) {
                        Quad<A> ra[TM / 4], rb[TN / 4];
#pragma unroll
                        for (int i = 0; i < TM / 4; ++i) ra[i] = *(const Quad<A>*)&as[kk][tile_row(4 * i)];
#pragma unroll
                        for (int j = 0; j < TN / 4; ++j) rb[j] = *(const Quad<A>*)&bs[kk][tile_col(4 * j)];
#pragma unroll
                        for (int i = 0; i < TM; ++i)
#pragma unroll
                            for (int j = 0; j < TN; ++j) acc[i][j] += ra[i / 4].v[i % 4] * rb[j / 4].v[j % 4];
                    }
                    __syncthreads();
                }
#pragma unroll
                for (int i = 0; i < TM; ++i) {
                    const i64 r = row0 + tile_row(i);
                    if (r >= rows) continue;
#pragma unroll
                    for (int j = 0; j < TN; ++j) {
                        const i64 c = col0 + tile_col(j);
                        if (c < cols) q.store(r, c, acc[i][j]);
                    }
                }
    });
}

// The tile shapes every GEMM-shaped kernel is instantiated with, as `name_tname` (128 x 128),
// `name_wide_tname` (64 x 128) and `name_small_tname` (64 x 64); the host picks one
// (src/cuda/gemm.rs). KERNEL(T, suffix, BM, BN, MIN_BLOCKS) defines one, MIN_BLOCKS being its
// __launch_bounds__ blocks per SM: 2 caps a thread at 128 registers, 1 at 255. The choices
// (`large` for the 128 x 128 tile, `other` for the rest) keep every instantiation free of
// register spills, as ptxas -v reports for sm_90 (a test holds them to it): f32 and bf16
// matmuls fit 128 registers; the 128 x 128 convolutions and linear kernels, whose loaders or
// epilogue carry more context, f16 matmuls (32 bytes of spills at 128 registers since the
// register tile reads runs of four; f16 products run on the tensor cores from sm_80) and f64
// (two registers a value) take one block per SM.
#define GEMM_INSTANTIATE(KERNEL, T, tname, large, other) \
    KERNEL(T, tname, 128, 128, large) KERNEL(T, wide_##tname, 64, 128, other) KERNEL(T, small_##tname, 64, 64, other)
