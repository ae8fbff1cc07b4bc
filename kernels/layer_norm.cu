// Layer normalisation over the last dimension (as torch.nn.LayerNorm with one normalised dim),
// forward and backward. With x̂ = (x - μ_r) · rstd_r, rstd_r = 1 / √(σ²_r + eps) per row r:
// - layer_norm_fwd:        μ_r and σ²_r in the accumulate type (f32 for f16/bf16, so half inputs
//                          get f32 statistics), two passes over the row (no cancellation), then
//                          y = x̂ γ + β; saves μ_r and rstd_r.
// - layer_norm_bwd_input:  with g = dy γ: dx = rstd · (g - mean(g) - x̂ mean(g x̂)), two
//                          reductions.
// Both take a row per warp when it has at most 32 ROW_VALUES columns (the row read once into
// registers, reduced by shuffles; four rows a block), else a row per 128-thread block (the row
// read three times from L1/L2, reduced through shared memory with barriers). Grid-stride over
// rows either way, so the host's grid (cuda: a block per row, or per four) only sets the speed.
// On an H200 (session 13) a block per row of 384 columns moved 1.9 TB/s in the backward.
// - layer_norm_bwd_params: partial Σ_r dy x̂ (dγ) and Σ_r dy (dβ) over `chunk` rows per block, one
//                          thread per column (coalesced along the row), written as f32/f64
//                          partials [chunks, cols] that the host sums over chunks.
// γ and β are optional (null). Everything is memory bound: the goal is DRAM bandwidth.
#include "nabla.cuh"

#define LAYER_NORM_THREADS 128

#define ROW_VALUES 32

// The sum of v over the warp, in every lane.
template <typename A> __device__ __forceinline__ A warp_all_sum(A v) {
#pragma unroll
    for (int delta = 16; delta > 0; delta >>= 1) v += __shfl_xor_sync(0xffffffffu, v, delta);
    return v;
}

// The rows r = warp, warp + warps, ... of the grid (four warps a block), `lane` its lane.
#define FOR_EACH_WARP_ROW(r, rows) \
    for (i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < (rows); \
         r += (i64)gridDim.x * (blockDim.x / 32))

struct Sum {
    template <typename A> __device__ A operator()(A a, A b) const { return a + b; }
};

// The row's sum, valid in every thread (broadcast through shared memory).
template <typename A>
__device__ A row_sum(A v, A* scratch, A* shared) {
    v = block_reduce(v, Sum(), scratch, A(0));
    if (threadIdx.x == 0) *shared = v;
    __syncthreads();
    const A total = *shared;
    __syncthreads();  // `shared` is rewritten by the next call
    return total;
}

template <typename T>
__device__ void layer_norm_fwd(const T* x, const T* weight, const T* bias, T* y, typename Acc<T>::type* mean,
                               typename Acc<T>::type* rstd, LayerNormParams p) {
    typedef typename Acc<T>::type A;
    if (p.cols <= 32 * ROW_VALUES) {
        const int lane = threadIdx.x % 32;
        FOR_EACH_WARP_ROW(r, p.rows) {
            const T* row = x + r * p.cols;
            A v[ROW_VALUES], s = A(0), sq = A(0);
#pragma unroll
            for (int i = 0; i < ROW_VALUES; ++i) {
                const i64 j = lane + 32 * i;
                v[i] = j < p.cols ? (A)up(row[j]) : A(0);
                s += v[i];
            }
            const A mu = warp_all_sum(s) / (A)p.cols;
#pragma unroll
            for (int i = 0; i < ROW_VALUES; ++i)
                if (lane + 32 * i < p.cols) sq += (v[i] - mu) * (v[i] - mu);
            const A inv = A(1) / m_sqrt(warp_all_sum(sq) / (A)p.cols + (A)p.eps);
#pragma unroll
            for (int i = 0; i < ROW_VALUES; ++i) {
                const i64 j = lane + 32 * i;
                if (j >= p.cols) continue;
                A out = (v[i] - mu) * inv;
                if (weight) out *= (A)up(weight[j]);
                if (bias) out += (A)up(bias[j]);
                y[r * p.cols + j] = down<T>(out);
            }
            if (lane == 0) {
                mean[r] = mu;
                rstd[r] = inv;
            }
        }
        return;
    }
    __shared__ A scratch[32];
    __shared__ A shared;
    for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const T* row = x + r * p.cols;
        A s = A(0);
        for (i64 j = threadIdx.x; j < p.cols; j += blockDim.x) s += up(row[j]);
        const A mu = row_sum(s, scratch, &shared) / (A)p.cols;
        A sq = A(0);
        for (i64 j = threadIdx.x; j < p.cols; j += blockDim.x) {
            const A d = (A)up(row[j]) - mu;
            sq += d * d;
        }
        const A var = row_sum(sq, scratch, &shared) / (A)p.cols;
        const A inv = A(1) / m_sqrt(var + (A)p.eps);
        for (i64 j = threadIdx.x; j < p.cols; j += blockDim.x) {
            A v = ((A)up(row[j]) - mu) * inv;
            if (weight) v *= (A)up(weight[j]);
            if (bias) v += (A)up(bias[j]);
            y[r * p.cols + j] = down<T>(v);
        }
        if (threadIdx.x == 0) {
            mean[r] = mu;
            rstd[r] = inv;
        }
    }
}

template <typename T>
__device__ void layer_norm_bwd_input(const T* dy, const T* x, const T* weight, const typename Acc<T>::type* mean,
                                     const typename Acc<T>::type* rstd, T* dx, LayerNormParams p) {
    typedef typename Acc<T>::type A;
    if (p.cols <= 32 * ROW_VALUES) {
        const int lane = threadIdx.x % 32;
        FOR_EACH_WARP_ROW(r, p.rows) {
            const i64 base = r * p.cols;
            const A mu = mean[r], inv = rstd[r];
            A g[ROW_VALUES], xhat[ROW_VALUES], sg = A(0), sgx = A(0);
#pragma unroll
            for (int i = 0; i < ROW_VALUES; ++i) {
                const i64 j = lane + 32 * i;
                const bool in = j < p.cols;
                g[i] = in ? (A)up(dy[base + j]) * (weight ? (A)up(weight[j]) : A(1)) : A(0);
                xhat[i] = in ? ((A)up(x[base + j]) - mu) * inv : A(0);
                sg += g[i];
                sgx += g[i] * xhat[i];
            }
            const A mean_g = warp_all_sum(sg) / (A)p.cols, mean_gx = warp_all_sum(sgx) / (A)p.cols;
#pragma unroll
            for (int i = 0; i < ROW_VALUES; ++i) {
                const i64 j = lane + 32 * i;
                if (j < p.cols) dx[base + j] = down<T>(inv * (g[i] - mean_g - xhat[i] * mean_gx));
            }
        }
        return;
    }
    __shared__ A scratch[32];
    __shared__ A shared;
    for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const i64 base = r * p.cols;
        const A mu = mean[r], inv = rstd[r];
        A sg = A(0), sgx = A(0);
        for (i64 j = threadIdx.x; j < p.cols; j += blockDim.x) {
            const A g = (A)up(dy[base + j]) * (weight ? (A)up(weight[j]) : A(1));
            sg += g;
            sgx += g * ((A)up(x[base + j]) - mu) * inv;
        }
        const A mean_g = row_sum(sg, scratch, &shared) / (A)p.cols;
        const A mean_gx = row_sum(sgx, scratch, &shared) / (A)p.cols;
        for (i64 j = threadIdx.x; j < p.cols; j += blockDim.x) {
            const A g = (A)up(dy[base + j]) * (weight ? (A)up(weight[j]) : A(1));
            const A xhat = ((A)up(x[base + j]) - mu) * inv;
            dx[base + j] = down<T>(inv * (g - mean_g - xhat * mean_gx));
        }
    }
}

// Block (column tile bx, row chunk by): columns bx·blockDim + tid over rows of chunk by.
template <typename T>
__device__ void layer_norm_bwd_params(const T* dy, const T* x, const typename Acc<T>::type* mean,
                                      const typename Acc<T>::type* rstd, typename Acc<T>::type* dweight,
                                      typename Acc<T>::type* dbias, LayerNormParams p) {
    typedef typename Acc<T>::type A;
    const i64 col = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= p.cols) return;
    const i64 first = (i64)blockIdx.y * p.chunk;
    const i64 last = first + p.chunk < p.rows ? first + p.chunk : p.rows;
    A sw = A(0), sb = A(0);
    for (i64 r = first; r < last; ++r) {
        const A g = up(dy[r * p.cols + col]);
        sw += g * ((A)up(x[r * p.cols + col]) - mean[r]) * rstd[r];
        sb += g;
    }
    dweight[(i64)blockIdx.y * p.cols + col] = sw;
    dbias[(i64)blockIdx.y * p.cols + col] = sb;
}

#define LAYER_NORM(T, tname) \
    extern "C" __global__ void __launch_bounds__(LAYER_NORM_THREADS) layer_norm_fwd_##tname( \
        const T* x, const T* weight, const T* bias, T* y, Acc<T>::type* mean, Acc<T>::type* rstd, \
        LayerNormParams p) { \
        layer_norm_fwd<T>(x, weight, bias, y, mean, rstd, p); \
    } \
    extern "C" __global__ void __launch_bounds__(LAYER_NORM_THREADS) layer_norm_bwd_input_##tname( \
        const T* dy, const T* x, const T* weight, const Acc<T>::type* mean, const Acc<T>::type* rstd, T* dx, \
        LayerNormParams p) { \
        layer_norm_bwd_input<T>(dy, x, weight, mean, rstd, dx, p); \
    } \
    extern "C" __global__ void layer_norm_bwd_params_##tname(const T* dy, const T* x, const Acc<T>::type* mean, \
                                                            const Acc<T>::type* rstd, Acc<T>::type* dweight, \
                                                            Acc<T>::type* dbias, LayerNormParams p) { \
        layer_norm_bwd_params<T>(dy, x, mean, rstd, dweight, dbias, p); \
    }
LAYER_NORM(float, f32) LAYER_NORM(double, f64) LAYER_NORM(f16, f16) LAYER_NORM(bf16, bf16)
