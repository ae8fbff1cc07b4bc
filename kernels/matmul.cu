// Batched matrix product C[b] = A[b] x B[b], A[b] m x k and B[b] k x n, any strides.
//
// Tiling: a 256-thread block computes a 64 x 64 tile of C. Each step stages a 64 x 16 slab of
// A and a 16 x 64 slab of B in shared memory (converted to Acc<T>), then every thread
// accumulates a 4 x 4 register micro-tile whose rows and columns are 16 apart, so the shared
// memory reads of a warp hit distinct banks and the stores of C coalesce. Operands are read
// through (row, column) strides, which gives transposed operands without copies, and through
// per-batch strides unravelled over the batch shape, which gives broadcast batch dims.
// Arithmetic intensity is 16 FLOP per shared load per thread: compute bound on the FMA pipes
// for large m, n, k; f16/bf16 accumulate in f32 (no tensor cores in this first path).
#include "nabla.cuh"

#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define MATMUL_THREADS 256

template <typename T>
__device__ void matmul_tiles(const T* a, const T* b, T* c, const MatmulParams& p) {
    typedef typename Acc<T>::type A;
    __shared__ A as[TILE_K][TILE_M + 1];
    __shared__ A bs[TILE_K][TILE_N + 1];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const i64 tiles_m = (p.m + TILE_M - 1) / TILE_M;
    const i64 tiles_n = (p.n + TILE_N - 1) / TILE_N;
    for (i64 batch = blockIdx.z; batch < p.batch; batch += gridDim.z) {
        i64 a_base = p.a_offset, b_base = p.b_offset, rest = batch;
        for (int d = (int)p.batch_ndim - 1; d >= 0; --d) {
            const i64 idx = rest % p.batch_shape[d];
            rest /= p.batch_shape[d];
            a_base += idx * p.a_batch_strides[d];
            b_base += idx * p.b_batch_strides[d];
        }
        T* c_batch = c + batch * p.m * p.n;
        for (i64 tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
            for (i64 tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
                const i64 row0 = tm * TILE_M, col0 = tn * TILE_N;
                A acc[4][4];
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = A(0);
                for (i64 k0 = 0; k0 < p.k; k0 += TILE_K) {
                    for (int t = threadIdx.x; t < TILE_M * TILE_K; t += MATMUL_THREADS) {
                        const int r = t / TILE_K, kk = t % TILE_K;
                        const i64 gr = row0 + r, gk = k0 + kk;
                        as[kk][r] = (gr < p.m && gk < p.k) ? (A)up(a[a_base + gr * p.a_row_stride + gk * p.a_col_stride]) : A(0);
                    }
                    for (int t = threadIdx.x; t < TILE_K * TILE_N; t += MATMUL_THREADS) {
                        const int kk = t / TILE_N, cc = t % TILE_N;
                        const i64 gk = k0 + kk, gc = col0 + cc;
                        bs[kk][cc] = (gk < p.k && gc < p.n) ? (A)up(b[b_base + gk * p.b_row_stride + gc * p.b_col_stride]) : A(0);
                    }
                    __syncthreads();
#pragma unroll
                    for (int kk = 0; kk < TILE_K; ++kk) {
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
                    if (r >= p.m) continue;
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const i64 col = col0 + tx + 16 * j;
                        if (col < p.n) c_batch[r * p.n + col] = down<T>(acc[i][j]);
                    }
                }
            }
        }
    }
}

#define MATMUL(T, tname) \
    extern "C" __global__ void __launch_bounds__(MATMUL_THREADS) matmul_##tname(const T* a, const T* b, T* c, MatmulParams p) { \
        matmul_tiles<T>(a, b, c, p); \
    }
MATMUL(float, f32) MATMUL(double, f64) MATMUL(f16, f16) MATMUL(bf16, bf16)
