// A tiled GEMM engine over index functors: C(r, c) = Σ_k A(r, k) B(k, c) for every group g
// (blockIdx.z: a batch entry of a matmul, a channel group of a convolution). A Problem supplies
// rows(), cols(), depth(), groups() and group(g), which returns the group's view with the
// loaders a(r, k), b(k, c) and store(r, c, value); per-group offsets are computed once there.
// Implicit-GEMM kernels (convolutions) gather their operands in the loaders instead of
// materialising an im2col matrix.
//
// Tiling: a 256-thread block computes a 64 x 64 tile of C, staging 64 x 16 of A and 16 x 64 of B
// in shared memory per step (converted to Acc<T>); each thread keeps a 4 x 4 register tile with
// rows and columns 16 apart (bank-conflict-free shared reads). B is loaded with consecutive
// threads on consecutive columns and C stored the same way, so problems that put the
// contiguous memory axis on the columns get coalesced loads and stores. Compute bound on the
// FMA pipes for large problems.
#pragma once
#include "nabla.cuh"

#define GEMM_TILE_M 64
#define GEMM_TILE_N 64
#define GEMM_TILE_K 16
#define GEMM_THREADS 256

// For problems whose loaders take the group index: group(g) binds it.
template <typename P, typename A>
struct GroupOf {
    const P& p;
    i64 g;
    __device__ A a(i64 r, i64 k) const { return p.a(g, r, k); }
    __device__ A b(i64 k, i64 c) const { return p.b(g, k, c); }
    __device__ void store(i64 r, i64 c, A v) const { p.store(g, r, c, v); }
};

template <typename A, typename Problem>
__device__ void tiled_gemm(const Problem& p) {
    __shared__ A as[GEMM_TILE_K][GEMM_TILE_M + 1];
    __shared__ A bs[GEMM_TILE_K][GEMM_TILE_N + 1];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const i64 rows = p.rows(), cols = p.cols(), depth = p.depth();
    const i64 tiles_m = (rows + GEMM_TILE_M - 1) / GEMM_TILE_M;
    const i64 tiles_n = (cols + GEMM_TILE_N - 1) / GEMM_TILE_N;
    for (i64 g = blockIdx.z; g < p.groups(); g += gridDim.z) {
        const auto q = p.group(g);
        for (i64 tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
            for (i64 tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
                const i64 row0 = tm * GEMM_TILE_M, col0 = tn * GEMM_TILE_N;
                A acc[4][4];
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = A(0);
                for (i64 k0 = 0; k0 < depth; k0 += GEMM_TILE_K) {
                    for (int t = threadIdx.x; t < GEMM_TILE_M * GEMM_TILE_K; t += GEMM_THREADS) {
                        const int r = t / GEMM_TILE_K, kk = t % GEMM_TILE_K;
                        const i64 gr = row0 + r, gk = k0 + kk;
                        as[kk][r] = (gr < rows && gk < depth) ? q.a(gr, gk) : A(0);
                    }
                    for (int t = threadIdx.x; t < GEMM_TILE_K * GEMM_TILE_N; t += GEMM_THREADS) {
                        const int kk = t / GEMM_TILE_N, cc = t % GEMM_TILE_N;
                        const i64 gk = k0 + kk, gc = col0 + cc;
                        bs[kk][cc] = (gk < depth && gc < cols) ? q.b(gk, gc) : A(0);
                    }
                    __syncthreads();
#pragma unroll
                    for (int kk = 0; kk < GEMM_TILE_K; ++kk) {
                        A ra[4], rb[4];
#pragma unroll
                        for (int i = 0; i < 4; ++i) ra[i] = as[kk][ty + 16 * i];
#pragma unroll
                        for (int j = 0; j < 4; ++j) rb[j] = bs[kk][tx + 16 * j];
#pragma unroll
                        for (int i = 0; i < 4; ++i)
#pragma unroll
                            for (int j = 0; j < 4; ++j) acc[i][j] += ra[i] * rb[j];
                    }
                    __syncthreads();
                }
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const i64 r = row0 + ty + 16 * i;
                    if (r >= rows) continue;
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const i64 c = col0 + tx + 16 * j;
                        if (c < cols) q.store(r, c, acc[i][j]);
                    }
                }
            }
        }
    }
}
