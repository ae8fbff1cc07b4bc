//! Differentiable cases shared by the finite-difference checks and the GPU backward tests: a
//! name, f64 inputs on the CPU, and a function of the inputs. Inputs stay away from kinks
//! (|x| > 0.1 for abs/relu, distinct values for max/min) so finite differences are valid.

use super::{randn, uniform};
use nabla::{DType, Device, Result, Tensor};

pub type Case = (&'static str, Vec<Tensor>, Box<dyn Fn(&[Tensor]) -> Result<Tensor>>);

fn away_from_zero(shape: &[usize], seed: u64) -> Tensor {
    let x = uniform(shape, 0.2, 2.0, DType::F64, seed);
    let sign = uniform(shape, -1.0, 1.0, DType::F64, seed + 100).sign().unwrap();
    x.mul(&sign).unwrap()
}

/// Class or position indices on the device of `like`, the case's first input.
fn ints(values: &[i64], shape: &[usize], like: &Tensor) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &like.device()).unwrap()
}

pub fn cases() -> Vec<Case> {
    let mut out: Vec<Case> = Vec::new();
    macro_rules! case {
        ($name:expr, [$($input:expr),*], $f:expr) => {
            out.push(($name, vec![$($input),*], Box::new($f)))
        };
    }
    let x = || randn(&[3, 4], DType::F64, 1);
    let pos = || uniform(&[3, 4], 0.3, 3.0, DType::F64, 2);
    case!("neg", [x()], |t| t[0].neg());
    case!("abs", [away_from_zero(&[3, 4], 3)], |t| t[0].abs());
    case!("exp", [x()], |t| t[0].exp());
    case!("log", [pos()], |t| t[0].log());
    case!("sqrt", [pos()], |t| t[0].sqrt());
    case!("tanh", [x()], |t| t[0].tanh());
    case!("sigmoid", [x()], |t| t[0].sigmoid());
    case!("relu", [away_from_zero(&[3, 4], 4)], |t| t[0].relu());
    case!("gelu", [x()], |t| t[0].gelu());
    let a = || randn(&[2, 3, 4], DType::F64, 5);
    let b = || randn(&[3, 1], DType::F64, 6);
    case!("add broadcast", [a(), b()], |t| t[0].add(&t[1]));
    case!("sub broadcast", [a(), b()], |t| t[0].sub(&t[1]));
    case!("mul broadcast", [a(), b()], |t| t[0].mul(&t[1]));
    case!("div broadcast", [a(), away_from_zero(&[3, 1], 7)], |t| t[0].div(&t[1]));
    case!("pow", [uniform(&[2, 3], 0.5, 2.0, DType::F64, 8), uniform(&[3], -1.5, 1.5, DType::F64, 9)], |t| {
        t[0].pow(&t[1])
    });
    case!("maximum", [randn(&[4, 3], DType::F64, 10), randn(&[3], DType::F64, 11)], |t| t[0].maximum(&t[1]));
    case!("minimum", [randn(&[4, 3], DType::F64, 12), randn(&[4, 1], DType::F64, 13)], |t| t[0].minimum(&t[1]));
    case!("scalar ops", [pos()], |t| {
        t[0].add_scalar(1.5)?.mul_scalar(-2.0)?.sub_scalar(0.25)?.div_scalar(3.0)?.neg()?.pow_scalar(1.7)
    });
    case!("maximum/minimum scalar", [x()], |t| t[0].maximum_scalar(0.05)?.minimum_scalar(0.9));
    case!("where", [randn(&[3, 4], DType::F64, 14), randn(&[4], DType::F64, 15)], |t| {
        t[0].gt_scalar(0.0)?.where_cond(&t[0], &t[1])
    });
    case!("sum axes", [a()], |t| t[0].sum(&[0, 2], false));
    case!("mean keepdim", [a()], |t| t[0].mean(&[1], true));
    case!("sum all", [a()], |t| t[0].sum_all());
    case!("max", [a()], |t| t[0].max(&[2], false));
    case!("min all", [a()], |t| t[0].min(&[], false));
    case!("softmax", [a()], |t| t[0].softmax(-1));
    case!("softmax axis 0", [a()], |t| t[0].softmax(0));
    case!("log_softmax", [a()], |t| t[0].log_softmax(1));
    case!("matmul 2-D", [randn(&[3, 5], DType::F64, 16), randn(&[5, 2], DType::F64, 17)], |t| t[0].matmul(&t[1]));
    case!("matmul batched broadcast", [randn(&[2, 1, 3, 4], DType::F64, 18), randn(&[3, 4, 2], DType::F64, 19)], |t| {
        t[0].matmul(&t[1])
    });
    case!("matmul transposed and vector", [randn(&[4, 3], DType::F64, 20), randn(&[4], DType::F64, 21)], |t| {
        t[0].t()?.matmul(&t[1])
    });
    case!(
        "matmul of a transposed batch by one shared matrix",
        [randn(&[2, 4, 3], DType::F64, 54), randn(&[4, 5], DType::F64, 55)],
        |t| { t[0].transpose(1, 2)?.matmul(&t[1]) }
    );
    case!("linear with bias, batched input", [a(), randn(&[5, 4], DType::F64, 50), randn(&[5], DType::F64, 51)], |t| {
        t[0].linear(&t[1], Some(&t[2]))
    });
    case!(
        "linear_relu with bias, batched input",
        [a(), randn(&[5, 4], DType::F64, 58), randn(&[5], DType::F64, 59)],
        |t| { t[0].linear_relu(&t[1], Some(&t[2])) }
    );
    case!(
        "linear_relu without bias, vector input",
        [randn(&[4], DType::F64, 60), randn(&[3, 4], DType::F64, 61)],
        |t| { t[0].linear_relu(&t[1], None) }
    );
    case!("linear without bias, vector input", [randn(&[4], DType::F64, 52), randn(&[3, 4], DType::F64, 53)], |t| {
        t[0].linear(&t[1], None)
    });
    case!("reshape/permute/transpose", [a()], |t| t[0].reshape(&[6, 4])?.t()?.reshape(&[2, 2, 6])?.permute(&[2, 0, 1]));
    case!("narrow", [a()], |t| t[0].narrow(2, 1, 2)?.narrow(0, 1, 1));
    // The backward pass joins slices that tile a dim with one cat (a fused q/k/v projection)...
    case!("narrow: three slices that tile a dim", [a()], |t| {
        let (left, middle, right) = (t[0].narrow(2, 0, 1)?, t[0].narrow(2, 1, 2)?, t[0].narrow(2, 3, 1)?);
        Tensor::cat(&[&right.mul(&left)?, &middle.exp()?], 2)
    });
    // ...and sums overlapping slices, and a dense use beside them, into zeros around them.
    case!("narrow: overlapping slices beside a dense use", [a()], |t| {
        let (front, back) = (t[0].narrow(1, 0, 2)?, t[0].narrow(1, 1, 2)?);
        front.mul(&back)?.add(&front.tanh()?)?.sum(&[1], false)?.add(&t[0].sum(&[1], false)?)
    });
    case!("broadcast_as", [b()], |t| t[0].broadcast_as(&[2, 3, 5]));
    case!("squeeze/unsqueeze/flatten", [randn(&[3, 1, 4], DType::F64, 22)], |t| {
        t[0].squeeze(1)?.unsqueeze(0)?.flatten(0, 1)?.contiguous()
    });
    case!("cat and stack", [randn(&[2, 3], DType::F64, 23), randn(&[2, 2], DType::F64, 24)], |t| {
        Tensor::stack(&[&Tensor::cat(&[&t[0], &t[1]], 1)?, &Tensor::cat(&[&t[1], &t[0]], 1)?], 0)
    });
    case!("index_select", [a()], |t| t[0].index_select(1, &ints(&[2, 0, 2, 1], &[4], &t[0])));
    case!("gather", [randn(&[3, 4], DType::F64, 25)], |t| t[0].gather(1, &ints(&[0, 3, 3, 1, 2, 2], &[3, 2], &t[0])));
    case!("index_add", [randn(&[4, 3], DType::F64, 26), randn(&[3, 3], DType::F64, 27)], |t| {
        t[0].index_add(0, &ints(&[1, 3, 1], &[3], &t[0]), &t[1])
    });
    case!("scatter_add", [randn(&[3, 4], DType::F64, 28), randn(&[3, 2], DType::F64, 29)], |t| {
        t[0].scatter_add(1, &ints(&[0, 3, 3, 3, 2, 1], &[3, 2], &t[0]), &t[1])
    });
    case!("cross_entropy", [randn(&[5, 4], DType::F64, 30)], |t| t[0].cross_entropy(&ints(
        &[3, 0, 1, 3, 2],
        &[5],
        &t[0]
    )));
    case!("mse_loss", [randn(&[3, 2], DType::F64, 31), randn(&[3, 2], DType::F64, 32)], |t| t[0].mse_loss(&t[1]));
    case!(
        "binary_cross_entropy_with_logits",
        [randn(&[6], DType::F64, 33), uniform(&[6], 0.0, 1.0, DType::F64, 34)],
        |t| { t[0].binary_cross_entropy_with_logits(&t[1]) }
    );
    let conv = |s: (usize, usize), p: (usize, usize), d: (usize, usize), g: usize| nabla::Conv2dOptions {
        stride: s,
        padding: p,
        dilation: d,
        groups: g,
    };
    case!(
        "conv2d strided padded with bias",
        [randn(&[2, 2, 6, 5], DType::F64, 35), randn(&[3, 2, 3, 2], DType::F64, 36), randn(&[3], DType::F64, 37)],
        move |t| { t[0].conv2d(&t[1], Some(&t[2]), conv((2, 1), (1, 2), (1, 1), 1)) }
    );
    case!(
        "conv2d_relu strided padded with bias",
        [randn(&[2, 2, 6, 5], DType::F64, 141), randn(&[3, 2, 3, 2], DType::F64, 142), randn(&[3], DType::F64, 143)],
        move |t| { t[0].conv2d_relu(&t[1], Some(&t[2]), conv((2, 1), (1, 2), (1, 1), 1)) }
    );
    case!(
        "conv2d dilated grouped",
        [randn(&[1, 4, 7, 7], DType::F64, 38), randn(&[2, 2, 2, 3], DType::F64, 39)],
        move |t| { t[0].conv2d(&t[1], None, conv((1, 2), (0, 1), (2, 1), 2)) }
    );
    // distinct values, so max pooling has no ties within a window
    let distinct = || {
        randn(&[2, 2, 5, 6], DType::F64, 40)
            .add(
                &Tensor::arange(0.0, 120.0, 1.0, DType::F64, &Device::Cpu)
                    .unwrap()
                    .reshape(&[2, 2, 5, 6])
                    .unwrap()
                    .mul_scalar(1e-3)
                    .unwrap(),
            )
            .unwrap()
    };
    let window = nabla::Pool2dOptions { kernel: (3, 2), stride: (2, 1), padding: (1, 1) };
    case!("max_pool2d", [distinct()], move |t| t[0].max_pool2d(window));
    case!("avg_pool2d", [distinct()], move |t| t[0].avg_pool2d(window));
    case!("adaptive_avg_pool2d", [distinct()], |t| t[0].adaptive_avg_pool2d((3, 4)));
    case!(
        "batch norm in training (batch statistics)",
        [randn(&[3, 2, 3, 2], DType::F64, 41), randn(&[2], DType::F64, 42), randn(&[2], DType::F64, 43)],
        |t| {
            let (mean, var) = nabla::nn::batch_stats(&t[0])?;
            nabla::nn::batch_norm2d(&t[0], &mean, &var, &t[1], &t[2], 1e-5)
        }
    );
    case!(
        "batch norm fused, training",
        [randn(&[3, 2, 2, 3], DType::F64, 44), randn(&[2], DType::F64, 45), randn(&[2], DType::F64, 46)],
        |t| t[0].batch_norm2d_train(&t[1], &t[2], 1e-5).map(|(y, _, _)| y)
    );
    case!(
        "batch norm fused, evaluation",
        [randn(&[2, 3, 2, 2], DType::F64, 47), randn(&[3], DType::F64, 48), randn(&[3], DType::F64, 49)],
        |t| {
            let on = |values: Vec<f64>| Tensor::from_vec(values, &[3], &t[0].device())?.to_dtype(t[0].dtype());
            t[0].batch_norm2d_eval(&on(vec![0.3, -0.2, 1.0])?, &on(vec![0.5, 2.0, 0.1])?, &t[1], &t[2], 1e-5)
        }
    );
    case!(
        "layer norm with weight and bias",
        [randn(&[2, 3, 5], DType::F64, 54), randn(&[5], DType::F64, 55), randn(&[5], DType::F64, 56)],
        |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5)
    );
    case!("layer norm without weight or bias", [randn(&[4, 7], DType::F64, 57)], |t| t[0].layer_norm(None, None, 1e-5));
    case!(
        "scaled dot-product attention, causal, more keys than queries",
        [
            randn(&[1, 2, 3, 16], DType::F64, 59),
            randn(&[1, 2, 5, 16], DType::F64, 60),
            randn(&[1, 2, 5, 16], DType::F64, 61)
        ],
        |t| t[0].scaled_dot_product_attention(&t[1], &t[2], true, None)
    );
    case!(
        "scaled dot-product attention, full, scale 0.5",
        [
            randn(&[2, 1, 4, 16], DType::F64, 62),
            randn(&[2, 1, 4, 16], DType::F64, 63),
            randn(&[2, 1, 4, 16], DType::F64, 64)
        ],
        |t| t[0].scaled_dot_product_attention(&t[1], &t[2], false, Some(0.5))
    );
    case!("embedding lookup with repeated ids", [randn(&[5, 3], DType::F64, 58)], |t| {
        let ids = ints(&[4, 0, 4, 2, 4, 1], &[2, 3], &t[0]);
        t[0].index_select(0, &ids.reshape(&[6])?)?.reshape(&[2, 3, 3])
    });
    out
}
