//! 2-D pooling over NCHW: max and average with window, stride and padding, and adaptive
//! average to a target size, each with its backward (`kernels/pool.cu`).

use crate::autograd::record;
use crate::cuda::params::PoolParams;
use crate::cuda::{elementwise_config, launch_error};
use crate::storage::{CpuStorage, StorageRef};
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::PushKernelArg;

/// Window, stride and padding of a pooling layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dOptions {
    /// Window (height, width).
    pub kernel: (usize, usize),
    /// Step (vertical, horizontal).
    pub stride: (usize, usize),
    /// Implicit padding on each side (at most half the window).
    pub padding: (usize, usize),
}

impl Pool2dOptions {
    /// A square `k` x `k` window with stride `k` and no padding (PyTorch's default).
    pub fn new(k: usize) -> Self {
        Pool2dOptions { kernel: (k, k), stride: (k, k), padding: (0, 0) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Max,
    Avg,
    Adaptive,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Max => "max_pool2d",
            Kind::Avg => "avg_pool2d",
            Kind::Adaptive => "adaptive_avg_pool2d",
        }
    }
}

pub(crate) fn kernel_names() -> Vec<String> {
    let mut names = Vec::new();
    for d in DType::ALL.iter().filter(|d| d.is_float()) {
        for k in [Kind::Max, Kind::Avg, Kind::Adaptive] {
            names.push(format!("{}_fwd_{d}", k.name()));
            names.push(format!("{}_bwd_{d}", k.name()));
        }
    }
    names
}

/// The rows (or columns) of input covered by output `o`.
fn window(kind: Kind, o: usize, input: usize, output: usize, k: usize, s: usize, p: usize) -> std::ops::Range<isize> {
    match kind {
        Kind::Adaptive => ((o * input / output) as isize)..((o + 1) * input).div_ceil(output) as isize,
        _ => {
            let start = (o * s) as isize - p as isize;
            start..start + k as isize
        }
    }
}

impl Tensor {
    /// Max pooling, as `torch.nn.functional.max_pool2d` (NaN propagates).
    pub fn max_pool2d(&self, opt: Pool2dOptions) -> Result<Tensor> {
        self.pool(Kind::Max, opt, (0, 0))
    }

    /// Average pooling, counting padding in the divisor (PyTorch's default).
    pub fn avg_pool2d(&self, opt: Pool2dOptions) -> Result<Tensor> {
        self.pool(Kind::Avg, opt, (0, 0))
    }

    /// Adaptive average pooling to an `(oh, ow)` output (global average pooling for `(1, 1)`).
    pub fn adaptive_avg_pool2d(&self, size: (usize, usize)) -> Result<Tensor> {
        let unused = Pool2dOptions { kernel: (1, 1), stride: (1, 1), padding: (0, 0) };
        self.pool(Kind::Adaptive, unused, size)
    }

    fn pool(&self, kind: Kind, opt: Pool2dOptions, size: (usize, usize)) -> Result<Tensor> {
        let op = kind.name();
        self.check_float(op)?;
        let p = pool_params(op, kind, self.shape(), opt, size)?;
        let (out, idx) = pool_forward(kind, &self.dense()?.detach(), p)?;
        let in_shape = self.shape().to_vec();
        Ok(record(out, &[self], move |g| Ok(vec![Some(pool_backward(kind, g, idx.as_ref(), &in_shape, p)?)])))
    }
}

fn pool_params(
    op: &'static str,
    kind: Kind,
    shape: &[usize],
    opt: Pool2dOptions,
    size: (usize, usize),
) -> Result<PoolParams> {
    let [n, c, h, w] = shape else {
        return Err(Error::shape(op, format!("input must be [N, C, H, W], got {shape:?}")));
    };
    let (n, c, h, w) = (*n, *c, *h, *w);
    let (oh, ow) = match kind {
        Kind::Adaptive => {
            if size.0 == 0 || size.1 == 0 || h == 0 || w == 0 {
                return Err(Error::invalid(op, format!("cannot pool {shape:?} to {size:?}")));
            }
            size
        }
        _ => {
            let (kh, kw) = opt.kernel;
            if kh == 0 || kw == 0 || opt.stride.0 == 0 || opt.stride.1 == 0 {
                return Err(Error::invalid(op, format!("window and stride must be positive, got {opt:?}")));
            }
            if opt.padding.0 > kh / 2 || opt.padding.1 > kw / 2 {
                return Err(Error::invalid(
                    op,
                    format!("padding {:?} is more than half the window {:?}", opt.padding, opt.kernel),
                ));
            }
            let out = |size: usize, k: usize, s: usize, p: usize| {
                size.checked_add(p.checked_mul(2)?)?.checked_sub(k).map(|v| v / s + 1)
            };
            match (out(h, kh, opt.stride.0, opt.padding.0), out(w, kw, opt.stride.1, opt.padding.1)) {
                (Some(oh), Some(ow)) => (oh, ow),
                _ => {
                    return Err(Error::shape(
                        op,
                        format!("window {:?} is larger than the padded input {shape:?}", opt.kernel),
                    ));
                }
            }
        }
    };
    let i = |v: usize| v as i64;
    Ok(PoolParams {
        n: i(n),
        c: i(c),
        h: i(h),
        w: i(w),
        oh: i(oh),
        ow: i(ow),
        kh: i(opt.kernel.0),
        kw: i(opt.kernel.1),
        sh: i(opt.stride.0),
        sw: i(opt.stride.1),
        ph: i(opt.padding.0),
        pw: i(opt.padding.1),
    })
}

/// Sizes as usize: (planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw).
fn sizes(p: &PoolParams) -> [usize; 11] {
    [p.n * p.c, p.h, p.w, p.oh, p.ow, p.kh, p.kw, p.sh, p.sw, p.ph, p.pw].map(|v| v as usize)
}

/// Calls `f` with the clipped window of every output row and column (and the averages'
/// divisors) as the CPU backend takes them.
fn with_windows<R>(kind: Kind, p: &PoolParams, f: impl FnOnce(&crate::cpu::pool::PoolWindows) -> R) -> R {
    let [_, h, w, oh, ow, kh, kw, sh, sw, ph, pw] = sizes(p);
    let clip = |r: std::ops::Range<isize>, n: usize| {
        (r.start.clamp(0, n as isize) as usize, r.end.clamp(0, n as isize) as usize)
    };
    let full_rows: Vec<usize> = (0..oh).map(|o| window(kind, o, h, oh, kh, sh, ph).len()).collect();
    let full_cols: Vec<usize> = (0..ow).map(|o| window(kind, o, w, ow, kw, sw, pw).len()).collect();
    let rows: Vec<(usize, usize)> = (0..oh).map(|o| clip(window(kind, o, h, oh, kh, sh, ph), h)).collect();
    let cols: Vec<(usize, usize)> = (0..ow).map(|o| clip(window(kind, o, w, ow, kw, sw, pw), w)).collect();
    let window_area = (kh * kw) as f64;
    let avg = move |_: usize, _: usize| window_area;
    let adaptive = |oy: usize, ox: usize| (full_rows[oy] * full_cols[ox]) as f64;
    let divisor: Option<&(dyn Fn(usize, usize) -> f64 + Sync)> = match kind {
        Kind::Max => None,
        Kind::Avg => Some(&avg),
        Kind::Adaptive => Some(&adaptive),
    };
    f(&crate::cpu::pool::PoolWindows { h, w, rows: &rows, cols: &cols, divisor })
}

/// The pooled tensor, and for max pooling the flat in-plane index of each chosen element.
fn pool_forward(kind: Kind, x: &Tensor, p: PoolParams) -> Result<(Tensor, Option<Tensor>)> {
    let op = kind.name();
    let [planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw] = sizes(&p);
    let out_shape = [p.n as usize, p.c as usize, oh, ow];
    match x.storage() {
        StorageRef::Cpu(s) => {
            if crate::cpu::fast() {
                let x = x.dense()?;
                let StorageRef::Cpu(d) = x.storage() else { unreachable!("dense keeps the device") };
                let (o, n) = (x.layout.offset(), x.numel());
                let fast = with_windows(kind, &p, |win| {
                    crate::cpu::with_float_vec!(&*d, v => {
                        let (y, idx) = crate::cpu::pool::forward(&v[o..o + n], win);
                        (CpuStorage::from_vec(y), idx)
                    })
                });
                if let Some((y, idx)) = fast {
                    let idx = (kind == Kind::Max).then(|| Tensor::from_cpu(CpuStorage::I64(idx), &out_shape));
                    return Ok((Tensor::from_cpu(y, &out_shape), idx));
                }
            }
            let xv = s.gather_f64(&x.layout);
            let mut y = vec![0.0; planes * oh * ow];
            let mut idx = vec![0i64; if kind == Kind::Max { y.len() } else { 0 }];
            for plane in 0..planes {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let rows = window(kind, oy, h, oh, kh, sh, ph);
                        let cols = window(kind, ox, w, ow, kw, sw, pw);
                        let inside = |i: isize, n: usize| i >= 0 && (i as usize) < n;
                        let taps = rows.clone().flat_map(|iy| cols.clone().map(move |ix| (iy, ix)));
                        let cells: Vec<usize> = taps
                            .filter(|&(iy, ix)| inside(iy, h) && inside(ix, w))
                            .map(|(iy, ix)| iy as usize * w + ix as usize)
                            .collect();
                        let o = (plane * oh + oy) * ow + ox;
                        let value = |cell: usize| xv[plane * h * w + cell];
                        y[o] = match kind {
                            Kind::Max => {
                                let mut best = cells[0];
                                for &cell in &cells[1..] {
                                    let (v, b) = (value(cell), value(best));
                                    if !b.is_nan() && (v > b || v.is_nan()) {
                                        best = cell;
                                    }
                                }
                                idx[o] = best as i64;
                                value(best)
                            }
                            Kind::Avg => cells.iter().map(|&c| value(c)).sum::<f64>() / (kh * kw) as f64,
                            Kind::Adaptive => cells.iter().map(|&c| value(c)).sum::<f64>() / cells.len() as f64,
                        };
                    }
                }
            }
            let out = Tensor::from_cpu(CpuStorage::from_f64(x.dtype, &y), &out_shape);
            let idx = (kind == Kind::Max).then(|| Tensor::from_cpu(CpuStorage::I64(idx), &out_shape));
            Ok((out, idx))
        }
        StorageRef::Cuda(s) => {
            let dev = s.device.clone();
            let n = planes * oh * ow;
            let y = dev.alloc(op, x.dtype, n)?;
            let idx = if kind == Kind::Max { Some(dev.alloc(op, DType::I64, n)?) } else { None };
            if n > 0 {
                let kernel = format!("{op}_fwd_{}", x.dtype);
                let f = dev.function(op, "pool", &kernel)?;
                let mut l = dev.stream.launch_builder(&f);
                l.arg(&*s.buf).arg(&*y.buf);
                if let Some(i) = &idx {
                    l.arg(&*i.buf);
                }
                l.arg(&p);
                // SAFETY: <pool>_fwd_<T>(const T* x, T* y, [i64* idx,] PoolParams) reads the dense
                // input and writes one output (and index) per pooled element; outputs are
                // device memory written only here.
                unsafe { l.launch(elementwise_config(n)) }.map_err(|e| launch_error(op, &kernel, e))?;
            }
            let idx = idx.map(|i| Tensor::from_cuda(i, &out_shape));
            Ok((Tensor::from_cuda(y, &out_shape), idx))
        }
    }
}

fn pool_backward(kind: Kind, dy: &Tensor, idx: Option<&Tensor>, in_shape: &[usize], p: PoolParams) -> Result<Tensor> {
    let op = kind.name();
    let [planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw] = sizes(&p);
    let dy = dy.dense()?;
    match dy.storage() {
        StorageRef::Cpu(s) => {
            if crate::cpu::fast() {
                let idx = idx.map(Tensor::dense).transpose()?;
                let idx_ref = idx.as_ref().map(|i| (i.storage(), i.layout.offset()));
                let iv = match &idx_ref {
                    Some((StorageRef::Cpu(i), o)) => i.as_i64().map(|v| &v[*o..*o + dy.numel()]),
                    _ => None,
                };
                let (o, n) = (dy.layout.offset(), dy.numel());
                let fast = with_windows(kind, &p, |win| {
                    crate::cpu::with_float_vec!(&*s, v => {
                        CpuStorage::from_vec(crate::cpu::pool::backward(&v[o..o + n], iv, win))
                    })
                });
                if let Some(dx) = fast {
                    return Ok(Tensor::from_cpu(dx, in_shape));
                }
            }
            let gv = s.gather_f64(&dy.layout);
            let iv = idx.map(|i| i.to_vec::<i64>()).transpose()?;
            let mut dx = vec![0.0; planes * h * w];
            // Scatter each output's gradient over its window (the gather of the kernel, reversed).
            for plane in 0..planes {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let o = (plane * oh + oy) * ow + ox;
                        if let Some(iv) = &iv {
                            dx[plane * h * w + iv[o] as usize] += gv[o];
                            continue;
                        }
                        let rows = window(kind, oy, h, oh, kh, sh, ph);
                        let cols = window(kind, ox, w, ow, kw, sw, pw);
                        let divisor = match kind {
                            Kind::Adaptive => (rows.len() * cols.len()) as f64,
                            _ => (kh * kw) as f64,
                        };
                        for iy in rows.filter(|&r| r >= 0 && (r as usize) < h) {
                            for ix in cols.clone().filter(|&c| c >= 0 && (c as usize) < w) {
                                dx[plane * h * w + iy as usize * w + ix as usize] += gv[o] / divisor;
                            }
                        }
                    }
                }
            }
            Ok(Tensor::from_cpu(CpuStorage::from_f64(dy.dtype, &dx), in_shape))
        }
        StorageRef::Cuda(s) => {
            let dev = s.device.clone();
            let n = planes * h * w;
            let dx = dev.alloc(op, dy.dtype, n)?;
            if n > 0 {
                let kernel = format!("{op}_bwd_{}", dy.dtype);
                let f = dev.function(op, "pool", &kernel)?;
                let idx = idx.map(Tensor::dense).transpose()?;
                let idx_storage = idx.as_ref().map(|i| i.storage());
                let mut l = dev.stream.launch_builder(&f);
                l.arg(&*s.buf);
                if let Some(StorageRef::Cuda(i)) = &idx_storage {
                    l.arg(&*i.buf);
                }
                l.arg(&*dx.buf).arg(&p);
                // SAFETY: <pool>_bwd_<T>(const T* dy, [const i64* idx,] T* dx, PoolParams) reads
                // the dense output gradient (and indices) and writes every input gradient.
                unsafe { l.launch(elementwise_config(n)) }.map_err(|e| launch_error(op, &kernel, e))?;
            }
            Ok(Tensor::from_cuda(dx, in_shape))
        }
    }
}
