//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod emulator;
pub mod grad_cases;

use nabla::{DType, Device, Generator, Tensor};
use std::io::Write;

/// The first CUDA device, or `None` after printing a visible skip line. Without a GPU (no CUDA
/// driver at all) the tests run on the CPU emulator of CUDA instead, which executes the kernels'
/// source (see `emulator`); `NABLA_EMULATE_CUDA=0` turns that off, and `NABLA_REQUIRE_EMULATOR=1`
/// (CI) makes an emulator that cannot be built a failure. With `NABLA_REQUIRE_CUDA=1` only a
/// real device counts, and a missing one fails the test.
pub fn cuda_or_skip(test: &str) -> Option<Device> {
    // Under NABLA_REQUIRE_CUDA the emulator is never loaded, so a device found is a real one.
    if nabla::cuda::device_count() > 0 {
        note_emulation(test);
        return Some(Device::Cuda(0));
    }
    if std::env::var("NABLA_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
        panic!("{test}: NABLA_REQUIRE_CUDA=1 but no CUDA device was found");
    }
    let emulate = !std::env::var("NABLA_EMULATE_CUDA").is_ok_and(|v| v == "0");
    if emulate && !nabla::cuda::driver_present() {
        match emulator::install() {
            Ok(()) => {
                let _ = EMULATED.set(true);
                note_emulation(test);
                return Some(Device::Cuda(0));
            }
            Err(reason) if std::env::var("NABLA_REQUIRE_EMULATOR").is_ok_and(|v| v == "1") => {
                panic!("{test}: NABLA_REQUIRE_EMULATOR=1 but the CUDA emulator is unavailable: {reason}")
            }
            Err(reason) => {
                let _ = writeln!(std::io::stderr(), "{test}: the CUDA emulator is unavailable: {reason}");
            }
        }
    }
    // Straight to the stderr handle, which libtest does not capture, so the skip is visible.
    let _ = writeln!(std::io::stderr(), "{test}: skipped: no CUDA device");
    None
}

/// The devices whose ops a comparison test holds to the f64 reference: the fast CPU backend
/// always, and the CUDA device (or its emulator) when [`cuda_or_skip`] finds one.
pub fn devices_under_test(test: &str) -> Vec<Device> {
    std::iter::once(Device::Cpu).chain(cuda_or_skip(test)).collect()
}

/// Whether this process loaded the CUDA emulator.
static EMULATED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn note_emulation(test: &str) {
    if EMULATED.get().is_some_and(|&e| e) {
        let _ = writeln!(std::io::stderr(), "{test}: no GPU: the kernels run on the CPU emulator of CUDA");
    }
}

/// Per-dtype tolerance (absolute, relative) for a GPU result against the f64-computed CPU
/// reference rounded to the same dtype: a few ulp of the dtype's precision.
pub fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-12, 1e-12),
        DType::F32 => (1e-5, 1e-5),
        DType::F16 => (1e-3, 2e-3),
        DType::BF16 => (8e-3, 1.6e-2),
        DType::I64 => (0.0, 0.0),
    }
}

/// Asserts that two tensors have one shape and every element agrees within (atol, rtol);
/// NaNs must match NaNs and infinities must match exactly.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, (atol, rtol): (f64, f64)) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes differ");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtypes differ");
    let g = got.to_vec::<f64>().unwrap();
    let w = want.to_vec::<f64>().unwrap();
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * b.abs();
        assert!(ok, "{what}: element {i} of shape {:?}: got {a}, want {b} (atol {atol}, rtol {rtol})", got.shape());
    }
}

/// Seeded normal values of `dtype` on the CPU.
pub fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape, dtype, &Device::Cpu, &mut Generator::new(seed)).unwrap()
}

/// Seeded uniform values in [low, high) of `dtype` on the CPU.
pub fn uniform(shape: &[usize], low: f64, high: f64, dtype: DType, seed: u64) -> Tensor {
    Tensor::uniform(shape, low, high, dtype, &Device::Cpu, &mut Generator::new(seed)).unwrap()
}

/// The float dtypes every float op is tested in.
pub const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

/// Shapes that are not multiples of any block or tile, plus the edge cases.
pub const SHAPES: &[&[usize]] = &[&[0], &[1], &[7], &[3, 5], &[33, 65], &[2, 3, 257], &[1031], &[4, 0, 3]];

/// Runs the `nabla` binary with `args`: (success, stdout, stderr).
pub fn nabla(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nabla")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A folder of `classes`, each with `per_class` small PNGs whose pattern depends on the class.
pub fn image_folder(dir: &std::path::Path, classes: &[&str], per_class: usize) {
    for (c, class) in classes.iter().enumerate() {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..per_class {
            let data = (0..16 * 12 * 3).map(|p| ((p * (c + 1) * 7 + i * 3) % 256) as u8).collect();
            nabla::io::image::Image { width: 16, height: 12, channels: 3, data }
                .save_png(&dir.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
}

/// Runs the test `name` (its full path, as `module::test`) alone in a child process of this test
/// binary, with `NABLA_TEST_CHILD` and `vars` set, and asserts that it passed: for tests of
/// process-wide settings (read once per process, or set for the whole process) that the tests
/// running beside them must not see. Returns true inside the child, where the caller goes on
/// with the test body; false in the parent, once the child has passed.
pub fn in_child_process(name: &str, vars: &[(&str, &str)]) -> bool {
    if std::env::var_os("NABLA_TEST_CHILD").is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture"])
        .env("NABLA_TEST_CHILD", "1")
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "child run of {name} failed:\n{text}");
    false
}

/// A product of tensors, for tables of cases.
pub type Product = fn(&[Tensor]) -> nabla::Result<Tensor>;

/// Each case's product of `host` tensors moved to `device`, against the f64 reference of the
/// same product on the host, element by element within `dtype`'s tolerance with the absolute
/// part scaled by √depth (a sum of `depth` rounded products). `what` names the shape in failures.
pub fn assert_products_match_reference(
    cases: &[(&str, Product)],
    host: &[Tensor],
    device: &Device,
    dtype: DType,
    depth: usize,
    what: &str,
) {
    let on_device: Vec<Tensor> = host.iter().map(|v| v.to_device(device).unwrap()).collect();
    let (atol, rtol) = tolerance(dtype);
    let scale = (depth as f64).sqrt();
    for (name, product) in cases {
        let want = nabla::cpu::reference(|| product(host)).unwrap().to_vec::<f64>().unwrap();
        let got = product(&on_device).unwrap().to_vec::<f64>().unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (x, y)) in got.iter().zip(&want).enumerate() {
            assert!((x - y).abs() <= atol * scale + rtol * y.abs(), "{name} {dtype} {what} [{i}]: {x} vs {y}");
        }
    }
}
