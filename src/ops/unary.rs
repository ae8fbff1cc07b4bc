//! Elementwise unary ops (`kernels/unary.cu`).

use crate::autograd::record;
use crate::cpu::elementwise::{map_vec, zip_map_vec};
use crate::cpu::{Float, Lane};
use crate::cuda::{launch_error, packable, packed_config, strided_layout};
use crate::storage::{CpuStorage, StorageRef};
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::PushKernelArg;

/// An elementwise function of one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// -x
    Neg,
    /// |x|
    Abs,
    /// e^x
    Exp,
    /// Natural logarithm.
    Log,
    /// Square root.
    Sqrt,
    /// Hyperbolic tangent.
    Tanh,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// max(x, 0), NaN kept.
    Relu,
    /// The exact GELU, x Φ(x) = 0.5 x (1 + erf(x / √2)).
    Gelu,
    /// sign(x) in {-1, 0, 1} (NaN kept).
    Sign,
    /// The step 1[x > 0], ReLU's derivative.
    Step,
    /// GELU's derivative Φ(x) + x φ(x) (used by its backward; not itself differentiable here).
    GeluGrad,
}

impl UnaryOp {
    /// Every unary op.
    pub const ALL: [UnaryOp; 12] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::Sign,
        UnaryOp::Step,
        UnaryOp::GeluGrad,
    ];

    /// The op's name, as in messages and kernel names.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::Sign => "sign",
            UnaryOp::Step => "step",
            UnaryOp::GeluGrad => "gelu_grad",
        }
    }

    /// Whether the op is defined for `dtype` (integers take only neg, abs, relu, sign and step).
    pub fn supports(self, dtype: DType) -> bool {
        dtype.is_float() || matches!(self, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Sign | UnaryOp::Step)
    }

    /// The CPU reference, in f64.
    pub fn apply(self, x: f64) -> f64 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryOp::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            UnaryOp::Gelu => 0.5 * x * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2)),
            UnaryOp::Sign => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    x
                }
            }
            UnaryOp::Step => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            UnaryOp::GeluGrad => {
                let cdf = 0.5 * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                cdf + x * pdf
            }
        }
    }

    pub(crate) fn kernel_name(self, dtype: DType) -> String {
        format!("unary_{}_{dtype}", self.name())
    }
}

pub(crate) fn kernel_names() -> Vec<String> {
    let fused_backward = ["relu", "gelu"]
        .into_iter()
        .flat_map(|a| DType::ALL.into_iter().filter(|d| d.is_float()).map(move |d| format!("{a}_backward_{d}")));
    UnaryOp::ALL
        .iter()
        .flat_map(|op| DType::ALL.iter().filter(|d| op.supports(**d)).map(|d| op.kernel_name(*d)))
        .chain(fused_backward)
        .collect()
}

impl Tensor {
    /// Applies `op` to every element.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let out = self.unary_forward(op)?;
        let (x, y) = (self.detach(), out.detach());
        Ok(record(out, &[self], move |g| Ok(vec![unary_backward(op, &x, &y, g)?])))
    }

    fn unary_forward(&self, op: UnaryOp) -> Result<Tensor> {
        let name = op.name();
        if !op.supports(self.dtype) {
            return Err(Error::unsupported(name, self.dtype, " (needs a floating-point tensor)"));
        }
        if self.device == crate::Device::Cpu {
            // A broadcast view's output can be far larger than its storage.
            crate::storage::check_allocatable(name, self.shape(), self.dtype)?;
        }
        let n = self.numel();
        match self.storage() {
            StorageRef::Cpu(s) => {
                if let Some(out) = cpu_unary(op, &s, &self.layout) {
                    return Ok(Tensor::from_cpu(out, self.shape()));
                }
                let values: Vec<f64> = s.gather_f64(&self.layout).into_iter().map(|x| op.apply(x)).collect();
                Ok(Tensor::from_cpu(CpuStorage::from_f64(self.dtype, &values), self.shape()))
            }
            StorageRef::Cuda(s) => {
                let dev = s.device.clone();
                let mut out = dev.alloc(name, self.dtype, n)?;
                if n > 0 {
                    let kernel = op.kernel_name(self.dtype);
                    let f = dev.function(name, "unary", &kernel)?;
                    let layout = strided_layout(name, &self.layout)?;
                    let n_arg = n as i64;
                    let mut launch = dev.stream.launch_builder(&f);
                    launch.arg(&*s.buf).arg(&mut *out.buf).arg(&n_arg).arg(&layout);
                    let packed = packable(&self.layout, self.dtype);
                    // SAFETY: unary_<op>_<T>(const T* in, T* out, i64 n, StridedLayout) reads n
                    // elements through the layout and writes n contiguous ones.
                    unsafe { launch.launch(packed_config(n, packed)) }.map_err(|e| launch_error(name, &kernel, e))?;
                }
                Ok(Tensor::from_cuda(out, self.shape()))
            }
        }
    }

    /// -x
    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }

    /// |x|
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }

    /// e^x
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }

    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }

    /// Square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }

    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }

    /// The logistic sigmoid 1 / (1 + e^-x).
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }

    /// max(x, 0).
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }

    /// The exact (erf) GELU, PyTorch's default.
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu)
    }

    /// sign(x) in {-1, 0, 1}.
    pub fn sign(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sign)
    }
}

/// The fast CPU path over float storage (None for integers, left to the reference). Exp,
/// sigmoid and the GELUs use vectorisable f32 forms (f64 keeps libm's); log and tanh evaluate
/// the reference's f64 formula per element.
fn cpu_unary(op: UnaryOp, a: &CpuStorage, layout: &crate::Layout) -> Option<CpuStorage> {
    if !crate::cpu::fast() {
        return None;
    }
    crate::cpu::with_float_vec!(a, x => {
        macro_rules! arm {
            (|$v:ident| $e:expr) => {
                map_vec(x, layout, #[inline(always)] |s| {
                    let $v = Lane::widen(s);
                    Lane::narrow($e)
                })
            };
        }
        macro_rules! exact {
            ($op:expr) => {
                arm!(|v| Float::from_f64_($op.apply(Float::to_f64_(v))))
            };
        }
        let out = match op {
            UnaryOp::Neg => arm!(|v| -v),
            UnaryOp::Abs => arm!(|v| if v < Float::ZERO { -v } else { v }),
            UnaryOp::Exp => arm!(|v| v.exp_()),
            UnaryOp::Sqrt => arm!(|v| v.sqrt_()),
            UnaryOp::Sigmoid => arm!(|v| sigmoid(v)),
            UnaryOp::Relu => arm!(|v| if v < Float::ZERO { Float::ZERO } else { v }),
            UnaryOp::Sign => arm!(|v| sign(v)),
            UnaryOp::Step => arm!(|v| if v > Float::ZERO { Float::ONE } else { Float::ZERO }),
            UnaryOp::Log => exact!(UnaryOp::Log),
            UnaryOp::Tanh => exact!(UnaryOp::Tanh),
            UnaryOp::Gelu => arm!(|v| v.gelu_()),
            UnaryOp::GeluGrad => arm!(|v| v.gelu_grad_()),
        };
        CpuStorage::from_vec(crate::cpu::like(x, out))
    })
}

/// ReLU's and GELU's input gradient in one pass (g · step(x), g · GELU'(x)) for same-shaped
/// float tensors: on the fast CPU path, or one kernel on the GPU (`relu_backward_<T>`,
/// `gelu_backward_<T>` in kernels/unary.cu); `None` for the CPU reference, which composes ops.
fn activation_backward(op: UnaryOp, x: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
    if x.shape() != g.shape() || x.dtype != g.dtype || !x.dtype.is_float() {
        return Ok(None);
    }
    if let (StorageRef::Cuda(xs), StorageRef::Cuda(gs)) = (x.storage(), g.storage()) {
        let name = op.name();
        let dev = gs.device.clone();
        let n = x.numel();
        let mut out = dev.alloc(name, x.dtype, n)?;
        if n > 0 {
            let kernel = format!("{name}_backward_{}", x.dtype);
            let f = dev.function(name, "unary", &kernel)?;
            let (lg, lx) = (strided_layout(name, &g.layout)?, strided_layout(name, &x.layout)?);
            let n_arg = n as i64;
            let mut launch = dev.stream.launch_builder(&f);
            launch.arg(&*gs.buf).arg(&*xs.buf).arg(&mut *out.buf).arg(&n_arg).arg(&lg).arg(&lx);
            let packed = packable(&g.layout, x.dtype) && packable(&x.layout, x.dtype);
            // SAFETY: <relu|gelu>_backward_<T>(const T* g, const T* x, T* out, i64 n, StridedLayout
            // x2) reads n elements of g and x through their layouts and writes n contiguous ones.
            unsafe { launch.launch(packed_config(n, packed)) }.map_err(|e| launch_error(name, &kernel, e))?;
        }
        return Ok(Some(Tensor::from_cuda(out, x.shape())));
    }
    if !crate::cpu::fast() {
        return Ok(None);
    }
    let (StorageRef::Cpu(xs), StorageRef::Cpu(gs)) = (x.storage(), g.storage()) else { return Ok(None) };
    let out = crate::cpu::with_float_vec!(&*gs, gv => {
        let Some(xv) = xs.typed_like(gv.as_slice()) else { return Ok(None) };
        let dx = match op {
            UnaryOp::Relu => zip_map_vec(gv, &g.layout, xv, &x.layout, relu_backward),
            _ => zip_map_vec(gv, &g.layout, xv, &x.layout, gelu_backward),
        };
        CpuStorage::from_vec(crate::cpu::like(gv, dx))
    });
    Ok(out.map(|s| Tensor::from_cpu(s, x.shape())))
}

/// g · step(x), as the reference computes it (NaN · 0 stays NaN, as on the GPU).
#[inline(always)]
fn relu_backward<S: Lane>(g: S, x: S) -> S {
    let step = if x.widen() > S::C::ZERO { S::C::ONE } else { S::C::ZERO };
    S::narrow(g.widen() * step)
}

/// g · GELU'(x).
#[inline(always)]
fn gelu_backward<S: Lane>(g: S, x: S) -> S {
    S::narrow(g.widen() * x.widen().gelu_grad_())
}

fn sign<C: Float>(v: C) -> C {
    if v > C::ZERO {
        C::ONE
    } else if v < C::ZERO {
        -C::ONE
    } else {
        v
    }
}

fn sigmoid<C: Float>(v: C) -> C {
    C::ONE / (C::ONE + (-v).exp_())
}

/// The gradient of `op` at x (with output y), given the output's gradient g.
fn unary_backward(op: UnaryOp, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
    let gx = match op {
        UnaryOp::Neg => g.neg()?,
        UnaryOp::Abs => g.mul(&x.sign()?)?,
        UnaryOp::Exp => g.mul(y)?,
        UnaryOp::Log => g.div(x)?,
        UnaryOp::Sqrt => g.div(y)?.mul_scalar(0.5)?,
        UnaryOp::Tanh => g.mul(&y.mul(y)?.neg()?.add_scalar(1.0)?)?,
        UnaryOp::Sigmoid => g.mul(&y.mul(&y.neg()?.add_scalar(1.0)?)?)?,
        UnaryOp::Relu => relu_grad(x, g)?,
        UnaryOp::Gelu if let Some(gx) = activation_backward(op, x, g)? => gx,
        UnaryOp::Gelu => g.mul(&x.unary_forward(UnaryOp::GeluGrad)?)?,
        // Piecewise constant: zero almost everywhere. GeluGrad is not differentiated further.
        UnaryOp::Sign | UnaryOp::Step | UnaryOp::GeluGrad => return Ok(None),
    };
    Ok(Some(gx))
}

/// ReLU's input gradient g · step(x), from its input `x` or equally from its output
/// (step(relu(x)) = step(x)), as `linear_relu` passes it.
pub(crate) fn relu_grad(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    match activation_backward(UnaryOp::Relu, x, g)? {
        Some(gx) => Ok(gx),
        None => g.mul(&x.unary_forward(UnaryOp::Step)?),
    }
}

/// The gradient reaching a product that clamped its own output (`linear_relu`, `conv2d_relu`):
/// g masked by ReLU's step at that `output` when there was one, else g itself.
pub(crate) fn relu_masked(output: Option<&Tensor>, g: &Tensor) -> Result<Tensor> {
    match output {
        Some(y) => relu_grad(y, g),
        None => Ok(g.clone()),
    }
}

/// The error function in f64, from `libm` (a port of musl's, within an ulp or so).
pub fn erf(x: f64) -> f64 {
    libm::erf(x)
}
