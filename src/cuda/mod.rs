//! The CUDA backend: devices, device buffers, kernel modules and launches.
//!
//! One context and one stream per device; every op is queued on that stream, so ops are
//! ordered without host synchronisation, and buffers are allocated and freed stream-ordered.
//! Only downloads (and the index-range checks of indexing ops) wait for the device.

pub mod gemm;
pub mod graph;
pub mod kernels;
pub mod nvrtc;
pub(crate) mod params;

use crate::{DType, Device, Error, Layout, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError, LaunchConfig,
};
use kernels::ModuleOrigin;
use params::{NABLA_MAX_DIMS, StridedLayout};
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, OnceLock};

// SAFETY: plain #[repr(C)] structs of i64/f64 fields, mirrored from kernels/params.h.
unsafe impl DeviceRepr for params::StridedLayout {}
unsafe impl DeviceRepr for params::GatherLayout {}
unsafe impl DeviceRepr for params::MatmulParams {}
unsafe impl DeviceRepr for params::ReduceParams {}
unsafe impl DeviceRepr for params::SgdParams {}
unsafe impl DeviceRepr for params::AdamParams {}
unsafe impl DeviceRepr for params::Conv2dParams {}
unsafe impl DeviceRepr for params::PoolParams {}
unsafe impl DeviceRepr for params::TensorList {}
unsafe impl DeviceRepr for params::BatchNormParams {}
unsafe impl DeviceRepr for params::LayerNormParams {}
unsafe impl DeviceRepr for params::AttentionParams {}

/// The multiplier and shift that divide any n < 2^31 by `divisor` (1 ≤ divisor < 2^31) as
/// `(n · magic) >> shift` (Granlund and Montgomery): shift = 31 + ⌈log2 divisor⌉, magic =
/// ⌈2^shift / divisor⌉, which fits in 33 bits. Kernels use it through `FastDiv` and
/// `fast_div()` (kernels/nabla.cuh).
pub fn division_magic(divisor: u32) -> (u64, u32) {
    let divisor = divisor.max(1);
    let shift = 31 + (u32::BITS - (divisor - 1).leading_zeros());
    let magic = (1u128 << shift).div_ceil(divisor as u128);
    (magic as u64, shift)
}

impl params::FastDiv {
    /// Division by `divisor` (clamped to at least 1) for kernels.
    pub(crate) fn new(divisor: usize) -> Self {
        let divisor = divisor.clamp(1, i32::MAX as usize);
        let (magic, shift) = division_magic(divisor as u32);
        params::FastDiv { divisor: divisor as i64, magic: magic as i64, shift: shift as i64 }
    }
}

/// Threads per block of the elementwise kernels.
pub(crate) const ELEMENTWISE_THREADS: u32 = 256;

/// A CUDA device with its context, stream and loaded kernel modules.
pub struct CudaDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    arch: (i32, i32),
    multiprocessors: usize,
    /// The most shared memory a block may opt in to (bytes).
    max_shared_per_block: usize,
    modules: Mutex<HashMap<String, (Arc<CudaModule>, ModuleOrigin)>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// Whether the stream runs work, captures it into a CUDA graph or refreshes one (graph.rs).
    mode: Mutex<graph::Mode>,
}

/// A device buffer of `len` elements of `dtype` (bytes, typed by the kernels that read it).
pub(crate) struct CudaStorage {
    /// Released by `Drop` as its origin requires (graph.rs), never dropped in place.
    pub(crate) buf: ManuallyDrop<CudaSlice<u8>>,
    pub(crate) dtype: DType,
    pub(crate) len: usize,
    pub(crate) device: Arc<CudaDevice>,
    /// The CUDA graph pool the memory belongs to, for buffers allocated during a capture.
    pool: Option<Arc<graph::GraphPool>>,
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        // SAFETY: `buf` is taken once, here, and not used afterwards.
        let buf = unsafe { ManuallyDrop::take(&mut self.buf) };
        self.device.release(buf, self.bytes(), self.pool.as_ref());
    }
}

/// Whether the CUDA driver library can be loaded (a missing one would otherwise panic).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda by its candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The number of CUDA devices, 0 when there is no driver.
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    CudaContext::device_count().map(|n| n.max(0) as usize).unwrap_or(0)
}

/// The driver's CUDA version as (major, minor), if a driver is present.
pub fn driver_version() -> Option<(i32, i32)> {
    if !driver_present() {
        return None;
    }
    let mut version = 0;
    // SAFETY: the driver library is present; `version` is valid for writes.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    (status == cudarc::driver::sys::CUresult::CUDA_SUCCESS).then_some((version / 1000, (version % 1000) / 10))
}

/// The CUDA device with this ordinal, created on first use and shared afterwards.
pub fn cuda_device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    let mut devices = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dev) = devices.get(&ordinal) {
        return Ok(dev.clone());
    }
    if !driver_present() {
        return Err(Error::CudaUnavailable("the CUDA driver library (libcuda) is not installed".into()));
    }
    let count = device_count();
    if ordinal >= count {
        return Err(Error::CudaUnavailable(format!("cuda:{ordinal} requested but {count} CUDA device(s) found")));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| Error::CudaUnavailable(format!("cuda:{ordinal}: {e}")))?;
    // One stream per device orders everything, so cudarc's per-buffer events are not needed.
    // SAFETY: nabla never uses a second stream.
    unsafe { ctx.disable_event_tracking() };
    // A stream of its own rather than the legacy default stream, which cannot be captured into
    // a CUDA graph.
    let stream = ctx.new_stream().map_err(|e| Error::CudaUnavailable(format!("cuda:{ordinal}: {e}")))?;
    let arch = ctx.compute_capability().map_err(|e| Error::CudaUnavailable(format!("cuda:{ordinal}: {e}")))?;
    keep_pool_memory(&ctx);
    let multiprocessors = ctx
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_or(1, |n| n.max(1) as usize);
    let max_shared_per_block = ctx
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_or(48 * 1024, |n| n.max(0) as usize);
    let dev = Arc::new(CudaDevice {
        ordinal,
        stream,
        ctx,
        arch,
        multiprocessors,
        max_shared_per_block,
        modules: Mutex::new(HashMap::new()),
        functions: Mutex::new(HashMap::new()),
        mode: Mutex::default(),
    });
    devices.insert(ordinal, dev.clone());
    Ok(dev)
}

/// Lets the device's stream-ordered memory pool keep freed memory instead of returning it to
/// the driver at every synchronisation, so an op's allocation is a pool hit (a caching
/// allocator, as PyTorch keeps its own). Best effort: a driver that refuses only costs speed.
fn keep_pool_memory(ctx: &Arc<CudaContext>) {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: the context is current on this thread (cudarc bound it when creating it) and both
    // out-pointers are valid; the threshold value lives across the call.
    unsafe {
        if ctx.bind_to_thread().is_err()
            || sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) != sys::CUresult::CUDA_SUCCESS
        {
            return;
        }
        let mut threshold = u64::MAX;
        let _ = sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        );
    }
}

impl CudaDevice {
    /// This device as a [`Device`].
    pub fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    /// Compute capability (major, minor).
    pub fn arch(&self) -> (i32, i32) {
        self.arch
    }

    /// The device's name, as the driver reports it.
    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|e| format!("(unknown: {e})"))
    }

    /// The number of streaming multiprocessors, which sizes grids that must fill the card.
    pub fn multiprocessors(&self) -> usize {
        self.multiprocessors
    }

    /// Total device memory in bytes.
    pub fn total_memory(&self) -> usize {
        self.ctx.total_mem().unwrap_or(0)
    }

    /// Loads a kernel module (if not yet loaded) and says where it came from.
    pub fn load_module(&self, name: &str) -> Result<ModuleOrigin> {
        self.module(name).map(|(_, origin)| origin)
    }

    fn module(&self, name: &str) -> Result<(Arc<CudaModule>, ModuleOrigin)> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = modules.get(name) {
            return Ok(found.clone());
        }
        let driver = driver_version().unwrap_or((0, 0));
        let loaded = kernels::load(&self.ctx, name, self.arch, driver)?;
        modules.insert(name.to_string(), loaded.clone());
        Ok(loaded)
    }

    /// The kernel `kernel` of module `module`, looked up once and cached.
    pub(crate) fn function(&self, op: &'static str, module: &str, kernel: &str) -> Result<CudaFunction> {
        self.function_with_shared(op, module, kernel, 0)
    }

    /// The most shared memory a block of a kernel may use on this device, once the kernel opts
    /// in (bytes; 227 KiB on an H100/H200, 48 KiB where the driver does not say).
    pub fn max_shared_per_block(&self) -> usize {
        self.max_shared_per_block
    }

    /// As [`CudaDevice::function`], for a kernel launched with `dynamic_shared` bytes of
    /// dynamic shared memory: past the default 48 KiB, the kernel's limit is raised when it is
    /// first loaded (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`), as a launch needs.
    pub(crate) fn function_with_shared(
        &self,
        op: &'static str,
        module: &str,
        kernel: &str,
        dynamic_shared: u32,
    ) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap_or_else(|e| e.into_inner()).get(kernel) {
            return Ok(f.clone());
        }
        let (loaded, _) = self.module(module)?;
        let f = loaded.load_function(kernel).map_err(|e| launch_error(op, kernel, e))?;
        if dynamic_shared > 48 * 1024 {
            let attribute = cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            f.set_attribute(attribute, dynamic_shared as i32).map_err(|e| launch_error(op, kernel, e))?;
        }
        self.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(kernel.to_string(), f.clone());
        Ok(f)
    }

    /// An uninitialised buffer of `len` elements. Every kernel that receives one writes all of it.
    pub(crate) fn alloc(self: &Arc<Self>, op: &'static str, dtype: DType, len: usize) -> Result<CudaStorage> {
        // At least one byte, so empty tensors still own a valid allocation.
        let bytes = (len * dtype.size_in_bytes()).max(1);
        if let Some((buf, pool)) = self.graph_buffer(op, bytes)? {
            return Ok(CudaStorage { buf: ManuallyDrop::new(buf), dtype, len, device: self.clone(), pool: Some(pool) });
        }
        // SAFETY: callers fully overwrite the buffer before it is read.
        let buf = unsafe { self.stream.alloc::<u8>(bytes) }.map_err(|e| self.alloc_error(op, bytes, e))?;
        Ok(CudaStorage { buf: ManuallyDrop::new(buf), dtype, len, device: self.clone(), pool: None })
    }

    /// A zero-filled buffer of `len` elements.
    pub(crate) fn alloc_zeros(self: &Arc<Self>, op: &'static str, dtype: DType, len: usize) -> Result<CudaStorage> {
        let mut storage = self.alloc(op, dtype, len)?;
        self.stream.memset_zeros(&mut *storage.buf).map_err(|e| cuda_error(op, e))?;
        Ok(storage)
    }

    /// Copies host bytes holding `len` elements of `dtype` to a new device buffer.
    pub(crate) fn upload(
        self: &Arc<Self>,
        op: &'static str,
        dtype: DType,
        len: usize,
        bytes: &[u8],
    ) -> Result<CudaStorage> {
        self.refuse_host_access(op, "copying host data to the device")?;
        let mut storage = self.alloc(op, dtype, len)?;
        if !bytes.is_empty() {
            let mut view = storage.buf.slice_mut(0..bytes.len());
            self.stream.memcpy_htod(bytes, &mut view).map_err(|e| cuda_error(op, e))?;
        }
        Ok(storage)
    }

    fn alloc_error(&self, op: &'static str, bytes: usize, e: DriverError) -> Error {
        if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            Error::OutOfMemory { op, bytes, device: self.device() }
        } else {
            cuda_error(op, e)
        }
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.refuse_host_access("synchronize", "waiting for the device")?;
        self.stream.synchronize().map_err(|e| cuda_error("synchronize", e))
    }
}

impl CudaStorage {
    /// The buffer's size in bytes (at least 1: empty tensors own one byte).
    fn bytes(&self) -> usize {
        (self.len * self.dtype.size_in_bytes()).max(1)
    }

    /// Copies the whole buffer to the host (waits for queued work).
    pub(crate) fn download(&self, op: &'static str) -> Result<Vec<u8>> {
        self.device.refuse_host_access(op, "copying device data to the host")?;
        let bytes = self.len * self.dtype.size_in_bytes();
        if bytes == 0 {
            return Ok(Vec::new());
        }
        self.device.stream.clone_dtoh(&self.buf.slice(0..bytes)).map_err(|e| cuda_error(op, e))
    }
}

pub(crate) fn cuda_error(op: &'static str, e: DriverError) -> Error {
    Error::Cuda { op, detail: e.to_string() }
}

pub(crate) fn launch_error(op: &'static str, kernel: &str, e: DriverError) -> Error {
    Error::KernelLaunch { op, kernel: kernel.to_string(), detail: e.to_string() }
}

/// A 1-D launch covering `n` elements with a grid-stride loop.
pub(crate) fn elementwise_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ELEMENTWISE_THREADS as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ELEMENTWISE_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Whether the elementwise kernels read `layout` of a `dtype` buffer as Pack8s (eight elements
/// a thread): dense from a 16-byte aligned element (buffers start 256-byte aligned). The
/// kernels check the same rule themselves (`packable` in kernels/nabla.cuh).
pub(crate) fn packable(layout: &Layout, dtype: DType) -> bool {
    layout.is_contiguous() && (layout.offset() * dtype.size_in_bytes()).is_multiple_of(16)
}

/// The grid of an elementwise kernel over `n` elements: a thread per element, or per eight when
/// every operand is [`packable`].
pub(crate) fn packed_config(n: usize, packed: bool) -> LaunchConfig {
    elementwise_config(if packed { n.div_ceil(8) } else { n })
}

/// The kernel-side description of a view of fewer than 2^31 elements for the gathering kernels
/// (`gather_offset` in kernels/nabla.cuh), or `None` when it is larger. Dims of size 1 are
/// dropped and neighbours that step through memory as one dim are merged (a row-major view is
/// one dim), so a kernel divides once per dim that remains.
pub(crate) fn gather_layout(layout: &Layout) -> Option<params::GatherLayout> {
    if layout.numel() >= 1 << 31 {
        return None;
    }
    gather_layout_of(&merged_dims(layout), layout.offset())
}

/// [`gather_layout`] in units of 8 elements, for `cast_gather8_*` in kernels/copy.cu: `Some`
/// when every run of 8 consecutive elements of the view is contiguous and starts 16-byte
/// aligned (its buffer is: the innermost merged dim has stride 1 and a multiple of 8 elements,
/// every other stride and the offset are multiples of 8, and 8 elements are a multiple of 16
/// bytes for every dtype). The kernel then moves pack `p` = elements 8 p .. 8 p + 7.
pub(crate) fn gather_layout_packed(layout: &Layout) -> Option<params::GatherLayout> {
    if layout.numel() >= 1 << 31 {
        return None;
    }
    let mut dims = merged_dims(layout);
    let &(inner, inner_stride) = dims.last()?;
    let outer_aligned = dims[..dims.len() - 1].iter().all(|&(_, stride)| stride.is_multiple_of(8));
    if inner_stride != 1 || !inner.is_multiple_of(8) || !outer_aligned || !layout.offset().is_multiple_of(8) {
        return None;
    }
    let last = dims.len() - 1;
    for (d, dim) in dims.iter_mut().enumerate() {
        *dim = if d == last { (dim.0 / 8, 1) } else { (dim.0, dim.1 / 8) };
    }
    gather_layout_of(&dims, layout.offset() / 8)
}

/// The view's (size, stride) pairs from the outermost dim in, without dims of size 1 and with
/// neighbours that step through memory as one dim merged (a row-major view is one dim).
fn merged_dims(layout: &Layout) -> Vec<(usize, usize)> {
    let mut dims: Vec<(usize, usize)> = Vec::with_capacity(layout.rank());
    for (&size, &stride) in layout.shape().iter().zip(layout.strides()) {
        match dims.last_mut() {
            _ if size == 1 => {}
            Some(outer) if outer.1 == size * stride => *outer = (outer.0 * size, stride),
            _ => dims.push((size, stride)),
        }
    }
    dims
}

fn gather_layout_of(dims: &[(usize, usize)], offset: usize) -> Option<params::GatherLayout> {
    if dims.len() > NABLA_MAX_DIMS {
        return None;
    }
    let mut out = params::GatherLayout { ndim: dims.len() as i64, offset: offset as i64, ..Default::default() };
    for (d, &(size, stride)) in dims.iter().enumerate() {
        out.shape[d] = params::FastDiv::new(size);
        out.strides[d] = stride as i64;
    }
    Some(out)
}

/// The kernel-side description of a view; CUDA kernels take at most NABLA_MAX_DIMS dims.
pub(crate) fn strided_layout(op: &'static str, layout: &Layout) -> Result<StridedLayout> {
    if layout.rank() > NABLA_MAX_DIMS {
        return Err(Error::invalid(
            op,
            format!("CUDA kernels take at most {NABLA_MAX_DIMS} dims, got shape {:?}", layout.shape()),
        ));
    }
    let mut out = StridedLayout {
        ndim: layout.rank() as i64,
        contiguous: layout.is_contiguous() as i64,
        offset: layout.offset() as i64,
        ..Default::default()
    };
    for (d, (&size, &stride)) in layout.shape().iter().zip(layout.strides()).enumerate() {
        out.shape[d] = size as i64;
        out.strides[d] = stride as i64;
    }
    Ok(out)
}
