//! Compiles every `kernels/*.cu` with NVRTC at build time and embeds the images.
//!
//! When libnvrtc can be loaded here (system CUDA, or PyPI's `nvidia-cuda-nvrtc` on
//! `LD_LIBRARY_PATH`), each module is compiled to CUBIN for the architectures in
//! `NABLA_CUDA_ARCHS` (default below; `compute_XY` entries give PTX), and any compile error fails
//! the build with NVRTC's log. Without NVRTC the sources alone are embedded and compiled at
//! first use for the device's exact architecture (see `src/cuda/kernels.rs`).
//! `NABLA_BUILD_NVRTC=0` skips the build-time compile.
//!
//! CUBINs and PTX from NVRTC 13 need a CUDA 13 driver (r580+). For the many machines on 12.x
//! drivers, `NABLA_NVRTC_LEGACY=/path/to/libnvrtc.so.12` (PyPI's `nvidia-cuda-nvrtc-cu12`, say
//! 12.4) adds PTX for `NABLA_LEGACY_ARCHS` (default `compute_80`) compiled by that NVRTC, which
//! any driver at least as new as it can JIT. Every image records the NVRTC version that made it,
//! so the runtime knows which driver it needs.

// The runtime half of the wrapper (the system-NVRTC helpers) is not used at build time.
#[allow(dead_code)]
#[path = "src/cuda/nvrtc.rs"]
mod nvrtc;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// CUBIN targets: Ampere (A100, RTX 30), Ada (RTX 40, L4), Hopper (H100/H200). Blackwell and
/// later get a CUBIN from the runtime NVRTC (cached), or else JIT the PTX below.
/// The trailing `compute_80` is PTX, which GPUs without a CUBIN can JIT.
const DEFAULT_ARCHS: &str = "sm_80,sm_86,sm_89,sm_90,compute_80";

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NABLA_CUDA_ARCHS");
    println!("cargo:rerun-if-env-changed=NABLA_BUILD_NVRTC");
    println!("cargo:rerun-if-env-changed=LD_LIBRARY_PATH");
    println!("cargo:rerun-if-env-changed=NABLA_NVRTC_LEGACY");
    println!("cargo:rerun-if-env-changed=NABLA_LEGACY_ARCHS");

    let mut sources = Vec::new();
    let mut headers = Vec::new();
    for entry in std::fs::read_dir(&kernel_dir).expect("kernels/ is readable") {
        let path = entry.expect("kernels/ entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => sources.push(path),
            Some("h") | Some("cuh") => headers.push(path),
            _ => {}
        }
    }
    sources.sort();
    headers.sort();
    let header_texts: Vec<(String, String)> =
        headers.iter().map(|p| (file_name(p), std::fs::read_to_string(p).expect("header is readable"))).collect();
    let header_refs: Vec<(&str, &str)> = header_texts.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();

    let wanted = std::env::var("NABLA_BUILD_NVRTC").map(|v| v != "0").unwrap_or(true);
    let system = if wanted { nvrtc::Nvrtc::system() } else { None };
    let nvrtc_version = system.and_then(|n| n.version().ok());
    let legacy = match std::env::var_os("NABLA_NVRTC_LEGACY").filter(|_| wanted) {
        Some(path) => {
            let lib = nvrtc::Nvrtc::open(Path::new(&path)).unwrap_or_else(|e| panic!("NABLA_NVRTC_LEGACY: {e}"));
            let version = lib.version().unwrap_or_else(|e| panic!("NABLA_NVRTC_LEGACY: {e}"));
            Some((lib, version))
        }
        None => None,
    };
    let legacy_archs: Vec<String> = std::env::var("NABLA_LEGACY_ARCHS")
        .unwrap_or_else(|_| "compute_80".to_string())
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    let archs: Vec<String> = std::env::var("NABLA_CUDA_ARCHS")
        .unwrap_or_else(|_| DEFAULT_ARCHS.to_string())
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();

    // (module, arch, NVRTC version) -> image file, compiled on all cores.
    let mut images: Vec<BuiltImage> = Vec::new();
    let mut compilers: Vec<(&nvrtc::Nvrtc, (i32, i32), &[String])> = Vec::new();
    if let (Some(lib), Some(version)) = (system, nvrtc_version) {
        compilers.push((lib, version, &archs));
    }
    if let Some((lib, version)) = &legacy {
        compilers.push((lib, *version, &legacy_archs));
    }
    if !compilers.is_empty() {
        type Job<'a> = (&'a PathBuf, &'a String, &'a nvrtc::Nvrtc, (i32, i32));
        let jobs: Vec<Job<'_>> = compilers
            .iter()
            .flat_map(|&(lib, version, archs)| {
                sources.iter().flat_map(move |s| archs.iter().map(move |a| (s, a, lib, version)))
            })
            .collect();
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let results: Vec<Result<BuiltImage, String>> = std::thread::scope(|scope| {
            let chunks: Vec<Vec<Job<'_>>> =
                (0..threads).map(|t| jobs.iter().skip(t).step_by(threads).cloned().collect()).collect();
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let header_refs = &header_refs;
                    let out_dir = &out_dir;
                    scope.spawn(move || {
                        chunk
                            .into_iter()
                            .map(|(src, arch, lib, version)| compile_one(lib, version, src, arch, header_refs, out_dir))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("NVRTC worker thread")).collect()
        });
        for result in results {
            match result {
                Ok(image) => images.push(image),
                Err(log) => panic!("NVRTC failed to compile a kernel:\n{log}"),
            }
        }
        images.sort();
    }

    let mut generated = String::new();
    let version = match nvrtc_version.filter(|_| images.iter().any(|i| Some(i.2) == nvrtc_version)) {
        Some((major, minor)) => format!("Some(({major}, {minor}))"),
        None => "None".to_string(),
    };
    writeln!(generated, "/// NVRTC version that compiled the embedded images, if any.").unwrap();
    writeln!(generated, "pub static BUILD_NVRTC_VERSION: Option<(i32, i32)> = {version};").unwrap();
    writeln!(generated, "/// Kernel headers, resolved by `#include \"name\"`.").unwrap();
    writeln!(generated, "pub static HEADERS: &[(&str, &str)] = &[").unwrap();
    for path in &headers {
        writeln!(generated, "    ({:?}, include_str!({:?})),", file_name(path), path.display().to_string()).unwrap();
    }
    writeln!(generated, "];").unwrap();
    writeln!(generated, "/// Every kernel module: its source and its build-time images.").unwrap();
    writeln!(generated, "pub static MODULES: &[EmbeddedModule] = &[").unwrap();
    for src in &sources {
        let module = module_name(src);
        writeln!(generated, "    EmbeddedModule {{").unwrap();
        writeln!(generated, "        name: {module:?},").unwrap();
        writeln!(generated, "        source: include_str!({:?}),", src.display().to_string()).unwrap();
        writeln!(generated, "        images: &[").unwrap();
        for (_, arch, (major, minor), file) in images.iter().filter(|(m, _, _, _)| *m == module) {
            writeln!(
                generated,
                "            Image {{ arch: {arch:?}, nvrtc: ({major}, {minor}), bytes: include_bytes!({:?}) }},",
                file.display().to_string()
            )
            .unwrap();
        }
        writeln!(generated, "        ],").unwrap();
        writeln!(generated, "    }},").unwrap();
    }
    writeln!(generated, "];").unwrap();
    std::fs::write(out_dir.join("kernels.rs"), generated).expect("OUT_DIR is writable");
}

/// A compiled image: (module, arch, NVRTC version, file).
type BuiltImage = (String, String, (i32, i32), PathBuf);

fn compile_one(
    lib: &nvrtc::Nvrtc,
    version: (i32, i32),
    src: &Path,
    arch: &str,
    headers: &[(&str, &str)],
    out_dir: &Path,
) -> Result<BuiltImage, String> {
    let module = module_name(src);
    let text = std::fs::read_to_string(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let image = lib.compile(&file_name(src), &text, headers, arch, &[])?;
    let file = out_dir.join(format!("{module}.{arch}.nvrtc{}{}.img", version.0, version.1));
    std::fs::write(&file, image).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((module, arch.to_string(), version, file))
}

fn file_name(path: &Path) -> String {
    path.file_name().and_then(|n| n.to_str()).expect("kernel file names are UTF-8").to_string()
}

fn module_name(path: &Path) -> String {
    path.file_stem().and_then(|n| n.to_str()).expect("kernel file names are UTF-8").to_string()
}
