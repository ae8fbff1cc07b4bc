//! The decoder-only transformer (GPT) with nanoGPT's layout and parameter names, so weights move
//! between nabla and PyTorch through safetensors without renaming: `transformer.wte.weight`,
//! `transformer.wpe.weight`, `transformer.h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc,
//! mlp.c_proj}`, `transformer.ln_f`, and `lm_head.weight`, tied to the token embedding.
//!
//! Self-attention is project → score → combine: every position projects itself to a query, a
//! key and a value (one fused `c_attn` projection), scores its query against the keys of every
//! position up to its own (causal), and combines the values by the softmax of those scores
//! ([`Tensor::scaled_dot_product_attention`]); `c_proj` mixes the heads.

use super::layers::prefixed;
use super::{Dropout, Embedding, LayerNorm, Linear, Module};
use crate::{DType, Device, Error, Generator, Result, Tensor};

/// The shape of a GPT.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptConfig {
    /// Distinct tokens (characters, for a character-level model).
    pub vocab: usize,
    /// The longest sequence (positions with a learned embedding).
    pub context: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads per block; `width / heads` must be a head size the kernels have.
    pub heads: usize,
    /// Features per position.
    pub width: usize,
    /// Dropout on the embeddings, the attention output and the MLP output, in [0, 1).
    pub dropout: f64,
}

impl GptConfig {
    /// Checks the shape: positive sizes, heads dividing the width, dropout in [0, 1).
    pub fn validate(self) -> Result<Self> {
        let bad = |detail: String| Err(Error::invalid("gpt", detail));
        if self.vocab == 0 || self.context == 0 || self.layers == 0 || self.heads == 0 || self.width == 0 {
            return bad(format!("every size must be positive: {self:?}"));
        }
        if !self.width.is_multiple_of(self.heads) {
            return bad(format!("width {} is not a multiple of {} heads", self.width, self.heads));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(self)
    }
}

/// A linear layer drawn from N(0, std²) with a zero bias, as nanoGPT initialises them.
fn linear(input: usize, output: usize, std: f64, device: &Device, rng: &mut Generator) -> Result<Linear> {
    let weight = Tensor::randn(&[output, input], DType::F32, device, rng)?.mul_scalar(std)?.requires_grad_()?;
    let bias = Tensor::zeros(&[output], DType::F32, device)?.requires_grad_()?;
    Ok(Linear { weight, bias: Some(bias) })
}

/// Causal multi-head self-attention with a fused query/key/value projection (`c_attn`, width to
/// 3 x width) and an output projection (`c_proj`), as nanoGPT's `CausalSelfAttention`.
pub struct MultiheadAttention {
    /// Projects each position to its query, key and value: `[3 width, width]`.
    pub c_attn: Linear,
    /// Mixes the heads' outputs: `[width, width]`.
    pub c_proj: Linear,
    heads: usize,
    causal: bool,
    dropout: Dropout,
}

impl MultiheadAttention {
    /// Causal attention over `width` features in `heads` heads, weights from N(0, 0.02²)
    /// (`c_proj` from N(0, proj_std²)).
    pub fn new(
        width: usize,
        heads: usize,
        proj_std: f64,
        dropout: f64,
        device: &Device,
        rng: &mut Generator,
    ) -> Result<Self> {
        if heads == 0 || !width.is_multiple_of(heads) {
            return Err(Error::invalid("attention", format!("width {width} is not a multiple of {heads} heads")));
        }
        let seed = rng.next_u64();
        Ok(MultiheadAttention {
            c_attn: linear(width, 3 * width, 0.02, device, rng)?,
            c_proj: linear(width, width, proj_std, device, rng)?,
            heads,
            causal: true,
            dropout: Dropout::new(dropout, seed)?,
        })
    }

    /// The same attention with every position seeing every other (an encoder's, as in a ViT).
    pub fn bidirectional(mut self) -> Self {
        self.causal = false;
        self
    }
}

/// One attention layer's keys and values of the positions seen so far, `[B, heads, n, d]`.
#[derive(Clone, Default)]
pub struct KvCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
}

impl KvCache {
    /// The number of cached positions.
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.shape()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MultiheadAttention {
    /// The query, key and value heads of `x` `[B, T, width]`, each `[B, heads, T, d]`.
    fn heads_of(&self, x: &Tensor) -> Result<[Tensor; 3]> {
        let &[b, t, width] = x.shape() else {
            return Err(Error::shape("attention", format!("input must be [batch, time, width], got {:?}", x.shape())));
        };
        let d = width / self.heads;
        let qkv = self.c_attn.forward(x)?;
        let head = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * width, width)?.reshape(&[b, t, self.heads, d])?.permute(&[0, 2, 1, 3])
        };
        Ok([head(0)?, head(1)?, head(2)?])
    }

    /// `[B, heads, T, d]` back to `[B, T, width]` through the output projection.
    fn combine(&self, y: &Tensor) -> Result<Tensor> {
        let &[b, h, t, d] = y.shape() else {
            return Err(Error::shape("attention", format!("heads must be [B, heads, T, d], got {:?}", y.shape())));
        };
        self.dropout.forward(&self.c_proj.forward(&y.permute(&[0, 2, 1, 3])?.reshape(&[b, t, h * d])?)?)
    }

    /// Attention of new positions `x` `[B, T, width]` given the keys and values of the earlier
    /// ones in `cache`, which then holds these too: a prompt when the cache is empty (causal
    /// among itself), else one position at a time, which sees every cached one. Each new token
    /// then costs one position's projections and one row of scores.
    pub fn forward_cached(&self, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let [q, k, v] = self.heads_of(x)?;
        let new = x.shape()[1];
        if !cache.is_empty() && new != 1 {
            return Err(Error::invalid("attention", format!("a filled cache takes one position at a time, got {new}")));
        }
        let (keys, values) = match (&cache.keys, &cache.values) {
            (Some(ck), Some(cv)) => (Tensor::cat(&[ck, &k], 2)?, Tensor::cat(&[cv, &v], 2)?),
            _ => (k.contiguous()?, v.contiguous()?),
        };
        let y = q.scaled_dot_product_attention(&keys, &values, cache.is_empty(), None)?;
        *cache = KvCache { keys: Some(keys), values: Some(values) };
        self.combine(&y)
    }
}

impl Module for MultiheadAttention {
    /// `[B, T, width]` to `[B, T, width]`, each position attending to itself and those before.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [q, k, v] = self.heads_of(x)?;
        self.combine(&q.scaled_dot_product_attention(&k, &v, self.causal, None)?)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = prefixed("c_attn", self.c_attn.named_parameters());
        out.extend(prefixed("c_proj", self.c_proj.named_parameters()));
        out
    }

    fn set_training(&mut self, training: bool) {
        self.dropout.set_training(training);
    }

    fn reseed(&mut self, stream: u64) {
        self.dropout.reseed(stream);
    }
}

/// The position-wise MLP of a block: width → 4 width (`c_fc`), GELU, → width (`c_proj`).
pub struct FeedForward {
    /// `[4 width, width]`.
    pub c_fc: Linear,
    /// `[width, 4 width]`.
    pub c_proj: Linear,
    dropout: Dropout,
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.dropout.forward(&self.c_proj.forward(&self.c_fc.forward(x)?.gelu()?)?)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = prefixed("c_fc", self.c_fc.named_parameters());
        out.extend(prefixed("c_proj", self.c_proj.named_parameters()));
        out
    }

    fn set_training(&mut self, training: bool) {
        self.dropout.set_training(training);
    }

    fn reseed(&mut self, stream: u64) {
        self.dropout.reseed(stream);
    }
}

/// A pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)).
pub struct Block {
    /// Normalises the attention's input.
    pub ln_1: LayerNorm,
    /// Causal self-attention.
    pub attn: MultiheadAttention,
    /// Normalises the MLP's input.
    pub ln_2: LayerNorm,
    /// The position-wise MLP.
    pub mlp: FeedForward,
}

/// The shape of one transformer block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockConfig {
    /// Features per position.
    pub width: usize,
    /// Attention heads.
    pub heads: usize,
    /// The MLP's hidden features (4 x width in GPT).
    pub hidden: usize,
    /// Blocks in the model, which scales the residual projections' initial weights.
    pub layers: usize,
    /// Dropout on the attention and MLP outputs.
    pub dropout: f64,
    /// Whether positions see only those before them (a decoder) or all (an encoder).
    pub causal: bool,
}

impl Block {
    /// A GPT block of `config`'s width, heads and dropout (causal, MLP of 4 x width).
    pub fn new(config: GptConfig, device: &Device, rng: &mut Generator) -> Result<Self> {
        let shape = BlockConfig {
            width: config.width,
            heads: config.heads,
            hidden: 4 * config.width,
            layers: config.layers,
            dropout: config.dropout,
            causal: true,
        };
        Self::with_config(shape, device, rng)
    }

    /// A block of any shape (weights from N(0, 0.02²), residual projections from
    /// N(0, 0.02² / (2 layers)), as nanoGPT).
    pub fn with_config(shape: BlockConfig, device: &Device, rng: &mut Generator) -> Result<Self> {
        let proj_std = 0.02 / (2.0 * shape.layers.max(1) as f64).sqrt();
        let w = shape.width;
        let mut attn = MultiheadAttention::new(w, shape.heads, proj_std, shape.dropout, device, rng)?;
        if !shape.causal {
            attn = attn.bidirectional();
        }
        let seed = rng.next_u64();
        let mlp = FeedForward {
            c_fc: linear(w, shape.hidden, 0.02, device, rng)?,
            c_proj: linear(shape.hidden, w, proj_std, device, rng)?,
            dropout: Dropout::new(shape.dropout, seed)?,
        };
        Ok(Block { ln_1: LayerNorm::new(w, device)?, attn, ln_2: LayerNorm::new(w, device)?, mlp })
    }
}

impl Block {
    /// [`Module::forward`] for new positions, with the attention's keys and values cached.
    pub fn forward_cached(&self, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let x = x.add(&self.attn.forward_cached(&self.ln_1.forward(x)?, cache)?)?;
        x.add(&self.mlp.forward(&self.ln_2.forward(&x)?)?)
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.add(&self.attn.forward(&self.ln_1.forward(x)?)?)?;
        x.add(&self.mlp.forward(&self.ln_2.forward(&x)?)?)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = prefixed("ln_1", self.ln_1.named_parameters());
        out.extend(prefixed("attn", self.attn.named_parameters()));
        out.extend(prefixed("ln_2", self.ln_2.named_parameters()));
        out.extend(prefixed("mlp", self.mlp.named_parameters()));
        out
    }

    fn set_training(&mut self, training: bool) {
        self.attn.set_training(training);
        self.mlp.set_training(training);
    }

    fn reseed(&mut self, stream: u64) {
        self.attn.reseed(stream);
        self.mlp.reseed(stream);
    }
}

/// A GPT: token and position embeddings, `layers` blocks, a final LayerNorm and a language-model
/// head whose weight is the token embedding's (tied, as GPT-2 and nanoGPT).
pub struct Gpt {
    /// The shape.
    pub config: GptConfig,
    /// Token embedding `[vocab, width]`, also the head's weight.
    pub wte: Embedding,
    /// Position embedding `[context, width]`.
    pub wpe: Embedding,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// The final LayerNorm.
    pub ln_f: LayerNorm,
    dropout: Dropout,
}

impl Gpt {
    /// A freshly initialised GPT (weights from N(0, 0.02²), residual projections scaled by
    /// 1/√(2 layers), biases zero, LayerNorms the identity).
    pub fn new(config: GptConfig, device: &Device, rng: &mut Generator) -> Result<Self> {
        let config = config.validate()?;
        let wte = Embedding::with_std(config.vocab, config.width, 0.02, device, rng)?;
        let wpe = Embedding::with_std(config.context, config.width, 0.02, device, rng)?;
        let blocks = (0..config.layers).map(|_| Block::new(config, device, rng)).collect::<Result<Vec<_>>>()?;
        let seed = rng.next_u64();
        Ok(Gpt {
            config,
            wte,
            wpe,
            blocks,
            ln_f: LayerNorm::new(config.width, device)?,
            dropout: Dropout::new(config.dropout, seed)?,
        })
    }
}

/// The keys and values of every block for the positions a [`Gpt`] has seen.
#[derive(Clone, Default)]
pub struct GptCache {
    layers: Vec<KvCache>,
}

impl GptCache {
    /// The number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Gpt {
    /// Next-token logits `[B, T, vocab]` for new positions `ids` `[B, T]` after those in
    /// `cache` (a prompt when it is empty, then one token at a time), which then holds them
    /// too. The same logits as [`Module::forward`] over the whole sequence, at the cost of the
    /// new positions only.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut GptCache) -> Result<Tensor> {
        let &[_, t] = ids.shape() else {
            return Err(Error::shape("gpt", format!("ids must be [batch, time], got {:?}", ids.shape())));
        };
        let start = cache.len();
        if start + t > self.config.context {
            return Err(Error::shape(
                "gpt",
                format!("{} positions exceed the context of {}", start + t, self.config.context),
            ));
        }
        cache.layers.resize_with(self.blocks.len(), KvCache::default);
        let positions = Tensor::arange(start as f64, (start + t) as f64, 1.0, DType::I64, &ids.device())?;
        let mut x = self.dropout.forward(&self.wte.forward(ids)?.add(&self.wpe.forward(&positions)?)?)?;
        for (block, layer) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = block.forward_cached(&x, layer)?;
        }
        self.ln_f.forward(&x)?.linear(&self.wte.weight, None)
    }
}

impl Gpt {
    /// The attention weights of block `layer` for `ids` `[1, T]`: `[heads, T, T]`, row i the
    /// distribution of query i over the keys (zero past i), for pictures of what it attends to.
    pub fn attention_weights(&self, ids: &Tensor, layer: usize) -> Result<Tensor> {
        let &[1, t] = ids.shape() else {
            return Err(Error::shape(
                "gpt",
                format!("attention weights take one sequence [1, T], got {:?}", ids.shape()),
            ));
        };
        if layer >= self.blocks.len() || t > self.config.context {
            return Err(Error::invalid(
                "gpt",
                format!(
                    "layer {layer} of {} blocks, {t} positions of a context of {}",
                    self.blocks.len(),
                    self.config.context
                ),
            ));
        }
        let _guard = crate::NoGradGuard::new();
        let positions = Tensor::arange(0.0, t as f64, 1.0, DType::I64, &ids.device())?;
        let mut x = self.wte.forward(ids)?.add(&self.wpe.forward(&positions)?)?;
        for block in &self.blocks[..layer] {
            x = block.forward(&x)?;
        }
        let [q, k, _] = self.blocks[layer].attn.heads_of(&self.blocks[layer].ln_1.forward(&x)?)?;
        let d = self.config.width / self.config.heads;
        let scores = q.matmul(&k.transpose(-2, -1)?)?.mul_scalar(1.0 / (d as f64).sqrt())?;
        let mask = Tensor::causal_mask(t, t, scores.dtype(), &scores.device())?;
        let hidden = Tensor::full(&[], f64::NEG_INFINITY, scores.dtype(), &scores.device())?;
        mask.where_cond(&scores, &hidden)?.softmax(-1)?.reshape(&[self.config.heads, t, t])
    }
}

impl Module for Gpt {
    /// Token ids `[B, T]` (i64, T at most the context) to next-token logits `[B, T, vocab]`.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let &[_, t] = ids.shape() else {
            return Err(Error::shape("gpt", format!("ids must be [batch, time], got {:?}", ids.shape())));
        };
        if t > self.config.context {
            return Err(Error::shape(
                "gpt",
                format!("{t} positions exceed the context of {} (ids {:?})", self.config.context, ids.shape()),
            ));
        }
        let positions = Tensor::arange(0.0, t as f64, 1.0, DType::I64, &ids.device())?;
        let mut x = self.dropout.forward(&self.wte.forward(ids)?.add(&self.wpe.forward(&positions)?)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.ln_f.forward(&x)?.linear(&self.wte.weight, None)
    }

    /// nanoGPT's names; the tied head weight is listed once, as `transformer.wte.weight`.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = prefixed("transformer.wte", self.wte.named_parameters());
        out.extend(prefixed("transformer.wpe", self.wpe.named_parameters()));
        for (i, block) in self.blocks.iter().enumerate() {
            out.extend(prefixed(&format!("transformer.h.{i}"), block.named_parameters()));
        }
        out.extend(prefixed("transformer.ln_f", self.ln_f.named_parameters()));
        out
    }

    /// `lm_head.weight`, the tied head, saved beside the embedding as PyTorch's state dict
    /// holds it (not a parameter of its own, so optimizers update it once).
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        vec![("lm_head.weight".to_string(), self.wte.weight.clone())]
    }

    fn set_training(&mut self, training: bool) {
        self.dropout.set_training(training);
        for block in &mut self.blocks {
            block.set_training(training);
        }
    }

    fn reseed(&mut self, stream: u64) {
        self.dropout.reseed(stream);
        for block in &mut self.blocks {
            block.reseed(stream);
        }
    }
}
