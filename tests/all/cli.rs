//! The command line's conventions: help, version, completions, errors for unknown or extra
//! arguments, class names through eval and predict, PyTorch state dicts, and `convolve`'s options.

use crate::common::nabla;
use nabla::Device;
use nabla::io::image::Image;
use std::path::PathBuf;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nabla-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bare_nabla_prints_help_and_every_command_documents_its_flags() {
    let (ok, stdout, _) = nabla(&[]);
    assert!(
        ok && stdout.contains("Usage: nabla") && stdout.contains("train") && stdout.contains("predict"),
        "{stdout}"
    );
    let (ok, stdout, _) = nabla(&["--version"]);
    assert!(ok && stdout.trim() == format!("nabla {}", env!("CARGO_PKG_VERSION")), "{stdout}");
    let (ok, stdout, _) = nabla(&["train", "--help"]);
    assert!(ok, "{stdout}");
    for shown in ["--epochs", "[default: 20]", "[1..]", "--lr", "--no-flip", "--image-size", "--quiet", "lenet5"] {
        assert!(stdout.contains(shown), "train --help lacks {shown}: {stdout}");
    }
    for command in ["eval", "predict", "convolve", "viz", "info", "check", "completions"] {
        let (ok, stdout, stderr) = nabla(&[command, "--help"]);
        assert!(ok && stdout.contains("Usage: nabla"), "{command}: {stdout}{stderr}");
    }
    let (ok, stdout, _) = nabla(&["completions", "bash"]);
    assert!(ok && stdout.contains("_nabla()") && stdout.contains("--batch-size"), "bash completions");
}

#[test]
fn unknown_extra_and_out_of_range_arguments_are_one_line_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["trian"], "similar"),
        (&["train", "--epochs=0"], "--epochs"),
        (&["train", "--lr", "-1"], "--lr"),
        (&["train", "--lr=inf"], "--lr"),
        (&["train", "--dropout", "1"], "--dropout"),
        (&["train", "--epohcs", "3"], "--epochs"),
        (&["train", "extra"], "unexpected argument"),
        (&["train", "--model", "vgg99"], "possible values"),
        (&["eval"], "--checkpoint"),
        (&["predict", "--checkpoint", "x.safetensors"], "IMAGE"),
        (&["viz", "sideways"], "unrecognized subcommand"),
    ];
    for (args, expected) in cases {
        let (ok, _, stderr) = nabla(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.starts_with("error: ") && stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let (ok, _, stderr) = nabla(&["check", "--device", "cpu"]);
    assert!(!ok && stderr.starts_with("error: ") && stderr.contains("no CUDA device"), "{stderr}");
}

use crate::common::image_folder;

#[test]
fn folder_runs_keep_class_names_for_eval_and_predict_and_bad_folders_are_refused_with_counts() {
    let dir = temp_dir("folder");
    let data = dir.join("data");
    image_folder(&data, &["bark", "brick", "grass"], 6);
    let out = dir.join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let (ok, stdout, stderr) = nabla(&[
        "train",
        "--dataset",
        "folder",
        "--data",
        d,
        "--model",
        "lenet5",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "16",
        "--channels",
        "1",
        "--no-flip",
        "--device",
        "cpu",
        "--out",
        o,
        "--seed",
        "3",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("3 classes, 14 train / 2 validation / 2 test images of 1x16x16")
            && stdout.contains("flips off"),
        "{stdout}"
    );
    let checkpoint = out.join("checkpoint.safetensors");
    let saved = nabla::io::safetensors::load(&checkpoint).unwrap();
    assert_eq!(saved.metadata["class_names"], r#"["bark","brick","grass"]"#);
    assert_eq!((saved.metadata["channels"].as_str(), saved.metadata["image_size"].as_str()), ("1", "16"));
    assert_eq!(saved.tensors["classifier.4.weight"].shape(), &[3, 84], "three classes out");
    let c = checkpoint.to_str().unwrap();
    let (ok, stdout, stderr) = nabla(&["eval", "--checkpoint", c, "--data", d, "--device", "cpu"]);
    assert!(ok && stdout.contains("on 2 test images") && stdout.contains("brick"), "{stdout}{stderr}");
    let picture = data.join("grass").join("0.png");
    let (ok, stdout, stderr) =
        nabla(&["predict", "--checkpoint", c, "--device", "cpu", "--top", "2", picture.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let line = stdout.lines().next().unwrap_or_default();
    let shown: Vec<&str> = line.split(": ").nth(1).unwrap_or_default().split(", ").collect();
    assert_eq!(shown.len(), 2, "{stdout}");
    assert!(
        shown.iter().all(|s| ["bark ", "brick ", "grass "].iter().any(|n| s.starts_with(n)) && s.ends_with('%')),
        "{stdout}"
    );

    let lonely = dir.join("lonely");
    image_folder(&lonely, &["only"], 12);
    let (ok, _, stderr) =
        nabla(&["train", "--dataset", "folder", "--data", lonely.to_str().unwrap(), "--device", "cpu"]);
    assert!(!ok && stderr.contains("1 class folder(s) (only)") && stderr.contains("at least 2"), "{stderr}");
    let empty = dir.join("empty");
    image_folder(&empty, &["a", "b"], 6);
    std::fs::create_dir_all(empty.join("c")).unwrap();
    let (ok, _, stderr) =
        nabla(&["train", "--dataset", "folder", "--data", empty.to_str().unwrap(), "--device", "cpu"]);
    assert!(!ok && stderr.contains("a: 6, b: 6, c: 0"), "{stderr}");
    let few = dir.join("few");
    image_folder(&few, &["a", "b"], 3);
    let (ok, _, stderr) = nabla(&["train", "--dataset", "folder", "--data", few.to_str().unwrap(), "--device", "cpu"]);
    assert!(!ok && stderr.contains("6 images in all") && stderr.contains("at least 10"), "{stderr}");
    let (ok, _, stderr) = nabla(&["train", "--image-size", "32", "--device", "cpu"]);
    assert!(!ok && stderr.contains("mnist images are 1x28x28"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_accepts_a_plain_pytorch_state_dict_given_the_model() {
    use nabla::nn::{Activation, Mlp};
    let dir = temp_dir("torch");
    let model =
        Mlp::new(&[784, 512, 512, 10], Activation::Relu, 0.0, &Device::Cpu, &mut nabla::Generator::new(4)).unwrap();
    let path = dir.join("state_dict.safetensors");
    // As `safetensors.torch.save_file(model.state_dict(), path)` writes it: no metadata.
    nabla::io::save_module(&path, &model, &Default::default()).unwrap();
    let p = path.to_str().unwrap();
    let (ok, _, stderr) = nabla(&["eval", "--checkpoint", p, "--device", "cpu"]);
    assert!(!ok && stderr.contains("--model"), "asks which model: {stderr}");
    let (ok, stdout, stderr) = nabla(&["eval", "--checkpoint", p, "--model", "mlp", "--device", "cpu"]);
    assert!(ok && stdout.contains("on 2000 test images") && stdout.contains("top-1 error"), "{stdout}{stderr}");
    let (ok, _, stderr) = nabla(&["eval", "--checkpoint", p, "--model", "lenet5", "--device", "cpu"]);
    assert!(!ok && stderr.contains("checkpoint has no tensor"), "a wrong model is named: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn convolve_writes_png_only_and_offers_one_by_one_kernels_magnitudes_and_reflected_borders() {
    let dir = temp_dir("convolve");
    let input = dir.join("in.png");
    // A 4x4 grey ramp: 0, 16, 32, ... 240.
    Image { width: 4, height: 4, channels: 1, data: (0..16).map(|v| v as u8 * 16).collect() }.save_png(&input).unwrap();
    let run = |kernel: &str, extra: &[&str], out: &str| {
        let out = dir.join(out);
        let mut args =
            vec!["convolve", "--kernel", kernel, input.to_str().unwrap(), out.to_str().unwrap(), "--device", "cpu"];
        args.extend_from_slice(extra);
        let (ok, _, stderr) = nabla(&args);
        (ok, stderr, out)
    };
    let (ok, stderr, _) = run("edge", &[], "out.jpg");
    assert!(!ok && stderr.contains(".png"), "{stderr}");
    let (ok, stderr, out) = run("0.5", &[], "half.png");
    assert!(ok, "{stderr}");
    let half = Image::load(&out).unwrap();
    assert_eq!(half.data, (0..16).map(|v| ((v * 16) as f64 / 2.0).round() as u8).collect::<Vec<_>>(), "1x1 kernel");
    // A horizontal difference: negative everywhere on a rising ramp, so black without --abs.
    let (ok, stderr, out) = run("0,0,0;1,0,-1;0,0,0", &["--border", "reflect"], "diff.png");
    assert!(ok, "{stderr}");
    assert!(Image::load(&out).unwrap().data.iter().skip(1).step_by(4).all(|&v| v == 0));
    let (ok, stderr, out) = run("0,0,0;1,0,-1;0,0,0", &["--border", "reflect", "--abs"], "abs.png");
    assert!(ok, "{stderr}");
    let abs = Image::load(&out).unwrap();
    // Interior columns: |x[i-1] - x[i+1]| = 32; reflected edges: |x[1] - x[1]| = 0.
    for row in abs.data.chunks(4) {
        assert_eq!(row, [0, 32, 32, 0], "{:?}", abs.data);
    }
    let (ok, stderr, _) = run("NaN,0,0;0,1,0;0,0,0", &[], "nan.png");
    assert!(!ok && stderr.contains("not a finite number"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gpt_trains_generates_and_evaluates_through_the_cli_and_refuses_bad_input() {
    let dir = temp_dir("gpt");
    let text = dir.join("text.txt");
    std::fs::write(&text, "to be or not to be, that is the question. ".repeat(40)).unwrap();
    let (t, out) = (text.to_str().unwrap(), dir.join("run"));
    let (ok, stdout, stderr) = nabla(&[
        "train",
        "--model",
        "gpt",
        "--data",
        t,
        "--layers",
        "1",
        "--heads",
        "2",
        "--width",
        "32",
        "--context",
        "16",
        "--steps",
        "30",
        "--eval-every",
        "15",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("step    15/30") && stdout.contains("bits/char") && stdout.contains("a sample:"),
        "{stdout}"
    );
    let checkpoint = out.join("checkpoint.safetensors");
    let saved = nabla::io::safetensors::load(&checkpoint).unwrap();
    assert_eq!(saved.metadata["vocabulary"], " ,.abehinoqrstu", "the vocabulary travels in the checkpoint");
    assert!(
        saved.tensors.contains_key("lm_head.weight")
            && saved.tensors.contains_key("transformer.h.0.attn.c_attn.weight")
    );
    let c = checkpoint.to_str().unwrap();
    let (ok, stdout, stderr) =
        nabla(&["generate", "--checkpoint", c, "--prompt", "to be", "--tokens", "20", "--device", "cpu"]);
    assert!(ok && stdout.starts_with("to be") && stdout.trim_end().chars().count() == 25, "{stdout}{stderr}");
    assert!(stderr.contains("tokens/s"), "{stderr}");
    let (ok, stdout, stderr) = nabla(&["eval", "--checkpoint", c, "--text", t, "--device", "cpu"]);
    assert!(ok && stdout.contains("perplexity"), "{stdout}{stderr}");

    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let image_run = dir.join("mlp");
    let (ok, _, stderr) = nabla(&[
        "train",
        "--model",
        "perceptron",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        image_run.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let image = image_run.join("checkpoint.safetensors");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["generate", "--checkpoint", c, "--prompt", "Zebra", "--device", "cpu"], "'Z'"),
        (vec!["train", "--model", "gpt", "--data", empty.to_str().unwrap(), "--device", "cpu"], "empty"),
        (vec!["generate", "--checkpoint", image.to_str().unwrap(), "--device", "cpu"], "not a gpt"),
        (vec!["eval", "--checkpoint", c, "--text", empty.to_str().unwrap(), "--device", "cpu"], "nothing to predict"),
        (vec!["eval", "--checkpoint", image.to_str().unwrap(), "--model", "gpt", "--device", "cpu"], "text model"),
        (vec!["generate", "--checkpoint", c, "--temperature", "0", "--device", "cpu"], "--temperature"),
    ];
    for (args, expected) in cases {
        let (ok, stdout, stderr) = nabla(&args);
        assert!(!ok && stderr.starts_with("error: ") && stderr.contains(expected), "{args:?}: {stdout}{stderr}");
        assert!(stderr.lines().next().is_some_and(|l| l.contains(expected)), "the first line says it: {stderr}");
        assert!(stdout.is_empty(), "nothing printed before the error: {stdout}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
