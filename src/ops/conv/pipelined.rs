//! Version 2 of the convolutions (opt-in): f16/bf16 on the tensor cores
//! (`cuda::gemm::set_tensor_core_conv`, the pipeline of kernels/mma_pipeline.cuh) and f32 on the
//! FP32 pipes (`cuda::gemm::set_fma_conv`, the pipeline of kernels/sgemm_v4.cuh): which passes of
//! a layer they take, the channels-last copies they need, and their launches (`conv2d_fwd_v2_*`,
//! `conv2d_bwd_weight_v2_*` in kernels/conv2d.cu).

use super::{Dims, MAX_WEIGHT_SPLITS, launch_kernel};
use crate::cuda::CudaDevice;
use crate::cuda::gemm;
use crate::cuda::params::Conv2dParams;
use crate::storage::StorageRef;
use crate::{Conv2dOptions, DType, Result, Tensor};
use cudarc::driver::CudaSlice;
use std::sync::Arc;

/// Whether the forward runs on version 2: f16/bf16 on a card with tensor cores
/// ([`gemm::set_tensor_core_conv`]) with input channels per group a multiple of 8, or f32 off the
/// tensor cores ([`gemm::set_fma_conv`]) on sm_80+ with a multiple of 4, so that a 16-byte chunk of
/// channels never straddles a tap and every chunk is aligned (`ConvPatchLoader` in
/// kernels/conv2d.cu).
pub(super) fn pipelined_forward(dev: &CudaDevice, dtype: DType, d: &Dims) -> bool {
    let cg = d.c / d.opt.groups;
    match dtype {
        DType::F16 | DType::BF16 => {
            gemm::uses_tensor_cores(dtype, dev) && gemm::tensor_core_conv() == 2 && cg.is_multiple_of(8)
        }
        DType::F32 => {
            !gemm::uses_tensor_cores(dtype, dev)
                && gemm::fma_conv() == 2
                && gemm::fma_pipeline_fits(dev)
                && cg.is_multiple_of(4)
        }
        _ => false,
    }
}

/// Whether the weight gradient runs on version 2 (`conv2d_bwd_weight_v2_*`): as
/// [`pipelined_forward`], with a whole number of 16-byte chunks in an output plane (oh ow a
/// multiple of 8 values of 16 bits, or of 4 of f32).
pub(super) fn pipelined_grad_weight(dev: &CudaDevice, dtype: DType, d: &Dims) -> bool {
    let chunk = 16 / dtype.size_in_bytes();
    pipelined_forward(dev, dtype, d) && (d.oh * d.ow).is_multiple_of(chunk)
}

/// Whether the input gradient runs as version 2's forward over the output gradient (see
/// [`transposed`]): as [`pipelined_forward`] for the transposed layer, at stride 1 (at larger
/// strides most of its products would be with zeros), and when the direct kernel does not take
/// the layer.
pub(super) fn pipelined_grad_input(dev: &CudaDevice, dtype: DType, d: &Dims) -> bool {
    d.opt.stride == (1, 1) && !d.direct_grad_input() && pipelined_forward(dev, dtype, &transposed_dims(d))
}

/// The sizes of the transposed layer: dY's o channels in, x's c out, dY's plane in, x's out.
fn transposed_dims(d: &Dims) -> Dims {
    let opt = Conv2dOptions { stride: (1, 1), padding: (0, 0), dilation: d.opt.dilation, groups: d.opt.groups };
    Dims { n: d.n, c: d.o, h: d.oh, w: d.ow, o: d.c, kh: d.kh, kw: d.kw, oh: d.h, ow: d.w, opt }
}

/// At stride 1 the input gradient is a convolution of the output gradient: dX[n, ci, y, x] =
/// Σ_{o, ky, kx} W[o, ci, ky, kx] dY[n, o, y + ph - ky dh, x + pw - kx dw]: the forward over dY
/// (o channels in, c out) with W's channels swapped within each group, whose taps step back
/// through dY: padding -ph and dilation -dh (the patch gather reads input row y - pad + ky dil),
/// and so for the columns. Returns that layer's sizes, its kernel parameters (the negative
/// padding and dilation, which Conv2dOptions cannot hold), and its weight in version 2's
/// layout, W [o, cg, kh, kw] as [g, cg, kh, kw, og] ([c, kh, kw, og]): a permuted copy, with no
/// host data and no flip, so nothing waits for the device and a CUDA graph can capture it.
pub(super) fn transposed(d: &Dims, w: &Tensor) -> Result<(Dims, Conv2dParams, Tensor)> {
    let (g, og, cg) = (d.opt.groups, d.o / d.opt.groups, d.c / d.opt.groups);
    let w_t = w.detach().reshape(&[g, og, cg, d.kh, d.kw])?.permute(&[0, 2, 3, 4, 1])?.dense()?;
    let t = transposed_dims(d);
    let (p, dil) = (d.opt.padding, d.opt.dilation);
    let params =
        Conv2dParams { ph: -(p.0 as i64), pw: -(p.1 as i64), dh: -(dil.0 as i64), dw: -(dil.1 as i64), ..t.params() };
    Ok((t, params, w_t))
}

/// Dynamic shared memory a version-2 kernel of `dtype` is launched with: the f32 kernels' stages
/// take 80 KiB of it (the FMA pipeline of sgemm_v4.cuh), the 16-bit kernels' are static.
fn dynamic_shared(dtype: DType) -> u32 {
    if dtype == DType::F32 { gemm::FMA_V4_SHARED_BYTES } else { 0 }
}

/// Version 2 of the forward (`conv2d_fwd_v2_*`) of layer `d` with kernel parameters `params`
/// (`d.params()`, or [`transposed`]'s): y = x * w (+ bias), x NCHW (copied here to NHWC), w
/// already [o, kh, kw, cg], y NCHW.
pub(super) fn forward_v2(
    dev: &Arc<CudaDevice>,
    x: &Tensor,
    w_ohwc: &Tensor,
    bias: Option<&CudaSlice<u8>>,
    y: &crate::cuda::CudaStorage,
    (d, params): (&Dims, Conv2dParams),
) -> Result<()> {
    let x_nhwc = x.detach().permute(&[0, 2, 3, 1])?.dense()?;
    let (x_nhwc, w_ohwc) = (x_nhwc.storage(), w_ohwc.storage());
    let (StorageRef::Cuda(xl), StorageRef::Cuda(wl)) = (&x_nhwc, &w_ohwc) else {
        unreachable!("copies stay on their device")
    };
    let gemm = (d.o / d.opt.groups, d.n * d.oh * d.ow, d.ksize());
    let (mut cfg, _) = gemm::pipelined_config(gemm, d.opt.groups, dev.multiprocessors(), 1);
    cfg.shared_mem_bytes = dynamic_shared(x.dtype());
    let buffers = [Some(&*xl.buf), Some(&*wl.buf), bias, Some(&*y.buf)];
    launch_kernel(dev, &format!("conv2d_fwd_v2_{}", x.dtype()), cfg, &buffers, params)
}

/// Version 2 of the weight gradient (`conv2d_bwd_weight_v2_*`, where [`pipelined_grad_weight`]
/// allows): dY read in place (NCHW), x copied to NHWC, dW made as [o, kh,
/// kw, cg] (in split partial sums when the depth splits) and put back as [o, cg, kh, kw].
pub(super) fn grad_weight_v2(dev: &Arc<CudaDevice>, dy: &Tensor, x: &Tensor, d: &Dims) -> Result<Tensor> {
    let x_nhwc = x.detach().permute(&[0, 2, 3, 1])?.dense()?;
    let (g, cg) = (d.opt.groups, d.c / d.opt.groups);
    let gemm = (d.o / g, d.ksize(), d.n * d.oh * d.ow);
    let (mut cfg, splits) = gemm::pipelined_config(gemm, g, dev.multiprocessors(), MAX_WEIGHT_SPLITS);
    cfg.shared_mem_bytes = dynamic_shared(dy.dtype());
    let count = d.o * d.ksize();
    let out = if splits == 1 {
        dev.alloc("conv2d", dy.dtype(), count)?
    } else {
        dev.alloc("conv2d", DType::F32, splits * count)?
    };
    let (dy_s, x_s) = (dy.storage(), x_nhwc.storage());
    let (StorageRef::Cuda(gs), StorageRef::Cuda(xs)) = (&dy_s, &x_s) else { unreachable!("one device throughout") };
    let buffers = if splits == 1 {
        [Some(&*gs.buf), Some(&*xs.buf), Some(&*out.buf), None]
    } else {
        [Some(&*gs.buf), Some(&*xs.buf), None, Some(&*out.buf)]
    };
    let params = Conv2dParams { splits: splits as i64, ..d.params() };
    launch_kernel(dev, &format!("conv2d_bwd_weight_v2_{}", dy.dtype()), cfg, &buffers, params)?;
    let dw = if splits == 1 {
        Tensor::from_cuda(out, &[count])
    } else {
        Tensor::from_cuda(out, &[splits, count]).sum(&[0], false)?.to_dtype(dy.dtype())?
    };
    dw.reshape(&[d.o, d.kh, d.kw, cg])?.permute(&[0, 3, 1, 2])?.dense()
}
