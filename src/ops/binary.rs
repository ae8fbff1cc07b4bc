//! Elementwise binary ops with NumPy broadcasting, their scalar forms, comparisons and
//! `where` (`kernels/binary.cu`).

use crate::autograd::record;
use crate::cpu::elementwise::{map_vec, zip_map_vec};
use crate::cpu::{Float, Lane};
use crate::cuda::{elementwise_config, launch_error, packable, packed_config, strided_layout};
use crate::layout::{Layout, broadcast_shapes};
use crate::storage::{CpuStorage, StorageRef};
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::PushKernelArg;

/// An elementwise function of two tensors. Comparisons give 1 or 0 in the operands' dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b (integers: truncated, and 0 where b is 0)
    Div,
    /// a^b (floats only)
    Pow,
    /// The larger, NaN-propagating (torch.maximum).
    Maximum,
    /// The smaller, NaN-propagating (torch.minimum).
    Minimum,
    /// a == b
    Eq,
    /// a != b
    Ne,
    /// a < b
    Lt,
    /// a <= b
    Le,
    /// a > b
    Gt,
    /// a >= b
    Ge,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 13] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
    ];

    /// The op's name, as in messages and kernel names.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::Eq => "eq",
            BinaryOp::Ne => "ne",
            BinaryOp::Lt => "lt",
            BinaryOp::Le => "le",
            BinaryOp::Gt => "gt",
            BinaryOp::Ge => "ge",
        }
    }

    /// Whether the op is defined for `dtype` (all but pow take integers).
    pub fn supports(self, dtype: DType) -> bool {
        dtype.is_float() || self != BinaryOp::Pow
    }

    /// The CPU reference, in f64; `integer` selects integer division.
    pub fn apply(self, a: f64, b: f64, integer: bool) -> f64 {
        let flag = |c: bool| if c { 1.0 } else { 0.0 };
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div if integer => {
                if b == 0.0 {
                    0.0
                } else {
                    (a / b).trunc()
                }
            }
            BinaryOp::Div => a / b,
            BinaryOp::Pow => a.powf(b),
            BinaryOp::Maximum => {
                if a.is_nan() || a > b {
                    a
                } else {
                    b
                }
            }
            BinaryOp::Minimum => {
                if a.is_nan() || a < b {
                    a
                } else {
                    b
                }
            }
            BinaryOp::Eq => flag(a == b),
            BinaryOp::Ne => flag(a != b),
            BinaryOp::Lt => flag(a < b),
            BinaryOp::Le => flag(a <= b),
            BinaryOp::Gt => flag(a > b),
            BinaryOp::Ge => flag(a >= b),
        }
    }

    /// Whether the op compares (its output carries no gradient).
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge)
    }

    fn kernel_name(self, scalar: bool, dtype: DType) -> String {
        format!("{}_{}_{dtype}", if scalar { "scalar" } else { "binary" }, self.name())
    }

    fn check(self, t: &Tensor) -> Result<()> {
        if self.supports(t.dtype) {
            Ok(())
        } else {
            Err(Error::unsupported(self.name(), t.dtype, " (needs a floating-point tensor)"))
        }
    }
}

pub(crate) fn kernel_names() -> Vec<String> {
    let mut names = Vec::new();
    for op in BinaryOp::ALL {
        for dtype in DType::ALL.into_iter().filter(|d| op.supports(*d)) {
            names.push(op.kernel_name(false, dtype));
            names.push(op.kernel_name(true, dtype));
        }
    }
    names.extend(DType::ALL.iter().map(|d| format!("where_{d}")));
    names
}

impl Tensor {
    /// `op` applied to the two tensors broadcast to a common shape.
    pub fn binary(&self, op: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        let out = self.binary_forward(op, rhs)?;
        if op.is_comparison() {
            return Ok(out);
        }
        let (a, b, y) = (self.detach(), rhs.detach(), out.detach());
        Ok(record(out, &[self, rhs], move |g| {
            let (ga, gb) = binary_backward(op, &a, &b, &y, g)?;
            Ok(vec![Some(ga.sum_to(a.shape())?), Some(gb.sum_to(b.shape())?)])
        }))
    }

    fn binary_forward(&self, op: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        let name = op.name();
        self.check_same(name, rhs)?;
        op.check(self)?;
        let shape = broadcast_shapes(name, self.shape(), rhs.shape())?;
        if self.device == crate::Device::Cpu {
            crate::storage::check_allocatable(name, &shape, self.dtype)?;
        }
        if op == BinaryOp::Div && !self.dtype.is_float() && rhs.to_vec::<i64>()?.contains(&0) {
            return Err(integer_division_by_zero(self, rhs.shape()));
        }
        let (la, lb) = (self.layout.broadcast_as(&shape)?, rhs.layout.broadcast_as(&shape)?);
        let n = la.numel();
        match (self.storage(), rhs.storage()) {
            (StorageRef::Cpu(a), StorageRef::Cpu(b)) => {
                if let Some(out) = cpu_binary(op, &a, &la, &b, &lb) {
                    return Ok(Tensor::from_cpu(out, &shape));
                }
                let integer = !self.dtype.is_float();
                let values: Vec<f64> = a
                    .gather_f64(&la)
                    .into_iter()
                    .zip(b.gather_f64(&lb))
                    .map(|(x, y)| op.apply(x, y, integer))
                    .collect();
                Ok(Tensor::from_cpu(CpuStorage::from_f64(self.dtype, &values), &shape))
            }
            (StorageRef::Cuda(a), StorageRef::Cuda(b)) => {
                let dev = a.device.clone();
                let mut out = dev.alloc(name, self.dtype, n)?;
                if n > 0 {
                    let kernel = op.kernel_name(false, self.dtype);
                    let f = dev.function(name, "binary", &kernel)?;
                    let (ka, kb) = (strided_layout(name, &la)?, strided_layout(name, &lb)?);
                    let n_arg = n as i64;
                    let mut launch = dev.stream.launch_builder(&f);
                    launch.arg(&*a.buf).arg(&*b.buf).arg(&mut *out.buf).arg(&n_arg).arg(&ka).arg(&kb);
                    let packed = packable(&la, self.dtype) && packable(&lb, self.dtype);
                    // SAFETY: binary_<op>_<T>(const T*, const T*, T* out, i64 n, StridedLayout x2)
                    // reads n elements through each broadcast layout and writes n contiguous.
                    unsafe { launch.launch(packed_config(n, packed)) }.map_err(|e| launch_error(name, &kernel, e))?;
                }
                Ok(Tensor::from_cuda(out, &shape))
            }
            _ => unreachable!("check_same rejects mixed devices"),
        }
    }

    /// `op` applied to every element and the scalar `value` (rounded to the compute type).
    pub fn binary_scalar(&self, op: BinaryOp, value: f64) -> Result<Tensor> {
        let out = self.binary_scalar_forward(op, value)?;
        if op.is_comparison() {
            return Ok(out);
        }
        let x = self.detach();
        Ok(record(out, &[self], move |g| Ok(vec![Some(scalar_backward(op, &x, value, g)?)])))
    }

    fn binary_scalar_forward(&self, op: BinaryOp, value: f64) -> Result<Tensor> {
        let name = op.name();
        op.check(self)?;
        if op == BinaryOp::Div && !self.dtype.is_float() && value.trunc() == 0.0 {
            return Err(integer_division_by_zero(self, &[]));
        }
        if self.device == crate::Device::Cpu {
            // A broadcast view's output can be far larger than its storage.
            crate::storage::check_allocatable(name, self.shape(), self.dtype)?;
        }
        let n = self.numel();
        match self.storage() {
            StorageRef::Cpu(a) => {
                if let Some(out) = cpu_binary_scalar(op, &a, &self.layout, value) {
                    return Ok(Tensor::from_cpu(out, self.shape()));
                }
                let integer = !self.dtype.is_float();
                // The scalar is rounded to the compute type first, as the kernels do.
                let s = match self.dtype {
                    DType::F64 => value,
                    DType::I64 => value as i64 as f64,
                    _ => value as f32 as f64,
                };
                let values: Vec<f64> =
                    a.gather_f64(&self.layout).into_iter().map(|x| op.apply(x, s, integer)).collect();
                Ok(Tensor::from_cpu(CpuStorage::from_f64(self.dtype, &values), self.shape()))
            }
            StorageRef::Cuda(a) => {
                let dev = a.device.clone();
                let mut out = dev.alloc(name, self.dtype, n)?;
                if n > 0 {
                    let kernel = op.kernel_name(true, self.dtype);
                    let f = dev.function(name, "binary", &kernel)?;
                    let la = strided_layout(name, &self.layout)?;
                    let n_arg = n as i64;
                    let mut launch = dev.stream.launch_builder(&f);
                    launch.arg(&*a.buf).arg(&mut *out.buf).arg(&n_arg).arg(&la).arg(&value);
                    let packed = packable(&self.layout, self.dtype);
                    // SAFETY: scalar_<op>_<T>(const T*, T* out, i64 n, StridedLayout, double)
                    // reads n elements through the layout and writes n contiguous.
                    unsafe { launch.launch(packed_config(n, packed)) }.map_err(|e| launch_error(name, &kernel, e))?;
                }
                Ok(Tensor::from_cuda(out, self.shape()))
            }
        }
    }

    /// Elementwise `if self != 0 { on_true } else { on_false }`, all three broadcast together.
    /// The condition has the values' dtype (comparisons produce such masks).
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        let out = self.where_forward(on_true, on_false)?;
        let (cond, a_shape, b_shape) = (self.detach(), on_true.shape().to_vec(), on_false.shape().to_vec());
        Ok(record(out, &[self, on_true, on_false], move |g| {
            let zeros = g.zeros_like()?;
            let ga = cond.where_forward(g, &zeros)?.sum_to(&a_shape)?;
            let gb = cond.where_forward(&zeros, g)?.sum_to(&b_shape)?;
            Ok(vec![None, Some(ga), Some(gb)])
        }))
    }

    fn where_forward(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        const OP: &str = "where";
        self.check_same(OP, on_true)?;
        self.check_same(OP, on_false)?;
        let shape = broadcast_shapes(OP, &broadcast_shapes(OP, self.shape(), on_true.shape())?, on_false.shape())?;
        let (lc, la, lb) = (
            self.layout.broadcast_as(&shape)?,
            on_true.layout.broadcast_as(&shape)?,
            on_false.layout.broadcast_as(&shape)?,
        );
        let n = lc.numel();
        match (self.storage(), on_true.storage(), on_false.storage()) {
            (StorageRef::Cpu(c), StorageRef::Cpu(a), StorageRef::Cpu(b)) => {
                let take: Vec<bool> = c.gather_f64(&lc).into_iter().map(|v| v != 0.0).collect();
                // Copy whole elements (not through f64) so integers stay exact.
                let mut out = b.gather_same(&lb);
                select_into(&mut out, &a.gather_same(&la), &take);
                Ok(Tensor::from_cpu(out, &shape))
            }
            (StorageRef::Cuda(c), StorageRef::Cuda(a), StorageRef::Cuda(b)) => {
                let dev = c.device.clone();
                let mut out = dev.alloc(OP, self.dtype, n)?;
                if n > 0 {
                    let kernel = format!("where_{}", self.dtype);
                    let f = dev.function(OP, "binary", &kernel)?;
                    let (kc, ka, kb) = (strided_layout(OP, &lc)?, strided_layout(OP, &la)?, strided_layout(OP, &lb)?);
                    let n_arg = n as i64;
                    let mut launch = dev.stream.launch_builder(&f);
                    launch
                        .arg(&*c.buf)
                        .arg(&*a.buf)
                        .arg(&*b.buf)
                        .arg(&mut *out.buf)
                        .arg(&n_arg)
                        .arg(&kc)
                        .arg(&ka)
                        .arg(&kb);
                    // SAFETY: where_<T>(const T* c, const T* a, const T* b, T* out, i64 n,
                    // StridedLayout x3) reads n elements through each layout and writes n.
                    unsafe { launch.launch(elementwise_config(n)) }.map_err(|e| launch_error(OP, &kernel, e))?;
                }
                Ok(Tensor::from_cuda(out, &shape))
            }
            _ => unreachable!("check_same rejects mixed devices"),
        }
    }
}

/// The fast CPU path over float storage (None for integers, left to the reference): each
/// element widened to the compute type, combined, rounded once.
fn cpu_binary(op: BinaryOp, a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Option<CpuStorage> {
    if !crate::cpu::fast() {
        return None;
    }
    crate::cpu::with_float_vec!(a, x => {
        let y = b.typed_like(x)?;
        with_binary_fn!(op, f => CpuStorage::from_vec(crate::cpu::like(x, zip_map_vec(x, la, y, lb, #[inline(always)] |p, q| f(Lane::widen(p), Lane::widen(q))))))
    })
}

/// `x op value` over float storage, the scalar rounded to the compute type first.
fn cpu_binary_scalar(op: BinaryOp, a: &CpuStorage, la: &Layout, value: f64) -> Option<CpuStorage> {
    if !crate::cpu::fast() {
        return None;
    }
    crate::cpu::with_float_vec!(a, x => {
        CpuStorage::from_vec(scalar_map(op, x, la, value))
    })
}

fn scalar_map<S: Lane>(op: BinaryOp, x: &[S], la: &Layout, value: f64) -> Vec<S> {
    let s = <S::C as Float>::from_f64_(value);
    with_binary_fn!(op, f => map_vec(x, la, #[inline(always)] |v: S| f(v.widen(), s)))
}

/// Binds `$f` to `op` as a function on compute-type values and runs `$body`, once per op so
/// each loop is monomorphised into straight-line (vectorisable) code; `$f` returns the
/// stored type (rounded once).
macro_rules! with_binary_fn {
    ($op:expr, $f:ident => $body:expr) => {{
        fn flag<C: Float>(c: bool) -> C {
            if c { C::ONE } else { C::ZERO }
        }
        macro_rules! arm {
            (|$a:ident, $b:ident| $e:expr) => {{
                #[allow(unused_variables)]
                let $f = |$a, $b| Lane::narrow($e);
                $body
            }};
        }
        match $op {
            BinaryOp::Add => arm!(|a, b| a + b),
            BinaryOp::Sub => arm!(|a, b| a - b),
            BinaryOp::Mul => arm!(|a, b| a * b),
            BinaryOp::Div => arm!(|a, b| a / b),
            BinaryOp::Pow => arm!(|a, b| Float::from_f64_(Float::to_f64_(a).powf(Float::to_f64_(b)))),
            BinaryOp::Maximum => arm!(|a, b| if a != a || a > b { a } else { b }),
            BinaryOp::Minimum => arm!(|a, b| if a != a || a < b { a } else { b }),
            BinaryOp::Eq => arm!(|a, b| flag(a == b)),
            BinaryOp::Ne => arm!(|a, b| flag(a != b)),
            BinaryOp::Lt => arm!(|a, b| flag(a < b)),
            BinaryOp::Le => arm!(|a, b| flag(a <= b)),
            BinaryOp::Gt => arm!(|a, b| flag(a > b)),
            BinaryOp::Ge => arm!(|a, b| flag(a >= b)),
        }
    }};
}
use with_binary_fn;

/// Gradients of a binary op at (a, b) with output y, in the broadcast shape.
fn binary_backward(op: BinaryOp, a: &Tensor, b: &Tensor, y: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok(match op {
        BinaryOp::Add => (g.clone(), g.clone()),
        BinaryOp::Sub => (g.clone(), g.neg()?),
        BinaryOp::Mul => (g.mul(b)?, g.mul(a)?),
        BinaryOp::Div => (g.div(b)?, g.mul(y)?.div(b)?.neg()?),
        // d/da a^b = b a^(b-1); d/db a^b = a^b ln a
        BinaryOp::Pow => (g.mul(b)?.mul(&a.pow(&b.add_scalar(-1.0)?)?)?, g.mul(y)?.mul(&a.log()?)?),
        // Ties split the gradient evenly, as in PyTorch.
        BinaryOp::Maximum | BinaryOp::Minimum => {
            let (wins_a, wins_b) = if op == BinaryOp::Maximum { (a.gt(b)?, a.lt(b)?) } else { (a.lt(b)?, a.gt(b)?) };
            let half_ties = a.eq(b)?.mul_scalar(0.5)?;
            (g.mul(&wins_a.add(&half_ties)?)?, g.mul(&wins_b.add(&half_ties)?)?)
        }
        BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
            unreachable!("comparisons record no backward")
        }
    })
}

/// The gradient of `x op s` with output y.
fn scalar_backward(op: BinaryOp, x: &Tensor, s: f64, g: &Tensor) -> Result<Tensor> {
    match op {
        BinaryOp::Add | BinaryOp::Sub => Ok(g.clone()),
        BinaryOp::Mul => g.mul_scalar(s),
        BinaryOp::Div => g.div_scalar(s),
        BinaryOp::Pow => g.mul(&x.pow_scalar(s - 1.0)?)?.mul_scalar(s),
        BinaryOp::Maximum | BinaryOp::Minimum => {
            let wins = if op == BinaryOp::Maximum { x.gt_scalar(s)? } else { x.lt_scalar(s)? };
            g.mul(&wins.add(&x.eq_scalar(s)?.mul_scalar(0.5)?)?)
        }
        BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
            unreachable!("comparisons record no backward")
        }
    }
}

/// out[i] = a[i] where take[i]; both dense and of one dtype.
fn select_into(out: &mut CpuStorage, a: &CpuStorage, take: &[bool]) {
    crate::storage::with_cpu_vec!(out, o => {
        let values = a.gather(&crate::Layout::contiguous(&[take.len()]));
        for ((slot, v), &t) in o.iter_mut().zip(values).zip(take) {
            if t {
                *slot = v;
            }
        }
    })
}

/// The binary-op methods: `a.add(&b)`, `a.add_scalar(2.0)`, `a.lt(&b)`...
macro_rules! binary_methods {
    ($($method:ident, $scalar:ident => $op:ident, $doc:literal;)*) => {
        impl Tensor {
            $(
                #[doc = concat!($doc, ", broadcasting.")]
                pub fn $method(&self, rhs: &Tensor) -> Result<Tensor> {
                    self.binary(BinaryOp::$op, rhs)
                }

                #[doc = concat!($doc, " with a scalar right-hand side.")]
                pub fn $scalar(&self, rhs: f64) -> Result<Tensor> {
                    self.binary_scalar(BinaryOp::$op, rhs)
                }
            )*
        }
    };
}

binary_methods! {
    add, add_scalar => Add, "Elementwise a + b";
    sub, sub_scalar => Sub, "Elementwise a - b";
    mul, mul_scalar => Mul, "Elementwise a * b";
    div, div_scalar => Div, "Elementwise a / b";
    pow, pow_scalar => Pow, "Elementwise a ^ b";
    maximum, maximum_scalar => Maximum, "Elementwise NaN-propagating max(a, b)";
    minimum, minimum_scalar => Minimum, "Elementwise NaN-propagating min(a, b)";
    eq, eq_scalar => Eq, "1 where a == b, else 0";
    ne, ne_scalar => Ne, "1 where a != b, else 0";
    lt, lt_scalar => Lt, "1 where a < b, else 0";
    le, le_scalar => Le, "1 where a <= b, else 0";
    gt, gt_scalar => Gt, "1 where a > b, else 0";
    ge, ge_scalar => Ge, "1 where a >= b, else 0";
}

/// Integer division by zero has no value (PyTorch raises `ZeroDivisionError` on the CPU): an
/// error, rather than the 0 or garbage a kernel would give.
fn integer_division_by_zero(a: &Tensor, divisor: &[usize]) -> Error {
    Error::invalid(
        "div",
        format!("integer division by zero: the {divisor:?} divisor of {:?} {} holds a 0", a.shape(), a.dtype()),
    )
}
