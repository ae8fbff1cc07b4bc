//! Loss functions. Cross-entropy from logits is one fused kernel each way
//! (`kernels/loss.cu`); MSE and binary cross-entropy compose other ops.

use crate::autograd::record;
use crate::cuda::{CudaStorage, elementwise_config, launch_error};
use crate::storage::{CpuStorage, StorageRef};
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

const THREADS: u32 = 256;

pub(crate) fn kernel_names() -> Vec<String> {
    DType::ALL
        .iter()
        .filter(|d| d.is_float())
        .flat_map(|d| [format!("cross_entropy_fwd_{d}"), format!("cross_entropy_bwd_{d}")])
        .collect()
}

impl Tensor {
    /// Mean cross-entropy of `[N, C]` logits against `[N]` i64 class labels:
    /// mean over rows of logsumexp(x) - x[label], as `torch.nn.functional.cross_entropy`.
    /// On the CPU a label outside `0..C` is an error; on the GPU (which is not waited for) it
    /// makes that row's loss NaN.
    pub fn cross_entropy(&self, labels: &Tensor) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        self.check_float(OP)?;
        if labels.dtype != DType::I64 {
            return Err(Error::unsupported(OP, labels.dtype, " (labels must be i64 class indices)"));
        }
        if self.device != labels.device {
            return Err(Error::DeviceMismatch { op: OP, lhs: self.device, rhs: labels.device });
        }
        if self.rank() != 2 || labels.rank() != 1 || labels.shape()[0] != self.shape()[0] {
            return Err(Error::shape(
                OP,
                format!("logits must be [N, C] and labels [N], got {:?} and {:?}", self.shape(), labels.shape()),
            ));
        }
        let (rows, cols) = (self.shape()[0], self.shape()[1]);
        let (x, y) = (self.dense()?, labels.dense()?);
        let (per_row, lse) = match (x.storage(), y.storage()) {
            (StorageRef::Cpu(xs), StorageRef::Cpu(ys)) => {
                let labels = ys.as_i64().expect("dtype checked above");
                if let Some(&bad) = labels.iter().find(|&&l| l < 0 || l as u64 >= cols as u64) {
                    return Err(Error::IndexOutOfRange { op: OP, index: bad, size: cols });
                }
                let fast = crate::cpu::fast().then(|| {
                    let (o, n) = (x.layout.offset(), x.numel());
                    crate::cpu::with_float_vec!(&*xs, v => crate::cpu::softmax::cross_entropy(&v[o..o + n], cols, labels))
                });
                let (losses, lses) = match fast.flatten() {
                    Some(per_row) => per_row,
                    None => reference_cross_entropy(&xs.gather_f64(&x.layout), cols, labels),
                };
                (
                    Tensor::from_cpu(CpuStorage::from_f64(self.dtype, &losses), &[rows]),
                    Tensor::from_cpu(CpuStorage::from_f64(self.dtype.accumulator(), &lses), &[rows]),
                )
            }
            (StorageRef::Cuda(xs), StorageRef::Cuda(ys)) => cuda_forward(xs, ys, rows, cols)?,
            _ => unreachable!("devices checked above"),
        };
        let out = per_row.detach().mean_all()?;
        let (xd, yd) = (x.detach(), y.detach());
        Ok(record(out, &[self], move |g| Ok(vec![Some(cross_entropy_backward(&xd, &yd, &lse, g, rows, cols)?)])))
    }

    /// Mean squared error mean((self - target)²).
    pub fn mse_loss(&self, target: &Tensor) -> Result<Tensor> {
        let diff = self.sub(target)?;
        diff.mul(&diff)?.mean_all()
    }

    /// Mean binary cross-entropy of logits against targets in [0, 1], computed stably as
    /// max(x, 0) - x t + log(1 + e^-|x|) (`torch.nn.functional.binary_cross_entropy_with_logits`).
    pub fn binary_cross_entropy_with_logits(&self, target: &Tensor) -> Result<Tensor> {
        let softplus_tail = self.abs()?.neg()?.exp()?.add_scalar(1.0)?.log()?;
        self.relu()?.sub(&self.mul(target)?)?.add(&softplus_tail)?.mean_all()
    }

    /// An inverted-dropout mask: each element is 1/keep with probability `keep`, else 0, drawn
    /// from a counter-based generator so a seed gives the same mask on every device.
    pub fn dropout_mask(shape: &[usize], keep: f64, seed: u64, dtype: DType, device: &crate::Device) -> Result<Tensor> {
        if !(keep > 0.0 && keep <= 1.0) {
            return Err(Error::invalid("dropout_mask", format!("keep probability {keep} is not in (0, 1]")));
        }
        let n: usize = shape.iter().product();
        match device {
            crate::Device::Cpu => {
                let values: Vec<f64> =
                    (0..n).map(|i| if counter_uniform(seed, i as u64) < keep { 1.0 / keep } else { 0.0 }).collect();
                Ok(Tensor::from_cpu(CpuStorage::from_f64(dtype, &values), shape))
            }
            crate::Device::Cuda(ordinal) => {
                let dev = crate::cuda::cuda_device(*ordinal)?;
                let mut out = dev.alloc("dropout_mask", dtype, n)?;
                if n > 0 {
                    let kernel = format!("dropout_mask_{dtype}");
                    let f = dev.function("dropout_mask", "fill", &kernel)?;
                    let n_arg = n as i64;
                    let mut launch = dev.stream.launch_builder(&f);
                    launch.arg(&mut *out.buf).arg(&n_arg).arg(&keep).arg(&seed);
                    // SAFETY: dropout_mask_<T>(T* out, i64 n, double keep, u64 seed) writes n elements.
                    unsafe { launch.launch(elementwise_config(n)) }
                        .map_err(|e| launch_error("dropout_mask", &kernel, e))?;
                }
                Ok(Tensor::from_cuda(out, shape))
            }
        }
    }
}

/// SplitMix64 of `seed + i * golden`, cut to 24 bits: the same bits as `kernels/fill.cu`.
pub fn counter_uniform(seed: u64, i: u64) -> f64 {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f64 / 16_777_216.0
}

fn cuda_forward(x: &CudaStorage, labels: &CudaStorage, rows: usize, cols: usize) -> Result<(Tensor, Tensor)> {
    const OP: &str = "cross_entropy";
    let dev = x.device.clone();
    let mut loss = dev.alloc(OP, x.dtype, rows)?;
    let mut lse = dev.alloc(OP, x.dtype.accumulator(), rows)?;
    if rows > 0 {
        let kernel = format!("cross_entropy_fwd_{}", x.dtype);
        let f = dev.function(OP, "loss", &kernel)?;
        let cfg =
            LaunchConfig { grid_dim: (rows.min(65535) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let (r, c) = (rows as i64, cols as i64);
        let mut launch = dev.stream.launch_builder(&f);
        launch.arg(&*x.buf).arg(&*labels.buf).arg(&mut *loss.buf).arg(&mut *lse.buf).arg(&r).arg(&c);
        // SAFETY: cross_entropy_fwd_<T>(const T* x, const i64* labels, T* loss, Acc* lse, i64 rows,
        // i64 cols) reads rows * cols logits and rows labels, writes rows losses and lses.
        unsafe { launch.launch(cfg) }.map_err(|e| launch_error(OP, &kernel, e))?;
    }
    Ok((Tensor::from_cuda(loss, &[rows]), Tensor::from_cuda(lse, &[rows])))
}

/// CPU reference of the per-row losses and log-sum-exps of dense `[rows, cols]` logits, in f64.
fn reference_cross_entropy(values: &[f64], cols: usize, labels: &[i64]) -> (Vec<f64>, Vec<f64>) {
    labels
        .iter()
        .enumerate()
        .map(|(r, &label)| {
            let row = &values[r * cols..(r + 1) * cols];
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            (lse - row[label as usize], lse)
        })
        .unzip()
}

/// dx = (softmax(x) - onehot(label)) * g / rows.
fn cross_entropy_backward(
    x: &Tensor,
    labels: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    let scale = 1.0 / rows.max(1) as f64;
    let g = g.dense()?;
    match (x.storage(), labels.storage(), lse.storage(), g.storage()) {
        (StorageRef::Cpu(xs), StorageRef::Cpu(ys), StorageRef::Cpu(ls), StorageRef::Cpu(gs)) => {
            if crate::cpu::fast() {
                let (lses, labels) = (ls.gather_f64(&lse.layout), ys.as_i64().expect("i64"));
                let factor = gs.gather_f64(&g.layout)[0] * scale;
                let (o, n) = (x.layout.offset(), x.numel());
                let dx = crate::cpu::with_float_vec!(&*xs, v => CpuStorage::from_vec(
                    crate::cpu::softmax::cross_entropy_grad(&v[o..o + n], cols, labels, &lses, factor)
                ));
                if let Some(dx) = dx {
                    return Ok(Tensor::from_cpu(dx, x.shape()));
                }
            }
            let (values, lses, labels) =
                (xs.gather_f64(&x.layout), ls.gather_f64(&lse.layout), ys.as_i64().expect("i64"));
            let factor = gs.gather_f64(&g.layout)[0] * scale;
            let dx: Vec<f64> = (0..rows * cols)
                .map(|e| {
                    let (r, c) = (e / cols, e % cols);
                    let hit = if labels[r] as usize == c { 1.0 } else { 0.0 };
                    ((values[e] - lses[r]).exp() - hit) * factor
                })
                .collect();
            Ok(Tensor::from_cpu(CpuStorage::from_f64(x.dtype, &dx), x.shape()))
        }
        (StorageRef::Cuda(xs), StorageRef::Cuda(ys), StorageRef::Cuda(ls), StorageRef::Cuda(gs)) => {
            let dev = xs.device.clone();
            let n = rows * cols;
            let mut dx = dev.alloc(OP, x.dtype, n)?;
            if n > 0 {
                let kernel = format!("cross_entropy_bwd_{}", x.dtype);
                let f = dev.function(OP, "loss", &kernel)?;
                let (r, c) = (rows as i64, cols as i64);
                let mut launch = dev.stream.launch_builder(&f);
                launch
                    .arg(&*xs.buf)
                    .arg(&*ys.buf)
                    .arg(&*ls.buf)
                    .arg(&*gs.buf)
                    .arg(&mut *dx.buf)
                    .arg(&r)
                    .arg(&c)
                    .arg(&scale);
                // SAFETY: cross_entropy_bwd_<T>(const T* x, const i64* labels, const Acc* lse,
                // const T* g, T* dx, i64 rows, i64 cols, double scale) reads the dense inputs
                // and one gradient value, and writes rows * cols gradients.
                unsafe { launch.launch(elementwise_config(n)) }.map_err(|e| launch_error(OP, &kernel, e))?;
            }
            Ok(Tensor::from_cuda(dx, x.shape()))
        }
        _ => unreachable!("one device throughout"),
    }
}
