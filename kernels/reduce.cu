// Reductions: sum (mean = sum x scale), max, min over the trailing `inner` elements of each of
// `outer` rows, and argmax / argmin.
//
// The host permutes the reduced axes to the back (a view, no copy), so row r's elements are
// logical elements r*inner .. r*inner+inner of that view. One 256-thread block per (row, chunk):
// each thread accumulates a strided share in Acc<T>, then a shuffle-based block reduction.
// When there are few rows and long ones (a whole-tensor sum), each row is split into chunks
// whose partials land in an Acc<T> buffer and a second launch of the same kernel folds them,
// so every SM streams memory. Memory bound: the goal is DRAM bandwidth.
//
// Instantiations `reduce_<op>_<in>_<out>`: in -> out of the same type (one pass), T -> Acc<T>
// (first of two passes) and Acc<T> -> T (second pass, where `scale` applies).
#include "nabla.cuh"

#define REDUCE_THREADS 256

template <typename A> __device__ __forceinline__ A lowest();
template <> __device__ __forceinline__ float lowest<float>() { return -NABLA_INF; }
template <> __device__ __forceinline__ double lowest<double>() { return -(double)NABLA_INF; }
template <> __device__ __forceinline__ i64 lowest<i64>() { return (i64)(-0x7fffffffffffffffLL - 1); }
template <typename A> __device__ __forceinline__ A highest();
template <> __device__ __forceinline__ float highest<float>() { return NABLA_INF; }
template <> __device__ __forceinline__ double highest<double>() { return (double)NABLA_INF; }
template <> __device__ __forceinline__ i64 highest<i64>() { return 0x7fffffffffffffffLL; }

struct SumOp {
    template <typename A> __device__ static A identity() { return A(0); }
    template <typename A> __device__ A operator()(A a, A b) const { return a + b; }
    template <typename A> __device__ static A finish(A a, double scale) { return scale == 1.0 ? a : (A)(a * scale); }
};
struct MaxOp {
    template <typename A> __device__ static A identity() { return lowest<A>(); }
    template <typename A> __device__ A operator()(A a, A b) const { return (is_nan(a) || a > b) ? a : b; }
    template <typename A> __device__ static A finish(A a, double) { return a; }
};
struct MinOp {
    template <typename A> __device__ static A identity() { return highest<A>(); }
    template <typename A> __device__ A operator()(A a, A b) const { return (is_nan(a) || a < b) ? a : b; }
    template <typename A> __device__ static A finish(A a, double) { return a; }
};

template <typename TIn, typename TOut, typename Op>
__device__ void reduce_rows(const TIn* src, TOut* out, const ReduceParams& p) {
    typedef typename Acc<TOut>::type A;
    __shared__ A scratch[32];
    Op op;
    const i64 tasks = p.outer * p.splits;
    for (i64 task = blockIdx.x; task < tasks; task += gridDim.x) {
        const i64 row = task / p.splits, chunk = task % p.splits;
        const i64 begin = chunk * p.chunk;
        const i64 end = begin + p.chunk < p.inner ? begin + p.chunk : p.inner;
        A acc = Op::template identity<A>();
        for (i64 i = begin + threadIdx.x; i < end; i += blockDim.x) {
            acc = op(acc, (A)up(src[strided_offset(p.src, row * p.inner + i)]));
        }
        acc = block_reduce(acc, op, scratch, Op::template identity<A>());
        if (threadIdx.x == 0) out[task] = down<TOut>(Op::finish(acc, p.scale));
    }
}

#define REDUCE(name, Op, TIn, in_name, TOut, out_name) \
    extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) \
        reduce_##name##_##in_name##_##out_name(const TIn* src, TOut* out, ReduceParams p) { \
        reduce_rows<TIn, TOut, Op>(src, out, p); \
    }

#define REDUCE_OP(name, Op) \
    REDUCE(name, Op, float, f32, float, f32) \
    REDUCE(name, Op, double, f64, double, f64) \
    REDUCE(name, Op, i64, i64, i64, i64) \
    REDUCE(name, Op, f16, f16, f16, f16) \
    REDUCE(name, Op, f16, f16, float, f32) \
    REDUCE(name, Op, float, f32, f16, f16) \
    REDUCE(name, Op, bf16, bf16, bf16, bf16) \
    REDUCE(name, Op, bf16, bf16, float, f32) \
    REDUCE(name, Op, float, f32, bf16, bf16)

REDUCE_OP(sum, SumOp)
REDUCE_OP(max, MaxOp)
REDUCE_OP(min, MinOp)

// (value, index) pairs: the first occurrence wins ties and NaN beats every number, as in
// torch.argmax. `Greater` picks argmax, otherwise argmin.
template <typename A, bool Greater>
__device__ __forceinline__ bool first_wins(A va, i64 ia, A vb, i64 ib) {
    const bool na = is_nan(va), nb = is_nan(vb);
    if (na || nb) return na && (!nb || ia < ib);
    if (va == vb) return ia < ib;
    return Greater ? va > vb : va < vb;
}

template <typename T, bool Greater>
__device__ void arg_reduce_rows(const T* src, i64* out, const ReduceParams& p) {
    typedef typename Acc<T>::type A;
    __shared__ A best_v[REDUCE_THREADS];
    __shared__ i64 best_i[REDUCE_THREADS];
    for (i64 row = blockIdx.x; row < p.outer; row += gridDim.x) {
        A v = A(0);
        i64 idx = -1;  // -1: this thread saw nothing yet
        for (i64 i = threadIdx.x; i < p.inner; i += blockDim.x) {
            const A x = up(src[strided_offset(p.src, row * p.inner + i)]);
            if (idx < 0 || first_wins<A, Greater>(x, i, v, idx)) { v = x; idx = i; }
        }
        best_v[threadIdx.x] = v;
        best_i[threadIdx.x] = idx;
        __syncthreads();
        for (int half = blockDim.x / 2; half > 0; half >>= 1) {
            if (threadIdx.x < half) {
                const A ov = best_v[threadIdx.x + half];
                const i64 oi = best_i[threadIdx.x + half];
                const i64 mi = best_i[threadIdx.x];
                if (oi >= 0 && (mi < 0 || first_wins<A, Greater>(ov, oi, best_v[threadIdx.x], mi))) {
                    best_v[threadIdx.x] = ov;
                    best_i[threadIdx.x] = oi;
                }
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) out[row] = best_i[0];
        __syncthreads();
    }
}

#define ARG_REDUCE(T, tname) \
    extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) argmax_##tname(const T* src, i64* out, ReduceParams p) { \
        arg_reduce_rows<T, true>(src, out, p); \
    } \
    extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) argmin_##tname(const T* src, i64* out, ReduceParams p) { \
        arg_reduce_rows<T, false>(src, out, p); \
    }
ARG_REDUCE(float, f32) ARG_REDUCE(double, f64) ARG_REDUCE(f16, f16) ARG_REDUCE(bf16, bf16) ARG_REDUCE(i64, i64)

// Column sums of a dense row-major [rows, cols] matrix (a reduction over the leading dims, such
// as a bias gradient summed over a batch): out[c] = scale Σ_r x[offset + r cols + c]. A block of
// 256 threads owns 32 adjacent columns and `chunk` rows (blockIdx.y picks which): each warp
// reads 32 neighbouring elements of a row (one coalesced transaction), the 8 warps stride down
// the rows, and shared memory folds the 8 partial sums in a fixed order. With one chunk the
// block writes the finished sum; with several (a bias gradient over 16,384 tokens and 384
// columns is 12 blocks of columns, too few for a GPU's SMs) it writes its partial sum to row
// blockIdx.y of `out` [chunks, cols] in the accumulation type, and the fold kernel adds the
// chunks up in order. Memory bound, every load coalesced, deterministic.
template <typename T, typename O, bool Finish>
__device__ void reduce_cols(const T* x, O* out, i64 rows, i64 cols, i64 offset, double scale, i64 chunk) {
    typedef typename Acc<T>::type A;
    __shared__ A part[8][33];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const i64 c = (i64)blockIdx.x * 32 + lane;
    const i64 first = (i64)blockIdx.y * chunk, end = first + chunk < rows ? first + chunk : rows;
    A sum = A(0);
    if (c < cols)
        for (i64 r = first + warp; r < end; r += 8) sum += (A)up(x[offset + r * cols + c]);
    part[warp][lane] = sum;
    __syncthreads();
    if (warp == 0 && c < cols) {
        A total = A(0);
        for (int w = 0; w < 8; ++w) total += part[w][lane];
        if constexpr (Finish)
            out[c] = down<O>(SumOp::finish(total, scale));
        else
            out[(i64)blockIdx.y * cols + c] = total;
    }
}

// reduce_cols_sum_*: one chunk, T to T. reduce_cols_partial_*: T to its accumulation type, a
// row of partial sums per chunk. reduce_cols_fold_*: those partial rows to the finished T sums.
#define REDUCE_COLS(T, tname) \
    extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) reduce_cols_sum_##tname( \
        const T* x, T* out, i64 rows, i64 cols, i64 offset, double scale) { \
        reduce_cols<T, T, true>(x, out, rows, cols, offset, scale, rows); \
    } \
    extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) reduce_cols_partial_##tname( \
        const T* x, Acc<T>::type* out, i64 rows, i64 cols, i64 offset, i64 chunk) { \
        reduce_cols<T, Acc<T>::type, false>(x, out, rows, cols, offset, 1.0, chunk); \
    } \
    extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) reduce_cols_fold_##tname( \
        const Acc<T>::type* partial, T* out, i64 chunks, i64 cols, double scale) { \
        reduce_cols<Acc<T>::type, T, true>(partial, out, chunks, cols, 0, scale, chunks); \
    }
REDUCE_COLS(float, f32) REDUCE_COLS(double, f64) REDUCE_COLS(f16, f16) REDUCE_COLS(bf16, bf16) REDUCE_COLS(i64, i64)
