//! Evaluation metrics against hand-computed values.

use nabla::metrics::{ConfusionMatrix, accuracy, regression_errors, top_k_error};
use nabla::{Device, Error, Tensor};

fn scores(values: &[f64], rows: usize) -> Tensor {
    Tensor::from_vec(values.to_vec(), &[rows, values.len() / rows], &Device::Cpu).unwrap()
}

fn labels(values: &[i64]) -> Tensor {
    Tensor::from_vec(values.to_vec(), &[values.len()], &Device::Cpu).unwrap()
}

#[test]
fn accuracy_and_top_k_error_count_rank_of_the_true_class() {
    // row 0: label 2 ranked 1st; row 1: label 0 ranked 3rd; row 2: label 1 ranked 2nd (tie
    // with class 0, which has the lower index and ranks first)
    let s = scores(&[0.1, 0.2, 0.7, 0.2, 0.5, 0.3, 0.4, 0.4, 0.2], 3);
    let y = labels(&[2, 0, 1]);
    assert!((accuracy(&s, &y).unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert!((top_k_error(&s, &y, 1).unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert!((top_k_error(&s, &y, 2).unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(top_k_error(&s, &y, 3).unwrap(), 0.0);
    assert!(matches!(top_k_error(&s, &labels(&[0, 3, 1]), 1), Err(Error::IndexOutOfRange { .. })));
    assert!(top_k_error(&s, &labels(&[0, 1]), 1).is_err());
}

#[test]
fn confusion_matrix_gives_per_class_precision_recall_and_f1() {
    let predicted = labels(&[0, 0, 1, 1, 1, 2, 0]);
    let truth = labels(&[0, 1, 1, 1, 2, 2, 0]);
    let cm = ConfusionMatrix::new(&predicted, &truth, 3).unwrap();
    assert_eq!(cm.counts, vec![vec![2, 0, 0], vec![1, 2, 0], vec![0, 1, 1]]);
    let s = cm.class_scores();
    assert_eq!((s[0].precision, s[0].recall, s[0].support), (2.0 / 3.0, 1.0, 2));
    assert_eq!((s[1].precision, s[1].recall), (2.0 / 3.0, 2.0 / 3.0));
    assert_eq!((s[2].precision, s[2].recall), (1.0, 0.5));
    assert!((s[2].f1 - 2.0 / 3.0).abs() < 1e-12);
    assert!((cm.accuracy() - 5.0 / 7.0).abs() < 1e-12);
    let text = cm.to_string();
    assert!(text.lines().count() == 4 && text.contains("t\\p"), "{text}");
    assert!(ConfusionMatrix::new(&labels(&[3]), &labels(&[0]), 3).is_err());
}

#[test]
fn regression_errors_match_their_formulas() {
    let p = Tensor::from_vec(vec![2.0f64, 4.0, 6.0], &[3], &Device::Cpu).unwrap();
    let t = Tensor::from_vec(vec![1.0f64, 4.0, 7.0], &[3, 1], &Device::Cpu).unwrap();
    let e = regression_errors(&p, &t).unwrap();
    assert!((e.mse - 2.0 / 3.0).abs() < 1e-12);
    assert!((e.mae - 2.0 / 3.0).abs() < 1e-12);
    assert!((e.r2 - (1.0 - 2.0 / 18.0)).abs() < 1e-12);
    assert!(regression_errors(&p, &t.narrow(0, 0, 2).unwrap()).is_err());
}
