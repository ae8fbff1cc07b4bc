// Kernel parameter structs, passed to kernels by value.
//
// This header is the single source of truth: `src/cuda/params.rs` is generated from it
// (tests/all/params_mirror.rs renders the Rust mirror and fails when the committed file drifts;
// run it with NABLA_BLESS=1 to rewrite the mirror). Keep every field a 64-bit integer or a
// double so the C and Rust layouts agree without padding rules.
#pragma once

#define NABLA_MAX_DIMS 8

// A strided view of a tensor: element i (row-major over `shape`) lives at
// offset + sum_d(index_d * strides[d]). `contiguous` is 1 when strides are row-major, which
// lets kernels skip the index arithmetic.
struct StridedLayout {
    long long ndim;
    long long contiguous;
    long long offset;
    long long shape[NABLA_MAX_DIMS];
    long long strides[NABLA_MAX_DIMS];
};

// A batched matrix product C[b] = A[b] x B[b] with A[b] m x k and B[b] k x n.
// Batch index b is unravelled over batch_shape; the batch strides of a broadcast operand are 0.
// Row and column strides express transposed operands without copies. C is contiguous.
struct MatmulParams {
    long long m;
    long long n;
    long long k;
    long long batch;
    long long batch_ndim;
    long long batch_shape[NABLA_MAX_DIMS];
    long long a_batch_strides[NABLA_MAX_DIMS];
    long long b_batch_strides[NABLA_MAX_DIMS];
    long long a_offset;
    long long a_row_stride;
    long long a_col_stride;
    long long b_offset;
    long long b_row_stride;
    long long b_col_stride;
    // Depth splits (1: none). With more, split s of batch entry b writes its partial product,
    // without the bias, to the Acc<T> workspace the host passes as C, at (s batch + b) m n; then
    // matmul_split_sum_* adds the splits up (and the bias) into C.
    long long splits;
    // 1 when the epilogue clamps C at zero after the bias (max(v, 0), NaN kept: linear_relu's
    // ReLU, applied as C is written; with split depths, by matmul_split_sum_*).
    long long relu;
    // 1 when C holds the accumulation type (f32 for f16/bf16 operands), written from the
    // accumulators without rounding to T: autocast's gradient products, whose f32 results need
    // no cast. Only for products without a bias or a ReLU (their epilogue is not applied).
    long long out_acc;
};

// A reduction of `outer` rows of `inner` elements each. Element (row, i) is logical element
// row * inner + i of `src`. Each row is cut into `splits` chunks of `chunk` elements; the
// result for (row, chunk) goes to out[row * splits + chunk]. Sums are multiplied by `scale`
// (1/n for a mean).
struct ReduceParams {
    long long outer;
    long long inner;
    long long splits;
    long long chunk;
    double scale;
    struct StridedLayout src;
};

// One SGD step: g' = g + weight_decay p; with momentum, buf = momentum buf + (1 - dampening) g'
// (buf = g' on the tensor's first step, TensorList::first_step) and g' = nesterov ? g' +
// momentum buf : buf; then p -= lr g'.
struct SgdParams {
    double lr;
    double momentum;
    double dampening;
    double weight_decay;
    long long nesterov;
};

// One Adam/AdamW step at step t: m = beta1 m + (1 - beta1) g, v = beta2 v + (1 - beta2) g^2,
// p -= lr (m / bias_correction1) / (sqrt(v / bias_correction2) + eps), with
// bias_correction_i = 1 - beta_i^t per tensor (in TensorList). Weight decay adds weight_decay p to g (Adam) or scales p by
// 1 - lr weight_decay first (AdamW, `decoupled` = 1).
struct AdamParams {
    double lr;
    double beta1;
    double beta2;
    double eps;
    double weight_decay;
    long long decoupled;
};

// Division of a numerator below 2^31 by a divisor fixed for the launch, as a multiply and a
// shift: n / divisor = (n · magic) >> shift with shift = 31 + ceil(log2 divisor) and
// magic = ceil(2^shift / divisor) (Granlund and Montgomery), exact for every such n and a
// fraction of the cost of an integer division on the GPU. The host fills it
// (cuda::division_magic); kernels call fast_div() from nabla.cuh.
struct FastDiv {
    long long divisor;
    long long magic;
    long long shift;
};

// A view of fewer than 2^31 elements for kernels that gather through it: logical index i
// unravels over `shape` by multiply and shift (FastDiv; shape[d].divisor is the extent of dim
// d), a fraction of the cost of StridedLayout's 64-bit divisions.
struct GatherLayout {
    long long ndim;
    long long offset;
    struct FastDiv shape[NABLA_MAX_DIMS];
    long long strides[NABLA_MAX_DIMS];
};

// Up to NABLA_MAX_TENSORS parameters updated by one optimizer launch, with their buffers as
// device addresses. Tensor t has numel[t] elements and owns blocks first_block[t] ..
// first_block[t + 1] - 1, each covering `chunk` consecutive elements. The per-tensor step state:
// Adam's bias corrections 1 - beta^t (t counts each tensor's own steps), SGD's first_step (the
// momentum buffer starts as the gradient).
#define NABLA_MAX_TENSORS 24
#define NABLA_MAX_TENSOR_BOUNDS 25  // NABLA_MAX_TENSORS + 1
struct TensorList {
    long long count;
    long long chunk;
    long long numel[NABLA_MAX_TENSORS];
    long long first_block[NABLA_MAX_TENSOR_BOUNDS];
    long long param[NABLA_MAX_TENSORS];
    long long grad[NABLA_MAX_TENSORS];
    long long state0[NABLA_MAX_TENSORS];
    long long state1[NABLA_MAX_TENSORS];
    double bias_correction1[NABLA_MAX_TENSORS];
    double bias_correction2[NABLA_MAX_TENSORS];
    long long first_step[NABLA_MAX_TENSORS];
};

// A 2-D convolution of NCHW input [n, c, h, w] with weight [o, c / groups, kh, kw], giving
// [n, o, oh, ow]: out[n, o, y, x] = b[o] + Σ in[n, g cg + ci, y sh - ph + ky dh, x sw - pw + kx dw]
// · w[o, ci, ky, kx] over ci < cg = c / groups, ky < kh, kx < kw, where g = o / (o / groups).
struct Conv2dParams {
    long long n;
    long long c;
    long long h;
    long long w;
    long long o;
    long long kh;
    long long kw;
    long long oh;
    long long ow;
    long long sh;
    long long sw;
    long long ph;
    long long pw;
    long long dh;
    long long dw;
    long long groups;
    long long splits;  // depth splits of the grad-weight GEMM (1: none)
    long long relu;    // 1: the forward clamps Y at zero after the bias (conv2d_relu; NaN kept)
    // The divisors of the implicit-GEMM loaders' inner loops.
    struct FastDiv div_taps;  // kh kw
    struct FastDiv div_kw;
    struct FastDiv div_ow;
    struct FastDiv div_ohow;  // oh ow
    struct FastDiv div_sh;
    struct FastDiv div_sw;
};

// 2-D pooling of NCHW [n, c, h, w] into [n, c, oh, ow] with a kh x kw window, stride (sh, sw)
// and padding (ph, pw). Output (y, x) covers input rows y sh - ph .. + kh and columns
// x sw - pw .. + kw. Adaptive pooling ignores the window fields: output y covers rows
// floor(y h / oh) .. ceil((y + 1) h / oh).
struct PoolParams {
    long long n;
    long long c;
    long long h;
    long long w;
    long long oh;
    long long ow;
    long long kh;
    long long kw;
    long long sh;
    long long sw;
    long long ph;
    long long pw;
};

// Batch normalisation of NCHW input: n images, c channels, hw = h w positions per plane; eps
// is added to the variance.
struct BatchNormParams {
    long long n;
    long long c;
    long long hw;
    double eps;
};

// Layer normalisation over the last dimension: `rows` rows of `cols` contiguous values; eps is
// added to the variance. `chunk` rows go to each block of the parameter-gradient kernel.
struct LayerNormParams {
    long long rows;
    long long cols;
    long long chunk;
    double eps;
};

// Scaled dot-product attention over `bh` (batch x heads) independent heads: queries [bh, sq, d],
// keys and values [bh, sk, d], dense; `causal` masks key j for query i when j > i.
struct AttentionParams {
    long long bh;
    long long sq;
    long long sk;
    long long causal;
    double scale;
};
