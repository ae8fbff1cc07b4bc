//! End-to-end training on the shipped MNIST subset: the accuracy target, determinism,
//! resumption, and the command line's behaviour on good and bad input.

use crate::common::nabla;
use nabla::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use nabla::train::{self, DataKind, ModelKind, TrainConfig};
use nabla::{Device, Generator, Tensor};
use std::path::PathBuf;

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nabla-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn weights(outcome: &train::TrainOutcome) -> Vec<Vec<f32>> {
    outcome.model.parameters().iter().map(|p: &Tensor| p.to_vec::<f32>().unwrap()).collect()
}

#[test]
#[ignore = "a full training run (minutes on 2 cores): cargo test --release -- --ignored"]
fn mlp_with_adam_reaches_97_5_percent_on_the_shipped_test_split() {
    let config = TrainConfig { out_dir: out_dir("target"), ..TrainConfig::default() };
    assert_eq!(config.model, ModelKind::Mlp);
    let outcome = train::train(&config).unwrap();
    println!("test accuracy {:.2}% after {} epochs", 100.0 * outcome.test_accuracy, outcome.history.len());
    assert!(outcome.test_accuracy >= 0.975, "test accuracy {}", outcome.test_accuracy);
    let history = train::read_history(&train::history_path(&outcome.checkpoint)).unwrap();
    assert_eq!(history.len(), config.epochs);
    assert!(history.last().unwrap().train_loss < history[0].train_loss);
}

#[test]
#[ignore = "a full training run (minutes on 2 cores): cargo test --release -- --ignored"]
fn lenet5_reaches_98_5_percent_on_the_shipped_test_split() {
    let config = TrainConfig { model: ModelKind::LeNet5, out_dir: out_dir("lenet5"), ..TrainConfig::default() };
    let outcome = train::train(&config).unwrap();
    println!("LeNet-5 test accuracy {:.2}% after {} epochs", 100.0 * outcome.test_accuracy, outcome.history.len());
    assert!(outcome.test_accuracy >= 0.985, "test accuracy {}", outcome.test_accuracy);
}

/// Five steps of `model` on one batch of the shipped digits with `optimizer` on `device`: the
/// loss before each step and the parameters after the last.
fn five_steps(model: ModelKind, adam: bool, device: &Device) -> (Vec<f64>, Vec<Vec<f32>>) {
    let digits = nabla::data::mnist::shipped("train", &Device::Cpu).unwrap();
    let geometry = DataKind::Mnist.geometry(None, None).unwrap();
    let batch = model.prepare(geometry, &digits.select(&(0..64).collect::<Vec<_>>()).unwrap()).unwrap();
    let batch = batch.to_device(device).unwrap();
    let net = model.build(geometry, 10, 0.0, Default::default(), device, &mut Generator::new(7)).unwrap();
    let mut opt: Box<dyn Optimizer> = if adam {
        Box::new(Adam::new(net.parameters(), AdamConfig::adam(1e-3)).unwrap())
    } else {
        Box::new(Sgd::new(net.parameters(), SgdConfig { momentum: 0.9, ..SgdConfig::new(0.05) }).unwrap())
    };
    let mut losses = Vec::new();
    for _ in 0..5 {
        opt.zero_grad();
        let loss = net.forward(&batch.features).unwrap().cross_entropy(&batch.targets).unwrap();
        losses.push(loss.to_scalar::<f64>().unwrap());
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    (losses, net.parameters().iter().map(|p| p.to_vec::<f32>().unwrap()).collect())
}

#[test]
fn training_steps_of_the_mlp_and_lenet5_on_the_gpu_follow_the_cpu_run() {
    for dev in crate::common::devices_under_test("training steps") {
        for (model, adam) in [(ModelKind::Mlp, true), (ModelKind::LeNet5, false)] {
            let (gpu_losses, gpu_params) = five_steps(model, adam, &dev);
            let (cpu_losses, cpu_params) = nabla::cpu::reference(|| five_steps(model, adam, &Device::Cpu));
            for (step, (g, c)) in gpu_losses.iter().zip(&cpu_losses).enumerate() {
                assert!((g - c).abs() <= 1e-4 * c.abs(), "{model:?} loss before step {step}: gpu {g}, cpu {c}");
            }
            assert!(cpu_losses[4] < cpu_losses[0], "{model:?} learns: {cpu_losses:?}");
            // Adam's first steps move every parameter by about lr whatever the gradient's size, so
            // a rounding difference in a tiny gradient can flip a step: compare within 2 lr there.
            let tol = if adam { 2e-3 } else { 1e-4 };
            for (i, (g, c)) in gpu_params.iter().zip(&cpu_params).enumerate() {
                for (j, (a, b)) in g.iter().zip(c).enumerate() {
                    assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{model:?} parameter {i}[{j}]: gpu {a}, cpu {b}");
                }
            }
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_cpu_run_and_resuming_continues_it_exactly() {
    let base = TrainConfig { model: ModelKind::Perceptron, epochs: 2, device: Device::Cpu, ..TrainConfig::default() };
    let straight = train::train(&TrainConfig { out_dir: out_dir("straight"), ..base.clone() }).unwrap();
    let again = train::train(&TrainConfig { out_dir: out_dir("again"), ..base.clone() }).unwrap();
    assert!(weights(&straight) == weights(&again), "same seed, same weights");
    assert_eq!(straight.test_accuracy, again.test_accuracy);

    // interrupted after epoch 1, then resumed from its checkpoint
    let split_dir = out_dir("split");
    let first =
        train::train_with(&TrainConfig { out_dir: split_dir.clone(), ..base.clone() }, |s| s.epoch < 1).unwrap();
    assert_eq!(first.history.len(), 1);
    let resumed =
        train::train(&TrainConfig { resume: Some(first.checkpoint.clone()), out_dir: split_dir, ..base }).unwrap();
    assert_eq!(resumed.history.len(), 2);
    assert!(weights(&resumed) == weights(&straight), "resuming after epoch 1 ends where the straight run ends");
    let losses = |o: &train::TrainOutcome| o.history.iter().map(|h| h.train_loss).collect::<Vec<_>>();
    assert_eq!(losses(&resumed), losses(&straight));
}

#[test]
fn cli_trains_and_evaluates_convolutional_models_on_cifar10_files() {
    let dir = out_dir("cifar");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = nabla::Generator::new(5);
    let record = |rng: &mut nabla::Generator| -> Vec<u8> {
        let label = rng.below(10).unwrap() as u8;
        let mut r = vec![label];
        r.extend((0..3072).map(|i| ((i as u64 * (label as u64 + 1) + rng.below(16).unwrap()) % 256) as u8));
        r
    };
    for name in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        let bytes: Vec<u8> = (0..6).flat_map(|_| record(&mut rng)).collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let (d, out) = (dir.to_str().unwrap(), dir.join("run"));
    for model in ["resnet", "lenet5"] {
        let (ok, stdout, stderr) = nabla(&[
            "train",
            "--dataset",
            "cifar10",
            "--data",
            d,
            "--model",
            model,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{model}: {stderr}");
        assert!(stdout.contains("test accuracy"), "{stdout}");
        let checkpoint = out.join("checkpoint.safetensors");
        let (ok, stdout, stderr) =
            nabla(&["eval", "--checkpoint", checkpoint.to_str().unwrap(), "--data", d, "--device", "cpu"]);
        assert!(ok && stdout.contains("on 6 test images"), "{model}: {stdout}{stderr}");
    }
    let (ok, _, stderr) = nabla(&["train", "--dataset", "cifar10", "--device", "cpu"]);
    assert!(!ok && stderr.contains("--data DIR"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_trains_evaluates_and_answers_bad_input_with_one_line() {
    let dir = out_dir("cli");
    let dir_s = dir.to_str().unwrap();
    let (ok, stdout, _) =
        nabla(&["train", "--model", "perceptron", "--epochs", "1", "--device", "cpu", "--out", dir_s]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("epoch   1/1") && stdout.contains("test accuracy"), "{stdout}");
    let checkpoint = dir.join("checkpoint.safetensors");
    let (ok, stdout, stderr) = nabla(&["eval", "--checkpoint", checkpoint.to_str().unwrap(), "--device", "cpu"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("top-1 error") && stdout.contains("top-5 error") && stdout.contains("precision"),
        "{stdout}"
    );
    let numbered_rows = stdout.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).count();
    assert!(numbered_rows >= 20, "ten class rows and ten confusion rows: {stdout}");

    std::fs::write(dir.join("corrupt.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}").unwrap();
    let corrupt = dir.join("corrupt.safetensors");
    for args in [
        vec!["train", "--epochs", "zero"],
        vec!["train", "--model", "vgg99"],
        vec!["train", "--bogus", "1"],
        vec!["train", "--epochs"],
        vec!["train", "--data", "/nonexistent", "--device", "cpu"],
        vec!["train", "--cuda-graph", "--device", "cpu", "--epochs", "1"],
        vec!["train", "--model", "gpt", "--cuda-graph", "--steps", "1"],
        vec!["eval"],
        vec!["eval", "--checkpoint", "/nonexistent.safetensors"],
        vec!["eval", "--checkpoint", corrupt.to_str().unwrap()],
        vec!["frobnicate"],
    ] {
        let (ok, _, stderr) = nabla(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.starts_with("error: ") && !stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
