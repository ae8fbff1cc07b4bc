//! The transformer's building blocks that are not attention: layer normalisation and token
//! embeddings, with PyTorch's parameter names (`weight`, `bias`).

use super::Module;
use crate::{DType, Device, Error, Generator, Result, Tensor};

/// Layer normalisation over the last dimension, as `torch.nn.LayerNorm(dim)`: each position's
/// `dim` features are normalised to mean 0 and variance 1, then scaled by `weight` (γ, ones at
/// first) and shifted by `bias` (β, zeros at first), on the fused kernels of
/// [`Tensor::layer_norm`].
pub struct LayerNorm {
    /// γ, `[dim]`, if the layer is affine.
    pub weight: Option<Tensor>,
    /// β, `[dim]`, if the layer has a bias.
    pub bias: Option<Tensor>,
    /// Added to the variance (PyTorch's 1e-5).
    pub eps: f64,
}

impl LayerNorm {
    /// A layer over `dim` features with γ = 1, β = 0 and eps 1e-5 (`elementwise_affine=True`).
    pub fn new(dim: usize, device: &Device) -> Result<Self> {
        Self::with_options(dim, true, true, 1e-5, device)
    }

    /// A layer with or without γ (`affine`) and β (`bias`), and the given eps (> 0).
    pub fn with_options(dim: usize, affine: bool, bias: bool, eps: f64, device: &Device) -> Result<Self> {
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(Error::invalid("layer_norm", format!("eps must be finite and > 0, got {eps}")));
        }
        let weight = affine.then(|| Tensor::ones(&[dim], DType::F32, device)?.requires_grad_()).transpose()?;
        let bias = bias.then(|| Tensor::zeros(&[dim], DType::F32, device)?.requires_grad_()).transpose()?;
        Ok(LayerNorm { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        out.extend(self.weight.iter().map(|w| ("weight".to_string(), w.clone())));
        out.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        out
    }
}

/// A lookup table of `num` vectors of `dim` features, as `torch.nn.Embedding(num, dim)`:
/// integer ids of any shape become `[..., dim]`; the weight's gradient adds each position's
/// gradient into the row of its id (a scatter-add, so repeated ids accumulate).
pub struct Embedding {
    /// `[num, dim]`, drawn from N(0, std²).
    pub weight: Tensor,
}

impl Embedding {
    /// A table of `num` x `dim` drawn from N(0, 1), PyTorch's default.
    pub fn new(num: usize, dim: usize, device: &Device, rng: &mut Generator) -> Result<Self> {
        Self::with_std(num, dim, 1.0, device, rng)
    }

    /// A table drawn from N(0, std²) (GPT-2 and nanoGPT use 0.02).
    pub fn with_std(num: usize, dim: usize, std: f64, device: &Device, rng: &mut Generator) -> Result<Self> {
        if !(std >= 0.0 && std.is_finite()) {
            return Err(Error::invalid("embedding", format!("std must be finite and >= 0, got {std}")));
        }
        let weight = Tensor::randn(&[num, dim], DType::F32, device, rng)?.mul_scalar(std)?.requires_grad_()?;
        Ok(Embedding { weight })
    }
}

impl Module for Embedding {
    /// `ids` (i64, any shape, each in 0..num) to `[ids.shape, dim]`.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        if ids.dtype() != DType::I64 {
            return Err(Error::invalid("embedding", format!("ids must be i64, got {}", ids.dtype())));
        }
        let dim = self.weight.shape()[1];
        let flat = ids.reshape(&[ids.numel()])?;
        let mut shape = ids.shape().to_vec();
        shape.push(dim);
        self.weight.index_select(0, &flat)?.reshape(&shape)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
}
