// Strided copy with dtype conversion: dst[strided i] = convert(src[strided i]).
//
// One operation serves `contiguous()` (same dtype, contiguous destination), `to_dtype` and
// concat/stack (the destination is a narrowed view of the output), in four kernels by what the
// host knows of the views: dense and aligned (Pack8 accesses, eight elements a thread), fewer
// than 2^31 elements in aligned runs of eight (unravelled once per eight, Pack8 accesses), fewer
// than 2^31 elements (both views unravelled in 32 bits by multiply and shift, their mergeable
// dims merged on the host), or any two views (64-bit division per dim). Memory bound: the dense
// kernel should run near the card's bandwidth (an H200's f32 add of 2^26 elements reaches
// 3.4 TB/s). Instantiations `cast_<src>_<dst>`, `cast_dense_<src>_<dst>`,
// `cast_gather8_<src>_<dst>` and `cast_gather_<src>_<dst>` for every dtype pair.
#include "nabla.cuh"

template <typename S, typename D>
__device__ __forceinline__ D convert(S x) { return from_double<D>(to_double(x)); }
template <> __device__ __forceinline__ float convert<float, float>(float x) { return x; }
template <> __device__ __forceinline__ double convert<double, double>(double x) { return x; }
template <> __device__ __forceinline__ i64 convert<i64, i64>(i64 x) { return x; }
template <> __device__ __forceinline__ f16 convert<f16, f16>(f16 x) { return x; }
template <> __device__ __forceinline__ bf16 convert<bf16, bf16>(bf16 x) { return x; }
template <> __device__ __forceinline__ float convert<i64, float>(i64 x) { return (float)x; }
template <> __device__ __forceinline__ f16 convert<i64, f16>(i64 x) { return float_to_f16((float)x); }
template <> __device__ __forceinline__ bf16 convert<i64, bf16>(i64 x) { return float_to_bf16((float)x); }

// Between f32 and the 16-bit types directly (the same rounding as through double, fewer
// instructions).
template <> __device__ __forceinline__ bf16 convert<float, bf16>(float x) { return float_to_bf16(x); }
template <> __device__ __forceinline__ f16 convert<float, f16>(float x) { return float_to_f16(x); }
template <> __device__ __forceinline__ float convert<bf16, float>(bf16 x) { return bf16_to_float(x); }
template <> __device__ __forceinline__ float convert<f16, float>(f16 x) { return f16_to_float(x); }

// Both views dense and starting 16-byte aligned (the host checks): eight elements a thread
// per step as Pack8 accesses, then the last n % 8 one by one. Memory bound.
template <typename S, typename D>
__device__ void cast_dense(const S* src, D* dst, i64 n) {
    const i64 packs = n / 8;
    GRID_STRIDE_LOOP(p, packs) {
        const Pack8<S> in = ((const Pack8<S>*)src)[p];
        Pack8<D> out;
#pragma unroll
        for (int j = 0; j < 8; ++j) out.v[j] = convert<S, D>(in.v[j]);
        ((Pack8<D>*)dst)[p] = out;
    }
    GRID_STRIDE_LOOP(i, n - packs * 8) dst[packs * 8 + i] = convert<S, D>(src[packs * 8 + i]);
}

// Views of fewer than 2^31 elements whose runs of 8 elements are contiguous and 16-byte aligned
// in both (the host checks: the innermost dim has stride 1 and a multiple of 8 elements, every
// other stride and the offset are multiples of 8), described in units of 8 elements: a head
// split or merge (a [B, T, H, D] view permuted to [B, H, T, D]) or a gradient written into a
// slice, moved as Pack8 accesses with one unravelling per eight elements. On an H200, session
// 13: the element-by-element gather moved such f32 views at 0.9-1.2 TB/s.
template <typename S, typename D>
__device__ void cast_gather8(const S* src, D* dst, i64 packs, const GatherLayout& ls, const GatherLayout& ld) {
    GRID_STRIDE_LOOP(p, packs) {
        const Pack8<S> in = ((const Pack8<S>*)src)[gather_offset(ls, (int)p)];
        Pack8<D> out;
#pragma unroll
        for (int j = 0; j < 8; ++j) out.v[j] = convert<S, D>(in.v[j]);
        ((Pack8<D>*)dst)[gather_offset(ld, (int)p)] = out;
    }
}

// `cast_*`: any two views. `cast_dense_*`: both dense and aligned, offsets in elements.
// `cast_gather_*`: views of fewer than 2^31 elements (a permuted tensor made contiguous, a
// gradient written into a slice), unravelled in 32 bits by multiply and shift.
// `cast_gather8_*`: the same in runs of eight (cast_gather8 above), `packs` = n / 8.
#define CAST(S, sname, D, dname) \
    extern "C" __global__ void cast_##sname##_##dname(const S* src, D* dst, i64 n, StridedLayout ls, StridedLayout ld) { \
        GRID_STRIDE_LOOP(i, n) { dst[strided_offset(ld, i)] = convert<S, D>(src[strided_offset(ls, i)]); } \
    } \
    extern "C" __global__ void cast_dense_##sname##_##dname(const S* src, D* dst, i64 n, i64 src_offset, \
                                                          i64 dst_offset) { \
        cast_dense<S, D>(src + src_offset, dst + dst_offset, n); \
    } \
    extern "C" __global__ void cast_gather_##sname##_##dname(const S* src, D* dst, i64 n, GatherLayout ls, \
                                                           GatherLayout ld) { \
        GRID_STRIDE_LOOP(i, n) { dst[gather_offset(ld, (int)i)] = convert<S, D>(src[gather_offset(ls, (int)i)]); } \
    } \
    extern "C" __global__ void cast_gather8_##sname##_##dname(const S* src, D* dst, i64 packs, GatherLayout ls, \
                                                            GatherLayout ld) { \
        cast_gather8<S, D>(src, dst, packs, ls, ld); \
    }
#define CAST_FROM(S, sname) \
    CAST(S, sname, float, f32) CAST(S, sname, double, f64) CAST(S, sname, f16, f16) CAST(S, sname, bf16, bf16) CAST(S, sname, i64, i64)
CAST_FROM(float, f32)
CAST_FROM(double, f64)
CAST_FROM(f16, f16)
CAST_FROM(bf16, bf16)
CAST_FROM(i64, i64)
