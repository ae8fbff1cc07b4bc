// Indexing: index_select, gather and one_hot, and their adjoints index_add and scatter_add,
// with i64 indices.
//
// All operate on contiguous tensors viewed as [outer, dim, inner] around the indexed axis.
// One thread per output element in a grid-stride loop. An index outside [0, size) writes 0
// and raises `*bad`, which the host reads back and turns into an error naming the op.
// Memory bound (gathers are uncoalesced only as far as the indices scatter). The adds accumulate
// with atomics, so their summation order (and last bits) may vary run to run.
#include "nabla.cuh"

// out[o, j, i] = src[o, idx[j], i]
template <typename T>
__device__ void index_select(const T* src, const i64* idx, T* out, i64 outer, i64 src_dim, i64 n_idx, i64 inner,
                             int* bad) {
    const i64 n = outer * n_idx * inner;
    GRID_STRIDE_LOOP(e, n) {
        const i64 i = e % inner;
        const i64 j = (e / inner) % n_idx;
        const i64 o = e / (inner * n_idx);
        const i64 k = idx[j];
        if (k < 0 || k >= src_dim) {
            *bad = 1;
            out[e] = from_double<T>(0.0);
        } else {
            out[e] = src[(o * src_dim + k) * inner + i];
        }
    }
}

// out[o, j, i] = src[o, idx[o, j, i], i]; idx and out are [outer, idx_dim, inner].
template <typename T>
__device__ void gather(const T* src, const i64* idx, T* out, i64 outer, i64 src_dim, i64 idx_dim, i64 inner,
                       int* bad) {
    const i64 n = outer * idx_dim * inner;
    GRID_STRIDE_LOOP(e, n) {
        const i64 i = e % inner;
        const i64 o = e / (inner * idx_dim);
        const i64 k = idx[e];
        if (k < 0 || k >= src_dim) {
            *bad = 1;
            out[e] = from_double<T>(0.0);
        } else {
            out[e] = src[(o * src_dim + k) * inner + i];
        }
    }
}

// out[r, c] = (idx[r] == c) for r < rows, c < classes.
template <typename T>
__device__ void one_hot(const i64* idx, T* out, i64 rows, i64 classes, int* bad) {
    GRID_STRIDE_LOOP(e, rows * classes) {
        const i64 k = idx[e / classes];
        if (k < 0 || k >= classes) *bad = 1;
        out[e] = from_double<T>(k == e % classes ? 1.0 : 0.0);
    }
}

// Atomic accumulation for the scatter kernels (f16/bf16 scatter through an f32 buffer on the host side).
__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(i64* p, i64 v) {
    atomicAdd((unsigned long long*)p, (unsigned long long)v);  // two's complement: same bits
}

// out[o, idx[j], i] += src[o, j, i]; out is [outer, out_dim, inner], src [outer, n_idx, inner].
template <typename T>
__device__ void index_add(const T* src, const i64* idx, T* out, i64 outer, i64 out_dim, i64 n_idx, i64 inner,
                          int* bad) {
    GRID_STRIDE_LOOP(e, outer * n_idx * inner) {
        const i64 i = e % inner;
        const i64 j = (e / inner) % n_idx;
        const i64 o = e / (inner * n_idx);
        const i64 k = idx[j];
        if (k < 0 || k >= out_dim) {
            *bad = 1;
        } else {
            atomic_add(&out[(o * out_dim + k) * inner + i], src[e]);
        }
    }
}

// out[o, index[o, j, i], i] += src[o, j, i]; index and src are [outer, idx_dim, inner].
template <typename T>
__device__ void scatter_add(const T* src, const i64* idx, T* out, i64 outer, i64 out_dim, i64 idx_dim, i64 inner,
                            int* bad) {
    GRID_STRIDE_LOOP(e, outer * idx_dim * inner) {
        const i64 i = e % inner;
        const i64 o = e / (inner * idx_dim);
        const i64 k = idx[e];
        if (k < 0 || k >= out_dim) {
            *bad = 1;
        } else {
            atomic_add(&out[(o * out_dim + k) * inner + i], src[e]);
        }
    }
}

#define SCATTER(T, tname) \
    extern "C" __global__ void index_add_##tname(const T* src, const i64* idx, T* out, i64 outer, i64 out_dim, \
                                                 i64 n_idx, i64 inner, int* bad) { \
        index_add<T>(src, idx, out, outer, out_dim, n_idx, inner, bad); \
    } \
    extern "C" __global__ void scatter_add_##tname(const T* src, const i64* idx, T* out, i64 outer, i64 out_dim, \
                                                   i64 idx_dim, i64 inner, int* bad) { \
        scatter_add<T>(src, idx, out, outer, out_dim, idx_dim, inner, bad); \
    }
SCATTER(float, f32) SCATTER(double, f64) SCATTER(i64, i64)

#define INDEX(T, tname) \
    extern "C" __global__ void index_select_##tname(const T* src, const i64* idx, T* out, i64 outer, i64 src_dim, \
                                                    i64 n_idx, i64 inner, int* bad) { \
        index_select<T>(src, idx, out, outer, src_dim, n_idx, inner, bad); \
    } \
    extern "C" __global__ void gather_##tname(const T* src, const i64* idx, T* out, i64 outer, i64 src_dim, \
                                              i64 idx_dim, i64 inner, int* bad) { \
        gather<T>(src, idx, out, outer, src_dim, idx_dim, inner, bad); \
    } \
    extern "C" __global__ void one_hot_##tname(const i64* idx, T* out, i64 rows, i64 classes, int* bad) { \
        one_hot<T>(idx, out, rows, classes, bad); \
    }
INDEX(float, f32) INDEX(double, f64) INDEX(f16, f16) INDEX(bf16, bf16) INDEX(i64, i64)
