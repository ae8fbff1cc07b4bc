// Fused scaled dot-product attention on the tensor cores (version 2 of kernels/attention.cu, on
// sm_80+): the same contract, layout, masks and log-sum-exp as version 1, the products done by
// `mma.sync` with f32 accumulation (FlashAttention-2's work split). f16 and bf16 multiply on
// m16n8k16; f32 on m16n8k8 TF32 products in 3xTF32 (split_tf32 in nabla.cuh: three products per
// f32 product, f32's accuracy, as PyTorch's memory-efficient f32 attention multiplies), with
// tiles of 4-byte values (TcTile<float, D>, TcOperand<float>); an f32 pass is otherwise the
// same code.
//
// Tiling: a block of 4 warps owns 64 or 128 rows of its pass (queries for the forward and dQ,
// keys for dK/dV): 16 or 32 a warp, as TcTile says per head size. A warp keeps its rows'
// operand fragments in registers for the whole pass, and with 32 rows each fragment it reads
// from shared memory feeds two products. The block walks the other side in tiles of 16-64 rows,
// copied to shared memory as rows ([rows][D + 8] 16-bit values) by cp.async in 16-byte chunks,
// double-buffered: the next tile's copies are in flight while the current one is multiplied.
// Products over D read a tile's rows through ldmatrix, products over the tile's rows read it
// transposed through ldmatrix.trans, so no tile is stored twice (f32: one value at a time). The 8-half padding (rows of
// D + 8 halves, a multiple of 16 bytes) puts the eight rows that an ldmatrix touches on
// distinct banks. Softmax runs in base 2 (fast_exp2 is one instruction), and only tiles that cross
// the causal diagonal or the end of a side test each element against the mask, in a pass of
// their own (hide_masked); a warp skips causal tiles hidden from all its rows. P and dS become
// 16-bit A fragments two values per instruction (pack_pair in nabla.cuh).
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
// until session 13 the B fragments over D were read as 32-bit shared loads (four per two
// products), each warp owned 16 rows, and every element was tested against the mask. Until
// session 18 the mask test sat inside the softmax's element loop, where it compiled to a branch
// around every element of every tile, P and dS were rounded to bf16 in integer arithmetic
// (five instructions a value), and exp2f checked its range: per key tile of the bf16 forward
// at D = 64 without the mask, 1673 instructions issued by each warp for its 128 mma, against
// 804 since (dQ 851 -> 426, dK/dV 1335 -> 578; benches/sass_mix.py --taken, sm_90); a warp
// issues at most one instruction a cycle, and its 128 m16n8k16 products take about 1024
// cycles of its tensor pipe, so the old loop was bound by instruction issue. What remains
// between this and FlashAttention-2: 16 rows a warp for dK/dV from D = 64, and the backward's
// recomputation of S and dP in two kernels (FA2 accumulates dQ atomically from one).
#include "nabla.cuh"
#include "attention_tc_mma.cuh"

#define TC_WARPS 4
#define TC_PAD 8

// Per pass: rows of the other side per shared tile (KEYS, DQ_KEYS, DKDV_QUERIES), and how many
// 16-row blocks a warp owns (*_BLOCKS; the block's rows are 64 times that, and the host's
// tc_rows_per_block in src/ops/attention.rs says the same). Two blocks make every fragment read
// from shared memory feed two products, halving the shared-memory traffic per product; they
// are used wherever the accumulators still fit in 255 registers without spilling (ptxas, sm_90,
// NVRTC 13.0), the tiles shrinking to make room where needed.
template <typename T, int D> struct TcTile {
    static constexpr int KEYS = D >= 128 ? 32 : 64;
    static constexpr int FWD_BLOCKS = D >= 128 ? 1 : 2;
    static constexpr int DQ_BLOCKS = D >= 128 ? 1 : 2;
    static constexpr int DQ_KEYS = D >= 64 ? 32 : KEYS;
    static constexpr int DKDV_BLOCKS = D >= 64 ? 1 : 2;
    static constexpr int DKDV_QUERIES = D >= 128 ? 16 : D >= 64 ? 64 : 32;
};
// f32 (3xTF32): tiles of 4-byte values, twice the bytes of a 16-bit row, so the other side's
// tiles halve from D = 64 to keep two double-buffered tiles within 48 KiB of static shared
// memory, and the A fragments (raw f32, split as they are used) take twice the registers.
template <int D> struct TcTile<float, D> {
    static constexpr int KEYS = D >= 128 ? 16 : D >= 64 ? 32 : 64;
    static constexpr int FWD_BLOCKS = D >= 128 ? 1 : 2;
    static constexpr int DQ_BLOCKS = 1;
    static constexpr int DQ_KEYS = D >= 128 ? 16 : 32;
    static constexpr int DKDV_BLOCKS = 1;
    static constexpr int DKDV_QUERIES = D >= 128 ? 16 : 32;
};

// How a pass holds its operands: shared tiles of `Stored` values in rows of D + PAD, A fragments
// of `Reg` registers, one product `DEPTH` deep. f16/bf16: raw 16-bit values, pairs packed per
// register, m16n8k16. f32: f32 values split into TF32 parts as they are used (3xTF32 on
// m16n8k8); rows of D + 4 floats put the eight rows a B fragment reads on distinct banks.
template <typename T> struct TcOperand {
    typedef unsigned short Stored;
    typedef unsigned Reg;
    static constexpr int DEPTH = 16, PAD = TC_PAD;
};
template <> struct TcOperand<float> {
    typedef float Stored;
    typedef float Reg;
    static constexpr int DEPTH = 8, PAD = 4;
};

// log2(e): the kernels work in base 2 (fast_exp2 is one ex2 instruction; expf is several), with
// scores scaled by scale * log2(e) and log-sum-exps converted at the edges.
#define TC_LOG2E 1.4426950408889634f
#define TC_LN2 0.6931471805599453f

// Two neighbouring elements of a dense row in device memory as one fragment register (zero past
// the last row), one 32-bit load: the host passes dense buffers at offset 0 (as stage_tile
// needs), D is even and `at` is even, so the pair is 4-byte aligned.
template <typename T> __device__ __forceinline__ unsigned pair_from(const T* m, i64 row, i64 rows, int at, int D) {
    if (row >= rows) return 0u;
    return *(const unsigned*)(m + row * D + at);
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

// The A fragments of 16 rows of a dense [rows, D] f32 matrix, for 3xTF32 products over D:
// frag[kd][i] is the element at row first + group + 8 (i % 2), column 8 kd + tig + 4 (i / 2)
// (zero past the last row), kept as f32 and split into TF32 parts where it is used.
template <typename T, int D>
__device__ __forceinline__ void load_a_rows(float (*frag)[4], const float* m, i64 first, i64 rows, int group, int tig) {
#pragma unroll
    for (int kd = 0; kd < D / 8; ++kd)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const i64 row = first + group + 8 * (i % 2);
            frag[kd][i] = row < rows ? m[row * D + 8 * kd + tig + 4 * (i / 2)] : 0.0f;
        }
}

// Flips the sign of every value of a block of A fragments: two 16-bit values a register (their
// sign bits), or one f32.
__device__ __forceinline__ void negate_value(unsigned& pair) { pair ^= 0x80008000u; }
__device__ __forceinline__ void negate_value(float& value) { value = -value; }
template <typename Reg, int MB, int KD>
__device__ __forceinline__ void negate_fragments(Reg (&frag)[MB][KD][4]) {
#pragma unroll
    for (int m = 0; m < MB; ++m)
#pragma unroll
        for (int kd = 0; kd < KD; ++kd)
#pragma unroll
            for (int i = 0; i < 4; ++i) negate_value(frag[m][kd][i]);
}

// Issues the cp.async copies of rows first .. first + R of a dense [rows, D] matrix into the
// shared tile [R][STRIDE] with the whole block, 16 bytes a copy, zeros past the last row; the
// caller commits and waits. A row of D values (a multiple of 8, so of 16 bytes in every dtype
// here) is whole 16-byte chunks, and every row starts 16-byte aligned: the host passes dense
// buffers at offset 0, and the padded tile rows are multiples of 16 bytes from a 16-byte aligned
// base. The block is TC_WARPS warps (the host launches them so), so a thread's copies are known
// at compile time: the same chunk c of rows TC_WARPS 32 / CHUNKS apart, from one 64-bit base
// with 32-bit offsets, each behind one compare (in a runtime-strided loop, with a 64-bit address
// and bound per copy, they took about a sixth of the forward's instructions).
template <typename T, int D, int R, typename S, int STRIDE>
__device__ __forceinline__ void stage_tile(S (*tile)[STRIDE], const T* m, i64 first, i64 rows) {
    static_assert(sizeof(S) == sizeof(T) && (STRIDE * sizeof(S)) % 16 == 0, "rows of 16-byte chunks");
    constexpr int PER = 16 / sizeof(T), CHUNKS = D / PER, THREADS = TC_WARPS * 32;
    static_assert(D % PER == 0, "rows are whole 16-byte chunks");
    const i64 remaining = rows - first;
    const int left = remaining < R ? (int)remaining : R;  // rows of this tile inside the matrix
    const int r0 = (int)threadIdx.x / CHUNKS, c = (int)threadIdx.x % CHUNKS;
    const T* src = m + (first + r0) * D + PER * c;  // this thread's first copy
    S* dst = &tile[r0][PER * c];
#pragma unroll
    for (int e0 = 0; e0 < R * CHUNKS; e0 += THREADS) {
        const int r = r0 + e0 / CHUNKS;  // the rows of a thread's copies step by THREADS / CHUNKS
        if ((R * CHUNKS) % THREADS == 0 || e0 + (int)threadIdx.x < R * CHUNKS) {
            const bool valid = r < left;
            cp_async_16(dst + (e0 / CHUNKS) * STRIDE, valid ? src + (e0 / CHUNKS) * D : m, valid);
        }
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

// Whether query i sees key j (without short-circuits, so that it compiles to selects).
__device__ __forceinline__ bool tc_visible(const AttentionParams& p, i64 i, i64 j) {
    return (i < p.sq) & (j < p.sk) & (!p.causal | (j <= i));
}

// Calls f(r, j, e) for every element of MB x NS accumulator fragments: block j of row block r,
// element e (row group + 8 (e / 2), column 8 j + 2 tig + (e & 1) of the block).
template <int MB, int NS, typename F>
__device__ __forceinline__ void each_element(F f) {
#pragma unroll
    for (int r = 0; r < MB; ++r)
#pragma unroll
        for (int j = 0; j < NS; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) f(r, j, e);
}

// Sets the elements of a warp's accumulator tiles (rows first + 16 r + group + 8 (e / 2),
// columns t0 + 8 j + 2 tig + (e & 1)) whose query does not see their key to `hidden`; rows are
// queries, or keys when `transposed`. Called only on tiles that tile_needs_mask picks, so the
// per-element test stays out of every other tile: inside the element loops it compiled to a
// branch around every element (a convergence barrier, a branch and a rejoin for each of the 64
// or 128 elements of a tile, whether the tile needed the mask or not).
template <int MB, int NS>
__device__ __forceinline__ void hide_masked(float (&s)[MB][NS][4], const AttentionParams& p, i64 first, i64 t0,
                                            bool transposed, float hidden) {
    const int lane = threadIdx.x % 32, group = lane >> 2, tig = lane & 3;
    each_element<MB, NS>([&](int r, int j, int e) {
        const i64 row = first + 16 * r + group + 8 * (e / 2), col = t0 + 8 * j + 2 * tig + (e & 1);
        const bool seen = transposed ? tc_visible(p, col, row) : tc_visible(p, row, col);
        s[r][j][e] = seen ? s[r][j][e] : hidden;
    });
}

// Whether a warp's rows first .. first + 16 MB - 1 need the mask against the columns t0 .. t0 +
// C - 1 of a tile (the other side's rows) of a pass whose rows are queries (or keys when
// `transposed`): only tiles that cross the end of the columns, or the causal diagonal, do;
// every other tile is all visible and skips the per-element test. Rows past their end need no
// mask: their operands are zeros, so their values stay finite, and they are never stored.
template <int MB, int C>
__device__ __forceinline__ bool tile_needs_mask(const AttentionParams& p, i64 first, i64 t0, bool transposed) {
    if (transposed) return t0 + C > p.sq || (p.causal && first + 16 * MB - 1 > t0);
    return t0 + C > p.sk || (p.causal && t0 + C - 1 > first);
}

// Whether a causal tile is hidden from every one of a warp's rows, which then skips it.
template <int MB, int C>
__device__ __forceinline__ bool tile_hidden(const AttentionParams& p, i64 first, i64 t0, bool transposed) {
    if (!p.causal) return false;
    return transposed ? t0 + C - 1 < first : t0 > first + 16 * MB - 1;
}

template <typename T, int D>
__device__ void attention_tc_fwd(const T* q, const T* k, const T* v, T* o, float* lse, AttentionParams p) {
    constexpr int KEYS = TcTile<T, D>::KEYS, MB = TcTile<T, D>::FWD_BLOCKS, ROWS = 16 * MB * TC_WARPS;
    constexpr int KD = D / TcOperand<T>::DEPTH, STRIDE = D + TcOperand<T>::PAD, NS = KEYS / 8, NO = D / 8;
    __shared__ __align__(16) typename TcOperand<T>::Stored ks[2][KEYS][STRIDE];
    __shared__ __align__(16) typename TcOperand<T>::Stored vs[2][KEYS][STRIDE];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane >> 2, tig = lane & 3;
    const i64 head = blockIdx.y, first = (i64)blockIdx.x * ROWS, mine = first + 16 * MB * warp;
    const T* kh = k + head * p.sk * D;
    const T* vh = v + head * p.sk * D;
    typename TcOperand<T>::Reg qf[MB][KD][4];
#pragma unroll
    for (int m = 0; m < MB; ++m) load_a_rows<T, D>(qf[m], q + head * p.sq * D, mine + 16 * m, p.sq, group, tig);
    // A negative scale is carried by Q's sign (negation is exact in every dtype), so that the
    // scores below are scaled by |scale|, and their maximum is the maximum of the scaled scores.
    if (p.scale < 0) negate_fragments(qf);
    // Scores s stay raw; in base 2 they are s * scale * log2(e), folded into the exponent's FFMA
    // (one instruction where a multiply and a subtraction were). m is the running max of the raw
    // scores, l the running sum. A zero scale becomes a tiny one (every probability rounds to the
    // same value), so that a masked score (-inf) never meets a zero factor.
    const float scale = fmaxf(fabsf((float)p.scale) * TC_LOG2E, 1e-30f), neg_inf = -NABLA_INF;
    float acc[MB][NO][4], m[MB][2], l[MB][2];
    zero_fragments(acc);
#pragma unroll
    for (int b = 0; b < MB; ++b) {
        m[b][0] = m[b][1] = neg_inf;
        l[b][0] = l[b][1] = 0.0f;
    }
    const i64 key_end = p.causal ? (first + ROWS < p.sk ? first + ROWS : p.sk) : p.sk;
    auto stage = [&](int b, i64 t0) {
        stage_tile<T, D, KEYS>(ks[b], kh, t0, p.sk);
        stage_tile<T, D, KEYS>(vs[b], vh, t0, p.sk);
    };
    double_buffered(0, key_end, KEYS, stage, [&](int b, i64 t0) {
        if (tile_hidden<MB, KEYS>(p, mine, t0, false)) return;
        float s[MB][NS][4];
        zero_fragments(s);
        mma_rows<T, MB, KD, NS, STRIDE>(s, qf, ks[b]);
        // Element e of block j: row mine + 16 r + group + 8 (e / 2), key t0 + 8 j + 2 tig + (e & 1).
        if (tile_needs_mask<MB, KEYS>(p, mine, t0, false)) hide_masked(s, p, mine, t0, false, neg_inf);
#pragma unroll
        for (int r = 0; r < MB; ++r) {
            float tile_max[2] = {neg_inf, neg_inf};
#pragma unroll
            for (int j = 0; j < NS; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) tile_max[e / 2] = fmaxf(tile_max[e / 2], s[r][j][e]);
            float alpha[2], row_sum[2] = {0.0f, 0.0f}, base[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float m_new = fmaxf(m[r][h], quad_max(tile_max[h]));
                alpha[h] = m[r][h] == neg_inf ? 0.0f : fast_exp2((m[r][h] - m_new) * scale);
                m[r][h] = m_new;
                base[h] = m_new == neg_inf ? 0.0f : m_new * scale;  // a row with nothing visible yet
            }
#pragma unroll
            for (int j = 0; j < NS; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    s[r][j][e] = fast_exp2(fmaf(s[r][j][e], scale, -base[e / 2]));  // exp2(-inf) = 0
                    row_sum[e / 2] += s[r][j][e];
                }
#pragma unroll
            for (int h = 0; h < 2; ++h) l[r][h] = l[r][h] * alpha[h] + quad_sum(row_sum[h]);
            // Once the rows' maxima settle, most tiles leave them all alone (alpha = 2^0 = 1): the
            // warp then skips rescaling its accumulators (a uniform branch around 4 NO multiplies
            // a lane). Multiplying by 1 changes nothing, so the skip never changes a result.
            if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
                for (int n = 0; n < NO; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[r][n][e] *= alpha[e / 2];
            }
        }
        mma_tile<T, MB, NS, NO, STRIDE>(acc, s, vs[b]);
    });
    T* oh = o + head * p.sq * D;
#pragma unroll
    for (int r = 0; r < MB; ++r) {
        const i64 rows_from = mine + 16 * r;
        store_rows<NO>(acc[r], rows_from, p.sq, group, tig,
                       [&](i64 at, float value, int h) { oh[at] = down<T>(value / l[r][h]); });
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const i64 row = rows_from + group + 8 * h;
            if (tig == 0 && row < p.sq) lse[head * p.sq + row] = (m[r][h] * scale + log2f(l[r][h])) * TC_LN2;
        }
    }
}

template <typename T, int D>
__device__ void attention_tc_bwd_dq(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                    const float* delta, T* dq, AttentionParams p) {
    constexpr int KEYS = TcTile<T, D>::DQ_KEYS, MB = TcTile<T, D>::DQ_BLOCKS, ROWS = 16 * MB * TC_WARPS;
    constexpr int KD = D / TcOperand<T>::DEPTH, STRIDE = D + TcOperand<T>::PAD, NS = KEYS / 8, NO = D / 8;
    __shared__ __align__(16) typename TcOperand<T>::Stored ks[2][KEYS][STRIDE];
    __shared__ __align__(16) typename TcOperand<T>::Stored vs[2][KEYS][STRIDE];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane >> 2, tig = lane & 3;
    const i64 head = blockIdx.y, first = (i64)blockIdx.x * ROWS, mine = first + 16 * MB * warp;
    const T* kh = k + head * p.sk * D;
    const T* vh = v + head * p.sk * D;
    typename TcOperand<T>::Reg qf[MB][KD][4], gf[MB][KD][4];
    float row_lse[MB][2], row_delta[MB][2];  // the log-sum-exp in base 2
    float acc[MB][NO][4];
#pragma unroll
    for (int r = 0; r < MB; ++r) {
        load_a_rows<T, D>(qf[r], q + head * p.sq * D, mine + 16 * r, p.sq, group, tig);
        load_a_rows<T, D>(gf[r], dout + head * p.sq * D, mine + 16 * r, p.sq, group, tig);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const i64 row = mine + 16 * r + group + 8 * h;
            row_lse[r][h] = row < p.sq ? lse[head * p.sq + row] * TC_LOG2E : 0.0f;
            row_delta[r][h] = row < p.sq ? delta[head * p.sq + row] : 0.0f;
        }
    }
    zero_fragments(acc);
    const float scale = (float)p.scale * TC_LOG2E;
    const i64 key_end = p.causal ? (first + ROWS < p.sk ? first + ROWS : p.sk) : p.sk;
    auto stage = [&](int b, i64 t0) {
        stage_tile<T, D, KEYS>(ks[b], kh, t0, p.sk);
        stage_tile<T, D, KEYS>(vs[b], vh, t0, p.sk);
    };
    double_buffered(0, key_end, KEYS, stage, [&](int b, i64 t0) {
        if (tile_hidden<MB, KEYS>(p, mine, t0, false)) return;
        float s[MB][NS][4], dp[MB][NS][4];
        scores_and_dp<T>(s, dp, qf, gf, ks[b], vs[b]);
        // dS = P (dP - delta); a hidden key's term, whatever it computed (even inf or NaN from a
        // score far above the row's log-sum-exp), is replaced by zero.
        each_element<MB, NS>([&](int r, int j, int e) {
            const int h = e / 2;
            s[r][j][e] = fast_exp2(s[r][j][e] * scale - row_lse[r][h]) * (dp[r][j][e] - row_delta[r][h]);
        });
        if (tile_needs_mask<MB, KEYS>(p, mine, t0, false)) hide_masked(s, p, mine, t0, false, 0.0f);
        mma_tile<T, MB, NS, NO, STRIDE>(acc, s, ks[b]);
    });
    T* gh = dq + head * p.sq * D;
    const float unscale = (float)p.scale;
#pragma unroll
    for (int r = 0; r < MB; ++r)
        store_rows<NO>(acc[r], mine + 16 * r, p.sq, group, tig,
                       [&](i64 at, float value, int) { gh[at] = down<T>(value * unscale); });
}

template <typename T, int D>
__device__ void attention_tc_bwd_dkdv(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                                      const float* delta, T* dk, T* dv, AttentionParams p) {
    constexpr int QUERIES = TcTile<T, D>::DKDV_QUERIES, MB = TcTile<T, D>::DKDV_BLOCKS, ROWS = 16 * MB * TC_WARPS;
    constexpr int KD = D / TcOperand<T>::DEPTH, STRIDE = D + TcOperand<T>::PAD, NS = QUERIES / 8, NO = D / 8;
    __shared__ __align__(16) typename TcOperand<T>::Stored qs[2][QUERIES][STRIDE];
    __shared__ __align__(16) typename TcOperand<T>::Stored gs[2][QUERIES][STRIDE];
    __shared__ float tile_lse[2][QUERIES], tile_delta[2][QUERIES];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane >> 2, tig = lane & 3;
    const i64 head = blockIdx.y, first = (i64)blockIdx.x * ROWS, mine = first + 16 * MB * warp;
    const T* qh = q + head * p.sq * D;
    const T* gh = dout + head * p.sq * D;
    typename TcOperand<T>::Reg kf[MB][KD][4], vf[MB][KD][4];
    float dk_acc[MB][NO][4], dv_acc[MB][NO][4];
#pragma unroll
    for (int r = 0; r < MB; ++r) {
        load_a_rows<T, D>(kf[r], k + head * p.sk * D, mine + 16 * r, p.sk, group, tig);
        load_a_rows<T, D>(vf[r], v + head * p.sk * D, mine + 16 * r, p.sk, group, tig);
    }
    zero_fragments(dk_acc);
    zero_fragments(dv_acc);
    const float scale = (float)p.scale * TC_LOG2E;
    auto stage = [&](int b, i64 t0) {
        stage_tile<T, D, QUERIES>(qs[b], qh, t0, p.sq);
        stage_tile<T, D, QUERIES>(gs[b], gh, t0, p.sq);
        if (threadIdx.x < QUERIES) {
            const i64 query = t0 + threadIdx.x;  // the log-sum-exp in base 2
            tile_lse[b][threadIdx.x] = query < p.sq ? lse[head * p.sq + query] * TC_LOG2E : 0.0f;
            tile_delta[b][threadIdx.x] = query < p.sq ? delta[head * p.sq + query] : 0.0f;
        }
    };
    // Queries before the block's first key see none of its keys when causal.
    double_buffered(p.causal ? first : 0, p.sq, QUERIES, stage, [&](int b, i64 t0) {
        if (tile_hidden<MB, QUERIES>(p, mine, t0, true)) return;
        // Element e of block j of r: key mine + 16 r + group + 8 (e / 2), query t0 + 8 j + 2 tig + (e & 1).
        float s[MB][NS][4], dp[MB][NS][4];
        scores_and_dp<T>(s, dp, kf, vf, qs[b], gs[b]);
        // Pᵀ; the query of element e of block j is t0 + col(j, e).
        auto col = [&](int j, int e) { return 8 * j + 2 * tig + (e & 1); };
        each_element<MB, NS>(
            [&](int r, int j, int e) { s[r][j][e] = fast_exp2(s[r][j][e] * scale - tile_lse[b][col(j, e)]); });
        // A hidden pair's term, whatever it computed (even inf from a score far above the query's
        // log-sum-exp), is zero, and so is its dSᵀ below.
        if (tile_needs_mask<MB, QUERIES>(p, mine, t0, true)) hide_masked(s, p, mine, t0, true, 0.0f);
        each_element<MB, NS>(  // dSᵀ
            [&](int r, int j, int e) { dp[r][j][e] = s[r][j][e] * (dp[r][j][e] - tile_delta[b][col(j, e)]); });
        mma_tile<T, MB, NS, NO, STRIDE>(dv_acc, s, gs[b]);
        mma_tile<T, MB, NS, NO, STRIDE>(dk_acc, dp, qs[b]);
    });
    T* kg = dk + head * p.sk * D;
    T* vg = dv + head * p.sk * D;
    const float unscale = (float)p.scale;
#pragma unroll
    for (int r = 0; r < MB; ++r) {
        store_rows<NO>(dk_acc[r], mine + 16 * r, p.sk, group, tig,
                       [&](i64 at, float value, int) { kg[at] = down<T>(value * unscale); });
        store_rows<NO>(dv_acc[r], mine + 16 * r, p.sk, group, tig, [&](i64 at, float value, int) { vg[at] = down<T>(value); });
    }
}

#define ATTENTION_TC_QUERY_PASSES(T, tname, D) \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attention_tc_fwd_##tname##_d##D( \
        const T* q, const T* k, const T* v, T* o, float* lse, AttentionParams p) { \
        attention_tc_fwd<T, D>(q, k, v, o, lse, p); \
    } \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attention_tc_bwd_dq_##tname##_d##D( \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dq, \
        AttentionParams p) { \
        attention_tc_bwd_dq<T, D>(q, k, v, dout, lse, delta, dq, p); \
    }
#define ATTENTION_TC_KEY_PASS(T, tname, D) \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) attention_tc_bwd_dkdv_##tname##_d##D( \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk, T* dv, \
        AttentionParams p) { \
        attention_tc_bwd_dkdv<T, D>(q, k, v, dout, lse, delta, dk, dv, p); \
    }
#define ATTENTION_TC(T, tname, D) ATTENTION_TC_QUERY_PASSES(T, tname, D) ATTENTION_TC_KEY_PASS(T, tname, D)
#define ATTENTION_TC_DIMS(T, tname) \
    ATTENTION_TC(T, tname, 16) ATTENTION_TC(T, tname, 32) ATTENTION_TC(T, tname, 64) ATTENTION_TC(T, tname, 128)
ATTENTION_TC_DIMS(f16, f16) ATTENTION_TC_DIMS(bf16, bf16)
// f32 at D = 128 has no dK/dV pass here: its K and V fragments and two accumulators alone are
// 256 registers a thread, so it spills; the host runs version 1's (attention.cu) instead, which
// reads the same log-sum-exp and delta.
ATTENTION_TC(float, f32, 16) ATTENTION_TC(float, f32, 32) ATTENTION_TC(float, f32, 64)
ATTENTION_TC_QUERY_PASSES(float, f32, 128)
