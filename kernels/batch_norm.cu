// Batch normalisation over the channels of NCHW input, training and evaluation, forward and
// backward. With M = n·hw elements per channel, x̂ = (x - μ_c) / √(σ²_c + eps):
// - batch_norm_stats:       μ_c = Σ x / M, σ²_c = Σ (x - μ_c)² / M (biased; two passes over the
//                           channel, so no cancellation), one block per channel
// - batch_norm_apply:       y = x̂ γ_c + β_c, with the batch's or the running statistics
// - batch_norm_bwd_reduce:  Σ dy and Σ dy x̂ per channel, one block per channel
// - batch_norm_bwd_input:   dx = γ_c / √(σ²_c + eps) · (dy - Σ dy / M - x̂ Σ dy x̂ / M) in training,
//                           γ_c / √(σ²_c + eps) · dy with fixed (running) statistics
// (dγ = Σ dy x̂ and dβ = Σ dy are the two sums.) The per-channel reductions walk the channel's
// n planes of hw contiguous elements; everything is memory bound: the goal is DRAM bandwidth.
#include "nabla.cuh"

#define BATCH_NORM_THREADS 256

// Offset of channel c's element e = (image, position) of n x hw.
__device__ __forceinline__ i64 channel_at(const BatchNormParams& p, i64 c, i64 e) {
    return ((e / p.hw) * p.c + c) * p.hw + e % p.hw;
}

struct Add {
    template <typename A> __device__ A operator()(A a, A b) const { return a + b; }
};

template <typename T>
__device__ void batch_norm_stats(const T* x, T* mean, T* var, BatchNormParams p) {
    typedef typename Acc<T>::type A;
    __shared__ A scratch[32];
    __shared__ A shared_mean;
    const A count = (A)(p.n * p.hw);
    for (i64 c = blockIdx.x; c < p.c; c += gridDim.x) {
        A sum = A(0);
        for (i64 e = threadIdx.x; e < p.n * p.hw; e += blockDim.x) sum += up(x[channel_at(p, c, e)]);
        sum = block_reduce(sum, Add(), scratch, A(0));
        if (threadIdx.x == 0) shared_mean = sum / count;
        __syncthreads();
        const A mu = shared_mean;
        A squares = A(0);
        for (i64 e = threadIdx.x; e < p.n * p.hw; e += blockDim.x) {
            const A d = (A)up(x[channel_at(p, c, e)]) - mu;
            squares += d * d;
        }
        squares = block_reduce(squares, Add(), scratch, A(0));
        if (threadIdx.x == 0) {
            mean[c] = down<T>(mu);
            var[c] = down<T>(squares / count);
        }
        __syncthreads();  // shared_mean is rewritten for the next channel
    }
}

template <typename T>
__device__ void batch_norm_apply(const T* x, const T* mean, const T* var, const T* weight, const T* bias, T* y,
                                 BatchNormParams p) {
    typedef typename Acc<T>::type A;
    GRID_STRIDE_LOOP(i, p.n * p.c * p.hw) {
        const i64 c = (i / p.hw) % p.c;
        const A inv_std = A(1) / m_sqrt((A)up(var[c]) + (A)p.eps);
        const A xhat = ((A)up(x[i]) - (A)up(mean[c])) * inv_std;
        y[i] = down<T>(xhat * (A)up(weight[c]) + (A)up(bias[c]));
    }
}

template <typename T>
__device__ void batch_norm_bwd_reduce(const T* dy, const T* x, const T* mean, const T* var, T* sum_dy,
                                      T* sum_dy_xhat, BatchNormParams p) {
    typedef typename Acc<T>::type A;
    __shared__ A scratch[32];
    for (i64 c = blockIdx.x; c < p.c; c += gridDim.x) {
        const A mu = up(mean[c]), inv_std = A(1) / m_sqrt((A)up(var[c]) + (A)p.eps);
        A s = A(0), sx = A(0);
        for (i64 e = threadIdx.x; e < p.n * p.hw; e += blockDim.x) {
            const i64 at = channel_at(p, c, e);
            const A g = up(dy[at]);
            s += g;
            sx += g * ((A)up(x[at]) - mu) * inv_std;
        }
        s = block_reduce(s, Add(), scratch, A(0));
        if (threadIdx.x == 0) sum_dy[c] = down<T>(s);
        sx = block_reduce(sx, Add(), scratch, A(0));
        if (threadIdx.x == 0) sum_dy_xhat[c] = down<T>(sx);
    }
}

// `sum_dy` and `sum_dy_xhat` are null with fixed statistics (evaluation mode).
template <typename T>
__device__ void batch_norm_bwd_input(const T* dy, const T* x, const T* mean, const T* var, const T* weight,
                                     const T* sum_dy, const T* sum_dy_xhat, T* dx, BatchNormParams p) {
    typedef typename Acc<T>::type A;
    const A count = (A)(p.n * p.hw);
    GRID_STRIDE_LOOP(i, p.n * p.c * p.hw) {
        const i64 c = (i / p.hw) % p.c;
        const A inv_std = A(1) / m_sqrt((A)up(var[c]) + (A)p.eps);
        A g = up(dy[i]);
        if (sum_dy) {
            const A xhat = ((A)up(x[i]) - (A)up(mean[c])) * inv_std;
            g = g - (A)up(sum_dy[c]) / count - xhat * (A)up(sum_dy_xhat[c]) / count;
        }
        dx[i] = down<T>((A)up(weight[c]) * inv_std * g);
    }
}

#define BATCH_NORM(T, tname) \
    extern "C" __global__ void __launch_bounds__(BATCH_NORM_THREADS) \
        batch_norm_stats_##tname(const T* x, T* mean, T* var, BatchNormParams p) { \
        batch_norm_stats<T>(x, mean, var, p); \
    } \
    extern "C" __global__ void batch_norm_apply_##tname(const T* x, const T* mean, const T* var, const T* weight, \
                                                       const T* bias, T* y, BatchNormParams p) { \
        batch_norm_apply<T>(x, mean, var, weight, bias, y, p); \
    } \
    extern "C" __global__ void __launch_bounds__(BATCH_NORM_THREADS) batch_norm_bwd_reduce_##tname( \
        const T* dy, const T* x, const T* mean, const T* var, T* sum_dy, T* sum_dy_xhat, BatchNormParams p) { \
        batch_norm_bwd_reduce<T>(dy, x, mean, var, sum_dy, sum_dy_xhat, p); \
    } \
    extern "C" __global__ void batch_norm_bwd_input_##tname(const T* dy, const T* x, const T* mean, const T* var, \
                                                           const T* weight, const T* sum_dy, \
                                                           const T* sum_dy_xhat, T* dx, BatchNormParams p) { \
        batch_norm_bwd_input<T>(dy, x, mean, var, weight, sum_dy, sum_dy_xhat, dx, p); \
    }
BATCH_NORM(float, f32) BATCH_NORM(double, f64) BATCH_NORM(f16, f16) BATCH_NORM(bf16, bf16)
