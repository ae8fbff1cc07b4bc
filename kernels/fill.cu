// Constant fills and ranges: out[i] = value, out[i] = start + i * step.
//
// One thread per element in a grid-stride loop; a pure write stream, memory bound. Values
// arrive as doubles and are converted once per element, exactly as the CPU reference does.
#include "nabla.cuh"

#define FILL(T, tname) \
    extern "C" __global__ void fill_##tname(T* out, i64 n, double value) { \
        const T v = from_double<T>(value); \
        GRID_STRIDE_LOOP(i, n) { out[i] = v; } \
    } \
    extern "C" __global__ void arange_##tname(T* out, i64 n, double start, double step) { \
        GRID_STRIDE_LOOP(i, n) { out[i] = from_double<T>(start + (double)i * step); } \
    }
FILL(float, f32) FILL(double, f64) FILL(f16, f16) FILL(bf16, bf16) FILL(i64, i64)
