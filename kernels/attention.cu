// Fused scaled dot-product attention, softmax(scale · Q Kᵀ + mask) V, forward and backward,
// flash-style: the sq x sk score matrix never reaches device memory.
//
// Layout: every (batch, head) pair is one of `bh` independent heads; Q and O are [bh, sq, D],
// K and V [bh, sk, D], all dense; `lse` holds each query's log-sum-exp of its scaled scores (in
// the accumulate type), which the backward uses to recompute the probabilities. With `causal`,
// query i sees keys 0..=i (top-left aligned, as PyTorch's is_causal).
//
// Tiling (version 1, FP32 pipes, no tensor cores): a block of 8 warps owns 8 rows (one per
// warp); it walks the other operand in tiles of 32 rows staged in shared memory (row stride
// D + 1, so lane j reading row j hits its own bank). Lane j computes the full D-long dot
// product of the warp's row with tile row j, the warp keeps the online softmax (running max m
// and sum l, rescaling its accumulator by exp(m_old - m_new)), and each lane accumulates its
// D/32 output columns with the tile's probabilities broadcast by shuffles.
// - attention_fwd:       per query: O = Σ_j softmax_j V_j, lse = m + log l.
// - attention_bwd_prep:  per query: delta = Σ_d dO·O (the softmax backward's row term).
// - attention_bwd_dq:    per query, over key tiles: p = exp(s - lse), dp = dO·V_j,
//                        ds = p (dp - delta), dQ = scale Σ_j ds K_j.
// - attention_bwd_dkdv:  per key, over query tiles: dV = Σ_i p dO_i, dK = scale Σ_i ds Q_i.
// Bound: each score costs D shared-memory reads of the staged tile, so these kernels are
// shared-memory bound at roughly a quarter of the FP32 pipe; tensor-core tiles (mma.sync) are
// the next version (issue 12).
#include "nabla.cuh"

#define ATTN_WARPS 8
#define ATTN_TILE 32

template <typename A>
__device__ __forceinline__ A warp_max_all(A v) {
    for (int d = 16; d > 0; d >>= 1) {
        const A o = __shfl_xor_sync(0xffffffffu, v, d);
        v = o > v ? o : v;
    }
    return v;
}

template <typename A>
__device__ __forceinline__ A warp_sum_all(A v) {
    for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
    return v;
}

// Loads rows first..first+ATTN_TILE of a [rows, D] matrix into tile[ATTN_TILE][stride] (zeros
// past the end), with the whole block.
template <typename T, typename A, int D, int STRIDE>
__device__ __forceinline__ void load_tile(A (*tile)[STRIDE], const T* m, i64 first, i64 rows) {
    for (int e = threadIdx.x; e < ATTN_TILE * D; e += blockDim.x) {
        const int r = e / D, d = e % D;
        tile[r][d] = first + r < rows ? (A)up(m[(first + r) * D + d]) : A(0);
    }
}

// Whether query i sees key j.
__device__ __forceinline__ bool visible(const AttentionParams& p, i64 i, i64 j) {
    return i < p.sq && j < p.sk && (!p.causal || j <= i);
}

template <typename T, int D>
__device__ void attention_fwd(const T* q, const T* k, const T* v, T* o, typename Acc<T>::type* lse,
                              AttentionParams p) {
    typedef typename Acc<T>::type A;
    constexpr int PER = (D + 31) / 32;
    __shared__ A ks[ATTN_TILE][D + 1];
    __shared__ A vs[ATTN_TILE][D + 1];
    __shared__ A qs[ATTN_WARPS][D];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const i64 head = blockIdx.y, row = (i64)blockIdx.x * ATTN_WARPS + warp;
    const T* qh = q + head * p.sq * D;
    const T* kh = k + head * p.sk * D;
    const T* vh = v + head * p.sk * D;
    const A scale = (A)p.scale, neg_inf = -(A)NABLA_INF;
    for (int d = lane; d < D; d += 32) qs[warp][d] = row < p.sq ? (A)up(qh[row * D + d]) * scale : A(0);
    // The keys any row of this block can see.
    const i64 last_row = ((i64)blockIdx.x + 1) * ATTN_WARPS - 1;
    const i64 key_end = p.causal ? (last_row + 1 < p.sk ? last_row + 1 : p.sk) : p.sk;
    A m = neg_inf, l = A(0), acc[PER];
    for (int i = 0; i < PER; ++i) acc[i] = A(0);
    for (i64 t0 = 0; t0 < key_end; t0 += ATTN_TILE) {
        __syncthreads();  // the previous tile is consumed (and qs written, the first time)
        load_tile<T, A, D, D + 1>(ks, kh, t0, p.sk);
        load_tile<T, A, D, D + 1>(vs, vh, t0, p.sk);
        __syncthreads();
        A s = neg_inf;
        if (visible(p, row, t0 + lane)) {
            A dot = A(0);
            for (int d = 0; d < D; ++d) dot += qs[warp][d] * ks[lane][d];
            s = dot;
        }
        const A tile_max = warp_max_all(s);
        const A m_new = tile_max > m ? tile_max : m;
        if (m_new == neg_inf) continue;  // warp-uniform: nothing visible to this row yet
        const A pj = s == neg_inf ? A(0) : m_exp(s - m_new);
        const A alpha = m == neg_inf ? A(0) : m_exp(m - m_new);
        l = l * alpha + warp_sum_all(pj);
        for (int i = 0; i < PER; ++i) acc[i] *= alpha;
        for (int j = 0; j < ATTN_TILE; ++j) {
            const A pb = __shfl_sync(0xffffffffu, pj, j);
            for (int i = 0; i < PER; ++i) {
                const int d = lane + 32 * i;
                if (d < D) acc[i] += pb * vs[j][d];
            }
        }
        m = m_new;
    }
    if (row < p.sq) {
        for (int i = 0; i < PER; ++i) {
            const int d = lane + 32 * i;
            if (d < D) o[(head * p.sq + row) * D + d] = down<T>(acc[i] / l);
        }
        if (lane == 0) lse[head * p.sq + row] = m + m_log(l);
    }
}

// delta_i = Σ_d dO[i, d] O[i, d], one warp per query.
template <typename T, int D>
__device__ void attention_bwd_prep(const T* o, const T* dout, typename Acc<T>::type* delta, AttentionParams p) {
    typedef typename Acc<T>::type A;
    const int lane = threadIdx.x & 31;
    const i64 row = ((i64)blockIdx.x * ATTN_WARPS + (threadIdx.x >> 5));
    if (row >= p.bh * p.sq) return;  // warp-uniform
    A sum = A(0);
    for (int d = lane; d < D; d += 32) sum += (A)up(o[row * D + d]) * (A)up(dout[row * D + d]);
    sum = warp_sum_all(sum);
    if (lane == 0) delta[row] = sum;
}

template <typename T, int D>
__device__ void attention_bwd_dq(const T* q, const T* k, const T* v, const T* dout,
                                 const typename Acc<T>::type* lse, const typename Acc<T>::type* delta, T* dq,
                                 AttentionParams p) {
    typedef typename Acc<T>::type A;
    constexpr int PER = (D + 31) / 32;
    __shared__ A ks[ATTN_TILE][D + 1];
    __shared__ A vs[ATTN_TILE][D + 1];
    __shared__ A qs[ATTN_WARPS][D];
    __shared__ A dos[ATTN_WARPS][D];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const i64 head = blockIdx.y, row = (i64)blockIdx.x * ATTN_WARPS + warp;
    const bool active = row < p.sq;
    const i64 at = head * p.sq + row;
    const A scale = (A)p.scale;
    for (int d = lane; d < D; d += 32) {
        qs[warp][d] = active ? (A)up(q[at * D + d]) * scale : A(0);
        dos[warp][d] = active ? (A)up(dout[at * D + d]) : A(0);
    }
    const A row_lse = active ? lse[at] : A(0), row_delta = active ? delta[at] : A(0);
    const i64 last_row = ((i64)blockIdx.x + 1) * ATTN_WARPS - 1;
    const i64 key_end = p.causal ? (last_row + 1 < p.sk ? last_row + 1 : p.sk) : p.sk;
    A acc[PER];
    for (int i = 0; i < PER; ++i) acc[i] = A(0);
    for (i64 t0 = 0; t0 < key_end; t0 += ATTN_TILE) {
        __syncthreads();
        load_tile<T, A, D, D + 1>(ks, k + head * p.sk * D, t0, p.sk);
        load_tile<T, A, D, D + 1>(vs, v + head * p.sk * D, t0, p.sk);
        __syncthreads();
        A ds = A(0);
        if (visible(p, row, t0 + lane)) {
            A s = A(0), dp = A(0);
            for (int d = 0; d < D; ++d) {
                s += qs[warp][d] * ks[lane][d];
                dp += dos[warp][d] * vs[lane][d];
            }
            ds = m_exp(s - row_lse) * (dp - row_delta);
        }
        for (int j = 0; j < ATTN_TILE; ++j) {
            const A db = __shfl_sync(0xffffffffu, ds, j);
            for (int i = 0; i < PER; ++i) {
                const int d = lane + 32 * i;
                if (d < D) acc[i] += db * ks[j][d];
            }
        }
    }
    if (active) {
        for (int i = 0; i < PER; ++i) {
            const int d = lane + 32 * i;
            if (d < D) dq[at * D + d] = down<T>(acc[i] * scale);
        }
    }
}

template <typename T, int D>
__device__ void attention_bwd_dkdv(const T* q, const T* k, const T* v, const T* dout,
                                   const typename Acc<T>::type* lse, const typename Acc<T>::type* delta, T* dk,
                                   T* dv, AttentionParams p) {
    typedef typename Acc<T>::type A;
    constexpr int PER = (D + 31) / 32;
    __shared__ A qs[ATTN_TILE][D + 1];
    __shared__ A dos[ATTN_TILE][D + 1];
    __shared__ A tile_lse[ATTN_TILE];
    __shared__ A tile_delta[ATTN_TILE];
    __shared__ A krow[ATTN_WARPS][D];
    __shared__ A vrow[ATTN_WARPS][D];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const i64 head = blockIdx.y, key = (i64)blockIdx.x * ATTN_WARPS + warp;
    const bool active = key < p.sk;
    const i64 at = head * p.sk + key;
    const A scale = (A)p.scale;
    for (int d = lane; d < D; d += 32) {
        krow[warp][d] = active ? (A)up(k[at * D + d]) : A(0);
        vrow[warp][d] = active ? (A)up(v[at * D + d]) : A(0);
    }
    // Queries before this block's first key see none of its keys when causal.
    const i64 first_key = (i64)blockIdx.x * ATTN_WARPS;
    const i64 query_start = p.causal ? first_key / ATTN_TILE * ATTN_TILE : 0;
    A dk_acc[PER], dv_acc[PER];
    for (int i = 0; i < PER; ++i) dk_acc[i] = dv_acc[i] = A(0);
    const T* qh = q + head * p.sq * D;
    const T* doh = dout + head * p.sq * D;
    for (i64 t0 = query_start; t0 < p.sq; t0 += ATTN_TILE) {
        __syncthreads();
        load_tile<T, A, D, D + 1>(qs, qh, t0, p.sq);
        load_tile<T, A, D, D + 1>(dos, doh, t0, p.sq);
        if (threadIdx.x < ATTN_TILE) {
            const i64 query = t0 + threadIdx.x;
            tile_lse[threadIdx.x] = query < p.sq ? lse[head * p.sq + query] : A(0);
            tile_delta[threadIdx.x] = query < p.sq ? delta[head * p.sq + query] : A(0);
        }
        __syncthreads();
        A prob = A(0), ds = A(0);
        if (active && visible(p, t0 + lane, key)) {
            A s = A(0), dp = A(0);
            for (int d = 0; d < D; ++d) {
                s += qs[lane][d] * krow[warp][d];
                dp += dos[lane][d] * vrow[warp][d];
            }
            prob = m_exp(s * scale - tile_lse[lane]);
            ds = prob * (dp - tile_delta[lane]);
        }
        for (int j = 0; j < ATTN_TILE; ++j) {
            const A pb = __shfl_sync(0xffffffffu, prob, j);
            const A db = __shfl_sync(0xffffffffu, ds, j);
            for (int i = 0; i < PER; ++i) {
                const int d = lane + 32 * i;
                if (d < D) {
                    dv_acc[i] += pb * dos[j][d];
                    dk_acc[i] += db * qs[j][d];
                }
            }
        }
    }
    if (active) {
        for (int i = 0; i < PER; ++i) {
            const int d = lane + 32 * i;
            if (d < D) {
                dk[at * D + d] = down<T>(dk_acc[i] * scale);
                dv[at * D + d] = down<T>(dv_acc[i]);
            }
        }
    }
}

#define ATTENTION(T, tname, D) \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attention_fwd_##tname##_d##D( \
        const T* q, const T* k, const T* v, T* o, Acc<T>::type* lse, AttentionParams p) { \
        attention_fwd<T, D>(q, k, v, o, lse, p); \
    } \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attention_bwd_prep_##tname##_d##D( \
        const T* o, const T* dout, Acc<T>::type* delta, AttentionParams p) { \
        attention_bwd_prep<T, D>(o, dout, delta, p); \
    } \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attention_bwd_dq_##tname##_d##D( \
        const T* q, const T* k, const T* v, const T* dout, const Acc<T>::type* lse, const Acc<T>::type* delta, \
        T* dq, AttentionParams p) { \
        attention_bwd_dq<T, D>(q, k, v, dout, lse, delta, dq, p); \
    } \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attention_bwd_dkdv_##tname##_d##D( \
        const T* q, const T* k, const T* v, const T* dout, const Acc<T>::type* lse, const Acc<T>::type* delta, \
        T* dk, T* dv, AttentionParams p) { \
        attention_bwd_dkdv<T, D>(q, k, v, dout, lse, delta, dk, dv, p); \
    }
#define ATTENTION_DIMS(T, tname) ATTENTION(T, tname, 16) ATTENTION(T, tname, 32) ATTENTION(T, tname, 64)
ATTENTION_DIMS(float, f32) ATTENTION_DIMS(f16, f16) ATTENTION_DIMS(bf16, bf16) ATTENTION_DIMS(double, f64)
ATTENTION(float, f32, 128) ATTENTION(f16, f16, 128) ATTENTION(bf16, bf16, 128)
