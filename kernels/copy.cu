// Strided copy with dtype conversion: dst[strided i] = convert(src[strided i]).
//
// One kernel serves `contiguous()` (same dtype, contiguous destination), `to_dtype` and
// concat/stack (the destination is a narrowed view of the output). One thread per element in a
// grid-stride loop; memory bound. Instantiations `cast_<src>_<dst>` for every dtype pair.
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

#define CAST(S, sname, D, dname) \
    extern "C" __global__ void cast_##sname##_##dname(const S* src, D* dst, i64 n, StridedLayout ls, StridedLayout ld) { \
        GRID_STRIDE_LOOP(i, n) { dst[strided_offset(ld, i)] = convert<S, D>(src[strided_offset(ls, i)]); } \
    }
#define CAST_FROM(S, sname) \
    CAST(S, sname, float, f32) CAST(S, sname, double, f64) CAST(S, sname, f16, f16) CAST(S, sname, bf16, bf16) CAST(S, sname, i64, i64)
CAST_FROM(float, f32)
CAST_FROM(double, f64)
CAST_FROM(f16, f16)
CAST_FROM(bf16, bf16)
CAST_FROM(i64, i64)
