// 2-D convolution, NCHW, with stride, padding, dilation and groups: forward, backward to the
// input and backward to the weight, each an implicit GEMM on the engine of tiled_gemm.cuh
// (no im2col buffer: the loaders compute each patch element's address).
//
// Per group g (og = o / groups output and cg = c / groups input channels, K = cg kh kw):
// - forward:     Y[o, (n, y, x)]     = Σ_{(ci, ky, kx)} W[o, ci, ky, kx] · X[n, ci, y sh - ph + ky dh, x sw - pw + kx dw]
// - grad input:  dX[ci, (n, iy, ix)] = Σ_{(o, ky, kx)} W[o, ci, ky, kx] · dY[n, o, (iy + ph - ky dh) / sh, ...]
//                (terms whose division is inexact or lands outside the output are zero)
// - grad weight: dW[o, (ci, ky, kx)] = Σ_{(n, y, x)} dY[n, o, y, x] · X[n, ci, ...]
// Columns run over pixels (or the weight's contiguous K), so loads of X / dY and stores of
// Y / dX coalesce along x. Compute bound for large layers, like the GEMM it is.
#include "tiled_gemm.cuh"

// Index helpers over the params (all 64-bit).
struct ConvShape {
    Conv2dParams p;
    __device__ i64 og() const { return p.o / p.groups; }
    __device__ i64 cg() const { return p.c / p.groups; }
    __device__ i64 ksize() const { return cg() * p.kh * p.kw; }
    // Input element k = (ci, ky, kx) of output pixel m = (n, oy, ox)'s receptive field in group g,
    // zero in the padding.
    template <typename T>
    __device__ typename Acc<T>::type patch(const T* x, i64 g, i64 k, i64 m) const {
        typedef typename Acc<T>::type A;
        const i64 ci = k / (p.kh * p.kw), r = k % (p.kh * p.kw), ky = r / p.kw, kx = r % p.kw;
        const i64 n = m / (p.oh * p.ow), q = m % (p.oh * p.ow), oy = q / p.ow, ox = q % p.ow;
        const i64 iy = oy * p.sh - p.ph + ky * p.dh, ix = ox * p.sw - p.pw + kx * p.dw;
        if (iy < 0 || iy >= p.h || ix < 0 || ix >= p.w) return A(0);
        return (A)up(x[((n * p.c + g * cg() + ci) * p.h + iy) * p.w + ix]);
    }
};

template <typename T>
struct ConvForward : ConvShape {
    __device__ GroupOf<ConvForward<T>, typename Acc<T>::type> group(i64 g) const { return {*this, g}; }
    const T* x;
    const T* w;
    const T* bias;
    T* y;
    typedef typename Acc<T>::type A;
    __device__ i64 groups() const { return p.groups; }
    __device__ i64 rows() const { return og(); }
    __device__ i64 cols() const { return p.n * p.oh * p.ow; }
    __device__ i64 depth() const { return ksize(); }
    __device__ A a(i64 g, i64 o, i64 k) const { return (A)up(w[(g * og() + o) * ksize() + k]); }
    __device__ A b(i64 g, i64 k, i64 m) const { return patch(x, g, k, m); }
    __device__ void store(i64 g, i64 o, i64 m, A v) const {
        const i64 oc = g * og() + o;
        const i64 n = m / (p.oh * p.ow), q = m % (p.oh * p.ow);
        if (bias) v += (A)up(bias[oc]);
        y[(n * p.o + oc) * p.oh * p.ow + q] = down<T>(v);
    }
};

template <typename T>
struct ConvGradInput : ConvShape {
    __device__ GroupOf<ConvGradInput<T>, typename Acc<T>::type> group(i64 g) const { return {*this, g}; }
    const T* dy;
    const T* w;
    T* dx;
    typedef typename Acc<T>::type A;
    __device__ i64 groups() const { return p.groups; }
    __device__ i64 rows() const { return cg(); }
    __device__ i64 cols() const { return p.n * p.h * p.w; }
    __device__ i64 depth() const { return og() * p.kh * p.kw; }
    __device__ A a(i64 g, i64 ci, i64 k) const {
        const i64 o = k / (p.kh * p.kw), r = k % (p.kh * p.kw);
        return (A)up(w[((g * og() + o) * cg() + ci) * p.kh * p.kw + r]);
    }
    __device__ A b(i64 g, i64 k, i64 m) const {
        const i64 o = k / (p.kh * p.kw), r = k % (p.kh * p.kw), ky = r / p.kw, kx = r % p.kw;
        const i64 n = m / (p.h * p.w), q = m % (p.h * p.w), iy = q / p.w, ix = q % p.w;
        const i64 ty = iy + p.ph - ky * p.dh, tx = ix + p.pw - kx * p.dw;
        if (ty < 0 || tx < 0 || ty % p.sh != 0 || tx % p.sw != 0) return A(0);
        const i64 oy = ty / p.sh, ox = tx / p.sw;
        if (oy >= p.oh || ox >= p.ow) return A(0);
        return (A)up(dy[((n * p.o + g * og() + o) * p.oh + oy) * p.ow + ox]);
    }
    __device__ void store(i64 g, i64 ci, i64 m, A v) const {
        const i64 n = m / (p.h * p.w), q = m % (p.h * p.w);
        dx[(n * p.c + g * cg() + ci) * p.h * p.w + q] = down<T>(v);
    }
};

template <typename T>
struct ConvGradWeight : ConvShape {
    __device__ GroupOf<ConvGradWeight<T>, typename Acc<T>::type> group(i64 g) const { return {*this, g}; }
    const T* dy;
    const T* x;
    T* dw;
    typedef typename Acc<T>::type A;
    __device__ i64 groups() const { return p.groups; }
    __device__ i64 rows() const { return og(); }
    __device__ i64 cols() const { return ksize(); }
    __device__ i64 depth() const { return p.n * p.oh * p.ow; }
    __device__ A a(i64 g, i64 o, i64 m) const {
        const i64 n = m / (p.oh * p.ow), q = m % (p.oh * p.ow);
        return (A)up(dy[(n * p.o + g * og() + o) * p.oh * p.ow + q]);
    }
    __device__ A b(i64 g, i64 m, i64 k) const { return patch(x, g, k, m); }
    __device__ void store(i64 g, i64 o, i64 k, A v) const { dw[(g * og() + o) * ksize() + k] = down<T>(v); }
};

#define CONV(T, tname) \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS) \
        conv2d_fwd_##tname(const T* x, const T* w, const T* bias, T* y, Conv2dParams p) { \
        ConvForward<T> pb; \
        pb.p = p; pb.x = x; pb.w = w; pb.bias = bias; pb.y = y; \
        tiled_gemm<Acc<T>::type>(pb); \
    } \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS) \
        conv2d_bwd_input_##tname(const T* dy, const T* w, T* dx, Conv2dParams p) { \
        ConvGradInput<T> pb; \
        pb.p = p; pb.dy = dy; pb.w = w; pb.dx = dx; \
        tiled_gemm<Acc<T>::type>(pb); \
    } \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS) \
        conv2d_bwd_weight_##tname(const T* dy, const T* x, T* dw, Conv2dParams p) { \
        ConvGradWeight<T> pb; \
        pb.p = p; pb.dy = dy; pb.x = x; pb.dw = dw; \
        tiled_gemm<Acc<T>::type>(pb); \
    }
CONV(float, f32) CONV(double, f64) CONV(f16, f16) CONV(bf16, bf16)
