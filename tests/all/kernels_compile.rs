//! Every kernel module compiles with NVRTC for sm_80 and sm_90, and every kernel name the host
//! side can launch is an entry point of its module. Needs only libnvrtc, no GPU: without it the
//! test prints a visible skip, or fails when NABLA_REQUIRE_NVRTC=1 (as CI sets).

use nabla::cuda::{kernels, nvrtc};
use std::collections::{BTreeSet, HashMap};
use std::io::Write;

/// The system's NVRTC (callers first ask `nvrtc_or_skip`).
fn system_nvrtc() -> &'static nvrtc::Nvrtc {
    nvrtc::Nvrtc::system().expect("checked by nvrtc_or_skip")
}

fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc::available() {
        return true;
    }
    if std::env::var("NABLA_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
        panic!("{test}: NABLA_REQUIRE_NVRTC=1 but libnvrtc cannot be loaded (is it on LD_LIBRARY_PATH?)");
    }
    let _ = writeln!(std::io::stderr(), "{test}: skipped: libnvrtc not found");
    false
}

/// `.entry` names in a PTX text.
fn ptx_entries(ptx: &[u8]) -> BTreeSet<String> {
    let text = String::from_utf8_lossy(ptx);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(".visible .entry ").or_else(|| l.trim().strip_prefix(".entry ")))
        .map(|rest| rest.split('(').next().unwrap().trim().to_string())
        .collect()
}

#[test]
fn every_kernel_module_compiles_for_sm80_and_sm90_and_exports_every_launched_kernel() {
    if !nvrtc_or_skip("kernels_compile") {
        return;
    }
    let jobs: Vec<(&kernels::EmbeddedModule, &str)> = kernels::MODULES
        .iter()
        .flat_map(|m| ["compute_80", "sm_80", "sm_90"].into_iter().map(move |a| (m, a)))
        .collect();
    // Two workers: NVRTC is single-threaded per program.
    let results: Vec<(String, String, Result<Vec<u8>, String>)> = std::thread::scope(|s| {
        let halves: Vec<_> = (0..2)
            .map(|w| {
                let mine: Vec<_> = jobs.iter().skip(w).step_by(2).copied().collect();
                s.spawn(move || {
                    mine.into_iter()
                        .map(|(m, arch)| {
                            (
                                m.name.to_string(),
                                arch.to_string(),
                                system_nvrtc().compile(
                                    &format!("{}.cu", m.name),
                                    m.source,
                                    kernels::HEADERS,
                                    arch,
                                    &[],
                                ),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut entries: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (module, arch, result) in results {
        let image = result.unwrap_or_else(|log| panic!("{module} failed for {arch}:\n{log}"));
        assert!(!image.is_empty(), "{module} for {arch}: empty image");
        if arch.starts_with("sm_") {
            assert_eq!(&image[..4], b"\x7fELF", "{module} for {arch}: a CUBIN is an ELF file");
        } else {
            entries.insert(module, ptx_entries(&image));
        }
    }
    let launchable = nabla::ops::launchable_kernels();
    assert!(launchable.len() > 250, "the registry lists every (op, dtype) kernel");
    for (module, kernel) in launchable {
        let found = entries.get(module).unwrap_or_else(|| panic!("module {module} is not in kernels/"));
        assert!(
            found.contains(&kernel),
            "kernel {kernel} is launched by the host but missing from kernels/{module}.cu"
        );
    }
}

#[test]
fn compile_errors_carry_nvrtcs_log() {
    if !nvrtc_or_skip("compile_errors") {
        return;
    }
    let err = system_nvrtc()
        .compile("broken.cu", "extern \"C\" __global__ void k() { undefined_thing(); }", &[], "sm_80", &[])
        .unwrap_err();
    assert!(err.contains("broken.cu") && err.contains("undefined_thing"), "{err}");
}

#[test]
fn cache_key_changes_with_arch_and_nvrtc_version() {
    let module = kernels::module("unary").expect("unary module is embedded");
    let a = kernels::cache_key(module, "sm_90", (13, 0));
    assert_eq!(a, kernels::cache_key(module, "sm_90", (13, 0)));
    assert_ne!(a, kernels::cache_key(module, "sm_89", (13, 0)));
    assert_ne!(a, kernels::cache_key(module, "sm_90", (12, 8)));
    assert_ne!(a, kernels::cache_key(kernels::module("binary").unwrap(), "sm_90", (13, 0)));
}

/// ptxas's report per kernel: (name, stack frame bytes, spill store bytes, spill load bytes).
fn ptxas_report(log: &str) -> Vec<(String, u64, u64, u64)> {
    let mut out = Vec::new();
    let mut name = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            name = rest.split('\'').next().map(str::to_string);
        } else if line.contains("bytes stack frame") {
            let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            if let (Some(kernel), &[stack, stores, loads]) = (name.take(), numbers.as_slice()) {
                out.push((kernel, stack, stores, loads));
            }
        }
    }
    out
}

#[test]
fn gemm_kernels_fit_in_registers_without_spills_or_stack_on_sm90() {
    if !nvrtc_or_skip("gemm registers") {
        return;
    }
    // A spill or a stack frame (a parameter struct copied to local memory) in the GEMM engine's
    // or the tensor-core attention's inner loop costs far more than its arithmetic; f64 is
    // exempt (no speed goal).
    for name in ["matmul", "conv2d", "attention_tc"] {
        let module = kernels::module(name).expect("embedded");
        let (_, log) = system_nvrtc()
            .compile_with_log(&format!("{name}.cu"), module.source, kernels::HEADERS, "sm_90", &["--ptxas-options=-v"])
            .unwrap_or_else(|e| panic!("{e}"));
        let report = ptxas_report(&log);
        assert!(report.len() >= 12, "{name}: ptxas reported {} kernels:\n{log}", report.len());
        for (kernel, stack, stores, loads) in report.into_iter().filter(|r| !r.0.ends_with("_f64")) {
            // The f32 operands of the tensor-core pipeline (the GEMM's TF32 version 3 and 3xTF32
            // version 5; the convolution's TF32 and 3xTF32 version 3) and the convolution's weight
            // gradients over a packed dY (whose loader keeps 64-bit strides) hold 128 registers
            // with a few words in a frame (NVRTC 13.0: at most 40 bytes, 72 of spill loads in the
            // whole kernel): values of a tile's setup and epilogue, stored as a tile starts and
            // read back around its main loop (the sm_90 SASS, `benches/sass_mix.py matmul
            // matmul_v5_kn_f32 HMMA --list`: no LDL or STL in the loop, but for 2 LDL a stage of
            // 475 instructions in the packed 3xTF32 weight gradient). At one block a
            // multiprocessor instead, half as many warps would hide the pipes' latency. The frame
            // is held to 48 bytes, spill loads to 96.
            let f32_conv = kernel.starts_with("conv2d_")
                && (kernel.ends_with("_v3_f32") || kernel.contains("_tf32_v2_") || kernel.contains("_packed_"));
            if kernel.contains("_tf32_v3_") || kernel.contains("_v5_") || f32_conv {
                assert!(
                    stack <= 48 && stores <= 48 && loads <= 96,
                    "{kernel}: a {stack}-byte frame, {stores} bytes of spill stores, {loads} of spill loads"
                );
                continue;
            }
            assert_eq!((stack, stores, loads), (0, 0, 0), "{kernel}: stack frame, spill stores, spill loads in bytes");
        }
    }
}

#[test]
fn an_image_needs_a_driver_at_least_as_new_as_the_nvrtc_that_made_it() {
    // CUBINs: minor-version compatibility within a major.
    assert_eq!(kernels::required_driver("sm_90", (13, 0)), (13, 0));
    assert_eq!(kernels::required_driver("sm_90", (12, 4)), (12, 0));
    // PTX: the driver's JIT must know the PTX version.
    assert_eq!(kernels::required_driver("compute_80", (12, 4)), (12, 4));
    let reason = kernels::too_new_for("sm_90", (13, 0), (12, 4)).expect("a CUDA 13 CUBIN on a 12.4 driver");
    assert!(reason.contains("CUDA 13.0 driver (r580+)") && reason.contains("this one is CUDA 12.4"), "{reason}");
    let reason = kernels::too_new_for("compute_80", (12, 4), (12, 2)).expect("12.4 PTX on a 12.2 driver");
    assert!(reason.contains("PTX from NVRTC 12.4 needs a CUDA 12.4 driver (r550+)"), "{reason}");
    assert_eq!(kernels::too_new_for("compute_80", (12, 4), (12, 4)), None);
    assert_eq!(kernels::too_new_for("sm_80", (12, 4), (12, 1)), None);
    assert_eq!(kernels::too_new_for("compute_80", (13, 0), (13, 0)), None);
    assert_eq!(kernels::driver_branch((12, 7)), Some("r560"));
    assert_eq!(kernels::driver_branch((14, 0)), None);
}

/// Runs in a child process (the driver version is read once per process): the CPU emulator of
/// CUDA claims a CUDA 12.4 driver, and the modules must still load, from the CUDA 12 PTX when
/// the build embedded one (CI sets NABLA_NVRTC_LEGACY), else from the source.
#[test]
fn an_older_driver_gets_the_cuda_12_ptx_and_the_emulator_refuses_newer_ptx() {
    if !crate::common::in_child_process(
        "kernels_compile::an_older_driver_gets_the_cuda_12_ptx_and_the_emulator_refuses_newer_ptx",
        &[("NABLA_EMULATOR_DRIVER_VERSION", "12040")],
    ) {
        return;
    }
    if nabla::cuda::driver_present() {
        let _ = writeln!(std::io::stderr(), "old driver: skipped: a real CUDA driver is present");
        return;
    }
    let Some(_) = crate::common::cuda_or_skip("old driver") else { return };
    assert_eq!(nabla::cuda::driver_version(), Some((12, 4)), "the emulator claims a 12.4 driver");
    let legacy = kernels::MODULES[0].images.iter().find(|i| i.arch.starts_with("compute_") && i.nvrtc.0 == 12);
    if std::env::var("NABLA_REQUIRE_LEGACY_PTX").is_ok_and(|v| v == "1") {
        assert!(legacy.is_some(), "NABLA_REQUIRE_LEGACY_PTX=1 but the build embedded no CUDA 12 PTX");
    }
    let dev = nabla::cuda::cuda_device(0).unwrap();
    let origin = dev.load_module("unary").unwrap();
    match legacy {
        Some(image) => {
            assert_eq!(origin, kernels::ModuleOrigin::BuildPtx(image.arch.to_string(), image.nvrtc));
        }
        None => assert_eq!(origin, kernels::ModuleOrigin::Source),
    }
    // And the emulator, like a 12.4 driver, refuses PTX of ISA 9.0 (CUDA 13) while taking 8.4.
    let ptx = |isa: &str| format!("//\n// test\n.version {isa}\n.target sm_80\n.address_size 64\n");
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let err = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx("9.0"))).unwrap_err();
    assert!(format!("{err:?}").contains("UNSUPPORTED_PTX_VERSION"), "{err:?}");
    assert!(ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx("8.4"))).is_ok());
}
