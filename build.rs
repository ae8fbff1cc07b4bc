//! Compiles every `kernels/*.cu` with NVRTC at build time and embeds the images.
//!
//! When libnvrtc can be loaded here (system CUDA, or PyPI's `nvidia-cuda-nvrtc` on
//! `LD_LIBRARY_PATH`), each module is compiled to CUBIN for the architectures in
//! `NABLA_CUDA_ARCHS` (default below; `compute_XY` entries give PTX), and any compile error fails
//! the build with NVRTC's log. Without NVRTC the sources alone are embedded and compiled at
//! first use for the device's exact architecture (see `src/cuda/kernels.rs`).
//! `NABLA_BUILD_NVRTC=0` skips the build-time compile.

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
    let nvrtc_version = if wanted && nvrtc::available() { nvrtc::version().ok() } else { None };
    let archs: Vec<String> = std::env::var("NABLA_CUDA_ARCHS")
        .unwrap_or_else(|_| DEFAULT_ARCHS.to_string())
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();

    // (module, arch) -> image file, compiled on all cores.
    let mut images: Vec<(String, String, PathBuf)> = Vec::new();
    if nvrtc_version.is_some() {
        let jobs: Vec<(&PathBuf, &String)> = sources.iter().flat_map(|s| archs.iter().map(move |a| (s, a))).collect();
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let results: Vec<Result<(String, String, PathBuf), String>> = std::thread::scope(|scope| {
            let chunks: Vec<Vec<(&PathBuf, &String)>> =
                (0..threads).map(|t| jobs.iter().skip(t).step_by(threads).cloned().collect()).collect();
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let header_refs = &header_refs;
                    let out_dir = &out_dir;
                    scope.spawn(move || {
                        chunk
                            .into_iter()
                            .map(|(src, arch)| compile_one(src, arch, header_refs, out_dir))
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
    let version = match nvrtc_version {
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
        for (m, arch, file) in images.iter().filter(|(m, _, _)| *m == module) {
            let _ = m;
            writeln!(generated, "            ({arch:?}, include_bytes!({:?})),", file.display().to_string()).unwrap();
        }
        writeln!(generated, "        ],").unwrap();
        writeln!(generated, "    }},").unwrap();
    }
    writeln!(generated, "];").unwrap();
    std::fs::write(out_dir.join("kernels.rs"), generated).expect("OUT_DIR is writable");
}

fn compile_one(
    src: &Path,
    arch: &str,
    headers: &[(&str, &str)],
    out_dir: &Path,
) -> Result<(String, String, PathBuf), String> {
    let module = module_name(src);
    let text = std::fs::read_to_string(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let image = nvrtc::compile(&file_name(src), &text, headers, arch, &[])?;
    let file = out_dir.join(format!("{module}.{arch}.img"));
    std::fs::write(&file, image).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((module, arch.to_string(), file))
}

fn file_name(path: &Path) -> String {
    path.file_name().and_then(|n| n.to_str()).expect("kernel file names are UTF-8").to_string()
}

fn module_name(path: &Path) -> String {
    path.file_stem().and_then(|n| n.to_str()).expect("kernel file names are UTF-8").to_string()
}
