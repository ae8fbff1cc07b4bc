//! Where each kernel module's code comes from, and the on-disk cache of runtime compiles.
//!
//! For a device of compute capability X.Y a module is loaded from the first of:
//! 1. the build-time CUBIN for `sm_XY`, or for `sm_XW` with W < Y (same major: binary compatible);
//! 2. a CUBIN for `sm_XY` compiled now by the runtime NVRTC, or found in the disk cache, which is
//!    keyed by source hash, arch, NVRTC version and options so a second start is instant;
//! 3. the build-time PTX images (newest NVRTC first), JIT-compiled by the driver;
//! 4. the module's CUDA C source itself, which only a driver that compiles CUDA C accepts: the
//!    CPU emulator of CUDA that the tests load on machines without a GPU (`tests/emulator/`),
//!    so the tests need neither NVRTC nor a compiled image. A real driver rejects it.
//!
//! Every image records the NVRTC that made it, and an image the driver is too old for is skipped
//! with the reason, before the driver is asked: a CUBIN from NVRTC M.m needs a driver of CUDA
//! M.0 or newer (minor-version compatibility), PTX from NVRTC M.m one of CUDA M.m or newer (the
//! driver's JIT must know that PTX version). An image the driver rejects anyway falls through to
//! the next, and the final error lists every reason.

use super::nvrtc;
use crate::{Error, Result};
use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::Ptx;
use std::path::PathBuf;
use std::sync::Arc;

/// One build-time image of a kernel module.
pub struct Image {
    /// `sm_XY` for a CUBIN, `compute_XY` for PTX.
    pub arch: &'static str,
    /// The NVRTC (major, minor) that compiled it.
    pub nvrtc: (i32, i32),
    /// The CUBIN or PTX bytes.
    pub bytes: &'static [u8],
}

/// A kernel module compiled into the binary: its source and the images built for it.
pub struct EmbeddedModule {
    /// The module's name: `kernels/<name>.cu`.
    pub name: &'static str,
    /// The `.cu` source.
    pub source: &'static str,
    /// The build-time images.
    pub images: &'static [Image],
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Options every runtime compile passes to NVRTC (part of the cache key).
const RUNTIME_OPTIONS: &[&str] = &[];

/// Where a loaded module came from, for `nabla info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleOrigin {
    /// A CUBIN compiled at build time for this arch.
    BuildCubin(String),
    /// Compiled by the runtime NVRTC just now, and written to the cache.
    RuntimeNvrtc(String),
    /// Read from the disk cache of an earlier runtime compile.
    DiskCache(String),
    /// Build-time PTX for this virtual arch, from this NVRTC, JIT-compiled by the driver.
    BuildPtx(String, (i32, i32)),
    /// The CUDA C source, compiled by the driver itself (the CPU emulator of CUDA).
    Source,
}

impl std::fmt::Display for ModuleOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleOrigin::BuildCubin(a) => write!(f, "build-time CUBIN {a}"),
            ModuleOrigin::RuntimeNvrtc(a) => write!(f, "runtime NVRTC {a} (now cached)"),
            ModuleOrigin::DiskCache(a) => write!(f, "disk cache {a}"),
            ModuleOrigin::BuildPtx(a, (major, minor)) => {
                write!(f, "build-time PTX {a} from NVRTC {major}.{minor}, driver JIT")
            }
            ModuleOrigin::Source => f.write_str("CUDA C source, compiled by the driver (CPU emulator)"),
        }
    }
}

/// The embedded module called `name`.
pub fn module(name: &str) -> Option<&'static EmbeddedModule> {
    MODULES.iter().find(|m| m.name == name)
}

/// The NVIDIA driver branch that first supports CUDA `major.minor`, for messages.
pub fn driver_branch(cuda: (i32, i32)) -> Option<&'static str> {
    const BRANCHES: &[((i32, i32), &str)] = &[
        ((11, 8), "r520"),
        ((12, 0), "r525"),
        ((12, 1), "r530"),
        ((12, 2), "r535"),
        ((12, 3), "r545"),
        ((12, 4), "r550"),
        ((12, 5), "r555"),
        ((12, 6), "r560"),
        ((12, 8), "r570"),
        ((12, 9), "r575"),
        ((13, 0), "r580"),
    ];
    BRANCHES.iter().rev().find(|(v, _)| *v <= cuda).filter(|(v, _)| v.0 == cuda.0).map(|(_, b)| *b)
}

/// The oldest driver (as a CUDA version) that loads an image of `arch` made by NVRTC `nvrtc`.
pub fn required_driver(arch: &str, nvrtc: (i32, i32)) -> (i32, i32) {
    if arch.starts_with("sm_") { (nvrtc.0, 0) } else { nvrtc }
}

/// Why an image of `arch` from NVRTC `nvrtc` cannot run on a driver of CUDA `driver`, if so.
pub fn too_new_for(arch: &str, nvrtc: (i32, i32), driver: (i32, i32)) -> Option<String> {
    let needs = required_driver(arch, nvrtc);
    (driver < needs).then(|| {
        let kind = if arch.starts_with("sm_") { "CUBIN" } else { "PTX" };
        let branch = driver_branch(needs).map_or(String::new(), |b| format!(" ({b}+)"));
        format!(
            "{arch} {kind} from NVRTC {}.{} needs a CUDA {}.{} driver{branch}, this one is CUDA {}.{}",
            nvrtc.0, nvrtc.1, needs.0, needs.1, driver.0, driver.1
        )
    })
}

/// Loads `name` into `ctx` for a device of compute capability `(major, minor)` whose driver
/// supports CUDA `driver`.
pub(crate) fn load(
    ctx: &Arc<CudaContext>,
    name: &str,
    (major, minor): (i32, i32),
    driver: (i32, i32),
) -> Result<(Arc<CudaModule>, ModuleOrigin)> {
    let module =
        module(name).ok_or_else(|| Error::KernelCompile { module: name.to_string(), log: "no such module".into() })?;
    let mut rejected = Vec::new();

    // 1. Build-time CUBIN, exact arch first, then older minors of the same major.
    for m in (0..=minor).rev() {
        let arch = format!("sm_{major}{m}");
        for image in module.images.iter().filter(|i| i.arch == arch) {
            if let Some(reason) = too_new_for(image.arch, image.nvrtc, driver) {
                rejected.push(reason);
                continue;
            }
            match ctx.load_module(Ptx::from_binary(image.bytes.to_vec())) {
                Ok(loaded) => return Ok((loaded, ModuleOrigin::BuildCubin(arch))),
                Err(e) => rejected.push(format!("{arch}: {e}")),
            }
        }
    }

    // 2. Runtime NVRTC for the exact arch, through the disk cache.
    let arch = format!("sm_{major}{minor}");
    match runtime_cubin(module, &arch, driver) {
        Ok((cubin, origin)) => match ctx.load_module(Ptx::from_binary(cubin)) {
            Ok(loaded) => return Ok((loaded, origin)),
            Err(e) => rejected.push(format!("runtime {arch}: {e}")),
        },
        Err(e) => rejected.push(format!("runtime NVRTC: {e}")),
    }

    // 3. Build-time PTX, from the newest NVRTC the driver can take.
    let mut ptx: Vec<&Image> = module.images.iter().filter(|i| i.arch.starts_with("compute_")).collect();
    ptx.sort_by_key(|image| std::cmp::Reverse(image.nvrtc));
    for image in ptx {
        if let Some(reason) = too_new_for(image.arch, image.nvrtc, driver) {
            rejected.push(reason);
            continue;
        }
        let text = String::from_utf8_lossy(image.bytes).trim_end_matches('\0').to_string();
        match ctx.load_module(Ptx::from_src(text)) {
            Ok(loaded) => return Ok((loaded, ModuleOrigin::BuildPtx(image.arch.to_string(), image.nvrtc))),
            Err(e) => rejected.push(format!("{} PTX from NVRTC {}.{}: {e}", image.arch, image.nvrtc.0, image.nvrtc.1)),
        }
    }

    // 4. The source, for a driver that compiles CUDA C (the emulator). A real driver parses it
    //    as PTX and refuses it, which costs microseconds.
    match ctx.load_module(Ptx::from_src(module.source)) {
        Ok(loaded) => return Ok((loaded, ModuleOrigin::Source)),
        Err(e) => rejected.push(format!("CUDA C source: {e} (only the CPU emulator of CUDA loads source)")),
    }
    Err(Error::KernelCompile {
        module: name.to_string(),
        log: format!(
            "no loadable image for sm_{major}{minor} on a CUDA {}.{} driver: {}",
            driver.0,
            driver.1,
            rejected.join("; ")
        ),
    })
}

/// A CUBIN of `module` for `arch` from the cache, or compiled now and cached.
fn runtime_cubin(module: &EmbeddedModule, arch: &str, driver: (i32, i32)) -> Result<(Vec<u8>, ModuleOrigin)> {
    let fail = |log: String| Error::KernelCompile { module: module.name.into(), log };
    let compiler = nvrtc::Nvrtc::system().ok_or_else(|| fail("libnvrtc is not loadable".into()))?;
    let version = compiler.version().map_err(fail)?;
    if let Some(reason) = too_new_for(arch, version, driver) {
        return Err(fail(reason));
    }
    let path = cache_dir()
        .map(|dir| dir.join(format!("{}-{arch}-{:016x}.cubin", module.name, cache_key(module, arch, version))));
    if let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok())
        && !bytes.is_empty()
    {
        return Ok((bytes, ModuleOrigin::DiskCache(arch.to_string())));
    }
    let cubin = compiler
        .compile(&format!("{}.cu", module.name), module.source, HEADERS, arch, RUNTIME_OPTIONS)
        .map_err(fail)?;
    if let Some(path) = path {
        // The cache is an optimisation: failing to write it only costs the next start time.
        let _ = crate::io::write_atomically(&path, &cubin);
    }
    Ok((cubin, ModuleOrigin::RuntimeNvrtc(arch.to_string())))
}

/// The kernel cache folder: `$NABLA_KERNEL_CACHE`, else `$XDG_CACHE_HOME/nabla/kernels`, else
/// `~/.cache/nabla/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("NABLA_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("nabla").join("kernels"))
}

/// FNV-1a over everything that changes the compiled image.
pub fn cache_key(module: &EmbeddedModule, arch: &str, nvrtc_version: (i32, i32)) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash = (hash ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3); // field separator
    };
    eat(module.source.as_bytes());
    for (name, text) in HEADERS {
        eat(name.as_bytes());
        eat(text.as_bytes());
    }
    eat(arch.as_bytes());
    eat(format!("{}.{}", nvrtc_version.0, nvrtc_version.1).as_bytes());
    for option in RUNTIME_OPTIONS {
        eat(option.as_bytes());
    }
    hash
}
