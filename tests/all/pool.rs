//! Pooling against hand-computed values, and the GPU against the CPU (forward and backward).

use crate::common::*;
use nabla::{DType, Device, Generator, Pool2dOptions, Tensor};

fn grid(values: &[f64], h: usize, w: usize) -> Tensor {
    Tensor::from_vec(values.to_vec(), &[1, 1, h, w], &Device::Cpu).unwrap()
}

#[test]
fn max_and_average_pooling_match_hand_computed_windows() {
    let x = grid(&[1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15., 16.], 4, 4);
    assert_eq!(x.max_pool2d(Pool2dOptions::new(2)).unwrap().to_vec::<f64>().unwrap(), vec![6., 8., 14., 16.]);
    assert_eq!(x.avg_pool2d(Pool2dOptions::new(2)).unwrap().to_vec::<f64>().unwrap(), vec![3.5, 5.5, 11.5, 13.5]);
    let overlapping = Pool2dOptions { kernel: (3, 3), stride: (2, 2), padding: (1, 1) };
    assert_eq!(x.max_pool2d(overlapping).unwrap().to_vec::<f64>().unwrap(), vec![6., 8., 14., 16.]);
    // padding counts in the divisor: the top-left window sees 1+2+5+6 over 9 cells
    assert!((x.avg_pool2d(overlapping).unwrap().to_vec::<f64>().unwrap()[0] - 14.0 / 9.0).abs() < 1e-12);
    // adaptive 4 -> 3: windows [0,2), [1,3), [2,4)
    let a = x.adaptive_avg_pool2d((3, 3)).unwrap().to_vec::<f64>().unwrap();
    assert!((a[0] - (1. + 2. + 5. + 6.) / 4.0).abs() < 1e-12);
    assert!((a[4] - (6. + 7. + 10. + 11.) / 4.0).abs() < 1e-12);
    assert_eq!(x.adaptive_avg_pool2d((1, 1)).unwrap().to_vec::<f64>().unwrap(), vec![8.5]);
}

#[test]
fn max_pool_gradient_goes_to_the_first_maximum_and_nan_propagates() {
    let x = grid(&[1., 3., 3., 0.], 2, 2).requires_grad_().unwrap();
    x.max_pool2d(Pool2dOptions::new(2)).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![0., 1., 0., 0.]);
    let y = grid(&[1., f64::NAN, 3., 0.], 2, 2).max_pool2d(Pool2dOptions::new(2)).unwrap();
    assert!(y.to_vec::<f64>().unwrap()[0].is_nan());
}

#[test]
fn pooling_rejects_bad_windows() {
    let x = Tensor::zeros(&[1, 1, 4, 4], DType::F32, &Device::Cpu).unwrap();
    assert!(x.max_pool2d(Pool2dOptions::new(5)).unwrap_err().to_string().contains("max_pool2d"));
    assert!(x.max_pool2d(Pool2dOptions { kernel: (2, 2), stride: (1, 1), padding: (2, 0) }).is_err());
    assert!(x.avg_pool2d(Pool2dOptions::new(0)).is_err());
    assert!(x.adaptive_avg_pool2d((0, 1)).is_err());
    assert!(Tensor::zeros(&[4, 4], DType::F32, &Device::Cpu).unwrap().max_pool2d(Pool2dOptions::new(2)).is_err());
}

#[test]
fn pooling_forward_and_backward_on_the_gpu_match_the_cpu() {
    for dev in devices_under_test("pool") {
        let mut rng = Generator::new(9);
        let mut cases = Vec::new();
        for _ in 0..12 {
            let k = 1 + rng.below(4).unwrap() as usize;
            let opt = Pool2dOptions {
                kernel: (k, 1 + rng.below(3).unwrap() as usize),
                stride: (1 + rng.below(3).unwrap() as usize, 1 + rng.below(3).unwrap() as usize),
                padding: (rng.below(k as u64 / 2 + 1).unwrap() as usize, 0),
            };
            let shape = [
                1 + rng.below(3).unwrap() as usize,
                1 + rng.below(4).unwrap() as usize,
                k + rng.below(9).unwrap() as usize,
                3 + rng.below(9).unwrap() as usize,
            ];
            cases.push((shape, opt));
        }
        for dtype in FLOATS {
            for (i, (shape, opt)) in cases.iter().enumerate() {
                let x = randn(shape, dtype, i as u64);
                for which in 0..3 {
                    let run = |device: &Device| -> (Tensor, Tensor) {
                        let leaf = x.to_device(device).unwrap().requires_grad_().unwrap();
                        let y = match which {
                            0 => leaf.max_pool2d(*opt),
                            1 => leaf.avg_pool2d(*opt),
                            _ => leaf.adaptive_avg_pool2d((1 + shape[2] / 2, 2)),
                        }
                        .unwrap();
                        let g = randn(y.shape(), dtype, 3).to_device(device).unwrap();
                        y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
                        (
                            y.detach().to_device(&Device::Cpu).unwrap(),
                            leaf.grad().unwrap().to_device(&Device::Cpu).unwrap(),
                        )
                    };
                    let ((gy, gdx), (cy, cdx)) = (run(&dev), nabla::cpu::reference(|| run(&Device::Cpu)));
                    let tol = tolerance(dtype);
                    assert_close(&format!("pool {which} {dtype} {shape:?} {opt:?} forward"), &gy, &cy, tol);
                    assert_close(
                        &format!("pool {which} {dtype} {shape:?} {opt:?} backward"),
                        &gdx,
                        &cdx,
                        (tol.0 * 4.0, tol.1 * 2.0),
                    );
                }
            }
        }
    }
}

#[test]
fn max_pool_2x2_picks_the_first_largest_or_first_nan_as_the_reference_does_on_even_and_odd_widths() {
    // Values from {0, 1, 2, NaN} so windows hold ties and NaNs in every position; planes of
    // even and odd widths (the last column unused), several of them so the pooling runs in
    // parallel. The chosen element shows in the gradient, which goes to it alone.
    let mut rng = Generator::new(12);
    for (h, w) in [(28, 28), (10, 10), (9, 11), (6, 2)] {
        let values: Vec<f64> = (0..24 * h * w)
            .map(|_| match rng.below(7).unwrap() {
                0 => f64::NAN,
                v => (v % 3) as f64,
            })
            .collect();
        for dtype in [DType::F32, DType::F64, DType::BF16] {
            let x = Tensor::from_vec(values.clone(), &[4, 6, h, w], &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let run = || {
                let leaf = x.requires_grad_().unwrap();
                let y = leaf.max_pool2d(Pool2dOptions::new(2)).unwrap();
                let g = Tensor::arange(1.0, 1.0 + y.numel() as f64, 1.0, dtype, &Device::Cpu).unwrap();
                y.mul(&g.reshape(y.shape()).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                (y.to_vec::<f64>().unwrap(), leaf.grad().unwrap().to_vec::<f64>().unwrap())
            };
            let ((y, dx), (want_y, want_dx)) = (run(), nabla::cpu::reference(run));
            let same = |a: &f64, b: &f64| a == b || (a.is_nan() && b.is_nan());
            assert!(y.iter().zip(&want_y).all(|(a, b)| same(a, b)), "{h}x{w} {dtype}: values");
            assert!(dx.iter().zip(&want_dx).all(|(a, b)| same(a, b)), "{h}x{w} {dtype}: chosen elements");
        }
    }
}
