//! The fast CPU backend: ops computed in their own dtype (f32 for f32 and the 16-bit floats,
//! f64 for f64) over slices, threaded on one rayon pool. It sits beside [`crate::cuda`]: the ops
//! call into it with storage slices and layouts, never the other way round.
//!
//! Each op family also keeps its f64 *reference*: the definition the tests hold every device
//! to. [`reference`] runs a closure with the CPU ops computed by the reference instead, which
//! is how a test gets an independent answer on the same machine.
//!
//! Determinism: every parallel loop splits its work into blocks whose size does not depend on
//! the number of threads, and combines the blocks in a fixed order, so results are identical
//! run to run *and* across thread counts.

mod alloc;
pub mod attention;
pub mod conv;
#[cfg(target_arch = "x86_64")]
mod conv_direct;
pub mod elementwise;
pub mod gemm;
pub mod layer_norm;
pub mod pool;
pub mod reduce;
#[cfg(target_arch = "x86_64")]
mod sgemm;
pub use alloc::CacheAligned;
pub mod softmax;

use rayon::ThreadPool;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

thread_local! {
    static REFERENCE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every CPU op on this thread computed by its f64 reference implementation (the
/// definition the fast paths are tested against), and returns its result.
///
/// ```
/// use nabla::{Device, Tensor};
/// # fn main() -> nabla::Result<()> {
/// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3], &Device::Cpu)?;
/// let fast = x.exp()?.sum_all()?.to_vec::<f64>()?;
/// let exact = nabla::cpu::reference(|| x.exp()?.sum_all()?.to_vec::<f64>())?;
/// assert!((fast[0] - exact[0]).abs() < 1e-5 * exact[0]);
/// # Ok(())
/// # }
/// ```
pub fn reference<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REFERENCE.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(REFERENCE.with(|r| r.replace(true)));
    f()
}

/// The kernel that f32 (and f16/bf16, widened) matrix products, convolutions and attention run
/// on: `"nabla-avx512"` (nabla's own, `cpu/sgemm.rs`, on CPUs with AVX-512F) or
/// `"matrixmultiply"` (elsewhere, or when `NABLA_CPU_GEMM=matrixmultiply` is set).
pub fn f32_gemm_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if sgemm::available() {
        return "nabla-avx512";
    }
    "matrixmultiply"
}

/// Whether CPU ops on this thread take their fast paths: false inside [`reference`], and
/// everywhere when the environment sets `NABLA_CPU_REFERENCE=1` (to rule the fast paths out
/// when a result looks wrong).
pub(crate) fn fast() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    !REFERENCE.with(|r| r.get())
        && !*FORCED.get_or_init(|| std::env::var("NABLA_CPU_REFERENCE").is_ok_and(|v| v == "1"))
}

static POOL: OnceLock<RwLock<Arc<ThreadPool>>> = OnceLock::new();

/// The thread count when none is set: `NABLA_NUM_THREADS`, else the physical cores.
fn default_threads() -> usize {
    std::env::var("NABLA_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(num_cpus::get_physical)
        .max(1)
}

/// Whether the current pool is the fallback of a refused thread spawn: the calling thread's own,
/// which other threads must not hand work to (nothing would run it), so they run it themselves.
static ON_CALLER: AtomicBool = AtomicBool::new(false);

fn build_pool(threads: usize) -> Arc<ThreadPool> {
    // The stack of a main thread (8 MiB) rather than a spawned one's 2 MiB: [`in_pool`] runs
    // whole programs on these threads.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(8 << 20)
        .thread_name(|i| format!("nabla-cpu-{i}"))
        .build();
    ON_CALLER.store(pool.is_err(), Ordering::Relaxed);
    // Spawning threads fails only when the OS refuses them; run on the caller then.
    let pool = pool.unwrap_or_else(|_| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .use_current_thread()
            .build()
            .expect("a pool of the current thread")
    });
    Arc::new(pool)
}

fn pool() -> Arc<ThreadPool> {
    let lock = POOL.get_or_init(|| RwLock::new(build_pool(default_threads())));
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Asks the C allocator to keep freed memory for reuse rather than hand it back to the operating
/// system, since a training loop frees and allocates the same large temporaries every step:
/// with glibc's defaults each of them costs fresh pages (page faults and the kernel zeroing
/// them), measured at 10-15% of a LeNet-5 step at batch 256 on the CPU. It affects the whole
/// process (memory once used stays with it until it exits), so it is an explicit call, which
/// `nabla train` and the other commands make. glibc only: elsewhere it does nothing and returns
/// false; returns whether every setting took.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocator tuning; the values are within its
        // limits (the mmap threshold's ceiling is 32 MiB on 64-bit glibc).
        unsafe {
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            let pad = libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            mmap == 1 && trim == 1 && pad == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Sets the number of threads CPU ops use (at least 1): elementwise ops, reductions, softmax,
/// matrix products, convolutions and optimizer steps all share this one pool. The default is
/// `NABLA_NUM_THREADS`, else the number of physical cores. Ops already running finish on the
/// old pool.
pub fn set_num_threads(threads: usize) {
    let fresh = build_pool(threads.max(1));
    let lock = POOL.get_or_init(|| RwLock::new(fresh.clone()));
    *lock.write().unwrap_or_else(|e| e.into_inner()) = fresh;
}

/// The number of threads CPU ops use.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Runs `f` on the pool (where rayon's parallel iterators inside it spread their work). Always
/// through the pool, even one of a single thread: a parallel iterator run outside every pool
/// would spread over rayon's global pool, one thread per core, whatever the setting says. (The
/// one exception: the fallback pool of a refused spawn, whose only thread is its builder.)
pub(crate) fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let pool = pool();
    if ON_CALLER.load(Ordering::Relaxed) && pool.current_thread_index().is_none() { f() } else { pool.install(f) }
}

/// Runs `f` on one of the CPU pool's threads, so that every op inside it starts its parallel
/// loops from within the pool: a loop started from outside hands its work to the pool and puts
/// the calling thread to sleep until it is done, a wake-up and a sleep per op. A training loop
/// that runs inside `in_pool` pays that once: on a 2-vCPU EPYC with 2 threads, the char-GPT
/// `--preset cpu` step went from 33.9 to 31.3 ms and LeNet-5's at batch 64 from 4.3 to 3.7 ms.
/// `nabla train` and the other commands run inside it. Thread-local settings (no-grad,
/// autocast, the reference scope) made inside `f` hold inside `f`; those made outside do not
/// reach it.
///
/// ```
/// use nabla::{Device, Tensor};
/// # fn main() -> nabla::Result<()> {
/// let total = nabla::cpu::in_pool(|| Tensor::ones(&[1 << 16], nabla::DType::F32, &Device::Cpu)?.sum_all()?.to_scalar::<f64>())?;
/// assert_eq!(total, 65536.0);
/// # Ok(())
/// # }
/// ```
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    install(f)
}

/// Σ_j term(a[j], b[j], c[j]) in f64 over three slices of `a`'s length, in eight independent
/// lanes (lane k takes the j ≡ k mod 8, so the loop vectorises) added pairwise. Whole chunks of
/// eight are indexed as arrays, which leaves no bounds check in the loop.
#[inline(always)]
pub(crate) fn sum_lanes<T: Copy>(a: &[T], b: &[T], c: &[T], term: impl Fn(T, T, T) -> f64) -> f64 {
    let n = a.len();
    let ((a8, at), (b8, bt), (c8, ct)) = (a.as_chunks::<8>(), b[..n].as_chunks::<8>(), c[..n].as_chunks::<8>());
    let mut lanes = [0.0f64; 8];
    for ((xa, xb), xc) in a8.iter().zip(b8).zip(c8) {
        for k in 0..8 {
            lanes[k] += term(xa[k], xb[k], xc[k]);
        }
    }
    for (k, ((&xa, &xb), &xc)) in at.iter().zip(bt).zip(ct).enumerate() {
        lanes[k] += term(xa, xb, xc);
    }
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
}

/// Elements below which a loop runs on the calling thread: a task hand-off costs a few
/// microseconds, about what 32K simple elements take.
pub(crate) const PARALLEL_MIN: usize = 1 << 15;

/// The floating-point types the fast paths compute in.
pub(crate) trait Float:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
    + std::iter::Sum
    + crate::Element
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64_(v: f64) -> Self;
    fn to_f64_(self) -> f64;
    fn exp_(self) -> Self;
    /// Whether this is NaN (as a comparison, which vectorises).
    #[inline(always)]
    #[allow(clippy::eq_op)]
    fn is_nan_(self) -> bool {
        self != self
    }
    /// GELU (x·Φ(x)); f64 through the reference's erf.
    fn gelu_(self) -> Self;
    /// GELU's derivative.
    fn gelu_grad_(self) -> Self;
    fn sqrt_(self) -> Self;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn from_f64_(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64_(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        elementwise::exp_f32(self)
    }
    #[inline(always)]
    fn gelu_(self) -> Self {
        elementwise::gelu_f32(self)
    }
    #[inline(always)]
    fn gelu_grad_(self) -> Self {
        elementwise::gelu_grad_f32(self)
    }
    #[inline(always)]
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn from_f64_(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64_(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn gelu_(self) -> Self {
        crate::UnaryOp::Gelu.apply(self)
    }
    #[inline(always)]
    fn gelu_grad_(self) -> Self {
        crate::UnaryOp::GeluGrad.apply(self)
    }
    #[inline(always)]
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
}

/// A stored float type and the type its fast paths compute in: f64 for f64, f32 for f32 and
/// the 16-bit floats (widened on load, rounded once on store, as the GPU kernels do).
pub(crate) trait Lane: crate::Element + Default {
    /// The compute type.
    type C: Float + reduce::Wide;
    /// Widens to the compute type (exact).
    fn widen(self) -> Self::C;
    /// Rounds from the compute type.
    fn narrow(c: Self::C) -> Self;
}

impl Lane for f32 {
    type C = f32;
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    fn narrow(c: f32) -> f32 {
        c
    }
}

impl Lane for f64 {
    type C = f64;
    #[inline(always)]
    fn widen(self) -> f64 {
        self
    }
    #[inline(always)]
    fn narrow(c: f64) -> f64 {
        c
    }
}

impl Lane for half::f16 {
    type C = f32;
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn narrow(c: f32) -> Self {
        half::f16::from_f32(c)
    }
}

impl Lane for half::bf16 {
    type C = f32;
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn narrow(c: f32) -> Self {
        half::bf16::from_f32(c)
    }
}

/// Runs `$body` with `$v` bound to the typed vector of a float `CpuStorage` (its element type
/// a [`Lane`]), giving `Some(body)`; `None` for integer storage, which the fast paths leave to
/// the reference.
macro_rules! with_float_vec {
    ($storage:expr, $v:ident => $body:expr) => {
        match $storage {
            $crate::storage::CpuStorage::F32($v) => Some($body),
            $crate::storage::CpuStorage::F64($v) => Some($body),
            $crate::storage::CpuStorage::F16($v) => Some($body),
            $crate::storage::CpuStorage::BF16($v) => Some($body),
            $crate::storage::CpuStorage::I64(_) => None,
        }
    };
}
pub(crate) use with_float_vec;

/// `v`, typed as a vector of `_like`'s element type (pins inference inside dtype dispatch).
pub(crate) fn like<T>(_like: &[T], v: Vec<T>) -> Vec<T> {
    v
}

/// Sets every negative element of `values` to zero, NaN kept (as `Tensor::relu`): the ReLU a
/// fused op (`linear_relu`, `conv2d_relu`) applies to its fresh output in place. Every element
/// is written through a select, which vectorises: a store behind a branch on the sign (half the
/// elements of an activation, at random) mispredicted often enough to make LeNet-5's CPU step
/// a third slower than running a separate ReLU (docs/benchmarks.md). Large outputs are split over the pool.
pub(crate) fn clamp_at_zero<T: PartialOrd + Default + Copy + Send>(values: &mut [T]) {
    elementwise::for_chunks(values, |_, chunk| {
        for x in chunk {
            *x = if *x < T::default() { T::default() } else { *x };
        }
    });
}

/// [`clamp_at_zero`] on float storage (integer storage is left as is: fused ops are float-only).
pub(crate) fn clamp_storage_at_zero(storage: &mut crate::storage::CpuStorage) {
    with_float_vec!(storage, v => clamp_at_zero(v));
}

/// f32 results rounded once into float storage of `dtype` (a 16-bit float or f32).
pub(crate) fn narrow_vec(dtype: crate::DType, values: Vec<f32>) -> crate::storage::CpuStorage {
    use crate::storage::CpuStorage;
    match dtype {
        crate::DType::F16 => CpuStorage::F16(values.iter().map(|&v| half::f16::from_f32(v)).collect()),
        crate::DType::BF16 => CpuStorage::BF16(values.iter().map(|&v| half::bf16::from_f32(v)).collect()),
        crate::DType::F64 => CpuStorage::F64(values.iter().map(|&v| v as f64).collect()),
        _ => CpuStorage::F32(values), // moved, not copied
    }
}

/// Runs `f` compiled for the widest vector instructions the CPU has: AVX-512, else AVX2 with
/// FMA, else the baseline (SSE2 on x86-64). The binary is built for the baseline, so a loop
/// only gets wide vectors when its code is inlined into these wrappers: `f` and the helpers it
/// calls in its hot loop are marked `#[inline(always)]`. Results do not depend on the path:
/// the loops run the same order of operations everywhere, and their only fused multiply-adds
/// are explicit (`mul_add`: an instruction here, libm's exactly rounded `fma` on the baseline).
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::atomic::AtomicU8;
        // 0: not yet detected, 1: baseline, 2: AVX2, 3: AVX-512.
        static LEVEL: AtomicU8 = AtomicU8::new(0);
        let mut level = LEVEL.load(Ordering::Relaxed);
        if level == 0 {
            level = if std::arch::is_x86_feature_detected!("avx512f") {
                3
            } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                2
            } else {
                1
            };
            LEVEL.store(level, Ordering::Relaxed);
        }
        // SAFETY: each wrapper runs only where the CPU reported its features.
        match level {
            3 => return unsafe { with_avx512(f) },
            2 => return unsafe { with_avx2(f) },
            _ => {}
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,avx,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
