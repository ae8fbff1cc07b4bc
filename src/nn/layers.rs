//! Layers: Linear, activations, Dropout, Sequential and the multilayer perceptron.

use super::{Module, init, join};
use crate::{DType, Device, Error, Generator, Result, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};

/// y = x Wᵀ + b with W of shape `[out, in]`, as `torch.nn.Linear`.
pub struct Linear {
    /// `[out_features, in_features]`.
    pub weight: Tensor,
    /// `[out_features]`, if the layer has a bias.
    pub bias: Option<Tensor>,
}

/// How to initialise a layer's weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// PyTorch's default U(±1/√in).
    Default,
    /// Glorot/Xavier uniform.
    Xavier,
    /// Kaiming/He normal (for ReLU).
    Kaiming,
}

impl Linear {
    /// A layer with freshly initialised parameters (bias from PyTorch's default range).
    pub fn new(
        in_features: usize,
        out_features: usize,
        bias: bool,
        init: Init,
        device: &Device,
        rng: &mut Generator,
    ) -> Result<Self> {
        let shape = [out_features, in_features];
        let weight = match init {
            Init::Default => init::linear_default(&shape, in_features, DType::F32, device, rng)?,
            Init::Xavier => init::xavier_uniform(&shape, in_features, out_features, 1.0, DType::F32, device, rng)?,
            Init::Kaiming => init::kaiming_normal(&shape, in_features, DType::F32, device, rng)?,
        };
        let bias = if bias {
            Some(init::linear_default(&[out_features], in_features, DType::F32, device, rng)?.requires_grad_()?)
        } else {
            None
        };
        Ok(Linear { weight: weight.requires_grad_()?, bias })
    }
}

impl Linear {
    /// Refuses an input whose last dim is not the layer's `in_features`.
    fn check_input(&self, x: &Tensor) -> Result<()> {
        let in_features = self.weight.shape()[1];
        if x.shape().last() != Some(&in_features) {
            return Err(Error::shape(
                "linear",
                format!("input {:?} does not end in {in_features} features", x.shape()),
            ));
        }
        Ok(())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        x.linear(&self.weight, self.bias.as_ref())
    }

    /// One product with the ReLU in its epilogue ([`Tensor::linear_relu`]).
    fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        x.linear_relu(&self.weight, self.bias.as_ref())
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            out.push(("bias".to_string(), b.clone()));
        }
        out
    }
}

/// An elementwise activation as a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// max(x, 0)
    Relu,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// tanh x
    Tanh,
    /// x Φ(x)
    Gelu,
    /// x
    Identity,
}

impl Activation {
    /// Parses `relu`, `sigmoid`, `tanh`, `gelu` or `identity`.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "relu" => Activation::Relu,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "gelu" => Activation::Gelu,
            "identity" => Activation::Identity,
            _ => {
                return Err(Error::invalid(
                    "activation",
                    format!("unknown activation `{name}` (relu, sigmoid, tanh, gelu, identity)"),
                ));
            }
        })
    }
}

impl Module for Activation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => x.gelu(),
            Activation::Identity => Ok(x.clone()),
        }
    }
}

/// Inverted dropout: in training, zeroes each element with probability `p` and scales the rest
/// by 1/(1-p); the identity in evaluation. Masks come from a counter-based generator keyed by
/// a seed and a call counter, so a run is reproducible on any device.
pub struct Dropout {
    p: f64,
    /// The seed given at construction; `key` mixes it with the current stream.
    seed: u64,
    key: u64,
    calls: AtomicU64,
    training: bool,
}

impl Dropout {
    /// Dropout with drop probability `p` in [0, 1).
    pub fn new(p: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid("dropout", format!("drop probability {p} is not in [0, 1)")));
        }
        Ok(Dropout { p, seed, key: seed, calls: AtomicU64::new(0), training: true })
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.training || self.p == 0.0 {
            return Ok(x.clone());
        }
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let seed = self.key ^ call.wrapping_mul(0xd1b5_4a32_d192_ed03);
        let mask = Tensor::dropout_mask(x.shape(), 1.0 - self.p, seed, x.dtype(), &x.device())?;
        x.mul(&mask)
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn reseed(&mut self, stream: u64) {
        self.key = crate::rng::mix(self.seed, stream);
        self.calls = AtomicU64::new(0);
    }
}

/// Modules applied in order; parameters are named by position (`0.weight`), as `nn.Sequential`.
/// A module followed by a ReLU runs as one [`Module::forward_relu`] (a Linear layer then clamps
/// its output in the product's epilogue); the result is the same as running them in turn.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
    /// Whether each module is `Activation::Relu`.
    is_relu: Vec<bool>,
}

impl Sequential {
    /// An empty sequence.
    pub fn new() -> Self {
        Sequential::default()
    }

    /// Appends a module.
    pub fn push<M: Module + 'static>(mut self, layer: M) -> Self {
        let relu = (&layer as &dyn std::any::Any).downcast_ref::<Activation>() == Some(&Activation::Relu);
        self.is_relu.push(relu);
        self.layers.push(Box::new(layer));
        self
    }

    /// The output of every module in turn, named by position.
    pub fn forward_each(&self, x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let mut h = x.clone();
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            out.push((i.to_string(), h.clone()));
        }
        Ok(out)
    }

    /// The number of modules.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no modules.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let mut i = 0;
        while let Some(layer) = self.layers.get(i) {
            if self.is_relu.get(i + 1) == Some(&true) {
                h = layer.forward_relu(&h)?;
                i += 2;
            } else {
                h = layer.forward(&h)?;
                i += 1;
            }
        }
        Ok(h)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, t) in layer.named_parameters() {
                out.push((join(&i.to_string(), &name), t));
            }
        }
        out
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, t) in layer.named_buffers() {
                out.push((join(&i.to_string(), &name), t));
            }
        }
        out
    }

    fn set_training(&mut self, training: bool) {
        self.layers.iter_mut().for_each(|l| l.set_training(training));
    }

    fn reseed(&mut self, stream: u64) {
        self.layers.iter_mut().for_each(|l| l.reseed(stream));
    }
}

/// The multilayer perceptron: Linear layers with an activation (and optional dropout) between
/// them, held in `layers` so parameters are named `layers.0.weight`, `layers.0.bias`, ...
pub struct Mlp {
    /// The layers, in order.
    pub layers: Sequential,
}

impl Mlp {
    /// An MLP with layer widths `sizes` (input first, output last), e.g. `[784, 512, 512, 10]`.
    pub fn new(
        sizes: &[usize],
        activation: Activation,
        dropout: f64,
        device: &Device,
        rng: &mut Generator,
    ) -> Result<Self> {
        if sizes.len() < 2 {
            return Err(Error::invalid("mlp", format!("needs at least an input and an output size, got {sizes:?}")));
        }
        let mut layers = Sequential::new();
        for (i, pair) in sizes.windows(2).enumerate() {
            let init = if activation == Activation::Relu { Init::Kaiming } else { Init::Xavier };
            layers = layers.push(Linear::new(pair[0], pair[1], true, init, device, rng)?);
            if i + 2 < sizes.len() {
                layers = layers.push(activation);
                if dropout > 0.0 {
                    layers = layers.push(Dropout::new(dropout, rng.next_u64())?);
                }
            }
        }
        Ok(Mlp { layers })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.layers.forward(x)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        prefixed("layers", self.layers.named_parameters())
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        prefixed("layers", self.layers.named_buffers())
    }

    fn set_training(&mut self, training: bool) {
        self.layers.set_training(training);
    }

    fn reseed(&mut self, stream: u64) {
        self.layers.reseed(stream);
    }
}

/// `prefix.name` for every entry.
pub(crate) fn prefixed(prefix: &str, items: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    items.into_iter().map(|(n, t)| (join(prefix, &n), t)).collect()
}
