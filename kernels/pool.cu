// 2-D max, average and adaptive-average pooling over NCHW, forward and backward.
//
// Forward: one thread per output element scans its window (max keeps the first largest value
// and its index in the plane, NaN winning as in PyTorch; average divides by kh kw, counting
// padding, PyTorch's default). Backward: one thread per input element gathers from every
// output window that covers it (max: where the saved index is this element), so no atomics
// and a deterministic result. Memory bound: each input is read about (kh/sh)(kw/sw) times.
#include "nabla.cuh"

// Outputs o with o s - p <= i < o s - p + k, clipped to [0, n): [lo, hi).
__device__ __forceinline__ void covering(i64 i, i64 k, i64 s, i64 p, i64 n, i64* lo, i64* hi) {
    const i64 a = i + p - k + 1;
    *lo = a <= 0 ? 0 : (a + s - 1) / s;
    const i64 b = (i + p) / s + 1;
    *hi = b < n ? b : n;
}

__device__ __forceinline__ i64 adaptive_start(i64 o, i64 in, i64 out) { return (o * in) / out; }
__device__ __forceinline__ i64 adaptive_end(i64 o, i64 in, i64 out) { return ((o + 1) * in + out - 1) / out; }

template <typename T>
__device__ void max_pool_fwd(const T* x, T* y, i64* idx, PoolParams p) {
    typedef typename Acc<T>::type A;
    GRID_STRIDE_LOOP(e, p.n * p.c * p.oh * p.ow) {
        const i64 ox = e % p.ow, oy = (e / p.ow) % p.oh, plane = e / (p.oh * p.ow);
        const T* xp = x + plane * p.h * p.w;
        A best = -(A)NABLA_INF;
        i64 arg = -1;
        for (i64 ky = 0; ky < p.kh; ++ky) {
            const i64 iy = oy * p.sh - p.ph + ky;
            if (iy < 0 || iy >= p.h) continue;
            for (i64 kx = 0; kx < p.kw; ++kx) {
                const i64 ix = ox * p.sw - p.pw + kx;
                if (ix < 0 || ix >= p.w) continue;
                const A v = up(xp[iy * p.w + ix]);
                if (arg < 0 || (!is_nan(best) && (v > best || is_nan(v)))) {
                    best = v;
                    arg = iy * p.w + ix;
                }
            }
        }
        y[e] = down<T>(best);
        idx[e] = arg;
    }
}

template <typename T>
__device__ void avg_pool_fwd(const T* x, T* y, PoolParams p) {
    typedef typename Acc<T>::type A;
    GRID_STRIDE_LOOP(e, p.n * p.c * p.oh * p.ow) {
        const i64 ox = e % p.ow, oy = (e / p.ow) % p.oh, plane = e / (p.oh * p.ow);
        const T* xp = x + plane * p.h * p.w;
        A acc = A(0);
        for (i64 ky = 0; ky < p.kh; ++ky) {
            const i64 iy = oy * p.sh - p.ph + ky;
            if (iy < 0 || iy >= p.h) continue;
            for (i64 kx = 0; kx < p.kw; ++kx) {
                const i64 ix = ox * p.sw - p.pw + kx;
                if (ix >= 0 && ix < p.w) acc += up(xp[iy * p.w + ix]);
            }
        }
        y[e] = down<T>(acc / (A)(p.kh * p.kw));
    }
}

// The gradient of input e gathered from every output window that covers it: for max pooling
// where the saved index is e, for average pooling divided by the window size.
template <typename T, bool Max>
__device__ void window_pool_bwd(const T* dy, const i64* idx, T* dx, PoolParams p) {
    typedef typename Acc<T>::type A;
    GRID_STRIDE_LOOP(e, p.n * p.c * p.h * p.w) {
        const i64 ix = e % p.w, iy = (e / p.w) % p.h, plane = e / (p.h * p.w);
        i64 y0, y1, x0, x1;
        covering(iy, p.kh, p.sh, p.ph, p.oh, &y0, &y1);
        covering(ix, p.kw, p.sw, p.pw, p.ow, &x0, &x1);
        A acc = A(0);
        for (i64 oy = y0; oy < y1; ++oy)
            for (i64 ox = x0; ox < x1; ++ox) {
                const i64 o = (plane * p.oh + oy) * p.ow + ox;
                if (!Max || idx[o] == iy * p.w + ix) acc += up(dy[o]);
            }
        dx[e] = down<T>(Max ? acc : acc / (A)(p.kh * p.kw));
    }
}

template <typename T>
__device__ void adaptive_fwd(const T* x, T* y, PoolParams p) {
    typedef typename Acc<T>::type A;
    GRID_STRIDE_LOOP(e, p.n * p.c * p.oh * p.ow) {
        const i64 ox = e % p.ow, oy = (e / p.ow) % p.oh, plane = e / (p.oh * p.ow);
        const i64 y0 = adaptive_start(oy, p.h, p.oh), y1 = adaptive_end(oy, p.h, p.oh);
        const i64 x0 = adaptive_start(ox, p.w, p.ow), x1 = adaptive_end(ox, p.w, p.ow);
        const T* xp = x + plane * p.h * p.w;
        A acc = A(0);
        for (i64 iy = y0; iy < y1; ++iy)
            for (i64 ix = x0; ix < x1; ++ix) acc += up(xp[iy * p.w + ix]);
        y[e] = down<T>(acc / (A)((y1 - y0) * (x1 - x0)));
    }
}

template <typename T>
__device__ void adaptive_bwd(const T* dy, T* dx, PoolParams p) {
    typedef typename Acc<T>::type A;
    GRID_STRIDE_LOOP(e, p.n * p.c * p.h * p.w) {
        const i64 ix = e % p.w, iy = (e / p.w) % p.h, plane = e / (p.h * p.w);
        A acc = A(0);
        // Output windows overlap by at most one cell, so scanning from the first candidate suffices.
        for (i64 oy = (iy * p.oh) / p.h; oy < p.oh && adaptive_start(oy, p.h, p.oh) <= iy; ++oy) {
            const i64 y0 = adaptive_start(oy, p.h, p.oh), y1 = adaptive_end(oy, p.h, p.oh);
            if (iy < y0 || iy >= y1) continue;
            for (i64 ox = (ix * p.ow) / p.w; ox < p.ow && adaptive_start(ox, p.w, p.ow) <= ix; ++ox) {
                const i64 x0 = adaptive_start(ox, p.w, p.ow), x1 = adaptive_end(ox, p.w, p.ow);
                if (ix < x0 || ix >= x1) continue;
                acc += up(dy[(plane * p.oh + oy) * p.ow + ox]) / (A)((y1 - y0) * (x1 - x0));
            }
        }
        dx[e] = down<T>(acc);
    }
}

#define POOL(T, tname) \
    extern "C" __global__ void max_pool2d_fwd_##tname(const T* x, T* y, i64* idx, PoolParams p) { max_pool_fwd<T>(x, y, idx, p); } \
    extern "C" __global__ void max_pool2d_bwd_##tname(const T* dy, const i64* idx, T* dx, PoolParams p) { \
        window_pool_bwd<T, true>(dy, idx, dx, p); \
    } \
    extern "C" __global__ void avg_pool2d_fwd_##tname(const T* x, T* y, PoolParams p) { avg_pool_fwd<T>(x, y, p); } \
    extern "C" __global__ void avg_pool2d_bwd_##tname(const T* dy, T* dx, PoolParams p) { window_pool_bwd<T, false>(dy, nullptr, dx, p); } \
    extern "C" __global__ void adaptive_avg_pool2d_fwd_##tname(const T* x, T* y, PoolParams p) { adaptive_fwd<T>(x, y, p); } \
    extern "C" __global__ void adaptive_avg_pool2d_bwd_##tname(const T* dy, T* dx, PoolParams p) { adaptive_bwd<T>(dy, dx, p); }
POOL(float, f32) POOL(double, f64) POOL(f16, f16) POOL(bf16, bf16)
