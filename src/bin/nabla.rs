//! The `nabla` command line, on `clap`: `nabla <command> --help` lists every flag with its
//! default and range; `nabla completions SHELL` prints shell completions.

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use nabla::cuda::{self, kernels};
use nabla::io::image::Image;
use nabla::nn::BatchNormOptions;
use nabla::train::text::{Sampling, TextConfig};
use nabla::train::{self, DataKind, ModelKind, OptimizerKind, Report, TrainConfig};
use nabla::{DType, Device, Generator, Precision, Result, Tensor, metrics, vision, viz};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Tensors start on cache lines (see `nabla::cpu::CacheAligned`).
#[global_allocator]
static ALLOCATOR: nabla::cpu::CacheAligned = nabla::cpu::CacheAligned;

/// Prints a line to stdout, ignoring a closed pipe (`nabla eval ... | head` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A deep-learning framework whose GPU work runs on handwritten CUDA C kernels.
///
/// Trains and evaluates perceptrons, MLPs and convolutional networks on MNIST (a subset ships
/// with the binary), CIFAR-10 or folders of your own images, on a CUDA GPU when one is present.
#[derive(Parser)]
#[command(name = "nabla", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Threads for CPU ops (default: NABLA_NUM_THREADS, else the physical cores)
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network (the shipped MNIST subset unless --data) and write a checkpoint
    Train(Box<TrainArgs>),
    /// Top-1/top-5 error, per-class precision/recall/F1 and the confusion matrix on the test split
    Eval(EvalArgs),
    /// Each image's top classes with their probabilities
    Predict(PredictArgs),
    /// Apply a classic 3x3 image kernel, or your own, to a PNG/JPEG through conv2d
    Convolve(ConvolveArgs),
    /// Pictures: filters, feature maps, training curves, confusion matrices
    #[command(subcommand)]
    Viz(VizCommand),
    /// Devices, driver and NVRTC versions, and where each kernel module comes from
    Info,
    /// Run a small network's ops on a GPU and on the CPU reference and print the largest differences
    Check(CheckArgs),
    /// Continue a text with a trained gpt, streaming characters as they are drawn
    Generate(GenerateArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

/// The networks, as the command line names them.
#[derive(Clone, Copy, ValueEnum)]
enum ModelArg {
    /// 784-512-512-10 ReLU multilayer perceptron
    Mlp,
    /// One linear layer (the multi-class perceptron)
    Perceptron,
    /// LeNet-5
    Lenet5,
    /// An AlexNet-style network (five conv, three fully connected layers) at half width
    Alexnet,
    /// A small ResNet with batch norm (base width 16)
    Resnet,
    /// A small vision transformer (patches of a quarter of the side, width 64, 4 blocks of 4 heads)
    Vit,
    /// A character-level GPT on a text (the shipped plays unless --data FILE)
    Gpt,
}

/// The image model a `--model` names; `gpt` is a text model with commands of its own.
fn image_model(m: ModelArg) -> Result<ModelKind> {
    Ok(match m {
        ModelArg::Mlp => ModelKind::Mlp,
        ModelArg::Perceptron => ModelKind::Perceptron,
        ModelArg::Lenet5 => ModelKind::LeNet5,
        ModelArg::Alexnet => ModelKind::AlexNet,
        ModelArg::Resnet => ModelKind::ResNet,
        ModelArg::Vit => ModelKind::Vit,
        ModelArg::Gpt => {
            return Err(nabla::Error::invalid(
                "nabla",
                "a gpt is a text model: `eval --checkpoint F --text FILE` and `generate` take it",
            ));
        }
    })
}

/// nanoGPT's two recipes.
#[derive(Clone, Copy, ValueEnum)]
enum PresetArg {
    /// For a laptop CPU
    Cpu,
    /// For a GPU
    Gpu,
}

/// The data sets, as the command line names them.
#[derive(Clone, Copy, ValueEnum)]
enum DataArg {
    /// MNIST digits (1x28x28)
    Mnist,
    /// CIFAR-10, the binary version's folder (3x32x32)
    Cifar10,
    /// Your images: one sub-folder per class of PNG/JPEG files
    Folder,
}

impl From<DataArg> for DataKind {
    fn from(d: DataArg) -> Self {
        match d {
            DataArg::Mnist => DataKind::Mnist,
            DataArg::Cifar10 => DataKind::Cifar10,
            DataArg::Folder => DataKind::Folder,
        }
    }
}

/// The training precisions, as the command line names them.
#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    /// Everything in f32
    F32,
    /// Products (linear, conv2d, attention) in bf16, f32 weights and optimizer state
    Bf16,
    /// Products in f16 with dynamic loss scaling, f32 weights and optimizer state
    F16,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::F16 => Precision::F16,
        }
    }
}

/// The optimizers, as the command line names them.
#[derive(Clone, Copy, ValueEnum)]
enum OptimizerArg {
    /// SGD with momentum 0.9
    Sgd,
    /// Adam
    Adam,
    /// AdamW (weight decay 0.01)
    Adamw,
}

impl From<OptimizerArg> for OptimizerKind {
    fn from(o: OptimizerArg) -> Self {
        match o {
            OptimizerArg::Sgd => OptimizerKind::Sgd,
            OptimizerArg::Adam => OptimizerKind::Adam,
            OptimizerArg::Adamw => OptimizerKind::AdamW,
        }
    }
}

fn device(text: &str) -> std::result::Result<Device, String> {
    text.parse::<Device>().map_err(|e| e.to_string())
}

fn positive(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{text}` is not a finite number > 0")),
    }
}

fn probability(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{text}` is not a number in [0, 1)")),
    }
}

fn momentum(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("`{text}` is not a number in (0, 1]")),
    }
}

#[derive(Args)]
struct TrainArgs {
    /// The network
    #[arg(long, value_enum, default_value = "mlp")]
    model: ModelArg,
    /// The data set
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: DataArg,
    /// The data set's folder (MNIST IDX files, CIFAR-10 binaries, or a folder per class)
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Passes over the training split in all; a resumed run continues up to this total [1..]
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    epochs: u64,
    /// Examples per step [1..=65536] (default 64; gpt: the preset's)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    batch_size: Option<u64>,
    /// Peak learning rate, cosine-annealed over the run, > 0 (default 2e-3; gpt: the preset's)
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// The optimizer (default: adamw for vit, as ViTs are trained; adam for the others)
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    /// Seeds initialisation, shuffling, augmentation and a folder's split
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto (a GPU when present), cpu, cuda or cuda:N
    #[arg(long, default_value = "auto", value_parser = device)]
    device: Device,
    /// Where the checkpoint, optimizer state and history go (default: runs/<model>)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// A run to continue (its folder or checkpoint), with the settings it was started with:
    /// other flags may repeat them but not change them
    #[arg(long, value_name = "RUN")]
    resume: Option<PathBuf>,
    /// Random shifts of up to this many pixels (0: none; smaller than the image) [0..=64]
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=64))]
    shift: u64,
    /// No random left-right flips (they are on for CIFAR-10 and folders, off for digits)
    #[arg(long)]
    no_flip: bool,
    /// Dropout probability [0, 1): between the MLP's hidden layers; gpt: in its blocks
    /// (default 0; gpt: the preset's)
    #[arg(long, value_parser = probability)]
    dropout: Option<f64>,
    /// gpt: nanoGPT's recipe for a laptop (cpu: 4 layers, 4 heads, width 128, context 64,
    /// batch 12, 2000 steps) or a GPU (gpu: 6, 6, 384, 256, batch 64, dropout 0.2, 5000 steps)
    #[arg(long, value_enum, default_value = "cpu")]
    preset: PresetArg,
    /// gpt: transformer blocks [1..=96]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=96))]
    layers: Option<u64>,
    /// gpt: attention heads per block [1..=64]; width / heads must be 16, 32, 64 or 128 on a GPU
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    heads: Option<u64>,
    /// gpt: features per position [1..=8192]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=8192))]
    width: Option<u64>,
    /// gpt: characters per window [1..=8192]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=8192))]
    context: Option<u64>,
    /// gpt: optimizer steps in all [1..]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    steps: Option<u64>,
    /// gpt: report train and validation loss every this many steps [1..]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    eval_every: Option<u64>,
    /// A folder data set's image side in pixels [8..=512] (default 32)
    #[arg(long, value_name = "PIXELS", value_parser = clap::value_parser!(u64).range(8..=512))]
    image_size: Option<u64>,
    /// A folder data set's channels: 1 (grey) or 3 (RGB) (default 3)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3))]
    channels: Option<u64>,
    /// Epochs of linear learning-rate warm-up before the cosine (default: 30% of the epochs for vit, as a one-cycle schedule; else 0)
    #[arg(long, value_name = "EPOCHS", value_parser = clap::value_parser!(u64).range(0..=1000))]
    warmup: Option<u64>,
    /// Batch norm's momentum, the newest batch's weight in the running statistics (0, 1]
    #[arg(long, default_value_t = 0.1, value_parser = momentum)]
    bn_momentum: f64,
    /// Batch norm's eps, added to the variance (> 0)
    #[arg(long, default_value_t = 1e-5, value_parser = positive)]
    bn_eps: f64,
    /// Print only the final line (no progress bar, no line per epoch)
    #[arg(long, short)]
    quiet: bool,
    /// Check each step's loss and each op's output and gradient for NaN and infinity, and name
    /// the step and the op that made the first one (slow: for finding where a run diverges)
    #[arg(long)]
    detect_anomaly: bool,
    /// Mixed precision: the products (linear, conv2d, attention) in bf16 or f16 (tensor cores on
    /// sm_80+), weights, optimizer state, reductions and softmax in f32; f16 scales the loss
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    /// Capture the training step (forward, backward, optimizer) as a CUDA graph after one eager
    /// step and replay it for every batch: one launch per step instead of one per kernel, the
    /// same run (CUDA devices; mlp, perceptron, lenet5, vit without dropout; not with f16)
    #[arg(long)]
    cuda_graph: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint from `nabla train`, or a PyTorch state_dict saved with safetensors
    #[arg(long)]
    checkpoint: PathBuf,
    /// The model a plain state_dict holds (a nabla checkpoint says it itself)
    #[arg(long, value_enum)]
    model: Option<ModelArg>,
    /// The data set of a plain state_dict (default mnist)
    #[arg(long, value_enum)]
    dataset: Option<DataArg>,
    /// The data set's folder (default: the shipped MNIST subset)
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// gpt: the loss and perplexity of this UTF-8 text file
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto", value_parser = device)]
    device: Device,
}

#[derive(Args)]
struct GenerateArgs {
    /// A checkpoint written by `nabla train --model gpt`
    #[arg(long)]
    checkpoint: PathBuf,
    /// The text to continue (default: a newline)
    #[arg(long, default_value = "")]
    prompt: String,
    /// Characters to draw [1..=1000000]
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    tokens: u64,
    /// Divides the logits: below 1 sharper, above 1 more random (> 0)
    #[arg(long, default_value_t = 0.8, value_parser = positive)]
    temperature: f64,
    /// Draw only from the k likeliest characters [1..]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    top_k: Option<u64>,
    /// Seeds the draws
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto", value_parser = device)]
    device: Device,
}

#[derive(Args)]
struct PredictArgs {
    /// A checkpoint from `nabla train`, or a PyTorch state_dict saved with safetensors
    #[arg(long)]
    checkpoint: PathBuf,
    /// The model a plain state_dict holds
    #[arg(long, value_enum)]
    model: Option<ModelArg>,
    /// How many classes to show per image [1..=100]
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    top: u64,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto", value_parser = device)]
    device: Device,
    /// PNG or JPEG files
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

/// What `convolve` does at the image's border.
#[derive(Clone, Copy, ValueEnum)]
enum BorderArg {
    /// Pixels outside the image are 0
    Zero,
    /// Pixels outside the image mirror those inside (no dark frame)
    Reflect,
}

#[derive(Args)]
struct ConvolveArgs {
    /// identity, edge, edge-cross, edge-all, sharpen, box-blur, emboss, or rows such as
    /// `0,-1,0;-1,5,-1;0,-1,0` (any odd square size, 1x1 included)
    #[arg(long)]
    kernel: String,
    /// Show the magnitude |response| (edges are mostly negative and come out black otherwise)
    #[arg(long)]
    abs: bool,
    /// What lies beyond the image's edge
    #[arg(long, value_enum, default_value = "zero")]
    border: BorderArg,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto", value_parser = device)]
    device: Device,
    /// A PNG or JPEG image
    input: PathBuf,
    /// The output, a .png path
    output: PathBuf,
}

#[derive(Subcommand)]
enum VizCommand {
    /// The first convolution's filters as a labelled grid
    Filters {
        /// A checkpoint of a convolutional network
        checkpoint: PathBuf,
        /// The output .png
        out: PathBuf,
        /// auto, cpu, cuda or cuda:N
        #[arg(long, default_value = "auto", value_parser = device)]
        device: Device,
    },
    /// Each convolutional layer's feature maps for one image, a .png per layer
    Features {
        /// A checkpoint of a convolutional network
        checkpoint: PathBuf,
        /// A PNG or JPEG image
        image: PathBuf,
        /// The folder for the pictures
        out_dir: PathBuf,
        /// auto, cpu, cuda or cuda:N
        #[arg(long, default_value = "auto", value_parser = device)]
        device: Device,
    },
    /// Loss and accuracy per epoch (train and validation), and the numbers as .csv beside it
    Curves {
        /// A history.json written by `nabla train`
        history: PathBuf,
        /// The output .png (the .csv goes beside it)
        out: PathBuf,
    },
    /// A gpt's attention weights over a text, one heat-map per head, characters on both axes
    Attention {
        /// A checkpoint written by `nabla train --model gpt`
        checkpoint: PathBuf,
        /// The output .png
        out: PathBuf,
        /// The text (at most the model's context)
        #[arg(long)]
        text: String,
        /// The block (default: the last)
        #[arg(long)]
        layer: Option<usize>,
        /// auto, cpu, cuda or cuda:N
        #[arg(long, default_value = "auto", value_parser = device)]
        device: Device,
    },
    /// The test split's confusion matrix with class names and counts, and as .csv beside it
    Confusion {
        /// A checkpoint from `nabla train`
        checkpoint: PathBuf,
        /// The output .png (the .csv goes beside it)
        out: PathBuf,
        /// The data set's folder (default: the shipped MNIST subset)
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// auto, cpu, cuda or cuda:N
        #[arg(long, default_value = "auto", value_parser = device)]
        device: Device,
    },
}

#[derive(Args)]
struct CheckArgs {
    /// The GPU to check: auto, cuda or cuda:N
    #[arg(long, default_value = "auto", value_parser = device)]
    device: Device,
    /// Seed of the random inputs
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let train_flags = matches.subcommand_matches("train").cloned();
    // Training frees and allocates the same large buffers every step: keep them in the process.
    nabla::cpu::keep_freed_memory();
    if let Some(threads) = cli.threads {
        nabla::set_num_threads(threads as usize);
    }
    // The whole command on a thread of the CPU pool, so that its ops' parallel loops start
    // from inside it (see `nabla::cpu::in_pool`).
    let result = nabla::cpu::in_pool(|| match cli.command {
        None => {
            let _ = Cli::command().print_help();
            Ok(())
        }
        Some(Command::Train(args)) => train_cmd(*args, train_flags.as_ref()),
        Some(Command::Eval(args)) => eval_cmd(args),
        Some(Command::Predict(args)) => predict_cmd(args),
        Some(Command::Generate(args)) => generate_cmd(args),
        Some(Command::Convolve(args)) => convolve_cmd(args),
        Some(Command::Viz(viz)) => viz_cmd(viz),
        Some(Command::Info) => info(),
        Some(Command::Check(args)) => check(args),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "nabla", &mut std::io::stdout());
            Ok(())
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn train_cmd(args: TrainArgs, flags: Option<&ArgMatches>) -> Result<()> {
    if let ModelArg::Gpt = args.model {
        return train_gpt(args);
    }
    let quiet = args.quiet;
    let config = train_config(args, flags)?;
    config.validate()?;
    let data = config.data.as_ref().map_or("shipped MNIST subset".to_string(), |d| d.display().to_string());
    if !quiet {
        out!(
            "{} {} on {} ({data}), {} epochs, batch {}, {:?} lr {}, seed {}, {} products",
            if config.resume.is_some() { "resuming" } else { "training" },
            config.model.name(),
            config.device,
            config.epochs,
            config.batch_size,
            config.optimizer,
            config.lr,
            config.seed,
            config.precision
        );
    }
    let started = std::time::Instant::now();
    let outcome = train::train(&config)?;
    if outcome.epochs_trained == 0 {
        out!("the run is already complete ({} of {} epochs): nothing to train", outcome.history.len(), config.epochs);
    }
    out!(
        "test accuracy {:.2}% ({:.1}s in all); checkpoint {}, history {}",
        100.0 * outcome.test_accuracy,
        started.elapsed().as_secs_f64(),
        outcome.checkpoint.display(),
        train::history_path(&outcome.checkpoint).display()
    );
    Ok(())
}

/// The training configuration the flags ask for. With `--resume`, the run's recorded settings,
/// with any flag given on the command line put over them (the library then refuses a change).
fn train_config(args: TrainArgs, flags: Option<&ArgMatches>) -> Result<TrainConfig> {
    let given = |id: &str| flags.is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine));
    let (device, out, report) = (args.device, args.out.clone(), Report::for_terminal(args.quiet));
    let (detect_anomaly, cuda_graph) = (args.detect_anomaly, args.cuda_graph);
    let resume = args.resume.clone();
    let asked = flags_config(args)?;
    let Some(run) = resume else { return Ok(asked) };
    let mut config = match TrainConfig::resuming(&run, device) {
        Ok(recorded) => recorded,
        // A checkpoint of an older nabla records no settings: the flags give them.
        Err(_) if safetensors_has_no_settings(&run) => return Ok(TrainConfig { resume: Some(run), ..asked }),
        Err(e) => return Err(e),
    };
    macro_rules! over {
        ($($id:literal => $field:ident),*) => {$( if given($id) { config.$field = asked.$field.clone(); } )*};
    }
    over!("model" => model, "dataset" => dataset, "data" => data, "epochs" => epochs, "batch_size" => batch_size,
        "lr" => lr, "optimizer" => optimizer, "seed" => seed, "shift" => shift, "no_flip" => flip,
        "dropout" => dropout, "channels" => channels, "image_size" => image_size, "warmup" => warmup,
        "precision" => precision);
    if given("bn_momentum") {
        config.batch_norm.momentum = asked.batch_norm.momentum;
    }
    if given("bn_eps") {
        config.batch_norm.eps = asked.batch_norm.eps;
    }
    if let Some(out) = out {
        config.out_dir = out;
    }
    config.report = report;
    config.detect_anomaly = detect_anomaly;
    config.cuda_graph = cuda_graph;
    Ok(config)
}

/// Whether the checkpoint of `run` loads but records no run settings (an older nabla's).
fn safetensors_has_no_settings(run: &Path) -> bool {
    let path = train::checkpoint_in(run);
    nabla::io::safetensors::load(&path)
        .and_then(|saved| train::SavedRun::read(&path, &saved))
        .is_ok_and(|saved| saved.settings.is_none())
}

/// The training configuration the flags alone give (defaults for what they leave out).
fn flags_config(args: TrainArgs) -> Result<TrainConfig> {
    let model = image_model(args.model)?;
    Ok(TrainConfig {
        model,
        epochs: args.epochs as usize,
        batch_size: args.batch_size.unwrap_or(64) as usize,
        lr: args.lr.unwrap_or(2e-3),
        optimizer: args.optimizer.map(Into::into).unwrap_or(if model == ModelKind::Vit {
            OptimizerKind::AdamW
        } else {
            OptimizerKind::Adam
        }),
        seed: args.seed,
        device: args.device,
        dataset: args.dataset.into(),
        data: args.data,
        out_dir: args.out.unwrap_or_else(|| PathBuf::from("runs").join(model.name())),
        resume: args.resume,
        shift: args.shift as usize,
        flip: args.no_flip.then_some(false),
        dropout: args.dropout.unwrap_or(0.0),
        channels: args.channels.map(|c| c as usize),
        image_size: args.image_size.map(|s| s as usize),
        batch_norm: BatchNormOptions { momentum: args.bn_momentum, eps: args.bn_eps },
        warmup: args.warmup.map(|w| w as usize),
        report: Report::for_terminal(args.quiet),
        detect_anomaly: args.detect_anomaly,
        precision: args.precision.into(),
        cuda_graph: args.cuda_graph,
    })
}

fn train_gpt(args: TrainArgs) -> Result<()> {
    if args.cuda_graph {
        // Refused rather than ignored, as any flag that would not take effect.
        return Err(nabla::Error::invalid(
            "train",
            "--cuda-graph captures the image models' step; the GPT's embedding lookups check their indices on the host",
        ));
    }
    if args.resume.is_some() {
        // Refused rather than ignored: a fresh run would overwrite the folder it names.
        return Err(nabla::Error::invalid(
            "train",
            "gpt runs are saved once, at the end, and cannot be resumed: start a new run with --out",
        ));
    }
    let preset = match args.preset {
        PresetArg::Cpu => TextConfig::cpu_preset(),
        PresetArg::Gpu => TextConfig::gpu_preset(),
    };
    let pick = |given: Option<u64>, default: usize| given.map_or(default, |v| v as usize);
    let config = TextConfig {
        data: args.data,
        layers: pick(args.layers, preset.layers),
        heads: pick(args.heads, preset.heads),
        width: pick(args.width, preset.width),
        context: pick(args.context, preset.context),
        batch_size: pick(args.batch_size, preset.batch_size),
        steps: pick(args.steps, preset.steps),
        eval_every: pick(args.eval_every, preset.eval_every),
        lr: args.lr.unwrap_or(preset.lr),
        dropout: args.dropout.unwrap_or(preset.dropout),
        seed: args.seed,
        device: args.device,
        out_dir: args.out.unwrap_or_else(|| PathBuf::from("runs/gpt")),
        report: Report::for_terminal(args.quiet),
        precision: args.precision.into(),
        ..preset
    };
    let started = std::time::Instant::now();
    let outcome = train::text::train_text(&config)?;
    let last = outcome.reports.last().map_or(f64::NAN, |r| r.val_loss);
    out!(
        "validation loss {last:.4} nats/char ({:.3} bits) after {:.1}s; checkpoint {}",
        last / std::f64::consts::LN_2,
        started.elapsed().as_secs_f64(),
        outcome.checkpoint.display()
    );
    let sampling = Sampling { temperature: 0.8, top_k: Some(40), seed: config.seed };
    let sample = train::text::generate(&outcome.model, &outcome.tokenizer, "", 300, sampling, true, |_| {})?;
    out!("a sample:\n{sample}");
    Ok(())
}

/// The test split of the data a trained model was made for, in the layout it takes.
fn test_split(trained: &train::Trained, data: Option<&Path>, device: &Device) -> Result<nabla::data::Dataset> {
    let meta = &trained.meta;
    let splits = meta.dataset.splits(data, meta.geometry, meta.seed, device)?;
    if splits.classes() != meta.class_names.len() {
        return Err(nabla::Error::invalid(
            "eval",
            format!("the data has {} classes but the model {}", splits.classes(), meta.class_names.len()),
        ));
    }
    meta.model.prepare(meta.geometry, &splits.test)
}

fn eval_cmd(args: EvalArgs) -> Result<()> {
    if let Some(path) = &args.text {
        let (model, tokenizer) = train::text::load_gpt(&args.checkpoint, &args.device)?;
        let text = nabla::io::read_text_file(path, nabla::io::MAX_DATA_FILE)?;
        let loss = train::text::text_file_loss(&model, &tokenizer, &text, &args.device)?;
        out!(
            "{}: {} characters, loss {loss:.4} nats/char ({:.3} bits), perplexity {:.2}",
            path.display(),
            text.chars().count(),
            loss / std::f64::consts::LN_2,
            loss.exp()
        );
        return Ok(());
    }
    let trained = train::load_trained(
        &args.checkpoint,
        &args.device,
        args.model.map(image_model).transpose()?,
        args.dataset.map(Into::into),
    )?;
    let test = test_split(&trained, args.data.as_deref(), &args.device)?;
    let names = &trained.meta.class_names;
    let scores = train::predict(trained.model.as_ref(), &test)?;
    let predictions = scores.argmax(-1, false)?;
    let confusion = metrics::ConfusionMatrix::new(&predictions, &test.targets, names.len())?;
    out!("{} on {} test images ({})", args.checkpoint.display(), test.len(), args.device);
    out!(
        "top-1 error {:.2}%  top-5 error {:.2}%",
        100.0 * metrics::top_k_error(&scores, &test.targets, 1)?,
        100.0 * metrics::top_k_error(&scores, &test.targets, 5)?
    );
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(5).max(5);
    out!("{:>width$}  precision  recall     f1  support", "class");
    for (name, s) in names.iter().zip(confusion.class_scores()) {
        out!("{name:>width$}  {:>9.4}  {:>6.4}  {:>5.4}  {:>7}", s.precision, s.recall, s.f1, s.support);
    }
    out!("confusion matrix (rows: true class, columns: predicted; classes in the order above)\n{confusion}");
    Ok(())
}

fn generate_cmd(args: GenerateArgs) -> Result<()> {
    use std::io::Write as _;
    let (model, tokenizer) = train::text::load_gpt(&args.checkpoint, &args.device)?;
    let sampling = Sampling { temperature: args.temperature, top_k: args.top_k.map(|k| k as usize), seed: args.seed };
    let started = std::time::Instant::now();
    tokenizer.encode(&args.prompt)?; // an unknown character is an error before anything prints
    let mut stdout = std::io::stdout();
    let _ = write!(stdout, "{}", args.prompt);
    let text = train::text::generate(&model, &tokenizer, &args.prompt, args.tokens as usize, sampling, true, |c| {
        let _ = write!(stdout, "{c}");
        let _ = stdout.flush();
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = writeln!(stdout);
    eprintln!(
        "{} characters in {seconds:.2}s ({:.0} tokens/s on {})",
        text.chars().count(),
        text.chars().count() as f64 / seconds.max(1e-9),
        args.device
    );
    Ok(())
}

fn predict_cmd(args: PredictArgs) -> Result<()> {
    let trained = train::load_trained(&args.checkpoint, &args.device, args.model.map(image_model).transpose()?, None)?;
    let meta = &trained.meta;
    let (c, s) = (meta.geometry.channels, meta.geometry.size);
    for path in &args.images {
        let picture = Image::load(path)?.with_channels(c)?.resize(s, s)?;
        let x = picture.to_tensor(&args.device)?.reshape(&[1, c, s, s])?;
        let x = meta
            .model
            .prepare(meta.geometry, &nabla::data::Dataset::new(x, Tensor::zeros(&[1], DType::I64, &args.device)?)?)?;
        let probabilities = nabla::no_grad(|| trained.model.forward(&x.features)?.softmax(-1))?.to_vec::<f64>()?;
        let mut ranked: Vec<(usize, f64)> = probabilities.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let shown: Vec<String> = ranked
            .iter()
            .take(args.top as usize)
            .map(|(class, p)| format!("{} {:.2}%", meta.class_names[*class], 100.0 * p))
            .collect();
        out!("{}: {}", path.display(), shown.join(", "));
    }
    Ok(())
}

fn convolve_cmd(args: ConvolveArgs) -> Result<()> {
    let is_png = args.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(nabla::Error::invalid(
            "convolve",
            format!("the output {} must be a .png path (nabla writes PNG only)", args.output.display()),
        ));
    }
    let kernel = if args.kernel.contains([',', ';']) || args.kernel.parse::<f64>().is_ok() {
        vision::parse_kernel(&args.kernel)?
    } else {
        vision::classic_kernel(&args.kernel)?
    };
    let image = Image::load(&args.input)?;
    let border = match args.border {
        BorderArg::Zero => vision::Border::Zero,
        BorderArg::Reflect => vision::Border::Reflect,
    };
    let mut result = vision::convolve_with(&image.to_tensor(&args.device)?, &kernel, border, &args.device)?;
    if args.abs {
        result = result.abs()?;
    }
    Image::from_tensor(&result)?.save_png(&args.output)?;
    out!(
        "{} ({}x{}, {} channel(s)) convolved on {} -> {}",
        args.input.display(),
        image.width,
        image.height,
        image.channels,
        args.device,
        args.output.display()
    );
    Ok(())
}

/// Writes `text` to `path` (the CSV twin of a picture).
fn write_text(path: &Path, text: &str) -> Result<()> {
    nabla::io::write_atomically(path, text.as_bytes())
        .map_err(|source| nabla::Error::Io { path: path.display().to_string(), source })
}

fn viz_cmd(command: VizCommand) -> Result<()> {
    match command {
        VizCommand::Filters { checkpoint, out, device } => {
            let trained = train::load_trained(&checkpoint, &device, None, None)?;
            let (name, weight) =
                trained.model.named_parameters().into_iter().find(|(_, t)| t.rank() == 4).ok_or_else(|| {
                    nabla::Error::invalid("viz", format!("{} has no convolution filters", checkpoint.display()))
                })?;
            viz::filter_grid(&weight, &name)?.save_png(&out)?;
            out!("{} filters of {name} {:?} -> {}", weight.shape()[0], weight.shape(), out.display());
        }
        VizCommand::Features { checkpoint, image, out_dir, device } => {
            let trained = train::load_trained(&checkpoint, &device, None, None)?;
            let meta = &trained.meta;
            if !meta.model.takes_images() {
                return Err(nabla::Error::invalid("viz", format!("{} has no convolutional layers", meta.model.name())));
            }
            let (c, s) = (meta.geometry.channels, meta.geometry.size);
            let picture = Image::load(&image)?.with_channels(c)?.resize(s, s)?;
            let x = picture.to_tensor(&device)?.reshape(&[1, c, s, s])?;
            std::fs::create_dir_all(&out_dir)
                .map_err(|source| nabla::Error::Io { path: out_dir.display().to_string(), source })?;
            for (name, maps) in nabla::no_grad(|| trained.model.feature_maps(&x))? {
                let path = out_dir.join(format!("{name}.png"));
                viz::feature_grid(&maps.squeeze(0)?, &name)?.save_png(&path)?;
                out!("{name} {:?} -> {}", maps.shape(), path.display());
            }
        }
        VizCommand::Curves { history, out } => {
            let history = train::read_history(&history)?;
            viz::curves(&history)?.save_png(&out)?;
            let csv = out.with_extension("csv");
            write_text(&csv, &viz::curves_csv(&history))?;
            out!("{} epochs -> {} and {}", history.len(), out.display(), csv.display());
        }
        VizCommand::Attention { checkpoint, out, text, layer, device } => {
            let (model, tokenizer) = train::text::load_gpt(&checkpoint, &device)?;
            let ids = tokenizer.encode(&text)?;
            let layer = layer.unwrap_or(model.blocks.len().saturating_sub(1));
            let x = Tensor::from_vec(ids.clone(), &[1, ids.len()], &device)?;
            let weights = model.attention_weights(&x, layer)?;
            let chars: Vec<char> = text.chars().collect();
            viz::attention_maps(&weights, &chars, &format!("attention of block {layer} over {:?}", text))?
                .save_png(&out)?;
            out!("{} heads of block {layer} over {} characters -> {}", weights.shape()[0], chars.len(), out.display());
        }
        VizCommand::Confusion { checkpoint, out, data, device } => {
            let trained = train::load_trained(&checkpoint, &device, None, None)?;
            let test = test_split(&trained, data.as_deref(), &device)?;
            let names = &trained.meta.class_names;
            let predictions = train::predict(trained.model.as_ref(), &test)?.argmax(-1, false)?;
            let confusion = metrics::ConfusionMatrix::new(&predictions, &test.targets, names.len())?;
            viz::confusion_heatmap(&confusion, names)?.save_png(&out)?;
            let csv = out.with_extension("csv");
            write_text(&csv, &viz::confusion_csv(&confusion, names))?;
            out!(
                "confusion of {} test images (accuracy {:.2}%) -> {} and {}",
                test.len(),
                100.0 * confusion.accuracy(),
                out.display(),
                csv.display()
            );
        }
    }
    Ok(())
}

fn info() -> Result<()> {
    out!("nabla {}", env!("CARGO_PKG_VERSION"));
    out!("cpu: {} threads, f32 products on {}", nabla::num_threads(), nabla::cpu::f32_gemm_kernel());
    let driver = cuda::driver_version();
    match kernels::MODULES.first().filter(|m| !m.images.is_empty()) {
        Some(first) => {
            out!("kernel images built in (each module has the same set):");
            for image in first.images {
                let needs = kernels::required_driver(image.arch, image.nvrtc);
                let branch = kernels::driver_branch(needs).map_or(String::new(), |b| format!(" ({b}+)"));
                let verdict = match driver {
                    Some(d) if d >= needs => "usable here",
                    Some(_) => "too new for this driver",
                    None => "",
                };
                let kind = if image.arch.starts_with("sm_") { "CUBIN" } else { "PTX" };
                out!(
                    "  {:<11} {kind:<5} from NVRTC {}.{}: needs a CUDA {}.{} driver{branch}  {verdict}",
                    image.arch,
                    image.nvrtc.0,
                    image.nvrtc.1,
                    needs.0,
                    needs.1
                );
            }
        }
        None => out!("kernels: sources only (no NVRTC at build time); compiled at first use"),
    }
    if cuda::nvrtc::available() {
        match cuda::nvrtc::version() {
            Ok((major, minor)) => out!("runtime NVRTC: {major}.{minor}"),
            Err(e) => out!("runtime NVRTC: present, version unknown ({e})"),
        }
    } else {
        out!("runtime NVRTC: not found");
    }
    match kernels::cache_dir() {
        Some(dir) => out!("kernel cache: {}", dir.display()),
        None => out!("kernel cache: none (set NABLA_KERNEL_CACHE or HOME)"),
    }
    match driver {
        Some((major, minor)) => {
            let branch = kernels::driver_branch((major, minor)).map_or(String::new(), |b| format!(", {b} or newer"));
            out!("CUDA driver: CUDA {major}.{minor}{branch}")
        }
        None => out!("CUDA driver: not found"),
    }
    let count = cuda::device_count();
    out!("CUDA devices: {count}");
    for ordinal in 0..count {
        let dev = cuda::cuda_device(ordinal)?;
        let (major, minor) = dev.arch();
        out!(
            "cuda:{ordinal}: {}, compute capability {major}.{minor}, {:.1} GiB",
            dev.name(),
            dev.total_memory() as f64 / (1u64 << 30) as f64
        );
        for module in kernels::MODULES {
            match dev.load_module(module.name) {
                Ok(origin) => out!("  {:<10} {origin}", module.name),
                Err(e) => out!("  {:<10} FAILED: {e}", module.name),
            }
        }
    }
    Ok(())
}

fn check(args: CheckArgs) -> Result<()> {
    let device = args.device;
    if !device.is_cuda() {
        return Err(nabla::Error::CudaUnavailable(
            "`check` compares a GPU with the CPU reference, and no CUDA device was found (see `nabla info`)".into(),
        ));
    }
    out!("check on {device} against the CPU reference (seed {}):", args.seed);
    let mut rng = Generator::new(args.seed);
    let x = Tensor::randn(&[64, 784], DType::F32, &Device::Cpu, &mut rng)?;
    let w = Tensor::randn(&[784, 512], DType::F32, &Device::Cpu, &mut rng)?.mul_scalar(0.05)?;
    let b = Tensor::randn(&[512], DType::F32, &Device::Cpu, &mut rng)?;
    let forward = |x: &Tensor, w: &Tensor, b: &Tensor| -> Result<Vec<(&'static str, Tensor)>> {
        let h = x.matmul(w)?.add(b)?;
        let a = h.gelu()?;
        Ok(vec![
            ("matmul + bias", h),
            ("gelu", a.clone()),
            ("softmax", a.softmax(-1)?),
            ("sum over rows", a.sum(&[1], false)?),
            ("argmax", a.argmax(-1, false)?),
        ])
    };
    let want = forward(&x, &w, &b)?;
    let got = forward(&x.to_device(&device)?, &w.to_device(&device)?, &b.to_device(&device)?)?;
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        let (g, w) = (g.to_vec::<f64>()?, w.to_vec::<f64>()?);
        let worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        out!("  {name:<14} {} elements, max |device - cpu| = {worst:.3e}", g.len());
    }
    // bf16 products run on the tensor cores on sm_80 and newer: the product, and the intrinsic alone.
    let (xb, wb) = (x.to_dtype(DType::BF16)?, w.to_dtype(DType::BF16)?);
    let want = nabla::cpu::reference(|| xb.matmul(&wb))?.to_vec::<f64>()?;
    let got = xb.to_device(&device)?.matmul(&wb.to_device(&device)?)?.to_vec::<f64>()?;
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    out!("  {:<14} {} elements, max |device - cpu| = {worst:.3e}", "matmul bf16", got.len());
    if let Device::Cuda(ordinal) = device
        && let dev = cuda::cuda_device(ordinal)?
        && dev.arch().0 >= 8
    {
        let values: Vec<f32> = (0..256).map(|i| ((i * 7) % 9) as f32 - 4.0).collect();
        let bits: Vec<u16> = values.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
        let c = vec![0.5f32; 128];
        let d = cuda::gemm::mma_probe(&dev, DType::BF16, &bits, &bits[..128], &c)?;
        let exact = (0..128).all(|i| {
            let (r, n) = (i / 8, i % 8);
            d[i] == c[i] + (0..16).map(|k| values[r * 16 + k] * values[k * 8 + n]).sum::<f32>()
        });
        if !exact {
            return Err(nabla::Error::invalid(
                "check",
                "the tensor-core intrinsic (mma m16n8k16 bf16) is wrong on a known product",
            ));
        }
        out!("  {:<14} exact on a known product", "mma m16n8k16");
        // The TF32 intrinsic (f32 products under set_float32_matmul_precision("high")).
        let d = cuda::gemm::mma_probe_tf32(&dev, &values[..128], &values[..64], &c)?;
        let exact = (0..128).all(|i| {
            let (r, n) = (i / 8, i % 8);
            d[i] == c[i] + (0..8).map(|k| values[r * 8 + k] * values[k * 8 + n]).sum::<f32>()
        });
        if !exact {
            return Err(nabla::Error::invalid(
                "check",
                "the tensor-core intrinsic (mma m16n8k8 tf32) is wrong on a known product",
            ));
        }
        out!("  {:<14} exact on a known product", "mma m16n8k8");
        // 3xTF32 (f32 attention's version 2): a value TF32 rounds, times one, comes back whole.
        let x = 1.0 + 2f32.powi(-11) + 2f32.powi(-12);
        let (mut a, mut b) = (vec![0f32; 128], vec![0f32; 64]);
        (a[0], b[0]) = (x, 1.0);
        if cuda::gemm::mma_probe_3xtf32(&dev, &a, &b, &[0.0; 128])?[0] != x {
            return Err(nabla::Error::invalid(
                "check",
                "3xTF32 (split_tf32, mma_3xtf32) loses f32 bits on a known product",
            ));
        }
        out!("  {:<14} keeps f32's bits on a known product", "3xTF32");
    }
    Ok(())
}
