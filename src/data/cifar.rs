//! The CIFAR-10 binary format: records of 3,073 bytes, a label (0-9) then a 32x32 colour
//! image as 1,024 red, 1,024 green and 1,024 blue bytes (`data_batch_1.bin` ...
//! `data_batch_5.bin`, `test_batch.bin`). Files are validated before use.

use super::Dataset;
use crate::{Device, Error, Result, Tensor};
use std::path::Path;

/// Bytes per record.
pub const RECORD: usize = 1 + 3 * 32 * 32;

/// The class names, by label.
pub const CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Parses CIFAR-10 records into `[N, 3, 32, 32]` f32 pixels in [0, 1] and `[N]` i64 labels.
pub fn parse(what: &str, bytes: &[u8], device: &Device) -> Result<Dataset> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(Error::invalid(
            "cifar10",
            format!("{what}: {} bytes is not a whole number of {RECORD}-byte records", bytes.len()),
        ));
    }
    let n = bytes.len() / RECORD;
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for (i, record) in bytes.chunks(RECORD).enumerate() {
        if record[0] > 9 {
            return Err(Error::invalid("cifar10", format!("{what}: record {i} has label {}, not 0-9", record[0])));
        }
        labels.push(record[0] as i64);
        pixels.extend(record[1..].iter().map(|&p| p as f32 / 255.0));
    }
    Dataset::new(Tensor::from_vec(pixels, &[n, 3, 32, 32], device)?, Tensor::from_vec(labels, &[n], device)?)
}

/// Loads and concatenates CIFAR-10 binary files.
pub fn load(files: &[&Path], device: &Device) -> Result<Dataset> {
    let mut parts = Vec::new();
    for path in files {
        let bytes = crate::io::read_file(path, crate::io::MAX_DATA_FILE)?;
        parts.push(parse(&path.display().to_string(), &bytes, &crate::Device::Cpu)?);
    }
    let features: Vec<&Tensor> = parts.iter().map(|d| &d.features).collect();
    let targets: Vec<&Tensor> = parts.iter().map(|d| &d.targets).collect();
    Dataset::new(Tensor::cat(&features, 0)?, Tensor::cat(&targets, 0)?)?.to_device(device)
}

/// The training set (`data_batch_1..5.bin`) and test set (`test_batch.bin`) of a CIFAR-10
/// binary folder.
pub fn load_dir(dir: &Path, device: &Device) -> Result<(Dataset, Dataset)> {
    let train: Vec<std::path::PathBuf> = (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect();
    let refs: Vec<&Path> = train.iter().map(|p| p.as_path()).collect();
    Ok((load(&refs, device)?, load(&[&dir.join("test_batch.bin")], device)?))
}
