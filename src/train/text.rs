//! Character-level language models: training a [`Gpt`] on a text with nanoGPT's recipe
//! (AdamW with weight decay on matrices and embeddings only, warm-up then cosine, gradient
//! clipping, losses reported every N steps in nats and bits per character), and sampling from
//! it with a key/value cache.

use super::Report;
use crate::data::text::{CharTokenizer, TokenStream, shipped_plays};
use crate::io::{load_into_module, safetensors, save_module};
use crate::nn::{Gpt, GptCache, GptConfig, Module};
use crate::optim::{Adam, AdamConfig, CosineLr, GradScaler, LrSchedule, Optimizer, WarmupLr, clip_grad_norm};
use crate::{Device, Error, Generator, Precision, Result, Tensor};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything `nabla train --model gpt` takes.
#[derive(Clone, Debug)]
pub struct TextConfig {
    /// A UTF-8 text file (`None`: the shipped plays).
    pub data: Option<PathBuf>,
    /// The model's shape (its vocabulary is set from the text).
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Features per position.
    pub width: usize,
    /// Positions per window.
    pub context: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Optimizer steps in all.
    pub steps: usize,
    /// Peak learning rate, after a linear warm-up.
    pub lr: f64,
    /// The learning rate the cosine ends at.
    pub min_lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// AdamW's decay of matrices and embeddings (biases and LayerNorms do not decay).
    pub weight_decay: f64,
    /// AdamW's β2.
    pub beta2: f64,
    /// The largest global gradient norm (clipping), or 0 for none.
    pub clip: f64,
    /// Dropout in the blocks, in [0, 1).
    pub dropout: f64,
    /// Report train and validation loss every this many steps.
    pub eval_every: usize,
    /// Validation windows per report.
    pub eval_batches: usize,
    /// Seeds initialisation and the windows.
    pub seed: u64,
    /// Where to train.
    pub device: Device,
    /// Where the checkpoint goes.
    pub out_dir: PathBuf,
    /// What the run prints.
    pub report: Report,
    /// Mixed precision of the products ([`crate::amp`]); f16 adds dynamic loss scaling.
    pub precision: Precision,
}

impl TextConfig {
    /// nanoGPT's laptop recipe: 4 layers of 4 heads, width 128, context 64, batch 12, 2000
    /// steps, AdamW (β 0.9/0.99, lr 1e-3, 100 warm-up steps, cosine to 1e-4), clipping at 1.0,
    /// no dropout.
    pub fn cpu_preset() -> Self {
        TextConfig {
            data: None,
            layers: 4,
            heads: 4,
            width: 128,
            context: 64,
            batch_size: 12,
            steps: 2000,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup: 100,
            weight_decay: 0.1,
            beta2: 0.99,
            clip: 1.0,
            dropout: 0.0,
            eval_every: 250,
            eval_batches: 200,
            seed: 0,
            device: Device::Cpu,
            out_dir: PathBuf::from("runs/gpt"),
            report: Report::Silent,
            precision: Precision::F32,
        }
    }

    /// nanoGPT's Shakespeare recipe for a GPU: 6 layers of 6 heads, width 384, context 256,
    /// batch 64, dropout 0.2, 5000 steps.
    pub fn gpu_preset() -> Self {
        TextConfig {
            layers: 6,
            heads: 6,
            width: 384,
            context: 256,
            batch_size: 64,
            steps: 5000,
            dropout: 0.2,
            eval_every: 500,
            ..TextConfig::cpu_preset()
        }
    }
}

/// One report of a text run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextReport {
    /// Steps done.
    pub step: usize,
    /// Mean loss over `eval_batches` training windows, nats per character.
    pub train_loss: f64,
    /// The same on the validation text.
    pub val_loss: f64,
    /// Seconds since the run started.
    pub seconds: f64,
}

/// What a text run produced.
pub struct TextOutcome {
    /// The model.
    pub model: Gpt,
    /// The tokenizer of the text.
    pub tokenizer: CharTokenizer,
    /// Every report.
    pub reports: Vec<TextReport>,
    /// The checkpoint written.
    pub checkpoint: PathBuf,
}

fn read_text(path: Option<&Path>) -> Result<String> {
    let text = match path {
        Some(p) => crate::io::read_text_file(p, crate::io::MAX_DATA_FILE)?,
        None => shipped_plays().to_string(),
    };
    if text.is_empty() {
        return Err(Error::invalid("train", "the text is empty"));
    }
    Ok(text)
}

/// The mean loss of `batches` random windows of `stream`, without a graph.
pub fn text_loss(
    model: &Gpt,
    stream: &TokenStream,
    batches: usize,
    batch: usize,
    rng: &mut Generator,
    device: &Device,
) -> Result<f64> {
    let _guard = crate::NoGradGuard::new();
    let mut total = Tensor::zeros(&[], crate::DType::F32, device)?;
    for _ in 0..batches {
        let (x, y) = stream.random_batch(batch, model.config.context, rng, device)?;
        total = total.add(&next_token_loss(model, &x, &y)?)?;
    }
    Ok(total.to_scalar::<f64>()? / batches.max(1) as f64)
}

/// Cross-entropy of the model's predictions for `x` `[B, T]` against the next tokens `y`.
pub fn next_token_loss(model: &Gpt, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (b, t) = (x.shape()[0], x.shape()[1]);
    model.forward(x)?.reshape(&[b * t, model.config.vocab])?.cross_entropy(&y.reshape(&[b * t])?)
}

/// Trains a character-level GPT on the text, reporting every `eval_every` steps, and writes
/// `checkpoint.safetensors` (nanoGPT's names; the vocabulary and shape in its metadata) and
/// `history.json` in `out_dir`.
pub fn train_text(config: &TextConfig) -> Result<TextOutcome> {
    let text = read_text(config.data.as_deref())?;
    let tokenizer = CharTokenizer::from_corpus(&text)?;
    let (train, val) = TokenStream::new(tokenizer.encode(&text)?).split(0.9)?;
    if val.len() <= config.context || train.len() <= config.context {
        return Err(Error::invalid(
            "train",
            format!(
                "{} characters are too few for windows of {} (+1) in both splits",
                text.chars().count(),
                config.context
            ),
        ));
    }
    let shape = GptConfig {
        vocab: tokenizer.len(),
        context: config.context,
        layers: config.layers,
        heads: config.heads,
        width: config.width,
        dropout: config.dropout,
    };
    let device = config.device;
    let mut rng = Generator::new(config.seed);
    let mut model = Gpt::new(shape, &device, &mut rng)?;
    // nanoGPT decays matrices and embeddings, not biases or LayerNorm parameters.
    let (decayed, plain): (Vec<_>, Vec<_>) = model.parameters().into_iter().partition(|p| p.rank() >= 2);
    let adamw = |weight_decay| AdamConfig { beta2: config.beta2, weight_decay, ..AdamConfig::adamw(config.lr) };
    let mut optimizers = [Adam::new(decayed, adamw(config.weight_decay))?, Adam::new(plain, adamw(0.0))?];
    let schedule = WarmupLr {
        warmup: config.warmup,
        after: CosineLr { base: config.lr, min: config.min_lr, total: config.steps.saturating_sub(config.warmup) },
    };
    let params = model.parameters();
    let mut scaler = config.precision.needs_loss_scaling().then(GradScaler::default);
    let started = Instant::now();
    let mut reports = Vec::new();
    let mut windows = Generator::new(config.seed ^ 0x5eed);
    let say = |line: String| {
        if config.report != Report::Silent {
            let _ = writeln!(std::io::stdout(), "{line}");
        }
    };
    say(format!(
        "training a gpt ({} layers, {} heads, width {}, context {}, {} parameters) on {} for {} steps, batch {}, lr {}, {} products",
        config.layers,
        config.heads,
        config.width,
        config.context,
        params.iter().map(Tensor::numel).sum::<usize>(),
        device,
        config.steps,
        config.batch_size,
        config.lr,
        config.precision
    ));
    say(format!(
        "text: {} characters ({} distinct), {} to train on, {} to validate",
        text.chars().count(),
        tokenizer.len(),
        train.len(),
        val.len()
    ));
    for step in 0..=config.steps {
        if step % config.eval_every.max(1) == 0 || step == config.steps {
            model.set_training(false);
            let mut eval_rng = Generator::new(config.seed ^ 0xe7a1);
            let (train_loss, val_loss) = config.precision.run(|| -> Result<(f64, f64)> {
                let mut loss =
                    |stream| text_loss(&model, stream, config.eval_batches, config.batch_size, &mut eval_rng, &device);
                Ok((loss(&train)?, loss(&val)?))
            })?;
            model.set_training(true);
            if !train_loss.is_finite() {
                return Err(Error::invalid(
                    "train",
                    format!("training diverged: the loss at step {step} is {train_loss}"),
                ));
            }
            let report = TextReport { step, train_loss, val_loss, seconds: started.elapsed().as_secs_f64() };
            say(format!(
                "step {step:>5}/{}  train loss {train_loss:.4} ({:.3} bits/char)  val loss {val_loss:.4} ({:.3} bits/char)  {:.1}s",
                config.steps,
                train_loss / std::f64::consts::LN_2,
                val_loss / std::f64::consts::LN_2,
                report.seconds
            ));
            reports.push(report);
        }
        if step == config.steps {
            break;
        }
        let (x, y) = train.random_batch(config.batch_size, config.context, &mut windows, &device)?;
        for opt in optimizers.iter_mut() {
            opt.zero_grad();
            opt.set_lr(schedule.lr(step));
        }
        let loss = config.precision.run(|| next_token_loss(&model, &x, &y))?;
        // With a loss scaler, the gradients are unscaled before clipping, and a step whose
        // gradients overflowed is skipped (the scaler lowers its scale).
        let finite = match scaler.as_mut() {
            Some(scaler) => {
                scaler.scale_loss(&loss)?.backward()?;
                let finite = scaler.unscale(&params)?;
                scaler.update(finite);
                finite
            }
            None => {
                loss.backward()?;
                true
            }
        };
        if finite {
            if config.clip > 0.0 {
                clip_grad_norm(&params, config.clip)?;
            }
            for opt in optimizers.iter_mut() {
                opt.step()?;
            }
        }
    }
    model.set_training(false);
    std::fs::create_dir_all(&config.out_dir)
        .map_err(|source| Error::Io { path: config.out_dir.display().to_string(), source })?;
    let checkpoint = config.out_dir.join("checkpoint.safetensors");
    save_module(&checkpoint, &model, &gpt_metadata(&shape, &tokenizer, config.steps))?;
    super::run::write_history(&checkpoint, &reports)?;
    Ok(TextOutcome { model, tokenizer, reports, checkpoint })
}

fn gpt_metadata(shape: &GptConfig, tokenizer: &CharTokenizer, steps: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("model".to_string(), "gpt".to_string()),
        ("vocabulary".to_string(), tokenizer.vocabulary()),
        ("layers".to_string(), shape.layers.to_string()),
        ("heads".to_string(), shape.heads.to_string()),
        ("width".to_string(), shape.width.to_string()),
        ("context".to_string(), shape.context.to_string()),
        ("steps".to_string(), steps.to_string()),
        ("format".to_string(), "pt".to_string()),
    ])
}

/// A GPT checkpoint written by [`train_text`] and its tokenizer, loaded on `device` in
/// evaluation mode. Another kind of checkpoint is an error naming what it holds.
pub fn load_gpt(path: &Path, device: &Device) -> Result<(Gpt, CharTokenizer)> {
    let saved = safetensors::load(path)?;
    let what = path.display();
    match saved.metadata.get("model").map(String::as_str) {
        Some("gpt") => {}
        Some(other) => return Err(Error::invalid("load", format!("{what} holds a `{other}` model, not a gpt"))),
        None => return Err(Error::invalid("load", format!("{what} has no nabla metadata (not a gpt checkpoint)"))),
    }
    let number = |key: &str| -> Result<usize> {
        saved
            .metadata
            .get(key)
            .and_then(|v| v.parse().ok())
            .filter(|&n| (1..=1 << 20).contains(&n))
            .ok_or_else(|| Error::invalid("load", format!("{what}: metadata `{key}` is missing or out of range")))
    };
    let vocabulary =
        saved.metadata.get("vocabulary").ok_or_else(|| Error::invalid("load", format!("{what}: no vocabulary")))?;
    let tokenizer = CharTokenizer::from_vocabulary(vocabulary)?;
    let shape = GptConfig {
        vocab: tokenizer.len(),
        context: number("context")?,
        layers: number("layers")?,
        heads: number("heads")?,
        width: number("width")?,
        dropout: 0.0,
    };
    let embedding = saved.tensors.get("transformer.wte.weight").map(|t| t.shape().to_vec());
    if embedding.as_deref() != Some(&[shape.vocab, shape.width][..]) {
        return Err(Error::shape(
            "load",
            format!(
                "{what}: transformer.wte.weight is {embedding:?}, the metadata says [{}, {}]",
                shape.vocab, shape.width
            ),
        ));
    }
    let mut model = Gpt::new(shape, device, &mut Generator::new(0))?;
    load_into_module(&saved, &model)?;
    model.set_training(false);
    Ok((model, tokenizer))
}

/// How to pick the next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Divides the logits: below 1 sharper, above 1 flatter; > 0.
    pub temperature: f64,
    /// Keep only the k likeliest tokens (None: all).
    pub top_k: Option<usize>,
    /// Seeds the draws.
    pub seed: u64,
}

/// Continues `prompt` by `tokens` characters, calling `emit` with each as it is drawn, and
/// returns them. With `use_cache` each new token costs one position (a key/value cache);
/// without it every token reruns the whole window (the reference the cache is tested against).
/// A prompt character outside the vocabulary is an error.
pub fn generate(
    model: &Gpt,
    tokenizer: &CharTokenizer,
    prompt: &str,
    tokens: usize,
    sampling: Sampling,
    use_cache: bool,
    mut emit: impl FnMut(&str),
) -> Result<String> {
    if !(sampling.temperature > 0.0 && sampling.temperature.is_finite()) {
        return Err(Error::invalid("generate", format!("temperature must be > 0, got {}", sampling.temperature)));
    }
    let device = model.wte.weight.device();
    let _guard = crate::NoGradGuard::new();
    let mut ids = tokenizer.encode(prompt)?;
    if ids.is_empty() {
        // nanoGPT starts from a newline when there is no prompt.
        ids = tokenizer.encode("\n").or_else(|_| Ok::<_, Error>(vec![0]))?;
    }
    let context = model.config.context;
    let mut rng = Generator::new(sampling.seed);
    let mut cache = GptCache::default();
    let mut out = String::new();
    let mut pending: Vec<i64> = ids[ids.len().saturating_sub(context)..].to_vec();
    for _ in 0..tokens {
        let logits = if use_cache {
            if cache.len() + pending.len() > context {
                // The window is full: start again from its last half.
                cache = GptCache::default();
                pending = ids[ids.len() - context / 2..].to_vec();
            }
            let x = Tensor::from_vec(pending.clone(), &[1, pending.len()], &device)?;
            model.forward_cached(&x, &mut cache)?
        } else {
            let window = &ids[ids.len().saturating_sub(context)..];
            model.forward(&Tensor::from_vec(window.to_vec(), &[1, window.len()], &device)?)?
        };
        let last = logits.narrow(1, logits.shape()[1] - 1, 1)?.reshape(&[model.config.vocab])?.to_vec::<f64>()?;
        let next = sample(&last, sampling, &mut rng);
        ids.push(next as i64);
        pending = vec![next as i64];
        let text = tokenizer.decode(&[next as i64])?;
        emit(&text);
        out.push_str(&text);
    }
    Ok(out)
}

/// A draw from softmax(logits / temperature) restricted to the `top_k` largest.
fn sample(logits: &[f64], sampling: Sampling, rng: &mut Generator) -> usize {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(sampling.top_k.unwrap_or(logits.len()).clamp(1, logits.len()));
    let top = logits[order[0]];
    let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] - top) / sampling.temperature).exp()).collect();
    let mut draw = rng.uniform() * weights.iter().sum::<f64>();
    for (&i, w) in order.iter().zip(&weights) {
        if draw < *w {
            return i;
        }
        draw -= w;
    }
    order[0]
}

/// The mean next-character loss of `text` under `model`, over consecutive windows of the
/// model's context (every character after the first predicted once). Characters outside the
/// vocabulary, or a text shorter than two characters, are errors.
pub fn text_file_loss(model: &Gpt, tokenizer: &CharTokenizer, text: &str, device: &Device) -> Result<f64> {
    let ids = tokenizer.encode(text)?;
    if ids.len() < 2 {
        return Err(Error::invalid("eval", format!("a text of {} characters has nothing to predict", ids.len())));
    }
    let _guard = crate::NoGradGuard::new();
    let context = model.config.context;
    let (mut total, mut count) = (0.0, 0usize);
    let mut start = 0;
    while start + 1 < ids.len() {
        let len = context.min(ids.len() - 1 - start);
        let x = Tensor::from_vec(ids[start..start + len].to_vec(), &[1, len], device)?;
        let y = Tensor::from_vec(ids[start + 1..start + 1 + len].to_vec(), &[1, len], device)?;
        total += next_token_loss(model, &x, &y)?.to_scalar::<f64>()? * len as f64;
        count += len;
        start += len;
    }
    Ok(total / count as f64)
}
