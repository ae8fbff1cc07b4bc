//! NVRTC, the CUDA runtime compiler: compile one kernel source to CUBIN or PTX.
//!
//! This file is shared by `build.rs` (which includes it with `#[path]`) and the runtime, so it
//! depends on nothing of the crate: errors are plain strings. libnvrtc is loaded dynamically;
//! [`available`] must say yes before any other call, since cudarc panics when the library is
//! missing.

use cudarc::nvrtc::sys;
use std::ffi::{CStr, CString, c_char};

/// Whether libnvrtc can be loaded on this machine.
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32), String> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both pointers are valid for writes; the library is present (checked by callers).
    check(unsafe { sys::nvrtcVersion(&mut major, &mut minor) }, "nvrtcVersion")?;
    Ok((major, minor))
}

/// What one compilation produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Native code for exactly one architecture (`sm_90`).
    Cubin,
    /// PTX for a virtual architecture (`compute_80`), which the driver JIT-compiles.
    Ptx,
}

/// Compiles `source` (whose `#include "name"` lines resolve to `headers`) for `arch`
/// (`sm_90` gives CUBIN, `compute_80` gives PTX). The error carries NVRTC's full log.
pub fn compile(
    name: &str,
    source: &str,
    headers: &[(&str, &str)],
    arch: &str,
    extra_options: &[&str],
) -> Result<Vec<u8>, String> {
    compile_with_log(name, source, headers, arch, extra_options).map(|(image, _)| image)
}

/// [`compile`], also returning NVRTC's log of a successful compile (with
/// `--ptxas-options=-v`, ptxas's register and spill report per kernel).
pub fn compile_with_log(
    name: &str,
    source: &str,
    headers: &[(&str, &str)],
    arch: &str,
    extra_options: &[&str],
) -> Result<(Vec<u8>, String), String> {
    let output = if arch.starts_with("sm_") { Output::Cubin } else { Output::Ptx };
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

    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer refers to a NUL-terminated string that outlives the program.
    check(
        unsafe {
            sys::nvrtcCreateProgram(
                &mut prog,
                c_source.as_ptr(),
                c_name.as_ptr(),
                body_ptrs.len() as i32,
                body_ptrs.as_ptr(),
                name_ptrs.as_ptr(),
            )
        },
        "nvrtcCreateProgram",
    )?;
    let program = Program(prog);
    // SAFETY: `program` is a live program and the options outlive the call.
    let compiled = unsafe { sys::nvrtcCompileProgram(program.0, option_ptrs.len() as i32, option_ptrs.as_ptr()) };
    if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
        let log = program.log().unwrap_or_else(|e| format!("(no log: {e})"));
        return Err(format!("{name} for {arch} ({}):\n{log}", options.join(" ")));
    }
    let log = program.log().unwrap_or_default();
    Ok((program.image(output)?, log))
}

fn to_cstrings<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<CString>, String> {
    items.map(|s| CString::new(s).map_err(|_| "NVRTC input contains a NUL byte".to_string())).collect()
}

fn check(result: sys::nvrtcResult, what: &str) -> Result<(), String> {
    if result == sys::nvrtcResult::NVRTC_SUCCESS {
        return Ok(());
    }
    // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string.
    let text = unsafe { CStr::from_ptr(sys::nvrtcGetErrorString(result)) };
    Err(format!("{what} failed: {}", text.to_string_lossy()))
}

/// Owns an nvrtcProgram and destroys it on drop.
struct Program(sys::nvrtcProgram);

impl Program {
    fn log(&self) -> Result<String, String> {
        let mut size = 0usize;
        // SAFETY: `self.0` is live; the buffer has the size NVRTC reported.
        check(unsafe { sys::nvrtcGetProgramLogSize(self.0, &mut size) }, "nvrtcGetProgramLogSize")?;
        let mut buf = vec![0u8; size.max(1)];
        check(unsafe { sys::nvrtcGetProgramLog(self.0, buf.as_mut_ptr().cast()) }, "nvrtcGetProgramLog")?;
        Ok(String::from_utf8_lossy(&buf).trim_end_matches('\0').to_string())
    }

    fn image(&self, output: Output) -> Result<Vec<u8>, String> {
        let mut size = 0usize;
        // SAFETY: `self.0` is a successfully compiled program; buffers have the reported sizes.
        unsafe {
            match output {
                Output::Cubin => check(sys::nvrtcGetCUBINSize(self.0, &mut size), "nvrtcGetCUBINSize")?,
                Output::Ptx => check(sys::nvrtcGetPTXSize(self.0, &mut size), "nvrtcGetPTXSize")?,
            }
            let mut buf = vec![0u8; size];
            match output {
                Output::Cubin => check(sys::nvrtcGetCUBIN(self.0, buf.as_mut_ptr().cast()), "nvrtcGetCUBIN")?,
                Output::Ptx => check(sys::nvrtcGetPTX(self.0, buf.as_mut_ptr().cast()), "nvrtcGetPTX")?,
            }
            Ok(buf)
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        unsafe {
            sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}
