//! Model evaluation: accuracy, top-k error, confusion matrices with per-class precision,
//! recall and F1, and regression errors. Metrics are computed on the host from predictions.

use crate::{DType, Error, Result, Tensor};

/// The labels as a host vector, checked against `n` rows.
fn labels_of(op: &'static str, labels: &Tensor, n: usize) -> Result<Vec<i64>> {
    if labels.shape() != [n] {
        return Err(Error::shape(op, format!("labels {:?} for {n} predictions", labels.shape())));
    }
    labels.to_vec::<i64>()
}

/// Fraction of rows of `[N, C]` scores whose argmax is the label.
pub fn accuracy(scores: &Tensor, labels: &Tensor) -> Result<f64> {
    Ok(1.0 - top_k_error(scores, labels, 1)?)
}

/// Fraction of rows whose label is not among the `k` highest scores (top-1 and top-5 error, as
/// in the AlexNet paper's table). Ties are broken toward the lower class index.
pub fn top_k_error(scores: &Tensor, labels: &Tensor, k: usize) -> Result<f64> {
    let [n, c] = scores.shape() else {
        return Err(Error::shape("top_k_error", format!("scores must be [N, C], got {:?}", scores.shape())));
    };
    let (n, c) = (*n, *c);
    if n == 0 {
        // No examples: no error rate (0 would claim a perfect score).
        return Err(Error::invalid("top_k_error", "no examples to score (scores are [0, C])"));
    }
    let labels = labels_of("top_k_error", labels, n)?;
    let values = scores.to_vec::<f64>()?;
    let mut misses = 0usize;
    for (r, &label) in labels.iter().enumerate() {
        let row = &values[r * c..(r + 1) * c];
        let Some(&own) = usize::try_from(label).ok().and_then(|l| row.get(l)) else {
            return Err(Error::IndexOutOfRange { op: "top_k_error", index: label, size: c });
        };
        // Classes ranked above the label: higher score, or equal score and lower index. A NaN or
        // infinite score anywhere in the row makes the prediction wrong, never right.
        let above = row.iter().enumerate().filter(|&(j, &v)| v > own || (v == own && (j as i64) < label)).count();
        if above >= k || row.iter().any(|v| !v.is_finite()) {
            misses += 1;
        }
    }
    Ok(misses as f64 / n as f64)
}

/// The most classes a [`ConfusionMatrix`] holds (its counts take 8 GiB at this size).
pub const MAX_CONFUSION_CLASSES: usize = 32_768;

/// Counts of (true class, predicted class) pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    /// `counts[true][predicted]`.
    pub counts: Vec<Vec<u64>>,
}

/// Precision, recall and F1 of one class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassScores {
    /// TP / (TP + FP); 0 when the class is never predicted.
    pub precision: f64,
    /// TP / (TP + FN); 0 when the class never occurs.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// How often the class occurs.
    pub support: u64,
}

impl ConfusionMatrix {
    /// The matrix of i64 predictions against i64 labels over `classes` classes.
    pub fn new(predictions: &Tensor, labels: &Tensor, classes: usize) -> Result<Self> {
        if predictions.dtype() != DType::I64 || predictions.rank() != 1 {
            return Err(Error::shape(
                "confusion_matrix",
                format!("predictions must be [N] i64, got {:?} {}", predictions.shape(), predictions.dtype()),
            ));
        }
        if classes > MAX_CONFUSION_CLASSES {
            return Err(Error::invalid(
                "confusion_matrix",
                format!("{classes} classes would need {classes}² counts: at most {MAX_CONFUSION_CLASSES} classes"),
            ));
        }
        let preds = predictions.to_vec::<i64>()?;
        let labels = labels_of("confusion_matrix", labels, preds.len())?;
        let mut counts = vec![vec![0u64; classes]; classes];
        for (&p, &t) in preds.iter().zip(&labels) {
            for v in [p, t] {
                if v < 0 || v as u64 >= classes as u64 {
                    return Err(Error::IndexOutOfRange { op: "confusion_matrix", index: v, size: classes });
                }
            }
            counts[t as usize][p as usize] += 1;
        }
        Ok(ConfusionMatrix { counts })
    }

    /// Per-class precision, recall and F1.
    pub fn class_scores(&self) -> Vec<ClassScores> {
        let k = self.counts.len();
        (0..k)
            .map(|c| {
                let tp = self.counts[c][c] as f64;
                let predicted: u64 = (0..k).map(|t| self.counts[t][c]).sum();
                let support: u64 = self.counts[c].iter().sum();
                let precision = if predicted == 0 { 0.0 } else { tp / predicted as f64 };
                let recall = if support == 0 { 0.0 } else { tp / support as f64 };
                let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
                ClassScores { precision, recall, f1, support }
            })
            .collect()
    }

    /// Fraction on the diagonal.
    pub fn accuracy(&self) -> f64 {
        let total: u64 = self.counts.iter().flatten().sum();
        let right: u64 = (0..self.counts.len()).map(|c| self.counts[c][c]).sum();
        if total == 0 { 0.0 } else { right as f64 / total as f64 }
    }
}

impl std::fmt::Display for ConfusionMatrix {
    /// Rows are true classes, columns predictions.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = self.counts.iter().flatten().max().map_or(1, |m| m.to_string().len()).max(3);
        write!(f, "{:>6}", "t\\p")?;
        for c in 0..self.counts.len() {
            write!(f, " {c:>width$}")?;
        }
        writeln!(f)?;
        for (t, row) in self.counts.iter().enumerate() {
            write!(f, "{t:>6}")?;
            for v in row {
                write!(f, " {v:>width$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Regression errors of predictions against targets (same number of elements).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RegressionErrors {
    /// Mean squared error.
    pub mse: f64,
    /// Mean absolute error.
    pub mae: f64,
    /// Coefficient of determination 1 - SS_res / SS_tot.
    pub r2: f64,
}

/// MSE, MAE and R² of `predictions` against `targets`.
pub fn regression_errors(predictions: &Tensor, targets: &Tensor) -> Result<RegressionErrors> {
    if predictions.numel() != targets.numel() || predictions.numel() == 0 {
        return Err(Error::shape(
            "regression_errors",
            format!("predictions {:?} vs targets {:?}", predictions.shape(), targets.shape()),
        ));
    }
    let (p, t) = (predictions.to_vec::<f64>()?, targets.to_vec::<f64>()?);
    let n = p.len() as f64;
    let mean_t = t.iter().sum::<f64>() / n;
    let ss_res: f64 = p.iter().zip(&t).map(|(a, b)| (a - b) * (a - b)).sum();
    let ss_tot: f64 = t.iter().map(|b| (b - mean_t) * (b - mean_t)).sum();
    Ok(RegressionErrors {
        mse: ss_res / n,
        mae: p.iter().zip(&t).map(|(a, b)| (a - b).abs()).sum::<f64>() / n,
        r2: if ss_tot == 0.0 { f64::NAN } else { 1.0 - ss_res / ss_tot },
    })
}
