//! The training driver behind `nabla train`: a model, an optimizer and a data loader, one
//! summary per epoch, checkpoints and a metric history written atomically, and resumption.

use crate::data::augment::random_crop_flip;
use crate::data::{DataLoader, Dataset, mnist};
use crate::io::json::Json;
use crate::io::{load_into_module, safetensors, save_module};
use crate::metrics;
use crate::nn::{Activation, ConvNet, Mlp, Module, ResNet};
use crate::optim::{Adam, AdamConfig, LrSchedule, Optimizer, Sgd, SgdConfig};
use crate::{DType, Device, Error, Generator, Result, Tensor};
use std::collections::BTreeMap;
use std::io::Write;
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
}

impl ModelKind {
    /// Every model, in the order `nabla help` lists them.
    pub const ALL: [ModelKind; 5] =
        [ModelKind::Mlp, ModelKind::Perceptron, ModelKind::LeNet5, ModelKind::AlexNet, ModelKind::ResNet];

    /// Parses a model name (`mlp`, `perceptron`, `lenet5`, `alexnet`, `resnet`).
    pub fn parse(name: &str) -> Result<Self> {
        ModelKind::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
            Error::invalid("train", format!("unknown model `{name}` (mlp, perceptron, lenet5, alexnet, resnet)"))
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
        }
    }

    /// Whether the model takes images `[N, C, S, S]` rather than flat pixels `[N, C·S·S]`.
    pub fn takes_images(self) -> bool {
        matches!(self, ModelKind::LeNet5 | ModelKind::AlexNet | ModelKind::ResNet)
    }

    /// A freshly initialised model for `classes`-class images of `data`, with dropout `p`
    /// between the MLP's hidden layers.
    pub fn build(
        self,
        data: DataKind,
        classes: usize,
        dropout: f64,
        device: &Device,
        rng: &mut Generator,
    ) -> Result<Box<dyn Module>> {
        let (c, s) = data.image();
        let k = classes;
        Ok(match self {
            ModelKind::Mlp => Box::new(Mlp::new(&[c * s * s, 512, 512, k], Activation::Relu, dropout, device, rng)?),
            ModelKind::Perceptron => Box::new(Mlp::new(&[c * s * s, k], Activation::Relu, 0.0, device, rng)?),
            ModelKind::LeNet5 => Box::new(ConvNet::lenet5(c, s, k, device, rng)?),
            ModelKind::AlexNet => Box::new(ConvNet::alexnet(c, s, k, 32, device, rng)?),
            ModelKind::ResNet => Box::new(ResNet::new(c, k, 16, device, rng)?),
        })
    }

    /// `data`'s examples in the layout the model takes: images `[N, C, S, S]` or flat rows.
    pub fn prepare(self, kind: DataKind, data: &Dataset) -> Result<Dataset> {
        let (c, s) = kind.image();
        let shape = if self.takes_images() { vec![data.len(), c, s, s] } else { vec![data.len(), c * s * s] };
        Ok(Dataset { features: data.features.reshape(&shape)?, targets: data.targets.clone() })
    }
}

/// Which data set to train on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// MNIST digits, 1x28x28 (the shipped subset unless a folder is given).
    Mnist,
    /// CIFAR-10 colour images, 3x32x32, from a folder of the binary files.
    Cifar10,
    /// Your own images: one sub-folder per class of PNG/JPEG files, resized to 3x32x32, split
    /// (after a fixed shuffle) 80% train, 10% validation, 10% test.
    Folder,
}

/// The three splits of a data set, and its number of classes.
pub struct Splits {
    /// Training examples, on the host.
    pub train: Dataset,
    /// Validation examples, on the device.
    pub val: Dataset,
    /// Test examples, on the device.
    pub test: Dataset,
    /// The number of classes.
    pub classes: usize,
}

impl DataKind {
    /// Parses `mnist`, `cifar10` or `folder`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "mnist" => Ok(DataKind::Mnist),
            "cifar10" => Ok(DataKind::Cifar10),
            "folder" => Ok(DataKind::Folder),
            _ => Err(Error::invalid("train", format!("unknown dataset `{name}` (mnist, cifar10, folder)"))),
        }
    }

    /// The name used on the command line and in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            DataKind::Mnist => "mnist",
            DataKind::Cifar10 => "cifar10",
            DataKind::Folder => "folder",
        }
    }

    /// (channels, side) of the images.
    pub fn image(self) -> (usize, usize) {
        match self {
            DataKind::Mnist => (1, 28),
            DataKind::Cifar10 | DataKind::Folder => (3, 32),
        }
    }

    /// Train (on the host), validation (the training file's last 10%) and test splits, the
    /// evaluation splits on `device`.
    pub fn splits(self, dir: Option<&Path>, device: &Device) -> Result<Splits> {
        let (train, test, classes) = match (self, dir) {
            (DataKind::Folder, Some(dir)) => {
                let (all, names) = crate::io::image::load_image_folder(dir, 32, 3, &Device::Cpu)?;
                // Folders are read class by class: shuffle (fixed seed) before cutting the splits.
                let mut order: Vec<usize> = (0..all.len()).collect();
                Generator::new(0).shuffle(&mut order);
                let (rest, test) = all.select(&order)?.split(0.1)?;
                (rest, test, names.len())
            }
            (DataKind::Folder, None) => {
                return Err(Error::invalid("train", "folder needs --data DIR (one sub-folder per class)"));
            }
            (kind, dir) => {
                let (train, test) = kind.train_test(dir)?;
                (train, test, 10)
            }
        };
        let (train, val) = train.split(0.1)?;
        Ok(Splits { train, val: val.to_device(device)?, test: test.to_device(device)?, classes })
    }

    fn train_test(self, dir: Option<&Path>) -> Result<(Dataset, Dataset)> {
        Ok(match (self, dir) {
            (DataKind::Mnist, Some(dir)) => {
                (mnist::load(dir, "train", &Device::Cpu)?, mnist::load(dir, "t10k", &Device::Cpu)?)
            }
            (DataKind::Mnist, None) => (mnist::shipped("train", &Device::Cpu)?, mnist::shipped("t10k", &Device::Cpu)?),
            (DataKind::Cifar10, Some(dir)) => crate::data::cifar::load_dir(dir, &Device::Cpu)?,
            (DataKind::Cifar10, None) => {
                return Err(Error::invalid("train", "cifar10 needs --data DIR (the binary version's folder)"));
            }
            (DataKind::Folder, _) => unreachable!("folders are split by `splits`"),
        })
    }

    /// Random shifts of up to `shift` pixels, and left-right flips for natural images (not for
    /// digits). On the host, seeded.
    fn augment(self, batch: &Tensor, shift: usize, rng: &mut Generator) -> Result<Tensor> {
        let flip = self != DataKind::Mnist;
        if shift == 0 && !flip {
            return Ok(batch.clone());
        }
        let (c, s) = self.image();
        let images = batch.reshape(&[batch.shape()[0], c, s, s])?;
        random_crop_flip(&images, shift, flip, rng)?.reshape(batch.shape())
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
    /// Passes over the training split.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate (cosine-annealed to 0 over the run).
    pub lr: f64,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// Seeds initialisation, shuffling and augmentation.
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
    /// Random shifts of up to this many pixels (0 disables augmentation).
    pub shift: usize,
    /// Dropout probability between hidden layers.
    pub dropout: f64,
    /// Print a progress bar and epoch lines.
    pub verbose: bool,
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
            dropout: 0.0,
            verbose: false,
        }
    }
}

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochSummary {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
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
}

/// Accuracy of `model` over `data` in batches (evaluation mode, no graph).
pub fn evaluate(model: &dyn Module, data: &Dataset) -> Result<f64> {
    let scores = predict(model, data)?;
    metrics::accuracy(&scores, &data.targets)
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
    let device = config.device;
    let kind = config.dataset;
    let Splits { train: train_set, val: val_set, test: test_set, classes } =
        kind.splits(config.data.as_deref(), &device)?;
    let prepare = |d: &Dataset| config.model.prepare(kind, d);
    let (train_set, val_set, test_set) = (prepare(&train_set)?, prepare(&val_set)?, prepare(&test_set)?);
    let mut rng = Generator::new(config.seed);
    let mut model = config.model.build(kind, classes, config.dropout, &device, &mut rng)?;
    let mut history = Vec::new();
    let mut first_epoch = 0;
    if let Some(path) = &config.resume {
        let checkpoint = safetensors::load(path)?;
        if checkpoint.metadata.get("model").map(String::as_str) != Some(config.model.name()) {
            return Err(Error::invalid(
                "resume",
                format!("{} is not a `{}` checkpoint", path.display(), config.model.name()),
            ));
        }
        load_into_module(&checkpoint, model.as_ref())?;
        history = read_history(&history_path(path))?;
        first_epoch = history.len();
    }
    let mut optimizer = config.optimizer.build(model.parameters(), config.lr)?;
    if let Some(path) = &config.resume {
        let state_path = optimizer_path(path);
        if state_path.exists() {
            load_optimizer(&safetensors::load(&state_path)?, optimizer.as_mut(), model.as_ref())?;
        }
    }
    // Each epoch's shuffle and augmentation come from its own seed, so a resumed run sees
    // the same batches as an uninterrupted one.
    let steps_per_epoch = train_set.len().div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;
    let schedule = crate::optim::CosineLr { base: config.lr, min: 0.0, total: total_steps };
    std::fs::create_dir_all(&config.out_dir)
        .map_err(|source| Error::Io { path: config.out_dir.display().to_string(), source })?;
    let checkpoint = config.out_dir.join("checkpoint.safetensors");

    for epoch in first_epoch..config.epochs {
        let started = Instant::now();
        let epoch_seed = config.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64);
        let mut loader = DataLoader::new(train_set.clone(), config.batch_size)?.shuffle(epoch_seed);
        let mut augment = Generator::new(epoch_seed ^ 0xa5a5_a5a5);
        let batches = loader.epoch()?;
        let mut loss_sum = Tensor::zeros(&[], DType::F32, &device)?;
        let mut progress = Progress::new(config.verbose, epoch + 1, config.epochs, batches.len());
        for (i, batch) in batches.iter().enumerate() {
            optimizer.set_lr(schedule.lr(epoch * steps_per_epoch + i));
            let x = kind.augment(&batch.features, config.shift, &mut augment)?.to_device(&device)?;
            let y = batch.targets.to_device(&device)?;
            let loss = model.forward(&x)?.cross_entropy(&y)?;
            optimizer.zero_grad();
            loss.backward()?;
            optimizer.step()?;
            loss_sum = crate::no_grad(|| loss_sum.add(&loss.detach()))?;
            progress.step(i + 1, &loss)?;
        }
        let train_loss = loss_sum.to_scalar::<f64>()? / batches.len().max(1) as f64;
        model.set_training(false);
        let val_accuracy = evaluate(model.as_ref(), &val_set)?;
        model.set_training(true);
        let summary =
            EpochSummary { epoch: epoch + 1, train_loss, val_accuracy, seconds: started.elapsed().as_secs_f64() };
        progress.finish(&summary);
        history.push(summary.clone());
        save_run(config, &checkpoint, model.as_ref(), optimizer.as_ref(), &history)?;
        if !keep_going(&summary) {
            break;
        }
    }
    model.set_training(false);
    let test_accuracy = evaluate(model.as_ref(), &test_set)?;
    Ok(TrainOutcome { model, history, test_accuracy, checkpoint })
}

/// The number of outputs of a classifier: the length of its last parameter (the final bias).
fn model_classes(model: &dyn Module) -> usize {
    model.named_parameters().last().map_or(0, |(_, t)| t.numel())
}

/// The metric history beside a checkpoint.
pub fn history_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_file_name("history.json")
}

fn optimizer_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_file_name("optimizer.safetensors")
}

fn save_run(
    config: &TrainConfig,
    checkpoint: &Path,
    model: &dyn Module,
    optimizer: &dyn Optimizer,
    history: &[EpochSummary],
) -> Result<()> {
    let metadata = BTreeMap::from([
        ("model".to_string(), config.model.name().to_string()),
        ("dataset".to_string(), config.dataset.name().to_string()),
        ("classes".to_string(), model_classes(model).to_string()),
        ("epochs_done".to_string(), history.len().to_string()),
        ("seed".to_string(), config.seed.to_string()),
        ("dropout".to_string(), config.dropout.to_string()),
        ("format".to_string(), "pt".to_string()),
    ]);
    save_module(checkpoint, model, &metadata)?;
    safetensors::save(&optimizer_path(checkpoint), &optimizer_state(optimizer, model), &BTreeMap::new())?;
    let records: Vec<Json> = history
        .iter()
        .map(|h| {
            Json::Object(BTreeMap::from([
                ("epoch".to_string(), Json::Number(h.epoch as f64)),
                ("train_loss".to_string(), Json::Number(h.train_loss)),
                ("val_accuracy".to_string(), Json::Number(h.val_accuracy)),
                ("seconds".to_string(), Json::Number(h.seconds)),
            ]))
        })
        .collect();
    let text = Json::Array(records).to_string();
    let path = history_path(checkpoint);
    crate::io::write_atomically(&path, text.as_bytes())
        .map_err(|source| Error::Io { path: path.display().to_string(), source })
}

/// Reads a metric history written by a training run.
pub fn read_history(path: &Path) -> Result<Vec<EpochSummary>> {
    let text =
        std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    let bad = |detail: &str| Error::invalid("history", format!("{}: {detail}", path.display()));
    let json = Json::parse(&text).map_err(|e| bad(&e))?;
    let records = json.as_array().ok_or_else(|| bad("not a list of epochs"))?;
    records
        .iter()
        .map(|r| {
            let num = |k: &str| r.get(k).and_then(Json::as_f64).ok_or_else(|| bad(&format!("an epoch lacks `{k}`")));
            Ok(EpochSummary {
                epoch: num("epoch")? as usize,
                train_loss: num("train_loss")?,
                val_accuracy: num("val_accuracy")?,
                seconds: num("seconds")?,
            })
        })
        .collect()
}

fn optimizer_state(optimizer: &dyn Optimizer, model: &dyn Module) -> Vec<(String, Tensor)> {
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    optimizer.state().into_iter().filter_map(|(i, key, t)| names.get(i).map(|n| (format!("{n}.{key}"), t))).collect()
}

fn load_optimizer(
    checkpoint: &safetensors::Checkpoint,
    optimizer: &mut dyn Optimizer,
    model: &dyn Module,
) -> Result<()> {
    for (i, (name, _)) in model.named_parameters().iter().enumerate() {
        let prefix = format!("{name}.");
        let state: BTreeMap<String, Tensor> = checkpoint
            .tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|key| (key.to_string(), t.clone())))
            .collect();
        optimizer.set_state(i, &state)?;
    }
    Ok(())
}

/// A one-line progress bar on stderr: steps/s, the latest loss (read every few steps, the only
/// host synchronisation of a step), and the time left.
struct Progress {
    enabled: bool,
    epoch: usize,
    epochs: usize,
    total: usize,
    started: Instant,
    last_draw: Option<Instant>,
}

impl Progress {
    fn new(enabled: bool, epoch: usize, epochs: usize, total: usize) -> Self {
        Progress { enabled, epoch, epochs, total, started: Instant::now(), last_draw: None }
    }

    fn step(&mut self, done: usize, loss: &Tensor) -> Result<()> {
        if !self.enabled || (done != self.total && self.last_draw.is_some_and(|t| t.elapsed().as_millis() < 250)) {
            return Ok(());
        }
        self.last_draw = Some(Instant::now());
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = done as f64 / elapsed.max(1e-9);
        let eta = (self.total - done) as f64 / rate.max(1e-9);
        let width = 30;
        let filled = width * done / self.total.max(1);
        let bar: String = "=".repeat(filled) + &" ".repeat(width - filled);
        let loss = loss.to_scalar::<f64>()?;
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\repoch {}/{} [{bar}] {done}/{} {rate:.1} steps/s loss {loss:.4} ETA {eta:.0}s ",
            self.epoch, self.epochs, self.total
        );
        let _ = err.flush();
        Ok(())
    }

    fn finish(&self, s: &EpochSummary) {
        if self.enabled {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r{}\r", " ".repeat(100));
            let _ = writeln!(
                std::io::stdout(),
                "epoch {:>3}/{}  train loss {:.4}  val accuracy {:.2}%  {:.1}s",
                s.epoch,
                self.epochs,
                s.train_loss,
                100.0 * s.val_accuracy,
                s.seconds
            );
        }
    }
}
