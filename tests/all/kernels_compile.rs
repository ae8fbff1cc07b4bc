//! Every kernel module compiles with NVRTC for sm_80 and sm_90, and every kernel name the host
//! side can launch is an entry point of its module. Needs only libnvrtc, no GPU: without it the
//! test prints a visible skip, or fails when NABLA_REQUIRE_NVRTC=1 (as CI sets).

use nabla::cuda::{kernels, nvrtc};
use std::collections::{BTreeSet, HashMap};
use std::io::Write;

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
                                nvrtc::compile(&format!("{}.cu", m.name), m.source, kernels::HEADERS, arch, &[]),
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
    let err = nvrtc::compile("broken.cu", "extern \"C\" __global__ void k() { undefined_thing(); }", &[], "sm_80", &[])
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
