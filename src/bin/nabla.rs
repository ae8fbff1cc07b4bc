//! The `nabla` command line.
//!
//! - `nabla info`: devices, compute capability, driver and NVRTC versions, and where each
//!   kernel module comes from.
//! - `nabla check [--device auto|cpu|cuda[:N]] [--seed N]`: runs a small network's ops (matmul,
//!   bias add, GELU, softmax, reductions) on the device and on the CPU reference, and prints the
//!   largest difference of each.
//! - `nabla train [--model mlp|perceptron] [--epochs N] ...`: trains on MNIST (the shipped subset
//!   by default) with a progress bar and one line per epoch; writes a safetensors checkpoint
//!   and a JSON history.
//! - `nabla eval --checkpoint F [--data DIR]`: top-1/top-5 error, per-class precision and
//!   recall, and the confusion matrix on the test split.

use nabla::cuda::{self, kernels};
use nabla::io::image::Image;
use nabla::train::{self, DataKind, ModelKind, OptimizerKind, TrainConfig};
use nabla::{DType, Device, Generator, Result, Tensor, metrics, vision, viz};
use std::path::Path;
use std::process::ExitCode;

/// Prints a line to stdout, ignoring a closed pipe (`nabla eval ... | head` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const USAGE: &str = "usage: nabla <command>

commands:
  train [--model mlp|perceptron|lenet5|alexnet|resnet] [--epochs N] [--batch-size N] [--lr X]
        [--optimizer sgd|adam|adamw] [--seed N] [--device auto|cpu|cuda[:N]]
        [--dataset mnist|cifar10|folder] [--data DIR] [--out DIR] [--resume CHECKPOINT]
        [--shift PIXELS] [--dropout P]
                             train on MNIST (the shipped 8,000/2,000 subset unless --data)
                             or CIFAR-10 (--dataset cifar10 --data DIR, binary version)
                             or your images (--dataset folder --data DIR, a folder per class)
  eval --checkpoint F [--data DIR] [--device D]
                             top-1/top-5 error, per-class precision/recall, confusion matrix
  convolve --kernel NAME|ROWS IN OUT [--device D]
                             apply a 3x3 classic kernel (identity, edge, edge-cross, edge-all,
                             sharpen, box-blur, emboss) or your own (`0,-1,0;-1,5,-1;0,-1,0`)
                             to a PNG/JPEG through conv2d, writing a PNG
  viz filters CHECKPOINT OUT.png          first-layer filters as a grid
  viz features CHECKPOINT IMAGE OUT_DIR   each conv layer's feature maps for one image
  viz curves HISTORY.json OUT.png         training loss and validation accuracy per epoch
  viz confusion CHECKPOINT OUT.png [--data DIR]
                                          the test split's confusion matrix as a heat-map
  info                       devices, driver and NVRTC versions, kernel module origins
  check [--device D] [--seed N]
                             run ops on D (auto|cpu|cuda|cuda:N, default auto) and on the CPU
                             reference, and print the largest difference of each
  help                       this text";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => train_cmd(&[]),
        Some("train") => train_cmd(&args[1..]),
        Some("eval") => eval_cmd(&args[1..]),
        Some("convolve") => convolve_cmd(&args[1..]),
        Some("viz") => viz_cmd(&args[1..]),
        Some("info") => info(),
        Some("check") => check(&args[1..]),
        Some("help" | "--help" | "-h") => {
            out!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(nabla::Error::InvalidArgument {
            op: "nabla",
            detail: format!("unknown command `{other}` (see `nabla help`)"),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--flag value` pairs, every flag known to the command.
fn parse_flags<'a>(cmd: &'static str, args: &'a [String], known: &[&str]) -> Result<Vec<(&'a str, &'a str)>> {
    let mut out = Vec::new();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        if !known.contains(&flag.as_str()) {
            return Err(nabla::Error::InvalidArgument {
                op: cmd,
                detail: format!("unknown flag `{flag}` (see `nabla help`)"),
            });
        }
        let value = rest
            .next()
            .ok_or_else(|| nabla::Error::InvalidArgument { op: cmd, detail: format!("{flag} needs a value") })?;
        out.push((flag.as_str(), value.as_str()));
    }
    Ok(out)
}

fn number<T: std::str::FromStr>(cmd: &'static str, flag: &str, value: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| nabla::Error::InvalidArgument { op: cmd, detail: format!("{flag} takes a number, got `{value}`") })
}

fn train_cmd(args: &[String]) -> Result<()> {
    let known = [
        "--model",
        "--dataset",
        "--epochs",
        "--batch-size",
        "--lr",
        "--optimizer",
        "--seed",
        "--device",
        "--data",
        "--out",
        "--resume",
        "--shift",
        "--dropout",
    ];
    let mut config = TrainConfig { device: Device::cuda_if_available(), verbose: true, ..TrainConfig::default() };
    for (flag, value) in parse_flags("train", args, &known)? {
        match flag {
            "--model" => config.model = ModelKind::parse(value)?,
            "--dataset" => config.dataset = DataKind::parse(value)?,
            "--epochs" => config.epochs = number("train", flag, value)?,
            "--batch-size" => config.batch_size = number("train", flag, value)?,
            "--lr" => config.lr = number("train", flag, value)?,
            "--optimizer" => config.optimizer = OptimizerKind::parse(value)?,
            "--seed" => config.seed = number("train", flag, value)?,
            "--device" => config.device = value.parse()?,
            "--data" => config.data = Some(value.into()),
            "--out" => config.out_dir = value.into(),
            "--resume" => config.resume = Some(value.into()),
            "--shift" => config.shift = number("train", flag, value)?,
            "--dropout" => config.dropout = number("train", flag, value)?,
            _ => unreachable!("parse_flags admits only known flags"),
        }
    }
    if config.epochs == 0 || config.batch_size == 0 || config.lr.is_nan() || config.lr <= 0.0 {
        return Err(nabla::Error::InvalidArgument {
            op: "train",
            detail: "--epochs, --batch-size and --lr must be positive".into(),
        });
    }
    let data = config.data.as_ref().map_or("shipped MNIST subset".to_string(), |d| d.display().to_string());
    out!(
        "training {} on {} ({data}), {} epochs, batch {}, {:?} lr {}, seed {}",
        config.model.name(),
        config.device,
        config.epochs,
        config.batch_size,
        config.optimizer,
        config.lr,
        config.seed
    );
    let started = std::time::Instant::now();
    let outcome = train::train(&config)?;
    out!(
        "test accuracy {:.2}% ({:.1}s in all); checkpoint {}, history {}",
        100.0 * outcome.test_accuracy,
        started.elapsed().as_secs_f64(),
        outcome.checkpoint.display(),
        train::history_path(&outcome.checkpoint).display()
    );
    Ok(())
}

fn eval_cmd(args: &[String]) -> Result<()> {
    let mut checkpoint = None;
    let mut data: Option<std::path::PathBuf> = None;
    let mut device = Device::cuda_if_available();
    for (flag, value) in parse_flags("eval", args, &["--checkpoint", "--data", "--device"])? {
        match flag {
            "--checkpoint" => checkpoint = Some(std::path::PathBuf::from(value)),
            "--data" => data = Some(value.into()),
            "--device" => device = value.parse()?,
            _ => unreachable!("parse_flags admits only known flags"),
        }
    }
    let path = checkpoint.ok_or_else(|| usage_error("eval", "--checkpoint F is required"))?;
    let (kind, data_kind, classes, model) = load_model(&path, &device)?;
    let test = kind.prepare(data_kind, &data_kind.splits(data.as_deref(), &device)?.test)?;
    let scores = train::predict(model.as_ref(), &test)?;
    let predictions = scores.argmax(-1, false)?;
    let confusion = metrics::ConfusionMatrix::new(&predictions, &test.targets, classes)?;
    out!("{} on {} test images ({device})", path.display(), test.len());
    out!(
        "top-1 error {:.2}%  top-5 error {:.2}%",
        100.0 * metrics::top_k_error(&scores, &test.targets, 1)?,
        100.0 * metrics::top_k_error(&scores, &test.targets, 5)?
    );
    out!("class  precision  recall     f1  support");
    for (c, s) in confusion.class_scores().iter().enumerate() {
        out!("{c:>5}  {:>9.4}  {:>6.4}  {:>5.4}  {:>7}", s.precision, s.recall, s.f1, s.support);
    }
    out!("confusion matrix (rows: true class, columns: predicted)\n{confusion}");
    Ok(())
}

fn usage_error(op: &'static str, detail: impl Into<String>) -> nabla::Error {
    nabla::Error::InvalidArgument { op, detail: detail.into() }
}

/// `--flag value` pairs and positional arguments.
type SplitArgs<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);

/// Splits `--flag value` pairs (of `known` flags) from positional arguments.
fn split_args<'a>(cmd: &'static str, args: &'a [String], known: &[&str]) -> Result<SplitArgs<'a>> {
    let (mut flags, mut positional) = (Vec::new(), Vec::new());
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        if a.starts_with("--") {
            if !known.contains(&a.as_str()) {
                return Err(usage_error(cmd, format!("unknown flag `{a}` (see `nabla help`)")));
            }
            let v = rest.next().ok_or_else(|| usage_error(cmd, format!("{a} needs a value")))?;
            flags.push((a.as_str(), v.as_str()));
        } else {
            positional.push(a.as_str());
        }
    }
    Ok((flags, positional))
}

fn convolve_cmd(args: &[String]) -> Result<()> {
    let (flags, files) = split_args("convolve", args, &["--kernel", "--device"])?;
    let mut kernel = None;
    let mut device = Device::cuda_if_available();
    for (flag, value) in flags {
        match flag {
            "--kernel" => {
                kernel = Some(if value.contains(',') {
                    vision::parse_kernel(value)?
                } else {
                    vision::classic_kernel(value)?
                })
            }
            _ => device = value.parse()?,
        }
    }
    let kernel = kernel.ok_or_else(|| usage_error("convolve", "--kernel NAME|ROWS is required"))?;
    let [input, output] = files[..] else {
        return Err(usage_error("convolve", "needs an input image and an output PNG path"));
    };
    let image = Image::load(Path::new(input))?;
    let result = vision::convolve(&image.to_tensor(&device)?, &kernel, &device)?;
    Image::from_tensor(&result)?.save_png(Path::new(output))?;
    out!("{input} ({}x{}, {} channel(s)) convolved on {device} -> {output}", image.width, image.height, image.channels);
    Ok(())
}

/// The model a checkpoint written by `nabla train` holds, loaded on `device` in eval mode, with
/// the data set it was trained on.
fn load_model(path: &Path, device: &Device) -> Result<(ModelKind, DataKind, usize, Box<dyn nabla::nn::Module>)> {
    let saved = nabla::io::safetensors::load(path)?;
    let kind = saved.metadata.get("model").map(String::as_str).ok_or_else(|| {
        usage_error("load", format!("{} has no `model` metadata (not written by nabla train)", path.display()))
    })?;
    let kind = ModelKind::parse(kind)?;
    let data = DataKind::parse(saved.metadata.get("dataset").map_or("mnist", String::as_str))?;
    let dropout = saved.metadata.get("dropout").and_then(|d| d.parse().ok()).unwrap_or(0.0);
    let classes = saved.metadata.get("classes").and_then(|c| c.parse().ok()).unwrap_or(10);
    let mut model = kind.build(data, classes, dropout, device, &mut Generator::new(0))?;
    nabla::io::load_into_module(&saved, model.as_ref())?;
    model.set_training(false);
    Ok((kind, data, classes, model))
}

fn viz_cmd(args: &[String]) -> Result<()> {
    let (flags, pos) = split_args("viz", args, &["--data", "--device"])?;
    let mut data: Option<std::path::PathBuf> = None;
    let mut device = Device::cuda_if_available();
    for (flag, value) in flags {
        match flag {
            "--data" => data = Some(value.into()),
            _ => device = value.parse()?,
        }
    }
    match pos[..] {
        ["filters", checkpoint, out] => {
            let (_, _, _, model) = load_model(Path::new(checkpoint), &device)?;
            let (name, weight) = model
                .named_parameters()
                .into_iter()
                .find(|(_, t)| t.rank() == 4)
                .ok_or_else(|| usage_error("viz", format!("{checkpoint} has no convolution filters")))?;
            viz::filter_grid(&weight)?.save_png(Path::new(out))?;
            out!("{} filters of {name} {:?} -> {out}", weight.shape()[0], weight.shape());
        }
        ["features", checkpoint, image, out_dir] => {
            let (kind, data_kind, _, model) = load_model(Path::new(checkpoint), &device)?;
            if !kind.takes_images() {
                return Err(usage_error("viz", format!("{} has no convolutional layers", kind.name())));
            }
            let (c, s) = data_kind.image();
            let picture = Image::load(Path::new(image))?.with_channels(c).resize(s, s);
            let x = picture.to_tensor(&device)?.reshape(&[1, c, s, s])?;
            std::fs::create_dir_all(out_dir)
                .map_err(|source| nabla::Error::Io { path: out_dir.to_string(), source })?;
            for (name, maps) in nabla::no_grad(|| model.feature_maps(&x))? {
                let path = Path::new(out_dir).join(format!("{name}.png"));
                viz::feature_grid(&maps.squeeze(0)?)?.save_png(&path)?;
                out!("{name} {:?} -> {}", maps.shape(), path.display());
            }
        }
        ["curves", history, out] => {
            let history = train::read_history(Path::new(history))?;
            viz::curves(&history)?.save_png(Path::new(out))?;
            out!("{} epochs -> {out} (left: training loss, right: validation accuracy)", history.len());
        }
        ["confusion", checkpoint, out] => {
            let (kind, data_kind, classes, model) = load_model(Path::new(checkpoint), &device)?;
            let test = kind.prepare(data_kind, &data_kind.splits(data.as_deref(), &device)?.test)?;
            let predictions = train::predict(model.as_ref(), &test)?.argmax(-1, false)?;
            let confusion = metrics::ConfusionMatrix::new(&predictions, &test.targets, classes)?;
            viz::confusion_heatmap(&confusion).save_png(Path::new(out))?;
            out!("confusion of {} test images (accuracy {:.2}%) -> {out}", test.len(), 100.0 * confusion.accuracy());
        }
        _ => {
            return Err(usage_error(
                "viz",
                "expected filters|features|curves|confusion and their paths (see `nabla help`)",
            ));
        }
    }
    Ok(())
}

fn info() -> Result<()> {
    out!("nabla {}", env!("CARGO_PKG_VERSION"));
    match kernels::BUILD_NVRTC_VERSION {
        Some((major, minor)) => {
            let archs: Vec<&str> = kernels::MODULES[0].images.iter().map(|(a, _)| *a).collect();
            out!("kernels: built with NVRTC {major}.{minor} for {}", archs.join(", "));
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
    match cuda::driver_version() {
        Some((major, minor)) => out!("CUDA driver: {major}.{minor}"),
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
                Ok(origin) => out!("  {:<8} {origin}", module.name),
                Err(e) => out!("  {:<8} FAILED: {e}", module.name),
            }
        }
    }
    Ok(())
}

fn check(args: &[String]) -> Result<()> {
    let mut device = Device::cuda_if_available();
    let mut seed = 0u64;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .ok_or_else(|| nabla::Error::InvalidArgument { op: "check", detail: format!("{flag} needs a value") })?;
        match flag.as_str() {
            "--device" => device = value.parse()?,
            "--seed" => {
                seed = value.parse().map_err(|_| nabla::Error::InvalidArgument {
                    op: "check",
                    detail: format!("--seed takes a whole number, got `{value}`"),
                })?
            }
            other => {
                return Err(nabla::Error::InvalidArgument { op: "check", detail: format!("unknown flag `{other}`") });
            }
        }
    }
    out!("check on {device} against the CPU reference (seed {seed}):");
    let mut rng = Generator::new(seed);
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
    Ok(())
}
