//! Neural-network building blocks: the [`Module`] trait with PyTorch-style dotted parameter
//! names, layers, activations, initialisers, the neuron, the perceptron and the MLP.

mod conv;
mod gpt;
pub mod init;
mod layers;
mod models;
mod perceptron;
mod transformer;
mod vit;

pub use conv::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, BatchNormOptions, Conv2d, Flatten, MaxPool2d, NUM_BATCHES_TRACKED,
    batch_norm2d, batch_stats,
};
pub use gpt::{Block, BlockConfig, FeedForward, Gpt, GptCache, GptConfig, KvCache, MultiheadAttention};
pub use layers::{Activation, Dropout, Init, Linear, Mlp, Sequential};
pub use models::{BasicBlock, ConvNet, ResNet};
pub use perceptron::{Neuron, Perceptron};
pub use transformer::{Embedding, LayerNorm};
pub use vit::{Vit, VitConfig};

use crate::{Result, Tensor};

/// A differentiable function with named parameters, in the manner of `torch.nn.Module`.
pub trait Module: Send + Sync {
    /// Applies the module to a batch.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// ReLU of the module's output. A layer whose kernels can clamp its output as they write it
    /// (Linear, Conv2d) overrides this to do so in one pass; [`Sequential`] calls it wherever a ReLU
    /// module follows.
    fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x)?.relu()
    }

    /// Parameters with their dotted names (`layers.0.weight`), in a stable order.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// The parameters alone, in `named_parameters` order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }

    /// State that is saved but not trained (batch-norm running statistics), dotted names.
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Switches between training (dropout active) and evaluation behaviour.
    fn set_training(&mut self, _training: bool) {}

    /// Re-keys the module's random streams (dropout masks) from `stream`, restarting their
    /// counters: the training driver calls it at every epoch with the epoch's seed, so a run
    /// resumed at an epoch boundary draws the masks an uninterrupted run draws. Containers pass
    /// it to their children.
    fn reseed(&mut self, _stream: u64) {}

    /// The intermediate image-shaped activations for input `x`, named by the layer that made
    /// them (for pictures of what a convolutional network sees); none by default.
    fn feature_maps(&self, _x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
}

/// `prefix.name` for nested modules, or `name` at the top.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}
