//! The neuron model y = f(βᵀx + β0) and Rosenblatt's perceptron.

use super::{Activation, Module};
use crate::{DType, Device, Error, Generator, Result, Tensor};

/// One neuron: y = f(βᵀx + β0) for inputs `[N, d]`, giving `[N]`.
pub struct Neuron {
    /// β, `[d]`.
    pub weight: Tensor,
    /// β0, a one-element `[1]`.
    pub bias: Tensor,
    /// f.
    pub activation: Activation,
}

impl Neuron {
    /// A neuron over `inputs` features with small random weights.
    pub fn new(inputs: usize, activation: Activation, device: &Device, rng: &mut Generator) -> Result<Self> {
        let bound = 1.0 / (inputs.max(1) as f64).sqrt();
        Ok(Neuron {
            weight: Tensor::uniform(&[inputs], -bound, bound, DType::F32, device, rng)?.requires_grad_()?,
            bias: Tensor::zeros(&[1], DType::F32, device)?.requires_grad_()?,
            activation,
        })
    }

    /// βᵀx + β0, before the activation.
    pub fn score(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight)?.add(&self.bias)
    }
}

impl Module for Neuron {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.activation.forward(&self.score(x)?)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".into(), self.weight.clone()), ("bias".into(), self.bias.clone())]
    }
}

/// Rosenblatt's perceptron: predicts 1 where βᵀx + β0 ≥ 0, else 0. Trained by the classic
/// perceptron rule ([`Perceptron::fit_rule`]) or, through its score (`forward`), by gradient
/// descent on a logistic loss.
pub struct Perceptron {
    /// The underlying linear unit.
    pub neuron: Neuron,
}

impl Perceptron {
    /// A perceptron over `inputs` features.
    pub fn new(inputs: usize, device: &Device, rng: &mut Generator) -> Result<Self> {
        Ok(Perceptron { neuron: Neuron::new(inputs, Activation::Identity, device, rng)? })
    }

    /// 0/1 predictions for `[N, d]` inputs, as i64.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        crate::no_grad(|| self.neuron.score(x)?.ge_scalar(0.0)?.to_dtype(DType::I64))
    }

    /// The perceptron rule: for each sample in order, if the prediction ŷ is wrong,
    /// β += lr (y - ŷ) x and β0 += lr (y - ŷ). Repeats for `epochs` passes or until a pass
    /// makes no mistake; returns the mistakes of each pass. Labels are 0/1.
    pub fn fit_rule(&self, x: &Tensor, y: &Tensor, epochs: usize, lr: f64) -> Result<Vec<usize>> {
        let (n, d) = match x.shape() {
            [n, d] if *d == self.neuron.weight.numel() => (*n, *d),
            other => {
                return Err(Error::shape(
                    "perceptron",
                    format!("inputs {other:?} for {} weights", self.neuron.weight.numel()),
                ));
            }
        };
        if y.shape() != [n] {
            return Err(Error::shape("perceptron", format!("labels {:?} for {n} samples", y.shape())));
        }
        let xs = x.to_vec::<f64>()?;
        let ys = y.to_vec::<f64>()?;
        let mut w = self.neuron.weight.to_vec::<f64>()?;
        let mut b = self.neuron.bias.to_vec::<f64>()?[0];
        let mut history = Vec::new();
        for _ in 0..epochs {
            let mut mistakes = 0;
            for i in 0..n {
                let row = &xs[i * d..(i + 1) * d];
                let score: f64 = row.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + b;
                let err = ys[i] - if score >= 0.0 { 1.0 } else { 0.0 };
                if err != 0.0 {
                    mistakes += 1;
                    w.iter_mut().zip(row).for_each(|(wj, xj)| *wj += lr * err * xj);
                    b += lr * err;
                }
            }
            history.push(mistakes);
            if mistakes == 0 {
                break;
            }
        }
        self.neuron.weight.copy_(&Tensor::from_vec(w, &[d], &Device::Cpu)?)?;
        self.neuron.bias.copy_(&Tensor::from_vec(vec![b], &[1], &Device::Cpu)?)?;
        Ok(history)
    }
}

impl Module for Perceptron {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.neuron.score(x)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.neuron.named_parameters()
    }
}
