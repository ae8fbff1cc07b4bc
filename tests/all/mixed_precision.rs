//! Mixed precision: autocast runs the products of f32 tensors in bf16 or f16 and hands back f32
//! results and f32 gradients; the loss scaler skips overflowing steps and moves its scale; and a
//! short training run at each precision follows the f32 run within a stated tolerance.

use crate::common::{assert_close, cuda_or_skip, nabla};
use nabla::optim::{GradScaler, Sgd, SgdConfig};
use nabla::train::{self, ModelKind, TrainConfig};
use nabla::{Conv2dOptions, DType, Device, Generator, Precision, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F32, &Device::Cpu, &mut Generator::new(seed)).unwrap()
}

/// (output, gradients of every input) of `f` for the upstream gradient `g`.
fn with_gradients(inputs: &[&Tensor], g: &Tensor, f: impl Fn(&[Tensor]) -> Tensor) -> Vec<Tensor> {
    let leaves: Vec<Tensor> = inputs.iter().map(|t| t.detach().requires_grad_().unwrap()).collect();
    let y = f(&leaves);
    y.mul(g).unwrap().sum_all().unwrap().backward().unwrap();
    let mut out = vec![y.detach()];
    out.extend(leaves.iter().map(|l| l.grad().unwrap()));
    out
}

#[test]
fn autocast_runs_products_in_the_low_dtype_and_returns_f32_results_and_f32_gradients() {
    let (x, w, b) = (randn(&[6, 40], 1), randn(&[24, 40], 2), randn(&[24], 3));
    let g = randn(&[6, 24], 4);
    for low in [DType::BF16, DType::F16] {
        let autocast = with_gradients(&[&x, &w, &b], &g, |t| {
            nabla::autocast(low, || t[0].linear(&t[1], Some(&t[2]))).unwrap().unwrap()
        });
        // The definition: each operand rounded to the low dtype, the product there (f32
        // accumulation), the result rounded to it; backward, g rounded to the low dtype once,
        // dX = g W and dW = gᵀ x accumulated in f32 and kept in f32 (not rounded), and the
        // bias's gradient g summed in f32.
        let round = |t: &Tensor| t.to_dtype(low).unwrap().to_dtype(DType::F32).unwrap();
        let (xr, wr, br, gr) = (round(&x), round(&w), round(&b), round(&g));
        let by_hand = [
            round(&xr.linear(&wr, Some(&br)).unwrap()),
            gr.matmul(&wr).unwrap(),
            gr.t().unwrap().matmul(&xr).unwrap(),
            g.sum(&[0], false).unwrap(),
        ];
        for (i, (a, h)) in autocast.iter().zip(&by_hand).enumerate() {
            assert_eq!(a.dtype(), DType::F32, "{low} output {i} comes back in f32");
            // (the output: one rounding of nearly equal f32 sums may land a step apart)
            let tol = if i == 0 { (1e-5, 2f64.powi(-7)) } else { (1e-5, 1e-6) };
            assert_close(&format!("{low} output {i}"), a, h, tol);
            // the gradients come from the f32 accumulators: not rounded to the low dtype
            let (kept, rounded) = (a.to_vec::<f32>().unwrap(), round(a).to_vec::<f32>().unwrap());
            assert_eq!(kept == rounded, i == 0, "{low} output {i}: rounded to {low} only in the forward");
        }
        // with the ReLU in the epilogue, the same product clamped, its gradient masked
        let fused = with_gradients(&[&x, &w, &b], &g, |t| {
            nabla::autocast(low, || t[0].linear_relu(&t[1], Some(&t[2]))).unwrap().unwrap()
        });
        let relu = autocast[0].relu().unwrap();
        assert_eq!(fused[0].to_vec::<f32>().unwrap(), relu.to_vec::<f32>().unwrap(), "{low} linear_relu");
        let masked = round(&g.mul(&relu.sign().unwrap()).unwrap());
        assert_close(&format!("{low} linear_relu dX"), &fused[1], &masked.matmul(&wr).unwrap(), (1e-5, 1e-6));
        // The rounding is real: the f32 product differs from the autocast one.
        let plain = x.linear(&w, Some(&b)).unwrap().to_vec::<f32>().unwrap();
        assert_ne!(plain, autocast[0].to_vec::<f32>().unwrap(), "{low}: the inputs were rounded");
    }
    // Outside autocast, and for a dtype that is not a 16-bit float, nothing changes.
    assert_eq!(nabla::amp::autocast_dtype(), None, "the state is restored");
    assert!(nabla::autocast(DType::F32, || ()).is_err());
    let nested = nabla::autocast(DType::BF16, || {
        nabla::autocast(DType::F16, nabla::amp::autocast_dtype).unwrap();
        nabla::amp::autocast_dtype()
    });
    assert_eq!(nested.unwrap(), Some(DType::BF16), "an inner autocast restores the outer one");
}

#[test]
fn autocast_covers_matmul_convolution_and_attention_and_leaves_other_ops_in_f32() {
    let low = DType::BF16;
    let (a, b) = (randn(&[3, 5, 17], 10), randn(&[17, 9], 11));
    let got = nabla::autocast(low, || a.matmul(&b)).unwrap().unwrap();
    let want = a.to_dtype(low).unwrap().matmul(&b.to_dtype(low).unwrap()).unwrap().to_dtype(DType::F32).unwrap();
    assert_eq!(got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap(), "matmul");

    let (x, w) = (randn(&[2, 3, 9, 9], 12), randn(&[4, 3, 3, 3], 13));
    let opt = Conv2dOptions::new(2, 1);
    let got = nabla::autocast(low, || x.conv2d(&w, None, opt)).unwrap().unwrap();
    let want = x.to_dtype(low).unwrap().conv2d(&w.to_dtype(low).unwrap(), None, opt).unwrap();
    assert_eq!(got.dtype(), DType::F32);
    assert_eq!(got.to_vec::<f32>().unwrap(), want.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(), "conv2d");

    let q = randn(&[1, 2, 7, 16], 14);
    let got = nabla::autocast(low, || q.scaled_dot_product_attention(&q, &q, true, None)).unwrap().unwrap();
    let ql = q.to_dtype(low).unwrap();
    let want = ql.scaled_dot_product_attention(&ql, &ql, true, None).unwrap().to_dtype(DType::F32).unwrap();
    assert_eq!(got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap(), "attention");

    // Softmax and reductions are not products: they stay in f32, bit for bit.
    let s = randn(&[4, 33], 15);
    let inside = nabla::autocast(low, || s.softmax(-1).unwrap().sum(&[1], false).unwrap()).unwrap();
    assert_eq!(
        inside.to_vec::<f32>().unwrap(),
        s.softmax(-1).unwrap().sum(&[1], false).unwrap().to_vec::<f32>().unwrap()
    );
}

#[test]
fn autocast_on_the_gpu_matches_the_cpu_autocast_within_the_low_dtypes_tolerance() {
    let Some(gpu) = cuda_or_skip("autocast on the GPU") else { return };
    // Depth 70 (the first tensor-core GEMM: not a multiple of 8), and 2048 rows, whose weight
    // gradient is one output tile 2048 deep (version 2, its depth split and the splits added up
    // in f32).
    for (seed, (m, k, n)) in [(37, 70, 33), (2048, 16, 24)].into_iter().enumerate() {
        let seed = 20 + 4 * seed as u64;
        let (x, w, b) = (randn(&[m, k], seed), randn(&[n, k], seed + 1), randn(&[n], seed + 2));
        let g = randn(&[m, n], seed + 3);
        for (low, relu) in [(DType::BF16, false), (DType::F16, false), (DType::BF16, true)] {
            let run = |device: &Device| {
                let moved: Vec<Tensor> = [&x, &w, &b].iter().map(|t| t.to_device(device).unwrap()).collect();
                let out = with_gradients(&moved.iter().collect::<Vec<_>>(), &g.to_device(device).unwrap(), |t| {
                    let bias = Some(&t[2]);
                    let y = nabla::autocast(low, || {
                        if relu { t[0].linear_relu(&t[1], bias) } else { t[0].linear(&t[1], bias) }
                    });
                    y.unwrap().unwrap()
                });
                out.into_iter().map(|t| t.to_device(&Device::Cpu).unwrap()).collect::<Vec<_>>()
            };
            let (on_gpu, on_cpu) = (run(&gpu), nabla::cpu::reference(|| run(&Device::Cpu)));
            for (i, (a, c)) in on_gpu.iter().zip(&on_cpu).enumerate() {
                assert_eq!(a.dtype(), DType::F32);
                // The same rounded operands on both sides: the output, rounded to the low dtype,
                // may land a step apart; the gradients, kept in f32, differ by f32 accumulation
                // alone (depth n and m; the bias gradient sums m values), far below a 16-bit
                // rounding.
                let what = format!("{low} autocast linear {m}x{k}x{n}, ReLU: {relu}, output {i}");
                let (atol, rtol) = crate::common::tolerance(low);
                let tol = if i == 0 { (atol * 9.0, rtol * 9.0) } else { (2e-6 * [k, n, m, m][i] as f64, 1e-5) };
                assert_close(&what, a, c, tol);
            }
        }
    }
}

#[test]
fn the_loss_scaler_skips_overflowing_steps_and_moves_its_scale() {
    let p = Tensor::from_vec(vec![1.0f32, 2.0], &[2], &Device::Cpu).unwrap().requires_grad_().unwrap();
    let mut opt = Sgd::new(vec![p.clone()], SgdConfig::new(0.5)).unwrap();
    let mut scaler = GradScaler::new(8.0, 2.0, 0.5, 2).unwrap();
    // A gradient with an infinity: no step, the scale halves.
    p.set_grad(Some(Tensor::from_vec(vec![f32::INFINITY, 1.0], &[2], &Device::Cpu).unwrap())).unwrap();
    assert!(!scaler.step(&mut opt).unwrap());
    assert_eq!(p.to_vec::<f32>().unwrap(), [1.0, 2.0], "the parameters are untouched");
    assert_eq!((scaler.scale(), scaler.skipped_steps()), (4.0, 1));
    // Finite (scaled) gradients: unscaled by 4, then one SGD step of lr 0.5.
    for step in 0..2 {
        p.set_grad(Some(Tensor::from_vec(vec![4.0f32, -8.0], &[2], &Device::Cpu).unwrap())).unwrap();
        assert!(scaler.step(&mut opt).unwrap());
        let want = [1.0 - 0.5 * (step + 1) as f32, 2.0 + (step + 1) as f32];
        assert_eq!(p.to_vec::<f32>().unwrap(), want, "step {step}");
    }
    assert_eq!(scaler.scale(), 8.0, "two good steps in a row double the scale");
    // A NaN counts as an overflow too; the state survives a round trip.
    p.set_grad(Some(Tensor::from_vec(vec![f32::NAN, 0.0], &[2], &Device::Cpu).unwrap())).unwrap();
    assert!(!scaler.step(&mut opt).unwrap());
    let saved = scaler.state().into_iter().collect();
    let mut restored = GradScaler::new(8.0, 2.0, 0.5, 2).unwrap();
    restored.set_state(&saved).unwrap();
    assert_eq!(restored.scale(), scaler.scale());
    // Bad settings are errors that name them.
    for (init, growth, backoff, interval) in
        [(0.0, 2.0, 0.5, 1), (1.0, 1.0, 0.5, 1), (1.0, 2.0, 1.0, 1), (1.0, 2.0, 0.5, 0)]
    {
        assert!(GradScaler::new(init, growth, backoff, interval).is_err());
    }
}

#[test]
fn mlp_training_in_bf16_and_f16_follows_the_f32_run_within_the_stated_tolerance() {
    let dir = std::env::temp_dir().join(format!("nabla-amp-{}", std::process::id()));
    let run = |precision: Precision| {
        let config = TrainConfig {
            model: ModelKind::Mlp,
            epochs: 2,
            shift: 0,
            precision,
            out_dir: dir.join(precision.name()),
            ..TrainConfig::default()
        };
        train::train(&config).unwrap()
    };
    let f32_run = run(Precision::F32);
    for precision in [Precision::Bf16, Precision::F16] {
        let low = run(precision);
        for (a, b) in low.history.iter().zip(&f32_run.history) {
            println!(
                "epoch {}: train loss {precision} {:.4} / f32 {:.4}, validation accuracy {:.4} / {:.4}",
                a.epoch, a.train_loss, b.train_loss, a.val_accuracy, b.val_accuracy
            );
        }
        println!("test accuracy {precision} {:.4} / f32 {:.4}", low.test_accuracy, f32_run.test_accuracy);
        // docs/benchmarks.md states the tolerance: each epoch's mean training loss within 5% of
        // the f32 run's, and accuracies within 1.5 points.
        for (a, b) in low.history.iter().zip(&f32_run.history) {
            let ratio = a.train_loss / b.train_loss;
            assert!(
                (0.95..1.05).contains(&ratio),
                "{precision} epoch {}: loss {} vs f32 {}",
                a.epoch,
                a.train_loss,
                b.train_loss
            );
            let (va, vb) = (a.val_accuracy, b.val_accuracy);
            assert!((va - vb).abs() <= 0.015, "{precision} epoch {}: validation accuracy {va} vs f32 {vb}", a.epoch);
        }
        assert!((low.test_accuracy - f32_run.test_accuracy).abs() <= 0.015, "{precision}: {}", low.test_accuracy);
        assert_ne!(low.history[0].train_loss, f32_run.history[0].train_loss, "{precision}: the products were rounded");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cli_trains_in_bf16_records_the_precision_and_refuses_to_resume_it_in_f32() {
    let dir = std::env::temp_dir().join(format!("nabla-amp-cli-{}", std::process::id()));
    let dir_s = dir.to_str().unwrap();
    let args = ["train", "--model", "perceptron", "--epochs", "1", "--device", "cpu", "--out", dir_s];
    let (ok, _, err) = nabla(&[&args[..], &["--precision", "bf16"]].concat());
    assert!(ok, "{err}");
    let (ok, _, err) = nabla(&["train", "--resume", dir_s, "--epochs", "1", "--precision", "f32"]);
    assert!(!ok && err.contains("--precision f32 (the run's is bf16)"), "{err}");
    let (ok, _, err) = nabla(&["train", "--precision", "f64", "--device", "cpu"]);
    assert!(!ok && err.contains("f64"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn char_gpt_training_in_bf16_and_f16_follows_the_f32_run() {
    use nabla::train::text::{TextConfig, train_text};
    let dir = std::env::temp_dir().join(format!("nabla-amp-gpt-{}", std::process::id()));
    let run = |precision: Precision| {
        let config = TextConfig {
            layers: 1,
            heads: 2,
            width: 32,
            context: 16,
            batch_size: 12,
            steps: 400,
            warmup: 10,
            lr: 1e-2,
            eval_every: 400,
            eval_batches: 20,
            out_dir: dir.join(precision.name()),
            precision,
            ..TextConfig::cpu_preset()
        };
        train_text(&config).unwrap().reports.last().unwrap().val_loss
    };
    let f32_loss = run(Precision::F32);
    for precision in [Precision::Bf16, Precision::F16] {
        let loss = run(precision);
        println!("char-gpt, 400 steps: validation loss {precision} {loss:.4} / f32 {f32_loss:.4}");
        // The same tolerance as the MLP's: within 5% of the f32 run.
        assert!((loss / f32_loss - 1.0).abs() < 0.05, "{precision}: {loss} vs f32 {f32_loss}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_f16_run_saves_its_loss_scale_and_resumes_bit_identically() {
    let dir = std::env::temp_dir().join(format!("nabla-amp-resume-{}", std::process::id()));
    let config = |out: &str| TrainConfig {
        model: ModelKind::Perceptron,
        epochs: 2,
        precision: Precision::F16,
        out_dir: dir.join(out),
        ..TrainConfig::default()
    };
    let straight = train::train(&config("straight")).unwrap();
    let first = train::train_with(&config("resumed"), |s| s.epoch < 1).unwrap();
    assert_eq!(first.history.len(), 1);
    let state = nabla::io::safetensors::load(&dir.join("resumed/optimizer-0001.safetensors")).unwrap();
    assert!(state.tensors.iter().any(|(k, _)| k == "grad_scaler.scale"), "the scale is saved with the optimizer");
    let resumed_config = TrainConfig::resuming(&dir.join("resumed"), Device::Cpu).unwrap();
    assert_eq!(resumed_config.precision, Precision::F16, "the run records its precision");
    let resumed = train::train(&resumed_config).unwrap();
    let weights = |o: &train::TrainOutcome| -> Vec<Vec<f32>> {
        o.model.parameters().iter().map(|p| p.to_vec::<f32>().unwrap()).collect()
    };
    assert!(weights(&resumed) == weights(&straight), "the resumed f16 run left the straight one");
    let _ = std::fs::remove_dir_all(&dir);
}
