// Version 4 of the FMA-pipe GEMM (versions 2-3: sgemm_v2.cuh), for the same f32 products: each
// operand dense along one axis, every 16-byte chunk whole and aligned. Versions 2-3 stage a step's
// operands through registers (LDG.128 into registers during a step, STS into the other of two
// shared buffers after it): each thread holds 16 values for the next step and issues their stores
// itself, and only one step's loads are ever in flight. Here the copies go from global to shared
// memory by `cp.async`, untouched, in a 4-stage pipeline (sm_80+): three steps' loads (48 of the
// depth) are in flight while one is multiplied, with no registers held for them.
//
// Tiling: as version 2: a 256-thread block computes a 128 x 128 tile of C, 16 deep a stage; its 8
// warps sit 2 down x 4 across, each owning a 64 x 32 sub-tile, and lane (tr, tc) = (lane / 4,
// lane % 4) owns 8 rows and 8 columns of it (an 8 x 8 register tile, 64 FMAs a depth).
//
// Shared layouts: an operand is kept as it lies in memory, since cp.async cannot transpose.
// - Contiguous along m (A) or n (B), "mn-major": [16 depths][128 + 4], as version 2; a lane's
//   indices are two runs of four (rows 4 tr + {0..3} and 32 + 4 tr + {0..3} of its warp's 64;
//   columns 4 tc + {0..3} and 16 + 4 tc + {0..3} of its 32), each depth two LDS.128.
// - Contiguous along the depth (x Wᵀ's both operands), "k-major": [128 rows][16 + 4], a row's 16
//   depths and 4 of padding (80 bytes: chunks stay 16-byte aligned). A lane reads its 8 indices'
//   two depths at a time (LDS.64 each), so its indices are spread (rows tr + 8 {0..7}, columns
//   tc + 4 {0..7}): the 16 lanes of one LDS.64 phase then read 4 consecutive rows, 20 banks
//   apart, all distinct (runs of four 4 tr + {0..3} would put lanes 80 words, 16 banks, apart:
//   two-way conflicts).
// Either way a depth pair costs 8 shared loads for 128 FMAs a lane (LDS.64 x 8 or LDS.128 x 4 an
// operand, the same bytes).
//
// Shared memory: 4 stages x 2 operands x 10 KiB (the k-major tile, the larger) = 80 KiB, dynamic
// (the host raises the kernel's limit past 48 KiB); two blocks fit an A100's or H100's SM. Chunks
// past the edges are zero-filled by cp.async. Bound: the FP32 pipes for large problems.
#pragma once
#include "sgemm_v2.cuh"
#include "mma_pipeline.cuh"

#define SGEMM4_STAGES 4
#define SGEMM4_K_STRIDE (SGEMM2_BK + 4)
// Floats of one operand's stage, the larger of the two layouts (k-major 128 x 20; mn-major 16 x 132).
#define SGEMM4_STAGE_FLOATS (SGEMM2_TILE * SGEMM4_K_STRIDE)
// The launch's dynamic shared memory: 2 operands x SGEMM4_STAGES x SGEMM4_STAGE_FLOATS floats
// (FMA_V4_SHARED_BYTES in src/cuda/gemm.rs; a test holds the two together).

// Two f32 values of an 8-byte aligned address, moved as one access (LDS.64).
struct __align__(8) Float2 {
    float v[2];
};

// One operand's side. K_MAJOR: element (i, k) (i a row of A or a column of B) is at
// base[i * stride + k], else at base[k * stride + i]. SPAN is the warp's extent along i (64 for A,
// 32 for B), so SPAN / 8 lanes of a warp share a depth and differ along i.
template <bool K_MAJOR, int SPAN>
struct Sgemm4Operand {
    static constexpr int LANES = SPAN / 8;
    // A stage's 16-byte chunks (4 values), as a thread copies them: chunk c = threadIdx.x + 256 s
    // (s = 0, 1) is, k-major, row c / 4 and depths 4 (c % 4).., mn-major, depth c / 32 and
    // indices 4 (c % 32)...; a thread's two are ROWS_APART rows of the tile (indices k-major,
    // depths mn-major) and DST_APART floats apart. (The same shape as PipeOperand's, so that
    // conv2d.cu's loaders serve both pipelines.)
    static constexpr int CHUNK = 4, CHUNKS = 2;
    static constexpr int ROWS_APART = K_MAJOR ? 64 : 8;
    static constexpr int DST_APART = K_MAJOR ? 64 * SGEMM4_K_STRIDE : 8 * SGEMM2_STRIDE;
    __device__ static int chunk_row(unsigned c) { return K_MAJOR ? c / 4 : c / 32; }
    __device__ static int chunk_col(unsigned c) { return K_MAJOR ? c % 4 : c % 32; }
    // Offset in a stage of chunk `col` of row `row` (a k-major tile's row is an index i, an
    // mn-major tile's a depth).
    __device__ static int chunk_dst(int row, int col) {
        return row * (K_MAJOR ? SGEMM4_K_STRIDE : SGEMM2_STRIDE) + 4 * col;
    }
    // Index, within the warp's SPAN, of value v (0..7) of the lane at position lp (0..LANES-1).
    __device__ static int index(int lp, int v) {
        return K_MAJOR ? lp + LANES * v : 4 * lp + (v % 4) + (SPAN / 2) * (v / 4);
    }
    // This thread's two copies of every stage of one tile of C, for an operand read through a
    // pointer and a stride. Their sources are computed once a tile and advanced by a stage's
    // depth after each stage (as mma_pipeline.cuh's loaders).
    struct Loader {
        const float* safe;  // a valid address (the operand's first element) for copies that read nothing
        const float* src;   // chunk 0's source in the next stage
        i64 step;           // elements from one stage's chunk to the next stage's
        i64 apart;          // elements from chunk 0's source to chunk 1's
        int dst;            // chunk 0's offset in a stage, in floats
        int dk;             // chunk 0's depth relative to the stage's first
        unsigned inside;    // bit s: chunk s's i lies inside the operand
        __device__ Loader(const float* b, i64 stride, i64 i0, i64 extent, i64 k_begin)
            : safe(b),
              step(K_MAJOR ? (i64)SGEMM2_BK : SGEMM2_BK * stride),
              apart(ROWS_APART * stride) {
            const int row = chunk_row(threadIdx.x), col = chunk_col(threadIdx.x);
            const int di = K_MAJOR ? row : 4 * col;
            dk = K_MAJOR ? 4 * col : row;
            dst = chunk_dst(row, col);
            inside = (unsigned)(i0 + di < extent) | (unsigned)(i0 + di + (K_MAJOR ? ROWS_APART : 0) < extent) << 1;
            const i64 i = i0 + di < extent ? i0 + di : 0, k = k_begin + dk;
            src = K_MAJOR ? b + i * stride + k : b + k * stride + i;
        }
        // Copies this thread's chunks of the stage at depth k0 into `tile` (zeros past the
        // operand's edges and from `depth` on) and moves on to the next stage.
        __device__ void issue(float* tile, i64 k0, i64 depth) {
            const int left = depth - k0 < SGEMM2_BK ? (int)(depth - k0) : SGEMM2_BK;  // depths in this stage
#pragma unroll
            for (int s = 0; s < 2; ++s) {
                const bool valid = (inside >> s & 1) && dk + (K_MAJOR ? 0 : ROWS_APART) * s < left;
                cp_async_16(tile + dst + DST_APART * s, valid ? src + s * apart : safe, valid);
            }
            src += step;
        }
    };
    // Offset, in a stage, of the first value the lane at position lp reads, its warp starting at
    // index w; `values` reads the rest at fixed distances from it.
    __device__ static int lane_offset(int w, int lp) {
        return K_MAJOR ? (w + lp) * SGEMM4_K_STRIDE : w + 4 * lp;
    }
    // The lane's 8 values at depths kk and kk + 1 of a stage, from `lane` (the stage plus
    // lane_offset).
    __device__ static void values(float (&v)[8][2], const float* lane, int kk) {
        if (K_MAJOR) {
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const Float2 x = *(const Float2*)(lane + LANES * e * SGEMM4_K_STRIDE + kk);
                v[e][0] = x.v[0];
                v[e][1] = x.v[1];
            }
        } else {
#pragma unroll
            for (int d = 0; d < 2; ++d) {
                const float* row = lane + (kk + d) * SGEMM2_STRIDE;
                const Float4 lo = *(const Float4*)row, hi = *(const Float4*)(row + SPAN / 2);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    v[e][d] = lo.v[e];
                    v[4 + e][d] = hi.v[e];
                }
            }
        }
    }
};

// The pipeline for every tile of C a block owns (for_each_tile over problem p, whose views store
// C). `loaders(q, row0, col0, k_begin)` gives a tile's PipeLoaders (mma_pipeline.cuh): anything
// with `issue(tile, k0, depth)` that copies its thread's part of the stage at depth k0 in OpA's
// (OpB's) layout, zeros from `depth` on, and moves on to the next stage.
template <typename OpA, typename OpB, typename Problem, typename MakeLoaders>
__device__ void fma_pipeline(const Problem& p, MakeLoaders loaders) {
    NABLA_DYNAMIC_SHARED(float, stages);
    float* as = stages;
    float* bs = stages + SGEMM4_STAGES * SGEMM4_STAGE_FLOATS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int tr = lane / 4, tc = lane % 4;
    const int warp_row = (warp / 4) * 64, warp_col = (warp % 4) * 32;
    const int a_lane = OpA::lane_offset(warp_row, tr), b_lane = OpB::lane_offset(warp_col, tc);
    const i64 rows = p.rows(), cols = p.cols();
    typedef decltype(p.group(0, 0)) View;
    for_each_tile<SGEMM2_TILE, SGEMM2_TILE, SGEMM2_BK>(p, [&](const View& q, i64 row0, i64 col0, i64 k_begin,
                                                             i64 k_end) {
        auto tile_loaders = loaders(q, row0, col0, k_begin);
        auto& load_a = tile_loaders.a;
        auto& load_b = tile_loaders.b;
        const int steps = (int)((k_end - k_begin + SGEMM2_BK - 1) / SGEMM2_BK);
        // Stages are issued in order, one a turn: stage t's copies go to buffer t % SGEMM4_STAGES.
        int fill = 0;
        i64 fill_k = k_begin;
        auto load = [&]() {
            load_a.issue(as + fill * SGEMM4_STAGE_FLOATS, fill_k, k_end);
            load_b.issue(bs + fill * SGEMM4_STAGE_FLOATS, fill_k, k_end);
            fill = fill + 1 == SGEMM4_STAGES ? 0 : fill + 1;
            fill_k += SGEMM2_BK;
        };
        float acc[8][8];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
#pragma unroll
        for (int s = 0; s < SGEMM4_STAGES - 1; ++s) {
            if (s < steps) load();
            cp_async_commit();  // one group per stage, empty ones included, so the count is exact
        }
        int use = 0;  // the buffer of stage t
        for (int t = 0; t < steps; ++t) {
            cp_async_wait<SGEMM4_STAGES - 2>();  // stage t has landed (this thread's part of it)
            __syncthreads();                     // ...every thread's, and stage t - 1 is consumed
            if (t + SGEMM4_STAGES - 1 < steps) load();
            cp_async_commit();
            const float* a_tile = as + use * SGEMM4_STAGE_FLOATS + a_lane;
            const float* b_tile = bs + use * SGEMM4_STAGE_FLOATS + b_lane;
            use = use + 1 == SGEMM4_STAGES ? 0 : use + 1;
            // One depth pair a turn: unrolled further, ptxas spills at 128 registers.
#pragma unroll 1
            for (int kk = 0; kk < SGEMM2_BK; kk += 2) {
                float va[8][2], vb[8][2];
                OpA::values(va, a_tile, kk);
                OpB::values(vb, b_tile, kk);
#pragma unroll
                for (int d = 0; d < 2; ++d)
#pragma unroll
                    for (int i = 0; i < 8; ++i)
#pragma unroll
                        for (int j = 0; j < 8; ++j) acc[i][j] += va[i][d] * vb[j][d];
            }
        }
        cp_async_wait<0>();
        __syncthreads();  // the next tile of the grid-stride loop reuses the stages
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const i64 r = row0 + warp_row + OpA::index(tr, i);
            if (r >= rows) continue;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const i64 c = col0 + warp_col + OpB::index(tc, j);
                if (c < cols) q.store(r, c, acc[i][j]);
            }
        }
    });
}

// The matrix product for one block, operands read through the view's pointers and strides.
template <bool A_K_MAJOR, bool B_K_MAJOR, typename Problem>
__device__ void sgemm_v4(const Problem& p) {
    typedef Sgemm4Operand<A_K_MAJOR, 64> OpA;
    typedef Sgemm4Operand<B_K_MAJOR, 32> OpB;
    typedef typename OpA::Loader LoaderA;
    typedef typename OpB::Loader LoaderB;
    const i64 rows = p.rows(), cols = p.cols();
    // (NVRTC takes a generic lambda's call operator for a host function: the view's type is spelled)
    typedef decltype(p.group(0, 0)) View;
    fma_pipeline<OpA, OpB>(p, [&](const View& q, i64 row0, i64 col0, i64 k_begin) {
        const i64 a_stride = A_K_MAJOR ? q.a_rs : q.a_cs, b_stride = B_K_MAJOR ? q.b_cs : q.b_rs;
        return PipeLoaders<LoaderA, LoaderB>{LoaderA(q.pa, a_stride, row0, rows, k_begin),
                                             LoaderB(q.pb, b_stride, col0, cols, k_begin)};
    });
}
