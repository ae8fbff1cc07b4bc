// The channels-last operand loaders of the pipelined convolutions (conv2d.cu's version 2
// kernels): each thread's 16-byte cp.async copies of one stage of an implicit-GEMM operand, in
// the stage layout of the pipeline that consumes them (Op: PipeOperand<K_MAJOR, BK> for the 16-bit
// tensor-core pipeline of mma_pipeline.cuh, Sgemm4Operand<K_MAJOR, BK> for the f32 FMA pipeline of
// sgemm_v4.cuh). X is NHWC, so a tap's cg channels of a pixel are contiguous and a chunk (8
// 16-bit or 4 f32 channels) never straddles a tap when cg is a multiple of the chunk (the host's
// condition). Pixels past the last, and taps in the padding, copy zeros (cp.async's source size
// 0). Index arithmetic is 32-bit by FastDiv, as in conv2d.cu.
#pragma once
#include "mma_pipeline.cuh"
#include "sgemm_v4.cuh"

// One thread's copies of the patch rows (output pixels, k-major stages) of one tile, in the
// layout of Op: PipeOperand<true, BK> (16-bit, 8 channels a chunk) or Sgemm4Operand<true, 32>
// (f32, 4 channels a chunk; sgemm_v4.cuh), so that the pipeline's fragments read them. A thread's
// chunks share their depth (ky, kx, ci), kept decomposed and advanced a stage at a time; each
// has its own pixel: its image's first pixel (n h w) and top-left input coordinate, far outside
// the image when the pixel lies past the last, so that every tap of it reads nothing.
template <typename T, int BK, typename Op = PipeOperand<true, BK>>
struct ConvPatchLoader {
    const Conv2dParams& p;
    const T* x;  // NHWC, at the group's first channel
    int image[Op::CHUNKS], iy0[Op::CHUNKS], ix0[Op::CHUNKS];
    int dst, dk;
    int ky, kx, ci;  // chunk depth in the next stage
    __device__ ConvPatchLoader(const Conv2dParams& params, const T* x_group, i64 col0, i64 cols, i64 k_begin)
        : p(params), x(x_group) {
        const int cg = (int)(p.c / p.groups);
        const int row = Op::chunk_row(threadIdx.x), chunk = Op::chunk_col(threadIdx.x);
        dk = Op::CHUNK * chunk;
        dst = Op::chunk_dst(row, chunk);
        const int ohow = (int)(p.oh * p.ow);
#pragma unroll
        for (int s = 0; s < Op::CHUNKS; ++s) {
            const i64 m = col0 + row + Op::ROWS_APART * s;
            const int mi = m < cols ? (int)m : 0, n = fast_div(mi, p.div_ohow), q = mi - n * ohow;
            const int oy = fast_div(q, p.div_ow), ox = q - oy * (int)p.ow;
            image[s] = n * (int)(p.h * p.w);
            iy0[s] = m < cols ? oy * (int)p.sh - (int)p.ph : -(1 << 30);
            ix0[s] = ox * (int)p.sw - (int)p.pw;
        }
        const int k = (int)k_begin + dk, per_row = (int)p.kw * cg;
        ky = k / per_row;
        kx = (k - ky * per_row) / cg;
        ci = k - ky * per_row - kx * cg;
    }
    template <typename S>  // a stage's element: unsigned short (16-bit) or float
    __device__ void issue(S* tile, i64 k0, i64 depth) {
        const int left = depth - k0 < BK ? (int)(depth - k0) : BK;
        const int h = (int)p.h, w = (int)p.w;
#pragma unroll
        for (int s = 0; s < Op::CHUNKS; ++s) {
            const int iy = iy0[s] + ky * (int)p.dh, ix = ix0[s] + kx * (int)p.dw;
            const bool valid = dk < left && (unsigned)iy < (unsigned)h && (unsigned)ix < (unsigned)w;
            const int pixel = valid ? image[s] + iy * w + ix : 0;
            cp_async_16(tile + dst + Op::DST_APART * s, x + ((i64)pixel * p.c + (valid ? ci : 0)), valid);
        }
        ci += BK;
        const int cg = (int)(p.c / p.groups);
        while (ci >= cg) {  // once a stage when cg >= BK
            ci -= cg;
            if (++kx == (int)p.kw) kx = 0, ++ky;
        }
    }
};

// One thread's copies of dY's rows (k-major, in Op's layout: PipeOperand<true, BK>, 8 pixels a
// chunk, or Sgemm4Operand<true, 64>, 4): its chunks are rows ROWS_APART apart at one depth, a
// pixel m decomposed into image and position by multiply and shift each stage (branch-free: a
// carried decomposition needs a loop where a stage spans images).
template <typename T, int BK, typename Op = PipeOperand<true, BK>>
struct ConvGradRowsLoader {
    const Conv2dParams& p;
    const T* rows;      // dY at chunk 0's channel of image 0 (the group's first when that lies
                        // past the group: a valid address for the copies that read nothing)
    int dst;
    int m;              // the chunks' pixel (depth) in the next stage
    unsigned inside;    // bit s: chunk s's channel lies in the group
    __device__ ConvGradRowsLoader(const Conv2dParams& params, const T* dy_group, i64 row0, i64 og, i64 k_begin)
        : p(params), inside(0) {
        const int row = Op::chunk_row(threadIdx.x), chunk = Op::chunk_col(threadIdx.x);
        dst = Op::chunk_dst(row, chunk);
        const int ohow = (int)(p.oh * p.ow);
        m = (int)k_begin + Op::CHUNK * chunk;
#pragma unroll
        for (int s = 0; s < Op::CHUNKS; ++s) inside |= (unsigned)(row0 + row + Op::ROWS_APART * s < og) << s;
        rows = dy_group + ((inside & 1) ? row0 + row : 0) * ohow;
    }
    template <typename S>  // a stage's element: unsigned short (16-bit) or float
    __device__ void issue(S* tile, i64 k0, i64 depth) {
        const int ohow = (int)(p.oh * p.ow), n = fast_div(m, p.div_ohow), q = m - n * ohow;
#pragma unroll
        for (int s = 0; s < Op::CHUNKS; ++s) {
            const bool valid = (inside >> s & 1) && m < depth;  // (depth: this split's end)
            const T* src = rows + ((i64)n * p.o + Op::ROWS_APART * s) * ohow + q;
            cp_async_16(tile + dst + Op::DST_APART * s, valid ? src : rows, valid);
        }
        m += BK;
    }
};

// One thread's copies of the patch matrix (mn-major, in Op's layout: a stage is BK pixels x 128
// columns). Its chunks are ROWS_APART pixels apart at one column, Op::CHUNK channels of one tap
// (8: PipeOperand<false, BK>; 4: Sgemm4Operand<false, 32>), fixed for the tile; each chunk's
// pixel is decomposed into (n, oy, ox) by multiply and shift each stage.
template <typename T, int BK, typename Op = PipeOperand<false, BK>>
struct ConvPatchColumnsLoader {
    const Conv2dParams& p;
    const T* x;  // NHWC at the group's first channel, plus the chunk's channel
    int dst;
    int dy0, dx0;  // the tap's offset from a pixel's top-left input coordinate (dy0 far negative
                   // when the chunk's columns lie past the problem's, so that it reads nothing)
    int m;  // chunk 0's pixel in the next stage (chunk s: + ROWS_APART s)
    __device__ ConvPatchColumnsLoader(const Conv2dParams& params, const T* x_group, i64 col0, i64 cols, i64 k_begin)
        : p(params) {
        const int row = Op::chunk_row(threadIdx.x), chunk = Op::chunk_col(threadIdx.x);
        dst = Op::chunk_dst(row, chunk);
        const int cg = (int)p.c / (int)p.groups, per_row = (int)p.kw * cg;
        const i64 k = col0 + Op::CHUNK * chunk;
        const bool column = k < cols;
        const int kk = column ? (int)k : 0, ky = kk / per_row, kx = (kk - ky * per_row) / cg;
        const int ci = kk - ky * per_row - kx * cg;
        dy0 = column ? ky * (int)p.dh - (int)p.ph : -(1 << 30);
        dx0 = kx * (int)p.dw - (int)p.pw;
        x = x_group + ci;
        m = (int)k_begin + row;
    }
    template <typename S>  // a stage's element: unsigned short (16-bit) or float
    __device__ void issue(S* tile, i64 k0, i64 depth) {
        const int h = (int)p.h, w = (int)p.w, ohow = (int)(p.oh * p.ow);
#pragma unroll
        for (int s = 0; s < Op::CHUNKS; ++s) {
            const int ms = m + Op::ROWS_APART * s, n = fast_div(ms, p.div_ohow), rest = ms - n * ohow;
            const int oy = fast_div(rest, p.div_ow), ox = rest - oy * (int)p.ow;
            const int iy = oy * (int)p.sh + dy0, ix = ox * (int)p.sw + dx0;
            const bool valid = ms < depth && (unsigned)iy < (unsigned)h && (unsigned)ix < (unsigned)w;
            const i64 pixel = valid ? ((i64)n * h + iy) * w + ix : 0;
            cp_async_16(tile + dst + Op::DST_APART * s, x + pixel * p.c, valid);
        }
        m += BK;
    }
};
