// Indexing: index_select, gather and one_hot, and their adjoints index_add and scatter_add,
// with i64 indices.
//
// All operate on contiguous tensors viewed as [outer, dim, inner] around the indexed axis.
// One thread per output element in a grid-stride loop. An index outside [0, size) writes 0
// and raises `*bad`, which the host reads back and turns into an error naming the op.
// Memory bound (gathers are uncoalesced only as far as the indices scatter). The adds accumulate
// with atomics, so their summation order (and last bits) may vary run to run.
#include "nabla.cuh"

// The index of element e of an [outer, span, inner] index space: idx[j] for index_select and
// index_add (one index per slice, PerElement = false), idx[e] for gather and scatter_add.
template <bool PerElement>
__device__ __forceinline__ i64 index_of(const i64* idx, i64 e, i64 span, i64 inner) {
    return PerElement ? idx[e] : idx[(e / inner) % span];
}

// out[o, j, i] = src[o, k, i] with k = index_of(e) over out's [outer, span, inner].
template <typename T, bool PerElement>
__device__ void pick(const T* src, const i64* idx, T* out, i64 outer, i64 src_dim, i64 span, i64 inner, int* bad) {
    GRID_STRIDE_LOOP(e, outer * span * inner) {
        const i64 i = e % inner, o = e / (inner * span);
        const i64 k = index_of<PerElement>(idx, e, span, inner);
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

// out[o, k, i] += src[o, j, i] with k = index_of(e) over src's [outer, span, inner]: the adjoint
// of pick.
template <typename T, bool PerElement>
__device__ void scatter(const T* src, const i64* idx, T* out, i64 outer, i64 out_dim, i64 span, i64 inner, int* bad) {
    GRID_STRIDE_LOOP(e, outer * span * inner) {
        const i64 i = e % inner, o = e / (inner * span);
        const i64 k = index_of<PerElement>(idx, e, span, inner);
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
        scatter<T, false>(src, idx, out, outer, out_dim, n_idx, inner, bad); \
    } \
    extern "C" __global__ void scatter_add_##tname(const T* src, const i64* idx, T* out, i64 outer, i64 out_dim, \
                                                   i64 idx_dim, i64 inner, int* bad) { \
        scatter<T, true>(src, idx, out, outer, out_dim, idx_dim, inner, bad); \
    }
SCATTER(float, f32) SCATTER(double, f64) SCATTER(i64, i64)

#define INDEX(T, tname) \
    extern "C" __global__ void index_select_##tname(const T* src, const i64* idx, T* out, i64 outer, i64 src_dim, \
                                                    i64 n_idx, i64 inner, int* bad) { \
        pick<T, false>(src, idx, out, outer, src_dim, n_idx, inner, bad); \
    } \
    extern "C" __global__ void gather_##tname(const T* src, const i64* idx, T* out, i64 outer, i64 src_dim, \
                                              i64 idx_dim, i64 inner, int* bad) { \
        pick<T, true>(src, idx, out, outer, src_dim, idx_dim, inner, bad); \
    } \
    extern "C" __global__ void one_hot_##tname(const i64* idx, T* out, i64 rows, i64 classes, int* bad) { \
        one_hot<T>(idx, out, rows, classes, bad); \
    }
INDEX(float, f32) INDEX(double, f64) INDEX(f16, f16) INDEX(bf16, bf16) INDEX(i64, i64)
