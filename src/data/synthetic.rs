//! Synthetic data sets for tests and demos, drawn from a seeded generator.

use super::Dataset;
use crate::{Device, Generator, Result, Tensor};

/// XOR: `n` points uniform in [-1, 1]², label 1 where the signs of the coordinates differ.
pub fn xor(n: usize, seed: u64, device: &Device) -> Result<Dataset> {
    let mut rng = Generator::new(seed);
    let mut x = Vec::with_capacity(2 * n);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let (a, b) = (2.0 * rng.uniform() - 1.0, 2.0 * rng.uniform() - 1.0);
        x.extend([a as f32, b as f32]);
        y.push(((a > 0.0) != (b > 0.0)) as i64);
    }
    Dataset::new(Tensor::from_vec(x, &[n, 2], device)?, Tensor::from_vec(y, &[n], device)?)
}

/// Two interleaved spirals of `n` points each (classes 0 and 1), with Gaussian noise.
pub fn two_spirals(n: usize, noise: f64, seed: u64, device: &Device) -> Result<Dataset> {
    let mut rng = Generator::new(seed);
    let mut x = Vec::with_capacity(4 * n);
    let mut y = Vec::with_capacity(2 * n);
    for class in 0..2 {
        for i in 0..n {
            let t = 0.25 + 3.0 * std::f64::consts::PI * i as f64 / n as f64;
            let sign = if class == 0 { 1.0 } else { -1.0 };
            let r = t / (3.0 * std::f64::consts::PI);
            x.push((sign * r * t.cos() + noise * rng.normal()) as f32);
            x.push((sign * r * t.sin() + noise * rng.normal()) as f32);
            y.push(class as i64);
        }
    }
    Dataset::new(Tensor::from_vec(x, &[2 * n, 2], device)?, Tensor::from_vec(y, &[2 * n], device)?)
}

/// Linear regression: x ~ N(0, 1)^d, y = x·w + b + noise, with the true (w, b) returned.
pub fn linear_regression(
    n: usize,
    d: usize,
    noise: f64,
    seed: u64,
    device: &Device,
) -> Result<(Dataset, Vec<f64>, f64)> {
    let mut rng = Generator::new(seed);
    let w: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let b = rng.normal();
    let mut x = Vec::with_capacity(n * d);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let row: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        y.push((row.iter().zip(&w).map(|(a, c)| a * c).sum::<f64>() + b + noise * rng.normal()) as f32);
        x.extend(row.iter().map(|&v| v as f32));
    }
    let data = Dataset::new(Tensor::from_vec(x, &[n, d], device)?, Tensor::from_vec(y, &[n, 1], device)?)?;
    Ok((data, w, b))
}
