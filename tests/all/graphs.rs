//! CUDA graphs (`nabla::CudaGraph`): a captured training step replays the eager run exactly, a
//! replay recomputes its outputs from whatever its inputs hold, and work a graph cannot hold is
//! a clear error that leaves the device usable. On a machine without a GPU these run on the CPU
//! emulator of CUDA, whose driver records captures and replays graphs (tests/emulator/graph.cpp).
//! Each runs in a child process: a capture holds the device's one stream, so the GPU tests
//! running beside it in this process would fail (or, launching into the graph, misbehave).

use crate::common::*;
use nabla::data::Dataset;
use nabla::nn::Module;
use nabla::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use nabla::train::{DataKind, ModelKind, TrainConfig};
use nabla::{CudaGraph, DType, Device, Generator, Result, Tensor};

/// Four batches of 16 shipped digits, shaped for `model`, on the CPU.
fn batches(model: ModelKind) -> Vec<Dataset> {
    let digits = nabla::data::mnist::shipped("train", &Device::Cpu).unwrap();
    let geometry = DataKind::Mnist.geometry(None, None).unwrap();
    (0..4)
        .map(|b| model.prepare(geometry, &digits.select(&(16 * b..16 * b + 16).collect::<Vec<_>>()).unwrap()).unwrap())
        .collect()
}

/// The same freshly initialised model and optimizer every call.
fn model_and_optimizer(model: ModelKind, adam: bool, dev: &Device) -> (Box<dyn Module>, Box<dyn Optimizer>) {
    let geometry = DataKind::Mnist.geometry(None, None).unwrap();
    let net = model.build(geometry, 10, 0.0, Default::default(), dev, &mut Generator::new(11)).unwrap();
    let opt: Box<dyn Optimizer> = if adam {
        Box::new(Adam::new(net.parameters(), AdamConfig::adamw(1e-3)).unwrap())
    } else {
        Box::new(Sgd::new(net.parameters(), SgdConfig { momentum: 0.9, ..SgdConfig::new(0.05) }).unwrap())
    };
    (net, opt)
}

/// A learning rate that changes every step, as a schedule's does.
fn lr(adam: bool, step: usize) -> f64 {
    [1.0, 2.0, 1.5, 0.5][step] * if adam { 1e-3 } else { 0.05 }
}

fn training_step(net: &dyn Module, opt: &mut dyn Optimizer, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    opt.zero_grad();
    let loss = net.forward(x)?.cross_entropy(y)?;
    loss.backward()?;
    opt.step()?;
    Ok(loss)
}

fn parameters(net: &dyn Module) -> Vec<Vec<f32>> {
    net.parameters().iter().map(|p| p.to_vec::<f32>().unwrap()).collect()
}

#[test]
fn a_captured_training_step_replays_the_eager_steps_exactly_with_new_batches_and_learning_rates() {
    if !in_child_process(
        "graphs::a_captured_training_step_replays_the_eager_steps_exactly_with_new_batches_and_learning_rates",
        &[],
    ) {
        return;
    }
    let Some(dev) = cuda_or_skip("captured training step") else { return };
    for (model, adam) in [(ModelKind::Mlp, true), (ModelKind::LeNet5, false)] {
        let data: Vec<Dataset> = batches(model).iter().map(|b| b.to_device(&dev).unwrap()).collect();

        let (net, mut opt) = model_and_optimizer(model, adam, &dev);
        let mut eager = Vec::new();
        for (step, batch) in data.iter().enumerate() {
            opt.set_lr(lr(adam, step));
            let loss = training_step(net.as_ref(), opt.as_mut(), &batch.features, &batch.targets).unwrap();
            eager.push(loss.to_scalar::<f64>().unwrap());
        }
        let eager_params = parameters(net.as_ref());

        // Step 0 runs eagerly (it makes the optimizer's state); step 1 is captured and then run
        // by `replay`; later steps refresh the optimizer's arguments and replay.
        let (net, mut opt) = model_and_optimizer(model, adam, &dev);
        let x = Tensor::zeros(data[0].features.shape(), DType::F32, &dev).unwrap();
        let y = Tensor::zeros(data[0].targets.shape(), DType::I64, &dev).unwrap();
        let mut replayed = Vec::new();
        let mut graph = None;
        for (step, batch) in data.iter().enumerate() {
            x.copy_(&batch.features).unwrap();
            y.copy_(&batch.targets).unwrap();
            opt.set_lr(lr(adam, step));
            let loss = match step {
                0 => training_step(net.as_ref(), opt.as_mut(), &x, &y).unwrap(),
                1 => {
                    let (captured, loss) =
                        CudaGraph::capture(&dev, || training_step(net.as_ref(), opt.as_mut(), &x, &y)).unwrap();
                    assert_eq!(captured.refreshable_launches(), 1, "{model:?}: one fused optimizer launch");
                    captured.replay().unwrap();
                    graph = Some((captured, loss.clone()));
                    loss
                }
                _ => {
                    let (captured, loss) = graph.as_ref().unwrap();
                    captured.replay_with(|| opt.step()).unwrap();
                    loss.clone()
                }
            };
            replayed.push(loss.to_scalar::<f64>().unwrap());
        }
        assert_eq!(replayed, eager, "{model:?}: losses of the replayed steps");
        assert_eq!(parameters(net.as_ref()), eager_params, "{model:?}: parameters after the replayed steps");
        assert!(eager[3] < eager[0], "{model:?} learns: {eager:?}");
    }
}

#[test]
fn a_replay_recomputes_its_outputs_from_the_current_contents_of_its_inputs() {
    if !in_child_process("graphs::a_replay_recomputes_its_outputs_from_the_current_contents_of_its_inputs", &[]) {
        return;
    }
    let Some(dev) = cuda_or_skip("graph replay") else { return };
    let a = Tensor::zeros(&[37, 19], DType::F32, &dev).unwrap();
    let b = Tensor::zeros(&[19, 23], DType::F32, &dev).unwrap();
    let (graph, out) = CudaGraph::capture(&dev, || a.matmul(&b)?.relu()?.sum(&[1], false)).unwrap();
    for seed in 0..3 {
        let (ha, hb) = (randn(&[37, 19], DType::F32, seed), randn(&[19, 23], DType::F32, seed + 10));
        a.copy_(&ha).unwrap();
        b.copy_(&hb).unwrap();
        graph.replay().unwrap();
        let want = nabla::cpu::reference(|| ha.matmul(&hb)?.relu()?.sum(&[1], false)).unwrap();
        assert_close(&format!("replay {seed}"), &out, &want, tolerance(DType::F32));
    }
    // A graph and its outputs let go while another graph is captured: their memory waits for
    // the capture to end (the stream cannot be waited on meanwhile), and the new graph works.
    let mut old = Some((graph, out));
    let (graph, doubled) = CudaGraph::capture(&dev, || {
        old.take();
        a.add(&a)
    })
    .unwrap();
    graph.replay().unwrap();
    assert_close(
        "after the old graph went",
        &doubled,
        &a.to_device(&Device::Cpu).unwrap().mul_scalar(2.0).unwrap(),
        (0.0, 0.0),
    );
}

#[test]
fn work_a_graph_cannot_hold_is_an_error_naming_it_and_the_device_stays_usable() {
    if !in_child_process("graphs::work_a_graph_cannot_hold_is_an_error_naming_it_and_the_device_stays_usable", &[]) {
        return;
    }
    let Some(dev) = cuda_or_skip("graph refusals") else { return };
    let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3], &Device::Cpu).unwrap().to_device(&dev).unwrap();

    let read = CudaGraph::capture(&dev, || x.relu()?.to_vec::<f32>()).err().expect("a read inside a capture fails");
    assert!(read.to_string().contains("captured"), "{read}");
    let upload =
        CudaGraph::capture(&dev, || Tensor::from_vec(vec![1.0f32], &[1], &dev)).err().expect("an upload fails");
    assert!(upload.to_string().contains("host data"), "{upload}");
    let elsewhere = CudaGraph::capture(&dev, || {
        let other = std::thread::scope(|s| s.spawn(|| x.relu().map(drop)).join().unwrap());
        Ok(other.expect_err("another thread's op fails during the capture"))
    })
    .unwrap()
    .1;
    assert!(elsewhere.to_string().contains("another thread"), "{elsewhere}");
    let cpu = CudaGraph::capture(&Device::Cpu, || Ok(())).err().expect("a CPU capture fails");
    assert!(cpu.to_string().contains("CUDA device"), "{cpu}");

    // A refresh must relaunch the captured optimizer step, and nothing that allocates.
    let w = Tensor::zeros(&[3], DType::F32, &dev).unwrap().requires_grad_().unwrap();
    let mut opt = Sgd::new(vec![w.clone()], SgdConfig::new(0.1)).unwrap();
    let step = |opt: &mut Sgd| -> Result<()> {
        opt.zero_grad();
        w.mul(&x)?.sum_all()?.backward()?;
        opt.step()
    };
    step(&mut opt).unwrap();
    let (graph, ()) = CudaGraph::capture(&dev, || step(&mut opt)).unwrap();
    let skipped = graph.replay_with(|| Ok(())).expect_err("a refresh that skips the step fails");
    assert!(skipped.to_string().contains("0 of the 1"), "{skipped}");
    let allocates = graph.replay_with(|| x.relu().map(drop)).expect_err("a refresh that allocates fails");
    assert!(allocates.to_string().contains("allocates"), "{allocates}");

    // The device still runs eager work, and the graph still replays.
    graph.replay_with(|| opt.step()).unwrap();
    assert_eq!(x.add(&x).unwrap().to_vec::<f32>().unwrap(), vec![2.0, 4.0, 6.0]);
    // Two SGD steps without momentum on d(w·x)/dw = x (the eager one and the replay; the capture
    // runs nothing and the refused replays did not launch): w = -2 · 0.1 · x.
    let w = w.to_vec::<f32>().unwrap();
    for (got, xi) in w.iter().zip([1.0f32, 2.0, 3.0]) {
        assert!((got + 0.2 * xi).abs() < 1e-6, "{w:?}");
    }
}

#[test]
fn training_with_cuda_graph_gives_the_eager_run_and_refuses_what_it_cannot_capture() {
    if !in_child_process("graphs::training_with_cuda_graph_gives_the_eager_run_and_refuses_what_it_cannot_capture", &[])
    {
        return;
    }
    let Some(dev) = cuda_or_skip("training with --cuda-graph") else { return };
    let root = std::env::temp_dir().join(format!("nabla-graph-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    image_folder(&root.join("images"), &["a", "b", "c"], 20);
    // 60 images, batches of 16: full batches replay the graph and each epoch's short last
    // batch runs eagerly between them.
    let config = |cuda_graph: bool| TrainConfig {
        model: ModelKind::Mlp,
        dataset: DataKind::Folder,
        data: Some(root.join("images")),
        image_size: Some(8),
        channels: Some(1),
        epochs: 2,
        batch_size: 16,
        device: dev,
        out_dir: root.join(if cuda_graph { "graph" } else { "eager" }),
        cuda_graph,
        ..TrainConfig::default()
    };
    let eager = nabla::train::train(&config(false)).unwrap();
    let captured = nabla::train::train(&config(true)).unwrap();
    let losses =
        |o: &nabla::train::TrainOutcome| o.history.iter().map(|e| (e.train_loss, e.val_loss)).collect::<Vec<_>>();
    assert_eq!(losses(&captured), losses(&eager), "losses per epoch");
    assert_eq!(parameters(captured.model.as_ref()), parameters(eager.model.as_ref()), "trained weights");

    for (change, refusal) in [
        (TrainConfig { device: Device::Cpu, ..config(true) }, "CUDA device"),
        (TrainConfig { model: ModelKind::ResNet, ..config(true) }, "batch norm"),
        (TrainConfig { dropout: 0.1, ..config(true) }, "dropout"),
        (TrainConfig { precision: nabla::Precision::F16, ..config(true) }, "bf16"),
    ] {
        let error = nabla::train::train(&change).err().expect("refused");
        assert!(error.to_string().contains("--cuda-graph") && error.to_string().contains(refusal), "{error}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
