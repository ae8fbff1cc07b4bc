// The tensor-core variant of the tiled GEMM engine (tiled_gemm.cuh): the same Problem interface
// (rows, cols, depth, groups, group(g, s) with its loaders and store), the products done by
// `mma.sync` with f32 accumulation instead of FMAs: m16n8k16 for f16 and bf16 operands, and
// m16n8k8 for f32 operands rounded to TF32 (opt-in: nabla::set_float32_matmul_precision).
//
// Tiling: a 256-thread block (8 warps, 2 down x 4 across) computes a BM x BN tile of C
// (128 x 128, 64 x 128 or 64 x 64) 16 deep per step; each warp owns a (BM/2) x (BN/4) sub-tile
// of (BM/32) x (BN/32) m16n8 accumulator fragments. Operands go global -> registers (the next
// step's, prefetched while this one computes) -> shared memory in the operand type (16-bit
// values, or TF32 in 32 bits), A row-major (m x k) and B column-major (n x k). 16-bit rows are
// padded to 24 halves, so a fragment's two neighbouring elements are one 32-bit load and the
// eight rows a fragment load touches fall on distinct banks; TF32 rows to 20 words, for the
// same reason. Fragments follow the PTX ISA's layouts (see the intrinsics in nabla.cuh). Bound:
// the tensor pipes' peak for large problems once loads are pipelined (cp.async and ldmatrix
// come next); this first version keeps the FMA engine's simple register prefetch.
#pragma once
#include "tiled_gemm.cuh"

#define MMA_TILE_K 16

// The bits of T of a value that came from T (the loaders widen T, or give zero), so that
// narrowing is exact: bf16's top half, one shift where rounding takes about five instructions.
__device__ __forceinline__ unsigned short exact_bits(float v, bf16) { return (unsigned short)(__float_as_uint(v) >> 16); }
__device__ __forceinline__ unsigned short exact_bits(float v, f16) { return bits_of(float_to_f16(v)); }

// How one operand type meets the tensor cores: what shared memory holds per element, its row
// padding, the depth K of one mma (16 for m16n8k16, 8 for m16n8k8), and the fragments of a
// warp's A rows `top` (row group) and `bottom` (group + 8) and B column (group) at depth k.
template <typename T> struct MmaOperand {
    typedef unsigned short Stored;
    static constexpr int ROW = 24, K = 16;
    __device__ static Stored from(float v) { return exact_bits(v, T()); }
    __device__ static void a_frag(unsigned a[4], const Stored* top, const Stored* bottom, int k, int tig) {
        a[0] = pair_at(top, k + 2 * tig);
        a[1] = pair_at(bottom, k + 2 * tig);
        a[2] = pair_at(top, k + 2 * tig + 8);
        a[3] = pair_at(bottom, k + 2 * tig + 8);
    }
    __device__ static void b_frag(unsigned b[2], const Stored* column, int k, int tig) {
        b[0] = pair_at(column, k + 2 * tig);
        b[1] = pair_at(column, k + 2 * tig + 8);
    }
    __device__ static void mma(float acc[4], const unsigned a[4], const unsigned b[2]) { mma_16816<T>(acc, a, b); }
};
template <> struct MmaOperand<float> {
    typedef unsigned Stored;
    static constexpr int ROW = 20, K = 8;
    __device__ static Stored from(float v) { return f32_to_tf32(v); }
    __device__ static void a_frag(unsigned a[4], const Stored* top, const Stored* bottom, int k, int tig) {
        a[0] = top[k + tig];
        a[1] = bottom[k + tig];
        a[2] = top[k + tig + 4];
        a[3] = bottom[k + tig + 4];
    }
    __device__ static void b_frag(unsigned b[2], const Stored* column, int k, int tig) {
        b[0] = column[k + tig];
        b[1] = column[k + tig + 4];
    }
    __device__ static void mma(float acc[4], const unsigned a[4], const unsigned b[2]) {
        mma_m16n8k8_tf32(acc, a, b, acc);
    }
};

template <typename T, int BM, int BN, typename Problem>
__device__ void mma_gemm(const Problem& p) {
    typedef float A;
    constexpr int BK = MMA_TILE_K, THREADS = 256;
    constexpr int WM = BM / 2, WN = BN / 4;       // a warp's sub-tile
    constexpr int MI = WM / 16, NI = WN / 8;      // its m16 x n8 fragments
    constexpr int LA = BM * BK / THREADS, LB = BN * BK / THREADS;
    constexpr int A_ROW_STEP = THREADS / BK, B_K_STEP = THREADS / BN;
    typedef MmaOperand<T> Op;
    typedef typename Op::Stored S;
    __shared__ S as[BM][Op::ROW];
    __shared__ S bs[BN][Op::ROW];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int group = lane >> 2, tig = lane & 3;  // the PTX ISA's groupID, threadID_in_group
    const int warp_row = (warp / 4) * WM, warp_col = (warp % 4) * WN;
    const int a_k = threadIdx.x % BK, a_r = threadIdx.x / BK;
    const int b_c = threadIdx.x % BN, b_k = threadIdx.x / BN;
    const i64 rows = p.rows(), cols = p.cols();
    typedef decltype(p.group(0, 0)) View;
    for_each_tile<BM, BN, BK>(p, [&](const View& q, i64 row0, i64 col0, i64 k_begin, i64 k_end) {
                const TileContexts<View, LA> ctx(q, rows, cols, row0 + a_r, A_ROW_STEP, col0 + b_c);
                S next_a[LA], next_b[LB];
                // The loaders widen to f32; narrowing back is exact for 16-bit T (the values
                // came from T); f32 is rounded to TF32 here, once.
                auto fetch = [&](i64 k0) {
#pragma unroll
                    for (int i = 0; i < LA; ++i) {
                        const i64 k = k0 + a_k;
                        next_a[i] = Op::from((ctx.a_ok[i] && k < k_end) ? q.a(ctx.a[i], k) : A(0));
                    }
#pragma unroll
                    for (int i = 0; i < LB; ++i) {
                        const i64 k = k0 + b_k + i * B_K_STEP;
                        next_b[i] = Op::from((ctx.b_ok && k < k_end) ? q.b(ctx.b, k) : A(0));
                    }
                };
                float acc[MI][NI][4];
                zero_fragments(acc);
                if (k_begin < k_end) fetch(k_begin);
                for (i64 k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
                    for (int i = 0; i < LA; ++i) as[a_r + i * A_ROW_STEP][a_k] = next_a[i];
#pragma unroll
                    for (int i = 0; i < LB; ++i) bs[b_c][b_k + i * B_K_STEP] = next_b[i];
                    __syncthreads();
                    if (k0 + BK < k_end) fetch(k0 + BK);  // in flight while this step computes
#pragma unroll
                    for (int k = 0; k < BK; k += Op::K) {
                        unsigned fa[MI][4], fb[NI][2];
#pragma unroll
                        for (int i = 0; i < MI; ++i)
                            Op::a_frag(fa[i], as[warp_row + 16 * i + group], as[warp_row + 16 * i + group + 8], k, tig);
#pragma unroll
                        for (int j = 0; j < NI; ++j) Op::b_frag(fb[j], bs[warp_col + 8 * j + group], k, tig);
#pragma unroll
                        for (int i = 0; i < MI; ++i)
#pragma unroll
                            for (int j = 0; j < NI; ++j) Op::mma(acc[i][j], fa[i], fb[j]);
                    }
                    __syncthreads();
                }
                store_fragments(q, acc, row0 + warp_row, col0 + warp_col, rows, cols, group, tig);
    });
}
