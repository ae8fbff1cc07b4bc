//! The CPU speed table of docs/benchmarks.md in one run: each row's median wall time on the CPU
//! device, printed as `row<TAB>milliseconds`. Its PyTorch twin, `benches/peer/cpu_table.py`,
//! prints the same rows; run both with the same thread count (NABLA_NUM_THREADS and
//! `--threads`), interleaved, on an otherwise idle machine. The criterion benches (`ops`,
//! `train_step`, `conv`) time the same work with confidence intervals.
//!
//!     cargo run --release --example cpu_table [-- ROW_FILTER]

use nabla::nn::{Activation, ConvNet, Gpt, GptConfig, Mlp, Module};
use nabla::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use nabla::train::text::next_token_loss;
use nabla::{Conv2dOptions, DType, Device, Generator, Tensor};
use std::time::Instant;

/// Tensors on cache lines, as `nabla train` has them.
#[global_allocator]
static ALLOCATOR: nabla::cpu::CacheAligned = nabla::cpu::CacheAligned;

/// Median milliseconds of `runs` calls after `warmup` untimed ones.
fn median_ms(warmup: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    (0..warmup).for_each(|_| f());
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() -> nabla::Result<()> {
    // As `nabla train` does: every op starts its parallel loops from inside the pool.
    nabla::cpu::in_pool(table)
}

fn table() -> nabla::Result<()> {
    let filter = std::env::args().nth(1).unwrap_or_default();
    // As `nabla train` does: freed buffers stay in the process for the next step.
    nabla::cpu::keep_freed_memory();
    let cpu = Device::Cpu;
    let mut rng = Generator::new(0);
    println!("# nabla {} on the CPU, {} threads", env!("CARGO_PKG_VERSION"), nabla::num_threads());
    let wants = |name: &str| name.contains(&filter);
    let row = |name: &str, warmup: usize, runs: usize, f: &mut dyn FnMut()| {
        println!("{name}\t{:.3}", median_ms(warmup, runs, f));
    };

    for batch in [64, 256].into_iter().filter(|b| wants(&format!("mlp_adam_step_batch{b}"))) {
        let model = Mlp::new(&[784, 512, 512, 10], Activation::Relu, 0.0, &cpu, &mut rng)?;
        let mut opt = Adam::new(model.parameters(), AdamConfig::adam(1e-3))?;
        let x = Tensor::rand(&[batch, 784], DType::F32, &cpu, &mut rng)?;
        let y = Tensor::randint(0, 10, &[batch], &cpu, &mut rng)?;
        row(&format!("mlp_adam_step_batch{batch}"), 5, 30, &mut || {
            opt.zero_grad();
            model.forward(&x).unwrap().cross_entropy(&y).unwrap().backward().unwrap();
            opt.step().unwrap();
        });
    }
    for batch in [64, 256].into_iter().filter(|b| wants(&format!("lenet5_sgd_step_batch{b}"))) {
        let model = ConvNet::lenet5(1, 28, 10, &cpu, &mut rng)?;
        let mut opt = Sgd::new(model.parameters(), SgdConfig { momentum: 0.9, ..SgdConfig::new(0.01) })?;
        let x = Tensor::rand(&[batch, 1, 28, 28], DType::F32, &cpu, &mut rng)?;
        let y = Tensor::randint(0, 10, &[batch], &cpu, &mut rng)?;
        row(&format!("lenet5_sgd_step_batch{batch}"), 3, 15, &mut || {
            opt.zero_grad();
            model.forward(&x).unwrap().cross_entropy(&y).unwrap().backward().unwrap();
            opt.step().unwrap();
        });
    }
    if wants("char_gpt_adamw_step") {
        // `--preset cpu`'s model (4 layers, 4 heads, width 128, context 64, batch 12) on random
        // tokens of the plays' 76-character vocabulary.
        let config = GptConfig { vocab: 76, context: 64, layers: 4, heads: 4, width: 128, dropout: 0.0 };
        let model = Gpt::new(config, &cpu, &mut rng)?;
        let mut opt = Adam::new(model.parameters(), AdamConfig::adamw(1e-3))?;
        let x = Tensor::randint(0, 76, &[12, 64], &cpu, &mut rng)?;
        let y = Tensor::randint(0, 76, &[12, 64], &cpu, &mut rng)?;
        row("char_gpt_adamw_step", 5, 40, &mut || {
            opt.zero_grad();
            next_token_loss(&model, &x, &y).unwrap().backward().unwrap();
            opt.step().unwrap();
        });
    }
    if wants("matmul_f32_1024") {
        let a = Tensor::randn(&[1024, 1024], DType::F32, &cpu, &mut rng)?;
        let b = Tensor::randn(&[1024, 1024], DType::F32, &cpu, &mut rng)?;
        row("matmul_f32_1024", 2, 11, &mut || drop(a.matmul(&b).unwrap()));
    }
    if wants("add_f32_4M") || wants("sum_f32_4M") {
        let n = 1 << 22;
        let (a, b) =
            (Tensor::randn(&[n], DType::F32, &cpu, &mut rng)?, Tensor::randn(&[n], DType::F32, &cpu, &mut rng)?);
        if wants("add_f32_4M") {
            row("add_f32_4M", 3, 21, &mut || drop(a.add(&b).unwrap()));
        }
        if wants("sum_f32_4M") {
            row("sum_f32_4M", 3, 21, &mut || drop(a.sum_all().unwrap()));
        }
    }
    if wants("softmax_f32_256x4096") {
        let x = Tensor::randn(&[256, 4096], DType::F32, &cpu, &mut rng)?;
        row("softmax_f32_256x4096", 3, 21, &mut || drop(x.softmax(-1).unwrap()));
    }
    if !wants("conv2d_fwd_16x64x56x56_k3") && !wants("conv2d_fwd_bwd_16x64x56x56_k3") {
        return Ok(());
    }
    let x = Tensor::randn(&[16, 64, 56, 56], DType::F32, &cpu, &mut rng)?;
    let w = Tensor::randn(&[64, 64, 3, 3], DType::F32, &cpu, &mut rng)?;
    let same = Conv2dOptions { padding: (1, 1), ..Conv2dOptions::default() };
    if wants("conv2d_fwd_16x64x56x56_k3") {
        row("conv2d_fwd_16x64x56x56_k3", 1, 5, &mut || drop(x.conv2d(&w, None, same).unwrap()));
    }
    let (xl, wl) = (x.requires_grad_()?, w.requires_grad_()?);
    if wants("conv2d_fwd_bwd_16x64x56x56_k3") {
        row("conv2d_fwd_bwd_16x64x56x56_k3", 1, 5, &mut || {
            xl.zero_grad();
            wl.zero_grad();
            xl.conv2d(&wl, None, same).unwrap().sum_all().unwrap().backward().unwrap();
        });
    }
    Ok(())
}
