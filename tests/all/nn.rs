//! Modules, initialisers, the neuron and the perceptron, losses and small learning problems.

use crate::common::*;
use nabla::data::synthetic;
use nabla::nn::{Activation, ConvNet, Dropout, Init, Linear, Mlp, Module, Neuron, Perceptron, Sequential, init};
use nabla::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use nabla::{DType, Device, Error, Generator, Tensor, metrics};

#[test]
fn parameters_have_pytorch_names_and_layouts() {
    let mut rng = Generator::new(0);
    let mlp = Mlp::new(&[784, 512, 512, 10], Activation::Relu, 0.1, &Device::Cpu, &mut rng).unwrap();
    let names: Vec<(String, Vec<usize>)> =
        mlp.named_parameters().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
    let want = [
        ("layers.0.weight", vec![512, 784]),
        ("layers.0.bias", vec![512]),
        ("layers.3.weight", vec![512, 512]),
        ("layers.3.bias", vec![512]),
        ("layers.6.weight", vec![10, 512]),
        ("layers.6.bias", vec![10]),
    ];
    assert_eq!(names, want.iter().map(|(n, s)| (n.to_string(), s.clone())).collect::<Vec<_>>());
    assert!(mlp.parameters().iter().all(|p| p.requires_grad()));
    let seq = Sequential::new()
        .push(Linear::new(3, 2, false, Init::Xavier, &Device::Cpu, &mut rng).unwrap())
        .push(Activation::Tanh);
    assert_eq!(seq.named_parameters().into_iter().map(|(n, _)| n).collect::<Vec<_>>(), vec!["0.weight"]);
}

#[test]
fn linear_computes_x_w_transpose_plus_b_and_rejects_wrong_widths() {
    let layer = Linear {
        weight: Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], &Device::Cpu).unwrap(),
        bias: Some(Tensor::from_vec(vec![0.5f32, -1.0], &[2], &Device::Cpu).unwrap()),
    };
    let x = Tensor::from_vec(vec![1.0f32, 0.0, -1.0], &[1, 3], &Device::Cpu).unwrap();
    assert_eq!(layer.forward(&x).unwrap().to_vec::<f32>().unwrap(), vec![-1.5, -3.0]);
    let err = layer.forward(&Tensor::zeros(&[1, 4], DType::F32, &Device::Cpu).unwrap()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { op: "linear", .. }));
    // the functional form checks the weight's rank and the bias's length, naming the shapes
    let w = layer.weight.clone();
    let err = x.linear(&w.reshape(&[6]).unwrap(), None).unwrap_err().to_string();
    assert!(err.contains("linear") && err.contains("[6]"), "{err}");
    let err = x.linear(&w, Some(&Tensor::zeros(&[3], DType::F32, &Device::Cpu).unwrap())).unwrap_err().to_string();
    assert!(err.contains("linear") && err.contains("[3]"), "{err}");
}

#[test]
fn sequential_runs_each_linear_layer_and_the_relu_after_it_as_one_product_with_the_same_outputs_and_gradients() {
    for dev in devices_under_test("linear_relu in Sequential") {
        let mut rng = Generator::new(31);
        let mlp = Mlp::new(&[13, 17, 9, 5], Activation::Relu, 0.0, &dev, &mut rng).unwrap();
        let x = randn(&[6, 13], DType::F32, 32).to_device(&dev).unwrap();
        let params = mlp.parameters();
        let fused = mlp.forward(&x).unwrap();
        fused.sum_all().unwrap().backward().unwrap();
        let fused_grads: Vec<Vec<f32>> = params.iter().map(|p| p.grad().unwrap().to_vec().unwrap()).collect();
        params.iter().for_each(|p| p.zero_grad());
        // The same network written as separate ops: a product, then a ReLU kernel.
        let p = |i: usize| &params[i];
        let h = x.linear(p(0), Some(p(1))).unwrap().relu().unwrap();
        let h = h.linear(p(2), Some(p(3))).unwrap().relu().unwrap();
        let unfused = h.linear(p(4), Some(p(5))).unwrap();
        unfused.sum_all().unwrap().backward().unwrap();
        assert_eq!(fused.to_vec::<f32>().unwrap(), unfused.to_vec::<f32>().unwrap(), "{dev:?}");
        let pre = x.linear(p(0), Some(p(1))).unwrap().to_vec::<f32>().unwrap();
        assert!(pre.iter().any(|v| *v < 0.0) && pre.iter().any(|v| *v > 0.0), "the ReLU clamps some units");
        for (i, param) in params.iter().enumerate() {
            assert_eq!(fused_grads[i], param.grad().unwrap().to_vec::<f32>().unwrap(), "{dev:?} parameter {i}");
        }
        // a ReLU after a ReLU, and one after a layer with no fused form, are still applied
        let seq = Sequential::new()
            .push(Linear::new(13, 7, false, Init::Xavier, &dev, &mut rng).unwrap())
            .push(Activation::Relu)
            .push(Activation::Relu)
            .push(Activation::Tanh)
            .push(Activation::Relu);
        let w = seq.parameters()[0].clone();
        let want = x.linear(&w, None).unwrap().relu().unwrap().tanh().unwrap().relu().unwrap();
        assert_eq!(seq.forward(&x).unwrap().to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
    }
}

#[test]
fn lenet_runs_each_convolution_and_linear_layer_with_its_relu_fused_and_matches_the_modules_run_one_at_a_time() {
    for dev in devices_under_test("conv2d_relu in LeNet-5") {
        let net = ConvNet::lenet5(2, 16, 5, &dev, &mut Generator::new(41)).unwrap();
        let x = randn(&[3, 2, 16, 16], DType::F32, 42).to_device(&dev).unwrap();
        let params = net.parameters();
        let run = |fused: bool| -> (Vec<f32>, Vec<Vec<f32>>) {
            params.iter().for_each(|p| p.zero_grad());
            let y = if fused {
                net.forward(&x).unwrap()
            } else {
                // forward_each runs every module, ReLUs included, on its own
                let last = |out: Vec<(String, Tensor)>| out.last().unwrap().1.clone();
                let h = last(net.features.forward_each(&x).unwrap()).flatten(1, -1).unwrap();
                last(net.classifier.forward_each(&h).unwrap())
            };
            y.mul(&randn(y.shape(), DType::F32, 43).to_device(&dev).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grads = params.iter().map(|p| p.grad().unwrap().to_vec().unwrap()).collect();
            (y.to_vec().unwrap(), grads)
        };
        let (fused, unfused) = (run(true), run(false));
        assert_eq!(fused.0, unfused.0, "{dev:?} outputs");
        for (i, (a, b)) in fused.1.iter().zip(&unfused.1).enumerate() {
            assert_eq!(a, b, "{dev:?} gradient of parameter {i}");
        }
        let first = net.features.forward_each(&x).unwrap()[0].1.to_vec::<f32>().unwrap();
        assert!(first.iter().any(|v| *v < 0.0) && first.iter().any(|v| *v > 0.0), "the ReLU clamps some outputs");
    }
}

#[test]
fn linear_relu_keeps_nan_and_names_itself_in_shape_errors() {
    for dev in devices_under_test("linear_relu NaN") {
        let x =
            Tensor::from_vec(vec![f32::NAN, 1.0, 2.0, -3.0], &[2, 2], &Device::Cpu).unwrap().to_device(&dev).unwrap();
        let w = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0, -1.0, -1.0], &[3, 2], &Device::Cpu).unwrap();
        let w = w.to_device(&dev).unwrap();
        let got = x.linear_relu(&w, None).unwrap().to_vec::<f32>().unwrap();
        let want = x.linear(&w, None).unwrap().relu().unwrap().to_vec::<f32>().unwrap();
        assert!(got[..3].iter().all(|v| v.is_nan()) && want[..3].iter().all(|v| v.is_nan()), "{got:?}");
        assert_eq!(got[3..], [2.0, 0.0, 1.0]);
        assert_eq!(got[3..], want[3..]);
        let err = x.linear_relu(&w.t().unwrap(), None).unwrap_err().to_string();
        assert!(err.contains("linear_relu") && err.contains("[2, 3]"), "{err}");
    }
}

#[test]
fn initialisers_draw_from_their_documented_ranges() {
    let mut rng = Generator::new(1);
    let x = init::xavier_uniform(&[200, 300], 300, 200, 1.0, DType::F64, &Device::Cpu, &mut rng)
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    let bound = (6.0f64 / 500.0).sqrt();
    assert!(x.iter().all(|v| v.abs() <= bound));
    assert!(x.iter().any(|v| v.abs() > 0.95 * bound));
    let k =
        init::kaiming_normal(&[400, 250], 250, DType::F64, &Device::Cpu, &mut rng).unwrap().to_vec::<f64>().unwrap();
    let var = k.iter().map(|v| v * v).sum::<f64>() / k.len() as f64;
    assert!((var - 2.0 / 250.0).abs() < 0.0005, "Kaiming variance {var}");
}

#[test]
fn dropout_zeroes_about_p_in_training_scales_the_rest_and_is_identity_in_eval() {
    let mut d = Dropout::new(0.25, 7).unwrap();
    let x = Tensor::ones(&[10000], DType::F32, &Device::Cpu).unwrap();
    let y = d.forward(&x).unwrap().to_vec::<f32>().unwrap();
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
    assert!((kept - 0.75).abs() < 0.02, "kept {kept}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    assert_ne!(d.forward(&x).unwrap().to_vec::<f32>().unwrap(), y, "each call draws a new mask");
    d.set_training(false);
    assert_eq!(d.forward(&x).unwrap().to_vec::<f32>().unwrap(), vec![1.0; 10000]);
    assert!(Dropout::new(1.0, 0).is_err());
}

#[test]
fn perceptron_rule_separates_linearly_separable_data() {
    let mut rng = Generator::new(3);
    // label = 1 where 2a - b + 0.5 > 0, with a margin
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    while ys.len() < 200 {
        let (a, b) = (2.0 * rng.uniform() - 1.0, 2.0 * rng.uniform() - 1.0);
        let s = 2.0 * a - b + 0.5;
        if s.abs() > 0.1 {
            xs.extend([a, b]);
            ys.push((s > 0.0) as i64 as f64);
        }
    }
    let x = Tensor::from_vec(xs, &[200, 2], &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let y = Tensor::from_vec(ys, &[200], &Device::Cpu).unwrap();
    let p = Perceptron::new(2, &Device::Cpu, &mut rng).unwrap();
    let history = p.fit_rule(&x, &y, 100, 1.0).unwrap();
    assert_eq!(*history.last().unwrap(), 0, "converges: mistakes per pass {history:?}");
    let predicted = p.predict(&x).unwrap().to_dtype(DType::F64).unwrap();
    assert_eq!(predicted.to_vec::<f64>().unwrap(), y.to_vec::<f64>().unwrap());

    // the same perceptron trained by gradient descent on its score (logistic loss)
    let by_gd = Perceptron::new(2, &Device::Cpu, &mut rng).unwrap();
    let y32 = y.to_dtype(DType::F32).unwrap();
    let mut opt = Sgd::new(by_gd.parameters(), SgdConfig { momentum: 0.9, ..SgdConfig::new(1.0) }).unwrap();
    for _ in 0..300 {
        opt.zero_grad();
        by_gd.forward(&x).unwrap().binary_cross_entropy_with_logits(&y32).unwrap().backward().unwrap();
        opt.step().unwrap();
    }
    let right = by_gd.predict(&x).unwrap().to_dtype(DType::F64).unwrap().eq(&y).unwrap().mean_all().unwrap();
    assert!(right.to_scalar::<f64>().unwrap() >= 0.99);
}

#[test]
fn neuron_learns_a_logistic_boundary_by_gradient_descent() {
    let data = synthetic::linear_regression(300, 3, 0.0, 4, &Device::Cpu).unwrap().0;
    let labels = data.targets.gt_scalar(0.0).unwrap().reshape(&[300]).unwrap();
    let neuron = Neuron::new(3, Activation::Identity, &Device::Cpu, &mut Generator::new(5)).unwrap();
    let mut opt = Sgd::new(neuron.parameters(), SgdConfig { momentum: 0.9, ..SgdConfig::new(0.5) }).unwrap();
    for _ in 0..200 {
        opt.zero_grad();
        neuron.score(&data.features).unwrap().binary_cross_entropy_with_logits(&labels).unwrap().backward().unwrap();
        opt.step().unwrap();
    }
    let right = neuron.score(&data.features).unwrap().gt_scalar(0.0).unwrap().eq(&labels).unwrap().mean_all().unwrap();
    assert!(right.to_scalar::<f64>().unwrap() > 0.97);
}

#[test]
fn mlp_learns_xor_and_two_spirals() {
    for (name, data, hidden, steps) in [
        ("xor", synthetic::xor(400, 1, &Device::Cpu).unwrap(), 16, 300),
        ("spirals", synthetic::two_spirals(200, 0.02, 2, &Device::Cpu).unwrap(), 64, 1500),
    ] {
        let mlp =
            Mlp::new(&[2, hidden, hidden, 2], Activation::Tanh, 0.0, &Device::Cpu, &mut Generator::new(6)).unwrap();
        let mut opt = Adam::new(mlp.parameters(), AdamConfig::adam(0.01)).unwrap();
        for _ in 0..steps {
            opt.zero_grad();
            mlp.forward(&data.features).unwrap().cross_entropy(&data.targets).unwrap().backward().unwrap();
            opt.step().unwrap();
        }
        let acc = metrics::accuracy(&mlp.forward(&data.features).unwrap(), &data.targets).unwrap();
        assert!(acc > 0.97, "{name}: accuracy {acc}");
    }
}

#[test]
fn losses_match_their_definitions() {
    let logits = randn(&[4, 5], DType::F64, 9);
    let labels = Tensor::from_vec(vec![0i64, 4, 2, 2], &[4], &Device::Cpu).unwrap();
    let fused = logits.cross_entropy(&labels).unwrap().to_scalar::<f64>().unwrap();
    let composed =
        logits.log_softmax(-1).unwrap().gather(1, &labels.unsqueeze(1).unwrap()).unwrap().mean_all().unwrap();
    assert!((fused + composed.to_scalar::<f64>().unwrap()).abs() < 1e-12);
    let bad = Tensor::from_vec(vec![0i64, 5, 0, 0], &[4], &Device::Cpu).unwrap();
    assert!(matches!(
        logits.cross_entropy(&bad),
        Err(Error::IndexOutOfRange { op: "cross_entropy", index: 5, size: 5 })
    ));
    assert!(matches!(logits.cross_entropy(&labels.narrow(0, 0, 3).unwrap()), Err(Error::ShapeMismatch { .. })));
    let (p, t) = (
        Tensor::from_vec(vec![1.0f64, 2.0], &[2], &Device::Cpu).unwrap(),
        Tensor::from_vec(vec![0.0f64, 4.0], &[2], &Device::Cpu).unwrap(),
    );
    assert_eq!(p.mse_loss(&t).unwrap().to_scalar::<f64>().unwrap(), 2.5);
    let x = Tensor::from_vec(vec![2.0f64, -1.0], &[2], &Device::Cpu).unwrap();
    let y = Tensor::from_vec(vec![1.0f64, 0.0], &[2], &Device::Cpu).unwrap();
    let s = |v: f64| 1.0 / (1.0 + (-v).exp());
    let want = -((s(2.0)).ln() + (1.0 - s(-1.0)).ln()) / 2.0;
    assert!((x.binary_cross_entropy_with_logits(&y).unwrap().to_scalar::<f64>().unwrap() - want).abs() < 1e-12);
}

#[test]
fn batch_norm_and_conv_models_on_the_gpu_match_the_cpu() {
    for dev in devices_under_test("batch norm") {
        use nabla::nn::{BatchNorm2d, ConvNet, ResNet};
        let x = randn(&[4, 3, 9, 7], DType::F32, 1);
        let run = |device: &Device| {
            let mut bn = BatchNorm2d::new(3, device).unwrap();
            let xl = x.to_device(device).unwrap().requires_grad_().unwrap();
            let y = bn.forward(&xl).unwrap();
            y.mul(&y).unwrap().sum_all().unwrap().backward().unwrap();
            let (rm, rv) = bn.running_stats();
            bn.set_training(false);
            let eval = bn.forward(&xl.detach()).unwrap();
            [y.detach(), xl.grad().unwrap(), bn.weight.grad().unwrap(), rm, rv, eval]
                .map(|t| t.to_device(&Device::Cpu).unwrap())
        };
        let (gpu, cpu) = (run(&dev), nabla::cpu::reference(|| run(&Device::Cpu)));
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert_close(&format!("batch norm output {i}"), g, c, (1e-4, 1e-4));
        }
        for model in ["lenet5", "resnet"] {
            let logits = |device: &Device| {
                let mut rng = Generator::new(2);
                let mut m: Box<dyn Module> = if model == "lenet5" {
                    Box::new(ConvNet::lenet5(1, 28, 10, device, &mut rng).unwrap())
                } else {
                    Box::new(ResNet::new(1, 10, 8, device, &mut rng).unwrap())
                };
                m.set_training(false);
                m.forward(&randn(&[3, 1, 28, 28], DType::F32, 3).to_device(device).unwrap())
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap()
            };
            assert_close(
                &format!("{model} logits"),
                &logits(&dev),
                &nabla::cpu::reference(|| logits(&Device::Cpu)),
                (1e-4, 1e-4),
            );
        }
    }
}

#[test]
fn cross_entropy_and_dropout_on_the_gpu_match_the_cpu() {
    for dev in devices_under_test("losses") {
        for dtype in FLOATS {
            let logits = randn(&[257, 10], dtype, 10);
            let labels = Tensor::randint(0, 10, &[257], &Device::Cpu, &mut Generator::new(11)).unwrap();
            let cpu = logits.cross_entropy(&labels).unwrap();
            let gpu = logits.to_device(&dev).unwrap().cross_entropy(&labels.to_device(&dev).unwrap()).unwrap();
            assert_close(
                &format!("cross_entropy {dtype}"),
                &gpu.to_device(&Device::Cpu).unwrap(),
                &cpu,
                tolerance(dtype),
            );
            let mask_cpu = Tensor::dropout_mask(&[1031], 0.7, 99, dtype, &Device::Cpu).unwrap();
            let mask_gpu = Tensor::dropout_mask(&[1031], 0.7, 99, dtype, &dev).unwrap();
            assert_close(
                &format!("dropout mask {dtype}"),
                &mask_gpu.to_device(&Device::Cpu).unwrap(),
                &mask_cpu,
                (0.0, 0.0),
            );
        }
    }
}

#[test]
fn convolutional_models_have_torchvision_names_and_the_right_output_shapes() {
    use nabla::nn::{ConvNet, ResNet};
    let mut rng = Generator::new(1);
    let lenet = ConvNet::lenet5(1, 28, 10, &Device::Cpu, &mut rng).unwrap();
    let names: Vec<(String, Vec<usize>)> =
        lenet.named_parameters().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
    assert_eq!(names[0], ("features.0.weight".to_string(), vec![6, 1, 5, 5]));
    assert_eq!(names[2], ("features.3.weight".to_string(), vec![16, 6, 5, 5]));
    assert_eq!(names[4], ("classifier.0.weight".to_string(), vec![120, 400]));
    assert_eq!(names.len(), 10);
    let x = randn(&[2, 1, 28, 28], DType::F32, 2);
    assert_eq!(lenet.forward(&x).unwrap().shape(), &[2, 10]);
    let mut alex = ConvNet::alexnet(1, 28, 10, 16, &Device::Cpu, &mut rng).unwrap();
    let convs = alex.named_parameters().iter().filter(|(n, t)| n.starts_with("features") && t.rank() == 4).count();
    let fcs = alex.named_parameters().iter().filter(|(n, t)| n.starts_with("classifier") && t.rank() == 2).count();
    assert_eq!((convs, fcs), (5, 3));
    alex.set_training(false);
    assert_eq!(alex.forward(&x).unwrap().shape(), &[2, 10]);
    let resnet = ResNet::new(3, 10, 8, &Device::Cpu, &mut rng).unwrap();
    let names: Vec<String> = resnet.named_parameters().into_iter().map(|(n, _)| n).collect();
    for expected in [
        "conv1.weight",
        "bn1.weight",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer3.1.bn2.bias",
        "fc.weight",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    assert!(resnet.named_buffers().iter().any(|(n, _)| n == "layer2.0.downsample.1.running_var"));
    let colour = randn(&[2, 3, 32, 32], DType::F32, 3);
    assert_eq!(resnet.forward(&colour).unwrap().shape(), &[2, 10]);
}

#[test]
fn fused_batch_norm_matches_its_definition_from_tensor_ops_with_gradients() {
    use nabla::nn::{batch_norm2d, batch_stats};
    let x = randn(&[3, 4, 5, 2], DType::F64, 20).mul_scalar(2.0).unwrap().add_scalar(0.5).unwrap();
    let (w, b) = (randn(&[4], DType::F64, 21), randn(&[4], DType::F64, 22));
    let g = randn(&[3, 4, 5, 2], DType::F64, 23);
    let grads = |fused: bool| -> Vec<Tensor> {
        let leaves = [&x, &w, &b].map(|t| t.requires_grad_().unwrap());
        let y = if fused {
            let (y, mean, var) = leaves[0].batch_norm2d_train(&leaves[1], &leaves[2], 1e-5).unwrap();
            let (m, v) = batch_stats(&x).unwrap();
            assert_close("fused mean", &mean, &m.reshape(&[4]).unwrap(), (1e-12, 1e-12));
            assert_close("fused variance", &var, &v.reshape(&[4]).unwrap(), (1e-12, 1e-12));
            y
        } else {
            let (m, v) = batch_stats(&leaves[0]).unwrap();
            batch_norm2d(&leaves[0], &m, &v, &leaves[1], &leaves[2], 1e-5).unwrap()
        };
        y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![y.detach()];
        out.extend(leaves.iter().map(|l| l.grad().unwrap()));
        out
    };
    let (fused, composed) = (grads(true), grads(false));
    for (what, (f, c)) in ["output", "grad input", "grad weight", "grad bias"].iter().zip(fused.iter().zip(&composed)) {
        assert_close(&format!("fused batch norm {what}"), f, c, (1e-10, 1e-10));
    }
    // bad input: wrong per-channel shapes, a batch of one value per channel, negative eps
    let err = x.batch_norm2d_train(&randn(&[3], DType::F64, 1), &b, 1e-5).unwrap_err().to_string();
    assert!(err.contains("batch_norm2d") && err.contains("[3, 4, 5, 2]") && err.contains("[3]"), "{err}");
    let single = randn(&[1, 4, 1, 1], DType::F64, 2);
    assert!(single.batch_norm2d_train(&w, &b, 1e-5).unwrap_err().to_string().contains("more than one value"));
    assert!(x.batch_norm2d_train(&w, &b, -1.0).is_err());
    assert!(randn(&[4, 5], DType::F64, 3).batch_norm2d_eval(&w, &w, &w, &b, 1e-5).is_err());
}

#[test]
fn batch_norm_kernels_on_the_gpu_match_the_cpu_for_every_dtype() {
    for dev in devices_under_test("batch norm kernels") {
        for dtype in FLOATS {
            let (atol, rtol) = tolerance(dtype);
            // 300 channels: more than one per block in flight; planes of 7 x 3 (odd, not a warp)
            let x = randn(&[5, 300, 7, 3], dtype, 30).mul_scalar(1.5).unwrap().add_scalar(0.25).unwrap();
            let (w, b) = (randn(&[300], dtype, 31), randn(&[300], dtype, 32));
            let (rm, rv) = (randn(&[300], dtype, 33), uniform(&[300], 0.5, 2.0, dtype, 34));
            let g = randn(&[5, 300, 7, 3], dtype, 35);
            let run = |device: &Device, train: bool| -> Vec<Tensor> {
                let leaves = [&x, &w, &b].map(|t| t.to_device(device).unwrap().requires_grad_().unwrap());
                let mut out = Vec::new();
                let y = if train {
                    let (y, mean, var) = leaves[0].batch_norm2d_train(&leaves[1], &leaves[2], 1e-5).unwrap();
                    out.extend([mean, var]);
                    y
                } else {
                    let (m, v) = (rm.to_device(device).unwrap(), rv.to_device(device).unwrap());
                    leaves[0].batch_norm2d_eval(&m, &v, &leaves[1], &leaves[2], 1e-5).unwrap()
                };
                y.mul(&g.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                out.push(y.detach());
                out.extend(leaves.iter().map(|l| l.grad().unwrap()));
                out.into_iter().map(|t| t.to_device(&Device::Cpu).unwrap()).collect()
            };
            for train in [true, false] {
                let (gpu, cpu) = (run(&dev, train), run(&Device::Cpu, train));
                for (i, (a, c)) in gpu.iter().zip(&cpu).enumerate() {
                    // the weight and bias gradients sum 105 products per channel
                    let scale = if i + 2 >= gpu.len() { 12.0 } else { 4.0 };
                    let what = format!("batch norm {dtype} training={train} output {i}");
                    assert_close(&what, a, c, (atol * scale, rtol * scale));
                }
            }
        }
    }
}

#[test]
fn batch_norm_normalises_per_channel_and_tracks_running_statistics() {
    use nabla::nn::BatchNorm2d;
    let mut bn = BatchNorm2d::new(2, &Device::Cpu).unwrap();
    let x = randn(&[4, 2, 3, 3], DType::F32, 5).mul_scalar(3.0).unwrap().add_scalar(1.0).unwrap();
    let y = bn.forward(&x).unwrap();
    let mean = y.mean(&[0, 2, 3], false).unwrap().to_vec::<f64>().unwrap();
    let var = y.mul(&y).unwrap().mean(&[0, 2, 3], false).unwrap().to_vec::<f64>().unwrap();
    assert!(mean.iter().all(|m| m.abs() < 1e-5) && var.iter().all(|v| (v - 1.0).abs() < 1e-3), "{mean:?} {var:?}");
    let (rm, rv) = bn.running_stats();
    let batch_mean = x.mean(&[0, 2, 3], false).unwrap().to_vec::<f64>().unwrap();
    for (r, b) in rm.to_vec::<f64>().unwrap().iter().zip(&batch_mean) {
        assert!((r - 0.1 * b).abs() < 1e-5);
    }
    assert!(rv.to_vec::<f64>().unwrap().iter().all(|v| *v > 0.9), "variance moved toward the batch's (about 9)");
    bn.set_training(false);
    let z = bn.forward(&x).unwrap();
    let want = x
        .sub(&rm.reshape(&[1, 2, 1, 1]).unwrap())
        .unwrap()
        .div(&rv.add_scalar(1e-5).unwrap().sqrt().unwrap().reshape(&[1, 2, 1, 1]).unwrap())
        .unwrap();
    assert_close("eval batch norm", &z, &want, (1e-5, 1e-5));
    assert!(bn.forward(&randn(&[1, 3, 2, 2], DType::F32, 1)).is_err());
}
