//! The run folder as one unit and exact resumption: a resumed run is the straight run, bit for
//! bit; a resume that changes a setting is refused by name; `kill -9` at any moment leaves a
//! folder that resumes.

use crate::common::nabla;
use nabla::io::safetensors;
use nabla::train::{self, ModelKind, SavedRun, TrainConfig};
use nabla::{Device, Generator};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nabla-run-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn weights(model: &dyn nabla::nn::Module) -> Vec<Vec<f32>> {
    model.parameters().iter().map(|p| p.to_vec::<f32>().unwrap()).collect()
}

/// What of a history must repeat exactly (the seconds do not).
fn numbers(history: &[train::EpochSummary]) -> Vec<(usize, u64, u64, u64)> {
    history
        .iter()
        .map(|h| (h.epoch, h.train_loss.to_bits(), h.val_accuracy.to_bits(), h.val_loss.unwrap_or(0.0).to_bits()))
        .collect()
}

/// An MLP run with dropout, shifts and a warm-up before the cosine: everything a resume must
/// reproduce (data order, augmentation, dropout masks, the schedule, Adam's moments).
fn dropout_run(out: &Path) -> TrainConfig {
    TrainConfig {
        model: ModelKind::Mlp,
        epochs: 3,
        dropout: 0.2,
        shift: 1,
        warmup: Some(1),
        device: Device::Cpu,
        out_dir: out.to_path_buf(),
        ..TrainConfig::default()
    }
}

#[test]
fn a_run_resumed_from_its_folder_alone_is_bit_identical_to_the_straight_run_with_dropout_and_warmup() {
    let straight = train::train(&dropout_run(&out_dir("straight"))).unwrap();
    let dir = out_dir("resumed");
    let first = train::train_with(&dropout_run(&dir), |s| s.epoch < 1).unwrap();
    assert_eq!(first.history.len(), 1);
    // Everything comes from the folder: no setting is repeated.
    let config = TrainConfig::resuming(&dir, Device::Cpu).unwrap();
    assert_eq!(config.dropout, 0.2);
    assert_eq!(config.epochs, 3);
    let resumed = train::train(&config).unwrap();
    assert_eq!(resumed.epochs_trained, 2);
    assert_eq!(numbers(&resumed.history), numbers(&straight.history));
    assert!(weights(resumed.model.as_ref()) == weights(straight.model.as_ref()), "resumed weights differ");
    assert_eq!(resumed.test_accuracy, straight.test_accuracy);

    // The folder holds the checkpoint, its history and the optimizer state of its epoch only.
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["checkpoint.safetensors", "history.json", "optimizer-0003.safetensors"]);
    let history = train::read_history(&dir.join("history.json")).unwrap();
    assert_eq!(numbers(&history), numbers(&straight.history));

    // A complete run resumed trains nothing and says so through `epochs_trained`.
    let again = train::train(&TrainConfig::resuming(&dir, Device::Cpu).unwrap()).unwrap();
    assert_eq!(again.epochs_trained, 0);
    assert!(weights(again.model.as_ref()) == weights(straight.model.as_ref()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_resumed_on_the_gpu_follows_the_straight_gpu_run_within_its_tolerance() {
    let Some(gpu) = crate::common::cuda_or_skip("resume on the gpu") else { return };
    // A small folder data set (16 images of 8 x 8 to train on) keeps the emulated run short.
    let data = out_dir("gpu-data");
    crate::common::image_folder(&data, &["a", "b"], 10);
    let run = |out: &Path| TrainConfig {
        dataset: train::DataKind::Folder,
        data: Some(data.clone()),
        channels: Some(1),
        image_size: Some(8),
        batch_size: 4,
        shift: 1,
        epochs: 2,
        device: gpu,
        ..dropout_run(out)
    };
    let straight = train::train(&run(&out_dir("gpu-straight"))).unwrap();
    let dir = out_dir("gpu-resumed");
    train::train_with(&run(&dir), |s| s.epoch < 1).unwrap();
    let resumed = train::train(&TrainConfig::resuming(&dir, gpu).unwrap()).unwrap();
    assert_eq!(resumed.epochs_trained, 1);
    let (atol, rtol) = crate::common::tolerance(nabla::DType::F32);
    for (a, b) in
        weights(resumed.model.as_ref()).iter().flatten().zip(weights(straight.model.as_ref()).iter().flatten())
    {
        assert!((a - b).abs() as f64 <= atol + rtol * b.abs() as f64, "resumed {a}, straight {b}");
    }
    for dir in [data, dir, out_dir("gpu-straight")] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A two-epoch perceptron run into `dir` (fast: the tests stop it after its first epoch).
fn perceptron_run(dir: &Path) -> TrainConfig {
    TrainConfig {
        model: ModelKind::Perceptron,
        epochs: 2,
        device: Device::Cpu,
        out_dir: dir.to_path_buf(),
        ..TrainConfig::default()
    }
}

#[test]
fn a_resume_that_changes_a_setting_is_refused_with_the_setting_named() {
    let dir = out_dir("changed");
    train::train_with(&perceptron_run(&dir), |_| false).unwrap();
    let resume = TrainConfig::resuming(&dir, Device::Cpu).unwrap();
    let cases: [(&str, TrainConfig); 6] = [
        ("--lr 0.01", TrainConfig { lr: 0.01, ..resume.clone() }),
        ("--epochs 4", TrainConfig { epochs: 4, ..resume.clone() }),
        ("--optimizer sgd", TrainConfig { optimizer: train::OptimizerKind::Sgd, ..resume.clone() }),
        ("--seed 3", TrainConfig { seed: 3, ..resume.clone() }),
        ("--batch-size 32", TrainConfig { batch_size: 32, ..resume.clone() }),
        ("--shift 0", TrainConfig { shift: 0, ..resume.clone() }),
    ];
    for (flag, config) in cases {
        let message = train::train(&config).err().expect(flag).to_string();
        assert!(message.contains(flag) && message.contains("the run's is"), "{flag}: {message}");
    }
    let other_model = TrainConfig { model: ModelKind::Mlp, ..resume.clone() };
    assert!(train::train(&other_model).is_err());
    // The refusals changed nothing: the run still resumes and finishes.
    assert_eq!(train::train(&resume).unwrap().history.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resuming_repairs_what_an_interrupted_save_left_and_refuses_metadata_pointing_outside() {
    let dir = out_dir("repair");
    train::train_with(&perceptron_run(&dir), |_| false).unwrap();
    // What a kill can leave: a torn temporary file, the next epoch's optimizer state written
    // but not committed, and a history one epoch behind the checkpoint.
    std::fs::write(dir.join(".checkpoint.safetensors.tmp4242"), b"torn").unwrap();
    std::fs::write(dir.join("optimizer-0002.safetensors"), b"uncommitted").unwrap();
    std::fs::write(dir.join("history.json"), b"[]").unwrap();
    let resumed = train::train(&TrainConfig::resuming(&dir, Device::Cpu).unwrap()).unwrap();
    assert_eq!(resumed.history.len(), 2);
    assert!(!dir.join(".checkpoint.safetensors.tmp4242").exists());
    assert!(!dir.join("optimizer-0001.safetensors").exists(), "the older state goes after the commit");
    assert_eq!(train::read_history(&dir.join("history.json")).unwrap().len(), 2);

    // A checkpoint whose metadata names a file outside its folder is refused.
    let path = dir.join("checkpoint.safetensors");
    let mut saved = safetensors::load(&path).unwrap();
    saved.metadata.insert("optimizer_state".into(), "../../etc/passwd".into());
    let named: Vec<_> = saved.tensors.clone().into_iter().collect();
    safetensors::save(&path, &named, &saved.metadata).unwrap();
    let message = TrainConfig::resuming(&dir, Device::Cpu).expect_err("refused").to_string();
    assert!(message.contains("optimizer_state"), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cli_resumes_from_the_folder_alone_refuses_changed_flags_and_says_when_complete() {
    let dir = out_dir("cli");
    let d = dir.to_str().unwrap();
    let (ok, _, stderr) = nabla(&[
        "train",
        "--model",
        "perceptron",
        "--epochs",
        "1",
        "--lr",
        "0.01",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        d,
    ]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = nabla(&["train", "--resume", d, "--device", "cpu", "--quiet"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("already complete (1 of 1 epochs)"), "{stdout}");
    // Repeating a setting is fine; changing one is refused by name.
    let (ok, _, stderr) = nabla(&["train", "--resume", d, "--lr", "0.01", "--device", "cpu", "--quiet"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = nabla(&["train", "--resume", d, "--epochs", "3", "--device", "cpu", "--quiet"]);
    assert!(!ok && stderr.starts_with("error: ") && stderr.contains("--epochs 3 (the run's is 1)"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Checks that a run folder is consistent: the checkpoint (if any) loads, its history is whole,
/// the optimizer state it names exists and holds a state for every parameter, and
/// `history.json` is the checkpoint's history or one epoch behind it. Returns the epochs done.
fn check_consistent(dir: &Path) -> usize {
    let path = dir.join("checkpoint.safetensors");
    if !path.exists() {
        return 0;
    }
    let saved = safetensors::load(&path).unwrap();
    let run = SavedRun::read(&path, &saved).unwrap();
    let done: usize = saved.metadata["epochs_done"].parse().unwrap();
    assert_eq!(run.history.len(), done);
    assert!(run.history.iter().enumerate().all(|(i, h)| h.epoch == i + 1));
    let state = safetensors::load(run.optimizer_state.as_ref().expect("a named optimizer state")).unwrap();
    assert!(state.tensors.len() >= saved.tensors.len(), "a moment and a step per parameter");
    if let Ok(history) = train::read_history(&dir.join("history.json")) {
        assert!(history.len() == done || history.len() + 1 == done, "{} vs {done}", history.len());
    }
    done
}

fn has_temporary_file(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .is_ok_and(|entries| entries.flatten().any(|e| nabla::io::is_temporary_name(&e.file_name().to_string_lossy())))
}

#[test]
fn killing_nabla_train_at_random_moments_leaves_a_folder_that_resumes_to_the_straight_run() {
    let epochs = 4;
    let dir = out_dir("crash");
    let d = dir.to_str().unwrap().to_string();
    let fresh = ["train", "--model", "mlp", "--epochs", "4", "--dropout", "0.1", "--shift", "1", "--device", "cpu"];
    let straight = train::train(&TrainConfig {
        model: ModelKind::Mlp,
        epochs,
        dropout: 0.1,
        shift: 1,
        device: Device::Cpu,
        out_dir: out_dir("crash-straight"),
        ..TrainConfig::default()
    })
    .unwrap();
    let expected = weights(straight.model.as_ref());
    let mut rng = Generator::new(2026);
    let (mut kills, mut inside_writes, mut completed) = (0, 0, 0);
    while kills < 30 || completed == 0 {
        let resume = dir.join("checkpoint.safetensors").exists();
        let mut args: Vec<&str> =
            if resume { vec!["train", "--resume", &d, "--device", "cpu"] } else { fresh.to_vec() };
        if !resume {
            args.extend(["--out", &d]);
        }
        args.push("--quiet");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nabla"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if kills % 2 == 0 {
            std::thread::sleep(Duration::from_millis(100 + rng.below(1200).unwrap()));
        } else {
            // Every other kill lands inside a save: as soon as a temporary file appears, after
            // a random moment more (in the optimizer state's, the checkpoint's or the history's).
            let started = std::time::Instant::now();
            while !has_temporary_file(&dir) && started.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_micros(100));
            }
            std::thread::sleep(Duration::from_micros(rng.below(500).unwrap()));
        }
        let finished = child.try_wait().unwrap().is_some();
        if !finished && kills < 30 {
            child.kill().unwrap();
            kills += 1;
        }
        let output = child.wait_with_output().unwrap();
        let killed = !finished && output.status.code().is_none();
        assert!(killed || output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        if killed && has_temporary_file(&dir) {
            inside_writes += 1;
        }
        let done = check_consistent(&dir);
        if !killed {
            assert_eq!(done, epochs);
            let saved = safetensors::load(&dir.join("checkpoint.safetensors")).unwrap();
            let got: Vec<Vec<f32>> = straight
                .model
                .named_parameters()
                .iter()
                .map(|(name, _)| saved.tensors[name].to_vec::<f32>().unwrap())
                .collect();
            assert!(got == expected, "the killed and resumed run ends where the straight run ends");
            completed += 1;
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    eprintln!("crash test: {kills} kills ({inside_writes} inside a write), {completed} runs completed and matched");
    assert!(inside_writes > 0, "no kill landed inside a write");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(out_dir("crash-straight"));
}
