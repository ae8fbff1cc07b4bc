//! Learns the two-spirals problem with a small tanh MLP and Adam (the README's example).
//!
//! `cargo run --release --example spirals`

use nabla::nn::{Activation, Mlp, Module};
use nabla::optim::{Adam, AdamConfig, Optimizer};
use nabla::{Device, Generator, data::synthetic};

/// Tensors start on cache lines (see `nabla::cpu::CacheAligned`).
#[global_allocator]
static ALLOCATOR: nabla::cpu::CacheAligned = nabla::cpu::CacheAligned;

fn main() -> nabla::Result<()> {
    let device = Device::cuda_if_available();
    let data = synthetic::two_spirals(200, 0.02, 0, &device)?;
    let model = Mlp::new(&[2, 64, 64, 2], Activation::Tanh, 0.0, &device, &mut Generator::new(0))?;
    let mut opt = Adam::new(model.parameters(), AdamConfig::adam(0.01))?;
    for _ in 0..1500 {
        opt.zero_grad();
        let loss = model.forward(&data.features)?.cross_entropy(&data.targets)?;
        loss.backward()?;
        opt.step()?;
    }
    let accuracy = nabla::metrics::accuracy(&model.forward(&data.features)?, &data.targets)?;
    println!("spirals on {device}: {:.1}%", 100.0 * accuracy);
    Ok(())
}
