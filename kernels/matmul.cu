// Batched matrix product C[b] = A[b] x B[b], A[b] m x k and B[b] k x n, any strides, on the
// tiled engine of tiled_gemm.cuh (128 x 128, 64 x 128 or 64 x 64 tiles of C per 256-thread
// block, 8 x 8 to 4 x 4 register tiles, shared-memory staging in Acc<T>). Operands are read
// through (row, column) strides, which gives transposed operands without copies, and through
// per-batch strides unravelled over the batch shape (once per batch entry), which gives
// broadcast batch dims. The linear_* kernels add a bias [n] to every row in the epilogue (the
// Linear layer's x Wᵀ + b in one kernel); with MatmulParams::relu every kernel clamps C at zero
// as it writes it (linear_relu), and with MatmulParams::out_acc (products without a bias or a
// ReLU) writes C in the accumulation type, f32 for f16/bf16: autocast's gradient products, which
// need no cast back. Compute bound on the FMA pipes for large m, n, k; f16/bf16 accumulate
// in f32. The *_tc_* kernels are the same problems on the tensor cores (mma_gemm.cuh), for
// f16/bf16 on sm_80+; the *_v2_* kernels are version 2 of those (mma_pipeline.cuh: cp.async
// and ldmatrix) for operands dense along one axis; mma_probe_* and ldmatrix_probe run one
// intrinsic for its own test.
#include "tiled_gemm.cuh"
#include "mma_gemm.cuh"
#include "mma_pipeline.cuh"
#include "sgemm_v4.cuh"

// One batch entry: the operands' bases and strides.
template <typename T, bool Bias>
struct MatmulBatch {
    typedef typename Acc<T>::type A;
    const T* pa;
    const T* pb;
    T* pc;
    i64 a_rs, a_cs, b_rs, b_cs, n;
    __device__ const T* a_row(i64 r) const { return pa + r * a_rs; }
    __device__ const T* b_col(i64 col) const { return pb + col * b_cs; }
    __device__ A a(const T* row, i64 k) const { return (A)up(row[k * a_cs]); }
    __device__ A b(const T* column, i64 k) const { return (A)up(column[k * b_rs]); }
    const T* bias;  // [n], added to every row when Bias
    // Where the store writes A values as they are: this split's m x n partial sums when the depth
    // is split, or C itself when p.out_acc (the host asks it only of products without a bias or
    // a ReLU: a third store path, A values with the epilogue, cost the 128-register pipelined
    // kernels a stack frame); else null, and C is written rounded to T.
    A* partial;
    bool relu;      // clamp at zero after the bias (NaN kept, as the relu kernel)
    __device__ void store(i64 r, i64 col, A v) const {
        if (partial) {
            partial[r * n + col] = v;
            return;
        }
        if (Bias) v += (A)up(bias[col]);
        if (relu && v < (A)0) v = (A)0;
        pc[r * n + col] = down<T>(v);
    }
};

template <typename T, bool Bias>
struct MatmulProblem {
    const T* a;
    const T* b;
    const T* bias;
    T* c;
    // A reference to the kernel's __grid_constant__ parameter: the batch loop indexes its
    // arrays at run time, which on a copy would cost every thread a stack frame.
    const MatmulParams& p;
    __device__ i64 rows() const { return p.m; }
    __device__ i64 cols() const { return p.n; }
    __device__ i64 depth() const { return p.k; }
    __device__ i64 groups() const { return p.batch; }
    __device__ i64 splits() const { return p.splits; }
    __device__ MatmulBatch<T, Bias> group(i64 batch, i64 split) const {
        i64 a_base = p.a_offset, b_base = p.b_offset, rest = batch;
        for (int d = (int)p.batch_ndim - 1; d >= 0; --d) {
            const i64 idx = rest % p.batch_shape[d];
            rest /= p.batch_shape[d];
            a_base += idx * p.a_batch_strides[d];
            b_base += idx * p.b_batch_strides[d];
        }
        MatmulBatch<T, Bias> q;
        q.pa = a + a_base;
        q.pb = b + b_base;
        q.bias = bias;
        q.pc = c + batch * p.m * p.n;
        typedef typename Acc<T>::type A;
        // (with splits, C is the host's A-typed workspace [splits][batch][m][n]; with out_acc, C)
        q.partial = p.splits > 1 || p.out_acc ? (A*)(void*)c + (split * p.batch + batch) * p.m * p.n : nullptr;
        q.a_rs = p.a_row_stride;
        q.a_cs = p.a_col_stride;
        q.b_rs = p.b_row_stride;
        q.b_cs = p.b_col_stride;
        q.n = p.n;
        q.relu = p.relu != 0;
        return q;
    }
};

// matmul_* compute A x B; linear_* add the bias in the epilogue (x Wᵀ + b), a separate
// instantiation so the plain product keeps its registers.
#define MATMUL(T, suffix, bm, bn, min_blocks) \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, min_blocks) \
        matmul_##suffix(const T* a, const T* b, T* c, const __grid_constant__ MatmulParams p) { \
        const MatmulProblem<T, false> pb{a, b, nullptr, c, p}; \
        tiled_gemm<Acc<T>::type, bm, bn>(pb); \
    }
#define LINEAR(T, suffix, bm, bn, min_blocks) \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, min_blocks) \
        linear_##suffix(const T* a, const T* b, const T* bias, T* c, const __grid_constant__ MatmulParams p) { \
        const MatmulProblem<T, true> pb{a, b, bias, c, p}; \
        tiled_gemm<Acc<T>::type, bm, bn>(pb); \
    }
GEMM_INSTANTIATE(MATMUL, float, f32, 2, 2) GEMM_INSTANTIATE(MATMUL, double, f64, 1, 1)
GEMM_INSTANTIATE(MATMUL, f16, f16, 1, 2) GEMM_INSTANTIATE(MATMUL, bf16, bf16, 2, 2)
GEMM_INSTANTIATE(LINEAR, float, f32, 1, 2) GEMM_INSTANTIATE(LINEAR, double, f64, 1, 1)
GEMM_INSTANTIATE(LINEAR, f16, f16, 1, 2) GEMM_INSTANTIATE(LINEAR, bf16, bf16, 1, 2)

#define MATMUL_TC(T, suffix, bm, bn, min_blocks) \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, min_blocks) \
        matmul_tc_##suffix(const T* a, const T* b, T* c, const __grid_constant__ MatmulParams p) { \
        const MatmulProblem<T, false> pb{a, b, nullptr, c, p}; \
        mma_gemm<T, bm, bn>(pb); \
    }
#define LINEAR_TC(T, suffix, bm, bn, min_blocks) \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, min_blocks) \
        linear_tc_##suffix(const T* a, const T* b, const T* bias, T* c, const __grid_constant__ MatmulParams p) { \
        const MatmulProblem<T, true> pb{a, b, bias, c, p}; \
        mma_gemm<T, bm, bn>(pb); \
    }
// The 128 x 128 tensor-core tiles (64 f32 accumulators a thread, plus fragments) take one block
// per SM: at two, ptxas spills (the register test holds them to it).
GEMM_INSTANTIATE(MATMUL_TC, f16, f16, 1, 2) GEMM_INSTANTIATE(MATMUL_TC, bf16, bf16, 1, 2)
GEMM_INSTANTIATE(LINEAR_TC, f16, f16, 1, 2) GEMM_INSTANTIATE(LINEAR_TC, bf16, bf16, 1, 2)
// f32 operands rounded to TF32 (m16n8k8), chosen only when nabla::set_float32_matmul_precision
// allows it.
GEMM_INSTANTIATE(MATMUL_TC, float, f32, 1, 2) GEMM_INSTANTIATE(LINEAR_TC, float, f32, 1, 2)

// Versions 2 and 3 (mma_pipeline.cuh), one instantiation per operand layout: the first letter
// says along which axis A is contiguous (k or m), the second B (k or n). matmul_v2_kn_* is a
// plain row-major product, linear_v2_kk_* a linear layer's x Wᵀ. Two blocks a multiprocessor
// (PIPE_BLOCKS_PER_SM). f32 operands run on the same pipeline as TF32 (matmul_tf32_v2_*,
// matmul_tf32_v3_*: set_float32_matmul_precision "high") and as 3xTF32 on version 2's stages
// (matmul_v5_*: version 5 of the f32 GEMM, whose versions 2-4 are FMA-pipe kernels).
// Each version's stage depth, and whether its stages live in dynamic shared memory (version 3's
// 96 KiB) rather than static (version 2's 48 KiB). f32 stages hold half as many values, always
// in dynamic shared memory: an mn-major f32 tile's padded rows take version 2's past 48 KiB.
#define PIPE_SHAPE_v2 PIPE_V2_BK, false
#define PIPE_SHAPE_v3 PIPE_V3_BK, true
#define PIPE_SHAPE_tf32_v2 PIPE_V2_BK / 2, true
#define PIPE_SHAPE_tf32_v3 PIPE_V3_BK / 2, true
#define PIPE_SHAPE_v5 PIPE_V2_BK / 2, true
#define MATMUL_PIPE(V, T, M, tname, layout, a_k_major, b_k_major) \
    extern "C" __global__ void __launch_bounds__(PIPE_THREADS, PIPE_BLOCKS_PER_SM) \
        matmul_##V##_##layout##_##tname(const T* a, const T* b, T* c, const __grid_constant__ MatmulParams p) { \
        const MatmulProblem<T, false> pb{a, b, nullptr, c, p}; \
        mma_pipelined_gemm<T, M, a_k_major, b_k_major, PIPE_SHAPE_##V>(pb); \
    }
#define LINEAR_PIPE(V, T, M, tname, layout, a_k_major, b_k_major) \
    extern "C" __global__ void __launch_bounds__(PIPE_THREADS, PIPE_BLOCKS_PER_SM) linear_##V##_##layout##_##tname( \
        const T* a, const T* b, const T* bias, T* c, const __grid_constant__ MatmulParams p) { \
        const MatmulProblem<T, true> pb{a, b, bias, c, p}; \
        mma_pipelined_gemm<T, M, a_k_major, b_k_major, PIPE_SHAPE_##V>(pb); \
    }
#define PIPE_LAYOUTS(KERNEL, V, T, M, tname) \
    KERNEL(V, T, M, tname, kk, true, true) KERNEL(V, T, M, tname, kn, true, false) \
    KERNEL(V, T, M, tname, mk, false, true) KERNEL(V, T, M, tname, mn, false, false)
#define PIPE_VERSION(V) \
    PIPE_LAYOUTS(MATMUL_PIPE, V, f16, f16, f16) PIPE_LAYOUTS(MATMUL_PIPE, V, bf16, bf16, bf16) \
    PIPE_LAYOUTS(LINEAR_PIPE, V, f16, f16, f16) PIPE_LAYOUTS(LINEAR_PIPE, V, bf16, bf16, bf16)
PIPE_VERSION(v2) PIPE_VERSION(v3)
#define PIPE_F32(V, M) PIPE_LAYOUTS(MATMUL_PIPE, V, float, M, f32) PIPE_LAYOUTS(LINEAR_PIPE, V, float, M, f32)
PIPE_F32(tf32_v2, Tf32) PIPE_F32(tf32_v3, Tf32) PIPE_F32(v5, Tf32x3)

// The second half of a split-depth product: C[i] = the splits' partial sums at i (Acc<T>,
// [splits][count]) added in split order, so the result does not depend on scheduling, plus
// bias[i % n] when has_bias, clamped at zero when relu (MatmulParams::relu), narrowed to T, or
// left in Acc<T> when out_acc (MatmulParams::out_acc; C is then Acc<T>). Memory bound: splits + 1
// reads and one write an element.
template <typename T>
__device__ void split_sum(const typename Acc<T>::type* partial, const T* bias, T* c, i64 count, i64 splits, i64 n,
                          i64 has_bias, i64 relu, i64 out_acc) {
    typedef typename Acc<T>::type A;
    GRID_STRIDE_LOOP(i, count) {
        A v = partial[i];
        for (i64 s = 1; s < splits; ++s) v += partial[s * count + i];
        if (has_bias) v += (A)up(bias[i % n]);
        if (relu && v < (A)0) v = (A)0;
        if (out_acc)
            ((A*)(void*)c)[i] = v;
        else
            c[i] = down<T>(v);
    }
}
#define SPLIT_SUM(T, tname) \
    extern "C" __global__ void matmul_split_sum_##tname(const Acc<T>::type* partial, const T* bias, T* c, i64 count, \
                                                        i64 splits, i64 n, i64 has_bias, i64 relu, i64 out_acc) { \
        split_sum<T>(partial, bias, c, count, splits, n, has_bias, relu, out_acc); \
    }
SPLIT_SUM(float, f32) SPLIT_SUM(double, f64) SPLIT_SUM(f16, f16) SPLIT_SUM(bf16, bf16)

// One warp: the ldmatrix intrinsics on a 16 x 16 matrix of 16-bit values (row-major in `m`):
// matrix j of the x4 load is rows 8 (j % 2).., columns 8 (j / 2).. (the A-fragment order); each
// lane writes its four registers without and then with .trans to out[8 lane ..].
extern "C" __global__ void ldmatrix_probe(const unsigned short* m, unsigned* out) {
    __shared__ __align__(16) unsigned short tile[16 * 16];
    const int lane = threadIdx.x % 32;
    for (int i = lane; i < 256; i += 32) tile[i] = m[i];
    __syncthreads();
    const int j = lane >> 3, row = 8 * (j % 2) + (lane & 7), col = 8 * (j / 2);
    unsigned r[4], t[4];
    ldmatrix_x4(r, tile + row * 16 + col);
    ldmatrix_x4_trans(t, tile + row * 16 + col);
    for (int e = 0; e < 4; ++e) {
        out[8 * lane + e] = r[e];
        out[8 * lane + 4 + e] = t[e];
    }
}

// One warp: D = A B + C for A 16 x 16 (row-major), B 16 x 8 (row-major, depth by column) and C
// 16 x 8, the 16-bit operands given as raw bits, through the fragment layout of nabla.cuh.
#define MMA_PROBE(name, intrinsic) \
    extern "C" __global__ void name(const unsigned short* a, const unsigned short* b, const float* c, float* d) { \
        const int lane = threadIdx.x % 32, group = lane >> 2, tig = lane & 3; \
        unsigned fa[4], fb[2]; \
        float fc[4], fd[4]; \
        for (int r = 0; r < 4; ++r) { \
            const int row = group + 8 * (r % 2), col = 2 * tig + 8 * (r / 2); \
            fa[r] = (unsigned)a[row * 16 + col] | ((unsigned)a[row * 16 + col + 1] << 16); \
        } \
        for (int r = 0; r < 2; ++r) { \
            const int k = 2 * tig + 8 * r; \
            fb[r] = (unsigned)b[k * 8 + group] | ((unsigned)b[(k + 1) * 8 + group] << 16); \
        } \
        for (int e = 0; e < 4; ++e) fc[e] = c[(group + 8 * (e / 2)) * 8 + 2 * tig + (e & 1)]; \
        intrinsic(fd, fa, fb, fc); \
        for (int e = 0; e < 4; ++e) d[(group + 8 * (e / 2)) * 8 + 2 * tig + (e & 1)] = fd[e]; \
    }
MMA_PROBE(mma_probe_bf16, mma_m16n8k16_bf16)
MMA_PROBE(mma_probe_f16, mma_m16n8k16_f16)

// One warp: D = A B + C for A 16 x 8 and B 8 x 8 (both row-major f32, rounded to TF32 here) and
// C 16 x 8, through the m16n8k8 TF32 fragment layout of nabla.cuh.
extern "C" __global__ void mma_probe_tf32(const float* a, const float* b, const float* c, float* d) {
    const int lane = threadIdx.x % 32, group = lane >> 2, tig = lane & 3;
    unsigned fa[4], fb[2];
    float fc[4], fd[4];
    for (int r = 0; r < 4; ++r) fa[r] = f32_to_tf32(a[(group + 8 * (r % 2)) * 8 + tig + 4 * (r / 2)]);
    for (int r = 0; r < 2; ++r) fb[r] = f32_to_tf32(b[(tig + 4 * r) * 8 + group]);
    for (int e = 0; e < 4; ++e) fc[e] = c[(group + 8 * (e / 2)) * 8 + 2 * tig + (e & 1)];
    mma_m16n8k8_tf32(fd, fa, fb, fc);
    for (int e = 0; e < 4; ++e) d[(group + 8 * (e / 2)) * 8 + 2 * tig + (e & 1)] = fd[e];
}

// The same product in 3xTF32 (split_tf32 and mma_3xtf32 of nabla.cuh): the operands as given,
// each split into two TF32 parts, three m16n8k8 products.
extern "C" __global__ void mma_probe_3xtf32(const float* a, const float* b, const float* c, float* d) {
    const int lane = threadIdx.x % 32, group = lane >> 2, tig = lane & 3;
    unsigned a_big[4], a_small[4], b_big[2], b_small[2];
    float fd[4];
    for (int r = 0; r < 4; ++r) split_tf32(a[(group + 8 * (r % 2)) * 8 + tig + 4 * (r / 2)], a_big[r], a_small[r]);
    for (int r = 0; r < 2; ++r) split_tf32(b[(tig + 4 * r) * 8 + group], b_big[r], b_small[r]);
    for (int e = 0; e < 4; ++e) fd[e] = c[(group + 8 * (e / 2)) * 8 + 2 * tig + (e & 1)];
    mma_3xtf32(fd, a_big, a_small, b_big, b_small);
    for (int e = 0; e < 4; ++e) d[(group + 8 * (e / 2)) * 8 + 2 * tig + (e & 1)] = fd[e];
}

// Versions 2 and 3 of the f32 FMA-pipe GEMM (sgemm_v2.cuh), with the same layout names:
// version 2 loops over a step's depths at two blocks a multiprocessor (at most 128 registers a
// thread, 33 KiB of shared memory a block), version 3 unrolls them at one block (the register
// test holds both to no spills).
#define MATMUL_FMA2(T, tname, layout, a_k_major, b_k_major) \
    extern "C" __global__ void __launch_bounds__(SGEMM2_THREADS, 2) \
        matmul_v2_##layout##_##tname(const T* a, const T* b, T* c, const __grid_constant__ MatmulParams p) { \
        const MatmulProblem<T, false> pb{a, b, nullptr, c, p}; \
        sgemm_v2<a_k_major, b_k_major, false>(pb); \
    } \
    extern "C" __global__ void __launch_bounds__(SGEMM2_THREADS, 1) \
        matmul_v3_##layout##_##tname(const T* a, const T* b, T* c, const __grid_constant__ MatmulParams p) { \
        const MatmulProblem<T, false> pb{a, b, nullptr, c, p}; \
        sgemm_v2<a_k_major, b_k_major, true>(pb); \
    }
#define LINEAR_FMA2(T, tname, layout, a_k_major, b_k_major) \
    extern "C" __global__ void __launch_bounds__(SGEMM2_THREADS, 2) linear_v2_##layout##_##tname( \
        const T* a, const T* b, const T* bias, T* c, const __grid_constant__ MatmulParams p) { \
        const MatmulProblem<T, true> pb{a, b, bias, c, p}; \
        sgemm_v2<a_k_major, b_k_major, false>(pb); \
    } \
    extern "C" __global__ void __launch_bounds__(SGEMM2_THREADS, 1) linear_v3_##layout##_##tname( \
        const T* a, const T* b, const T* bias, T* c, const __grid_constant__ MatmulParams p) { \
        const MatmulProblem<T, true> pb{a, b, bias, c, p}; \
        sgemm_v2<a_k_major, b_k_major, true>(pb); \
    }
#define FMA_LAYOUTS(KERNEL, T, tname) \
    KERNEL(T, tname, kk, true, true) KERNEL(T, tname, kn, true, false) KERNEL(T, tname, mk, false, true) \
    KERNEL(T, tname, mn, false, false)
FMA_LAYOUTS(MATMUL_FMA2, float, f32) FMA_LAYOUTS(LINEAR_FMA2, float, f32)

// Version 4 of the f32 FMA-pipe GEMM (sgemm_v4.cuh): version 2's tiles with a 4-stage cp.async
// pipeline in 80 KiB of dynamic shared memory, two blocks a multiprocessor (sm_80+; the host
// runs version 2 elsewhere).
#define MATMUL_FMA4(T, tname, layout, a_k_major, b_k_major) \
    extern "C" __global__ void __launch_bounds__(SGEMM2_THREADS, 2) \
        matmul_v4_##layout##_##tname(const T* a, const T* b, T* c, const __grid_constant__ MatmulParams p) { \
        const MatmulProblem<T, false> pb{a, b, nullptr, c, p}; \
        sgemm_v4<a_k_major, b_k_major>(pb); \
    }
#define LINEAR_FMA4(T, tname, layout, a_k_major, b_k_major) \
    extern "C" __global__ void __launch_bounds__(SGEMM2_THREADS, 2) linear_v4_##layout##_##tname( \
        const T* a, const T* b, const T* bias, T* c, const __grid_constant__ MatmulParams p) { \
        const MatmulProblem<T, true> pb{a, b, bias, c, p}; \
        sgemm_v4<a_k_major, b_k_major>(pb); \
    }
FMA_LAYOUTS(MATMUL_FMA4, float, f32) FMA_LAYOUTS(LINEAR_FMA4, float, f32)
