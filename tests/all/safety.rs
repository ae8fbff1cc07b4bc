//! Nothing silently wrong: the reproducers of what once panicked, aborted, hung or answered
//! wrongly, each now a clear error (files in `tests/fixtures/bad/`).

use nabla::io::image::Image;
use nabla::io::safetensors;
use nabla::metrics::{self, ConfusionMatrix};
use nabla::optim::{Adam, AdamConfig, Sgd, SgdConfig};
use nabla::train::{self, ModelKind, OptimizerKind, TrainConfig};
use nabla::{Conv2dOptions, DType, Device, Generator, Tensor};
use std::path::{Path, PathBuf};

fn bad_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad").join(name)
}

fn message<T>(result: nabla::Result<T>) -> String {
    match result {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

fn cpu(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
}

#[test]
fn nan_scores_count_as_wrong_and_an_empty_set_has_no_accuracy() {
    let labels = Tensor::from_vec(vec![0i64, 1], &[2], &Device::Cpu).unwrap();
    let scores = cpu(&[f32::NAN, f32::NAN, 0.0, 1.0], &[2, 2]);
    assert_eq!(metrics::accuracy(&scores, &labels).unwrap(), 0.5);
    let infinite = cpu(&[f32::INFINITY, 0.0, 0.0, 1.0], &[2, 2]);
    assert_eq!(metrics::top_k_error(&infinite, &labels, 1).unwrap(), 0.5);
    let none = Tensor::zeros(&[0, 10], DType::F32, &Device::Cpu).unwrap();
    let no_labels = Tensor::zeros(&[0], DType::I64, &Device::Cpu).unwrap();
    assert!(message(metrics::accuracy(&none, &no_labels)).contains("no examples"));
}

/// The reproducer: SGD at lr 100 takes the MLP to NaN within the first epoch. Returns
/// the run's folder (named by `tag`) and its configuration.
fn diverging_run(tag: &str, detect_anomaly: bool) -> (PathBuf, TrainConfig) {
    let dir = std::env::temp_dir().join(format!("nabla-safety-{tag}-{}", std::process::id()));
    let config = TrainConfig {
        model: ModelKind::Mlp,
        optimizer: OptimizerKind::Sgd,
        lr: 100.0,
        epochs: 1,
        device: Device::Cpu,
        out_dir: dir.clone(),
        detect_anomaly,
        ..TrainConfig::default()
    };
    (dir, config)
}

#[test]
fn a_diverging_run_stops_with_an_error_naming_the_epoch_instead_of_reporting_an_accuracy() {
    let (dir, config) = diverging_run("diverge", false);
    let text = message(train::train(&config));
    assert!(
        text.contains("diverged at step") && text.contains("of epoch 1") && text.contains("nothing was saved"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hyper_parameters_out_of_range_are_refused_by_the_library() {
    let p = || vec![Tensor::zeros(&[2], DType::F32, &Device::Cpu).unwrap().requires_grad_().unwrap()];
    for (what, config) in [
        ("NaN lr", AdamConfig { lr: f64::NAN, ..AdamConfig::adam(1e-3) }),
        ("negative lr", AdamConfig::adam(-1e-3)),
        ("infinite lr", AdamConfig::adam(f64::INFINITY)),
        ("beta1 = 1", AdamConfig { beta1: 1.0, ..AdamConfig::adam(1e-3) }),
        ("beta2 NaN", AdamConfig { beta2: f64::NAN, ..AdamConfig::adam(1e-3) }),
        ("eps 0", AdamConfig { eps: 0.0, ..AdamConfig::adam(1e-3) }),
        ("negative decay", AdamConfig { weight_decay: -0.1, ..AdamConfig::adamw(1e-3) }),
    ] {
        assert!(Adam::new(p(), config).is_err(), "adam accepted {what}");
    }
    for (what, config) in [
        ("zero lr", SgdConfig::new(0.0)),
        ("NaN momentum", SgdConfig { momentum: f64::NAN, ..SgdConfig::new(0.1) }),
        ("momentum 1", SgdConfig { momentum: 1.0, ..SgdConfig::new(0.1) }),
        ("dampening 2", SgdConfig { dampening: 2.0, ..SgdConfig::new(0.1) }),
    ] {
        assert!(Sgd::new(p(), config).is_err(), "sgd accepted {what}");
    }
    let base = TrainConfig { device: Device::Cpu, ..TrainConfig::default() };
    for (what, config) in [
        ("lr inf", TrainConfig { lr: f64::INFINITY, ..base.clone() }),
        ("dropout NaN", TrainConfig { dropout: f64::NAN, ..base.clone() }),
        ("dropout -0.1", TrainConfig { dropout: -0.1, ..base.clone() }),
        ("shift 1000", TrainConfig { shift: 1000, ..base.clone() }),
    ] {
        assert!(config.validate().is_err(), "train accepted {what}");
    }
    assert!(nabla::nn::Dropout::new(f64::NAN, 0).is_err());
    assert!(message(Generator::new(0).below(0)).contains("empty range"));
}

#[test]
fn image_headers_claiming_billions_of_pixels_are_refused_before_decoding() {
    for name in ["huge_claim.png", "huge_claim.jpg"] {
        let text = message(Image::load(&bad_file(name)));
        assert!(text.contains("exceeds the limit"), "{name}: {text}");
    }
    // Images the API can hold but no operation can work with.
    let empty = Image { width: 0, height: 0, channels: 3, data: Vec::new() };
    assert!(message(empty.resize(4, 4)).contains("empty"));
    let grey = Image { width: 2, height: 1, channels: 1, data: vec![0, 255] };
    assert!(grey.with_channels(2).is_err());
    let torn = Image { width: 2, height: 2, channels: 3, data: vec![0; 5] };
    assert!(torn.to_tensor(&Device::Cpu).is_err());
    // Pictures of nothing: no filters, no feature maps.
    let no_filters = Tensor::zeros(&[0, 1, 3, 3], DType::F32, &Device::Cpu).unwrap();
    assert!(message(nabla::viz::filter_grid(&no_filters, "conv1")).contains("no filters"));
    let no_maps = Tensor::zeros(&[0, 4, 4], DType::F32, &Device::Cpu).unwrap();
    assert!(message(nabla::viz::feature_grid(&no_maps, "conv1")).contains("no feature maps"));
}

#[test]
fn cmyk_jpegs_decode_to_their_colours() {
    // Written by Pillow from an RGB picture: left half (200, 40, 40), right half (40, 40, 200).
    let image = Image::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cmyk.jpg")).unwrap();
    assert_eq!((image.width, image.height, image.channels), (16, 8, 3));
    let pixel = |x: usize, y: usize| &image.data[(y * 16 + x) * 3..(y * 16 + x) * 3 + 3];
    for (x, expected) in [(2, [200, 40, 40]), (13, [40, 40, 200])] {
        for (got, want) in pixel(x, 4).iter().zip(expected) {
            assert!((*got as i32 - want).abs() <= 8, "pixel ({x}, 4) is {:?}, not {expected:?}", pixel(x, 4));
        }
    }
}

#[test]
fn a_gzip_stream_longer_than_its_idx_header_declares_is_refused_without_inflating_it() {
    // 8 KB of gzip that would inflate to 8 MB behind a header declaring 10 images.
    let text = message(nabla::data::mnist::load(&bad_file(""), "train", &Device::Cpu));
    assert!(text.contains("header says 10 images of 28x28"), "{text}");
}

#[test]
fn checkpoint_metadata_is_checked_before_a_model_is_built() {
    let dir = std::env::temp_dir().join(format!("nabla-safety-meta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    let weight = Tensor::zeros(&[10, 784], DType::F32, &Device::Cpu).unwrap();
    let bias = Tensor::zeros(&[10], DType::F32, &Device::Cpu).unwrap();
    let metadata = [("model", "perceptron"), ("classes", "1000000000")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into_iter()
        .collect();
    safetensors::save(&path, &[("layers.0.weight".into(), weight), ("layers.0.bias".into(), bias)], &metadata).unwrap();
    let started = std::time::Instant::now();
    let text = message(train::load_trained(&path, &Device::Cpu, None, None));
    assert!(text.contains("classes"), "{text}");
    assert!(started.elapsed().as_secs() < 5, "refused only after building the model");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn histories_no_run_could_write_are_refused_instead_of_hanging_the_plot() {
    let text = message(train::read_history(&bad_file("history_out_of_range.json")));
    assert!(text.contains("epoch 1"), "{text}");
    let history = vec![train::EpochSummary {
        epoch: 1,
        train_loss: 0.5,
        train_accuracy: Some(0.9),
        val_loss: Some(0.4),
        val_accuracy: 1e12,
        seconds: 1.0,
    }];
    assert!(message(nabla::viz::curves(&history)).contains("accuracy"));
}

#[test]
fn shape_arithmetic_that_overflows_or_outgrows_memory_is_an_error_not_a_panic_or_an_abort() {
    let dev = Device::Cpu;
    assert!(message(Tensor::zeros(&[1 << 40, 1 << 40], DType::F32, &dev)).contains("more elements"));
    assert!(Tensor::ones(&[usize::MAX], DType::F32, &dev).is_err());
    // 2^50 f32 values: 4.5 PB, more than any address space holds.
    let text = message(Tensor::zeros(&[1 << 25, 1 << 25], DType::F32, &dev));
    assert!(text.contains("out of memory") && text.contains("PB"), "{text}");
    assert!(Tensor::arange(0.0, 1e18, 1.0, DType::F32, &dev).is_err());
    assert!(Tensor::from_vec(Vec::<f32>::new(), &[1 << 40, 1 << 40, 0, 1 << 40], &dev).is_err());
    let labels = Tensor::from_vec(vec![0i64, 1], &[2], &dev).unwrap();
    assert!(labels.one_hot(1 << 40, DType::F32).is_err());
    assert!(ConfusionMatrix::new(&labels, &labels, 1 << 20).is_err());
    // A broadcast view is cheap; materialising it or computing with it is not.
    let wide = Tensor::zeros(&[1], DType::F32, &dev).unwrap().broadcast_as(&[1 << 46]).unwrap();
    assert!(message(wide.add(&wide)).contains("out of memory"));
    assert!(message(wide.contiguous()).contains("out of memory"));
    // Twice the machine's memory, well inside the address space: refused before anything is
    // allocated, also where the kernel overcommits (there the reservation succeeds, and the op
    // filled pages until the kernel killed the test process, as on the lent GPU machine).
    let total = nabla::host_memory_bytes();
    assert!(total.is_some() || !cfg!(target_os = "linux"), "Linux says how much memory it has");
    if let Some(total) = total {
        let twice = total / 2; // f32 values
        assert!(message(Tensor::zeros(&[twice], DType::F32, &dev)).contains("out of memory"));
        let wide = Tensor::zeros(&[1], DType::F32, &dev).unwrap().broadcast_as(&[twice]).unwrap();
        assert!(message(wide.add_scalar(1.0)).contains("out of memory"));
        assert!(message(wide.exp()).contains("out of memory"));
        assert!(message(wide.contiguous()).contains("out of memory"));
    }
    let column = Tensor::zeros(&[1], DType::F32, &dev).unwrap().broadcast_as(&[1 << 31, 1]).unwrap();
    let row = Tensor::zeros(&[1], DType::F32, &dev).unwrap().broadcast_as(&[1, 1 << 31]).unwrap();
    assert!(column.matmul(&row).is_err());
    let image = Tensor::zeros(&[1, 1, 4, 4], DType::F32, &dev).unwrap();
    let kernel = Tensor::zeros(&[1, 1, 3, 3], DType::F32, &dev).unwrap();
    for padding in [1usize << 40, usize::MAX / 2] {
        let options = Conv2dOptions { padding: (padding, padding), ..Default::default() };
        assert!(image.conv2d(&kernel, None, options).is_err(), "padding {padding} accepted");
    }
}

#[test]
fn writes_into_broadcast_views_and_integer_division_by_zero_are_refused() {
    let dev = Device::Cpu;
    let shared = Tensor::zeros(&[1], DType::F32, &dev).unwrap().broadcast_as(&[3]).unwrap();
    assert!(message(shared.copy_(&cpu(&[1.0, 2.0, 3.0], &[3]))).contains("broadcast"));
    let a = Tensor::from_vec(vec![7i64, 8], &[2], &dev).unwrap();
    let zero = Tensor::from_vec(vec![2i64, 0], &[2], &dev).unwrap();
    assert!(message(a.div(&zero)).contains("division by zero"));
    assert!(a.div_scalar(0.0).is_err());
    assert_eq!(a.div_scalar(2.0).unwrap().to_vec::<i64>().unwrap(), [3, 4]);
}

#[test]
fn anomaly_detection_names_the_op_that_made_the_first_nan_and_fails_a_non_finite_backward() {
    let x = cpu(&[-1.0, 4.0], &[2]).requires_grad_().unwrap();
    nabla::set_detect_anomaly(true);
    let y = x.log().unwrap().sum_all().unwrap();
    let report = nabla::take_anomaly().expect("log(-1) is NaN");
    assert!(report.contains("src/ops/") && report.contains("[2]"), "{report}");
    // d sqrt(x)/dx at 0 is infinite: the backward stops there and says which op.
    let z = cpu(&[0.0, 4.0], &[2]).requires_grad_().unwrap();
    let text = message(z.sqrt().unwrap().sum_all().unwrap().backward());
    assert!(text.contains("anomaly") && text.contains("src/ops/"), "{text}");
    nabla::set_detect_anomaly(false);
    // Off again: the same backward runs and leaves the infinity for the caller to see.
    z.sqrt().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(z.grad().unwrap().to_vec::<f32>().unwrap()[0].is_infinite());
    drop(y);
}

#[test]
fn a_diverging_run_with_anomaly_detection_names_the_step_and_the_op() {
    let (dir, config) = diverging_run("anomaly", true);
    let text = message(train::train(&config));
    assert!(text.contains("diverged at step") && text.contains("of epoch 1") && text.contains("src/ops/"), "{text}");
    assert!(!nabla::is_anomaly_enabled(), "the run switches detection off when it ends");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn files_are_read_no_further_than_their_limit() {
    let endless = Path::new("/dev/zero");
    if endless.exists() {
        assert!(message(nabla::io::read_file(endless, 1 << 20)).contains("larger than the limit"));
    }
    let small = bad_file("train-labels-idx1-ubyte");
    assert_eq!(nabla::io::read_file(&small, 18).unwrap().len(), 18);
    assert!(nabla::io::read_file(&small, 17).is_err());
}
