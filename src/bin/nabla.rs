//! The `nabla` command line.
//!
//! - `nabla info`: devices, compute capability, driver and NVRTC versions, and where each
//!   kernel module comes from.
//! - `nabla check [--device auto|cpu|cuda[:N]] [--seed N]`: runs a small network's ops (matmul,
//!   bias add, GELU, softmax, reductions) on the device and on the CPU reference, and prints the
//!   largest difference of each.

use nabla::cuda::{self, kernels};
use nabla::{DType, Device, Generator, Result, Tensor};
use std::process::ExitCode;

const USAGE: &str = "usage: nabla <command>

commands:
  info                       devices, driver and NVRTC versions, kernel module origins
  check [--device D] [--seed N]
                             run ops on D (auto|cpu|cuda|cuda:N, default auto) and on the CPU
                             reference, and print the largest difference of each
  help                       this text";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => info().and_then(|_| check(&[])),
        Some("info") => info(),
        Some("check") => check(&args[1..]),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => {
            Err(nabla::Error::InvalidArgument { op: "nabla", detail: format!("unknown command `{other}`\n{USAGE}") })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info() -> Result<()> {
    println!("nabla {}", env!("CARGO_PKG_VERSION"));
    match kernels::BUILD_NVRTC_VERSION {
        Some((major, minor)) => {
            let archs: Vec<&str> = kernels::MODULES[0].images.iter().map(|(a, _)| *a).collect();
            println!("kernels: built with NVRTC {major}.{minor} for {}", archs.join(", "));
        }
        None => println!("kernels: sources only (no NVRTC at build time); compiled at first use"),
    }
    if cuda::nvrtc::available() {
        match cuda::nvrtc::version() {
            Ok((major, minor)) => println!("runtime NVRTC: {major}.{minor}"),
            Err(e) => println!("runtime NVRTC: present, version unknown ({e})"),
        }
    } else {
        println!("runtime NVRTC: not found");
    }
    match kernels::cache_dir() {
        Some(dir) => println!("kernel cache: {}", dir.display()),
        None => println!("kernel cache: none (set NABLA_KERNEL_CACHE or HOME)"),
    }
    match cuda::driver_version() {
        Some((major, minor)) => println!("CUDA driver: {major}.{minor}"),
        None => println!("CUDA driver: not found"),
    }
    let count = cuda::device_count();
    println!("CUDA devices: {count}");
    for ordinal in 0..count {
        let dev = cuda::cuda_device(ordinal)?;
        let (major, minor) = dev.arch();
        println!(
            "cuda:{ordinal}: {}, compute capability {major}.{minor}, {:.1} GiB",
            dev.name(),
            dev.total_memory() as f64 / (1u64 << 30) as f64
        );
        for module in kernels::MODULES {
            match dev.load_module(module.name) {
                Ok(origin) => println!("  {:<8} {origin}", module.name),
                Err(e) => println!("  {:<8} FAILED: {e}", module.name),
            }
        }
    }
    Ok(())
}

fn check(args: &[String]) -> Result<()> {
    let mut device = Device::cuda_if_available();
    let mut seed = 0u64;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .ok_or_else(|| nabla::Error::InvalidArgument { op: "check", detail: format!("{flag} needs a value") })?;
        match flag.as_str() {
            "--device" => device = value.parse()?,
            "--seed" => {
                seed = value.parse().map_err(|_| nabla::Error::InvalidArgument {
                    op: "check",
                    detail: format!("--seed takes a whole number, got `{value}`"),
                })?
            }
            other => {
                return Err(nabla::Error::InvalidArgument { op: "check", detail: format!("unknown flag `{other}`") });
            }
        }
    }
    println!("check on {device} against the CPU reference (seed {seed}):");
    let mut rng = Generator::new(seed);
    let x = Tensor::randn(&[64, 784], DType::F32, &Device::Cpu, &mut rng)?;
    let w = Tensor::randn(&[784, 512], DType::F32, &Device::Cpu, &mut rng)?.mul_scalar(0.05)?;
    let b = Tensor::randn(&[512], DType::F32, &Device::Cpu, &mut rng)?;
    let forward = |x: &Tensor, w: &Tensor, b: &Tensor| -> Result<Vec<(&'static str, Tensor)>> {
        let h = x.matmul(w)?.add(b)?;
        let a = h.gelu()?;
        Ok(vec![
            ("matmul + bias", h),
            ("gelu", a.clone()),
            ("softmax", a.softmax(-1)?),
            ("sum over rows", a.sum(&[1], false)?),
            ("argmax", a.argmax(-1, false)?),
        ])
    };
    let want = forward(&x, &w, &b)?;
    let got = forward(&x.to_device(&device)?, &w.to_device(&device)?, &b.to_device(&device)?)?;
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        let (g, w) = (g.to_vec::<f64>()?, w.to_vec::<f64>()?);
        let worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!("  {name:<14} {} elements, max |device - cpu| = {worst:.3e}", g.len());
    }
    Ok(())
}
