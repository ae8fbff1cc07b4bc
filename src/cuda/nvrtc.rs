//! NVRTC, the CUDA runtime compiler: compile one kernel source to CUBIN or PTX.
//!
//! Hand-written over `libloading` rather than through cudarc's bindings because one process
//! must be able to hold two NVRTC libraries at once: `build.rs` compiles the CUBINs with the
//! newest NVRTC and, for users whose drivers are older, a PTX image with a CUDA 12.x NVRTC (see
//! [`Nvrtc::open`]). Eleven entry points are all it needs, and every one is checked at load.
//!
//! This file is shared by `build.rs` (which includes it with `#[path]`) and the runtime, so it
//! depends on nothing of the crate: errors are plain strings.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::Path;
use std::sync::OnceLock;

type Program = *mut std::ffi::c_void;
type Status = c_int;
const SUCCESS: Status = 0;

/// The NVRTC entry points nabla calls, resolved from one loaded library.
pub struct Nvrtc {
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status,
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status,
    destroy: unsafe extern "C" fn(*mut Program) -> Status,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    log: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    cubin_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    cubin: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    ptx_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    ptx: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    /// Keeps the library mapped while the function pointers above are in use.
    _library: libloading::Library,
}

/// The names the system's NVRTC goes by, newest first.
const CANDIDATES: &[&str] =
    &["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "nvrtc64_130_0.dll", "nvrtc64_120_0.dll"];

impl Nvrtc {
    /// Loads the NVRTC library at `path` (a file name is looked up by the dynamic loader).
    pub fn open(path: &Path) -> Result<Nvrtc, String> {
        // SAFETY: loading NVRTC runs its initialisers, which have no preconditions.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| format!("{}: {e}", path.display()))?;
        macro_rules! symbol {
            ($name:literal) => {
                // SAFETY: the symbol is NVRTC's C function of this name, whose signature (from
                // nvrtc.h, stable since CUDA 11) is the field's type.
                *unsafe { library.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("{}: no {}: {e}", path.display(), $name))?
            };
        }
        Ok(Nvrtc {
            version: symbol!("nvrtcVersion"),
            error_string: symbol!("nvrtcGetErrorString"),
            create: symbol!("nvrtcCreateProgram"),
            compile: symbol!("nvrtcCompileProgram"),
            destroy: symbol!("nvrtcDestroyProgram"),
            log_size: symbol!("nvrtcGetProgramLogSize"),
            log: symbol!("nvrtcGetProgramLog"),
            cubin_size: symbol!("nvrtcGetCUBINSize"),
            cubin: symbol!("nvrtcGetCUBIN"),
            ptx_size: symbol!("nvrtcGetPTXSize"),
            ptx: symbol!("nvrtcGetPTX"),
            _library: library,
        })
    }

    /// The system's NVRTC, found by the dynamic loader under one of its usual names, or `None`.
    pub fn system() -> Option<&'static Nvrtc> {
        static SYSTEM: OnceLock<Option<Nvrtc>> = OnceLock::new();
        SYSTEM.get_or_init(|| CANDIDATES.iter().find_map(|name| Nvrtc::open(Path::new(name)).ok())).as_ref()
    }

    /// NVRTC's (major, minor) version.
    pub fn version(&self) -> Result<(i32, i32), String> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: both pointers are valid for writes.
        self.check(unsafe { (self.version)(&mut major, &mut minor) }, "nvrtcVersion")?;
        Ok((major, minor))
    }

    fn check(&self, status: Status, what: &str) -> Result<(), String> {
        if status == SUCCESS {
            return Ok(());
        }
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any status.
        let text = unsafe { CStr::from_ptr((self.error_string)(status)) };
        Err(format!("{what} failed: {}", text.to_string_lossy()))
    }

    /// Compiles `source` (whose `#include "name"` lines resolve to `headers`) for `arch`
    /// (`sm_90` gives CUBIN, `compute_80` gives PTX), also returning NVRTC's log (with
    /// `--ptxas-options=-v`, ptxas's register and spill report per kernel). The error carries
    /// NVRTC's full log.
    pub fn compile_with_log(
        &self,
        name: &str,
        source: &str,
        headers: &[(&str, &str)],
        arch: &str,
        extra_options: &[&str],
    ) -> Result<(Vec<u8>, String), String> {
        let cubin = arch.starts_with("sm_");
        let c_source = CString::new(source).map_err(|_| format!("{name}: source contains a NUL byte"))?;
        let c_name = CString::new(name).map_err(|_| format!("{name}: name contains a NUL byte"))?;
        let header_bodies = to_cstrings(headers.iter().map(|h| h.1))?;
        let header_names = to_cstrings(headers.iter().map(|h| h.0))?;
        let body_ptrs: Vec<*const c_char> = header_bodies.iter().map(|s| s.as_ptr()).collect();
        let name_ptrs: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();
        let mut options = vec![format!("--gpu-architecture={arch}"), "--std=c++17".to_string()];
        options.extend(extra_options.iter().map(|o| o.to_string()));
        let c_options = to_cstrings(options.iter().map(String::as_str))?;
        let option_ptrs: Vec<*const c_char> = c_options.iter().map(|s| s.as_ptr()).collect();

        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: every pointer refers to a NUL-terminated string that outlives the program.
        self.check(
            unsafe {
                (self.create)(
                    &mut prog,
                    c_source.as_ptr(),
                    c_name.as_ptr(),
                    body_ptrs.len() as c_int,
                    body_ptrs.as_ptr(),
                    name_ptrs.as_ptr(),
                )
            },
            "nvrtcCreateProgram",
        )?;
        let program = Owned { nvrtc: self, prog };
        // SAFETY: the program is live and the options outlive the call.
        let status = unsafe { (self.compile)(prog, option_ptrs.len() as c_int, option_ptrs.as_ptr()) };
        let log =
            program.read(self.log_size, self.log, "log").map(|b| text(&b)).unwrap_or_else(|e| format!("(no log: {e})"));
        if status != SUCCESS {
            return Err(format!("{name} for {arch} ({}):\n{log}", options.join(" ")));
        }
        let image = if cubin {
            program.read(self.cubin_size, self.cubin, "CUBIN")?
        } else {
            program.read(self.ptx_size, self.ptx, "PTX")?
        };
        Ok((image, log))
    }

    /// [`Nvrtc::compile_with_log`] without the log.
    pub fn compile(
        &self,
        name: &str,
        source: &str,
        headers: &[(&str, &str)],
        arch: &str,
        extra_options: &[&str],
    ) -> Result<Vec<u8>, String> {
        self.compile_with_log(name, source, headers, arch, extra_options).map(|(image, _)| image)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end_matches('\0').to_string()
}

fn to_cstrings<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<CString>, String> {
    items.map(|s| CString::new(s).map_err(|_| "NVRTC input contains a NUL byte".to_string())).collect()
}

/// A live nvrtcProgram, destroyed on drop.
struct Owned<'a> {
    nvrtc: &'a Nvrtc,
    prog: Program,
}

type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> Status;
type ReadFn = unsafe extern "C" fn(Program, *mut c_char) -> Status;

impl Owned<'_> {
    /// One of the program's outputs (log, CUBIN, PTX) through its size and copy functions.
    fn read(&self, size: SizeFn, copy: ReadFn, what: &str) -> Result<Vec<u8>, String> {
        let mut len = 0usize;
        // SAFETY: the program is live; the buffer has the size NVRTC reported.
        self.nvrtc.check(unsafe { size(self.prog, &mut len) }, what)?;
        let mut buf = vec![0u8; len.max(1)];
        self.nvrtc.check(unsafe { copy(self.prog, buf.as_mut_ptr().cast()) }, what)?;
        buf.truncate(len);
        Ok(buf)
    }
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        unsafe {
            (self.nvrtc.destroy)(&mut self.prog);
        }
    }
}

/// Whether the system's NVRTC can be loaded on this machine.
pub fn available() -> bool {
    Nvrtc::system().is_some()
}

/// The system NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32), String> {
    Nvrtc::system().ok_or("libnvrtc is not loadable")?.version()
}
