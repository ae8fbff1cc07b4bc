//! Generated from kernels/params.h by tests/all/params_mirror.rs (NABLA_BLESS=1 rewrites it): do not edit.
//! Rust mirrors of the kernel parameter structs, passed to kernels by value.

/// Mirror of `NABLA_MAX_DIMS`.
pub const NABLA_MAX_DIMS: usize = 8;

/// Mirror of `struct StridedLayout` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StridedLayout {
    pub ndim: i64,
    pub contiguous: i64,
    pub offset: i64,
    pub shape: [i64; NABLA_MAX_DIMS],
    pub strides: [i64; NABLA_MAX_DIMS],
}

/// Mirror of `struct MatmulParams` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MatmulParams {
    pub m: i64,
    pub n: i64,
    pub k: i64,
    pub batch: i64,
    pub batch_ndim: i64,
    pub batch_shape: [i64; NABLA_MAX_DIMS],
    pub a_batch_strides: [i64; NABLA_MAX_DIMS],
    pub b_batch_strides: [i64; NABLA_MAX_DIMS],
    pub a_offset: i64,
    pub a_row_stride: i64,
    pub a_col_stride: i64,
    pub b_offset: i64,
    pub b_row_stride: i64,
    pub b_col_stride: i64,
    pub splits: i64,
    pub relu: i64,
    pub out_acc: i64,
}

/// Mirror of `struct ReduceParams` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReduceParams {
    pub outer: i64,
    pub inner: i64,
    pub splits: i64,
    pub chunk: i64,
    pub scale: f64,
    pub src: StridedLayout,
}

/// Mirror of `struct SgdParams` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SgdParams {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: i64,
}

/// Mirror of `struct AdamParams` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AdamParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decoupled: i64,
}

/// Mirror of `struct FastDiv` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FastDiv {
    pub divisor: i64,
    pub magic: i64,
    pub shift: i64,
}

/// Mirror of `struct GatherLayout` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GatherLayout {
    pub ndim: i64,
    pub offset: i64,
    pub shape: [FastDiv; NABLA_MAX_DIMS],
    pub strides: [i64; NABLA_MAX_DIMS],
}

/// Mirror of `NABLA_MAX_TENSORS`.
pub const NABLA_MAX_TENSORS: usize = 24;

/// Mirror of `NABLA_MAX_TENSOR_BOUNDS`.
pub const NABLA_MAX_TENSOR_BOUNDS: usize = 25;

/// Mirror of `struct TensorList` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TensorList {
    pub count: i64,
    pub chunk: i64,
    pub numel: [i64; NABLA_MAX_TENSORS],
    pub first_block: [i64; NABLA_MAX_TENSOR_BOUNDS],
    pub param: [i64; NABLA_MAX_TENSORS],
    pub grad: [i64; NABLA_MAX_TENSORS],
    pub state0: [i64; NABLA_MAX_TENSORS],
    pub state1: [i64; NABLA_MAX_TENSORS],
    pub bias_correction1: [f64; NABLA_MAX_TENSORS],
    pub bias_correction2: [f64; NABLA_MAX_TENSORS],
    pub first_step: [i64; NABLA_MAX_TENSORS],
}

/// Mirror of `struct Conv2dParams` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Conv2dParams {
    pub n: i64,
    pub c: i64,
    pub h: i64,
    pub w: i64,
    pub o: i64,
    pub kh: i64,
    pub kw: i64,
    pub oh: i64,
    pub ow: i64,
    pub sh: i64,
    pub sw: i64,
    pub ph: i64,
    pub pw: i64,
    pub dh: i64,
    pub dw: i64,
    pub groups: i64,
    pub splits: i64,
    pub relu: i64,
    pub div_taps: FastDiv,
    pub div_kw: FastDiv,
    pub div_ow: FastDiv,
    pub div_ohow: FastDiv,
    pub div_sh: FastDiv,
    pub div_sw: FastDiv,
}

/// Mirror of `struct PoolParams` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PoolParams {
    pub n: i64,
    pub c: i64,
    pub h: i64,
    pub w: i64,
    pub oh: i64,
    pub ow: i64,
    pub kh: i64,
    pub kw: i64,
    pub sh: i64,
    pub sw: i64,
    pub ph: i64,
    pub pw: i64,
}

/// Mirror of `struct BatchNormParams` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchNormParams {
    pub n: i64,
    pub c: i64,
    pub hw: i64,
    pub eps: f64,
}

/// Mirror of `struct LayerNormParams` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerNormParams {
    pub rows: i64,
    pub cols: i64,
    pub chunk: i64,
    pub eps: f64,
}

/// Mirror of `struct AttentionParams` in kernels/params.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AttentionParams {
    pub bh: i64,
    pub sq: i64,
    pub sk: i64,
    pub causal: i64,
    pub scale: f64,
}
