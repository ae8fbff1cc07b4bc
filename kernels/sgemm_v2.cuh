// Versions 2 and 3 of the FMA-pipe GEMM (version 1: tiled_gemm.cuh), for f32 products whose operands
// are each dense along one axis, as every linear layer's three products and a row-major
// matmul are. Version 1 reads every element through the problem's index functors, one 4-byte
// load with its own bounds check, 8 deep per step, into one shared buffer; here each thread
// moves 16-byte chunks (LDG.128), 16 deep per step, into two shared buffers, so a step costs one
// barrier and its global loads are in flight while the previous step computes (Boehm's SGEMM
// worklog: vectorised loads took his kernel from 69% to 78% of cuBLAS, warp tiling to 94%).
//
// Tiling: a 256-thread block computes a 128 x 128 tile of C, 16 deep per step. Its 8 warps sit
// 2 down x 4 across, each owning a 64 x 32 sub-tile; lane (tr, tc) = (lane / 4, lane % 4) owns
// rows 4 tr + {0..3} and 32 + 4 tr + {0..3} of its warp's sub-tile and columns 4 tc + {0..3}
// and 16 + 4 tc + {0..3}: an 8 x 8 register tile read from shared memory as runs of four
// (LDS.128; per depth 2 for A and 2 for B for 64 FMAs).
//
// Shared layout: both operands as [16 depth][128 + 4] (the tile's rows of A or columns of B
// along the fast axis; rows 16-byte aligned). An operand contiguous along its m or n axis
// ("mn-major") is copied chunk for chunk (4 values of one depth, one STS.128). One contiguous
// along the depth ("k-major": x Wᵀ's both operands, the weight gradient's none) is transposed
// on the way in: a chunk holds 4 depths of one row and goes to four 4-byte stores; a warp's
// chunks are 16 rows x 2 chunks, so consecutive lane pairs read whole 32-byte sectors and, with
// the rows 132 values apart, each store's 32 lanes hit 32 distinct banks.
//
// Chunks past the edges of A or B are zero. The host picks this version only when every chunk
// is whole and 16-byte aligned: the contiguous axis has stride 1 and an extent that is a
// multiple of 4, and the other stride, the offsets and the batch strides are multiples of 4
// (cuda::gemm::pipelined_layout). Bound: the FP32 pipes for large problems.
#pragma once
#include "tiled_gemm.cuh"

#define SGEMM2_TILE 128
#define SGEMM2_BK 16
#define SGEMM2_THREADS 256
#define SGEMM2_STRIDE (SGEMM2_TILE + 4)

// Four f32 values of a 16-byte aligned address, moved as one access.
struct __align__(16) Float4 {
    float v[4];
};

// One operand's side: which two chunks of the 128 x 16 tile a thread loads, and where they go.
// K_MAJOR: element (i, k) (i a row of A or a column of B) is at base[i * stride + k], else at
// base[k * stride + i]; `extent` is the operand's m (A) or n (B).
template <bool K_MAJOR>
struct Sgemm2Operand {
    // Chunk s (0 or 1) of this thread: its tile coordinates (index i, depth k) of the first value.
    __device__ static void chunk(int s, int* i, int* k) {
        const int c = threadIdx.x + SGEMM2_THREADS * s;
        if (K_MAJOR) {
            // 128 rows x 4 chunks: bit 0 and bit 8 of c the chunk, bits 1-7 the row.
            *i = (c >> 1) & 127;
            *k = 4 * ((c & 1) | ((c >> 8) << 1));
        } else {
            // 16 depths x 32 chunks.
            *i = 4 * (c & 31);
            *k = c >> 5;
        }
    }
    // Reads this thread's two chunks of the tile at (i0, k0) into `regs` (zero past the edges).
    __device__ static void load(Float4 (&regs)[2], const float* base, i64 stride, i64 i0, i64 extent, i64 k0,
                                i64 depth) {
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            int i, k;
            chunk(s, &i, &k);
            const i64 gi = i0 + i, gk = k0 + k;
            if (gi < extent && gk < depth) {
                regs[s] = *(const Float4*)(K_MAJOR ? base + gi * stride + gk : base + gk * stride + gi);
            } else {
                regs[s] = Float4{{0.0f, 0.0f, 0.0f, 0.0f}};
            }
        }
    }
    // Writes the two chunks into the [16][SGEMM2_STRIDE] shared tile.
    __device__ static void store(float* tile, const Float4 (&regs)[2]) {
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            int i, k;
            chunk(s, &i, &k);
            if (K_MAJOR) {
#pragma unroll
                for (int e = 0; e < 4; ++e) tile[(k + e) * SGEMM2_STRIDE + i] = regs[s].v[e];
            } else {
                *(Float4*)&tile[k * SGEMM2_STRIDE + i] = regs[s];
            }
        }
    }
};

// UNROLLED: the 16 depths of a step unrolled, so a warp's shared loads for the next depth issue
// under the current depth's FMAs (version 3; about 165-185 registers, one block a
// multiprocessor); else one depth per loop turn (version 2; at most 128 registers, two blocks a
// multiprocessor, the latency hidden by the other block's warps instead). Which wins is the GEMM
// lab's question for a GPU (benches/ops.rs).
template <bool A_K_MAJOR, bool B_K_MAJOR, bool UNROLLED, typename Problem>
__device__ void sgemm_v2(const Problem& p) {
    typedef Sgemm2Operand<A_K_MAJOR> OpA;
    typedef Sgemm2Operand<B_K_MAJOR> OpB;
    constexpr int TILE = SGEMM2_BK * SGEMM2_STRIDE;
    __shared__ __align__(16) float as[2][TILE];
    __shared__ __align__(16) float bs[2][TILE];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int tr = lane / 4, tc = lane % 4;
    const int row_base = (warp / 4) * 64 + 4 * tr, col_base = (warp % 4) * 32 + 4 * tc;
    const i64 rows = p.rows(), cols = p.cols();
    typedef decltype(p.group(0, 0)) View;
    for_each_tile<SGEMM2_TILE, SGEMM2_TILE, SGEMM2_BK>(p, [&](const View& q, i64 row0, i64 col0, i64 k_begin,
                                                             i64 k_end) {
        const i64 a_stride = A_K_MAJOR ? q.a_rs : q.a_cs, b_stride = B_K_MAJOR ? q.b_cs : q.b_rs;
        const int steps = (int)((k_end - k_begin + SGEMM2_BK - 1) / SGEMM2_BK);
        Float4 next_a[2], next_b[2];
        auto fetch = [&](int t) {
            const i64 k0 = k_begin + (i64)t * SGEMM2_BK;
            OpA::load(next_a, q.pa, a_stride, row0, rows, k0, k_end);
            OpB::load(next_b, q.pb, b_stride, col0, cols, k0, k_end);
        };
        float acc[8][8];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
        if (steps > 0) {
            fetch(0);
            OpA::store(as[0], next_a);
            OpB::store(bs[0], next_b);
        }
        __syncthreads();
        for (int t = 0; t < steps; ++t) {
            if (t + 1 < steps) fetch(t + 1);  // in flight while this step computes
            const float* a_tile = as[t % 2];
            const float* b_tile = bs[t % 2];
            auto depth_step = [&](int kk) {
                const float* a_row = a_tile + kk * SGEMM2_STRIDE;
                const float* b_row = b_tile + kk * SGEMM2_STRIDE;
                const Float4 ra[2] = {*(const Float4*)&a_row[row_base], *(const Float4*)&a_row[row_base + 32]};
                const Float4 rb[2] = {*(const Float4*)&b_row[col_base], *(const Float4*)&b_row[col_base + 16]};
#pragma unroll
                for (int i = 0; i < 8; ++i)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[i][j] += ra[i / 4].v[i % 4] * rb[j / 4].v[j % 4];
            };
            if (UNROLLED) {
#pragma unroll
                for (int kk = 0; kk < SGEMM2_BK; ++kk) depth_step(kk);
            } else {
#pragma unroll 1
                for (int kk = 0; kk < SGEMM2_BK; ++kk) depth_step(kk);
            }
            if (t + 1 < steps) {
                // The other buffer was last read in step t - 1, which every thread has left.
                OpA::store(as[(t + 1) % 2], next_a);
                OpB::store(bs[(t + 1) % 2], next_b);
            }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const i64 r = row0 + row_base + 32 * (i / 4) + i % 4;
            if (r >= rows) continue;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const i64 c = col0 + col_base + 16 * (j / 4) + j % 4;
                if (c < cols) q.store(r, c, acc[i][j]);
            }
        }
    });
}
