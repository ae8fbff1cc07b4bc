//! The training driver behind `nabla train`: a model, an optimizer and a data loader, one
//! summary per epoch, checkpoints and a metric history written atomically, and resumption.

mod captured;
mod data;
mod progress;
mod run;
pub mod text;

pub use data::{CIFAR10_CLASSES, DataKind, Geometry, MIN_FOLDER_IMAGES, Splits};
pub use progress::Report;
pub use run::{
    CHECKPOINT, MAX_EPOCHS, RunSettings, SavedRun, check_history, checkpoint_in, history_path, load_optimizer,
    read_history,
};

use crate::data::{DataLoader, Dataset};
use crate::io::{load_into_module, safetensors};
use crate::metrics;
use crate::nn::{Activation, BatchNormOptions, ConvNet, Mlp, Module, ResNet, Vit, VitConfig};
use crate::optim::{Adam, AdamConfig, GradScaler, LrSchedule, Optimizer, Sgd, SgdConfig};
use crate::{DType, Device, Error, Generator, Precision, Result, Tensor};
use progress::Progress;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which network to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// 784-512-512-10 ReLU multilayer perceptron.
    Mlp,
    /// A single linear layer 784-10 (the multi-class perceptron), trained by gradient descent.
    Perceptron,
    /// LeNet-5 on 1x28x28 images.
    LeNet5,
    /// The AlexNet-style network (five conv, three fully connected layers) at half width.
    AlexNet,
    /// The small ResNet (three stages of basic blocks with batch norm), base width 16.
    ResNet,
    /// A small vision transformer: 4 x 4 patches, width 64, 4 blocks of 4 heads, MLP 128.
    Vit,
}

impl ModelKind {
    /// Every model, in the order `nabla help` lists them.
    pub const ALL: [ModelKind; 6] = [
        ModelKind::Mlp,
        ModelKind::Perceptron,
        ModelKind::LeNet5,
        ModelKind::AlexNet,
        ModelKind::ResNet,
        ModelKind::Vit,
    ];

    /// Parses a model name (`mlp`, `perceptron`, `lenet5`, `alexnet`, `resnet`).
    pub fn parse(name: &str) -> Result<Self> {
        ModelKind::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
            Error::invalid("train", format!("unknown model `{name}` (mlp, perceptron, lenet5, alexnet, resnet, vit)"))
        })
    }

    /// The name used on the command line and in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::Perceptron => "perceptron",
            ModelKind::LeNet5 => "lenet5",
            ModelKind::AlexNet => "alexnet",
            ModelKind::ResNet => "resnet",
            ModelKind::Vit => "vit",
        }
    }

    /// Whether the model takes images `[N, C, S, S]` rather than flat pixels `[N, C·S·S]`.
    pub fn takes_images(self) -> bool {
        matches!(self, ModelKind::LeNet5 | ModelKind::AlexNet | ModelKind::ResNet | ModelKind::Vit)
    }

    /// A freshly initialised model for `classes`-class images of `geometry`, with dropout `p`
    /// between the MLP's hidden layers and batch norm (ResNet) set by `bn`.
    pub fn build(
        self,
        geometry: Geometry,
        classes: usize,
        dropout: f64,
        bn: BatchNormOptions,
        device: &Device,
        rng: &mut Generator,
    ) -> Result<Box<dyn Module>> {
        let Geometry { channels: c, size: s } = geometry;
        let k = classes;
        Ok(match self {
            ModelKind::Mlp => {
                Box::new(Mlp::new(&[geometry.pixels(), 512, 512, k], Activation::Relu, dropout, device, rng)?)
            }
            ModelKind::Perceptron => Box::new(Mlp::new(&[geometry.pixels(), k], Activation::Relu, 0.0, device, rng)?),
            ModelKind::LeNet5 => Box::new(ConvNet::lenet5(c, s, k, device, rng)?),
            ModelKind::AlexNet => Box::new(ConvNet::alexnet(c, s, k, 32, device, rng)?),
            ModelKind::ResNet => Box::new(ResNet::with_batch_norm(c, k, 16, bn, device, rng)?),
            ModelKind::Vit => Box::new(Vit::new(VitConfig::small(c, s, k), device, rng)?),
        })
    }

    /// `data`'s examples in the layout the model takes: images `[N, C, S, S]` or flat rows.
    pub fn prepare(self, geometry: Geometry, data: &Dataset) -> Result<Dataset> {
        let Geometry { channels: c, size: s } = geometry;
        let shape = if self.takes_images() { vec![data.len(), c, s, s] } else { vec![data.len(), c * s * s] };
        Ok(Dataset { features: data.features.reshape(&shape)?, targets: data.targets.clone() })
    }
}

/// Which optimizer to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// SGD with momentum 0.9.
    Sgd,
    /// Adam.
    Adam,
    /// AdamW (weight decay 0.01).
    AdamW,
}

impl OptimizerKind {
    /// Parses `sgd`, `adam` or `adamw`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::AdamW),
            _ => Err(Error::invalid("train", format!("unknown optimizer `{name}` (sgd, adam, adamw)"))),
        }
    }

    /// The name used on the command line and in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
        }
    }

    fn build(self, params: Vec<Tensor>, lr: f64) -> Result<Box<dyn Optimizer>> {
        Ok(match self {
            OptimizerKind::Sgd => Box::new(Sgd::new(params, SgdConfig { momentum: 0.9, ..SgdConfig::new(lr) })?),
            OptimizerKind::Adam => Box::new(Adam::new(params, AdamConfig::adam(lr))?),
            OptimizerKind::AdamW => Box::new(Adam::new(params, AdamConfig::adamw(lr))?),
        })
    }
}

/// Everything `nabla train` takes.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// The network.
    pub model: ModelKind,
    /// Passes over the training split, in all (a resumed run continues up to this total).
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate (cosine-annealed to 0 over the run).
    pub lr: f64,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// Seeds initialisation, shuffling, augmentation and a folder data set's split.
    pub seed: u64,
    /// Where to train.
    pub device: Device,
    /// The data set.
    pub dataset: DataKind,
    /// The data set's folder (`None`: the shipped MNIST subset).
    pub data: Option<PathBuf>,
    /// Where checkpoint and history go.
    pub out_dir: PathBuf,
    /// A checkpoint to continue from.
    pub resume: Option<PathBuf>,
    /// Random shifts of up to this many pixels (0 disables them; less than the image size).
    pub shift: usize,
    /// Random left-right flips; `None`: on for natural images, off for digits.
    pub flip: Option<bool>,
    /// Dropout probability between hidden layers, in [0, 1).
    pub dropout: f64,
    /// Channels of a folder data set's images (1 or 3; default 3).
    pub channels: Option<usize>,
    /// Side length a folder data set's images are resized to (default 32).
    pub image_size: Option<usize>,
    /// Batch norm's momentum and eps (the ResNet's layers).
    pub batch_norm: BatchNormOptions,
    /// Epochs of linear learning-rate warm-up before the cosine; `None`: 30% of the epochs for
    /// the ViT, 0 for the others.
    pub warmup: Option<usize>,
    /// What the run prints.
    pub report: Report,
    /// Check every step's loss, and every op's output and gradient, for non-finite values
    /// (slow: each op waits for its result), so a diverging run names the step and the op.
    pub detect_anomaly: bool,
    /// Mixed precision: the products (linear, conv2d, attention) in bf16 or f16 with f32
    /// master weights and optimizer state ([`crate::amp`]); f16 adds dynamic loss scaling.
    pub precision: Precision,
    /// Capture the training step as a CUDA graph after one eager step and replay it for every
    /// batch of that shape (`captured.rs`): the same run, with one launch per step. CUDA
    /// devices; models without dropout or batch norm; not with f16's loss scaling or
    /// `detect_anomaly`, which read the device every step.
    pub cuda_graph: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: ModelKind::Mlp,
            epochs: 20,
            batch_size: 64,
            lr: 2e-3,
            optimizer: OptimizerKind::Adam,
            seed: 0,
            device: Device::Cpu,
            dataset: DataKind::Mnist,
            data: None,
            out_dir: PathBuf::from("runs/mnist"),
            resume: None,
            shift: 2,
            flip: None,
            dropout: 0.0,
            channels: None,
            image_size: None,
            batch_norm: BatchNormOptions::default(),
            warmup: None,
            report: Report::Silent,
            detect_anomaly: false,
            precision: Precision::F32,
            cuda_graph: false,
        }
    }
}

impl TrainConfig {
    /// The images' geometry for this data set and these options.
    pub fn geometry(&self) -> Result<Geometry> {
        self.dataset.geometry(self.channels, self.image_size)
    }

    /// Epochs of warm-up: as set, else 30% of the epochs for the ViT (rounded up, as PyTorch's
    /// one-cycle schedule) and none for the others.
    pub fn warmup_epochs(&self) -> usize {
        self.warmup.unwrap_or(if self.model == ModelKind::Vit { (3 * self.epochs).div_ceil(10) } else { 0 })
    }

    /// Whether batches are flipped left-right.
    pub fn flips(&self) -> bool {
        self.flip.unwrap_or_else(|| self.dataset.flips_by_default())
    }

    /// Checks every setting once, so the API and the CLI refuse the same things.
    pub fn validate(&self) -> Result<Geometry> {
        let bad = |detail: String| Err(Error::invalid("train", detail));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("the batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("the learning rate must be finite and > 0, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        self.batch_norm.validate()?;
        if self.cuda_graph {
            let refuse = |why: &str| bad(format!("--cuda-graph: {why}"));
            if !self.device.is_cuda() {
                return refuse(&format!("a CUDA graph needs a CUDA device, got {}", self.device));
            }
            if matches!(self.model, ModelKind::AlexNet | ModelKind::ResNet) || self.dropout > 0.0 {
                return refuse(&format!(
                    "{} has dropout or batch norm, whose masks and running statistics change every step \
                     outside the optimizer (mlp, perceptron, lenet5 and vit can be captured, without --dropout)",
                    self.model.name()
                ));
            }
            if self.precision == Precision::F16 {
                return refuse(
                    "f16's loss scaling reads the gradients' overflow flag on the host every step; use bf16",
                );
            }
            if self.detect_anomaly {
                return refuse("--detect-anomaly reads every op's output on the host");
            }
        }
        let geometry = self.geometry()?;
        if self.shift >= geometry.size {
            return bad(format!(
                "a shift of {} pixels must be smaller than the {}-pixel image",
                self.shift, geometry.size
            ));
        }
        Ok(geometry)
    }
}

/// One epoch's numbers, as `history.json` stores them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochSummary {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss (cross-entropy in nats).
    pub train_loss: f64,
    /// Training accuracy over the epoch's batches (as the model was at each step).
    #[serde(default)]
    pub train_accuracy: Option<f64>,
    /// Validation loss.
    #[serde(default)]
    pub val_loss: Option<f64>,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Wall time of the epoch.
    pub seconds: f64,
}

/// What a training run produced.
pub struct TrainOutcome {
    /// The trained model.
    pub model: Box<dyn Module>,
    /// Every epoch so far (including resumed ones).
    pub history: Vec<EpochSummary>,
    /// Accuracy on the test split.
    pub test_accuracy: f64,
    /// The checkpoint written.
    pub checkpoint: PathBuf,
    /// The class names, in label order.
    pub class_names: Vec<String>,
    /// Epochs trained by this call (0 when a resumed run was already complete).
    pub epochs_trained: usize,
}

/// Accuracy of `model` over `data` in batches (evaluation mode, no graph).
pub fn evaluate(model: &dyn Module, data: &Dataset) -> Result<f64> {
    let scores = predict(model, data)?;
    metrics::accuracy(&scores, &data.targets)
}

/// Mean cross-entropy and accuracy of `model` over `data` (evaluation mode, no graph).
pub fn evaluate_loss(model: &dyn Module, data: &Dataset) -> Result<(f64, f64)> {
    let scores = predict(model, data)?;
    let loss =
        if data.is_empty() { f64::NAN } else { crate::no_grad(|| scores.cross_entropy(&data.targets))?.to_scalar()? };
    Ok((loss, metrics::accuracy(&scores, &data.targets)?))
}

/// The model's scores for every example, batched, without recording a graph.
pub fn predict(model: &dyn Module, data: &Dataset) -> Result<Tensor> {
    let _guard = crate::NoGradGuard::new();
    let mut parts = Vec::new();
    let n = data.len();
    let mut start = 0;
    while start < n {
        let len = 1000.min(n - start);
        parts.push(model.forward(&data.features.narrow(0, start, len)?)?);
        start += len;
    }
    let refs: Vec<&Tensor> = parts.iter().collect();
    Tensor::cat(&refs, 0)
}

/// Runs the whole training: resumes if asked, trains the remaining epochs, checkpoints after
/// every epoch, and measures test accuracy at the end.
pub fn train(config: &TrainConfig) -> Result<TrainOutcome> {
    train_with(config, |_| true)
}

/// [`train`], calling `keep_going` after every epoch (once its checkpoint is written): a
/// `false` stops the run there (early stopping, or an interruption to resume later).
pub fn train_with(config: &TrainConfig, mut keep_going: impl FnMut(&EpochSummary) -> bool) -> Result<TrainOutcome> {
    let geometry = config.validate()?;
    let settings = RunSettings::of(config, geometry);
    // Anomaly detection for this run only, switched off however it ends.
    struct AnomalyMode;
    impl Drop for AnomalyMode {
        fn drop(&mut self) {
            crate::set_detect_anomaly(false);
        }
    }
    let _anomaly = config.detect_anomaly.then(|| {
        crate::set_detect_anomaly(true);
        AnomalyMode
    });
    let resumed = config.resume.as_deref().map(|path| open_run(path, config, &settings)).transpose()?;
    let device = config.device;
    let splits = config.dataset.splits(config.data.as_deref(), geometry, config.seed, &device)?;
    let classes = splits.classes();
    if config.report != Report::Silent {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stdout(),
            "data: {} classes, {} train / {} validation / {} test images of {}x{}x{}, shifts up to {} px, flips {}",
            classes,
            splits.train.len(),
            splits.val.len(),
            splits.test.len(),
            geometry.channels,
            geometry.size,
            geometry.size,
            config.shift,
            if config.flips() { "on" } else { "off" }
        );
    }
    let prepare = |d: &Dataset| config.model.prepare(geometry, d);
    let (train_set, val_set, test_set) = (prepare(&splits.train)?, prepare(&splits.val)?, prepare(&splits.test)?);
    let mut rng = Generator::new(config.seed);
    let mut model = config.model.build(geometry, classes, config.dropout, config.batch_norm, &device, &mut rng)?;
    let checkpoint = config.out_dir.join(run::CHECKPOINT);
    let mut history = Vec::new();
    let mut optimizer = config.optimizer.build(model.parameters(), config.lr)?;
    // f16 products need the loss scaled up so small gradients survive them.
    let mut scaler = config.precision.needs_loss_scaling().then(GradScaler::default);
    if let Some((saved, run)) = resumed {
        load_into_module(&saved, model.as_ref())?;
        if let Some(state) = &run.optimizer_state {
            run::load_optimizer(state, optimizer.as_mut(), model.as_ref())?;
            if let Some(scaler) = scaler.as_mut() {
                run::load_scaler(state, scaler)?;
            }
        }
        history = run.history;
    }
    let first_epoch = history.len();
    // Each epoch's shuffle, augmentation and dropout masks come from its own seed, so a resumed
    // run sees the same batches and masks as an uninterrupted one.
    let steps_per_epoch = train_set.len().div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;
    // A linear warm-up (transformers need one), then cosine annealing to 0 over the rest.
    let warmup = (config.warmup_epochs() * steps_per_epoch).min(total_steps);
    let schedule = crate::optim::WarmupLr {
        warmup,
        after: crate::optim::CosineLr { base: config.lr, min: 0.0, total: total_steps - warmup },
    };
    std::fs::create_dir_all(&config.out_dir)
        .map_err(|source| Error::Io { path: config.out_dir.display().to_string(), source })?;
    run::remove_temporary_files(&checkpoint);
    if config.resume.as_deref().map(run::checkpoint_in) == Some(checkpoint.clone()) {
        // The history beside the checkpoint may lag it after a crash: the checkpoint's is the truth.
        run::write_history(&checkpoint, &history)?;
    }
    let flip = config.flips();
    let mut captured_step = config.cuda_graph.then(|| captured::TrainingStep::new(device, config.precision));

    for epoch in first_epoch..config.epochs {
        let started = Instant::now();
        let epoch_seed = config.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64);
        model.reseed(epoch_seed);
        let mut loader = DataLoader::new(train_set.clone(), config.batch_size)?.shuffle(epoch_seed);
        let mut augment = Generator::new(epoch_seed ^ 0xa5a5_a5a5);
        let batches = loader.epoch()?;
        // Each step's loss and the hits, kept on the device and read once at the end of the epoch.
        let losses = Tensor::zeros(&[batches.len()], DType::F32, &device)?;
        let mut correct = Tensor::zeros(&[], DType::F32, &device)?;
        let mut progress = Progress::new(config.report, epoch + 1, config.epochs, batches.len());
        for (i, batch) in batches.iter().enumerate() {
            optimizer.set_lr(schedule.lr(epoch * steps_per_epoch + i));
            let x =
                DataKind::augment(geometry, &batch.features, config.shift, flip, &mut augment)?.to_device(&device)?;
            let y = batch.targets.to_device(&device)?;
            let (scores, loss) = match captured_step.as_mut() {
                Some(step) => step.run(model.as_ref(), optimizer.as_mut(), &x, &y)?,
                None => {
                    let scores = config.precision.run(|| model.forward(&x))?;
                    let loss = scores.cross_entropy(&y)?;
                    if config.detect_anomaly {
                        let value = loss.to_scalar::<f64>()?;
                        if !value.is_finite() {
                            let culprit = crate::take_anomaly().unwrap_or_else(|| "no op output was non-finite".into());
                            return Err(diverged(epoch, i, steps_per_epoch, value, culprit));
                        }
                    }
                    optimizer.zero_grad();
                    match scaler.as_mut() {
                        Some(scaler) => {
                            scaler.scale_loss(&loss)?.backward()?;
                            scaler.step(optimizer.as_mut())?;
                        }
                        None => {
                            loss.backward()?;
                            optimizer.step()?;
                        }
                    }
                    (scores, loss)
                }
            };
            crate::no_grad(|| -> Result<()> {
                losses.narrow(0, i, 1)?.copy_(&loss.detach().reshape(&[1])?)?;
                let hits = scores.detach().argmax(-1, false)?.eq(&y)?.to_dtype(DType::F32)?.sum_all()?;
                correct = correct.add(&hits)?;
                Ok(())
            })?;
            progress.step(&loss)?;
        }
        let losses = losses.to_vec::<f64>()?;
        if let Some(step) = losses.iter().position(|l| !l.is_finite()) {
            let kept = if history.is_empty() {
                "no epoch finished, so nothing was saved".to_string()
            } else {
                format!("{} keeps epoch {}", checkpoint.display(), history.len())
            };
            let advice = format!("try a lower --lr, or --detect-anomaly to name the op; {kept}");
            return Err(diverged(epoch, step, steps_per_epoch, losses[step], advice));
        }
        let train_loss = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
        let train_accuracy = correct.to_scalar::<f64>()? / train_set.len().max(1) as f64;
        model.set_training(false);
        let (val_loss, val_accuracy) = config.precision.run(|| evaluate_loss(model.as_ref(), &val_set))?;
        model.set_training(true);
        let summary = EpochSummary {
            epoch: epoch + 1,
            train_loss,
            train_accuracy: Some(train_accuracy),
            val_loss: val_loss.is_finite().then_some(val_loss),
            val_accuracy,
            seconds: started.elapsed().as_secs_f64(),
        };
        progress.finish(&summary);
        history.push(summary.clone());
        let metadata = RunMetadata {
            model: config.model,
            dataset: config.dataset,
            geometry,
            class_names: splits.class_names.clone(),
            seed: config.seed,
            dropout: config.dropout,
            batch_norm: config.batch_norm,
        }
        .to_strings(model_classes(model.as_ref()), history.len());
        let saved = run::Saved { model: model.as_ref(), optimizer: optimizer.as_ref(), scaler: scaler.as_ref() };
        run::commit_epoch(&checkpoint, &settings, metadata, saved, &history)?;
        if !keep_going(&summary) {
            break;
        }
    }
    model.set_training(false);
    let test_accuracy = config.precision.run(|| evaluate(model.as_ref(), &test_set))?;
    let epochs_trained = history.len() - first_epoch;
    Ok(TrainOutcome { model, history, test_accuracy, checkpoint, class_names: splits.class_names, epochs_trained })
}

/// The error of a run whose loss at `step` (0-based) of `epoch` (0-based) is `value`.
fn diverged(epoch: usize, step: usize, steps_per_epoch: usize, value: f64, detail: String) -> Error {
    Error::invalid(
        "train",
        format!(
            "training diverged at step {} of epoch {} (step {} of the run): the loss is {value}; {detail}",
            step + 1,
            epoch + 1,
            epoch * steps_per_epoch + step + 1
        ),
    )
}

/// Opens the run a configuration resumes: its checkpoint and recorded run, after checking that
/// the configuration asks for the same settings (a resumed run keeps its own).
fn open_run(path: &Path, config: &TrainConfig, settings: &RunSettings) -> Result<(safetensors::Checkpoint, SavedRun)> {
    let path = run::checkpoint_in(path);
    let saved = safetensors::load(&path)?;
    if saved.metadata.get("model").map(String::as_str) != Some(config.model.name()) {
        return Err(Error::invalid(
            "resume",
            format!("{} is not a `{}` checkpoint", path.display(), config.model.name()),
        ));
    }
    let run = SavedRun::read(&path, &saved)?;
    if let Some(recorded) = &run.settings {
        let changed = recorded.differences(settings);
        if !changed.is_empty() {
            return Err(Error::invalid(
                "resume",
                format!(
                    "{} continues with its own settings, but this asks for {}: leave those out, or start a new run",
                    path.display(),
                    changed.join(", ")
                ),
            ));
        }
    }
    Ok((saved, run))
}

/// The number of outputs of a classifier: the length of its last parameter (the final bias).
fn model_classes(model: &dyn Module) -> usize {
    model.named_parameters().last().map_or(0, |(_, t)| t.numel())
}

/// What a checkpoint written by `nabla train` says about its model and data, in its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct RunMetadata {
    /// The network.
    pub model: ModelKind,
    /// The data set it was trained on.
    pub dataset: DataKind,
    /// Its images' geometry.
    pub geometry: Geometry,
    /// Its class names, in label order.
    pub class_names: Vec<String>,
    /// The run's seed (which also fixed a folder data set's split).
    pub seed: u64,
    /// Dropout between the MLP's hidden layers.
    pub dropout: f64,
    /// Batch norm's settings.
    pub batch_norm: BatchNormOptions,
}

impl RunMetadata {
    fn to_strings(&self, classes: usize, epochs_done: usize) -> BTreeMap<String, String> {
        let names = serde_json::to_string(&self.class_names).unwrap_or_else(|_| "[]".into());
        BTreeMap::from([
            ("model".to_string(), self.model.name().to_string()),
            ("dataset".to_string(), self.dataset.name().to_string()),
            ("classes".to_string(), classes.to_string()),
            ("class_names".to_string(), names),
            ("channels".to_string(), self.geometry.channels.to_string()),
            ("image_size".to_string(), self.geometry.size.to_string()),
            ("epochs_done".to_string(), epochs_done.to_string()),
            ("seed".to_string(), self.seed.to_string()),
            ("dropout".to_string(), self.dropout.to_string()),
            ("bn_momentum".to_string(), self.batch_norm.momentum.to_string()),
            ("bn_eps".to_string(), self.batch_norm.eps.to_string()),
            ("format".to_string(), "pt".to_string()),
        ])
    }

    /// Reads the metadata of a checkpoint written by `nabla train` (older ones lack some keys:
    /// those take the defaults of their time). `what` names the file in errors. Every number is
    /// checked before a model is built from it.
    pub fn parse(what: &str, metadata: &BTreeMap<String, String>) -> Result<RunMetadata> {
        let bad = |detail: String| Error::invalid("checkpoint", format!("{what}: {detail}"));
        let model = metadata
            .get("model")
            .ok_or_else(|| bad("no `model` metadata (not written by nabla train; pass --model NAME)".into()))?;
        let model = ModelKind::parse(model)?;
        let dataset = DataKind::parse(metadata.get("dataset").map_or("mnist", String::as_str))?;
        let number = |key: &str| -> Result<Option<f64>> {
            metadata
                .get(key)
                .map(|v| {
                    v.parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| bad(format!("`{key}` is `{v}`")))
                })
                .transpose()
        };
        let whole = |key: &str, range: std::ops::RangeInclusive<f64>| -> Result<Option<usize>> {
            match number(key)? {
                Some(v) if v.fract() == 0.0 && range.contains(&v) => Ok(Some(v as usize)),
                Some(v) => Err(bad(format!("`{key}` is {v}, outside {range:?}"))),
                None => Ok(None),
            }
        };
        let geometry = dataset.geometry(whole("channels", 1.0..=3.0)?, whole("image_size", 8.0..=512.0)?)?;
        let classes = whole("classes", 1.0..=100_000.0)?;
        let class_names: Vec<String> = match metadata.get("class_names") {
            Some(text) => serde_json::from_str(text).map_err(|e| bad(format!("`class_names` is not a list: {e}")))?,
            None => (0..classes.unwrap_or(10)).map(|c| c.to_string()).collect(),
        };
        if classes.is_some_and(|c| c != class_names.len()) || class_names.is_empty() {
            return Err(bad(format!("{} class names for {classes:?} classes", class_names.len())));
        }
        let dropout = number("dropout")?.unwrap_or(0.0);
        let defaults = BatchNormOptions::default();
        let batch_norm = BatchNormOptions {
            momentum: number("bn_momentum")?.unwrap_or(defaults.momentum),
            eps: number("bn_eps")?.unwrap_or(defaults.eps),
        }
        .validate()?;
        let seed = metadata.get("seed").and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(RunMetadata { model, dataset, geometry, class_names, seed, dropout, batch_norm })
    }
}

/// A trained model loaded from a safetensors file, in evaluation mode, with what is known of it.
pub struct Trained {
    /// The model and data it was trained on (from the metadata, or from the hints and shapes).
    pub meta: RunMetadata,
    /// The model, its weights loaded.
    pub model: Box<dyn Module>,
}

/// Loads a checkpoint written by `nabla train`, or a plain PyTorch `state_dict` saved with
/// safetensors (no nabla metadata: then `model` must name the architecture, `dataset` defaults
/// to MNIST, and the number of classes comes from the last layer's shape). A `model` hint that
/// contradicts the file's metadata is an error.
pub fn load_trained(
    path: &Path,
    device: &Device,
    model: Option<ModelKind>,
    dataset: Option<DataKind>,
) -> Result<Trained> {
    let saved = safetensors::load(path)?;
    let what = path.display().to_string();
    let meta = if saved.metadata.contains_key("model") {
        let meta = RunMetadata::parse(&what, &saved.metadata)?;
        if let Some(hint) = model.filter(|m| *m != meta.model) {
            return Err(Error::invalid(
                "load",
                format!("{what} holds a `{}` model, not `{}`", meta.model.name(), hint.name()),
            ));
        }
        meta
    } else {
        let model = model.ok_or_else(|| {
            Error::invalid("load", format!("{what} has no nabla metadata: say which model it holds with --model NAME"))
        })?;
        let dataset = dataset.unwrap_or(DataKind::Mnist);
        // The classifier's last bias (or weight) gives the number of classes.
        let last = saved
            .tensors
            .iter()
            .filter(|(name, t)| name.ends_with(".bias") && t.rank() == 1)
            .map(|(name, t)| (name.clone(), t.shape()[0]))
            .max_by_key(|(name, _)| classifier_rank(name))
            .ok_or_else(|| Error::invalid("load", format!("{what}: no layer bias gives the number of classes")))?;
        let classes = last.1;
        if classes == 0 || classes > 100_000 {
            return Err(Error::invalid("load", format!("{what}: `{}` says {classes} classes", last.0)));
        }
        RunMetadata {
            model,
            dataset,
            geometry: dataset.geometry(None, None)?,
            class_names: (0..classes).map(|c| c.to_string()).collect(),
            seed: 0,
            dropout: 0.0,
            batch_norm: BatchNormOptions::default(),
        }
    };
    let classes = meta.class_names.len();
    // `RunMetadata::parse` bounded the sizes, so building is cheap; the weights' shapes are then
    // checked one by one against the model's.
    let mut built =
        meta.model.build(meta.geometry, classes, meta.dropout, meta.batch_norm, device, &mut Generator::new(0))?;
    load_into_module(&saved, built.as_ref())?;
    built.set_training(false);
    Ok(Trained { meta, model: built })
}

/// Orders bias names so the classifier's comes last: torchvision's `fc`, then the highest
/// numbered `classifier.N`/`layers.N`.
fn classifier_rank(name: &str) -> (u8, usize) {
    let index = name.split('.').filter_map(|p| p.parse::<usize>().ok()).next_back().unwrap_or(0);
    let top = if name.starts_with("fc.") {
        2
    } else if name.starts_with("classifier.") || name.starts_with("layers.") {
        1
    } else {
        0
    };
    (top, index)
}
