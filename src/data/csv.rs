//! A small CSV loader for tabular data: comma-separated numbers, an optional header line, and
//! one target column (by index, negative from the end).

use super::Dataset;
use crate::{Device, Error, Result, Tensor};
use std::path::Path;

/// What the target column holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Integer class labels (`[N]` i64).
    Class,
    /// Real values (`[N, 1]` f32).
    Value,
}

/// Parses CSV text. Every row must have the same number of numeric fields; a first line that
/// does not parse as numbers is taken as the header. Errors name the line and field.
pub fn parse(text: &str, target_column: isize, target: Target, device: &Device) -> Result<Dataset> {
    let bad = |detail: String| Error::invalid("csv", detail);
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parsed: std::result::Result<Vec<f64>, _> = line.split(',').map(|f| f.trim().parse::<f64>()).collect();
        match parsed {
            Ok(values) => rows.push(values),
            Err(_) if line_no == 0 => continue, // header
            Err(e) => return Err(bad(format!("line {}: {e} in `{line}`", line_no + 1))),
        }
    }
    let width = rows.first().map(Vec::len).ok_or_else(|| bad("no data rows".into()))?;
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != width) {
        return Err(bad(format!("data row {} has {} fields, the first has {width}", i + 1, r.len())));
    }
    let t = if target_column < 0 { target_column + width as isize } else { target_column };
    if t < 0 || t >= width as isize || width < 2 {
        return Err(bad(format!("target column {target_column} is outside {width} columns")));
    }
    let t = t as usize;
    let n = rows.len();
    let features: Vec<f32> =
        rows.iter().flat_map(|r| r.iter().enumerate().filter(|(j, _)| *j != t).map(|(_, v)| *v as f32)).collect();
    let features = Tensor::from_vec(features, &[n, width - 1], device)?;
    let targets = match target {
        Target::Class => {
            let labels: Vec<i64> = rows.iter().map(|r| r[t] as i64).collect();
            if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r[t].fract() != 0.0 || r[t] < 0.0) {
                return Err(bad(format!("data row {}: class label {} is not a non-negative integer", i + 1, r[t])));
            }
            Tensor::from_vec(labels, &[n], device)?
        }
        Target::Value => Tensor::from_vec(rows.iter().map(|r| r[t] as f32).collect(), &[n, 1], device)?,
    };
    Dataset::new(features, targets)
}

/// Loads a CSV file (see [`parse`]).
pub fn load(path: &Path, target_column: isize, target: Target, device: &Device) -> Result<Dataset> {
    let text = crate::io::read_text_file(path, crate::io::MAX_DATA_FILE)?;
    parse(&text, target_column, target, device)
}
