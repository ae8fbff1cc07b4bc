//! The transformer's building blocks: layer normalisation (fused kernels held to the definition
//! in tensor ops and to the CPU reference) and token embeddings.

use crate::common::{FLOATS, assert_close, cuda_or_skip, randn, tolerance};
use nabla::nn::{Embedding, LayerNorm, Module};
use nabla::{DType, Device, Generator, Tensor};

/// Layer norm from ordinary ops: (x - mean) / √(var + eps) · γ + β over the last axis.
fn layer_norm_by_definition(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
    let mean = x.mean(&[-1], true).unwrap();
    let centred = x.sub(&mean).unwrap();
    let var = centred.mul(&centred).unwrap().mean(&[-1], true).unwrap();
    centred.div(&var.add_scalar(eps).unwrap().sqrt().unwrap()).unwrap().mul(w).unwrap().add(b).unwrap()
}

#[test]
fn fused_layer_norm_matches_its_definition_from_tensor_ops_with_gradients() {
    let x = randn(&[3, 4, 6], DType::F64, 1).mul_scalar(3.0).unwrap().add_scalar(0.7).unwrap();
    let (w, b) = (randn(&[6], DType::F64, 2), randn(&[6], DType::F64, 3));
    let g = randn(&[3, 4, 6], DType::F64, 4);
    let grads = |fused: bool| -> Vec<Tensor> {
        let leaves = [&x, &w, &b].map(|t| t.requires_grad_().unwrap());
        let y = if fused {
            leaves[0].layer_norm(Some(&leaves[1]), Some(&leaves[2]), 1e-5).unwrap()
        } else {
            layer_norm_by_definition(&leaves[0], &leaves[1], &leaves[2], 1e-5)
        };
        y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![y.detach()];
        out.extend(leaves.iter().map(|l| l.grad().unwrap()));
        out
    };
    let (fused, composed) = (grads(true), grads(false));
    for (what, (f, c)) in ["output", "grad input", "grad weight", "grad bias"].iter().zip(fused.iter().zip(&composed)) {
        assert_close(&format!("fused layer norm {what}"), f, c, (1e-10, 1e-10));
    }
    // Every row has mean 0 and variance 1 without an affine part.
    let y = x.layer_norm(None, None, 0.0).unwrap();
    let mean = y.mean(&[-1], false).unwrap().to_vec::<f64>().unwrap();
    let var = y.mul(&y).unwrap().mean(&[-1], false).unwrap().to_vec::<f64>().unwrap();
    assert!(mean.iter().all(|m| m.abs() < 1e-12) && var.iter().all(|v| (v - 1.0).abs() < 1e-12));
    // Bad input names the op and the shapes.
    let err = x.layer_norm(Some(&randn(&[5], DType::F64, 5)), None, 1e-5).unwrap_err().to_string();
    assert!(err.contains("layer_norm") && err.contains("[3, 4, 6]") && err.contains("[5]"), "{err}");
    assert!(x.layer_norm(None, None, -1.0).is_err() && x.layer_norm(None, None, f64::NAN).is_err());
    let ints = Tensor::from_vec(vec![1i64, 2], &[2], &Device::Cpu).unwrap();
    assert!(ints.layer_norm(None, None, 1e-5).is_err(), "integers are refused");
    assert!(x.layer_norm(Some(&w.to_dtype(DType::F32).unwrap()), None, 1e-5).is_err(), "dtypes must agree");
}

#[test]
fn layer_norm_kernels_on_the_gpu_match_the_cpu_for_every_dtype() {
    let Some(dev) = cuda_or_skip("layer norm kernels") else { return };
    // Rows longer than a block (129, 300), a single column, many short rows, an empty batch.
    let shapes: &[&[usize]] = &[&[3, 5, 129], &[2, 300], &[7, 1], &[600, 9], &[0, 4]];
    for dtype in FLOATS {
        let (atol, rtol) = tolerance(dtype);
        for (s, shape) in shapes.iter().enumerate() {
            let cols = *shape.last().unwrap();
            let seed = 10 * s as u64;
            let x = randn(shape, dtype, seed).mul_scalar(2.0).unwrap().add_scalar(0.5).unwrap();
            let (w, b) = (randn(&[cols], dtype, seed + 1), randn(&[cols], dtype, seed + 2));
            let g = randn(shape, dtype, seed + 3);
            for affine in [true, false] {
                let run = |device: &Device| -> Vec<Tensor> {
                    let leaves = [&x, &w, &b].map(|t| t.to_device(device).unwrap().requires_grad_().unwrap());
                    let (wl, bl) = if affine { (Some(&leaves[1]), Some(&leaves[2])) } else { (None, None) };
                    let y = leaves[0].layer_norm(wl, bl, 1e-5).unwrap();
                    y.mul(&g.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                    let mut out = vec![y.detach(), leaves[0].grad().unwrap()];
                    if affine {
                        out.extend([leaves[1].grad().unwrap(), leaves[2].grad().unwrap()]);
                    }
                    out.into_iter().map(|t| t.to_device(&Device::Cpu).unwrap()).collect()
                };
                let (gpu, cpu) = (run(&dev), run(&Device::Cpu));
                let rows = (shape.iter().product::<usize>() / cols.max(1)) as f64;
                for (i, (a, c)) in gpu.iter().zip(&cpu).enumerate() {
                    // dx sums `cols` products per row, dγ and dβ `rows` products per column.
                    let terms = if i < 2 { cols as f64 } else { rows };
                    let scale = 4.0 + terms.sqrt();
                    let what = format!("layer norm {dtype} {shape:?} affine={affine} output {i}");
                    assert_close(&what, a, c, (atol * scale, rtol * scale));
                }
            }
        }
    }
}

#[test]
fn layer_norm_and_embedding_modules_have_pytorch_names_and_shapes() {
    let ln = LayerNorm::new(8, &Device::Cpu).unwrap();
    let names: Vec<String> = ln.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["weight", "bias"]);
    assert_eq!(ln.weight.as_ref().unwrap().to_vec::<f32>().unwrap(), vec![1.0; 8]);
    let bare = LayerNorm::with_options(8, false, false, 1e-5, &Device::Cpu).unwrap();
    assert!(bare.named_parameters().is_empty());
    assert!(LayerNorm::with_options(8, true, true, 0.0, &Device::Cpu).is_err());

    let emb = Embedding::with_std(10, 4, 0.02, &Device::Cpu, &mut Generator::new(3)).unwrap();
    assert_eq!(emb.named_parameters()[0].0, "weight");
    assert_eq!(emb.weight.shape(), &[10, 4]);
    let std = emb.weight.mul(&emb.weight).unwrap().mean_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    assert!((0.01..0.03).contains(&std), "N(0, 0.02²) draws, got std {std}");
    let ids = Tensor::from_vec(vec![3i64, 3, 9, 0, 3, 1], &[2, 3], &Device::Cpu).unwrap();
    let out = emb.forward(&ids).unwrap();
    assert_eq!(out.shape(), &[2, 3, 4]);
    let rows = emb.weight.to_vec::<f32>().unwrap();
    assert_eq!(out.to_vec::<f32>().unwrap()[8..12], rows[36..40], "position (0, 2) holds row 9");
    // The gradient of a sum adds one per use: row 3 is used three times, row 5 never.
    out.sum_all().unwrap().backward().unwrap();
    let grad = emb.weight.grad().unwrap().to_vec::<f32>().unwrap();
    assert_eq!((grad[12], grad[20], grad[36], grad[0]), (3.0, 0.0, 1.0, 1.0));
    let bad = Tensor::from_vec(vec![10i64], &[1], &Device::Cpu).unwrap();
    assert!(emb.forward(&bad).is_err(), "an id past the table is an error");
    assert!(emb.forward(&Tensor::zeros(&[2], DType::F32, &Device::Cpu).unwrap()).is_err(), "ids must be integers");
}
