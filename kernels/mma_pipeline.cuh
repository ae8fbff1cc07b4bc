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
// f32 operands run on the same pipeline on the TF32 tensor cores (m16n8k8, 8 deep a slice):
// rounded to TF32 (set_float32_matmul_precision "high"), or in 3xTF32 (version 5 of the f32
// GEMM: each value split into two TF32 parts, three products for one, f32's accuracy). Their
// stages hold half as many depths (16-byte chunks of 4 values); ldmatrix still reads k-major
// fragments (a b16 8 x 8 matrix is an 8 x 4 one of 32-bit values, lane t getting word t % 4 of
// row t / 4: the TF32 fragment layout), mn-major ones are read a value at a time from rows
// padded instead of swizzled (PipeOperand::SCALAR_READS). Per 8-deep slice a warp issues 16
// products (TF32) or 48 (3xTF32, plus 5 instructions to split each of its 24 fragment values).
//
// The host picks these versions only when every chunk is whole and aligned: the contiguous axis
// has stride 1, the other strides, the offsets and the batch strides are multiples of a chunk
// (8 16-bit or 4 f32 elements), and the contiguous extent (k for k-major, m or n for mn-major)
// is a multiple of a chunk; chunks past the edges are zero-filled by cp.async. Bound: the tensor
// pipes for large problems; mma.sync reaches about 60-70% of an H100's dense peak, wgmma the
// rest (3xTF32: a third of the TF32 peak, 165 of 495 TFLOP/s dense on an H100 SXM, against the
// FP32 pipes' 67).
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
// f32 operands (TF32, 3xTF32) take stages half as deep (PIPE_V2_BK / 2, PIPE_V3_BK / 2 values),
// always in dynamic shared memory: 2 x PIPE_STAGES x depth x (PIPE_BM + PIPE_F32_ROW_PAD) f32
// values (f32_pipe_shared_bytes), an mn-major tile's rows being padded (PipeOperand).
#define PIPE_F32_ROW_PAD 8

// Offset, in elements, of the 16-byte chunk holding (row, chunk) of a tile whose rows hold
// ROW_CHUNKS chunks of CHUNK elements, XOR-swizzled by the row so that the 8 rows one ldmatrix
// reads, at one chunk column, fall on 8 distinct 16-byte bank groups: rows of 4 chunks
// (version 2's k-major tiles: 32 16-bit or 16 f32 values) by bits 1-2 of the row, rows of 8 or
// more chunks by bits 0-2.
template <int ROW_CHUNKS, int CHUNK>
__device__ __forceinline__ int pipe_chunk(int row, int chunk) {
    const int swizzle = ROW_CHUNKS == 4 ? (row >> 1) & 3 : row & 7;
    return row * ROW_CHUNKS * CHUNK + (chunk ^ swizzle) * CHUNK;
}

// One operand's side of the pipeline, BK deep a stage, its values S in shared memory (16-bit
// bits, or f32 bits for TF32 products). K_MAJOR: element (i, k) of the operand (i a row of A or
// a column of B) is at base[i * stride_i + k]; else at base[k * stride_k + i]. `extent` is the
// operand's m (A) or n (B).
template <bool K_MAJOR, int BK, typename S = unsigned short>
struct PipeOperand {
    // A chunk's values: 8 of 16 bits or 4 of 32.
    static constexpr int CHUNK = 16 / (int)sizeof(S);
    static constexpr int ROW_LEN = K_MAJOR ? BK : PIPE_BM, ROW_CHUNKS = ROW_LEN / CHUNK;
    // An f32 mn-major tile is read a value at a time (ldmatrix's .trans moves 16-bit values): a
    // fragment read takes 8 neighbouring indices at each of 4 consecutive depths (rows). Its rows
    // are padded by 8 values instead of swizzled, so those 32 reads fall on 32 distinct banks
    // (row r starts at bank 8 r mod 32) and every read's address is one base register plus a
    // constant (a swizzle's XOR by the row left each its own address: at 128 registers, a
    // stack frame).
    static constexpr bool SCALAR_READS = !K_MAJOR && sizeof(S) == 4;
    static constexpr int ROW_STRIDE = SCALAR_READS ? ROW_LEN + PIPE_F32_ROW_PAD : ROW_LEN;
    // Elements of one stage.
    static constexpr int TILE = (K_MAJOR ? PIPE_BM : BK) * ROW_STRIDE;
    // 16-byte chunks a thread copies a stage (2 or 4), and the rows of the shared tile between
    // one of them and the next: a thread's chunks are threadIdx.x + PIPE_THREADS s, the same
    // chunk of rows that far apart, so they share their swizzle and, k-major, their depth;
    // mn-major, their i.
    static constexpr int CHUNKS = PIPE_BM * BK / CHUNK / PIPE_THREADS;
    static constexpr int ROWS_APART = PIPE_THREADS / ROW_CHUNKS;
    // The elements between a thread's chunks in a stage (ROWS_APART rows, padded or not).
    static constexpr int DST_APART = ROWS_APART * ROW_STRIDE;
    // Where a stage's chunk c (a thread's first: c = threadIdx.x) lies: its tile row (an index i
    // k-major, a depth mn-major), its chunk within the row, and its swizzled offset.
    __device__ static int chunk_row(unsigned c) { return c / ROW_CHUNKS; }
    __device__ static int chunk_col(unsigned c) { return c % ROW_CHUNKS; }
    __device__ static int chunk_dst(int row, int col) {
        return SCALAR_READS ? row * ROW_STRIDE + col * CHUNK : pipe_chunk<ROW_CHUNKS, CHUNK>(row, col);
    }
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
        int dst;          // chunk 0's offset in a stage, in elements (chunk s: + s DST_APART)
        int dk;           // chunk 0's depth relative to the stage's first
        unsigned inside;  // bit s: chunk s's i lies inside the operand
        __device__ Loader(const T* b, i64 stride, i64 i0, i64 extent, i64 k_begin)
            : safe(b), step(K_MAJOR ? (i64)BK : BK * stride), apart(ROWS_APART * stride), inside(0) {
            // (in signed arithmetic: as chunk_row's unsigned, version 3's mk layouts took a stack frame)
            const int c = threadIdx.x, row = c / ROW_CHUNKS, chunk = c % ROW_CHUNKS;
            const int di = K_MAJOR ? row : CHUNK * chunk;
            dk = K_MAJOR ? CHUNK * chunk : row;
            dst = chunk_dst(row, chunk);
#pragma unroll
            for (int s = 0; s < CHUNKS; ++s) {
                inside |= (unsigned)(i0 + di + (K_MAJOR ? ROWS_APART * s : 0) < extent) << s;
            }
            const i64 i = i0 + di < extent ? i0 + di : 0, k = k_begin + dk;
            src = K_MAJOR ? b + i * stride + k : b + k * stride + i;
        }
        // Copies this thread's chunks of the stage at depth k0 into `tile` (zeros past the
        // operand's edges and from `depth` on) and moves on to the next stage.
        __device__ void issue(S* tile, i64 k0, i64 depth) {
            const int left = depth - k0 < BK ? (int)(depth - k0) : BK;  // depths in this stage
#pragma unroll
            for (int s = 0; s < CHUNKS; ++s) {
                const bool valid = (inside >> s & 1) && dk + (K_MAJOR ? 0 : ROWS_APART * s) < left;
                cp_async_16(tile + dst + DST_APART * s, valid ? src + s * apart : safe, valid);
            }
            src += step;
        }
    };
    // The four registers of a 16-row block of operand rows i..i+15 at depth kk, as ldmatrix.x4
    // gives them: matrix j covers rows i + 8 (j & 1) (A order: a0..a3) when `a_order`, else rows
    // i + 8 (j >> 1) (B order: b0, b1 of rows i..i+7, then of i+8..i+15), and the chunk of
    // depths kk + CHUNK (j >> 1) or kk + CHUNK (j & 1) correspondingly. 16-bit values: the
    // m16n8k16 fragments of depths kk..kk+15; f32 values: the m16n8k8 TF32 fragments of depths
    // kk..kk+7 (lane t holds word t % 4 of matrix row t / 4: depth tig of row group), read by
    // ldmatrix k-major and a value at a time mn-major.
    __device__ static void fragments(unsigned r[4], const S* tile, int i, int kk, bool a_order) {
        const int lane = threadIdx.x % 32, j = lane >> 3, within = lane & 7;
        if (SCALAR_READS) {
            const int group = lane >> 2, tig = lane & 3;
            const S* at = tile + (kk + tig) * ROW_STRIDE + i + group;
#pragma unroll
            for (int m = 0; m < 4; ++m) {
                const int i_block = a_order ? (m & 1) : (m >> 1), k_block = a_order ? (m >> 1) : (m & 1);
                r[m] = at[CHUNK * k_block * ROW_STRIDE + 8 * i_block];
            }
            return;
        }
        const int i_block = a_order ? (j & 1) : (j >> 1), k_block = a_order ? (j >> 1) : (j & 1);
        if (K_MAJOR) {
            const int row = i + 8 * i_block + within;
            // (kk / CHUNK as a shift: kk is signed, and a signed division costs instructions)
            ldmatrix_x4(r, tile + chunk_dst(row, (kk >> (CHUNK == 8 ? 3 : 2)) + k_block));
        } else {
            const int row = kk + 8 * k_block + within;
            ldmatrix_x4_trans(r, tile + chunk_dst(row, (i >> 3) + i_block));
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

// What the pipeline multiplies, M: f16 or bf16 operands (m16n8k16, 16 deep a slice), or f32
// operands on the TF32 tensor cores (m16n8k8, 8 deep a slice), as Tf32 or Tf32x3 below. Stored:
// a value's bits in shared memory. slice() adds a warp's 64 x 32 products of one slice at depth
// kk of a stage (A rows warp_row.., B columns warp_col..) to acc.
template <typename M>
struct PipeMath {
    typedef unsigned short Stored;
    static constexpr int SLICE = 16;
    template <typename OpA, typename OpB>
    __device__ static void slice(float (&acc)[4][4][4], const Stored* a_tile, const Stored* b_tile, int kk,
                                 int warp_row, int warp_col) {
        unsigned fa[4][4], fb[2][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) OpA::fragments(fa[i], a_tile, warp_row + 16 * i, kk, true);
#pragma unroll
        for (int j = 0; j < 2; ++j) OpB::fragments(fb[j], b_tile, warp_col + 16 * j, kk, false);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const unsigned b[2] = {fb[j / 2][2 * (j % 2)], fb[j / 2][2 * (j % 2) + 1]};
                mma_16816<M>(acc[i][j], fa[i], b);
            }
    }
};

// How an f32 operand value meets the TF32 tensor cores: its PARTS TF32 values (parts() writes
// part q of a fragment's value to p[q][at]), and the product of fragments given as parts.
// - Tf32 (set_float32_matmul_precision "high"): the value rounded as f32_to_tf32 rounds (version
//   1's engine, cuBLAS), one product.
// - Tf32x3 (version 5 of the f32 GEMM): 3xTF32, the value split into big and small TF32 parts
//   (split_tf32), three products, f32's accuracy.
struct Tf32 {
    static constexpr int PARTS = 1;
    template <int N>
    __device__ static void parts(unsigned bits, unsigned (&p)[1][N], int at) {
        p[0][at] = round_to_tf32_bits(__uint_as_float(bits));
    }
    __device__ static void mma(float acc[4], const unsigned (&a)[1][4], const unsigned (&b)[1][2]) {
        mma_m16n8k8_tf32(acc, a[0], b[0], acc);
    }
};
struct Tf32x3 {
    static constexpr int PARTS = 2;
    template <int N>
    __device__ static void parts(unsigned bits, unsigned (&p)[2][N], int at) {
        split_tf32(__uint_as_float(bits), p[0][at], p[1][at]);
    }
    __device__ static void mma(float acc[4], const unsigned (&a)[2][4], const unsigned (&b)[2][2]) {
        mma_3xtf32(acc, a[0], a[1], b[0], b[1]);
    }
};
// f32 operands: B's parts for the whole slice (8 or 16 registers), A's a 16-row block at a time
// (4 or 8), so that 3xTF32 fits 128 registers beside the 64 accumulators.
template <typename F32Math>
struct PipeMathF32 {
    typedef unsigned Stored;
    static constexpr int SLICE = 8, PARTS = F32Math::PARTS;
    template <typename OpA, typename OpB>
    __device__ static void slice(float (&acc)[4][4][4], const Stored* a_tile, const Stored* b_tile, int kk,
                                 int warp_row, int warp_col) {
        unsigned b[4][PARTS][2];  // block j's b0, b1 as parts
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            unsigned fb[4];
            OpB::fragments(fb, b_tile, warp_col + 16 * half, kk, false);
#pragma unroll
            for (int e = 0; e < 4; ++e) F32Math::parts(fb[e], b[2 * half + e / 2], e % 2);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            unsigned fa[4], a[PARTS][4];
            OpA::fragments(fa, a_tile, warp_row + 16 * i, kk, true);
#pragma unroll
            for (int e = 0; e < 4; ++e) F32Math::parts(fa[e], a, e);
#pragma unroll
            for (int j = 0; j < 4; ++j) F32Math::mma(acc[i][j], a, b[j]);
        }
    }
};
template <> struct PipeMath<Tf32> : PipeMathF32<Tf32> {};
template <> struct PipeMath<Tf32x3> : PipeMathF32<Tf32x3> {};

// The pipeline for every tile of C a block owns (for_each_tile over problem p, whose views
// store C). `loaders(q, row0, col0, k_begin)` gives a tile's PipeLoaders; OpA and OpB
// (PipeOperand) say how the stages are laid out in shared memory, where PIPE_STAGES stages of
// A, then as many of B, each OpA::TILE or OpB::TILE elements of PipeMath<M>::Stored (PIPE_BM x
// BK, and for an f32 mn-major operand its padding), are static (DYNAMIC false) or dynamic.
// SLICES: the slices a turn of the inner loop takes, 2 or 1 (where ptxas would spill the
// registers of two).
template <typename M, int BK, bool DYNAMIC, typename OpA, typename OpB, int SLICES = 2, typename Problem,
          typename MakeLoaders>
__device__ void mma_pipeline(const Problem& p, MakeLoaders loaders) {
    typedef PipeMath<M> Math;
    typedef typename Math::Stored S;
    constexpr int TILE_A = OpA::TILE, TILE_B = OpB::TILE;  // elements of one operand's stage
    constexpr int MI = 4, NI = 4;                           // a warp's 64 x 32: 4 x 4 m16n8 fragments
    // Version 2's stages are two static arrays: taken through a pointer instead, ptxas spills
    // its m-major layouts at 128 registers.
    __shared__ __align__(16) S fixed_a[DYNAMIC ? 1 : PIPE_STAGES][DYNAMIC ? 8 : TILE_A];
    __shared__ __align__(16) S fixed_b[DYNAMIC ? 1 : PIPE_STAGES][DYNAMIC ? 8 : TILE_B];
    NABLA_DYNAMIC_SHARED(S, dynamic_stages);
    S(*as)[TILE_A] = DYNAMIC ? (S(*)[TILE_A])dynamic_stages : (S(*)[TILE_A])fixed_a;
    S(*bs)[TILE_B] = DYNAMIC ? (S(*)[TILE_B])(dynamic_stages + PIPE_STAGES * TILE_A) : (S(*)[TILE_B])fixed_b;
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
            const S* a_tile = as[use];
            const S* b_tile = bs[use];
            use = use + 1 == PIPE_STAGES ? 0 : use + 1;
            // SLICES slices a turn (16 deep for 16-bit values, 8 for f32): with two, version 2's
            // whole stage; version 3's four unrolled spill its m-major layouts at 128 registers
            // (ptxas hoists every slice's addresses).
            // (two loops rather than one unrolled by SLICES: the SLICES == 2 loop is the one every
            // kernel had, and compiles as before: ptxas, sm_90, same registers and frames)
            if (SLICES == 1) {
#pragma unroll 1
                for (int kk = 0; kk < BK; kk += Math::SLICE)
                    Math::template slice<OpA, OpB>(acc, a_tile, b_tile, kk, warp_row, warp_col);
            } else {
#pragma unroll 2
                for (int kk = 0; kk < BK; kk += Math::SLICE)
                    Math::template slice<OpA, OpB>(acc, a_tile, b_tile, kk, warp_row, warp_col);
            }
        }
        cp_async_wait<0>();
        __syncthreads();  // the next tile of the grid-stride loop reuses the stages
        store_fragments(q, acc, row0 + warp_row, col0 + warp_col, rows, cols, group, tig);
    });
}

// The matrix product for one block, operands of type T (f16, bf16 or f32) read through the
// view's pointers and strides and multiplied as M (T itself for 16-bit values; Tf32 or Tf32x3
// for f32).
template <typename T, typename M, bool A_K_MAJOR, bool B_K_MAJOR, int BK, bool DYNAMIC, typename Problem>
__device__ void mma_pipelined_gemm(const Problem& p) {
    typedef typename PipeMath<M>::Stored S;
    typedef PipeOperand<A_K_MAJOR, BK, S> OpA;
    typedef PipeOperand<B_K_MAJOR, BK, S> OpB;
    typedef typename OpA::template Loader<T> LoaderA;
    typedef typename OpB::template Loader<T> LoaderB;
    const i64 rows = p.rows(), cols = p.cols();
    // (NVRTC takes a generic lambda's call operator for a host function: the view's type is spelled)
    typedef decltype(p.group(0, 0)) View;
    mma_pipeline<M, BK, DYNAMIC, OpA, OpB>(p, [&](const View& q, i64 row0, i64 col0, i64 k_begin) {
        const i64 a_stride = A_K_MAJOR ? q.a_rs : q.a_cs, b_stride = B_K_MAJOR ? q.b_cs : q.b_rs;
        return PipeLoaders<LoaderA, LoaderB>{LoaderA(q.pa, a_stride, row0, rows, k_begin),
                                             LoaderB(q.pb, b_stride, col0, cols, k_begin)};
    });
}
