// The tensor-core variant of the tiled GEMM engine (tiled_gemm.cuh) for 16-bit inputs: the
// same Problem interface (rows, cols, depth, groups, group(g, s) with its loaders and store),
// the products done by `mma.sync.m16n8k16` (f16 or bf16 operands, f32 accumulation) instead of
// FMAs.
//
// Tiling: a 256-thread block (8 warps, 2 down x 4 across) computes a BM x BN tile of C
// (128 x 128, 64 x 128 or 64 x 64) 16 deep per step; each warp owns a (BM/2) x (BN/4) sub-tile
// of (BM/32) x (BN/32) m16n8 accumulator fragments. Operands go global -> registers (the next
// step's, prefetched while this one computes) -> shared memory as 16-bit values, A row-major
// (m x k) and B column-major (n x k), so a fragment's two neighbouring elements are one 32-bit
// shared load; rows are padded to 24 halves, which makes the eight rows a fragment load
// touches fall on distinct banks. Fragments follow the PTX ISA's layout for m16n8k16 (see the
// intrinsic in nabla.cuh). Bound: the tensor pipes' peak for large problems once loads are
// pipelined (cp.async and ldmatrix come next); this first version keeps the FMA engine's
// simple register prefetch.
#pragma once
#include "tiled_gemm.cuh"

#define MMA_TILE_K 16
#define MMA_ROW_PAD 24

template <typename T, int BM, int BN, typename Problem>
__device__ void mma_gemm(const Problem& p) {
    typedef float A;
    constexpr int BK = MMA_TILE_K, THREADS = 256;
    constexpr int WM = BM / 2, WN = BN / 4;       // a warp's sub-tile
    constexpr int MI = WM / 16, NI = WN / 8;      // its m16 x n8 fragments
    constexpr int LA = BM * BK / THREADS, LB = BN * BK / THREADS;
    constexpr int A_ROW_STEP = THREADS / BK, B_K_STEP = THREADS / BN;
    __shared__ unsigned short as[BM][MMA_ROW_PAD];
    __shared__ unsigned short bs[BN][MMA_ROW_PAD];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int group = lane >> 2, tig = lane & 3;  // the PTX ISA's groupID, threadID_in_group
    const int warp_row = (warp / 4) * WM, warp_col = (warp % 4) * WN;
    const int a_k = threadIdx.x % BK, a_r = threadIdx.x / BK;
    const int b_c = threadIdx.x % BN, b_k = threadIdx.x / BN;
    const i64 rows = p.rows(), cols = p.cols();
    typedef decltype(p.group(0, 0)) View;
    for_each_tile<BM, BN, BK>(p, [&](const View& q, i64 row0, i64 col0, i64 k_begin, i64 k_end) {
                const TileContexts<View, LA> ctx(q, rows, cols, row0 + a_r, A_ROW_STEP, col0 + b_c);
                unsigned short next_a[LA], next_b[LB];
                // The loaders widen to f32; narrowing back is exact (the values came from T).
                auto fetch = [&](i64 k0) {
#pragma unroll
                    for (int i = 0; i < LA; ++i) {
                        const i64 k = k0 + a_k;
                        next_a[i] = bits_of(down<T>((ctx.a_ok[i] && k < k_end) ? q.a(ctx.a[i], k) : A(0)));
                    }
#pragma unroll
                    for (int i = 0; i < LB; ++i) {
                        const i64 k = k0 + b_k + i * B_K_STEP;
                        next_b[i] = bits_of(down<T>((ctx.b_ok && k < k_end) ? q.b(ctx.b, k) : A(0)));
                    }
                };
                float acc[MI][NI][4];
#pragma unroll
                for (int i = 0; i < MI; ++i)
#pragma unroll
                    for (int j = 0; j < NI; ++j)
#pragma unroll
                        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
                if (k_begin < k_end) fetch(k_begin);
                for (i64 k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
                    for (int i = 0; i < LA; ++i) as[a_r + i * A_ROW_STEP][a_k] = next_a[i];
#pragma unroll
                    for (int i = 0; i < LB; ++i) bs[b_c][b_k + i * B_K_STEP] = next_b[i];
                    __syncthreads();
                    if (k0 + BK < k_end) fetch(k0 + BK);  // in flight while this step computes
                    unsigned fa[MI][4], fb[NI][2];
#pragma unroll
                    for (int i = 0; i < MI; ++i) {
                        const unsigned short* top = as[warp_row + 16 * i + group];
                        const unsigned short* bottom = as[warp_row + 16 * i + group + 8];
                        fa[i][0] = pair_at(top, 2 * tig);
                        fa[i][1] = pair_at(bottom, 2 * tig);
                        fa[i][2] = pair_at(top, 2 * tig + 8);
                        fa[i][3] = pair_at(bottom, 2 * tig + 8);
                    }
#pragma unroll
                    for (int j = 0; j < NI; ++j) {
                        const unsigned short* column = bs[warp_col + 8 * j + group];
                        fb[j][0] = pair_at(column, 2 * tig);
                        fb[j][1] = pair_at(column, 2 * tig + 8);
                    }
#pragma unroll
                    for (int i = 0; i < MI; ++i)
#pragma unroll
                        for (int j = 0; j < NI; ++j) mma_16816<T>(acc[i][j], fa[i], fb[j]);
                    __syncthreads();
                }
                // Accumulator element e of fragment (i, j): row group (+8 for e >= 2), column
                // 2 tig + (e & 1).
#pragma unroll
                for (int i = 0; i < MI; ++i)
#pragma unroll
                    for (int j = 0; j < NI; ++j)
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const i64 r = row0 + warp_row + 16 * i + group + 8 * (e / 2);
                            const i64 c = col0 + warp_col + 8 * j + 2 * tig + (e & 1);
                            if (r < rows && c < cols) q.store(r, c, acc[i][j][e]);
                        }
    });
}
