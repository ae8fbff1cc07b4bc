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
// Y / dX coalesce along x. Compute bound for large layers, like the GEMM it is. The grad-weight
// GEMM is short and deep (o x cg kh kw outputs, n oh ow depth), so the host splits its depth
// over enough blocks to fill the card and adds the partial sums. Layers with few input channels
// per group take their grad input from a direct kernel instead (below ConvGradInput). With
// Conv2dParams::relu the forward clamps Y at zero as it stores it (conv2d_relu).
#include "tiled_gemm.cuh"
#include "mma_gemm.cuh"
#include "mma_pipeline.cuh"
#include "sgemm_v4.cuh"
#include "conv_loaders.cuh"

// Index helpers over the params. The host guarantees that every per-axis coordinate and the
// GEMM depths fit in 32 bits (n oh ow, n h w, cg kh kw and og kh kw below 2^31), so the inner
// loops decompose depth indices in 32 bits, dividing by multiply and shift (FastDiv); element
// offsets stay 64-bit.
struct ConvShape {
    // A reference to the kernel's __grid_constant__ parameter, read from the constant bank
    // where it is used rather than copied into registers.
    const Conv2dParams& p;
    __device__ i64 og() const { return p.o / p.groups; }
    __device__ i64 cg() const { return p.c / p.groups; }
    __device__ i64 ksize() const { return cg() * p.kh * p.kw; }
    __device__ int taps() const { return (int)(p.kh * p.kw); }
};

// An output pixel's receptive field: its image's group channels and its top-left input
// coordinate (which may lie in the padding).
template <typename T>
struct Field {
    const T* image;
    int iy0, ix0;
};

// Input element k = (ci, ky, kx) of a receptive field, zero in the padding. In 32 bits but
// for the channel's plane offset (h, w, and so iy w + ix, fit in 32 bits), the bounds as two
// unsigned compares and the load always made (in the channel's plane) and then selected: with 64-bit
// compares and an early return per element this loader took about 50 instructions an element,
// 60% of the forward's step (cuobjdump, sm_90).
template <typename T>
__device__ __forceinline__ typename Acc<T>::type field_at(const ConvShape& s, const Field<T>& f, int k) {
    typedef typename Acc<T>::type A;
    const int ci = fast_div(k, s.p.div_taps), r = k - ci * s.taps();
    const int ky = fast_div(r, s.p.div_kw), kx = r - ky * (int)s.p.kw;
    const int iy = f.iy0 + ky * (int)s.p.dh, ix = f.ix0 + kx * (int)s.p.dw;
    const int h = (int)s.p.h, w = (int)s.p.w;
    const bool inside = ((unsigned)iy < (unsigned)h) & ((unsigned)ix < (unsigned)w);
    const A v = (A)up(f.image[(i64)ci * (h * w) + (inside ? iy * w + ix : 0)]);  // in the plane either way
    return inside ? v : A(0);
}

// The receptive field of output pixel m = (n, oy, ox) in group g.
template <typename T>
__device__ __forceinline__ Field<T> field_of(const ConvShape& s, const T* x, i64 g, i64 m) {
    const int ohow = (int)(s.p.oh * s.p.ow), mi = (int)m, n = mi / ohow, q = mi - n * ohow;
    const int oy = q / (int)s.p.ow, ox = q - oy * (int)s.p.ow;
    Field<T> f;
    f.image = x + ((i64)n * s.p.c + g * s.cg()) * s.p.h * s.p.w;
    f.iy0 = oy * (int)s.p.sh - (int)s.p.ph;
    f.ix0 = ox * (int)s.p.sw - (int)s.p.pw;
    return f;
}

// Forward: rows are the group's output channels, columns output pixels, depth (ci, ky, kx).
template <typename T>
struct ConvForward : ConvShape {
    typedef typename Acc<T>::type A;
    typedef const T* ARow;
    typedef Field<T> BCol;
    const T* x;
    const T* w;
    const T* bias;
    T* y;
    __device__ GroupOf<ConvForward<T>, A> group(i64 g, i64) const { return {*this, g}; }
    __device__ i64 groups() const { return p.groups; }
    __device__ i64 splits() const { return 1; }
    __device__ i64 rows() const { return og(); }
    __device__ i64 cols() const { return p.n * p.oh * p.ow; }
    __device__ i64 depth() const { return ksize(); }
    __device__ ARow a_row(i64 g, i64 o) const { return w + (g * og() + o) * ksize(); }
    __device__ BCol b_col(i64 g, i64 m) const { return field_of(*this, x, g, m); }
    __device__ A a(ARow row, i64 k) const { return (A)up(row[k]); }
    __device__ A b(const BCol& f, i64 k) const { return field_at(*this, f, (int)k); }
    __device__ void store(i64 g, i64 o, i64 m, A v) const {
        const i64 oc = g * og() + o;
        const i64 n = m / (p.oh * p.ow), q = m % (p.oh * p.ow);
        if (bias) v += (A)up(bias[oc]);
        if (p.relu && v < (A)0) v = (A)0;
        y[(n * p.o + oc) * p.oh * p.ow + q] = down<T>(v);
    }
};

// An input pixel's view of the output gradient: its image's group channels and the output
// coordinate its (0, 0) tap would come from, before the stride division.
template <typename T>
struct Spread {
    const T* grad;
    int ty0, tx0;
};

// Grad input: rows are the group's input channels, columns input pixels, depth (o, ky, kx).
template <typename T>
struct ConvGradInput : ConvShape {
    typedef typename Acc<T>::type A;
    typedef const T* ARow;
    typedef Spread<T> BCol;
    const T* dy;
    const T* w;
    T* dx;
    __device__ GroupOf<ConvGradInput<T>, A> group(i64 g, i64) const { return {*this, g}; }
    __device__ i64 groups() const { return p.groups; }
    __device__ i64 splits() const { return 1; }
    __device__ i64 rows() const { return cg(); }
    __device__ i64 cols() const { return p.n * p.h * p.w; }
    __device__ i64 depth() const { return og() * p.kh * p.kw; }
    // W[g og + o, ci, r] = row[o cg taps + r]
    __device__ ARow a_row(i64 g, i64 ci) const { return w + (g * og() * cg() + ci) * p.kh * p.kw; }
    __device__ A a(ARow row, i64 k) const {
        const int taps = this->taps(), o = fast_div((int)k, p.div_taps), r = (int)k - o * taps;
        return (A)up(row[(i64)o * cg() * taps + r]);
    }
    __device__ BCol b_col(i64 g, i64 m) const {
        const int hw = (int)(p.h * p.w), mi = (int)m, n = mi / hw, q = mi - n * hw;
        const int iy = q / (int)p.w, ix = q - iy * (int)p.w;
        BCol s;
        s.grad = dy + ((i64)n * p.o + g * og()) * p.oh * p.ow;
        s.ty0 = iy + (int)p.ph;
        s.tx0 = ix + (int)p.pw;
        return s;
    }
    // As field_at: 32-bit arithmetic but for the channel's plane offset, the load always made
    // (in the channel's plane) and its value selected.
    __device__ A b(const BCol& s, i64 k) const {
        const int o = fast_div((int)k, p.div_taps), r = (int)k - o * taps();
        const int ky = fast_div(r, p.div_kw), kx = r - ky * (int)p.kw;
        const int ty = s.ty0 - ky * (int)p.dh, tx = s.tx0 - kx * (int)p.dw;
        const int oy = fast_div(ty > 0 ? ty : 0, p.div_sh), ox = fast_div(tx > 0 ? tx : 0, p.div_sw);
        const int oh = (int)p.oh, ow = (int)p.ow;
        const bool hit = (ty >= 0) & (tx >= 0) & (oy * (int)p.sh == ty) & (ox * (int)p.sw == tx) & (oy < oh) & (ox < ow);
        const A v = (A)up(s.grad[(i64)o * (oh * ow) + (hit ? oy * ow + ox : 0)]);
        return hit ? v : A(0);
    }
    __device__ void store(i64 g, i64 ci, i64 m, A v) const {
        const i64 n = m / (p.h * p.w), q = m % (p.h * p.w);
        dx[(n * p.c + g * cg() + ci) * p.h * p.w + q] = down<T>(v);
    }
};

// Grad input, direct: for layers with few input channels per group (a network's first layer
// reads 1-3), where the implicit GEMM above fills cg of its 64 tile rows and, at stride
// (sh, sw), spends all but 1 / (sh sw) of its depth on terms whose division is inexact (zeros).
// Each thread owns DIRECT_ROWS input pixels of one column, sh rows apart (so that they reach
// the same taps), and DIRECT_CHANNELS of their channels, and visits only the taps that reach an
// output pixel:
//   dX[n, ci, iy, ix] = Σ_{ky, kx: iy + ph - ky dh = oy sh, ix + pw - kx dw = ox sw, in range}
//                       Σ_o W[o, ci, ky, kx] · dY[n, o, oy, ox]
// A warp holds 32 columns of those rows whose columns share their residue modulo sw
// (ix = rx + sw j), so every lane takes the same taps: a tap's dY reads are, per row, 32
// consecutive elements, and its weights are one warp-uniform (broadcast) read of a
// DirectWeights quad, which the host packs as [groups, channel blocks, kh, kw, og] quads of
// DIRECT_CHANNELS channels (zero past cg), shared by the thread's rows. Row p of a thread lies at
// iy = ry + sh (DIRECT_ROWS rg + p); a tap that reaches row 0 at output row oy reaches row p at
// oy + p. Warps are numbered over (n, group, channel block, ry, row group rg, rx, run of 32
// along the row) in a grid-stride loop, in 64 bits. Work per pixel: og · cg · (reaching taps)
// multiply-adds; per tap and output channel a thread makes DIRECT_ROWS dY loads and one weight
// load for DIRECT_ROWS · DIRECT_CHANNELS multiply-adds: bound by the L1 load rate. (With one row
// a thread, two loads per four multiply-adds, AlexNet's first layer's grad input took 3.45 ms on
// an H200 under ncu at 73% of the L1's throughput.)
constexpr int DIRECT_CHANNELS = 4;
constexpr int DIRECT_ROWS = 4;

// One weight per channel of a channel block. The host's packed buffer starts at an allocation
// (256-byte aligned) and holds whole quads, so every quad is aligned to its size.
template <typename T>
struct alignas(DIRECT_CHANNELS * sizeof(T)) DirectWeights {
    T v[DIRECT_CHANNELS];
};

template <typename T>
__device__ void conv_grad_input_direct(const T* dy, const DirectWeights<T>* wq, T* dx, const Conv2dParams& p) {
    typedef typename Acc<T>::type A;
    const ConvShape s{p};
    const i64 og = s.og(), cg = s.cg(), ohow = p.oh * p.ow;
    const int taps = s.taps(), lane = (int)(threadIdx.x % 32), oh = (int)p.oh, sh = (int)p.sh;
    const i64 runs = ((p.w + p.sw - 1) / p.sw + 31) / 32;  // runs of 32 per residue class and row
    const i64 row_groups = ((p.h + p.sh - 1) / p.sh + DIRECT_ROWS - 1) / DIRECT_ROWS;  // per residue class
    const i64 blocks = (cg + DIRECT_CHANNELS - 1) / DIRECT_CHANNELS;
    const i64 warps = p.n * p.groups * blocks * p.sh * row_groups * p.sw * runs;
    const i64 warps_per_block = blockDim.x / 32;
    for (i64 wi = blockIdx.x * warps_per_block + threadIdx.x / 32; wi < warps; wi += gridDim.x * warps_per_block) {
        i64 r = wi;
        const i64 run = r % runs; r /= runs;
        const i64 rx = r % p.sw; r /= p.sw;
        const i64 rg = r % row_groups; r /= row_groups;
        const i64 ry = r % p.sh; r /= p.sh;
        const i64 block = r % blocks; r /= blocks;
        const i64 g = r % p.groups, n = r / p.groups;
        const int ix = (int)(rx + p.sw * (run * 32 + lane));
        const int iy0 = (int)(ry + p.sh * DIRECT_ROWS * rg);  // row 0's
        if (ix >= p.w || iy0 >= p.h) continue;
        // rows past the image: at most DIRECT_ROWS - 1 of them, in the last row group
        const int left = ((int)p.h - iy0 + sh - 1) / sh, rows = left < DIRECT_ROWS ? left : DIRECT_ROWS;
        const T* grad = dy + (n * p.o + g * og) * ohow;
        const DirectWeights<T>* wb = wq + (g * blocks + block) * taps * og;
        A acc[DIRECT_ROWS][DIRECT_CHANNELS];
#pragma unroll
        for (int q = 0; q < DIRECT_ROWS; ++q)
#pragma unroll
            for (int c = 0; c < DIRECT_CHANNELS; ++c) acc[q][c] = A(0);
        for (int ky = 0; ky < (int)p.kh; ++ky) {
            // Row q reads output row oy + q. Decided from the last row, whose ty is the largest,
            // so the division sees no negative value.
            const int ty_last = iy0 + sh * (DIRECT_ROWS - 1) + (int)p.ph - ky * (int)p.dh;
            if (ty_last < 0) break;  // ty only falls as ky grows
            const int oy_last = fast_div(ty_last, p.div_sh);
            if (oy_last * sh != ty_last) continue;
            const int oy = oy_last - (DIRECT_ROWS - 1);
            // bit q: row q lies in the image and reads an output row in range (warp-uniform)
            unsigned reach = 0;
#pragma unroll
            for (int q = 0; q < DIRECT_ROWS; ++q) reach |= (unsigned)(q < rows && oy + q >= 0 && oy + q < oh) << q;
            if (!reach) continue;
            for (int kx = 0; kx < (int)p.kw; ++kx) {
                const int tx = ix + (int)p.pw - kx * (int)p.dw;
                if (tx < 0) break;
                const int ox = fast_div(tx, p.div_sw);
                if (ox * (int)p.sw != tx || ox >= p.ow) continue;
                // Row q's dY at output channel 0, advanced a channel at a time; a row the tap does
                // not reach reads nothing (its load is predicated off, its value zero).
                const T* rows_dy[DIRECT_ROWS];
#pragma unroll
                for (int q = 0; q < DIRECT_ROWS; ++q) rows_dy[q] = grad + ((reach >> q & 1) ? (i64)(oy + q) * p.ow + ox : 0);
                const DirectWeights<T>* wp = wb + (ky * (int)p.kw + kx) * og;
#pragma unroll 2
                for (i64 o = 0; o < og; ++o) {
                    const DirectWeights<T> w = wp[o];
#pragma unroll
                    for (int q = 0; q < DIRECT_ROWS; ++q) {
                        A v = A(0);
                        if (reach >> q & 1) v = (A)up(*rows_dy[q]);
                        rows_dy[q] += ohow;
#pragma unroll
                        for (int c = 0; c < DIRECT_CHANNELS; ++c) acc[q][c] += v * (A)up(w.v[c]);
                    }
                }
            }
        }
        const i64 c0 = block * DIRECT_CHANNELS;
        // unrolled with guards, so acc stays in registers (loops to cg - c0 and rows would index it at run time)
#pragma unroll
        for (int q = 0; q < DIRECT_ROWS; ++q)
#pragma unroll
            for (int c = 0; c < DIRECT_CHANNELS; ++c)
                if (q < rows && c0 + c < cg)
                    dx[((n * p.c + g * cg + c0 + c) * p.h + iy0 + (i64)sh * q) * p.w + ix] = down<T>(acc[q][c]);
    }
}

#define CONV_DIRECT(T, suffix) \
    extern "C" __global__ void conv2d_bwd_input_direct_##suffix(const T* dy, const DirectWeights<T>* w, T* dx, \
                                                               const __grid_constant__ Conv2dParams p) { \
        conv_grad_input_direct<T>(dy, w, dx, p); \
    }
CONV_DIRECT(float, f32) CONV_DIRECT(double, f64) CONV_DIRECT(f16, f16) CONV_DIRECT(bf16, bf16)

// A weight tap (ci, ky, kx) seen from the output pixels: its input channel plane and the input
// coordinate it reads for output (0, 0).
template <typename T>
struct Tap {
    const T* plane;
    int dy0, dx0;
};

// Grad weight: rows are the group's output channels, columns (ci, ky, kx), depth the output
// pixels (n, oy, ox), usually long: split-K cuts it into p.splits ranges whose partial sums go
// to `partial` [splits, o, ksize] (in Acc<T>), which the host adds up; with one split the
// result goes straight to dw.
template <typename T>
struct ConvGradWeight : ConvShape {
    typedef typename Acc<T>::type A;
    typedef const T* ARow;
    typedef Tap<T> BCol;
    const T* dy;
    const T* x;
    T* dw;
    A* partial;
    struct View {
        const ConvGradWeight& c;
        i64 g, s;
        __device__ ARow a_row(i64 o) const { return c.dy + (g * c.og() + o) * c.p.oh * c.p.ow; }
        __device__ BCol b_col(i64 k) const {
            const int taps = c.taps(), ci = (int)k / taps, r = (int)k - ci * taps;
            const int ky = r / (int)c.p.kw, kx = r - ky * (int)c.p.kw;
            BCol t;
            t.plane = c.x + (g * c.cg() + ci) * c.p.h * c.p.w;
            t.dy0 = ky * (int)c.p.dh - (int)c.p.ph;
            t.dx0 = kx * (int)c.p.dw - (int)c.p.pw;
            return t;
        }
        // dY[n, g og + o, q] for output pixel m = (n, q)
        __device__ A a(ARow row, i64 m) const {
            const int ohow = (int)(c.p.oh * c.p.ow), n = fast_div((int)m, c.p.div_ohow), q = (int)m - n * ohow;
            return (A)up(row[(i64)n * c.p.o * ohow + q]);
        }
        // As field_at: the load always made (in the tap's plane of image n), its value selected.
        __device__ A b(const BCol& t, i64 m) const {
            const int ohow = (int)(c.p.oh * c.p.ow), n = fast_div((int)m, c.p.div_ohow), q = (int)m - n * ohow;
            const int oy = fast_div(q, c.p.div_ow), ox = q - oy * (int)c.p.ow;
            const int iy = oy * (int)c.p.sh + t.dy0, ix = ox * (int)c.p.sw + t.dx0;
            const int h = (int)c.p.h, w = (int)c.p.w;
            const bool inside = ((unsigned)iy < (unsigned)h) & ((unsigned)ix < (unsigned)w);
            const A v = (A)up(t.plane[(i64)n * c.p.c * (h * w) + (inside ? iy * w + ix : 0)]);
            return inside ? v : A(0);
        }
        __device__ void store(i64 o, i64 k, A v) const {
            const i64 at = (g * c.og() + o) * c.ksize() + k;
            if (c.p.splits > 1) {
                c.partial[s * c.p.o * c.ksize() + at] = v;
            } else {
                c.dw[at] = down<T>(v);
            }
        }
    };
    __device__ View group(i64 g, i64 s) const { return {*this, g, s}; }
    __device__ i64 groups() const { return p.groups; }
    __device__ i64 splits() const { return p.splits; }
    __device__ i64 rows() const { return og(); }
    __device__ i64 cols() const { return ksize(); }
    __device__ i64 depth() const { return p.n * p.oh * p.ow; }
};

#define CONV(T, suffix, bm, bn, min_blocks) \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, min_blocks) \
        conv2d_fwd_##suffix(const T* x, const T* w, const T* bias, T* y, const __grid_constant__ Conv2dParams p) { \
        const ConvForward<T> pb{{p}, x, w, bias, y}; \
        tiled_gemm<Acc<T>::type, bm, bn>(pb); \
    } \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, min_blocks) \
        conv2d_bwd_input_##suffix(const T* dy, const T* w, T* dx, const __grid_constant__ Conv2dParams p) { \
        const ConvGradInput<T> pb{{p}, dy, w, dx}; \
        tiled_gemm<Acc<T>::type, bm, bn>(pb); \
    } \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, min_blocks) \
        conv2d_bwd_weight_##suffix(const T* dy, const T* x, T* dw, Acc<T>::type* partial, \
                                   const __grid_constant__ Conv2dParams p) { \
        const ConvGradWeight<T> pb{{p}, dy, x, dw, partial}; \
        tiled_gemm<Acc<T>::type, bm, bn>(pb); \
    }
GEMM_INSTANTIATE(CONV, float, f32, 1, 2) GEMM_INSTANTIATE(CONV, double, f64, 1, 1)
GEMM_INSTANTIATE(CONV, f16, f16, 1, 2) GEMM_INSTANTIATE(CONV, bf16, bf16, 1, 2)

// The same three problems on the tensor cores (mma_gemm.cuh), for f16/bf16 on sm_80+.
#define CONV_TC(T, suffix, bm, bn, min_blocks) \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, min_blocks) \
        conv2d_fwd_tc_##suffix(const T* x, const T* w, const T* bias, T* y, const __grid_constant__ Conv2dParams p) { \
        const ConvForward<T> pb{{p}, x, w, bias, y}; \
        mma_gemm<T, bm, bn>(pb); \
    } \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, min_blocks) \
        conv2d_bwd_input_tc_##suffix(const T* dy, const T* w, T* dx, const __grid_constant__ Conv2dParams p) { \
        const ConvGradInput<T> pb{{p}, dy, w, dx}; \
        mma_gemm<T, bm, bn>(pb); \
    } \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, min_blocks) \
        conv2d_bwd_weight_tc_##suffix(const T* dy, const T* x, T* dw, Acc<T>::type* partial, \
                                      const __grid_constant__ Conv2dParams p) { \
        const ConvGradWeight<T> pb{{p}, dy, x, dw, partial}; \
        mma_gemm<T, bm, bn>(pb); \
    }
GEMM_INSTANTIATE(CONV_TC, f16, f16, 1, 2) GEMM_INSTANTIATE(CONV_TC, bf16, bf16, 1, 2)
GEMM_INSTANTIATE(CONV_TC, float, f32, 1, 2)  // as TF32, when set_float32_matmul_precision allows

// Forward on the tensor-core pipeline (version 2, f16/bf16; mma_pipeline.cuh), channels last.
// The loaders above gather one element at a time (1-3% of their loop is HMMA in the sm_90
// SASS); here both operands move in 16-byte cp.async chunks of 8 channels, which needs the
// channels of a tap contiguous: the host passes X as NHWC and W as [o, kh, kw, cg] (copies of
// the NCHW tensors), so the depth runs over (ky, kx, ci) and a chunk never straddles a tap when
// cg is a multiple of 8 (the host's condition). W's rows are then a plain k-major matrix; a
// pixel's row of the implicit patch matrix is, per tap, cg contiguous channels of one input
// pixel, or zeros in the padding. Y is stored NCHW through ConvForward::store. f32 layers run
// on the same pipeline on the TF32 tensor cores (chunks of 4 channels, cg a multiple of 4):
// rounded to TF32, or in 3xTF32 at f32's accuracy (mma_pipeline.cuh's Tf32, Tf32x3). Bound: the
// tensor pipes for large layers, like the GEMM.

// The forward as for_each_tile's problem: ConvForward's shape, and a view per group that stores
// Y (NCHW, with the bias) in 32-bit index arithmetic (the host keeps n oh ow below 2^31; a
// 64-bit division per element, a call, made ptxas spill the whole kernel).
template <typename T>
struct ConvForwardPipe : ConvForward<T> {
    struct View {
        const ConvForwardPipe& f;
        i64 first_channel;  // the group's first output channel
        int g;
        __device__ void store(i64 o, i64 m, float v) const {
            const Conv2dParams& p = f.p;
            const int ohow = (int)(p.oh * p.ow), n = fast_div((int)m, p.div_ohow), q = (int)m - n * ohow;
            const i64 oc = first_channel + o;
            if (f.bias) v += up(f.bias[oc]);
            if (p.relu && v < 0.f) v = 0.f;
            f.y[((i64)n * p.o + oc) * ohow + q] = down<T>(v);
        }
    };
    __device__ View group(i64 g, i64) const { return {*this, g * (i64)((int)this->p.o / (int)this->p.groups), (int)g}; }
};

// The forward on mma_pipeline for one block: operands of type T multiplied as M (T itself for
// 16-bit values; Tf32 or Tf32x3 for f32), BK values deep a stage, in static or dynamic shared
// memory, SLICES slices a turn.
template <typename T, typename M, int BK, bool DYNAMIC, int SLICES>
__device__ void conv_forward_pipelined(const T* x_nhwc, const T* w_ohwc, const T* bias, T* y, const Conv2dParams& p) {
    typedef PipeOperand<true, BK, typename PipeMath<M>::Stored> Op;
    typedef typename Op::template Loader<T> WeightLoader;
    typedef ConvPatchLoader<T, BK, Op> PatchLoader;
    const ConvForwardPipe<T> pb{{{p}, x_nhwc, w_ohwc, bias, y}};
    const int og = (int)p.o / (int)p.groups, cg = (int)p.c / (int)p.groups;
    const i64 ksize = (i64)cg * p.kh * p.kw, cols = p.n * p.oh * p.ow;
    // (NVRTC takes a generic lambda's call operator for a host function: the view's type is spelled)
    typedef typename ConvForwardPipe<T>::View View;
    mma_pipeline<M, BK, DYNAMIC, Op, Op, SLICES>(pb, [&](const View& q, i64 row0, i64 col0, i64 k_begin) {
        return PipeLoaders<WeightLoader, PatchLoader>{WeightLoader(w_ohwc + q.first_channel * ksize, ksize, row0, og, k_begin),
                                                      PatchLoader(p, x_nhwc + q.g * cg, col0, cols, k_begin)};
    });
}

// The f32 forward on the FMA pipes' cp.async pipeline (version 4 of the f32 GEMM, sgemm_v4.cuh),
// with the same channels-last operands in 4-channel chunks (cg a multiple of 4, the host's
// condition): W's rows by the GEMM's own k-major loader, the patch rows by ConvPatchLoader in that
// pipeline's layout. 80 KiB of dynamic shared memory; sm_80+. Bound: the FP32 pipes.
extern "C" __global__ void __launch_bounds__(SGEMM2_THREADS, 2) conv2d_fwd_v2_f32(
    const float* x_nhwc, const float* w_ohwc, const float* bias, float* y, const __grid_constant__ Conv2dParams p) {
    typedef Sgemm4Operand<true, 64> OpW;
    typedef Sgemm4Operand<true, 32> OpX;
    typedef OpW::Loader WeightLoader;
    typedef ConvPatchLoader<float, SGEMM2_BK, OpX> PatchLoader;
    const ConvForwardPipe<float> pb{{{p}, x_nhwc, w_ohwc, bias, y}};
    const int og = (int)p.o / (int)p.groups, cg = (int)p.c / (int)p.groups;
    const i64 ksize = (i64)cg * p.kh * p.kw, cols = p.n * p.oh * p.ow;
    typedef ConvForwardPipe<float>::View View;
    fma_pipeline<OpW, OpX>(pb, [&](const View& q, i64 row0, i64 col0, i64 k_begin) {
        return PipeLoaders<WeightLoader, PatchLoader>{WeightLoader(w_ohwc + q.first_channel * ksize, ksize, row0, og, k_begin),
                                                      PatchLoader(p, x_nhwc + q.g * cg, col0, cols, k_begin)};
    });
}

// The weight gradient on the same pipeline (version 2): dW[o, (ky, kx, ci)] = Σ_m dY[o, m]
// P[m, (ky, kx, ci)] per group, rows the group's output channels, columns the taps' channels
// (ky, kx, ci), depth the output pixels m = (n, oy, ox). A channel's pixels of one image are
// contiguous in dY (NCHW), so where oh ow is a multiple of 8 its rows are a k-major operand in
// 16-byte chunks read in place; elsewhere a chunk would straddle two images and lose its
// alignment, and the host packs dY as [o, n oh ow] instead, each row zero-padded to a whole
// chunk (the `packed` kernels). The patch matrix's rows, per pixel, are runs of cg channels of X
// (NHWC): an mn-major operand whose 16-byte chunks are 8 channels of one tap. dW comes out as
// [o, kh, kw, cg] (the host puts it back as [o, cg, kh, kw]), or as split partial sums. f32
// layers as the forward's: chunks of 4 values, as TF32 or 3xTF32.

// The weight gradient as for_each_tile's problem: ConvGradWeight's shape and splits, and a view
// that stores dW as [o, kh, kw, cg] (or the split's partial sums in that order).
template <typename T>
struct ConvGradWeightPipe : ConvGradWeight<T> {
    struct View {
        const ConvGradWeightPipe& f;
        i64 first_channel, split;
        int g;
        __device__ void store(i64 o, i64 k, float v) const {
            const i64 ksize = (i64)((int)f.p.c / (int)f.p.groups) * f.p.kh * f.p.kw;
            const i64 at = (first_channel + o) * ksize + k;
            if (f.p.splits > 1) {
                f.partial[split * f.p.o * ksize + at] = v;
            } else {
                f.dw[at] = down<T>(v);
            }
        }
    };
    __device__ View group(i64 g, i64 s) const {
        return {*this, g * (i64)((int)this->p.o / (int)this->p.groups), s, (int)g};
    }
};

// The loader of dY's rows (k-major: a row per output channel, the depth its pixels m = (n, oy,
// ox)) for Op's stages: dY in place (NCHW; PACKED false), where an output plane holds a whole
// number of chunks, else a packed copy [o, n oh ow rounded up to a chunk] (PACKED true; zeros
// past n oh ow), whose rows are a plain k-major matrix with Loader's chunks (Op's loader: a
// template over the element for PipeOperand, f32's own for Sgemm4Operand).
template <typename T, int BK, typename Op, typename OpLoader, bool PACKED>
struct ConvGradRows;
template <typename T, int BK, typename Op, typename OpLoader>
struct ConvGradRows<T, BK, Op, OpLoader, false> {
    typedef ConvGradRowsLoader<T, BK, Op> Loader;
    // elements from one channel's row to the next's: an image's plane
    __device__ static i64 stride(const Conv2dParams& p) { return p.oh * p.ow; }
    __device__ static Loader make(const Conv2dParams& p, const T* dy, i64 stride, i64 first_channel, i64 row0,
                                  i64 og, i64 k_begin) {
        return Loader(p, dy + first_channel * stride, row0, og, k_begin);
    }
};
template <typename T, int BK, typename Op, typename OpLoader>
struct ConvGradRows<T, BK, Op, OpLoader, true> {
    typedef OpLoader Loader;
    // elements from one channel's row to the next's: n oh ow rounded up to a chunk
    __device__ static i64 stride(const Conv2dParams& p) {
        return (p.n * p.oh * p.ow + Op::CHUNK - 1) / Op::CHUNK * Op::CHUNK;
    }
    __device__ static Loader make(const Conv2dParams&, const T* dy, i64 stride, i64 first_channel, i64 row0, i64 og,
                                  i64 k_begin) {
        return Loader(dy + first_channel * stride, stride, row0, og, k_begin);
    }
};

// The weight gradient on mma_pipeline for one block, as conv_forward_pipelined, dY in place or
// packed (ConvGradRows).
template <typename T, typename M, int BK, bool DYNAMIC, bool PACKED>
__device__ void conv_grad_weight_pipelined(const T* dy, const T* x_nhwc, T* dw_ohwc, float* partial,
                                           const Conv2dParams& p) {
    typedef typename PipeMath<M>::Stored S;
    typedef PipeOperand<true, BK, S> RowsOp;
    typedef PipeOperand<false, BK, S> ColumnsOp;
    typedef ConvGradRows<T, BK, RowsOp, typename RowsOp::template Loader<T>, PACKED> Rows;
    typedef ConvPatchColumnsLoader<T, BK, ColumnsOp> ColumnsLoader;
    const ConvGradWeightPipe<T> pb{{{p}, dy, x_nhwc, dw_ohwc, partial}};
    typedef typename ConvGradWeightPipe<T>::View View;
    const int og = (int)p.o / (int)p.groups, cg = (int)p.c / (int)p.groups;
    const i64 ksize = (i64)cg * p.kh * p.kw, stride = Rows::stride(p);
    mma_pipeline<M, BK, DYNAMIC, RowsOp, ColumnsOp>(pb, [&](const View& q, i64 row0, i64 col0, i64 k_begin) {
        return PipeLoaders<typename Rows::Loader, ColumnsLoader>{Rows::make(p, dy, stride, q.first_channel, row0, og, k_begin),
                                                                 ColumnsLoader(p, x_nhwc + q.g * cg, col0, ksize, k_begin)};
    });
}

// Both pipelined passes of one version: V names the kernels (conv2d_fwd_V_tname,
// conv2d_bwd_weight_V_tname, and conv2d_bwd_weight_packed_V_tname over a packed copy of dY), M
// the product (see conv_forward_pipelined), BK and DYNAMIC the stages.
// - v2, f16/bf16: 32 deep, 48 KiB of static shared memory.
// - tf32_v2, f32 rounded to TF32 (set_float32_matmul_precision "high" with tensor-core
//   convolution version 2): 16 f32 values deep, 51 KiB of dynamic shared memory
//   (cuda::gemm::f32_pipe_shared_bytes).
// - v3, f32 in 3xTF32 (version 3 of the f32 convolution): the same stages, f32's accuracy.
// The 3xTF32 forward takes one slice a turn (fwd_slices): with two, ptxas spills in its main
// loop (12 local loads a stage, sm_90). The other kernels take two: with one, the weight
// gradients spill, and the TF32 forward issues 243 instructions a stage instead of 216.
#define CONV_PIPE(V, T, M, tname, bk, dynamic, fwd_slices) \
    extern "C" __global__ void __launch_bounds__(PIPE_THREADS, PIPE_BLOCKS_PER_SM) conv2d_fwd_##V##_##tname( \
        const T* x_nhwc, const T* w_ohwc, const T* bias, T* y, const __grid_constant__ Conv2dParams p) { \
        conv_forward_pipelined<T, M, bk, dynamic, fwd_slices>(x_nhwc, w_ohwc, bias, y, p); \
    } \
    extern "C" __global__ void __launch_bounds__(PIPE_THREADS, PIPE_BLOCKS_PER_SM) conv2d_bwd_weight_##V##_##tname( \
        const T* dy, const T* x_nhwc, T* dw_ohwc, float* partial, const __grid_constant__ Conv2dParams p) { \
        conv_grad_weight_pipelined<T, M, bk, dynamic, false>(dy, x_nhwc, dw_ohwc, partial, p); \
    } \
    extern "C" __global__ void __launch_bounds__(PIPE_THREADS, PIPE_BLOCKS_PER_SM) \
        conv2d_bwd_weight_packed_##V##_##tname(const T* dy_packed, const T* x_nhwc, T* dw_ohwc, float* partial, \
                                               const __grid_constant__ Conv2dParams p) { \
        conv_grad_weight_pipelined<T, M, bk, dynamic, true>(dy_packed, x_nhwc, dw_ohwc, partial, p); \
    }
CONV_PIPE(v2, f16, f16, f16, PIPE_V2_BK, false, 2) CONV_PIPE(v2, bf16, bf16, bf16, PIPE_V2_BK, false, 2)
CONV_PIPE(tf32_v2, float, Tf32, f32, PIPE_V2_BK / 2, true, 2) CONV_PIPE(v3, float, Tf32x3, f32, PIPE_V2_BK / 2, true, 1)

// The f32 weight gradient on the FMA pipes' cp.async pipeline (sgemm_v4.cuh), with the same
// loaders in 4-value chunks: dY's rows k-major (in place where oh ow is a multiple of 4, else
// packed: ConvGradRows), the patch matrix's rows mn-major (cg a multiple of 4). 80 KiB of dynamic
// shared memory; sm_80+.
template <bool PACKED>
__device__ void conv_grad_weight_fma(const float* dy, const float* x_nhwc, float* dw_ohwc, float* partial,
                                     const Conv2dParams& p) {
    typedef Sgemm4Operand<true, 64> RowsOp;
    typedef Sgemm4Operand<false, 32> ColumnsOp;
    typedef ConvGradRows<float, SGEMM2_BK, RowsOp, RowsOp::Loader, PACKED> Rows;
    typedef ConvPatchColumnsLoader<float, SGEMM2_BK, ColumnsOp> ColumnsLoader;
    const ConvGradWeightPipe<float> pb{{{p}, dy, x_nhwc, dw_ohwc, partial}};
    typedef ConvGradWeightPipe<float>::View View;
    const int og = (int)p.o / (int)p.groups, cg = (int)p.c / (int)p.groups;
    const i64 ksize = (i64)cg * p.kh * p.kw, stride = Rows::stride(p);
    fma_pipeline<RowsOp, ColumnsOp>(pb, [&](const View& q, i64 row0, i64 col0, i64 k_begin) {
        return PipeLoaders<typename Rows::Loader, ColumnsLoader>{Rows::make(p, dy, stride, q.first_channel, row0, og, k_begin),
                                                                 ColumnsLoader(p, x_nhwc + q.g * cg, col0, ksize, k_begin)};
    });
}
extern "C" __global__ void __launch_bounds__(SGEMM2_THREADS, 2) conv2d_bwd_weight_v2_f32(
    const float* dy, const float* x_nhwc, float* dw_ohwc, float* partial, const __grid_constant__ Conv2dParams p) {
    conv_grad_weight_fma<false>(dy, x_nhwc, dw_ohwc, partial, p);
}
extern "C" __global__ void __launch_bounds__(SGEMM2_THREADS, 2) conv2d_bwd_weight_packed_v2_f32(
    const float* dy_packed, const float* x_nhwc, float* dw_ohwc, float* partial, const __grid_constant__ Conv2dParams p) {
    conv_grad_weight_fma<true>(dy_packed, x_nhwc, dw_ohwc, partial, p);
}
