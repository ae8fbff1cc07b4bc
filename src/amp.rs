//! Automatic mixed precision, as PyTorch's `torch.autocast`: inside [`autocast`], the products
//! (`matmul`, `linear`, `conv2d`, `scaled_dot_product_attention`) of f32 tensors run in a 16-bit
//! dtype (bf16 or f16: on the tensor cores of an sm_80+ GPU), with f32 accumulation, and give
//! their result back in f32. Everything else (elementwise ops, reductions, softmax, the
//! normalisations' statistics, losses) sees f32 tensors and stays in f32, as do the parameters
//! (the master weights) and the optimizer state: the casts are differentiable, so each
//! parameter's gradient arrives in f32.
//!
//! Unlike PyTorch, a product's output is returned in f32 rather than in the 16-bit dtype, so that
//! every op outside the product list needs no casting rules (nabla's binary ops take one dtype).
//! Every product's output is still rounded once to the 16-bit dtype, as PyTorch's is. In the
//! backward of `linear` (every Linear layer, the GPT's and ViT's projections and MLPs), the
//! input and weight gradients are written in f32 straight from their f32 accumulators: one
//! kernel each, no rounding to the 16-bit dtype and no cast back (the incoming gradient is
//! rounded to it once, as the tensor cores need).
//!
//! f16's range is narrow (largest 65504, smallest normal 6e-5), so small gradients flush to zero
//! unless the loss is scaled up first: [`crate::optim::GradScaler`] does that dynamically. bf16
//! has f32's range and needs no scaling.

use crate::{DType, Error, Result, Tensor};
use std::cell::Cell;

thread_local! {
    /// The product dtype of the innermost enclosing [`autocast`] on this thread.
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// A training precision: plain f32, or f32 with the products autocast to bf16 or f16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Products in bf16 (f32 range; no loss scaling needed).
    Bf16,
    /// Products in f16, with dynamic loss scaling.
    F16,
}

impl Precision {
    /// The name the CLI and the run settings use: `f32`, `bf16` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The dtype products are autocast to, if any.
    pub fn product_dtype(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
            Precision::F16 => Some(DType::F16),
        }
    }

    /// Whether training at this precision needs a loss scaler (f16 only).
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }

    /// Runs `f` autocast to this precision's product dtype (plain f32: `f` as is).
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        match self.product_dtype() {
            Some(dtype) => {
                let _guard = Guard::set(Some(dtype));
                f()
            }
            None => f(),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Precision> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            other => Err(Error::invalid("precision", format!("`{other}` is not one of f32, bf16, f16"))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Restores the previous autocast state when dropped (also when `f` panics).
struct Guard(Option<DType>);

impl Guard {
    fn set(dtype: Option<DType>) -> Guard {
        Guard(AUTOCAST.with(|c| c.replace(dtype)))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        AUTOCAST.with(|c| c.set(self.0));
    }
}

/// Runs `f` with the products of f32 tensors autocast to `dtype` (bf16 or f16) on this thread,
/// as `with torch.autocast(device_type, dtype=dtype):`. Nests; the previous state comes back
/// when `f` returns. Any other dtype is an error.
pub fn autocast<R>(dtype: DType, f: impl FnOnce() -> R) -> Result<R> {
    if !matches!(dtype, DType::BF16 | DType::F16) {
        return Err(Error::invalid("autocast", format!("products autocast to bf16 or f16, not {dtype}")));
    }
    let _guard = Guard::set(Some(dtype));
    Ok(f())
}

/// The dtype products are autocast to on this thread, if any.
pub fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(Cell::get)
}

/// Switches autocast off until dropped: the backward pass runs each product in the dtype its
/// forward chose (saved in the graph), and nothing else is recast.
pub(crate) struct AutocastOff {
    _restore: Guard,
}

impl AutocastOff {
    pub(crate) fn new() -> AutocastOff {
        AutocastOff { _restore: Guard::set(None) }
    }
}

/// The dtype a product of `operands` runs in under autocast: `Some(low)` when autocast is on and
/// every operand is f32 (other dtypes are left as the caller made them).
pub(crate) fn product_dtype(operands: &[&Tensor]) -> Option<DType> {
    let low = autocast_dtype()?;
    operands.iter().all(|t| t.dtype() == DType::F32).then_some(low)
}

/// `product` of `operands` cast to `low`, its result cast back to f32; each cast is recorded, so
/// the gradients reach the f32 operands in f32.
pub(crate) fn in_low_precision(
    operands: &[&Tensor],
    low: DType,
    product: impl FnOnce(&[Tensor]) -> Result<Tensor>,
) -> Result<Tensor> {
    let cast: Vec<Tensor> = operands.iter().map(|t| t.to_dtype(low)).collect::<Result<_>>()?;
    product(&cast)?.to_dtype(DType::F32)
}
