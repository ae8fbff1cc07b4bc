//! Matrix products: 2-D, batched with broadcast batch dims, and transposed operands read
//! through their strides without copies (`kernels/matmul.cu`).

use crate::autograd::record;
use crate::cpu::gemm;
use crate::cuda::gemm::GemmPlan;
use crate::cuda::launch_error;
use crate::cuda::params::{MatmulParams, NABLA_MAX_DIMS};
use crate::layout::{Layout, broadcast_shapes};
use crate::storage::{CpuStorage, StorageRef};
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::PushKernelArg;

pub(crate) fn kernel_names() -> Vec<String> {
    let fma = DType::ALL
        .iter()
        .filter(|d| d.is_float())
        .flat_map(|d| GemmPlan::infixes().map(move |t| [format!("matmul_{t}{d}"), format!("linear_{t}{d}")]))
        .flatten();
    // f16/bf16 on m16n8k16, f32 as TF32 on m16n8k8 (when allowed).
    let tensor_cores = [DType::F16, DType::BF16, DType::F32]
        .iter()
        .flat_map(|d| GemmPlan::infixes().map(move |t| [format!("matmul_tc_{t}{d}"), format!("linear_tc_{t}{d}")]))
        .flatten();
    // Versions 2 and 3 of the tensor-core GEMM for f16/bf16 and for f32 as TF32, versions 2-5 of
    // the f32 GEMM.
    let versions = |d: DType| match d {
        DType::F32 => &["v2", "v3", "v4", "v5", "tf32_v2", "tf32_v3"][..],
        _ => &["v2", "v3"][..],
    };
    let pipelined = [DType::F16, DType::BF16, DType::F32]
        .into_iter()
        .flat_map(|d| versions(d).iter().map(move |v| (d, v)))
        .flat_map(|(d, v)| {
            ["kk", "kn", "mk", "mn"]
                .into_iter()
                .flat_map(move |l| [format!("matmul_{v}_{l}_{d}"), format!("linear_{v}_{l}_{d}")])
        });
    let split_sums = DType::ALL.iter().filter(|d| d.is_float()).map(|d| format!("matmul_split_sum_{d}"));
    let probes =
        ["mma_probe_bf16", "mma_probe_f16", "mma_probe_tf32", "mma_probe_3xtf32", "ldmatrix_probe"].map(String::from);
    fma.chain(tensor_cores).chain(pipelined).chain(split_sums).chain(probes).collect()
}

impl Tensor {
    /// The matrix product, as `torch.matmul`: `[..., m, k] x [..., k, n] -> [..., m, n]` with the
    /// batch dims broadcast; a 1-D operand is a row (left) or column (right) vector whose
    /// dim is dropped from the result.
    /// Under [`crate::amp::autocast`], f32 operands are multiplied in the autocast dtype.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        if let Some(low) = crate::amp::product_dtype(&[self, rhs]) {
            return crate::amp::in_low_precision(&[self, rhs], low, |t| t[0].matmul(&t[1]));
        }
        self.matmul_plus("matmul", rhs, Epilogue::default())
    }

    /// The affine map of `torch.nn.functional.linear`: `x Wᵀ + b` for input `[..., in]`, weight
    /// `[out, in]` and optional bias `[out]`, giving `[..., out]`. The bias is added in the
    /// matrix product's epilogue (one kernel on the GPU, no second pass over the output).
    /// Under [`crate::amp::autocast`], f32 operands are multiplied in the autocast dtype.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.linear_then("linear", weight, bias, false)
    }

    /// `relu(x Wᵀ + b)`: [`Tensor::linear`] followed by [`Tensor::relu`], with the ReLU applied as
    /// the product's epilogue writes each output (one kernel on the GPU, one pass on the CPU)
    /// and its backward taken from the saved output, so the pre-activation is never stored.
    /// Equal to the two ops, NaN included; [`crate::nn::Sequential`] uses it wherever a ReLU
    /// follows a Linear layer.
    pub fn linear_relu(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.linear_then("linear_relu", weight, bias, true)
    }

    /// `linear`, then ReLU when `relu`.
    fn linear_then(&self, op: &'static str, weight: &Tensor, bias: Option<&Tensor>, relu: bool) -> Result<Tensor> {
        let (Some(&features), [out, inputs]) = (self.shape().last(), weight.shape()) else {
            return Err(Error::shape(
                op,
                format!("input [..., in] and weight [out, in], got {:?} and {:?}", self.shape(), weight.shape()),
            ));
        };
        if features != *inputs || bias.is_some_and(|b| b.shape() != [*out]) {
            return Err(Error::shape(
                op,
                format!(
                    "input {:?}, weight {:?} and bias {:?} do not fit",
                    self.shape(),
                    weight.shape(),
                    bias.map(|b| b.shape().to_vec())
                ),
            ));
        }
        let operands: Vec<&Tensor> = [Some(self), Some(weight), bias].into_iter().flatten().collect();
        if let Some(low) = crate::amp::product_dtype(&operands) {
            return self.linear_mixed(op, low, weight, bias, relu);
        }
        self.matmul_plus(op, &weight.t()?, Epilogue { bias, relu, out_acc: false })
    }

    /// Autocast's `linear`, one node on the f32 tensors the caller passed: x, W and b rounded to
    /// `low`, the product there with f32 accumulation, its output (bias and ReLU added in the
    /// epilogue) rounded to `low` as PyTorch's is and widened to f32. The backward rounds g to
    /// `low` once and writes dX = g W and dW = gᵀ x in f32 straight from their accumulators (no
    /// rounding to `low` and no cast back), and sums the bias's gradient from g in f32.
    fn linear_mixed(
        &self,
        op: &'static str,
        low: DType,
        weight: &Tensor,
        bias: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        let cast = |t: &Tensor| t.detach().to_dtype(low);
        let (x_low, w_low, b_low) = (cast(self)?, cast(weight)?, bias.map(cast).transpose()?);
        let epilogue = Epilogue { bias: b_low.as_ref(), relu, out_acc: false };
        let out = x_low.matmul_plus(op, &w_low.t()?, epilogue)?.to_dtype(DType::F32)?;
        let relu_out = relu.then(|| out.detach());
        let x_shape = self.shape().to_vec();
        let needs = [self.requires_grad(), weight.requires_grad(), false];
        let n = w_low.shape()[0];
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        let has_bias = bias.is_some();
        Ok(record(out, &inputs, move |g| {
            let g = &super::unary::relu_masked(relu_out.as_ref(), g)?;
            let mut grads = shared_matrix_grads(&g.to_dtype(low)?, &x_low, &w_low.t()?, &x_shape, needs, true)?;
            // dW arrives as the [in, out] view of Wᵀ's gradient; the weight is [out, in].
            grads[1] = grads[1].take().map(|gw| gw.t()).transpose()?;
            if has_bias {
                grads.push(Some(g.sum_to(&[n])?));
            }
            Ok(grads)
        }))
    }

    /// `self x rhs` with `epilogue`: plus its bias (`[n]`, one value per output column) when
    /// given, clamped at zero when it says `relu`, in the accumulation type when `out_acc`.
    fn matmul_plus(&self, op: &'static str, rhs: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        const OP: &str = "matmul";
        let Epilogue { bias, relu, out_acc } = epilogue;
        self.check_same(op, rhs)?;
        if let Some(b) = bias {
            self.check_same(op, b)?;
        }
        self.check_float(op)?;
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(Error::shape(
                OP,
                format!("needs at least 1-D operands, got {:?} and {:?}", self.shape(), rhs.shape()),
            ));
        }
        if self.rank() == 1 {
            return self.unsqueeze(0)?.matmul_plus(op, rhs, epilogue)?.squeeze(-2);
        }
        if rhs.rank() == 1 {
            return self.matmul_plus(op, &rhs.unsqueeze(-1)?, epilogue)?.squeeze(-1);
        }
        let (m, k) = (self.shape()[self.rank() - 2], self.shape()[self.rank() - 1]);
        let (k2, n) = (rhs.shape()[rhs.rank() - 2], rhs.shape()[rhs.rank() - 1]);
        if k != k2 {
            return Err(Error::shape(
                OP,
                format!("{:?} x {:?}: inner dims {k} and {k2} differ", self.shape(), rhs.shape()),
            ));
        }
        let batch_shape = broadcast_shapes(OP, &self.shape()[..self.rank() - 2], &rhs.shape()[..rhs.rank() - 2])?;
        let with = |tail: [usize; 2]| -> Vec<usize> { batch_shape.iter().copied().chain(tail).collect() };
        let a = self.with_layout(self.layout.broadcast_as(&with([m, k]))?);
        let b = rhs.with_layout(rhs.layout.broadcast_as(&with([k, n]))?);
        let bias_in = bias.map(|b| b.dense()).transpose()?.map(|b| b.detach());
        let epilogue = Epilogue { bias: bias_in.as_ref(), relu, out_acc };
        let out = matmul_forward(&a, &b, epilogue, &batch_shape, [m, k, n], self.dtype)?;
        // ReLU's backward masks g where the output is zero (step(relu(z)) = step(z)).
        let relu_out = relu.then(|| out.detach());
        let (a_in, b_in, rhs_in) = (a.detach(), b.detach(), rhs.detach());
        let (a_shape, b_shape) = (self.shape().to_vec(), rhs.shape().to_vec());
        let (a_needs, b_needs) = (self.requires_grad(), rhs.requires_grad());
        let mut inputs = vec![self, rhs];
        inputs.extend(bias);
        Ok(record(out, &inputs, move |g| {
            let g = &super::unary::relu_masked(relu_out.as_ref(), g)?;
            // dA = g Bᵀ and dB = Aᵀ g over the broadcast batch, summed back to each operand;
            // an operand outside the graph (a batch of inputs) gets none. The bias gets g
            // summed over every row.
            if b_shape.len() == 2 && a_shape.len() >= 2 {
                return shared_matrix_grads(g, &a_in, &rhs_in, &a_shape, [a_needs, b_needs, bias_in.is_some()], false);
            }
            let ga = if a_needs { Some(g.matmul(&b_in.t()?)?.sum_to(&a_shape)?) } else { None };
            let gb = if b_needs { Some(a_in.t()?.matmul(g)?.sum_to(&b_shape)?) } else { None };
            let mut grads = vec![ga, gb];
            if bias_in.is_some() {
                grads.push(Some(g.sum_to(&[n])?));
            }
            Ok(grads)
        }))
    }
}

/// The gradients of `A x W (+ bias)` for a matrix `W` `[k, n]` shared by every batch entry of
/// `A` `[..., m, k]` (every linear layer): the batch is flattened into rows, so each gradient is
/// one product, not one per batch entry summed afterwards: dA = g Wᵀ, dW = Aᵀ g, and the bias's
/// g summed over the rows. When `W` is the transposed view of a dense `[n, k]` weight (as
/// `linear` passes it), dW is computed as the dense (gᵀ A) and handed back transposed, so the
/// weight's gradient arrives dense with no transposing copy. `wanted`: which of the three;
/// `out_acc`: the products give their result in the accumulation type (autocast's linear).
fn shared_matrix_grads(
    g: &Tensor,
    a: &Tensor,
    w: &Tensor,
    a_shape: &[usize],
    [a_needs, w_needs, bias_needs]: [bool; 3],
    out_acc: bool,
) -> Result<Vec<Option<Tensor>>> {
    let (k, n) = (w.shape()[0], w.shape()[1]);
    let rows = g.numel() / n.max(1);
    let g2 = g.reshape(&[rows, n])?;
    let product = |l: &Tensor, r: &Tensor| l.matmul_plus("matmul", r, Epilogue { out_acc, ..Epilogue::default() });
    let ga = if a_needs { Some(product(&g2, &w.t()?)?.reshape(a_shape)?) } else { None };
    let gw = if w_needs {
        let a2 = a.reshape(&[rows, k])?;
        let transposed_dense = w.strides() == [1, k] && w.offset() == 0;
        Some(if transposed_dense { product(&g2.t()?, &a2)?.t()? } else { product(&a2.t()?, &g2)? })
    } else {
        None
    };
    let mut grads = vec![ga, gw];
    if bias_needs {
        grads.push(Some(g2.sum_to(&[n])?));
    }
    Ok(grads)
}

/// What a product does as it writes its output: add a dense `[n]` bias to every row, clamp at
/// zero (`relu`), or keep the accumulation type rather than rounding to the operands' dtype
/// (`out_acc`: f32 for f16/bf16 operands; only without a bias or a ReLU, which the kernels
/// cannot add on that path within their registers).
#[derive(Clone, Copy, Default)]
struct Epilogue<'a> {
    bias: Option<&'a Tensor>,
    relu: bool,
    out_acc: bool,
}

/// The product of operands already broadcast to `batch_shape + [m, k]` and `batch_shape + [k, n]`,
/// finished by `epilogue`.
fn matmul_forward(
    a: &Tensor,
    b: &Tensor,
    epilogue: Epilogue,
    batch_shape: &[usize],
    [m, k, n]: [usize; 3],
    dtype: DType,
) -> Result<Tensor> {
    const OP: &str = "matmul";
    let Epilogue { bias, relu, out_acc } = epilogue;
    debug_assert!(!out_acc || (bias.is_none() && !relu), "out_acc products have no epilogue");
    let out_dtype = if out_acc { dtype.accumulator() } else { dtype };
    let batch: usize = batch_shape.iter().product();
    let out_shape: Vec<usize> = batch_shape.iter().copied().chain([m, n]).collect();
    if a.device() == crate::Device::Cpu {
        crate::storage::check_allocatable(OP, &out_shape, out_dtype)?;
    }

    match (a.storage(), b.storage()) {
        (StorageRef::Cpu(sa), StorageRef::Cpu(sb)) => {
            let dims = [m, k, n];
            let fast = crate::cpu::fast();
            let bias_as = |dtype: DType| bias.map(|t| t.to_dtype(dtype)?.to_vec::<f64>()).transpose();
            let out = match (&*sa, &*sb) {
                // f32 and f64 operands are read in place through their strides; the bias is
                // accumulated onto (beta = 1) rather than added in a second pass.
                (CpuStorage::F32(va), CpuStorage::F32(vb)) if fast => {
                    let bias: Option<Vec<f32>> = bias_as(DType::F32)?.map(|b| b.iter().map(|&x| x as f32).collect());
                    let c = gemm::matmul(va, &a.layout, vb, &b.layout, batch_shape, dims, bias.as_deref());
                    CpuStorage::F32(clamp_if(relu, c))
                }
                (CpuStorage::F64(va), CpuStorage::F64(vb)) => {
                    let bias = bias_as(DType::F64)?;
                    let c = gemm::matmul(va, &a.layout, vb, &b.layout, batch_shape, dims, bias.as_deref());
                    CpuStorage::F64(clamp_if(relu, c))
                }
                // The fast path widens 16-bit floats to f32 and accumulates in f32, as on the
                // GPU, bias included, then rounds once. The reference (f32 and 16-bit operands)
                // is the definition in f64, rounded once: independent of the f32 kernel it checks.
                _ => {
                    let (la, lb) = (Layout::contiguous(a.shape()), Layout::contiguous(b.shape()));
                    if fast {
                        let (da, db): (Vec<f32>, Vec<f32>) = (sa.gather(&a.layout), sb.gather(&b.layout));
                        let bias: Option<Vec<f32>> = bias.map(|t| t.to_vec::<f32>()).transpose()?;
                        let c = gemm::matmul(&da, &la, &db, &lb, batch_shape, dims, bias.as_deref());
                        crate::cpu::narrow_vec(out_dtype, clamp_if(relu, c))
                    } else {
                        let (da, db): (Vec<f64>, Vec<f64>) = (sa.gather(&a.layout), sb.gather(&b.layout));
                        let mut c = gemm::matmul(&da, &la, &db, &lb, batch_shape, dims, None);
                        add_to_rows(&mut c, bias_as(DType::F64)?.as_deref());
                        CpuStorage::from_f64(out_dtype, &clamp_if(relu, c))
                    }
                }
            };
            Ok(Tensor::from_cpu(out, &out_shape))
        }
        (StorageRef::Cuda(sa), StorageRef::Cuda(sb)) => {
            if batch_shape.len() > NABLA_MAX_DIMS {
                return Err(Error::invalid(
                    OP,
                    format!("at most {NABLA_MAX_DIMS} batch dims on CUDA, got {batch_shape:?}"),
                ));
            }
            let dev = sa.device.clone();
            let mut out = dev.alloc(OP, out_dtype, batch * m * n)?;
            if batch * m * n == 0 {
                return Ok(Tensor::from_cuda(out, &out_shape));
            }
            let (sa_, sb_) = (a.strides(), b.strides());
            let r = batch_shape.len();
            let mut p = MatmulParams {
                m: m as i64,
                n: n as i64,
                k: k as i64,
                batch: batch as i64,
                batch_ndim: r as i64,
                a_offset: a.offset() as i64,
                a_row_stride: sa_[r] as i64,
                a_col_stride: sa_[r + 1] as i64,
                b_offset: b.offset() as i64,
                b_row_stride: sb_[r] as i64,
                b_col_stride: sb_[r + 1] as i64,
                relu: relu as i64,
                out_acc: (out_dtype != dtype) as i64,
                ..Default::default()
            };
            for d in 0..r {
                p.batch_shape[d] = batch_shape[d] as i64;
                p.a_batch_strides[d] = sa_[d] as i64;
                p.b_batch_strides[d] = sb_[d] as i64;
            }
            let base = if bias.is_some() { "linear" } else { "matmul" };
            // The pipelined versions (the tensor-core GEMM's for f16/bf16 and TF32, the f32
            // GEMM's), which take operands dense along one axis.
            let layout = || {
                let batch_strides = p.a_batch_strides[..r].iter().chain(&p.b_batch_strides[..r]);
                crate::cuda::gemm::pipelined_layout(
                    dtype,
                    (p.m, p.n, p.k),
                    (p.a_row_stride, p.a_col_stride),
                    (p.b_row_stride, p.b_col_stride),
                    [p.a_offset, p.b_offset].into_iter().chain(batch_strides.copied()),
                )
            };
            let (sms, max_splits) = (dev.multiprocessors(), crate::cuda::gemm::max_matmul_splits(batch * m * n));
            let pipelined = crate::cuda::gemm::pipelined_kernel(dtype, &dev)
                .and_then(|(version, shared)| layout().map(|layout| (version, shared, layout)));
            let (kernel, cfg, splits) = match pipelined {
                Some((version, dynamic_shared, layout)) => {
                    let (mut cfg, splits) = crate::cuda::gemm::pipelined_config((m, n, k), batch, sms, max_splits);
                    cfg.shared_mem_bytes = dynamic_shared;
                    (format!("{base}_{version}_{layout}_{dtype}"), cfg, splits)
                }
                None => {
                    let plan = crate::cuda::gemm::plan(m, n, k, batch, sms, max_splits);
                    (plan.kernel(&crate::cuda::gemm::engine_base(base, dtype, &dev), dtype), plan.config(), plan.splits)
                }
            };
            p.splits = splits as i64;
            // A split depth writes partial products to a workspace in the accumulation type.
            let mut partial =
                if splits > 1 { Some(dev.alloc(OP, dtype.accumulator(), splits * batch * m * n)?) } else { None };
            let f = dev.function_with_shared(OP, "matmul", &kernel, cfg.shared_mem_bytes)?;
            let bias_storage = bias.map(|b| b.storage());
            let bias_buf = match &bias_storage {
                Some(StorageRef::Cuda(sbias)) => Some(&*sbias.buf),
                _ => None,
            };
            let mut launch = dev.stream.launch_builder(&f);
            launch.arg(&*sa.buf).arg(&*sb.buf);
            if let Some(buf) = bias_buf {
                launch.arg(buf);
            }
            match &mut partial {
                Some(ws) => launch.arg(&mut *ws.buf),
                None => launch.arg(&mut *out.buf),
            };
            launch.arg(&p);
            // SAFETY: matmul_<T>(const T* a, const T* b, T* c, MatmulParams) and linear_<T>(a,
            // b, const T* bias, c, params) read A and B through the params' strides (inside
            // their buffers, as the views are) and the dense [n] bias, and write batch * m * n
            // contiguous elements of C (of the accumulation type when p.out_acc, as `out` was
            // allocated), or with p.splits > 1 splits * batch * m * n partial sums in the
            // accumulation type to the workspace passed as C.
            unsafe { launch.launch(cfg) }.map_err(|e| launch_error(OP, &kernel, e))?;
            if let Some(ws) = &partial {
                let sum = format!("matmul_split_sum_{dtype}");
                let f = dev.function(OP, "matmul", &sum)?;
                let (count, splits, n, has_bias) =
                    ((batch * m * n) as i64, splits as i64, n as i64, bias_buf.is_some() as i64);
                let mut launch = dev.stream.launch_builder(&f);
                launch.arg(&*ws.buf).arg(bias_buf.unwrap_or(&*ws.buf)).arg(&mut *out.buf);
                launch.arg(&count).arg(&splits).arg(&n).arg(&has_bias).arg(&p.relu).arg(&p.out_acc);
                // SAFETY: matmul_split_sum_<T>(const Acc* partial, const T* bias, T* c, i64
                // count, i64 splits, i64 n, i64 has_bias, i64 relu, i64 out_acc) reads splits * count partial sums and,
                // when has_bias, the [n] bias (else the stand-in is never read), and writes
                // count elements of C (of the accumulation type when out_acc).
                unsafe { launch.launch(crate::cuda::elementwise_config(count as usize)) }
                    .map_err(|e| launch_error(OP, &sum, e))?;
            }
            Ok(Tensor::from_cuda(out, &out_shape))
        }
        _ => unreachable!("check_same rejects mixed devices"),
    }
}

/// `c` with every negative element set to zero when `relu` (NaN kept, as `Tensor::relu`).
fn clamp_if<T: PartialOrd + Default + Copy + Send>(relu: bool, mut c: Vec<T>) -> Vec<T> {
    if relu {
        crate::cpu::clamp_at_zero(&mut c);
    }
    c
}

/// Adds `bias` (one value per column) to every row of the row-major `c`.
fn add_to_rows<T: Copy + std::ops::AddAssign>(c: &mut [T], bias: Option<&[T]>) {
    if let Some(bias) = bias.filter(|b| !b.is_empty()) {
        c.chunks_mut(bias.len()).for_each(|row| row.iter_mut().zip(bias).for_each(|(x, b)| *x += *b));
    }
}
