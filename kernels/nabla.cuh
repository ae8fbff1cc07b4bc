// Shared helpers for every nabla kernel.
//
// The kernels need no CUDA headers at all: libnvrtc alone compiles them. Half-precision types
// are our own 16-bit structs converted with PTX `cvt` (f16) and bit arithmetic (bf16, exact
// upward; round-to-nearest-even downward), so a user's machine needs no CUDA toolkit.
//
// Conventions:
// - `Acc<T>::type` is the type arithmetic happens in: float for f16/bf16, T otherwise.
// - `up(x)` converts a stored T to its Acc type, `down<T>(a)` converts back.
// - Element loops are grid-stride loops over 64-bit indices, so tensors past 2^31 elements work.
#pragma once
#include "params.h"

typedef long long i64;

struct f16 { unsigned short bits; };
struct bf16 { unsigned short bits; };

#define NABLA_INF __int_as_float(0x7f800000)
#define NABLA_NAN __int_as_float(0x7fc00000)

#ifdef NABLA_HOST_F16
// The CPU emulator of CUDA (tests/emulator) compiles the kernels with g++: the host's IEEE
// binary16 type does the same round-to-nearest-even conversions as `cvt`.
__device__ __forceinline__ float f16_to_float(f16 x) {
    _Float16 h;
    memcpy(&h, &x.bits, 2);
    return (float)h;
}
__device__ __forceinline__ f16 float_to_f16(float f) {
    const _Float16 h = (_Float16)f;
    f16 r;
    memcpy(&r.bits, &h, 2);
    return r;
}
#else
__device__ __forceinline__ float f16_to_float(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
__device__ __forceinline__ f16 float_to_f16(float f) {
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
    return h;
}
#endif
__device__ __forceinline__ float bf16_to_float(bf16 x) {
    return __uint_as_float(((unsigned int)x.bits) << 16);
}
__device__ __forceinline__ bf16 float_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep the sign, make it quiet
        r.bits = (unsigned short)((u >> 16) | 0x0040u);
        return r;
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    r.bits = (unsigned short)(u >> 16);
    return r;
}

template <typename T> struct Acc { typedef T type; };
template <> struct Acc<f16> { typedef float type; };
template <> struct Acc<bf16> { typedef float type; };

__device__ __forceinline__ float up(f16 x) { return f16_to_float(x); }
__device__ __forceinline__ float up(bf16 x) { return bf16_to_float(x); }
__device__ __forceinline__ float up(float x) { return x; }
__device__ __forceinline__ double up(double x) { return x; }
__device__ __forceinline__ i64 up(i64 x) { return x; }

template <typename T> __device__ __forceinline__ T down(typename Acc<T>::type a) { return a; }
template <> __device__ __forceinline__ f16 down<f16>(float a) { return float_to_f16(a); }
template <> __device__ __forceinline__ bf16 down<bf16>(float a) { return float_to_bf16(a); }

// Conversions between any two element types go through double (exact for every source but
// i64 beyond 2^53); half types are narrowed through float, as the CPU reference does.
template <typename T> __device__ __forceinline__ double to_double(T x) { return (double)up(x); }
template <typename T> __device__ __forceinline__ T from_double(double v) { return (T)v; }
template <> __device__ __forceinline__ f16 from_double<f16>(double v) { return float_to_f16((float)v); }
template <> __device__ __forceinline__ bf16 from_double<bf16>(double v) { return float_to_bf16((float)v); }
template <> __device__ __forceinline__ i64 from_double<i64>(double v) {
    // Saturating and NaN -> 0, like Rust's `as`, so both backends agree on every input.
    if (v != v) return 0;
    if (v >= 9.2233720368547758e18) return 0x7fffffffffffffffLL;
    if (v <= -9.2233720368547758e18) return (i64)(-0x7fffffffffffffffLL - 1);
    return (i64)v;
}

// Math overloads in the accumulation types (NVRTC offers the C names; we pick per type).
__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return log(x); }
__device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float m_erf(float x) { return erff(x); }
__device__ __forceinline__ double m_erf(double x) { return erf(x); }
__device__ __forceinline__ float m_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double m_pow(double x, double y) { return pow(x, y); }
__device__ __forceinline__ float m_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double m_abs(double x) { return fabs(x); }
__device__ __forceinline__ i64 m_abs(i64 x) { return x < 0 ? -x : x; }

template <typename A> __device__ __forceinline__ bool is_nan(A x) { return x != x; }

// Storage offset of logical element i of a strided view.
__device__ __forceinline__ i64 strided_offset(const StridedLayout& l, i64 i) {
    if (l.contiguous) return l.offset + i;
    i64 off = l.offset;
#pragma unroll 1
    for (int d = (int)l.ndim - 1; d >= 0; --d) {
        const i64 size = l.shape[d];
        off += (i % size) * l.strides[d];
        i /= size;
    }
    return off;
}

// n / d.divisor for 0 <= n < 2^31, by multiply and shift (see FastDiv in params.h).
__device__ __forceinline__ int fast_div(int n, const FastDiv& d) {
    return (int)(((unsigned long long)(unsigned int)n * (unsigned long long)d.magic) >> d.shift);
}

// Storage offset of logical element i (< 2^31) of a view, by multiply and shift.
__device__ __forceinline__ i64 gather_offset(const GatherLayout& l, int i) {
    i64 off = l.offset;
#pragma unroll 1
    for (int d = (int)l.ndim - 1; d >= 0; --d) {
        const int q = fast_div(i, l.shape[d]);
        off += (i64)(i - q * (int)l.shape[d].divisor) * l.strides[d];
        i = q;
    }
    return off;
}

// Eight consecutive elements moved as one aligned access (16 bytes for 16-bit types, two or
// four 16-byte accesses for wider ones), as llm.c's Packed128: a quarter to an eighth of the
// memory instructions of element-by-element copies. Only for addresses the host has checked
// to be 16-byte aligned.
template <typename T>
struct __align__(16) Pack8 {
    T v[8];
};

// The block's dynamic shared memory (the launch's shared byte count; past 48 KiB only after the
// host raises the kernel's CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES), as `type* name`,
// 16-byte aligned. The CPU emulator defines its own.
#ifndef NABLA_DYNAMIC_SHARED
#define NABLA_DYNAMIC_SHARED(type, name)                       \
    extern __shared__ __align__(16) unsigned char name##_bytes[]; \
    type* name = (type*)name##_bytes
#endif

#define GRID_STRIDE_LOOP(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)

// Whether p is 16-byte aligned, as Pack8 accesses need.
template <typename T> __device__ __forceinline__ bool aligned16(const T* p) {
    return ((unsigned long long)p & 15) == 0;
}

// Whether the view `l` of `base` is dense from a 16-byte aligned first element, so that the
// elementwise kernels may read it as Pack8s. The kernels decide this themselves; the host only
// sizes the grid by the same rule (cuda::packed_config), so a disagreement costs time, never
// correctness.
template <typename T> __device__ __forceinline__ bool packable(const T* base, const StridedLayout& l) {
    return l.contiguous && aligned16(base + l.offset);
}

// out[i] = f(a[i]) (or f(a[i], b[i])) for n elements of dense, 16-byte aligned arrays, eight a
// thread as Pack8 accesses, then the last n % 8 one by one. f takes and returns accumulate-type
// values (`up` of each element); the result is rounded to T once.
template <typename T, typename F>
__device__ __forceinline__ void dense_map(T* out, i64 n, F f, const T* a) {
    const i64 packs = n / 8;
    GRID_STRIDE_LOOP(p, packs) {
        const Pack8<T> x = ((const Pack8<T>*)a)[p];
        Pack8<T> y;
#pragma unroll
        for (int j = 0; j < 8; ++j) y.v[j] = down<T>(f(up(x.v[j])));
        ((Pack8<T>*)out)[p] = y;
    }
    GRID_STRIDE_LOOP(i, n - packs * 8) out[packs * 8 + i] = down<T>(f(up(a[packs * 8 + i])));
}
template <typename T, typename F>
__device__ __forceinline__ void dense_map(T* out, i64 n, F f, const T* a, const T* b) {
    const i64 packs = n / 8;
    GRID_STRIDE_LOOP(p, packs) {
        const Pack8<T> x = ((const Pack8<T>*)a)[p], y = ((const Pack8<T>*)b)[p];
        Pack8<T> z;
#pragma unroll
        for (int j = 0; j < 8; ++j) z.v[j] = down<T>(f(up(x.v[j]), up(y.v[j])));
        ((Pack8<T>*)out)[p] = z;
    }
    GRID_STRIDE_LOOP(i, n - packs * 8) {
        const i64 k = packs * 8 + i;
        out[k] = down<T>(f(up(a[k]), up(b[k])));
    }
}

// Warp-level sum/max/min with shuffles; lanes of a full warp must all take part.
template <typename A, typename Op>
__device__ __forceinline__ A warp_reduce(A v, Op op) {
    for (int delta = 16; delta > 0; delta >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, delta));
    return v;
}

// Block-wide reduction for blockDim.x a multiple of 32 (at most 1024). The result is valid in
// thread 0. `scratch` holds 32 values; `identity` pads the lanes past the last warp.
template <typename A, typename Op>
__device__ __forceinline__ A block_reduce(A v, Op op, A* scratch, A identity) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();  // scratch may still be read by an earlier call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    if (warp == 0) {
        v = lane < warps ? scratch[lane] : identity;
        v = warp_reduce(v, op);
    }
    return v;
}

// Tensor-core intrinsics. Every piece of inline PTX beyond `cvt` lives here, each behind a small
// device function; the CPU emulator of CUDA (tests/emulator/cuda_emu.h) defines
// NABLA_EMULATED_INTRINSICS and gives each a C++ body that follows the PTX ISA's fragment
// layout, so kernels using them are checked without a GPU.
//
// mma_m16n8k16_*: D = A B + C for a 16 x 16 A (row-major) and a 16 x 8 B (column-major) of
// f16 or bf16 values, C and D f32, across the 32 lanes of a warp. With group = lane >> 2 and
// tig = lane % 4: a[r] packs A elements 2r and 2r + 1 (low half first); element i is at row
// group + 8 ((i / 2) % 2), column 2 tig + (i & 1) + 8 (i / 4). b[r] packs B elements 2r and
// 2r + 1; element i is at row (depth) 2 tig + (i & 1) + 8 (i / 2), column group. c and d
// element i is at row group + 8 (i / 2), column 2 tig + (i & 1). Needs sm_80 (every image nabla
// builds); older GPUs trap, and the host never picks these kernels for them.
#ifndef NABLA_EMULATED_INTRINSICS
#if __CUDA_ARCH__ >= 800
#define NABLA_MMA_16816(type)                                                                            \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." type "." type ".f32 {%0,%1,%2,%3}, "         \
                 "{%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"                                           \
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])                                       \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), \
                   "f"(c[2]), "f"(c[3]));
#else
#define NABLA_MMA_16816(type) asm volatile("trap;");
#endif
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    NABLA_MMA_16816("bf16")
}
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    NABLA_MMA_16816("f16")
}

// mma_m16n8k8_tf32: D = A B + C for a 16 x 8 A (row-major) and an 8 x 8 B (column-major) of TF32
// values (f32 bits whose low 13 mantissa bits are zero; see f32_to_tf32), C and D f32. a[i] is
// A at row group + 8 (i % 2), column tig + 4 (i / 2); b[i] is B at row (depth) tig + 4 i, column
// group; c and d as for m16n8k16. Needs sm_80.
// f32_to_tf32: x rounded to TF32 (10 mantissa bits), to nearest with ties away from zero, as
// cuBLAS rounds (`cvt.rna.tf32.f32`); infinities and NaN pass through.
#if __CUDA_ARCH__ >= 800
__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
}
__device__ __forceinline__ unsigned f32_to_tf32(float x) {
    unsigned out;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(out) : "f"(x));
    return out;
}
#else
__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    asm volatile("trap;");
}
__device__ __forceinline__ unsigned f32_to_tf32(float x) { return __float_as_uint(x); }
#endif

// ldmatrix_x4 / ldmatrix_x4_trans: four 8 x 8 matrices of 16-bit values from shared memory into
// one 32-bit register each, across the 32 lanes of a warp. Lane l gives the address of row
// l % 8 of matrix l / 8 (16 contiguous bytes, 16-byte aligned). Without trans, r[j] of lane t
// packs matrix j's elements (t / 4, 2 (t % 4)) and (t / 4, 2 (t % 4) + 1), low half first: the
// m16n8k16 fragment of a matrix stored row by row. With trans, (2 (t % 4), t / 4) and
// (2 (t % 4) + 1, t / 4): the fragment of a matrix stored column by column.
// cp_async_16: copies 16 bytes from global to shared memory without passing through registers
// (`cp.async.cg`, cached in L2 only); with `valid` false it writes 16 zero bytes and reads
// nothing. Both addresses 16-byte aligned. cp_async_commit closes the thread's group of copies
// issued since the last one; cp_async_wait<N> returns once at most N of its committed groups
// are still in flight (their shared memory is then readable by this thread; a barrier makes it
// readable by the others). Needs sm_80.
#if __CUDA_ARCH__ >= 800
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* row) {
    const unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const void* row) {
    const unsigned address = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
}
__device__ __forceinline__ void cp_async_16(void* shared, const void* global, bool valid) {
    const unsigned address = (unsigned)__cvta_generic_to_shared(shared);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(address), "l"(global), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
#else
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* row) { asm volatile("trap;"); }
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const void* row) { asm volatile("trap;"); }
__device__ __forceinline__ void cp_async_16(void* shared, const void* global, bool valid) { asm volatile("trap;"); }
__device__ __forceinline__ void cp_async_commit() {}
template <int N> __device__ __forceinline__ void cp_async_wait() {}
#endif
// fast_exp2(x): 2^x in one MUFU.EX2 (`ex2.approx.ftz.f32`, relative error about 2^-22), results
// below 2^-126 flushed to zero and exp2(-inf) = 0. exp2f gives the same values but for those
// tiny ones, at four instructions (a range test and two conditional scalings around the same
// MUFU); softmax, whose weights below 2^-126 vanish against a sum of at least one, takes this.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
// fresh(x): x, as a value the compiler cannot prove unchanged since the last call (an empty asm
// that claims to rewrite it). Work on a register that a loop never changes is then redone in
// the loop rather than hoisted out of it with its results held in more registers (3xTF32's
// split of a fragment kept for a whole pass doubles the fragment's registers when hoisted).
__device__ __forceinline__ float fresh(float x) {
    asm volatile("" : "+f"(x));
    return x;
}
#endif

// Fragment helpers shared by the tensor-core kernels (mma_gemm.cuh, attention_tc.cu).
// The 16 raw bits of a 16-bit value.
__device__ __forceinline__ unsigned short bits_of(f16 x) { return x.bits; }
__device__ __forceinline__ unsigned short bits_of(bf16 x) { return x.bits; }

// pack_pair<T>(lo, hi): two floats rounded to T (to nearest, ties to even) as one fragment
// register, `lo` in the low half. On sm_80+ one `cvt.rn.{bf16x2,f16x2}.f32` (F2FP) does both;
// float_to_bf16's integer rounding takes about five instructions a value, which in attention's
// loops (every probability goes through here) was a third of the instructions of a tile. The
// emulator and older GPUs round one value at a time, to the same bits but for a NaN's payload.
template <typename T> __device__ __forceinline__ unsigned pack_pair(float lo, float hi);
#if !defined(NABLA_EMULATED_INTRINSICS) && __CUDA_ARCH__ >= 800
template <> __device__ __forceinline__ unsigned pack_pair<bf16>(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <> __device__ __forceinline__ unsigned pack_pair<f16>(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
#else
template <> __device__ __forceinline__ unsigned pack_pair<bf16>(float lo, float hi) {
    return (unsigned)float_to_bf16(lo).bits | ((unsigned)float_to_bf16(hi).bits << 16);
}
template <> __device__ __forceinline__ unsigned pack_pair<f16>(float lo, float hi) {
    return (unsigned)float_to_f16(lo).bits | ((unsigned)float_to_f16(hi).bits << 16);
}
#endif

template <typename T> __device__ __forceinline__ void mma_16816(float d[4], const unsigned a[4], const unsigned b[2]);
template <> __device__ __forceinline__ void mma_16816<bf16>(float d[4], const unsigned a[4], const unsigned b[2]) {
    mma_m16n8k16_bf16(d, a, b, d);
}
template <> __device__ __forceinline__ void mma_16816<f16>(float d[4], const unsigned a[4], const unsigned b[2]) {
    mma_m16n8k16_f16(d, a, b, d);
}

// 3xTF32: an f32 product on the TF32 tensor cores at f32's accuracy (CUTLASS's "fast f32").
// Each f32 operand is split as x = big + small, big = x rounded to TF32 and small = the rest
// rounded to TF32, and a b = big_a big_b + big_a small_b + small_a big_b + small_a small_b,
// whose last term (2^-22 of the product) is dropped; the small terms go into the accumulator
// first, so they are not lost against the big one. Three m16n8k8 products per f32 product.
// Both parts are rounded as f32_to_tf32 rounds (to nearest, ties away from zero), here by
// adding half of the dropped bits' weight to the bits and clearing them: two integer
// instructions, where `cvt.rna.tf32.f32` compiles to five on sm_90 (its NaN test included; a
// NaN's split stays NaN here too, through its small part).
__device__ __forceinline__ unsigned round_to_tf32_bits(float x) { return (__float_as_uint(x) + 0x1000u) & 0xffffe000u; }
__device__ __forceinline__ void split_tf32(float x, unsigned& big, unsigned& small) {
    big = round_to_tf32_bits(x);
    small = round_to_tf32_bits(x - __uint_as_float(big));
}
// acc += A B, A and B given as their big and small TF32 parts (fragments of mma_m16n8k8_tf32).
__device__ __forceinline__ void mma_3xtf32(float acc[4], const unsigned a_big[4], const unsigned a_small[4],
                                           const unsigned b_big[2], const unsigned b_small[2]) {
    mma_m16n8k8_tf32(acc, a_small, b_big, acc);
    mma_m16n8k8_tf32(acc, a_big, b_small, acc);
    mma_m16n8k8_tf32(acc, a_big, b_big, acc);
}

// Zeroes MI x NI m16n8 accumulator fragments (a GEMM warp's tile, attention's scores or
// outputs of MI 16-row blocks).
template <int MI, int NI>
__device__ __forceinline__ void zero_fragments(float (&acc)[MI][NI][4]) {
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
}

// Two neighbouring 16-bit values of a shared row as one 32-bit fragment register (the lower
// index in the low half). `at` is even and rows have an even length, so the load is aligned.
__device__ __forceinline__ unsigned pair_at(const unsigned short* row, int at) {
    return (unsigned)row[at] | ((unsigned)row[at + 1] << 16);
}
