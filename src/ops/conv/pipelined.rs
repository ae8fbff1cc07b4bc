//! The pipelined convolutions (opt-in), over channels-last copies: f16/bf16 on the tensor cores
//! and f32 as TF32 (`cuda::gemm::set_tensor_core_conv` 2, the pipeline of
//! kernels/mma_pipeline.cuh), f32 on the FP32 pipes (`cuda::gemm::set_f32_conv` 2, the pipeline
//! of kernels/sgemm_v4.cuh) or in 3xTF32 (`set_f32_conv` 3, mma_pipeline.cuh's): which passes of
//! a layer they take, the copies they need, and their launches (`conv2d_fwd_*`,
//! `conv2d_bwd_weight_*` in kernels/conv2d.cu).

use super::{Dims, MAX_WEIGHT_SPLITS, launch_kernel};
use crate::cuda::CudaDevice;
use crate::cuda::gemm;
use crate::cuda::params::Conv2dParams;
use crate::storage::StorageRef;
use crate::{Conv2dOptions, DType, Result, Tensor};
use cudarc::driver::CudaSlice;
use std::sync::Arc;

/// A pipelined convolution: its kernels' name infix (`conv2d_fwd_{infix}_{dtype}`) and the
/// dynamic shared memory a block takes.
#[derive(Clone, Copy)]
pub(super) struct Pipeline {
    infix: &'static str,
    shared_bytes: u32,
}

/// The pipelined convolution that runs layers of `dtype` on `dev` under the versions in force,
/// or `None` for version 1:
/// - f16/bf16 with tensor-core convolution version 2: `v2` (16-bit stages, static);
/// - f32 as TF32 ([`gemm::uses_tensor_cores`]) with tensor-core convolution version 2: `tf32_v2`;
/// - f32 otherwise, f32 convolution version 2: `v2` on the FMA pipes (80 KiB), or 3: `v3`, 3xTF32
///   on the tensor cores.
///
/// Each needs `cp.async` (sm_80+) and its stages' shared memory; a card without them runs
/// version 1.
pub(super) fn pipeline(dev: &CudaDevice, dtype: DType) -> Option<Pipeline> {
    let fits = |shared_bytes: u32| shared_bytes as usize <= dev.max_shared_per_block();
    let f32_tensor_cores = gemm::f32_pipe_shared_bytes(16);
    let (infix, shared_bytes) = match dtype {
        _ if dev.arch().0 < 8 => return None,
        DType::F16 | DType::BF16 if gemm::tensor_core_conv() == 2 => ("v2", 0),
        DType::F32 if gemm::uses_tensor_cores(dtype, dev) => match gemm::tensor_core_conv() {
            2 => ("tf32_v2", f32_tensor_cores),
            _ => return None,
        },
        DType::F32 => match gemm::f32_conv() {
            2 => ("v2", gemm::FMA_V4_SHARED_BYTES),
            3 => ("v3", f32_tensor_cores),
            _ => return None,
        },
        _ => return None,
    };
    fits(shared_bytes).then_some(Pipeline { infix, shared_bytes })
}

/// The pipelined convolution that runs the forward of layer `d` (see [`pipeline`]): one whose
/// 16-byte chunks of channels (8 16-bit values or 4 f32) never straddle a tap and are all
/// aligned, that is, whose input channels per group are a multiple of a chunk
/// (`ConvPatchLoader` in kernels/conv_loaders.cuh).
pub(super) fn pipelined_forward(dev: &CudaDevice, dtype: DType, d: &Dims) -> Option<Pipeline> {
    let chunk = 16 / dtype.size_in_bytes();
    pipeline(dev, dtype).filter(|_| (d.c / d.opt.groups).is_multiple_of(chunk))
}

/// The pipelined convolution that runs the weight gradient of layer `d` (`conv2d_bwd_weight_*`,
/// see [`grad_weight_pipelined`]): as [`pipelined_forward`].
pub(super) fn pipelined_grad_weight(dev: &CudaDevice, dtype: DType, d: &Dims) -> Option<Pipeline> {
    pipelined_forward(dev, dtype, d)
}

/// The pipelined convolution whose forward over the output gradient gives the input gradient of
/// layer `d` (see [`transposed`]): as [`pipelined_forward`] for the transposed layer, at stride
/// 1 (at larger strides most of its products would be with zeros), and when the direct kernel
/// does not take the layer.
pub(super) fn pipelined_grad_input(dev: &CudaDevice, dtype: DType, d: &Dims) -> Option<Pipeline> {
    if d.opt.stride != (1, 1) || d.direct_grad_input() {
        return None;
    }
    pipelined_forward(dev, dtype, &transposed_dims(d))
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

/// The forward of layer `d` on pipeline `pipe` (`conv2d_fwd_{infix}_*`) with kernel parameters
/// `params` (`d.params()`, or [`transposed`]'s): y = x * w (+ bias), x NCHW (copied here to
/// NHWC), w already [o, kh, kw, cg], y NCHW.
pub(super) fn forward_pipelined(
    dev: &Arc<CudaDevice>,
    pipe: Pipeline,
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
    cfg.shared_mem_bytes = pipe.shared_bytes;
    let buffers = [Some(&*xl.buf), Some(&*wl.buf), bias, Some(&*y.buf)];
    launch_kernel(dev, &format!("conv2d_fwd_{}_{}", pipe.infix, x.dtype()), cfg, &buffers, params)
}

/// The weight gradient of layer `d` on pipeline `pipe` (where [`pipelined_grad_weight`] allows):
/// x copied to NHWC, dW made as [o, kh, kw, cg] (in split partial sums when the depth splits)
/// and put back as [o, cg, kh, kw]. dY's rows (a channel's pixels) are read in place (NCHW,
/// `conv2d_bwd_weight_{infix}_*`) where an output plane holds a whole number of 16-byte chunks
/// (8 values of 16 bits, 4 of f32), else from a copy packed as [o, n oh ow], each row padded with
/// zeros to a whole chunk (`conv2d_bwd_weight_packed_{infix}_*`): in place, a chunk would straddle
/// two images and lose its alignment.
pub(super) fn grad_weight_pipelined(
    dev: &Arc<CudaDevice>,
    pipe: Pipeline,
    dy: &Tensor,
    x: &Tensor,
    d: &Dims,
) -> Result<Tensor> {
    let x_nhwc = x.detach().permute(&[0, 2, 3, 1])?.dense()?;
    let (g, cg) = (d.opt.groups, d.c / d.opt.groups);
    let gemm = (d.o / g, d.ksize(), d.n * d.oh * d.ow);
    let (mut cfg, splits) = gemm::pipelined_config(gemm, g, dev.multiprocessors(), MAX_WEIGHT_SPLITS);
    cfg.shared_mem_bytes = pipe.shared_bytes;
    let count = d.o * d.ksize();
    let out = if splits == 1 {
        dev.alloc("conv2d", dy.dtype(), count)?
    } else {
        dev.alloc("conv2d", DType::F32, splits * count)?
    };
    let chunk = 16 / dy.dtype().size_in_bytes();
    let packed = !(d.oh * d.ow).is_multiple_of(chunk);
    let dy = if packed { packed_rows(dy, d, chunk)? } else { dy.clone() };
    let (dy_s, x_s) = (dy.storage(), x_nhwc.storage());
    let (StorageRef::Cuda(gs), StorageRef::Cuda(xs)) = (&dy_s, &x_s) else { unreachable!("one device throughout") };
    let buffers = if splits == 1 {
        [Some(&*gs.buf), Some(&*xs.buf), Some(&*out.buf), None]
    } else {
        [Some(&*gs.buf), Some(&*xs.buf), None, Some(&*out.buf)]
    };
    let params = Conv2dParams { splits: splits as i64, ..d.params() };
    let base = if packed { "conv2d_bwd_weight_packed" } else { "conv2d_bwd_weight" };
    let kernel = format!("{base}_{}_{}", pipe.infix, dy.dtype());
    launch_kernel(dev, &kernel, cfg, &buffers, params)?;
    let dw = if splits == 1 {
        Tensor::from_cuda(out, &[count])
    } else {
        Tensor::from_cuda(out, &[splits, count]).sum(&[0], false)?.to_dtype(dy.dtype())?
    };
    dw.reshape(&[d.o, d.kh, d.kw, cg])?.permute(&[0, 3, 1, 2])?.dense()
}

/// dY [n, o, oh, ow] as rows [o, n oh ow + pad], each padded with zeros to a multiple of `chunk`
/// values, so that every 16-byte chunk of a row is whole and aligned (the `packed` weight-gradient
/// kernels read them as a plain k-major matrix).
fn packed_rows(dy: &Tensor, d: &Dims, chunk: usize) -> Result<Tensor> {
    let depth = d.n * d.oh * d.ow;
    let rows = dy.detach().permute(&[1, 0, 2, 3])?.dense()?.reshape(&[d.o, depth])?;
    let pad = depth.next_multiple_of(chunk) - depth;
    if pad == 0 {
        return Ok(rows);
    }
    let zeros = Tensor::zeros(&[d.o, pad], dy.dtype(), &dy.device())?;
    Tensor::cat(&[&rows, &zeros], 1)
}
