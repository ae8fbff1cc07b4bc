//! The vision transformer (ViT): an image cut into square patches, each patch a token (a
//! strided convolution), a learned class token and learned positions, encoder blocks whose
//! positions all see each other, and a linear head on the class token.

use super::layers::prefixed;
use super::{Block, BlockConfig, Conv2d, LayerNorm, Linear, Module};
use crate::{Conv2dOptions, DType, Device, Error, Generator, Result, Tensor};

/// The shape of a ViT.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VitConfig {
    /// Input channels.
    pub channels: usize,
    /// Input side in pixels (a multiple of `patch`).
    pub size: usize,
    /// Patch side in pixels.
    pub patch: usize,
    /// Features per token.
    pub width: usize,
    /// Encoder blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// The MLP's hidden features.
    pub hidden: usize,
    /// Output classes.
    pub classes: usize,
}

impl VitConfig {
    /// The small ViT for 28 x 28 digits of the transformer issue: 7 x 7 patches, width 64, 4
    /// blocks of 4 heads, MLP 128.
    pub fn small(channels: usize, size: usize, classes: usize) -> Self {
        VitConfig { channels, size, patch: size / 4, width: 64, layers: 4, heads: 4, hidden: 128, classes }
    }
}

/// A vision transformer, with timm's top-level names (`patch_embed`, `cls_token`, `pos_embed`,
/// `blocks.N`, `norm`, `head`) and nanoGPT's names inside the blocks.
pub struct Vit {
    /// Patches to tokens: a `patch` x `patch` convolution with stride `patch`.
    pub patch_embed: Conv2d,
    /// The learned class token `[1, 1, width]`.
    pub cls_token: Tensor,
    /// Learned positions `[1, 1 + patches, width]`.
    pub pos_embed: Tensor,
    /// Encoder blocks.
    pub blocks: Vec<Block>,
    /// The final LayerNorm.
    pub norm: LayerNorm,
    /// Class scores from the class token.
    pub head: Linear,
}

impl Vit {
    /// A freshly initialised ViT (tokens and positions from N(0, 0.02²); the blocks' linear
    /// weights from N(0, 1/(3 fan_in)), PyTorch's default scale).
    pub fn new(config: VitConfig, device: &Device, rng: &mut Generator) -> Result<Self> {
        let VitConfig { channels, size, patch, width, layers, heads, hidden, classes } = config;
        if patch == 0 || size == 0 || !size.is_multiple_of(patch) {
            return Err(Error::invalid(
                "vit",
                format!("{size}x{size} images do not split into {patch}x{patch} patches"),
            ));
        }
        let tokens = (size / patch) * (size / patch);
        let patch_embed = Conv2d::new(channels, width, patch, Conv2dOptions::new(patch, 0), device, rng)?;
        let normal = |shape: &[usize], rng: &mut Generator| -> Result<Tensor> {
            Tensor::randn(shape, DType::F32, device, rng)?.mul_scalar(0.02)?.requires_grad_()
        };
        let cls_token = normal(&[1, 1, width], rng)?;
        let pos_embed = normal(&[1, tokens + 1, width], rng)?;
        let shape = BlockConfig { width, heads, hidden, layers, dropout: 0.0, causal: false };
        let blocks = (0..layers).map(|_| Block::with_config(shape, device, rng)).collect::<Result<Vec<_>>>()?;
        // A ViT this small trains better from PyTorch's default scale for its linear layers
        // (std 1/sqrt(3 fan_in), as U(-1/sqrt(fan_in), 1/sqrt(fan_in))) than from GPT's 0.02.
        for block in &blocks {
            for p in block.parameters().iter().filter(|p| p.rank() == 2) {
                let std = 1.0 / (3.0 * p.shape()[1] as f64).sqrt();
                p.copy_(&Tensor::randn(p.shape(), DType::F32, device, rng)?.mul_scalar(std)?)?;
            }
        }
        let head = Linear::new(width, classes, true, super::Init::Default, device, rng)?;
        Ok(Vit { patch_embed, cls_token, pos_embed, blocks, norm: LayerNorm::new(width, device)?, head })
    }
}

impl Module for Vit {
    /// Images `[N, C, S, S]` to class scores `[N, classes]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let patches = self.patch_embed.forward(x)?;
        let &[n, width, gh, gw] = patches.shape() else {
            return Err(Error::shape("vit", format!("images must be [N, C, S, S], got {:?}", x.shape())));
        };
        let tokens = patches.reshape(&[n, width, gh * gw])?.permute(&[0, 2, 1])?;
        let cls = self.cls_token.broadcast_as(&[n, 1, width])?;
        let mut h = Tensor::cat(&[&cls, &tokens], 1)?.add(&self.pos_embed)?;
        for block in &self.blocks {
            h = block.forward(&h)?;
        }
        self.head.forward(&self.norm.forward(&h)?.narrow(1, 0, 1)?.reshape(&[n, width])?)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = prefixed("patch_embed", self.patch_embed.named_parameters());
        out.push(("cls_token".to_string(), self.cls_token.clone()));
        out.push(("pos_embed".to_string(), self.pos_embed.clone()));
        for (i, block) in self.blocks.iter().enumerate() {
            out.extend(prefixed(&format!("blocks.{i}"), block.named_parameters()));
        }
        out.extend(prefixed("norm", self.norm.named_parameters()));
        out.extend(prefixed("head", self.head.named_parameters()));
        out
    }
}
