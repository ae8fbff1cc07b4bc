//! 2-D convolution over NCHW tensors with stride, padding, dilation and groups: forward and
//! both backwards (`kernels/conv2d.cu`, implicit GEMMs). The CPU reference is the direct
//! definition, walked as runs of output pixels along a row, in f64.

use crate::autograd::record;
use crate::cpu::conv::{self as cpu_conv, ConvShape};
use crate::cpu::gemm::Gemm;
use crate::cuda::gemm::{self, GemmPlan};
use crate::cuda::params::{Conv2dParams, FastDiv};
use crate::cuda::{CudaDevice, launch_error};
use crate::layout::Layout;
use crate::storage::{CpuStorage, StorageRef};
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::CudaSlice;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::Arc;

mod pipelined;
use pipelined::{
    forward_pipelined, grad_weight_pipelined, pipelined_forward, pipelined_grad_input, pipelined_grad_weight,
    transposed,
};

/// Stride, padding, dilation and groups of a 2-D convolution (PyTorch's defaults: 1, 0, 1, 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// Step between output pixels, (vertical, horizontal).
    pub stride: (usize, usize),
    /// Zero padding on each side, (vertical, horizontal).
    pub padding: (usize, usize),
    /// Spacing between kernel taps, (vertical, horizontal).
    pub dilation: (usize, usize),
    /// Channel groups: input and output channels split into this many independent convolutions
    /// (groups = channels is a depthwise convolution).
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions { stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 }
    }
}

impl Conv2dOptions {
    /// Square stride and padding, no dilation, one group.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dOptions { stride: (stride, stride), padding: (padding, padding), ..Default::default() }
    }
}

pub(crate) fn kernel_names() -> Vec<String> {
    const BASES: [&str; 3] = ["conv2d_fwd", "conv2d_bwd_input", "conv2d_bwd_weight"];
    // Every float on the FMA engine; f16, bf16 and f32 (as TF32) on the tensor cores too (`_tc`).
    let engines = [(DType::F32, ""), (DType::F64, ""), (DType::F16, ""), (DType::BF16, "")].into_iter().chain([
        (DType::F16, "_tc"),
        (DType::BF16, "_tc"),
        (DType::F32, "_tc"),
    ]);
    let gemms = engines.flat_map(|(d, tc)| {
        BASES.iter().flat_map(move |b| GemmPlan::infixes().map(move |t| format!("{b}{tc}_{t}{d}")))
    });
    let direct = [DType::F32, DType::F64, DType::F16, DType::BF16].map(|d| format!("{DIRECT_INPUT}_{d}"));
    // 16-bit on the tensor cores (v2); f32 on the FMA pipes (v2), as TF32 (tf32_v2) and in 3xTF32
    // (v3); the weight gradient over dY in place or packed
    let passes = ["fwd", "bwd_weight", "bwd_weight_packed"];
    let pipelined =
        [DType::F16, DType::BF16].into_iter().flat_map(move |d| passes.map(|p| format!("conv2d_{p}_v2_{d}")));
    let pipelined_f32 =
        ["v2", "tf32_v2", "v3"].into_iter().flat_map(move |v| passes.map(|p| format!("conv2d_{p}_{v}_f32")));
    gemms.chain(direct).chain(pipelined).chain(pipelined_f32).collect()
}

/// The direct grad-input kernel (`kernels/conv2d.cu`), for few input channels per group.
const DIRECT_INPUT: &str = "conv2d_bwd_input_direct";
/// Threads per block of the direct grad-input kernel (eight warps).
const DIRECT_THREADS: u32 = 256;
/// Channels per thread of the direct grad-input kernel (its `DIRECT_CHANNELS`): the innermost
/// axis of the packed weights it reads, so the two must agree.
const DIRECT_CHANNELS: usize = 4;
/// Input rows per thread of the direct grad-input kernel (its `DIRECT_ROWS`), which sizes its
/// grid (the kernel's loop covers the warps its own constant implies, whatever the grid).
const DIRECT_ROWS: usize = 4;

/// Splits at most of the grad-weight GEMM's depth (the workspace holds one partial per split).
const MAX_WEIGHT_SPLITS: usize = 128;

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    opt: Conv2dOptions,
}

impl Dims {
    /// The sizes as the CPU backend takes them.
    fn cpu_shape(&self) -> ConvShape {
        ConvShape {
            n: self.n,
            c: self.c,
            h: self.h,
            w: self.w,
            o: self.o,
            kh: self.kh,
            kw: self.kw,
            oh: self.oh,
            ow: self.ow,
            stride: self.opt.stride,
            padding: self.opt.padding,
            dilation: self.opt.dilation,
            groups: self.opt.groups,
        }
    }

    /// Elements of one output channel's filter: cg kh kw.
    fn ksize(&self) -> usize {
        (self.c / self.opt.groups) * self.kh * self.kw
    }

    /// Whether the grad input runs the direct kernel rather than the implicit GEMM: with cg
    /// input channels per group the GEMM fills cg of its 64 tile rows, and at stride (sh, sw)
    /// all but 1 / (sh sw) of its depth terms are zeros, while the direct kernel's work is the
    /// nonzero terms alone. Up to 4 channels at stride 1 (a network's first layer), up to 16
    /// where the strides skip three terms in four or more (AlexNet's 11 x 11 at stride 4: the
    /// forward and backward took 310 ms on an H200 with the GEMM, 5.5 ms with the direct kernel,
    /// 2.5 ms in PyTorch).
    fn direct_grad_input(&self) -> bool {
        let cg = self.c / self.opt.groups;
        cg <= 4 || (cg <= 16 && self.opt.stride.0 * self.opt.stride.1 >= 4)
    }

    /// The GEMM plan for a `rows` x `cols` x `depth` product per group. The kernels decompose
    /// pixel and filter indices in 32 bits, so sizes past that are refused here.
    fn plan(&self, dev: &CudaDevice, rows: usize, cols: usize, depth: usize, max_splits: usize) -> Result<GemmPlan> {
        let limit = i32::MAX as usize;
        let og = self.o / self.opt.groups;
        let sizes = [self.n * self.oh * self.ow, self.n * self.h * self.w, self.ksize(), og * self.kh * self.kw];
        if sizes.iter().any(|&s| s > limit) {
            return Err(Error::invalid(
                "conv2d",
                format!(
                    "on CUDA, pixels per channel (n h w = {}, n oh ow = {}) and filter sizes must stay below 2^31",
                    sizes[1], sizes[0]
                ),
            ));
        }
        Ok(gemm::plan(rows, cols, depth, self.opt.groups, dev.multiprocessors(), max_splits))
    }

    fn params(&self) -> Conv2dParams {
        let o = self.opt;
        let i = |v: usize| v as i64;
        Conv2dParams {
            n: i(self.n),
            c: i(self.c),
            h: i(self.h),
            w: i(self.w),
            o: i(self.o),
            kh: i(self.kh),
            kw: i(self.kw),
            oh: i(self.oh),
            ow: i(self.ow),
            sh: i(o.stride.0),
            sw: i(o.stride.1),
            ph: i(o.padding.0),
            pw: i(o.padding.1),
            dh: i(o.dilation.0),
            dw: i(o.dilation.1),
            groups: i(o.groups),
            splits: 1,
            relu: 0,
            div_taps: FastDiv::new(self.kh * self.kw),
            div_kw: FastDiv::new(self.kw),
            div_ow: FastDiv::new(self.ow),
            div_ohow: FastDiv::new(self.oh * self.ow),
            div_sh: FastDiv::new(o.stride.0),
            div_sw: FastDiv::new(o.stride.1),
        }
    }

    /// Every (input, output, weight) pairing of the convolution as runs along an output row:
    /// `f(x, y, w, len)` covers y[y + t] ↔ x[x + t · stride_w] through weight w, t < len.
    fn runs(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let (sh, sw) = self.opt.stride;
        let (ph, pw) = self.opt.padding;
        let (dh, dw) = self.opt.dilation;
        let (og, cg) = (self.o / self.opt.groups, self.c / self.opt.groups);
        for n in 0..self.n {
            for oc in 0..self.o {
                let g = oc / og;
                for ci in 0..cg {
                    for ky in 0..self.kh {
                        for kx in 0..self.kw {
                            let widx = ((oc * cg + ci) * self.kh + ky) * self.kw + kx;
                            // Output columns whose tap lands inside the input row: pw <= ox sw + kx dw < w + pw.
                            let lo = (pw.saturating_sub(kx * dw)).div_ceil(sw);
                            let hi = (self.w + pw).saturating_sub(kx * dw).div_ceil(sw).min(self.ow);
                            if lo >= hi {
                                continue;
                            }
                            for oy in 0..self.oh {
                                let iy = (oy * sh + ky * dh) as isize - ph as isize;
                                if iy < 0 || iy as usize >= self.h {
                                    continue;
                                }
                                let x_row = ((n * self.c + g * cg + ci) * self.h + iy as usize) * self.w;
                                let ix0 = lo * sw + kx * dw - pw;
                                let y_row = ((n * self.o + oc) * self.oh + oy) * self.ow;
                                f(x_row + ix0, y_row + lo, widx, hi - lo);
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Tensor {
    /// The 2-D convolution of `[N, C, H, W]` input with `[O, C / groups, KH, KW]` weight and
    /// optional `[O]` bias, as `torch.nn.functional.conv2d` (a cross-correlation). Under
    /// [`crate::amp::autocast`], f32 operands are convolved in the autocast dtype.
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, opt: Conv2dOptions) -> Result<Tensor> {
        self.conv2d_then("conv2d", weight, bias, opt, false)
    }

    /// `relu(conv2d(x, w, b))`: [`Tensor::conv2d`] followed by [`Tensor::relu`], with the ReLU
    /// applied as the convolution writes each output (one kernel on the GPU) and its backward
    /// taken from the saved output, so the pre-activation is never stored. Equal to the two
    /// ops, NaN included; [`crate::nn::Sequential`] uses it wherever a ReLU follows a Conv2d.
    pub fn conv2d_relu(&self, weight: &Tensor, bias: Option<&Tensor>, opt: Conv2dOptions) -> Result<Tensor> {
        self.conv2d_then("conv2d_relu", weight, bias, opt, true)
    }

    /// `conv2d`, then ReLU when `relu`.
    fn conv2d_then(
        &self,
        op: &'static str,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opt: Conv2dOptions,
        relu: bool,
    ) -> Result<Tensor> {
        let operands: Vec<&Tensor> = [Some(self), Some(weight), bias].into_iter().flatten().collect();
        if let Some(low) = crate::amp::product_dtype(&operands) {
            return crate::amp::in_low_precision(&operands, low, |t| t[0].conv2d_then(op, &t[1], t.get(2), opt, relu));
        }
        self.check_same(op, weight)?;
        self.check_float(op)?;
        if let Some(b) = bias {
            self.check_same(op, b)?;
        }
        let d = conv_dims(op, self.shape(), weight.shape(), bias.map(|b| b.shape()), opt)?;
        let out = conv_forward(&self.detach(), &weight.detach(), bias.map(Tensor::detach).as_ref(), d, relu)?;
        // ReLU's backward masks g where the output is zero (step(relu(z)) = step(z)).
        let relu_out = relu.then(|| out.detach());
        let (x, w) = (self.detach(), weight.detach());
        let (x_needs, w_needs) = (self.requires_grad(), weight.requires_grad());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Ok(record(out, &inputs, move |g| {
            let g = &crate::ops::unary::relu_masked(relu_out.as_ref(), g)?;
            // Skip the gradients nobody asked for (the first layer's input, typically).
            let gx = if x_needs { Some(conv_backward_input(g, &w, d)?) } else { None };
            let gw = if w_needs { Some(conv_backward_weight(g, &x, d)?) } else { None };
            let mut grads = vec![gx, gw];
            if d.has_bias() {
                grads.push(Some(g.sum(&[0, 2, 3], false)?));
            }
            Ok(grads)
        }))
    }
}

fn conv_dims(
    op: &'static str,
    x: &[usize],
    w: &[usize],
    bias: Option<&[usize]>,
    opt: Conv2dOptions,
) -> Result<DimsWithBias> {
    let bad = |detail: String| Error::shape(op, detail);
    let ([n, c, h, wd], [o, cg, kh, kw]) = (x, w) else {
        return Err(bad(format!("input must be [N, C, H, W] and weight [O, C/groups, KH, KW], got {x:?} and {w:?}")));
    };
    let (n, c, h, wd, o, cg, kh, kw) = (*n, *c, *h, *wd, *o, *cg, *kh, *kw);
    let g = opt.groups;
    if g == 0 || opt.stride.0 == 0 || opt.stride.1 == 0 || opt.dilation.0 == 0 || opt.dilation.1 == 0 {
        return Err(Error::invalid(op, format!("stride, dilation and groups must be positive, got {opt:?}")));
    }
    if c % g != 0 || o % g != 0 || cg * g != c {
        return Err(bad(format!("input {x:?} and weight {w:?} do not fit {g} group(s)")));
    }
    if let Some(b) = bias
        && b != [o]
    {
        return Err(bad(format!("bias {b:?} for {o} output channels")));
    }
    let span = |size: usize, pad: usize, k: usize, dil: usize, stride: usize| -> Option<usize> {
        let reach = dil.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
        size.checked_add(pad.checked_mul(2)?)?.checked_sub(reach).map(|v| v / stride + 1)
    };
    let (Some(oh), Some(ow)) = (
        span(h, opt.padding.0, kh, opt.dilation.0, opt.stride.0),
        span(wd, opt.padding.1, kw, opt.dilation.1, opt.stride.1),
    ) else {
        return Err(bad(format!(
            "kernel {kh}x{kw} (dilation {:?}) is larger than the padded input {x:?}",
            opt.dilation
        )));
    };
    crate::layout::checked_numel(op, &[n, o, oh, ow])?;
    crate::layout::checked_numel(op, &[n, c, oh, ow, kh, kw])?;
    Ok(DimsWithBias(Dims { n, c, h, w: wd, o, kh, kw, oh, ow, opt }, bias.is_some()))
}

/// The dims, and whether a bias was given.
#[derive(Clone, Copy, Debug)]
struct DimsWithBias(Dims, bool);

impl DimsWithBias {
    fn has_bias(&self) -> bool {
        self.1
    }
}

/// The convolution of layer `d`, clamped at zero when `relu`.
fn conv_forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, d: DimsWithBias, relu: bool) -> Result<Tensor> {
    let d = d.0;
    let out_shape = [d.n, d.o, d.oh, d.ow];
    let (x, w) = (x.dense()?, w.dense()?);
    match (x.storage(), w.storage()) {
        (StorageRef::Cpu(xs), StorageRef::Cpu(ws)) => {
            if crate::cpu::fast() {
                let b = bias.map(|b| b.to_vec::<f64>()).transpose()?;
                let mut y = fast_conv(Pass::Forward, &d, (&xs, &x.layout), (&ws, &w.layout), b.as_deref());
                if relu {
                    crate::cpu::clamp_storage_at_zero(&mut y);
                }
                return Ok(Tensor::from_cpu(y, &out_shape));
            }
            let (xv, wv) = (xs.gather_f64(&x.layout), ws.gather_f64(&w.layout));
            let plane = d.oh * d.ow;
            let mut y = vec![0.0; d.n * d.o * plane];
            if let Some(b) = bias {
                let bv = b.to_vec::<f64>()?;
                y.chunks_mut(plane).enumerate().for_each(|(i, p)| p.fill(bv[i % d.o]));
            }
            let sw = d.opt.stride.1;
            d.runs(|xi, yi, wi, len| {
                let k = wv[wi];
                let out = &mut y[yi..yi + len];
                if sw == 1 {
                    out.iter_mut().zip(&xv[xi..xi + len]).for_each(|(o, v)| *o += k * v);
                } else {
                    out.iter_mut().zip(xv[xi..].iter().step_by(sw)).for_each(|(o, v)| *o += k * v);
                }
            });
            if relu {
                crate::cpu::clamp_at_zero(&mut y);
            }
            Ok(Tensor::from_cpu(CpuStorage::from_f64(x.dtype, &y), &out_shape))
        }
        (StorageRef::Cuda(xs), StorageRef::Cuda(ws)) => {
            let bias = bias.map(Tensor::dense).transpose()?;
            let dev = xs.device.clone();
            let y = dev.alloc("conv2d", x.dtype, out_shape.iter().product())?;
            let b_storage = bias.as_ref().map(|b| b.storage());
            let b_buf = match &b_storage {
                Some(StorageRef::Cuda(b)) => Some(&*b.buf),
                _ => None,
            };
            let plan = d.plan(&dev, d.o / d.opt.groups, d.n * d.oh * d.ow, d.ksize(), 1)?;
            let params = Conv2dParams { relu: relu as i64, ..d.params() };
            if let Some(pipe) = pipelined_forward(&dev, x.dtype, &d) {
                // Channels last: every tap's input channels, and a filter's, contiguous.
                let w_ohwc = w.detach().permute(&[0, 2, 3, 1])?.dense()?;
                forward_pipelined(&dev, pipe, &x, &w_ohwc, b_buf, &y, (&d, params))?;
                return Ok(Tensor::from_cuda(y, &out_shape));
            }
            let buffers = [Some(&*xs.buf), Some(&*ws.buf), b_buf, Some(&*y.buf)];
            launch(&dev, "conv2d_fwd", x.dtype, params, plan, &buffers)?;
            Ok(Tensor::from_cuda(y, &out_shape))
        }
        _ => unreachable!("check_same rejects mixed devices"),
    }
}

fn conv_backward_input(dy: &Tensor, w: &Tensor, d: DimsWithBias) -> Result<Tensor> {
    let d = d.0;
    let in_shape = [d.n, d.c, d.h, d.w];
    let (dy, w) = (dy.dense()?, w.dense()?);
    match (dy.storage(), w.storage()) {
        (StorageRef::Cpu(gs), StorageRef::Cpu(ws)) => {
            if crate::cpu::fast() {
                let dx = fast_conv(Pass::Input, &d, (&gs, &dy.layout), (&ws, &w.layout), None);
                return Ok(Tensor::from_cpu(dx, &in_shape));
            }
            let (gv, wv) = (gs.gather_f64(&dy.layout), ws.gather_f64(&w.layout));
            let mut dx = vec![0.0; in_shape.iter().product()];
            let sw = d.opt.stride.1;
            d.runs(|xi, yi, wi, len| {
                let k = wv[wi];
                let grads = &gv[yi..yi + len];
                if sw == 1 {
                    dx[xi..xi + len].iter_mut().zip(grads).for_each(|(o, g)| *o += k * g);
                } else {
                    dx[xi..].iter_mut().step_by(sw).zip(grads).for_each(|(o, g)| *o += k * g);
                }
            });
            Ok(Tensor::from_cpu(CpuStorage::from_f64(dy.dtype, &dx), &in_shape))
        }
        (StorageRef::Cuda(gs), StorageRef::Cuda(ws)) => {
            let dx = gs.device.alloc("conv2d", dy.dtype, in_shape.iter().product())?;
            let og = d.o / d.opt.groups;
            // (the plan also refuses sizes the kernels cannot index in 32 bits)
            let plan = d.plan(&gs.device, d.c / d.opt.groups, d.n * d.h * d.w, og * d.kh * d.kw, 1)?;
            if let Some(pipe) = pipelined_grad_input(&gs.device, dy.dtype, &d) {
                let (t, params, w_t) = transposed(&d, &w)?;
                forward_pipelined(&gs.device, pipe, &dy, &w_t, None, &dx, (&t, params))?;
                return Ok(Tensor::from_cuda(dx, &in_shape));
            }
            if d.direct_grad_input() {
                let packed = direct_weights(&w, &d)?;
                let StorageRef::Cuda(ps) = packed.storage() else { unreachable!("packed on w's device") };
                launch_direct_input(&gs.device, dy.dtype, &d, [&*gs.buf, &*ps.buf, &*dx.buf])?;
                return Ok(Tensor::from_cuda(dx, &in_shape));
            }
            let buffers = [Some(&*gs.buf), Some(&*ws.buf), Some(&*dx.buf)];
            launch(&gs.device, "conv2d_bwd_input", dy.dtype, d.params(), plan, &buffers)?;
            Ok(Tensor::from_cuda(dx, &in_shape))
        }
        _ => unreachable!("one device throughout"),
    }
}

fn conv_backward_weight(dy: &Tensor, x: &Tensor, d: DimsWithBias) -> Result<Tensor> {
    let d = d.0;
    let w_shape = [d.o, d.c / d.opt.groups, d.kh, d.kw];
    let (dy, x) = (dy.dense()?, x.dense()?);
    match (dy.storage(), x.storage()) {
        (StorageRef::Cpu(gs), StorageRef::Cpu(xs)) => {
            if crate::cpu::fast() {
                let dw = fast_conv(Pass::Weight, &d, (&gs, &dy.layout), (&xs, &x.layout), None);
                return Ok(Tensor::from_cpu(dw, &w_shape));
            }
            let (gv, xv) = (gs.gather_f64(&dy.layout), xs.gather_f64(&x.layout));
            let mut dw = vec![0.0; w_shape.iter().product()];
            let sw = d.opt.stride.1;
            d.runs(|xi, yi, wi, len| {
                let grads = &gv[yi..yi + len];
                dw[wi] += if sw == 1 {
                    grads.iter().zip(&xv[xi..xi + len]).map(|(g, v)| g * v).sum::<f64>()
                } else {
                    grads.iter().zip(xv[xi..].iter().step_by(sw)).map(|(g, v)| g * v).sum::<f64>()
                };
            });
            Ok(Tensor::from_cpu(CpuStorage::from_f64(dy.dtype, &dw), &w_shape))
        }
        (StorageRef::Cuda(gs), StorageRef::Cuda(xs)) => {
            let dev = &gs.device;
            let plan = d.plan(dev, d.o / d.opt.groups, d.ksize(), d.n * d.oh * d.ow, MAX_WEIGHT_SPLITS)?;
            if let Some(pipe) = pipelined_grad_weight(dev, dy.dtype, &d) {
                return grad_weight_pipelined(dev, pipe, &dy, &x, &d);
            }
            if plan.splits == 1 {
                let dw = dev.alloc("conv2d", dy.dtype, w_shape.iter().product())?;
                let buffers = [Some(&*gs.buf), Some(&*xs.buf), Some(&*dw.buf), None];
                launch(dev, "conv2d_bwd_weight", dy.dtype, d.params(), plan, &buffers)?;
                return Ok(Tensor::from_cuda(dw, &w_shape));
            }
            // Split-K: one partial sum per depth range in the accumulation type (the kernel
            // writes only these; dw stays null), then their sum.
            let acc = if dy.dtype == DType::F64 { DType::F64 } else { DType::F32 };
            let partial = dev.alloc("conv2d", acc, plan.splits * d.o * d.ksize())?;
            let buffers = [Some(&*gs.buf), Some(&*xs.buf), None, Some(&*partial.buf)];
            launch(dev, "conv2d_bwd_weight", dy.dtype, d.params(), plan, &buffers)?;
            Tensor::from_cuda(partial, &[plan.splits, d.o * d.ksize()])
                .sum(&[0], false)?
                .to_dtype(dy.dtype)?
                .reshape(&w_shape)
        }
        _ => unreachable!("one device throughout"),
    }
}

/// Which fast CPU convolution to run.
#[derive(Clone, Copy)]
enum Pass {
    /// y from (x, w).
    Forward,
    /// dx from (dy, w).
    Input,
    /// dw from (dy, x).
    Weight,
}

/// Runs a fast CPU convolution pass on two dense operands (and the forward's bias) in the
/// compute type: f32 and f64 read in place, 16-bit floats widened to f32 and the result
/// rounded once.
fn fast_conv(
    pass: Pass,
    d: &Dims,
    a: (&CpuStorage, &Layout),
    b: (&CpuStorage, &Layout),
    bias: Option<&[f64]>,
) -> CpuStorage {
    fn run<T: Gemm>(pass: Pass, s: &ConvShape, a: &[T], b: &[T], bias: Option<&[f64]>) -> Vec<T> {
        let bias: Option<Vec<T>> = bias.map(|v| v.iter().map(|&x| T::from_f64_(x)).collect());
        match pass {
            Pass::Forward => cpu_conv::forward(s, a, b, bias.as_deref()),
            Pass::Input => cpu_conv::backward_input(s, a, b),
            Pass::Weight => cpu_conv::backward_weight(s, a, b),
        }
    }
    // f32 (and the 16-bit floats through it) has direct kernels for few filters per group.
    fn run_f32(pass: Pass, s: &ConvShape, a: &[f32], b: &[f32], bias: Option<&[f64]>) -> Vec<f32> {
        match pass {
            Pass::Forward => {
                let bias: Option<Vec<f32>> = bias.map(|v| v.iter().map(|&x| x as f32).collect());
                cpu_conv::forward_f32(s, a, b, bias.as_deref())
            }
            Pass::Weight => cpu_conv::backward_weight_f32(s, a, b),
            Pass::Input => cpu_conv::backward_input_f32(s, a, b),
        }
    }
    fn dense<'a, T: crate::Element>(s: &'a CpuStorage, l: &Layout) -> &'a [T] {
        let all = s.typed::<T>().expect("dtype checked by the caller");
        &all[l.offset()..l.offset() + l.numel()]
    }
    let shape = d.cpu_shape();
    match a.0.dtype() {
        DType::F64 => CpuStorage::F64(run(pass, &shape, dense(a.0, a.1), dense(b.0, b.1), bias)),
        DType::F32 => CpuStorage::F32(run_f32(pass, &shape, dense(a.0, a.1), dense(b.0, b.1), bias)),
        dtype => {
            let (wa, wb): (Vec<f32>, Vec<f32>) = (a.0.gather(a.1), b.0.gather(b.1));
            crate::cpu::narrow_vec(dtype, run_f32(pass, &shape, &wa, &wb, bias))
        }
    }
}

/// The weights as the direct grad-input kernel reads them: [groups, channel blocks, kh, kw, og,
/// DIRECT_CHANNELS], the channels of a block innermost and zero past cg, so one tap of one
/// output channel is one aligned vector read.
fn direct_weights(w: &Tensor, d: &Dims) -> Result<Tensor> {
    let (groups, og, cg) = (d.opt.groups, d.o / d.opt.groups, d.c / d.opt.groups);
    let padded = cg.next_multiple_of(DIRECT_CHANNELS);
    let w = w.detach().reshape(&[groups, og, cg, d.kh, d.kw])?;
    let w = if padded > cg {
        let zeros = Tensor::zeros(&[groups, og, padded - cg, d.kh, d.kw], w.dtype(), &w.device())?;
        Tensor::cat(&[&w, &zeros], 2)?
    } else {
        w
    };
    w.reshape(&[groups, og, padded / DIRECT_CHANNELS, DIRECT_CHANNELS, d.kh, d.kw])?
        .permute(&[0, 2, 4, 5, 1, 3])?
        .contiguous()
}

/// Launches the direct grad-input kernel on (dy, w, dx): one warp per run of 32 input columns
/// of a residue class, over DIRECT_ROWS rows of a residue class, per block of channels, covered
/// by a grid-stride loop.
fn launch_direct_input(dev: &Arc<CudaDevice>, dtype: DType, d: &Dims, buffers: [&CudaSlice<u8>; 3]) -> Result<()> {
    let (cg, (sh, sw)) = (d.c / d.opt.groups, d.opt.stride);
    let runs = d.w.div_ceil(sw).div_ceil(32);
    let row_groups = d.h.div_ceil(sh).div_ceil(DIRECT_ROWS);
    let warps = d.n * d.opt.groups * cg.div_ceil(DIRECT_CHANNELS) * sh * row_groups * sw * runs;
    let warps_per_block = (DIRECT_THREADS / 32) as usize;
    let blocks = warps.div_ceil(warps_per_block).clamp(1, 1 << 24) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (DIRECT_THREADS, 1, 1), shared_mem_bytes: 0 };
    // Its loop stops at the warps the params imply, whatever the grid.
    launch_kernel(dev, &format!("{DIRECT_INPUT}_{dtype}"), cfg, &buffers.map(Some), d.params())
}

/// Launches `base` (e.g. `conv2d_fwd`) for `dtype` as `plan` says, with the buffer pointers in
/// kernel order (`None` passes a null pointer) and then the params.
fn launch(
    dev: &Arc<CudaDevice>,
    base: &str,
    dtype: DType,
    params: Conv2dParams,
    plan: GemmPlan,
    buffers: &[Option<&CudaSlice<u8>>],
) -> Result<()> {
    let params = Conv2dParams { splits: plan.splits as i64, ..params };
    let kernel = plan.kernel(&crate::cuda::gemm::engine_base(base, dtype, dev), dtype);
    launch_kernel(dev, &kernel, plan.config(), buffers, params)
}

/// Launches the conv2d kernel `kernel` with the buffer pointers in kernel order (`None` passes
/// a null pointer) and then the params.
fn launch_kernel(
    dev: &Arc<CudaDevice>,
    kernel: &str,
    cfg: LaunchConfig,
    buffers: &[Option<&CudaSlice<u8>>],
    params: Conv2dParams,
) -> Result<()> {
    const OP: &str = "conv2d";
    let f = dev.function_with_shared(OP, "conv2d", kernel, cfg.shared_mem_bytes)?;
    let null: u64 = 0;
    let mut l = dev.stream.launch_builder(&f);
    for buffer in buffers {
        match buffer {
            Some(b) => l.arg(*b),
            None => l.arg(&null),
        };
    }
    l.arg(&params);
    // SAFETY: the conv2d kernels take (pointers..., Conv2dParams); every buffer is dense with
    // the sizes the params describe, the outputs (and the grad-weight partial sums, splits x o x
    // ksize) are written only by this kernel (device memory, so shared handles suffice).
    unsafe { l.launch(cfg) }.map_err(|e| launch_error(OP, kernel, e))?;
    Ok(())
}
