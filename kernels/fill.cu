// Constant fills, ranges and counter-based random masks: out[i] = value,
// out[i] = start + i * step, and the inverted-dropout mask out[i] = u(seed, i) < keep ? 1/keep : 0.
//
// One thread per element in a grid-stride loop; a pure write stream, memory bound. Values
// arrive as doubles and are converted once per element, exactly as the CPU reference does.
// u(seed, i) is SplitMix64 of seed + i * golden ratio, cut to 24 bits: the CPU reference
// computes the same bits, so a seed gives the same mask on every device.
#include "nabla.cuh"

__device__ __forceinline__ double counter_uniform(unsigned long long seed, i64 i) {
    unsigned long long z = seed + (unsigned long long)i * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 40) * (1.0 / 16777216.0);
}

#define FILL(T, tname) \
    extern "C" __global__ void dropout_mask_##tname(T* out, i64 n, double keep, unsigned long long seed) { \
        const T kept = from_double<T>(1.0 / keep), dropped = from_double<T>(0.0); \
        GRID_STRIDE_LOOP(i, n) { out[i] = counter_uniform(seed, i) < keep ? kept : dropped; } \
    } \
    extern "C" __global__ void fill_##tname(T* out, i64 n, double value) { \
        const T v = from_double<T>(value); \
        GRID_STRIDE_LOOP(i, n) { out[i] = v; } \
    } \
    extern "C" __global__ void arange_##tname(T* out, i64 n, double start, double step) { \
        GRID_STRIDE_LOOP(i, n) { out[i] = from_double<T>(start + (double)i * step); } \
    }
FILL(float, f32) FILL(double, f64) FILL(f16, f16) FILL(bf16, bf16) FILL(i64, i64)
