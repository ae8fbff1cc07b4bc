//! The MNIST IDX format: big-endian headers (magic 0x00000803 for images, 0x00000801 for
//! labels, then the counts and sizes), raw or gzip-compressed. Headers are validated against
//! the file's length before anything is read.

use super::{Dataset, pixels_to_f32};
use crate::{Device, Error, Result, Tensor};
use std::io::Read;
use std::path::Path;

/// The bytes of a file, gunzipped when they start with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = crate::io::read_file(path, crate::io::MAX_DATA_FILE)?;
    gunzip_if_needed(path, raw)
}

fn gunzip_if_needed(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    // Inflate the header first, then no more than it declares (and one byte to notice a
    // stream that goes on): a small file cannot make us inflate gigabytes.
    let gzip_error = |e: std::io::Error| corrupt(path, format!("not a valid gzip stream: {e}"));
    let mut stream = flate2::read::GzDecoder::new(&raw[..]);
    let mut out = Vec::new();
    (&mut stream).take(16).read_to_end(&mut out).map_err(gzip_error)?;
    let Some(declared) = declared_length(&out) else { return Ok(out) };
    let declared = declared.ok_or_else(|| corrupt(path, "the IDX header's sizes overflow".to_string()))?;
    let rest = (declared + 1).saturating_sub(out.len()) as u64;
    stream.take(rest).read_to_end(&mut out).map_err(gzip_error)?;
    Ok(out)
}

/// The whole length an IDX header declares (`None` for a header too short or of unknown magic,
/// which the parsers then refuse by name; `Some(None)` when the sizes overflow).
fn declared_length(header: &[u8]) -> Option<Option<usize>> {
    let field = |i: usize| header.get(4 * i..4 * i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    match field(0)? {
        0x0801 => Some(field(1)?.checked_add(8)),
        0x0803 => {
            let (n, rows, cols) = (field(1)?, field(2)?, field(3)?);
            Some(n.checked_mul(rows).and_then(|v| v.checked_mul(cols)).and_then(|v| v.checked_add(16)))
        }
        _ => None,
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn corrupt(path: &Path, detail: String) -> Error {
    Error::invalid("mnist", format!("{}: {detail}", path.display()))
}

/// Parses an IDX image file into (count, rows, cols, pixels).
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    if bytes.len() < 16 {
        return Err(corrupt(path, format!("{} bytes is too short for an IDX image header", bytes.len())));
    }
    if be_u32(bytes, 0) != 0x0803 {
        return Err(corrupt(path, format!("magic {:#010x} is not an IDX image file (0x00000803)", be_u32(bytes, 0))));
    }
    let (n, rows, cols) = (be_u32(bytes, 4) as usize, be_u32(bytes, 8) as usize, be_u32(bytes, 12) as usize);
    let expected = n.checked_mul(rows).and_then(|v| v.checked_mul(cols)).and_then(|v| v.checked_add(16));
    if expected != Some(bytes.len()) {
        return Err(corrupt(
            path,
            format!("header says {n} images of {rows}x{cols} but the file has {} bytes", bytes.len()),
        ));
    }
    Ok((n, rows, cols, bytes[16..].to_vec()))
}

/// Parses an IDX label file.
pub fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.len() < 8 {
        return Err(corrupt(path, format!("{} bytes is too short for an IDX label header", bytes.len())));
    }
    if be_u32(bytes, 0) != 0x0801 {
        return Err(corrupt(path, format!("magic {:#010x} is not an IDX label file (0x00000801)", be_u32(bytes, 0))));
    }
    let n = be_u32(bytes, 4) as usize;
    if n.checked_add(8) != Some(bytes.len()) {
        return Err(corrupt(path, format!("header says {n} labels but the file has {} bytes", bytes.len())));
    }
    Ok(bytes[8..].to_vec())
}

/// One split of MNIST from `dir`: `train` or `t10k`, files `<split>-images-idx3-ubyte[.gz]` and
/// `<split>-labels-idx1-ubyte[.gz]`. Features are `[N, 784]` f32 in [0, 1], targets `[N]` i64.
pub fn load(dir: &Path, split: &str, device: &Device) -> Result<Dataset> {
    let find = |stem: &str| -> Result<std::path::PathBuf> {
        [format!("{stem}.gz"), stem.to_string()]
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.exists())
            .ok_or_else(|| Error::invalid("mnist", format!("{}: no {stem}[.gz]", dir.display())))
    };
    let image_path = find(&format!("{split}-images-idx3-ubyte"))?;
    let label_path = find(&format!("{split}-labels-idx1-ubyte"))?;
    let images = read_maybe_gz(&image_path)?;
    let labels = read_maybe_gz(&label_path)?;
    build(&image_path, &images, &label_path, &labels, device)
}

/// The MNIST subset shipped in `data/mnist-10k`, compiled into the library: `train` (8,000
/// images) or `t10k` (2,000).
pub fn shipped(split: &str, device: &Device) -> Result<Dataset> {
    let (images, labels): (&[u8], &[u8]) = match split {
        "train" => (
            include_bytes!("../../data/mnist-10k/train-images-idx3-ubyte.gz"),
            include_bytes!("../../data/mnist-10k/train-labels-idx1-ubyte.gz"),
        ),
        "t10k" => (
            include_bytes!("../../data/mnist-10k/t10k-images-idx3-ubyte.gz"),
            include_bytes!("../../data/mnist-10k/t10k-labels-idx1-ubyte.gz"),
        ),
        other => return Err(Error::invalid("mnist", format!("unknown split `{other}` (train, t10k)"))),
    };
    let (ip, lp) = (Path::new("<embedded images>"), Path::new("<embedded labels>"));
    build(ip, &gunzip_if_needed(ip, images.to_vec())?, lp, &gunzip_if_needed(lp, labels.to_vec())?, device)
}

fn build(image_path: &Path, images: &[u8], label_path: &Path, labels: &[u8], device: &Device) -> Result<Dataset> {
    let (n, rows, cols, pixels) = parse_images(image_path, images)?;
    let labels = parse_labels(label_path, labels)?;
    if labels.len() != n {
        return Err(Error::invalid(
            "mnist",
            format!("{} has {n} images but {} has {} labels", image_path.display(), label_path.display(), labels.len()),
        ));
    }
    if let Some(bad) = labels.iter().find(|&&l| l > 9) {
        return Err(corrupt(label_path, format!("label {bad} is not a digit")));
    }
    let features = Tensor::from_vec(pixels_to_f32(&pixels), &[n, rows * cols], device)?;
    let targets = Tensor::from_vec(labels.iter().map(|&l| l as i64).collect(), &[n], device)?;
    Dataset::new(features, targets)
}
