//! Reductions over any set of axes, or the whole tensor: sum, mean, max, min, and
//! argmax/argmin along one axis (`kernels/reduce.cu`).

use crate::autograd::record;
use crate::cpu::reduce::Fold;
use crate::cuda::params::ReduceParams;
use crate::cuda::{CudaDevice, CudaStorage, launch_error, strided_layout};
use crate::layout::{Layout, normalize_axis};
use crate::storage::{CpuStorage, StorageRef};
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// A reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Σ x
    Sum,
    /// Σ x / n (floats only)
    Mean,
    /// The largest element, NaN-propagating.
    Max,
    /// The smallest element, NaN-propagating.
    Min,
}

const THREADS: u32 = 256;
/// Split long rows until about this many blocks run.
const TARGET_BLOCKS: usize = 1024;
/// ... but never into chunks shorter than this.
const MIN_CHUNK: usize = 4096;

impl ReduceOp {
    /// The op's name.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }

    /// The kernel's op: mean is a scaled sum.
    fn kernel_op(self) -> &'static str {
        match self {
            ReduceOp::Sum | ReduceOp::Mean => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }

    /// The CPU reference over one row, in f64.
    pub fn apply(self, row: &[f64]) -> f64 {
        match self {
            ReduceOp::Sum => row.iter().sum(),
            ReduceOp::Mean => row.iter().sum::<f64>() / row.len() as f64,
            ReduceOp::Max => {
                row.iter().copied().fold(f64::NEG_INFINITY, |a, b| if a.is_nan() || a > b { a } else { b })
            }
            ReduceOp::Min => row.iter().copied().fold(f64::INFINITY, |a, b| if a.is_nan() || a < b { a } else { b }),
        }
    }
}

pub(crate) fn kernel_names() -> Vec<String> {
    let mut names = Vec::new();
    for op in ["sum", "max", "min"] {
        for dtype in DType::ALL {
            let acc = dtype.accumulator();
            names.push(format!("reduce_{op}_{dtype}_{dtype}"));
            if acc != dtype {
                names.push(format!("reduce_{op}_{dtype}_{acc}"));
                names.push(format!("reduce_{op}_{acc}_{dtype}"));
            }
        }
    }
    names.extend(DType::ALL.iter().flat_map(|d| [format!("argmax_{d}"), format!("argmin_{d}")]));
    for kind in ["sum", "partial", "fold"] {
        names.extend(DType::ALL.iter().map(|d| format!("reduce_cols_{kind}_{d}")));
    }
    names
}

/// The input's shape with the reduced axes (all when `axes` is empty) set to 1.
fn kept_dims_shape(shape: &[usize], axes: &[isize]) -> Result<Vec<usize>> {
    let mut out = shape.to_vec();
    if axes.is_empty() {
        out.iter_mut().for_each(|s| *s = 1);
    }
    for &axis in axes {
        out[normalize_axis("reduce", axis, shape)?] = 1;
    }
    Ok(out)
}

/// The tensor viewed as `outer` rows of `inner` reduced elements, and the output shape.
struct Rows {
    view: Layout,
    outer: usize,
    inner: usize,
    out_shape: Vec<usize>,
    /// How many leading dims of `view` are kept (the rest are reduced).
    kept_rank: usize,
    /// Whether the source is dense with exactly its leading dims reduced: a sum over the rows
    /// of a row-major `[inner, outer]` matrix, which the column kernel reads coalesced.
    columns: bool,
}

fn rows(op: &'static str, t: &Tensor, axes: &[isize], keepdim: bool) -> Result<Rows> {
    let rank = t.rank();
    let mut reduced = vec![axes.is_empty(); rank];
    for &axis in axes {
        let a = normalize_axis(op, axis, t.shape())?;
        if std::mem::replace(&mut reduced[a], true) {
            return Err(Error::invalid(op, format!("axis {axis} is listed twice in {axes:?}")));
        }
    }
    let kept: Vec<usize> = (0..rank).filter(|&d| !reduced[d]).collect();
    let gone: Vec<usize> = (0..rank).filter(|&d| reduced[d]).collect();
    let perm: Vec<usize> = kept.iter().chain(&gone).copied().collect();
    let view = t.layout.permute(&perm)?;
    let outer = kept.iter().map(|&d| t.shape()[d]).product();
    let inner = gone.iter().map(|&d| t.shape()[d]).product();
    let out_shape = if keepdim {
        (0..rank).map(|d| if reduced[d] { 1 } else { t.shape()[d] }).collect()
    } else {
        kept.iter().map(|&d| t.shape()[d]).collect()
    };
    let columns = t.layout.is_contiguous()
        && !kept.is_empty()
        && !gone.is_empty()
        && gone.iter().enumerate().all(|(i, &d)| i == d);
    Ok(Rows { view, outer, inner, out_shape, kept_rank: kept.len(), columns })
}

impl Tensor {
    /// Reduces over `axes` (every axis when empty); `keepdim` keeps them with size 1.
    pub fn reduce(&self, op: ReduceOp, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let out = self.reduce_forward(op, axes, keepdim)?;
        let r = rows(op.name(), self, axes, keepdim)?;
        let kept_shape: Vec<usize> = kept_dims_shape(self.shape(), axes)?;
        let (x, y) = (self.detach(), out.detach());
        Ok(record(out, &[self], move |g| {
            // The output gradient, with the reduced axes back at size 1, spread over the input.
            let spread = |t: &Tensor| -> Result<Tensor> { t.reshape(&kept_shape)?.broadcast_as(x.shape()) };
            let gx = match op {
                ReduceOp::Sum => spread(g)?.contiguous()?,
                ReduceOp::Mean => spread(g)?.mul_scalar(1.0 / r.inner as f64)?,
                // Every element equal to the extreme shares the gradient evenly.
                ReduceOp::Max | ReduceOp::Min => {
                    let hits = x.eq(&spread(&y)?)?;
                    let count = hits.sum_forward_kept(&kept_shape)?;
                    spread(g)?.mul(&hits)?.div(&spread(&count)?)?
                }
            };
            Ok(vec![Some(gx)])
        }))
    }

    /// Sums a gradient of a broadcast result back to `shape` (the shape before broadcasting).
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let lead = self
            .rank()
            .checked_sub(shape.len())
            .ok_or_else(|| Error::shape("sum_to", format!("cannot sum {:?} down to {shape:?}", self.shape())))?;
        let mut axes: Vec<isize> = (0..lead as isize).collect();
        for (i, &size) in shape.iter().enumerate() {
            match (size, self.shape()[lead + i]) {
                (s, t) if s == t => {}
                (1, _) => axes.push((lead + i) as isize),
                _ => return Err(Error::shape("sum_to", format!("cannot sum {:?} down to {shape:?}", self.shape()))),
            }
        }
        self.sum(&axes, true)?.reshape(shape)
    }

    /// Σ over the axes where `kept_shape` (same rank) has size 1, keeping them.
    fn sum_forward_kept(&self, kept_shape: &[usize]) -> Result<Tensor> {
        let axes: Vec<isize> =
            (0..self.rank()).filter(|&d| kept_shape[d] == 1 && self.shape()[d] != 1).map(|d| d as isize).collect();
        if axes.is_empty() {
            return Ok(self.clone());
        }
        self.reduce_forward(ReduceOp::Sum, &axes, true)
    }

    fn reduce_forward(&self, op: ReduceOp, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let name = op.name();
        if op == ReduceOp::Mean {
            self.check_float(name)?;
        }
        let r = rows(name, self, axes, keepdim)?;
        if r.inner == 0 && r.outer > 0 && matches!(op, ReduceOp::Max | ReduceOp::Min) {
            return Err(Error::invalid(name, format!("cannot reduce an empty axis of shape {:?}", self.shape())));
        }
        match self.storage() {
            StorageRef::Cpu(s) => {
                if let Some(out) = cpu_reduce(op, &s, &r) {
                    return Ok(Tensor::from_cpu(CpuStorage::from_f64(self.dtype, &out), &r.out_shape));
                }
                let values = s.gather_f64(&r.view);
                let out: Vec<f64> = (0..r.outer).map(|o| op.apply(&values[o * r.inner..(o + 1) * r.inner])).collect();
                Ok(Tensor::from_cpu(CpuStorage::from_f64(self.dtype, &out), &r.out_shape))
            }
            StorageRef::Cuda(s) => {
                let scale = if op == ReduceOp::Mean { 1.0 / r.inner as f64 } else { 1.0 };
                let out = cuda_reduce(name, op.kernel_op(), s, &r, scale)?;
                Ok(Tensor::from_cuda(out, &r.out_shape))
            }
        }
    }

    /// Σ over `axes` (all when empty).
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, axes, keepdim)
    }

    /// Mean over `axes` (all when empty).
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Mean, axes, keepdim)
    }

    /// Maximum over `axes` (all when empty).
    pub fn max(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Max, axes, keepdim)
    }

    /// Minimum over `axes` (all when empty).
    pub fn min(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Min, axes, keepdim)
    }

    /// Σ of all elements, as a 0-dim tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(&[], false)
    }

    /// Mean of all elements, as a 0-dim tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean(&[], false)
    }

    /// Index of the largest element along `axis` (first one on ties; NaN counts as largest), as i64.
    pub fn argmax(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.arg_reduce("argmax", true, axis, keepdim)
    }

    /// Index of the smallest element along `axis` (first one on ties; NaN counts as smallest), as i64.
    pub fn argmin(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.arg_reduce("argmin", false, axis, keepdim)
    }

    fn arg_reduce(&self, name: &'static str, greater: bool, axis: isize, keepdim: bool) -> Result<Tensor> {
        let r = rows(name, self, &[axis], keepdim)?;
        if r.inner == 0 && r.outer > 0 {
            return Err(Error::invalid(name, format!("cannot reduce an empty axis of shape {:?}", self.shape())));
        }
        match self.storage() {
            StorageRef::Cpu(s) => {
                let values = s.gather_f64(&r.view);
                let out: Vec<i64> =
                    (0..r.outer).map(|o| arg_best(&values[o * r.inner..(o + 1) * r.inner], greater) as i64).collect();
                Ok(Tensor::from_cpu(CpuStorage::I64(out), &r.out_shape))
            }
            StorageRef::Cuda(s) => {
                let dev = s.device.clone();
                let mut out = dev.alloc(name, DType::I64, r.outer)?;
                if r.outer > 0 {
                    let kernel = format!("{name}_{}", self.dtype);
                    let params = ReduceParams {
                        outer: r.outer as i64,
                        inner: r.inner as i64,
                        splits: 1,
                        chunk: r.inner as i64,
                        scale: 1.0,
                        src: strided_layout(name, &r.view)?,
                    };
                    launch_reduce(&dev, name, &kernel, &s.buf, &mut out, &params)?;
                }
                Ok(Tensor::from_cuda(out, &r.out_shape))
            }
        }
    }
}

/// The fast CPU path over float storage, accumulating in f64 (None for integers, left to the
/// reference).
fn cpu_reduce(op: ReduceOp, s: &CpuStorage, r: &Rows) -> Option<Vec<f64>> {
    if !crate::cpu::fast() {
        return None;
    }
    let fold = match op {
        ReduceOp::Sum | ReduceOp::Mean => Fold::Sum,
        ReduceOp::Max => Fold::Max,
        ReduceOp::Min => Fold::Min,
    };
    let mut out = crate::cpu::with_float_vec!(s, x => crate::cpu::reduce::reduce(fold, x, &r.view, r.kept_rank))?;
    if op == ReduceOp::Mean {
        let n = r.inner as f64;
        out.iter_mut().for_each(|v| *v /= n);
    }
    Some(out)
}

/// CPU reference of argmax/argmin: first index of the best value; NaN beats everything.
fn arg_best(row: &[f64], greater: bool) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate().skip(1) {
        let b = row[best];
        if b.is_nan() {
            break;
        }
        if v.is_nan() || (greater && v > b) || (!greater && v < b) {
            best = i;
        }
    }
    best
}

/// One pass, or two when few long rows would leave the GPU idle: the first folds chunks of
/// each row into Acc-typed partials, the second folds the partials.
fn cuda_reduce(name: &'static str, op: &str, src: &CudaStorage, r: &Rows, scale: f64) -> Result<CudaStorage> {
    let dev = src.device.clone();
    let dtype = src.dtype;
    let mut out = dev.alloc(name, dtype, r.outer)?;
    if r.outer == 0 {
        return Ok(out);
    }
    // A warp of columns at least: the column kernel reads rows coalesced.
    if op == "sum" && r.columns && r.outer >= 32 {
        return column_sums(name, &dev, src, out, r, scale);
    }
    let layout = strided_layout(name, &r.view)?;
    let splits = TARGET_BLOCKS.div_ceil(r.outer).min(r.inner / MIN_CHUNK).max(1);
    if splits == 1 {
        let params = ReduceParams {
            outer: r.outer as i64,
            inner: r.inner as i64,
            splits: 1,
            chunk: r.inner as i64,
            scale,
            src: layout,
        };
        launch_reduce(&dev, name, &format!("reduce_{op}_{dtype}_{dtype}"), &src.buf, &mut out, &params)?;
        return Ok(out);
    }
    let acc = dtype.accumulator();
    let chunk = r.inner.div_ceil(splits);
    let mut partials = dev.alloc(name, acc, r.outer * splits)?;
    let first = ReduceParams {
        outer: r.outer as i64,
        inner: r.inner as i64,
        splits: splits as i64,
        chunk: chunk as i64,
        scale: 1.0,
        src: layout,
    };
    launch_reduce(&dev, name, &format!("reduce_{op}_{dtype}_{acc}"), &src.buf, &mut partials, &first)?;
    let second = ReduceParams {
        outer: r.outer as i64,
        inner: splits as i64,
        splits: 1,
        chunk: splits as i64,
        scale,
        src: strided_layout(name, &Layout::contiguous(&[r.outer, splits]))?,
    };
    launch_reduce(&dev, name, &format!("reduce_{op}_{acc}_{dtype}"), &partials.buf, &mut out, &second)?;
    Ok(out)
}

fn launch_reduce(
    dev: &Arc<CudaDevice>,
    name: &'static str,
    kernel: &str,
    src: &cudarc::driver::CudaSlice<u8>,
    out: &mut CudaStorage,
    params: &ReduceParams,
) -> Result<()> {
    let f = dev.function(name, "reduce", kernel)?;
    let tasks = (params.outer * params.splits) as usize;
    let cfg = LaunchConfig {
        grid_dim: (tasks.clamp(1, 65535) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(src).arg(&mut *out.buf).arg(params);
    // SAFETY: reduce_<op>_<in>_<out> / argmax_<T>(const In*, Out*, ReduceParams) reads the
    // params' view of `src` and writes outer * splits outputs, which `out` holds.
    unsafe { launch.launch(cfg) }.map_err(|e| launch_error(name, kernel, e))?;
    Ok(())
}

/// Rows a chunk of the column kernel sums at least: shorter chunks cost more in partial sums
/// than they gain in parallelism.
const MIN_COLUMN_CHUNK: usize = 256;

/// Sums over the leading dims of a dense source (`r.columns`): the column kernels of
/// kernels/reduce.cu, with the rows cut into chunks (partial sums, then a fold) when the blocks
/// of 32 columns alone are too few to keep the GPU busy.
fn column_sums(
    name: &'static str,
    dev: &std::sync::Arc<crate::cuda::CudaDevice>,
    src: &CudaStorage,
    mut out: CudaStorage,
    r: &Rows,
    scale: f64,
) -> Result<CudaStorage> {
    let dtype = src.dtype;
    let (rows, cols, offset) = (r.inner as i64, r.outer as i64, r.view.offset() as i64);
    let column_blocks = r.outer.div_ceil(32).min(i32::MAX as usize);
    let chunks = (2 * dev.multiprocessors()).div_ceil(column_blocks).min(r.inner / MIN_COLUMN_CHUNK).clamp(1, 65535);
    let config = |chunks: usize| LaunchConfig {
        grid_dim: (column_blocks as u32, chunks as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    if chunks == 1 {
        let kernel = format!("reduce_cols_sum_{dtype}");
        let f = dev.function(name, "reduce", &kernel)?;
        let mut launch = dev.stream.launch_builder(&f);
        launch.arg(&*src.buf).arg(&mut *out.buf).arg(&rows).arg(&cols).arg(&offset).arg(&scale);
        // SAFETY: reduce_cols_sum_<T>(const T* x, T* out, i64 rows, i64 cols, i64 offset, double)
        // reads the dense rows x cols elements from `offset` (the source is contiguous there) and
        // writes `cols` sums.
        unsafe { launch.launch(config(1)) }.map_err(|e| launch_error(name, &kernel, e))?;
        return Ok(out);
    }
    let chunk = r.inner.div_ceil(chunks);
    let chunks = r.inner.div_ceil(chunk);
    let mut partials = dev.alloc(name, dtype.accumulator(), chunks * r.outer)?;
    let kernel = format!("reduce_cols_partial_{dtype}");
    let f = dev.function(name, "reduce", &kernel)?;
    let chunk_arg = chunk as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(&*src.buf).arg(&mut *partials.buf).arg(&rows).arg(&cols).arg(&offset).arg(&chunk_arg);
    // SAFETY: reduce_cols_partial_<T>(const T* x, Acc* out, i64 rows, i64 cols, i64 offset, i64
    // chunk) reads the dense rows x cols elements from `offset` and writes one row of `cols`
    // partial sums per chunk: chunks x cols, the workspace's size.
    unsafe { launch.launch(config(chunks)) }.map_err(|e| launch_error(name, &kernel, e))?;
    let kernel = format!("reduce_cols_fold_{dtype}");
    let f = dev.function(name, "reduce", &kernel)?;
    let chunks_arg = chunks as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(&*partials.buf).arg(&mut *out.buf).arg(&chunks_arg).arg(&cols).arg(&scale);
    // SAFETY: reduce_cols_fold_<T>(const Acc* partial, T* out, i64 chunks, i64 cols, double)
    // reads the chunks x cols partial sums and writes `cols` sums.
    unsafe { launch.launch(config(1)) }.map_err(|e| launch_error(name, &kernel, e))?;
    Ok(out)
}
