// Fused scaled dot-product attention on the tensor cores (version 2 of kernels/attention.cu,
// f16 and bf16 on sm_80+): the same contract, layout, masks and log-sum-exp as version 1, the
// products done by `mma.sync.m16n8k16` with f32 accumulation (FlashAttention-2's work split).
//
// Tiling: a block of 4 warps owns 64 rows of its pass (queries for the forward and dQ, keys for
// dK/dV); each warp owns 16 of them and keeps their operand fragments in registers for the
// whole pass. The block walks the other side in tiles of KEYS rows (64; 32 when D = 128, and
// 16 queries for dK/dV at D = 128, which keeps two D-wide accumulators without spilling),
// copied to shared memory as rows ([KEYS][D + 8] 16-bit values) by cp.async in 16-byte chunks,
// double-buffered: the next tile's copies are in flight while the current one is multiplied.
// Products over D read a tile's rows as B fragments with 32-bit loads; products over the
// tile's rows read it transposed through ldmatrix.trans, so no tile is stored twice. The
// 8-half padding (rows of D + 8 halves, a multiple of 16 bytes) puts the eight rows that a
// fragment load or an ldmatrix touches on distinct banks.
// - attention_tc_fwd:      S = Q Kᵀ (16 x KEYS per warp), online softmax in f32 on the
//                          accumulator fragments (a row's four threads combine by shuffles),
//                          P rounded to T as the A operand of O += P V.
// - attention_tc_bwd_dq:   S = Q Kᵀ, dP = dO Vᵀ, dS = P (dP - delta), dQ += dS K.
// - attention_tc_bwd_dkdv: Sᵀ = K Qᵀ, dPᵀ = V dOᵀ per query tile, dV += Pᵀ dO, dK += dSᵀ Q.
// (delta comes from attention_bwd_prep of version 1.) An accumulator fragment of a product
// (rows g and g + 8, columns 2 tig and 2 tig + 1 of each n8 block) is exactly the A fragment of
// the next one once two neighbouring n8 blocks are packed as pairs, so P and dS never leave
// registers.
// Bound: the tensor pipes. Until session 12 the tiles were staged synchronously, element by
// element and once more transposed (on an H200, 9 TFLOP/s for the char-GPT's causal forward);
// what remains between this and FlashAttention-2 is a warp's 16 rows (FA2: 16 per warp with
// 4-8 warps and 128-row blocks) and the scalar A-fragment packing of P and dS.
#include "nabla.cuh"

#define TC_WARPS 4
#define TC_ROWS (16 * TC_WARPS)
#define TC_PAD 8

// Rows of the other side per shared tile.
template <int D> struct TcTile {
    static constexpr int KEYS = D >= 128 ? 32 : 64;
};

// Two floats rounded to T, packed as one fragment register (the first in the low half).
template <typename T> __device__ __forceinline__ unsigned pack_pair(float lo, float hi) {
    return (unsigned)bits_of(down<T>(lo)) | ((unsigned)bits_of(down<T>(hi)) << 16);
}

// Two neighbouring elements of a dense row in device memory as one fragment register (zero past
// the last row). Two 16-bit loads: a view's offset may leave the pair unaligned for a 32-bit one.
template <typename T> __device__ __forceinline__ unsigned pair_from(const T* m, i64 row, i64 rows, int at, int D) {
    if (row >= rows) return 0u;
    return (unsigned)bits_of(m[row * D + at]) | ((unsigned)bits_of(m[row * D + at + 1]) << 16);
}

// The A fragments of 16 rows (first + group, first + group + 8) of a dense [rows, D] matrix, for
// products over D: frag[kd] covers columns 16 kd .. 16 kd + 15.
template <typename T, int D>
__device__ __forceinline__ void load_a_rows(unsigned (*frag)[4], const T* m, i64 first, i64 rows, int group, int tig) {
#pragma unroll
    for (int kd = 0; kd < D / 16; ++kd) {
        const int c = 16 * kd + 2 * tig;
        frag[kd][0] = pair_from(m, first + group, rows, c, D);
        frag[kd][1] = pair_from(m, first + group + 8, rows, c, D);
        frag[kd][2] = pair_from(m, first + group, rows, c + 8, D);
        frag[kd][3] = pair_from(m, first + group + 8, rows, c + 8, D);
    }
}

// Issues the cp.async copies of rows first .. first + R of a dense [rows, D] matrix into the
// shared tile [R][D + TC_PAD] with the whole block, 16 bytes a copy, zeros past the last row;
// the caller commits and waits. A row of D (a multiple of 8) 16-bit values is whole 16-byte
// chunks, and every row starts 16-byte aligned: the host passes dense buffers at offset 0, and
// the padded tile rows are multiples of 16 bytes from a 16-byte aligned base.
template <typename T, int D, int R>
__device__ __forceinline__ void stage_tile(unsigned short (*tile)[D + TC_PAD], const T* m, i64 first, i64 rows) {
    static_assert(D % 8 == 0, "rows are whole 16-byte chunks");
    constexpr int CHUNKS = D / 8;
    for (int e = threadIdx.x; e < R * CHUNKS; e += blockDim.x) {
        const int r = e / CHUNKS, c = e % CHUNKS;
        const bool valid = first + r < rows;
        cp_async_16(&tile[r][8 * c], valid ? m + (first + r) * D + 8 * c : m, valid);
    }
}

// Walks the tiles t0 = begin, begin + R, ... below `end` with two shared buffers: tile i + 1's
// copies (`stage(buffer, t0)` issues them) are in flight while `body(buffer, t0)` computes on
// tile i. The barriers make each tile readable by every thread before its body, and keep a
// buffer from being refilled before every warp is done with it.
template <typename Stage, typename Body>
__device__ __forceinline__ void double_buffered(i64 begin, i64 end, int R, Stage stage, Body body) {
    if (begin < end) stage(0, begin);
    cp_async_commit();
    int buffer = 0;
    for (i64 t0 = begin; t0 < end; t0 += R, buffer ^= 1) {
        if (t0 + R < end) stage(buffer ^ 1, t0 + R);
        cp_async_commit();      // one group per tile, empty at the end, so the count is exact
        cp_async_wait<1>();     // tile t0 has landed (this thread's copies)
        __syncthreads();        // ...every thread's
        body(buffer, t0);
        __syncthreads();        // every warp is done with `buffer` before it is refilled
    }
}

// The B fragments of two neighbouring n8 blocks (columns n0 .. n0 + 15) for the product over
// rows k0 .. k0 + 15 of a shared tile stored row by row along k ([k][STRIDE]): ldmatrix.trans
// of the matrices at (k0, n0), (k0 + 8, n0), (k0, n0 + 8), (k0 + 8, n0 + 8); r[0], r[1] are
// block n0's b0, b1 and r[2], r[3] block n0 + 8's.
template <int STRIDE>
__device__ __forceinline__ void b_fragments_trans(unsigned r[4], const unsigned short (*tile)[STRIDE], int k0, int n0) {
    const int lane = threadIdx.x % 32, j = lane >> 3, within = lane & 7;
    ldmatrix_x4_trans(r, &tile[k0 + 8 * (j & 1) + within][n0 + 8 * (j >> 1)]);
}

// acc[n] += A B for the warp's 16 x (16 KD) A fragments and B = the transpose of `rows`' 8 N
// rows (each 16 KD long): a product over D with one accumulator per n8 block of rows.
template <typename T, int KD, int N, int STRIDE>
__device__ __forceinline__ void mma_rows(float (*acc)[4], const unsigned (*a)[4], const unsigned short (*rows)[STRIDE],
                                         int group, int tig) {
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
        for (int kd = 0; kd < KD; ++kd) {
            const unsigned short* r = rows[8 * j + group];
            const unsigned b[2] = {pair_at(r, 16 * kd + 2 * tig), pair_at(r, 16 * kd + 2 * tig + 8)};
            mma_16816<T>(acc[j], a[kd], b);
        }
}

// acc[n] += P B where P is the warp's 16 x (16 KK) accumulator tile `p` (8-wide blocks, rounded
// to T as A fragments) and B the shared tile `rows` ([16 KK][8 N], stored row by row along the
// product's depth, the tile's rows): a product over the tile.
template <typename T, int KK, int N, int STRIDE>
__device__ __forceinline__ void mma_tile(float (*acc)[4], const float (*p)[4], const unsigned short (*rows)[STRIDE]) {
    static_assert(N % 2 == 0, "n8 blocks come in pairs from ldmatrix.x4");
#pragma unroll
    for (int kk = 0; kk < KK; ++kk) {
        const unsigned a[4] = {pack_pair<T>(p[2 * kk][0], p[2 * kk][1]), pack_pair<T>(p[2 * kk][2], p[2 * kk][3]),
                               pack_pair<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                               pack_pair<T>(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
        for (int n = 0; n < N; n += 2) {
            unsigned b[4];
            b_fragments_trans<STRIDE>(b, rows, 16 * kk, 8 * n);
            const unsigned b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
            mma_16816<T>(acc[n], a, b0);
            mma_16816<T>(acc[n + 1], a, b1);
        }
    }
}

template <int N> __device__ __forceinline__ void zero(float (*acc)[4]) {
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
}

// Stores this thread's part of a warp's accumulator fragment over 16 rows from `first` and N
// blocks of 8 columns of a dense [rows, 8 N] matrix: rows first + group and first + group + 8
// (those below `rows`), columns 2 tig and 2 tig + 1 of each block. `put(at, value, h)` writes
// one element, `h` saying which of the two rows it is in (for per-row factors).
template <int N, typename Put>
__device__ __forceinline__ void store_rows(const float (*acc)[4], i64 first, i64 rows, int group, int tig, Put put) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const i64 row = first + group + 8 * h;
        if (row >= rows) continue;
#pragma unroll
        for (int n = 0; n < N; ++n)
#pragma unroll
            for (int c = 0; c < 2; ++c) put(row * (8 * N) + 8 * n + 2 * tig + c, acc[n][2 * h + c], h);
    }
}

// The max (or sum) of a row's values across the four threads of its quad.
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Whether query i sees key j.
__device__ __forceinline__ bool tc_visible(const AttentionParams& p, i64 i, i64 j) {
    return i < p.sq && j < p.sk && (!p.causal || j <= i);
}

template <typename T, int D>
__device__ void attention_tc_fwd(const T* q, const T* k, const T* v, T* o, float* lse, AttentionParams p) {
    constexpr int KEYS = TcTile<D>::KEYS, KD = D / 16, NS = KEYS / 8, NO = D / 8;
    __shared__ __align__(16) unsigned short ks[2][KEYS][D + TC_PAD];
    __shared__ __align__(16) unsigned short vs[2][KEYS][D + TC_PAD];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane >> 2, tig = lane & 3;
    const i64 head = blockIdx.y, first = (i64)blockIdx.x * TC_ROWS, mine = first + 16 * warp;
    const T* kh = k + head * p.sk * D;
    const T* vh = v + head * p.sk * D;
    unsigned qf[KD][4];
    load_a_rows<T, D>(qf, q + head * p.sq * D, mine, p.sq, group, tig);
    const float scale = (float)p.scale, neg_inf = -NABLA_INF;
    float acc[NO][4], m[2] = {neg_inf, neg_inf}, l[2] = {0.0f, 0.0f};
    zero<NO>(acc);
    const i64 key_end = p.causal ? (first + TC_ROWS < p.sk ? first + TC_ROWS : p.sk) : p.sk;
    auto stage = [&](int b, i64 t0) {
        stage_tile<T, D, KEYS>(ks[b], kh, t0, p.sk);
        stage_tile<T, D, KEYS>(vs[b], vh, t0, p.sk);
    };
    double_buffered(0, key_end, KEYS, stage, [&](int b, i64 t0) {
        float s[NS][4];
        zero<NS>(s);
        mma_rows<T, KD, NS, D + TC_PAD>(s, qf, ks[b], group, tig);
        // Element e of block j: row mine + group + 8 (e / 2), key t0 + 8 j + 2 tig + (e & 1).
        float tile_max[2] = {neg_inf, neg_inf};
#pragma unroll
        for (int j = 0; j < NS; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool seen = tc_visible(p, mine + group + 8 * (e / 2), t0 + 8 * j + 2 * tig + (e & 1));
                s[j][e] = seen ? s[j][e] * scale : neg_inf;
                tile_max[e / 2] = fmaxf(tile_max[e / 2], s[j][e]);
            }
        float alpha[2], row_sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float m_new = fmaxf(m[h], quad_max(tile_max[h]));
            alpha[h] = m[h] == neg_inf ? 0.0f : m_exp(m[h] - m_new);
            m[h] = m_new;
        }
#pragma unroll
        for (int j = 0; j < NS; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[j][e] = s[j][e] == neg_inf ? 0.0f : m_exp(s[j][e] - m[e / 2]);
                row_sum[e / 2] += s[j][e];
            }
#pragma unroll
        for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + quad_sum(row_sum[h]);
#pragma unroll
        for (int n = 0; n < NO; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[n][e] *= alpha[e / 2];
        mma_tile<T, KEYS / 16, NO, D + TC_PAD>(acc, s, vs[b]);
    });
    T* oh = o + head * p.sq * D;
    store_rows<NO>(acc, mine, p.sq, group, tig, [&](i64 at, float value, int h) { oh[at] = down<T>(value / l[h]); });
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const i64 row = mine + group + 8 * h;
        if (tig == 0 && row < p.sq) lse[head * p.sq + row] = m[h] + m_log(l[h]);
    }
}

template <typename T, int D>
__device__ void attention_tc_bwd_dq(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                    const float* delta, T* dq, AttentionParams p) {
    constexpr int KEYS = TcTile<D>::KEYS, KD = D / 16, NS = KEYS / 8, NO = D / 8;
    __shared__ __align__(16) unsigned short ks[2][KEYS][D + TC_PAD];
    __shared__ __align__(16) unsigned short vs[2][KEYS][D + TC_PAD];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane >> 2, tig = lane & 3;
    const i64 head = blockIdx.y, first = (i64)blockIdx.x * TC_ROWS, mine = first + 16 * warp;
    const T* kh = k + head * p.sk * D;
    const T* vh = v + head * p.sk * D;
    unsigned qf[KD][4], gf[KD][4];
    load_a_rows<T, D>(qf, q + head * p.sq * D, mine, p.sq, group, tig);
    load_a_rows<T, D>(gf, dout + head * p.sq * D, mine, p.sq, group, tig);
    float row_lse[2], row_delta[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const i64 row = mine + group + 8 * h;
        row_lse[h] = row < p.sq ? lse[head * p.sq + row] : 0.0f;
        row_delta[h] = row < p.sq ? delta[head * p.sq + row] : 0.0f;
    }
    const float scale = (float)p.scale;
    float acc[NO][4];
    zero<NO>(acc);
    const i64 key_end = p.causal ? (first + TC_ROWS < p.sk ? first + TC_ROWS : p.sk) : p.sk;
    auto stage = [&](int b, i64 t0) {
        stage_tile<T, D, KEYS>(ks[b], kh, t0, p.sk);
        stage_tile<T, D, KEYS>(vs[b], vh, t0, p.sk);
    };
    double_buffered(0, key_end, KEYS, stage, [&](int b, i64 t0) {
        float s[NS][4], dp[NS][4];
        zero<NS>(s);
        zero<NS>(dp);
        mma_rows<T, KD, NS, D + TC_PAD>(s, qf, ks[b], group, tig);
        mma_rows<T, KD, NS, D + TC_PAD>(dp, gf, vs[b], group, tig);
#pragma unroll
        for (int j = 0; j < NS; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e / 2;
                const bool seen = tc_visible(p, mine + group + 8 * h, t0 + 8 * j + 2 * tig + (e & 1));
                s[j][e] = seen ? m_exp(s[j][e] * scale - row_lse[h]) * (dp[j][e] - row_delta[h]) : 0.0f;
            }
        mma_tile<T, KEYS / 16, NO, D + TC_PAD>(acc, s, ks[b]);
    });
    T* gh = dq + head * p.sq * D;
    store_rows<NO>(acc, mine, p.sq, group, tig, [&](i64 at, float value, int) { gh[at] = down<T>(value * scale); });
}

template <typename T, int D>
__device__ void attention_tc_bwd_dkdv(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                      const float* delta, T* dk, T* dv, AttentionParams p) {
    // 16 queries a tile at D = 128: two accumulators of D columns and the K and V fragments
    // leave no registers for a 32-query tile's scores without spilling.
    constexpr int QUERIES = D >= 128 ? 16 : TcTile<D>::KEYS, KD = D / 16, NS = QUERIES / 8, NO = D / 8;
    __shared__ __align__(16) unsigned short qs[2][QUERIES][D + TC_PAD];
    __shared__ __align__(16) unsigned short gs[2][QUERIES][D + TC_PAD];
    __shared__ float tile_lse[2][QUERIES], tile_delta[2][QUERIES];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane >> 2, tig = lane & 3;
    const i64 head = blockIdx.y, first = (i64)blockIdx.x * TC_ROWS, mine = first + 16 * warp;
    const T* qh = q + head * p.sq * D;
    const T* gh = dout + head * p.sq * D;
    unsigned kf[KD][4], vf[KD][4];
    load_a_rows<T, D>(kf, k + head * p.sk * D, mine, p.sk, group, tig);
    load_a_rows<T, D>(vf, v + head * p.sk * D, mine, p.sk, group, tig);
    const float scale = (float)p.scale;
    float dk_acc[NO][4], dv_acc[NO][4];
    zero<NO>(dk_acc);
    zero<NO>(dv_acc);
    // Queries before the block's first key see none of its keys when causal.
    auto stage = [&](int b, i64 t0) {
        stage_tile<T, D, QUERIES>(qs[b], qh, t0, p.sq);
        stage_tile<T, D, QUERIES>(gs[b], gh, t0, p.sq);
        if (threadIdx.x < QUERIES) {
            const i64 query = t0 + threadIdx.x;
            tile_lse[b][threadIdx.x] = query < p.sq ? lse[head * p.sq + query] : 0.0f;
            tile_delta[b][threadIdx.x] = query < p.sq ? delta[head * p.sq + query] : 0.0f;
        }
    };
    double_buffered(p.causal ? first : 0, p.sq, QUERIES, stage, [&](int b, i64 t0) {
        // Element e of block j: key mine + group + 8 (e / 2), query t0 + 8 j + 2 tig + (e & 1).
        float s[NS][4], dp[NS][4];
        zero<NS>(s);
        zero<NS>(dp);
        mma_rows<T, KD, NS, D + TC_PAD>(s, kf, qs[b], group, tig);
        mma_rows<T, KD, NS, D + TC_PAD>(dp, vf, gs[b], group, tig);
#pragma unroll
        for (int j = 0; j < NS; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = 8 * j + 2 * tig + (e & 1);
                const bool seen = tc_visible(p, t0 + col, mine + group + 8 * (e / 2));
                s[j][e] = seen ? m_exp(s[j][e] * scale - tile_lse[b][col]) : 0.0f;  // Pᵀ
                dp[j][e] = s[j][e] * (dp[j][e] - tile_delta[b][col]);              // dSᵀ
            }
        mma_tile<T, QUERIES / 16, NO, D + TC_PAD>(dv_acc, s, gs[b]);
        mma_tile<T, QUERIES / 16, NO, D + TC_PAD>(dk_acc, dp, qs[b]);
    });
    T* kg = dk + head * p.sk * D;
    T* vg = dv + head * p.sk * D;
    store_rows<NO>(dk_acc, mine, p.sk, group, tig, [&](i64 at, float value, int) { kg[at] = down<T>(value * scale); });
    store_rows<NO>(dv_acc, mine, p.sk, group, tig, [&](i64 at, float value, int) { vg[at] = down<T>(value); });
}

#define ATTENTION_TC(T, tname, D) \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attention_tc_fwd_##tname##_d##D( \
        const T* q, const T* k, const T* v, T* o, float* lse, AttentionParams p) { \
        attention_tc_fwd<T, D>(q, k, v, o, lse, p); \
    } \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attention_tc_bwd_dq_##tname##_d##D( \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dq, \
        AttentionParams p) { \
        attention_tc_bwd_dq<T, D>(q, k, v, dout, lse, delta, dq, p); \
    } \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attention_tc_bwd_dkdv_##tname##_d##D( \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk, T* dv, \
        AttentionParams p) { \
        attention_tc_bwd_dkdv<T, D>(q, k, v, dout, lse, delta, dk, dv, p); \
    }
#define ATTENTION_TC_DIMS(T, tname) \
    ATTENTION_TC(T, tname, 16) ATTENTION_TC(T, tname, 32) ATTENTION_TC(T, tname, 64) ATTENTION_TC(T, tname, 128)
ATTENTION_TC_DIMS(f16, f16) ATTENTION_TC_DIMS(bf16, bf16)
