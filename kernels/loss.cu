// Fused softmax cross-entropy with integer class labels, forward and backward.
//
// Forward: one 256-thread block per row of the [rows, cols] logits: a block max, a block sum
// of exp(x - max), then lse = max + log(sum) and loss[r] = lse - x[r, label[r]] (NaN for a
// label outside [0, cols)). The row's lse is kept for the backward. Backward: one thread per
// logit, dx = (exp(x - lse) - 1[c == label]) * g * scale, where g is the loss gradient read
// from device memory (no host round trip) and scale is 1/rows for a mean. Memory bound: the
// forward reads the logits twice, the backward once.
#include "nabla.cuh"

#define LOSS_THREADS 256

struct MaxF {
    template <typename A> __device__ A operator()(A a, A b) const { return (is_nan(a) || a > b) ? a : b; }
};
struct SumF {
    template <typename A> __device__ A operator()(A a, A b) const { return a + b; }
};

template <typename T>
__device__ void cross_entropy_fwd(const T* x, const i64* labels, T* loss, typename Acc<T>::type* lse_out, i64 rows,
                                  i64 cols) {
    typedef typename Acc<T>::type A;
    __shared__ A scratch[32];
    __shared__ A shared_max;
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * cols;
        A mx = -(A)NABLA_INF;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) mx = MaxF()(mx, (A)up(xr[c]));
        mx = block_reduce(mx, MaxF(), scratch, -(A)NABLA_INF);
        if (threadIdx.x == 0) shared_max = mx;
        __syncthreads();
        mx = shared_max;
        A sum = A(0);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) sum += m_exp((A)up(xr[c]) - mx);
        sum = block_reduce(sum, SumF(), scratch, A(0));
        if (threadIdx.x == 0) {
            const A lse = mx + m_log(sum);
            const i64 label = labels[r];
            const bool valid = label >= 0 && label < cols;
            lse_out[r] = lse;
            loss[r] = down<T>(valid ? lse - (A)up(xr[label]) : (A)NABLA_NAN);
        }
        __syncthreads();  // shared_max is rewritten for the next row
    }
}

template <typename T>
__device__ void cross_entropy_bwd(const T* x, const i64* labels, const typename Acc<T>::type* lse, const T* g,
                                  T* dx, i64 rows, i64 cols, double scale) {
    typedef typename Acc<T>::type A;
    const A factor = (A)up(g[0]) * (A)scale;
    GRID_STRIDE_LOOP(e, rows * cols) {
        const i64 r = e / cols, c = e % cols;
        const A p = m_exp((A)up(x[e]) - lse[r]);
        dx[e] = down<T>((p - (labels[r] == c ? A(1) : A(0))) * factor);
    }
}

#define LOSS(T, tname) \
    extern "C" __global__ void __launch_bounds__(LOSS_THREADS) cross_entropy_fwd_##tname( \
        const T* x, const i64* labels, T* loss, Acc<T>::type* lse, i64 rows, i64 cols) { \
        cross_entropy_fwd<T>(x, labels, loss, lse, rows, cols); \
    } \
    extern "C" __global__ void cross_entropy_bwd_##tname(const T* x, const i64* labels, const Acc<T>::type* lse, \
                                                         const T* g, T* dx, i64 rows, i64 cols, double scale) { \
        cross_entropy_bwd<T>(x, labels, lse, g, dx, rows, cols, scale); \
    }
LOSS(float, f32) LOSS(double, f64) LOSS(f16, f16) LOSS(bf16, bf16)
