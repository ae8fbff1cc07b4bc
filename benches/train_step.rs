//! One training step of the 784-512-512-10 ReLU MLP at batch 64 and 256 with Adam: forward,
//! fused cross-entropy, backward, fused Adam update. The GPU figure synchronises inside the
//! timed closure. Its PyTorch twin is `benches/peer/mlp_step.py`; run both in one device
//! session and record the ratio and the card in docs/benchmarks.md.

use criterion::{Criterion, criterion_group, criterion_main};
use nabla::nn::{Activation, Mlp, Module};
use nabla::optim::{Adam, AdamConfig, Optimizer};
use nabla::{DType, Device, Generator, Tensor};

fn step(c: &mut Criterion) {
    let mut devices = vec![Device::Cpu];
    if nabla::cuda::device_count() > 0 {
        devices.push(Device::Cuda(0));
    }
    for batch in [64, 256] {
        let mut group = c.benchmark_group(format!("mlp_784_512_512_10_adam_batch{batch}"));
        for &device in &devices {
            let mut rng = Generator::new(0);
            let model = Mlp::new(&[784, 512, 512, 10], Activation::Relu, 0.0, &device, &mut rng).unwrap();
            let mut opt = Adam::new(model.parameters(), AdamConfig::adam(1e-3)).unwrap();
            let x = Tensor::rand(&[batch, 784], DType::F32, &device, &mut rng).unwrap();
            let y = Tensor::randint(0, 10, &[batch], &device, &mut rng).unwrap();
            group.bench_function(device.to_string(), |b| {
                b.iter(|| {
                    opt.zero_grad();
                    let loss = model.forward(&x).unwrap().cross_entropy(&y).unwrap();
                    loss.backward().unwrap();
                    opt.step().unwrap();
                    device.synchronize().unwrap();
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = step
}
criterion_main!(benches);
