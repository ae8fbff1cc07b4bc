//! Scaled dot-product attention, softmax(scale · Q Kᵀ + mask) V, as one fused op with its
//! backward (`kernels/attention.cu`, flash-style: the score matrix is never stored), and the
//! causal mask for composing it from ordinary ops.
//!
//! Q is `[batch, heads, sq, d]`, K and V `[batch, heads, sk, d]`; with `causal`, query i sees
//! keys 0..=i. The backward recomputes the probabilities from each query's saved log-sum-exp:
//! with P the probabilities and dO the output's gradient, dV = Pᵀ dO, dP = dO Vᵀ,
//! dS = P ∘ (dP - rowsum(dO ∘ O)), dQ = scale dS K and dK = scale dSᵀ Q. The CPU reference
//! computes all of it in f64.

use crate::autograd::record;
use crate::cpu::attention as cpu_attention;
use crate::cuda::params::AttentionParams;
use crate::cuda::{CudaStorage, launch_error};
use crate::storage::CpuStorage;
use crate::{DType, Device, Error, Result, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::atomic::AtomicU8;

const OP: &str = "scaled_dot_product_attention";
/// Query (or key) rows per block of version 1 (`kernels/attention.cu`): one per warp.
const ROWS_PER_BLOCK: usize = 8;
/// Warps per block of the tensor-core version: `TC_WARPS` in `kernels/attention_tc.cu`, whose
/// tile copies are laid out for exactly that many threads (every attention test fails if the two
/// part).
const TC_WARPS: usize = 4;

/// Rows per block of the tensor-core version's pass `kind` at head size `d` for `dtype`: 16 per
/// warp, or 32 where the kernel gives a warp two 16-row blocks (`TcTile` in
/// `kernels/attention_tc.cu`: f16/bf16's forward pass and dQ up to head_dim 64 and dK/dV up to
/// 32; f32's forward pass up to 64).
fn tc_rows_per_block(kind: &str, dtype: DType, d: usize) -> usize {
    let two_blocks = match (kind, dtype) {
        ("fwd", DType::F32) => d <= 64,
        (_, DType::F32) => false,
        ("bwd_dkdv", _) => d <= 32,
        _ => d <= 64,
    };
    let blocks_per_warp = if two_blocks { 2 } else { 1 };
    16 * blocks_per_warp * TC_WARPS
}
/// The head sizes the kernels are compiled for (f64: up to 64).
pub const HEAD_DIMS: [usize; 4] = [16, 32, 64, 128];

pub(crate) fn kernel_names() -> Vec<String> {
    let mut names = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        for d in HEAD_DIMS.into_iter().filter(|&d| dtype != DType::F64 || d <= 64) {
            for kind in ["fwd", "bwd_prep", "bwd_dq", "bwd_dkdv"] {
                names.push(format!("attention_{kind}_{dtype}_d{d}"));
            }
        }
    }
    names
}

/// The tensor-core kernels (`kernels/attention_tc.cu`): f16, bf16 and f32 (3xTF32), every head
/// size, but for f32's dK/dV pass at head_dim 128 (see [`has_tensor_core_pass`]).
pub(crate) fn tensor_core_kernel_names() -> Vec<String> {
    let mut names = Vec::new();
    for dtype in [DType::F16, DType::BF16, DType::F32] {
        for d in HEAD_DIMS {
            for kind in ["fwd", "bwd_dq", "bwd_dkdv"].into_iter().filter(|kind| has_tensor_core_pass(kind, dtype, d)) {
                names.push(format!("attention_tc_{kind}_{dtype}_d{d}"));
            }
        }
    }
    names
}

/// Whether `kernels/attention_tc.cu` has pass `kind` for `dtype` at head size `d`: all of them
/// but f32's dK/dV at 128, whose fragments and accumulators would not fit in registers (version
/// 1 runs that pass; it reads the same log-sum-exp).
fn has_tensor_core_pass(kind: &str, dtype: DType, d: usize) -> bool {
    !(dtype == DType::F32 && kind == "bwd_dkdv" && d == 128)
}

/// 0 means not chosen yet: the first use reads `NABLA_F32_ATTENTION`.
static F32_ATTENTION: AtomicU8 = AtomicU8::new(0);
/// The f32 attention versions: 1, `kernels/attention.cu` on the FP32 pipes; 2,
/// `kernels/attention_tc.cu` on the tensor cores in 3xTF32.
const F32_ATTENTION_VERSIONS: std::ops::RangeInclusive<u8> = 1..=2;

/// Chooses the kernels of f32 attention on a GPU, for the whole process: 1 (the default), the
/// FP32-pipe kernels of `kernels/attention.cu`, or 2, the tensor-core kernels of
/// `kernels/attention_tc.cu` on sm_80+, which multiply in 3xTF32 (each f32 operand split into
/// two TF32 parts, three tensor-core products per product: f32's accuracy, as PyTorch's
/// memory-efficient f32 attention). `NABLA_F32_ATTENTION` chooses without code. f16 and bf16
/// always run on the tensor cores (sm_80+); `set_float32_matmul_precision` does not apply here.
/// Any other version is an error. The bench `attention/f32_*` times both.
pub fn set_f32_attention(version: u8) -> Result<()> {
    crate::cuda::gemm::store_version(&F32_ATTENTION, "set_f32_attention", F32_ATTENTION_VERSIONS, version)
}

/// The f32 attention version in force (see [`set_f32_attention`]; without a call,
/// `NABLA_F32_ATTENTION`, else 1).
pub fn f32_attention() -> u8 {
    crate::cuda::gemm::chosen_version(&F32_ATTENTION, "NABLA_F32_ATTENTION", F32_ATTENTION_VERSIONS, 1)
}

impl Tensor {
    /// Scaled dot-product attention of queries `self` `[B, H, Sq, D]` with keys and values
    /// `[B, H, Sk, D]`: softmax(scale · Q Kᵀ) V over the keys, with key j hidden from query i
    /// when `causal` and j > i. `scale` defaults to 1/√D. As
    /// `torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
    /// scale=scale)`, on one fused kernel per pass on a GPU (head sizes 16, 32, 64, 128; f64
    /// up to 64). Differentiable in Q, K and V. Under [`crate::amp::autocast`], f32 inputs run in
    /// the autocast dtype.
    pub fn scaled_dot_product_attention(
        &self,
        key: &Tensor,
        value: &Tensor,
        causal: bool,
        scale: Option<f64>,
    ) -> Result<Tensor> {
        let (q, k, v) = (self, key, value);
        if let Some(low) = crate::amp::product_dtype(&[q, k, v]) {
            return crate::amp::in_low_precision(&[q, k, v], low, |t| {
                t[0].scaled_dot_product_attention(&t[1], &t[2], causal, scale)
            });
        }
        q.check_float(OP)?;
        q.check_same(OP, k)?;
        q.check_same(OP, v)?;
        let (&[b, h, sq, d], &[kb, kh, sk, kd], vshape) = (q.shape(), k.shape(), v.shape()) else {
            return Err(Error::shape(
                OP,
                format!(
                    "q, k, v must be [batch, heads, seq, head_dim], got {:?}, {:?}, {:?}",
                    q.shape(),
                    k.shape(),
                    v.shape()
                ),
            ));
        };
        if (kb, kh, kd) != (b, h, d) || vshape != k.shape() {
            return Err(Error::shape(
                OP,
                format!(
                    "k and v must be [{b}, {h}, seq, {d}] like q, got q {:?}, k {:?}, v {:?}",
                    q.shape(),
                    k.shape(),
                    v.shape()
                ),
            ));
        }
        if sk == 0 || d == 0 {
            return Err(Error::shape(OP, format!("no keys to attend to: q {:?}, k {:?}", q.shape(), k.shape())));
        }
        if q.device().is_cuda() && !HEAD_DIMS.contains(&d) || q.dtype() == DType::F64 && q.device().is_cuda() && d > 64
        {
            return Err(Error::shape(
                OP,
                format!("head_dim {d} has no kernel (16, 32, 64, 128; f64 up to 64): q {:?}", q.shape()),
            ));
        }
        if q.device().is_cuda() && b * h > 65_535 {
            return Err(Error::shape(
                OP,
                format!("batch x heads must be at most 65535 on a GPU, got q {:?}", q.shape()),
            ));
        }
        let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
        if !scale.is_finite() {
            return Err(Error::invalid(OP, format!("scale must be finite, got {scale}")));
        }
        let p = AttentionParams { bh: (b * h) as i64, sq: sq as i64, sk: sk as i64, causal: causal as i64, scale };
        let (qd, kd, vd) = (q.dense()?.detach(), k.dense()?.detach(), v.dense()?.detach());
        let (out, lse) = forward(&qd, &kd, &vd, p, d)?;
        let saved_out = out.clone();
        Ok(record(out, &[q, k, v], move |g| {
            let (dq, dk, dv) = backward(&qd, &kd, &vd, &saved_out, &lse, &g.dense()?, p, d)?;
            Ok(vec![Some(dq), Some(dk), Some(dv)])
        }))
    }

    /// The causal mask `[sq, sk]` of ones where query i may see key j (j <= i) and zeros
    /// elsewhere, in `dtype` on `device`: for attention composed of ordinary ops
    /// (`mask.where_cond(&scores, &minus_infinity)`).
    pub fn causal_mask(sq: usize, sk: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let values: Vec<f64> = (0..sq).flat_map(|i| (0..sk).map(move |j| if j <= i { 1.0 } else { 0.0 })).collect();
        Tensor::from_vec(values, &[sq, sk], &Device::Cpu)?.to_dtype(dtype)?.to_device(device)
    }
}

/// The CPU reference's view of a tensor.
fn values(t: &Tensor) -> Result<Vec<f64>> {
    super::host_values(OP, t)
}

/// A CPU tensor's elements in logical order as `T` (f64 for f64, f32 for the others).
fn typed<T: crate::Element>(t: &Tensor) -> Result<super::HostSlice<'_, T>> {
    super::host_typed(OP, t)
}

/// The sizes as the CPU backend takes them.
fn cpu_shape(p: AttentionParams, d: usize) -> cpu_attention::AttentionShape {
    cpu_attention::AttentionShape {
        bh: p.bh as usize,
        sq: p.sq as usize,
        sk: p.sk as usize,
        d,
        causal: p.causal != 0,
        scale: p.scale,
    }
}

/// A tensor's device buffer.
fn cuda(t: &Tensor) -> Result<&CudaStorage> {
    super::device_buffer(OP, t)
}

/// The probabilities of one head `[sq, sk]` in f64, and each query's log-sum-exp.
fn probabilities(q: &[f64], k: &[f64], p: AttentionParams, d: usize) -> (Vec<f64>, Vec<f64>) {
    let (sq, sk) = (p.sq as usize, p.sk as usize);
    let mut probs = vec![0.0; sq * sk];
    let mut lse = vec![0.0; sq];
    for i in 0..sq {
        let visible = if p.causal != 0 { (i + 1).min(sk) } else { sk };
        let row = &mut probs[i * sk..(i + 1) * sk];
        for (j, s) in row.iter_mut().enumerate().take(visible) {
            *s = p.scale * (0..d).map(|e| q[i * d + e] * k[j * d + e]).sum::<f64>();
        }
        let max = row[..visible].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row[..visible].iter().map(|s| (s - max).exp()).sum();
        for (j, s) in row.iter_mut().enumerate() {
            *s = if j < visible { (*s - max).exp() / sum } else { 0.0 };
        }
        lse[i] = max + sum.ln();
    }
    (probs, lse)
}

/// Grid and block of the per-row kernels of version 1: `rows` rows in blocks of 8 per head.
fn rows_config(rows: usize, heads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(ROWS_PER_BLOCK).max(1) as u32, heads as u32, 1),
        block_dim: (32 * ROWS_PER_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Which kernels a pass over `rows` rows per head runs: version 1's (module `attention`, one row
/// per warp) or, for f16/bf16 on sm_80+ and for f32 there when [`f32_attention`] is 2, the
/// tensor-core version (module `attention_tc`, 16 or 32 rows per warp); returns the module, the
/// kernel name for `kind` (`fwd`, `bwd_dq`, `bwd_dkdv`) and the launch geometry.
fn pass(
    kind: &str,
    dtype: DType,
    d: usize,
    rows: usize,
    heads: usize,
    dev: &crate::cuda::CudaDevice,
) -> (&'static str, String, LaunchConfig) {
    let tensor_cores = match dtype {
        DType::F16 | DType::BF16 => crate::cuda::gemm::uses_tensor_cores(dtype, dev),
        DType::F32 => f32_attention() == 2 && dev.arch().0 >= 8 && has_tensor_core_pass(kind, dtype, d),
        _ => false,
    };
    if tensor_cores {
        let config = LaunchConfig {
            grid_dim: (rows.div_ceil(tc_rows_per_block(kind, dtype, d)).max(1) as u32, heads as u32, 1),
            block_dim: (32 * TC_WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        return ("attention_tc", format!("attention_tc_{kind}_{dtype}_d{d}"), config);
    }
    ("attention", format!("attention_{kind}_{dtype}_d{d}"), rows_config(rows, heads))
}

/// The output, and each query's log-sum-exp (accumulate dtype on the GPU, f64 on the CPU).
fn forward(q: &Tensor, k: &Tensor, v: &Tensor, p: AttentionParams, d: usize) -> Result<(Tensor, Tensor)> {
    let (bh, sq, sk) = (p.bh as usize, p.sq as usize, p.sk as usize);
    if !q.device().is_cuda() && crate::cpu::fast() {
        let s = cpu_shape(p, d);
        let lse_of = |l: Vec<f64>| Tensor::from_cpu(CpuStorage::F64(l), &[bh * sq]);
        if q.dtype == DType::F64 {
            let (o, l) = cpu_attention::forward(&s, &typed(q)?, &typed(k)?, &typed(v)?);
            return Ok((Tensor::from_cpu(CpuStorage::F64(o), q.shape()), lse_of(l)));
        }
        let (o, l) = cpu_attention::forward::<f32>(&s, &typed(q)?, &typed(k)?, &typed(v)?);
        return Ok((Tensor::from_cpu(crate::cpu::narrow_vec(q.dtype, o), q.shape()), lse_of(l)));
    }
    if !q.device().is_cuda() {
        let (qv, kv, vv) = (values(q)?, values(k)?, values(v)?);
        let mut out = vec![0.0; bh * sq * d];
        let mut lse = vec![0.0; bh * sq];
        for h in 0..bh {
            let (qh, kh, vh) = (&qv[h * sq * d..][..sq * d], &kv[h * sk * d..][..sk * d], &vv[h * sk * d..][..sk * d]);
            let (probs, head_lse) = probabilities(qh, kh, p, d);
            for i in 0..sq {
                for e in 0..d {
                    out[(h * sq + i) * d + e] = (0..sk).map(|j| probs[i * sk + j] * vh[j * d + e]).sum();
                }
            }
            lse[h * sq..(h + 1) * sq].copy_from_slice(&head_lse);
        }
        let out = Tensor::from_cpu(CpuStorage::from_f64(q.dtype, &out), q.shape());
        return Ok((out, Tensor::from_cpu(CpuStorage::from_f64(DType::F64, &lse), &[bh * sq])));
    }
    let s = cuda(q)?;
    let out = s.device.alloc(OP, q.dtype, q.numel())?;
    let lse = s.device.alloc(OP, q.dtype.accumulator(), bh * sq)?;
    if bh * sq > 0 {
        let (module, kernel, config) = pass("fwd", q.dtype, d, sq, bh, &s.device);
        let f = s.device.function(OP, module, &kernel)?;
        let mut l = s.device.stream.launch_builder(&f);
        l.arg(&*s.buf).arg(&*cuda(k)?.buf).arg(&*cuda(v)?.buf).arg(&*out.buf).arg(&*lse.buf).arg(&p);
        // SAFETY: attention[_tc]_fwd_<T>_d<D>(q, k, v, T* o, A* lse, params) reads dense
        // [bh, sq, D] queries and [bh, sk, D] keys and values, and writes every output row and
        // its lse (A: f32 for f32 and the 16-bit dtypes, the tensor-core version's only lse type).
        unsafe { l.launch(config) }.map_err(|e| launch_error(OP, &kernel, e))?;
    }
    Ok((Tensor::from_cuda(out, q.shape()), Tensor::from_cuda(lse, &[bh * sq])))
}

/// (dQ, dK, dV) from the output's gradient `dout`.
#[allow(clippy::too_many_arguments)]
fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    p: AttentionParams,
    d: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (bh, sq, sk) = (p.bh as usize, p.sq as usize, p.sk as usize);
    if !q.device().is_cuda() && crate::cpu::fast() {
        let s = cpu_shape(p, d);
        let l = values(lse)?;
        let make = |x: Vec<f32>, like: &Tensor| Tensor::from_cpu(crate::cpu::narrow_vec(like.dtype, x), like.shape());
        if q.dtype == DType::F64 {
            let (a, b, c) =
                cpu_attention::backward::<f64>(&s, &typed(q)?, &typed(k)?, &typed(v)?, &typed(out)?, &l, &typed(dout)?);
            let make = |x: Vec<f64>, like: &Tensor| Tensor::from_cpu(CpuStorage::F64(x), like.shape());
            return Ok((make(a, q), make(b, k), make(c, v)));
        }
        let (a, b, c) =
            cpu_attention::backward::<f32>(&s, &typed(q)?, &typed(k)?, &typed(v)?, &typed(out)?, &l, &typed(dout)?);
        return Ok((make(a, q), make(b, k), make(c, v)));
    }
    if !q.device().is_cuda() {
        let (qv, kv, vv, ov, gv) = (values(q)?, values(k)?, values(v)?, values(out)?, values(dout)?);
        let (mut dq, mut dk, mut dv) = (vec![0.0; qv.len()], vec![0.0; kv.len()], vec![0.0; vv.len()]);
        for h in 0..bh {
            let (qo, ko) = (h * sq * d, h * sk * d);
            let (probs, _) = probabilities(&qv[qo..qo + sq * d], &kv[ko..ko + sk * d], p, d);
            for i in 0..sq {
                let delta: f64 = (0..d).map(|e| gv[qo + i * d + e] * ov[qo + i * d + e]).sum();
                for j in 0..sk {
                    let prob = probs[i * sk + j];
                    let dp: f64 = (0..d).map(|e| gv[qo + i * d + e] * vv[ko + j * d + e]).sum();
                    let ds = prob * (dp - delta);
                    for e in 0..d {
                        dv[ko + j * d + e] += prob * gv[qo + i * d + e];
                        dq[qo + i * d + e] += p.scale * ds * kv[ko + j * d + e];
                        dk[ko + j * d + e] += p.scale * ds * qv[qo + i * d + e];
                    }
                }
            }
        }
        let make = |x: &[f64], like: &Tensor| Tensor::from_cpu(CpuStorage::from_f64(like.dtype, x), like.shape());
        return Ok((make(&dq, q), make(&dk, k), make(&dv, v)));
    }
    let s = cuda(q)?;
    let dev = &s.device;
    let acc = q.dtype.accumulator();
    let (dq, dk, dv) =
        (dev.alloc(OP, q.dtype, q.numel())?, dev.alloc(OP, k.dtype, k.numel())?, dev.alloc(OP, v.dtype, v.numel())?);
    let delta = dev.alloc(OP, acc, bh * sq)?;
    let (qs, ks, vs, os, gs, ls) = (s, cuda(k)?, cuda(v)?, cuda(out)?, cuda(dout)?, cuda(lse)?);
    if bh * sq > 0 {
        let kernel = format!("attention_bwd_prep_{}_d{d}", q.dtype);
        let f = dev.function(OP, "attention", &kernel)?;
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&*os.buf).arg(&*gs.buf).arg(&*delta.buf).arg(&p);
        // SAFETY: attention_bwd_prep_<T>_d<D>(o, dout, A* delta, params) reads bh·sq dense rows
        // of D and writes one delta per row.
        unsafe { l.launch(rows_config(bh * sq, 1)) }.map_err(|e| launch_error(OP, &kernel, e))?;
        let (module, kernel, config) = pass("bwd_dq", q.dtype, d, sq, bh, dev);
        let f = dev.function(OP, module, &kernel)?;
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&*qs.buf).arg(&*ks.buf).arg(&*vs.buf).arg(&*gs.buf).arg(&*ls.buf).arg(&*delta.buf).arg(&*dq.buf).arg(&p);
        // SAFETY: attention[_tc]_bwd_dq_<T>_d<D>(q, k, v, dout, lse, delta, T* dq, params) reads
        // the dense inputs of the forward, the output's gradient and the per-query lse and
        // delta, and writes every row of dq.
        unsafe { l.launch(config) }.map_err(|e| launch_error(OP, &kernel, e))?;
    }
    if bh * sk > 0 {
        let (module, kernel, config) = pass("bwd_dkdv", q.dtype, d, sk, bh, dev);
        let f = dev.function(OP, module, &kernel)?;
        let mut l = dev.stream.launch_builder(&f);
        l.arg(&*qs.buf).arg(&*ks.buf).arg(&*vs.buf).arg(&*gs.buf).arg(&*ls.buf).arg(&*delta.buf);
        l.arg(&*dk.buf).arg(&*dv.buf).arg(&p);
        // SAFETY: attention[_tc]_bwd_dkdv_<T>_d<D>(q, k, v, dout, lse, delta, T* dk, T* dv,
        // params) reads the same inputs and writes every row of dk and dv (zeros for keys no
        // query sees).
        unsafe { l.launch(config) }.map_err(|e| launch_error(OP, &kernel, e))?;
    }
    Ok((Tensor::from_cuda(dq, q.shape()), Tensor::from_cuda(dk, k.shape()), Tensor::from_cuda(dv, v.shape())))
}
