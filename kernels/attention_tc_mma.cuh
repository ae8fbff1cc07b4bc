// The warp-level products of the tensor-core attention (attention_tc.cu): a warp's MB blocks of
// 16 rows, as A fragments in registers, times a tile of the other side in shared memory, either
// over D (mma_rows: scores S = Q Kᵀ, dP = dO Vᵀ, their transposes in dK/dV) or over the tile's
// rows (mma_tile: O += P V, dQ += dS K, dV += Pᵀ dO, dK += dSᵀ Q, with P or dS still in the
// accumulator fragments of the product before). f16/bf16 on m16n8k16 with ldmatrix B fragments;
// f32 in 3xTF32 on m16n8k8 (the overloads taking float fragments). Accumulation in f32.
#pragma once
#include "nabla.cuh"

// The B fragments of two neighbouring n8 blocks (columns n0 .. n0 + 15) for the product over
// rows k0 .. k0 + 15 of a shared tile stored row by row along k ([k][STRIDE]): ldmatrix.trans
// of the matrices at (k0, n0), (k0 + 8, n0), (k0, n0 + 8), (k0 + 8, n0 + 8); r[0], r[1] are
// block n0's b0, b1 and r[2], r[3] block n0 + 8's.
template <int STRIDE>
__device__ __forceinline__ void b_fragments_trans(unsigned r[4], const unsigned short (*tile)[STRIDE], int k0, int n0) {
    const int lane = threadIdx.x % 32, j = lane >> 3, within = lane & 7;
    ldmatrix_x4_trans(r, &tile[k0 + 8 * (j & 1) + within][n0 + 8 * (j >> 1)]);
}

// acc[m][n] += A[m] B for the warp's MB blocks of 16 x (16 KD) A fragments and B = the
// transpose of `rows`' 8 N rows (each 16 KD long): a product over D with one accumulator per n8
// block of rows. ldmatrix.x4 reads the B fragments of two n8 blocks for one k16 step: matrices
// (rows n0.., depth k0..), (n0.., k0 + 8..), (n0 + 8.., k0..), (n0 + 8.., k0 + 8..), stored row
// by row, are b0, b1 of block n0 and b0, b1 of block n0 + 8; each feeds MB products.
template <typename T, int MB, int KD, int N, int STRIDE>
__device__ __forceinline__ void mma_rows(float (*acc)[N][4], const unsigned (*a)[KD][4],
                                         const unsigned short (*rows)[STRIDE]) {
    static_assert(N % 2 == 0, "n8 blocks come in pairs from ldmatrix.x4");
    const int lane = threadIdx.x % 32, j = lane >> 3, within = lane & 7;
#pragma unroll
    for (int n = 0; n < N; n += 2)
#pragma unroll
        for (int kd = 0; kd < KD; ++kd) {
            unsigned r[4];
            ldmatrix_x4(r, &rows[8 * n + 8 * (j >> 1) + within][16 * kd + 8 * (j & 1)]);
            const unsigned b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
#pragma unroll
            for (int m = 0; m < MB; ++m) {
                mma_16816<T>(acc[m][n], a[m][kd], b0);
                mma_16816<T>(acc[m][n + 1], a[m][kd], b1);
            }
        }
}

// acc[m][n] += P[m] B where P[m] is the warp's m-th 16 x (8 NP) accumulator tile (8-wide
// blocks, rounded to T as A fragments) and B the shared tile `rows` ([8 NP][8 N], stored row by
// row along the product's depth, the tile's rows): a product over the tile.
template <typename T, int MB, int NP, int N, int STRIDE>
__device__ __forceinline__ void mma_tile(float (*acc)[N][4], const float (*p)[NP][4], const unsigned short (*rows)[STRIDE]) {
    static_assert(N % 2 == 0 && NP % 2 == 0, "n8 blocks come in pairs from ldmatrix.x4");
#pragma unroll
    for (int kk = 0; kk < NP / 2; ++kk) {
        unsigned a[MB][4];
#pragma unroll
        for (int m = 0; m < MB; ++m) {
            const float(*q)[4] = p[m];
            a[m][0] = pack_pair<T>(q[2 * kk][0], q[2 * kk][1]);
            a[m][1] = pack_pair<T>(q[2 * kk][2], q[2 * kk][3]);
            a[m][2] = pack_pair<T>(q[2 * kk + 1][0], q[2 * kk + 1][1]);
            a[m][3] = pack_pair<T>(q[2 * kk + 1][2], q[2 * kk + 1][3]);
        }
#pragma unroll
        for (int n = 0; n < N; n += 2) {
            unsigned b[4];
            b_fragments_trans<STRIDE>(b, rows, 16 * kk, 8 * n);
            const unsigned b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
            for (int m = 0; m < MB; ++m) {
                mma_16816<T>(acc[m][n], a[m], b0);
                mma_16816<T>(acc[m][n + 1], a[m], b1);
            }
        }
    }
}

// The f32 versions of mma_rows and mma_tile: the same products in 3xTF32, one m16n8k8 step (8
// deep) at a time; b[i] of a B fragment is the element at depth tig + 4 i, column group of the
// step (read through ldmatrix over D, one value at a time over the tile). The A fragments over D stay whole f32
// values for the pass and are split at each use (fresh keeps the compiler from holding both
// parts of every one of them instead: twice the registers).
template <typename T, int MB, int KD, int N, int STRIDE>
__device__ __forceinline__ void mma_rows(float (*acc)[N][4], const float (*a)[KD][4], const float (*rows)[STRIDE]) {
    static_assert(N % 2 == 0, "n8 blocks come in pairs from ldmatrix.x4");
    const int lane = threadIdx.x % 32, j = lane >> 3, within = lane & 7;
#pragma unroll
    for (int kd = 0; kd < KD; ++kd) {
        unsigned a_big[MB][4], a_small[MB][4];
#pragma unroll
        for (int m = 0; m < MB; ++m)
#pragma unroll
            for (int i = 0; i < 4; ++i) split_tf32(fresh(a[m][kd][i]), a_big[m][i], a_small[m][i]);
#pragma unroll
        for (int n = 0; n < N; n += 2) {
            // Two n8 blocks' B fragments in one ldmatrix.x4: an 8 x 4 block of f32 values is an
            // 8 x 8 matrix of 16-bit halves, whose register for lane (group, tig) is the f32 at
            // row group, column tig. Matrices (n, 8 kd), (n, 8 kd + 4), (n + 8, 8 kd), (n + 8,
            // 8 kd + 4) are b0, b1 of block n and b0, b1 of block n + 1.
            unsigned r[4];
            ldmatrix_x4(r, &rows[8 * n + 8 * (j >> 1) + within][8 * kd + 4 * (j & 1)]);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                unsigned b_big[2], b_small[2];
#pragma unroll
                for (int i = 0; i < 2; ++i) split_tf32(__uint_as_float(r[2 * h + i]), b_big[i], b_small[i]);
#pragma unroll
                for (int m = 0; m < MB; ++m) mma_3xtf32(acc[m][n + h], a_big[m], a_small[m], b_big, b_small);
            }
        }
    }
}

// The product over the tile's rows takes each 8-row step in the order 0, 2, 4, 6, 1, 3, 5, 7:
// then the elements a thread holds of an accumulator block (columns 2 tig and 2 tig + 1) are
// exactly the A fragment's (columns tig and tig + 4 of the step), and no value moves between
// threads; the B fragment reads the tile's rows 2 tig and 2 tig + 1 to match.
template <typename T, int MB, int NP, int N, int STRIDE>
__device__ __forceinline__ void mma_tile(float (*acc)[N][4], const float (*p)[NP][4], const float (*rows)[STRIDE]) {
    const int lane = threadIdx.x % 32, group = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int kk = 0; kk < NP; ++kk) {
        unsigned a_big[MB][4], a_small[MB][4];
#pragma unroll
        for (int m = 0; m < MB; ++m) {
            const float* c = p[m][kk];  // rows g, g, g + 8, g + 8; columns 2 tig, 2 tig + 1
            const float a[4] = {c[0], c[2], c[1], c[3]};
#pragma unroll
            for (int i = 0; i < 4; ++i) split_tf32(a[i], a_big[m][i], a_small[m][i]);
        }
#pragma unroll
        for (int n = 0; n < N; ++n) {
            unsigned b_big[2], b_small[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) split_tf32(rows[8 * kk + 2 * tig + i][8 * n + group], b_big[i], b_small[i]);
#pragma unroll
            for (int m = 0; m < MB; ++m) mma_3xtf32(acc[m][n], a_big[m], a_small[m], b_big, b_small);
        }
    }
}

// The backward's two products over D for a tile of the other side: s = A `s_rows`ᵀ (scores,
// or their transpose in dK/dV) and dp = G `dp_rows`ᵀ (dP = dO Vᵀ, or V dOᵀ), each from zero.
template <typename T, int MB, int KD, int NS, int STRIDE, typename Reg, typename S>
__device__ __forceinline__ void scores_and_dp(float (&s)[MB][NS][4], float (&dp)[MB][NS][4], const Reg (*a)[KD][4],
                                              const Reg (*g)[KD][4], const S (*s_rows)[STRIDE],
                                              const S (*dp_rows)[STRIDE]) {
    zero_fragments(s);
    zero_fragments(dp);
    mma_rows<T, MB, KD, NS, STRIDE>(s, a, s_rows);
    mma_rows<T, MB, KD, NS, STRIDE>(dp, g, dp_rows);
}
