//! Neural-network building blocks: the [`Module`] trait with PyTorch-style dotted parameter
//! names, layers, activations, initialisers, the neuron, the perceptron and the MLP.

pub mod init;
mod layers;
mod perceptron;

pub use layers::{Activation, Dropout, Init, Linear, Mlp, Sequential};
pub use perceptron::{Neuron, Perceptron};

use crate::{Result, Tensor};

/// A differentiable function with named parameters, in the manner of `torch.nn.Module`.
pub trait Module: Send + Sync {
    /// Applies the module to a batch.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Parameters with their dotted names (`layers.0.weight`), in a stable order.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// The parameters alone, in `named_parameters` order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }

    /// Switches between training (dropout active) and evaluation behaviour.
    fn set_training(&mut self, _training: bool) {}
}

/// `prefix.name` for nested modules, or `name` at the top.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}
