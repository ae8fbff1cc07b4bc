// Numerically stable softmax and log-softmax over the last axis of a contiguous [rows, cols]
// tensor (the host moves the axis last first).
//
// One block per row. Pass 1: each thread keeps a running (max, sum of exp(x - max)) over its
// strided share, rescaling the sum whenever the max grows (the "online softmax"), then the
// block merges the pairs. Pass 2 writes exp(x - max) / sum or x - max - log(sum). Two reads and
// one write per element: memory bound.
#include "nabla.cuh"

#define SOFTMAX_THREADS 256

template <typename A>
struct MaxSum {
    A max;
    A sum;
};

template <typename A>
__device__ __forceinline__ MaxSum<A> merge(MaxSum<A> a, MaxSum<A> b) {
    if (b.max == -(A)NABLA_INF) return a;  // b saw nothing (or only -inf)
    if (a.max == -(A)NABLA_INF) return b;
    MaxSum<A> r;
    r.max = a.max > b.max ? a.max : b.max;
    r.sum = a.sum * m_exp(a.max - r.max) + b.sum * m_exp(b.max - r.max);
    return r;
}

template <typename T, bool Log>
__device__ void softmax_rows(const T* x, T* y, i64 rows, i64 cols) {
    typedef typename Acc<T>::type A;
    __shared__ A smax[SOFTMAX_THREADS];
    __shared__ A ssum[SOFTMAX_THREADS];
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        MaxSum<A> acc;
        acc.max = -(A)NABLA_INF;
        acc.sum = A(0);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            const A v = up(xr[c]);
            if (is_nan(v)) { acc.max = v; acc.sum = v; continue; }
            MaxSum<A> one;
            one.max = v;
            one.sum = A(1);
            if (!is_nan(acc.max)) acc = merge(acc, one);
        }
        smax[threadIdx.x] = acc.max;
        ssum[threadIdx.x] = acc.sum;
        __syncthreads();
        for (int half = blockDim.x / 2; half > 0; half >>= 1) {
            if (threadIdx.x < half) {
                MaxSum<A> a, b;
                a.max = smax[threadIdx.x];
                a.sum = ssum[threadIdx.x];
                b.max = smax[threadIdx.x + half];
                b.sum = ssum[threadIdx.x + half];
                MaxSum<A> r = (is_nan(a.max) || is_nan(b.max)) ? (is_nan(a.max) ? a : b) : merge(a, b);
                smax[threadIdx.x] = r.max;
                ssum[threadIdx.x] = r.sum;
            }
            __syncthreads();
        }
        const A row_max = smax[0];
        const A row_sum = ssum[0];
        __syncthreads();  // smax/ssum are rewritten by the next row
        const A log_sum = m_log(row_sum);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            const A v = up(xr[c]);
            yr[c] = down<T>(Log ? v - row_max - log_sum : m_exp(v - row_max) / row_sum);
        }
    }
}

#define SOFTMAX(T, tname) \
    extern "C" __global__ void __launch_bounds__(SOFTMAX_THREADS) softmax_##tname(const T* x, T* y, i64 rows, i64 cols) { \
        softmax_rows<T, false>(x, y, rows, cols); \
    } \
    extern "C" __global__ void __launch_bounds__(SOFTMAX_THREADS) log_softmax_##tname(const T* x, T* y, i64 rows, i64 cols) { \
        softmax_rows<T, true>(x, y, rows, cols); \
    }
SOFTMAX(float, f32) SOFTMAX(double, f64) SOFTMAX(f16, f16) SOFTMAX(bf16, bf16)
