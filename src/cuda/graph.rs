//! CUDA graphs: a static-shape piece of device work (a training step) captured once from the
//! device's stream and replayed as one launch, so the host's per-kernel launch cost (a few
//! microseconds each, most of a small model's step) is paid once per step instead of once per
//! kernel. The model is PyTorch's `torch.cuda.CUDAGraph` and tinygrad's `TinyJit`.
//!
//! What a capture needs from the rest of the backend, and how it gets it:
//! - **Addresses that stay put.** A replay runs the captured kernels on the captured addresses.
//!   Every buffer allocated during the capture comes from the graph's own pool
//!   ([`GraphPool`], plain `cuMemAlloc`, legal in a relaxed-mode capture, as PyTorch's private
//!   pools) and is never returned to the driver while the graph or a tensor on it lives. A buffer
//!   dropped during the capture goes back to the pool's free list and is handed to a later
//!   allocation of the same size in the same capture: on one stream the graph is a chain, so the
//!   later kernel runs after the last reader of the earlier buffer, in every replay alike.
//! - **Nothing freed under it.** A buffer made before the capture and dropped during it (an old
//!   gradient replaced by a new one) may still be read by the graph, so the graph keeps it until
//!   the graph is dropped.
//! - **No host in the middle.** Copies from or to host memory and synchronisation cannot be
//!   captured: nabla refuses them with an error naming the op (a loss read with `to_scalar`
//!   inside the step, an index check that waits for the device).
//! - **Arguments that change per step.** The optimizers' learning rate and bias corrections are
//!   arguments of their fused kernels. Those launches are *refreshable*: the capture remembers
//!   their graph nodes, and [`CudaGraph::replay_with`] runs the optimizer's ordinary `step()`
//!   once more on the host, where each refreshable launch sets its node's arguments in the
//!   instantiated graph (`cuGraphExecKernelNodeSetParams`) instead of launching. So a schedule
//!   and Adam's step counts advance exactly as in an eager run.

use super::{CudaDevice, cuda_device, cuda_error, launch_error};
use crate::{Device, Error, Result};
use cudarc::driver::sys::{self, CUdeviceptr};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

/// What the device's stream is doing, for the allocator, the copies and the refreshable launches.
#[derive(Default)]
pub(crate) enum Mode {
    /// Work runs as it is queued.
    #[default]
    Eager,
    /// Work is being recorded into a graph.
    Capturing(Capturing),
    /// A graph's refreshable launches are being given new arguments.
    Refreshing(Refreshing),
}

/// The state of a capture in progress.
pub(crate) struct Capturing {
    thread: ThreadId,
    pool: Arc<GraphPool>,
    kept: Vec<CudaSlice<u8>>,
    refreshable: Vec<KernelNode>,
    /// Blocks of older graphs' pools that were let go during this capture.
    orphans: Vec<CUdeviceptr>,
}

/// The state of a refresh: the instantiated graph and the next refreshable node.
pub(crate) struct Refreshing {
    thread: ThreadId,
    exec: sys::CUgraphExec,
    nodes: Vec<KernelNode>,
    next: usize,
}

// SAFETY: the graph handles are only used while the device's mode lock is held, by one thread.
unsafe impl Send for Refreshing {}

/// A refreshable kernel's node in a captured graph and the function it runs.
#[derive(Clone, Copy)]
struct KernelNode {
    node: sys::CUgraphNode,
    function: sys::CUfunction,
}

// SAFETY: node and function handles are plain identifiers, used under the device's mode lock.
unsafe impl Send for KernelNode {}

/// The device memory of the buffers allocated while a graph was captured.
pub(crate) struct GraphPool {
    device: Arc<CudaDevice>,
    stream: Arc<CudaStream>,
    blocks: Mutex<Vec<CUdeviceptr>>,
    free: Mutex<HashMap<usize, Vec<CUdeviceptr>>>,
}

impl GraphPool {
    fn new(device: Arc<CudaDevice>) -> Self {
        GraphPool { stream: device.stream.clone(), device, blocks: Mutex::default(), free: Mutex::default() }
    }

    /// A buffer of `bytes` bytes: one given back earlier in this capture, else a new one.
    pub(crate) fn take(&self, bytes: usize) -> std::result::Result<CudaSlice<u8>, cudarc::driver::DriverError> {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&bytes).and_then(Vec::pop);
        let ptr = match reused {
            Some(ptr) => ptr,
            None => {
                // SAFETY: a plain allocation, freed in Drop once neither the graph nor any tensor
                // holds the pool.
                let ptr = unsafe { cudarc::driver::result::malloc_sync(bytes) }?;
                self.blocks.lock().unwrap_or_else(|e| e.into_inner()).push(ptr);
                ptr
            }
        };
        // SAFETY: `ptr` is a live allocation of at least `bytes` bytes owned by this pool; the
        // slice is leaked, never freed by cudarc (CudaStorage's Drop).
        Ok(unsafe { self.stream.upgrade_device_ptr(ptr, bytes) })
    }

    /// Makes a buffer of `bytes` bytes, dropped during the capture, available to later allocations.
    pub(crate) fn give_back(&self, ptr: CUdeviceptr, bytes: usize) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).entry(bytes).or_default().push(ptr);
    }
}

impl Drop for GraphPool {
    fn drop(&mut self) {
        let blocks = std::mem::take(self.blocks.get_mut().unwrap_or_else(|e| e.into_inner()));
        if let Mode::Capturing(capture) = &mut *self.device.mode() {
            // The stream is capturing another graph and cannot wait now: that capture frees
            // these blocks when it ends.
            capture.orphans.extend(blocks);
            return;
        }
        free_blocks(&self.stream, blocks);
    }
}

/// Frees blocks of a graph pool that neither a graph nor a tensor uses any more, once the
/// stream's queued work (the last replay) has finished.
fn free_blocks(stream: &CudaStream, blocks: Vec<CUdeviceptr>) {
    if blocks.is_empty() {
        return;
    }
    let _ = stream.synchronize();
    for ptr in blocks {
        // SAFETY: allocated by `GraphPool::take`; nothing holds its pool any more.
        let _ = unsafe { cudarc::driver::result::free_sync(ptr) };
    }
}

impl Mode {
    /// An error for `op` when another thread than the one capturing or refreshing a graph uses
    /// the device: its work would join the graph (one stream per device orders everything).
    fn check_thread(&self, op: &'static str) -> Result<()> {
        let owner = match self {
            Mode::Eager => return Ok(()),
            Mode::Capturing(c) => c.thread,
            Mode::Refreshing(r) => r.thread,
        };
        if owner == std::thread::current().id() {
            return Ok(());
        }
        Err(Error::invalid(
            op,
            "the device is capturing or refreshing a CUDA graph on another thread; wait for it to end",
        ))
    }
}

impl CudaDevice {
    /// The mode of the device's stream, locked.
    pub(crate) fn mode(&self) -> std::sync::MutexGuard<'_, Mode> {
        self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of `bytes` bytes from the capture's pool, or `None` outside a capture. During a
    /// refresh no buffer may be made at all: that is an error naming `op`.
    pub(crate) fn graph_buffer(
        &self,
        op: &'static str,
        bytes: usize,
    ) -> Result<Option<(CudaSlice<u8>, Arc<GraphPool>)>> {
        let mode = self.mode();
        mode.check_thread(op)?;
        match &*mode {
            Mode::Eager => Ok(None),
            Mode::Capturing(c) => {
                let buf = c.pool.take(bytes).map_err(|e| cuda_error(op, e))?;
                Ok(Some((buf, c.pool.clone())))
            }
            Mode::Refreshing(_) => Err(Error::invalid(
                op,
                "a CUDA graph's refresh may only run the optimizer steps that were captured (this op allocates)",
            )),
        }
    }

    /// An error for `op` if the stream is capturing: host copies and synchronisation cannot be
    /// part of a graph.
    pub(crate) fn refuse_host_access(&self, op: &'static str, what: &str) -> Result<()> {
        let mode = self.mode();
        mode.check_thread(op)?;
        match &*mode {
            Mode::Eager => Ok(()),
            _ => Err(Error::invalid(
                op,
                format!(
                    "{what} while a CUDA graph is being captured or refreshed; \
                     move it out of the captured step (read results after `replay`)"
                ),
            )),
        }
    }

    /// What happens to the memory of a dropped buffer: `pool` is the graph pool it came from.
    pub(crate) fn release(&self, buf: CudaSlice<u8>, bytes: usize, pool: Option<&Arc<GraphPool>>) {
        let mut mode = self.mode();
        match (pool, &mut *mode) {
            (Some(pool), Mode::Capturing(c)) if Arc::ptr_eq(pool, &c.pool) => pool.give_back(buf.leak(), bytes),
            // The pool frees it with the graph.
            (Some(_), _) => {
                buf.leak();
            }
            // Made before the capture: the graph may read it, so it lives as long as the graph.
            (None, Mode::Capturing(c)) => c.kept.push(buf),
            (None, _) => drop(buf),
        }
    }
}

/// A captured, instantiated CUDA graph and everything its replays read.
pub struct CudaGraph {
    // Fields drop in order: the graph first, then what it read.
    graph: cudarc::driver::CudaGraph,
    refreshable: Vec<KernelNode>,
    device: Arc<CudaDevice>,
    _kept: Vec<CudaSlice<u8>>,
    _pool: Arc<GraphPool>,
}

impl CudaGraph {
    /// Captures the device work `work` queues on `device` (a CUDA device) as a graph, without
    /// running it, and returns the graph with `work`'s result. The result's tensors live on
    /// the graph's memory: each replay recomputes them in place, as PyTorch's static outputs.
    /// `work`'s host side does run (an optimizer's step count advances once), so the step it
    /// captured runs with `replay()`, and later steps with `replay_with(|| optimizer.step())`.
    ///
    /// `work` must have static shapes and must not touch the host: no uploads of host data (copy
    /// inputs into tensors made before the capture, outside it), no reads of results, no ops
    /// that wait for the device. Such an op fails with an error naming it, and so does the
    /// capture. Run the work once eagerly first, so that lazily made state (an optimizer's
    /// moments) exists before the capture. Other threads must not use the device meanwhile: ops
    /// that allocate or touch the host fail there with an error until the capture ends.
    pub fn capture<T>(device: &Device, work: impl FnOnce() -> Result<T>) -> Result<(CudaGraph, T)> {
        let Device::Cuda(ordinal) = *device else {
            return Err(Error::invalid("capture", format!("CUDA graphs need a CUDA device, got {device}")));
        };
        let dev = cuda_device(ordinal)?;
        {
            let mut mode = dev.mode();
            if !matches!(*mode, Mode::Eager) {
                return Err(Error::invalid("capture", format!("{device} is already capturing or refreshing a graph")));
            }
            dev.stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
                .map_err(|e| cuda_error("capture", e))?;
            let pool = Arc::new(GraphPool::new(dev.clone()));
            let thread = std::thread::current().id();
            *mode = Mode::Capturing(Capturing {
                thread,
                pool,
                kept: Vec::new(),
                refreshable: Vec::new(),
                orphans: Vec::new(),
            });
        }
        let result = work();
        let Mode::Capturing(state) = std::mem::take(&mut *dev.mode()) else {
            unreachable!("only this function leaves the capturing mode")
        };
        let graph = dev.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        free_blocks(&dev.stream, state.orphans);
        let value = result?;
        let graph = graph
            .map_err(|e| {
                Error::invalid(
                    "capture",
                    format!("the driver refused the captured work ({e}); an op in it reads the host"),
                )
            })?
            .ok_or_else(|| Error::invalid("capture", "the driver returned no graph"))?;
        let graph =
            CudaGraph { graph, refreshable: state.refreshable, device: dev, _kept: state.kept, _pool: state.pool };
        Ok((graph, value))
    }

    /// Runs the graph once more with the arguments of its last capture or refresh.
    pub fn replay(&self) -> Result<()> {
        self.graph.launch().map_err(|e| cuda_error("replay", e))
    }

    /// Runs `refresh` (the optimizer's `step()` that was captured, after any learning-rate
    /// change), whose refreshable launches set new arguments on the graph's nodes instead of
    /// launching, then runs the graph. `refresh` must relaunch exactly the refreshable kernels
    /// of the capture, in order, on the same tensors, and nothing else.
    pub fn replay_with(&self, refresh: impl FnOnce() -> Result<()>) -> Result<()> {
        {
            let mut mode = self.device.mode();
            if !matches!(*mode, Mode::Eager) {
                return Err(Error::invalid("replay", "the device is capturing or refreshing another graph"));
            }
            *mode = Mode::Refreshing(Refreshing {
                thread: std::thread::current().id(),
                exec: self.graph.cu_graph_exec(),
                nodes: self.refreshable.clone(),
                next: 0,
            });
        }
        let result = refresh();
        let Mode::Refreshing(state) = std::mem::take(&mut *self.device.mode()) else {
            unreachable!("only this function leaves the refreshing mode")
        };
        result?;
        if state.next != state.nodes.len() {
            return Err(Error::invalid(
                "replay",
                format!(
                    "the refresh relaunched {} of the {} refreshable kernels captured",
                    state.next,
                    state.nodes.len()
                ),
            ));
        }
        self.replay()
    }

    /// How many launches of the capture take new arguments in [`CudaGraph::replay_with`].
    pub fn refreshable_launches(&self) -> usize {
        self.refreshable.len()
    }
}

/// Launches `f` (kernel `kernel` of op `op`) with two by-value arguments, as a refreshable
/// launch: run at once outside graphs, remembered by a capture, and turned into new arguments
/// for its node during a refresh (see the module's header).
pub(crate) fn launch_refreshable<A: DeviceRepr, B: DeviceRepr>(
    dev: &CudaDevice,
    op: &'static str,
    kernel: &str,
    f: &CudaFunction,
    cfg: LaunchConfig,
    (a, b): (&A, &B),
) -> Result<()> {
    let mut mode = dev.mode();
    mode.check_thread(op)?;
    if let Mode::Refreshing(state) = &mut *mode {
        let Some(&KernelNode { node, function }) = state.nodes.get(state.next) else {
            return Err(Error::invalid(op, format!("the refresh launches {kernel}, which the capture did not")));
        };
        if function != f.cu_function() {
            return Err(Error::invalid(
                op,
                format!("the refresh launches {kernel} where the capture launched another kernel"),
            ));
        }
        state.next += 1;
        let mut args = [a as *const A as *mut c_void, b as *const B as *mut c_void];
        let params = sys::CUDA_KERNEL_NODE_PARAMS_v2 {
            func: function,
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            kernelParams: args.as_mut_ptr(),
            extra: std::ptr::null_mut(),
            kern: std::ptr::null_mut(),
            ctx: std::ptr::null_mut(),
        };
        // SAFETY: `node` is a kernel node of `exec` running `function`; the driver copies the
        // argument values that `args` points to before returning.
        let status = unsafe { sys::cuGraphExecKernelNodeSetParams_v2(state.exec, node, &params) };
        return status.result().map_err(|e| launch_error(op, kernel, e));
    }
    let mut launch = dev.stream.launch_builder(f);
    launch.arg(a).arg(b);
    // SAFETY: the caller vouches for the kernel's arguments, as for any launch.
    unsafe { launch.launch(cfg) }.map_err(|e| launch_error(op, kernel, e))?;
    if let Mode::Capturing(state) = &mut *mode {
        let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        let mut nodes: *const sys::CUgraphNode = std::ptr::null();
        let mut count = 0usize;
        // SAFETY: every out-pointer is valid; the optional ones are null.
        let info = unsafe {
            sys::cuStreamGetCaptureInfo_v3(
                dev.stream.cu_stream(),
                &mut status,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut nodes,
                std::ptr::null_mut(),
                &mut count,
            )
        };
        info.result().map_err(|e| launch_error(op, kernel, e))?;
        if count != 1 || nodes.is_null() {
            return Err(Error::invalid(op, format!("the capture did not record {kernel} as one node")));
        }
        // SAFETY: the driver returned `count` = 1 node handles at `nodes`.
        let node = unsafe { *nodes };
        state.refreshable.push(KernelNode { node, function: f.cu_function() });
    }
    Ok(())
}
