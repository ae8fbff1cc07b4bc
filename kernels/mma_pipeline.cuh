// Versions 2 and 3 of the tensor-core GEMM (version 1: mma_gemm.cuh), for f16/bf16 products
// whose operands are each dense along one axis, as every linear layer's three products are: x Wᵀ
// (both operands contiguous along the depth k), dY W (B contiguous along n) and dYᵀ x (A
// contiguous along m). Version 1 moves every element through registers one at a time, widening
// it to f32 and narrowing it back with a bounds check each (on an H200: 17 TFLOP/s at 4096³,
// 2.3% of cuBLAS); here 16-byte chunks go from global to shared memory by `cp.async`, untouched,
// and fragments come out of shared memory by `ldmatrix`.
//
// Tiling: a 256-thread block (8 warps, 2 down x 4 across) computes a 128 x 128 tile of C, BK
// deep per stage, in a 3-stage pipeline (tiles k+1 and k+2 are in flight while tile k is
// multiplied). A warp owns a 64 x 32 sub-tile: per 16-deep slice, 4 ldmatrix.x4 for A, 2 for B
// and 16 mma.m16n8k16 with f32 accumulators.
// - Version 2: BK = 32, 16 KiB a stage, 48 KiB of static shared memory in all (on an H200:
//   277 TFLOP/s at 4096³, 38% of cuBLAS).
// - Version 3: BK = 64, 32 KiB a stage, 96 KiB of dynamic shared memory (the host raises the
//   kernel's limit past the default 48 KiB; two blocks still fit an H100/H200 SM's 228 KiB).
//   A stage's fixed costs (the wait, the barrier, the copies' bookkeeping) are spread over 64
//   products a warp instead of 32.
//
// Shared layouts: an operand contiguous along k is stored [128 rows][BK k] ("k-major"), one
// contiguous along m (A) or n (B) is stored [BK k][128] ("mn-major"); either way a row is cut
// into 16-byte chunks whose position is XOR-swizzled by the row, so that the 8 rows one
// ldmatrix reads fall on distinct banks without padding. ldmatrix gives the m16n8k16
// fragments of a k-major tile directly and of an mn-major tile with .trans.
//
// The host picks these versions only when every chunk is whole and aligned: the contiguous axis
// has stride 1, the other strides, the offsets and the batch strides are multiples of 8
// elements, and the contiguous extent (k for k-major, m or n for mn-major) is a multiple of 8;
// chunks past the edges are zero-filled by cp.async. Bound: the tensor pipes for large
// problems; mma.sync reaches about 60-70% of an H100's dense peak, wgmma the rest.
#pragma once
#include "tiled_gemm.cuh"

#define PIPE_BM 128
#define PIPE_BN 128
#define PIPE_STAGES 3
#define PIPE_THREADS 256
// Two blocks a multiprocessor (at most 128 registers a thread; version 2: 96 KiB of shared
// memory, version 3: 192 KiB): with one, 8 warps left the tensor pipes waiting on shared-memory
// latency (ncu on an H200, session 12: 170 registers, SM throughput 34%); at 128 registers
// ptxas keeps every value in registers (the CI's register test holds it to no spills).
#define PIPE_BLOCKS_PER_SM 2
#define PIPE_V2_BK 32
#define PIPE_V3_BK 64
// Version 3 is launched with 2 x PIPE_STAGES x PIPE_BM x PIPE_V3_BK 16-bit values of dynamic
// shared memory (TENSOR_CORE_V3_SHARED_BYTES in src/cuda/gemm.rs; a test holds the two together).

// Offset, in elements, of the 8-element chunk holding (row, 8 chunk) of a tile whose rows hold
// `ROW_LEN` elements: rows of 32 elements (4 chunks: version 2's k-major tiles) swizzle by bits
// 1-2 of the row, longer rows (8 or 16 chunks) by bits 0-2.
template <int ROW_LEN>
__device__ __forceinline__ int pipe_chunk(int row, int chunk) {
    const int swizzle = ROW_LEN == 32 ? (row >> 1) & 3 : row & 7;
    return row * ROW_LEN + ((chunk ^ swizzle) << 3);
}

// One operand's side of the pipeline, BK deep a stage. K_MAJOR: element (i, k) of the operand (i
// a row of A or a column of B) is at base[i * stride_i + k]; else at base[k * stride_k + i].
// `extent` is the operand's m (A) or n (B).
template <bool K_MAJOR, int BK>
struct PipeOperand {
    static constexpr int ROW_LEN = K_MAJOR ? BK : PIPE_BM;
    // 16-byte chunks a thread copies a stage (2 or 4), and the rows of the shared tile between
    // one of them and the next: a thread's chunks are threadIdx.x + PIPE_THREADS s, the same
    // chunk of rows that far apart, so they share their swizzle and, k-major, their depth;
    // mn-major, their i.
    static constexpr int CHUNKS = PIPE_BM * BK / 8 / PIPE_THREADS;
    static constexpr int ROWS_APART = PIPE_THREADS * 8 / ROW_LEN;
    // A chunk's values, and the elements between a thread's chunks in a stage.
    static constexpr int CHUNK = 8, DST_APART = PIPE_THREADS * 8;
    // Where a stage's chunk c (a thread's first: c = threadIdx.x) lies: its tile row (an index i
    // k-major, a depth mn-major), its chunk within the row, and its swizzled offset.
    __device__ static int chunk_row(unsigned c) { return c / (ROW_LEN / 8); }
    __device__ static int chunk_col(unsigned c) { return c % (ROW_LEN / 8); }
    __device__ static int chunk_dst(int row, int col) { return pipe_chunk<ROW_LEN>(row, col); }
    // This thread's copies of every stage of one tile of C. Their addresses are computed once a
    // tile and advanced by a stage's depth after each stage, and whether a chunk's i lies inside
    // the operand is decided once, so a copy costs its depth test, a select and a 64-bit add.
    // (Computed from scratch every stage, with 64-bit products and compares, version 2's copies
    // took about 110 of its step loop's 170 instructions and left the loop bound by issue:
    // benches/sass_mix.py.)
    template <typename T>
    struct Loader {
        const T* safe;    // a valid address (the operand's first element) for copies that read nothing
        const T* src;     // chunk 0's source in the next stage
        i64 step;         // elements from one stage's chunk to the next stage's
        i64 apart;        // elements from chunk s's source to chunk s + 1's
        int dst;          // chunk 0's offset in a stage, in elements (chunk s: + s PIPE_THREADS 8)
        int dk;           // chunk 0's depth relative to the stage's first
        unsigned inside;  // bit s: chunk s's i lies inside the operand
        __device__ Loader(const T* b, i64 stride, i64 i0, i64 extent, i64 k_begin)
            : safe(b), step(K_MAJOR ? (i64)BK : BK * stride), apart(ROWS_APART * stride), inside(0) {
            const int c = threadIdx.x, row = c / (ROW_LEN / 8), chunk = c % (ROW_LEN / 8);
            const int di = K_MAJOR ? row : 8 * chunk;
            dk = K_MAJOR ? 8 * chunk : row;
            dst = pipe_chunk<ROW_LEN>(row, chunk);
#pragma unroll
            for (int s = 0; s < CHUNKS; ++s) {
                inside |= (unsigned)(i0 + di + (K_MAJOR ? ROWS_APART * s : 0) < extent) << s;
            }
            const i64 i = i0 + di < extent ? i0 + di : 0, k = k_begin + dk;
            src = K_MAJOR ? b + i * stride + k : b + k * stride + i;
        }
        // Copies this thread's chunks of the stage at depth k0 into `tile` (zeros past the
        // operand's edges and from `depth` on) and moves on to the next stage.
        __device__ void issue(unsigned short* tile, i64 k0, i64 depth) {
            const int left = depth - k0 < BK ? (int)(depth - k0) : BK;  // depths in this stage
#pragma unroll
            for (int s = 0; s < CHUNKS; ++s) {
                const bool valid = (inside >> s & 1) && dk + (K_MAJOR ? 0 : ROWS_APART * s) < left;
                cp_async_16(tile + dst + PIPE_THREADS * 8 * s, valid ? src + s * apart : safe, valid);
            }
            src += step;
        }
    };
    // The four registers of the 16 x 16 block at operand rows i..i+15 and depth kk..kk+15, as
    // ldmatrix.x4 gives them: matrix j covers rows i + 8 (j & 1) (A order: a0..a3) when
    // `a_order`, else rows i + 8 (j >> 1) (B order: b0, b1 of rows i..i+7, then of i+8..i+15);
    // depth kk + 8 (j >> 1) or kk + 8 (j & 1) correspondingly.
    __device__ static void fragments(unsigned r[4], const unsigned short* tile, int i, int kk, bool a_order) {
        const int lane = threadIdx.x % 32, j = lane >> 3, within = lane & 7;
        const int i_block = a_order ? (j & 1) : (j >> 1), k_block = a_order ? (j >> 1) : (j & 1);
        if (K_MAJOR) {
            const int row = i + 8 * i_block + within;
            ldmatrix_x4(r, tile + pipe_chunk<ROW_LEN>(row, (kk >> 3) + k_block));
        } else {
            const int row = kk + 8 * k_block + within;
            ldmatrix_x4_trans(r, tile + pipe_chunk<ROW_LEN>(row, (i >> 3) + i_block));
        }
    }
};

// A tile's two loaders: anything with `issue(tile, k0, depth)`, which copies its thread's part
// of the stage at depth k0 (zeros from `depth` on) and moves on to the next stage.
template <typename LoaderA, typename LoaderB>
struct PipeLoaders {
    LoaderA a;
    LoaderB b;
};

// The pipeline for every tile of C a block owns (for_each_tile over problem p, whose views
// store C). `loaders(q, row0, col0, k_begin)` gives a tile's PipeLoaders; OpA and OpB
// (PipeOperand) say how the stages are laid out in shared memory, where PIPE_STAGES stages of
// A, then as many of B, each PIPE_BM x BK elements, are static (DYNAMIC false) or dynamic.
template <typename T, int BK, bool DYNAMIC, typename OpA, typename OpB, typename Problem, typename MakeLoaders>
__device__ void mma_pipeline(const Problem& p, MakeLoaders loaders) {
    constexpr int TILE = PIPE_BM * BK;  // elements of one operand's stage
    constexpr int MI = 4, NI = 4;       // a warp's 64 x 32: 4 x 4 m16n8 fragments
    // Version 2's stages are two static arrays: taken through a pointer instead, ptxas spills
    // its m-major layouts at 128 registers.
    __shared__ __align__(16) unsigned short fixed_a[DYNAMIC ? 1 : PIPE_STAGES][DYNAMIC ? 8 : TILE];
    __shared__ __align__(16) unsigned short fixed_b[DYNAMIC ? 1 : PIPE_STAGES][DYNAMIC ? 8 : TILE];
    NABLA_DYNAMIC_SHARED(unsigned short, dynamic_stages);
    unsigned short(*as)[TILE] = DYNAMIC ? (unsigned short(*)[TILE])dynamic_stages : (unsigned short(*)[TILE])fixed_a;
    unsigned short(*bs)[TILE] =
        DYNAMIC ? (unsigned short(*)[TILE])(dynamic_stages + PIPE_STAGES * TILE) : (unsigned short(*)[TILE])fixed_b;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int group = lane >> 2, tig = lane & 3;
    const int warp_row = (warp / 4) * 64, warp_col = (warp % 4) * 32;
    const i64 rows = p.rows(), cols = p.cols();
    typedef decltype(p.group(0, 0)) View;
    for_each_tile<PIPE_BM, PIPE_BN, BK>(p, [&](const View& q, i64 row0, i64 col0, i64 k_begin, i64 k_end) {
        const int tiles = (int)((k_end - k_begin + BK - 1) / BK);
        auto tile_loaders = loaders(q, row0, col0, k_begin);
        auto& load_a = tile_loaders.a;
        auto& load_b = tile_loaders.b;
        // Stages are issued in order, one a turn: stage t's copies go to buffer t % PIPE_STAGES.
        int fill = 0;
        i64 fill_k = k_begin;
        auto load = [&]() {
            load_a.issue(as[fill], fill_k, k_end);
            load_b.issue(bs[fill], fill_k, k_end);
            fill = fill + 1 == PIPE_STAGES ? 0 : fill + 1;
            fill_k += BK;
        };
        float acc[MI][NI][4];
        zero_fragments(acc);
#pragma unroll
        for (int s = 0; s < PIPE_STAGES - 1; ++s) {
            if (s < tiles) load();
            cp_async_commit();  // one group per tile, empty ones included, so the count is exact
        }
        int use = 0;  // the buffer of stage t
        for (int t = 0; t < tiles; ++t) {
            cp_async_wait<PIPE_STAGES - 2>();  // tile t has landed (this thread's part of it)
            __syncthreads();                   // ...every thread's, and tile t - 1 is consumed
            if (t + PIPE_STAGES - 1 < tiles) load();
            cp_async_commit();
            const unsigned short* a_tile = as[use];
            const unsigned short* b_tile = bs[use];
            use = use + 1 == PIPE_STAGES ? 0 : use + 1;
            // Two 16-deep slices a turn: version 2's whole stage; version 3's four unrolled
            // spill its m-major layouts at 128 registers (ptxas hoists every slice's addresses).
#pragma unroll 2
            for (int kk = 0; kk < BK; kk += 16) {
                unsigned fa[MI][4], fb[NI / 2][4];
#pragma unroll
                for (int i = 0; i < MI; ++i) OpA::fragments(fa[i], a_tile, warp_row + 16 * i, kk, true);
#pragma unroll
                for (int j = 0; j < NI / 2; ++j) OpB::fragments(fb[j], b_tile, warp_col + 16 * j, kk, false);
#pragma unroll
                for (int i = 0; i < MI; ++i)
#pragma unroll
                    for (int j = 0; j < NI; ++j) {
                        const unsigned b[2] = {fb[j / 2][2 * (j % 2)], fb[j / 2][2 * (j % 2) + 1]};
                        mma_16816<T>(acc[i][j], fa[i], b);
                    }
            }
        }
        cp_async_wait<0>();
        __syncthreads();  // the next tile of the grid-stride loop reuses the stages
        store_fragments(q, acc, row0 + warp_row, col0 + warp_col, rows, cols, group, tig);
    });
}

// The matrix product for one block, operands read through the view's pointers and strides.
template <typename T, bool A_K_MAJOR, bool B_K_MAJOR, int BK, bool DYNAMIC, typename Problem>
__device__ void mma_pipelined_gemm(const Problem& p) {
    typedef PipeOperand<A_K_MAJOR, BK> OpA;
    typedef PipeOperand<B_K_MAJOR, BK> OpB;
    typedef typename OpA::template Loader<T> LoaderA;
    typedef typename OpB::template Loader<T> LoaderB;
    const i64 rows = p.rows(), cols = p.cols();
    // (NVRTC takes a generic lambda's call operator for a host function: the view's type is spelled)
    typedef decltype(p.group(0, 0)) View;
    mma_pipeline<T, BK, DYNAMIC, OpA, OpB>(p, [&](const View& q, i64 row0, i64 col0, i64 k_begin) {
        const i64 a_stride = A_K_MAJOR ? q.a_rs : q.a_cs, b_stride = B_K_MAJOR ? q.b_cs : q.b_rs;
        return PipeLoaders<LoaderA, LoaderB>{LoaderA(q.pa, a_stride, row0, rows, k_begin),
                                             LoaderB(q.pb, b_stride, col0, cols, k_begin)};
    });
}
