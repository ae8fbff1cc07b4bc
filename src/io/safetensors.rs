//! Checkpoints in the safetensors format (what PyTorch users load with
//! `safetensors.torch.load_file`), through the `safetensors` crate: it writes the header and
//! validates every file (offsets, sizes, overlaps) before a byte of tensor data is used. Files
//! are memory-mapped for reading and written atomically (temporary file, fsync, rename).
//!
//! Every dtype of the format is read. nabla's own dtypes (F32, F64, F16, BF16, I64) load as
//! they are; the other integer types and BOOL widen exactly to I64, the 8-bit floats (E4M3,
//! E5M2) widen exactly to F32; the packed sub-byte floats (F4, F6, E8M0) are refused by name.
//! [`Checkpoint::file_dtypes`] keeps each tensor's dtype in the file, and [`save_as`] writes any
//! of the format's integer, BOOL or float dtypes, checking that every value fits.

use crate::storage::CpuStorage;
use crate::{DType, Device, Error, Result, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use safetensors::tensor::Dtype as FileDtype;

/// The file dtype a nabla dtype is written as.
pub fn file_dtype(dtype: DType) -> Dtype {
    match dtype {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
    }
}

fn bad(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::invalid("safetensors", format!("{what}: {detail}"))
}

/// A tensor's little-endian bytes in the file dtype `to`, with every value checked to fit.
fn encode(name: &str, tensor: &Tensor, to: Dtype) -> Result<Vec<u8>> {
    let host = tensor.to_device(&Device::Cpu)?.contiguous()?;
    if to == file_dtype(host.dtype()) {
        return Ok(match host.storage() {
            crate::storage::StorageRef::Cpu(s) => s.gather_same(&host.layout).as_bytes().to_vec(),
            crate::storage::StorageRef::Cuda(_) => unreachable!("moved to the host above"),
        });
    }
    let out_of_range = |v: f64| bad(name, format!("value {v} does not fit the file dtype {to:?}"));
    let integers = |lo: f64, hi: f64, width: usize| -> Result<Vec<u8>> {
        if host.dtype().is_float() {
            return Err(bad(name, format!("{} values are not written as {to:?} (cast them first)", host.dtype())));
        }
        let mut bytes = Vec::with_capacity(host.numel() * width);
        for v in host.to_vec::<i64>()? {
            if (v as f64) < lo || (v as f64) > hi {
                return Err(out_of_range(v as f64));
            }
            bytes.extend_from_slice(&v.to_le_bytes()[..width]);
        }
        Ok(bytes)
    };
    match to {
        Dtype::BOOL | Dtype::U8 => integers(0.0, if to == Dtype::BOOL { 1.0 } else { 255.0 }, 1),
        Dtype::I8 => integers(-128.0, 127.0, 1),
        Dtype::I16 => integers(i16::MIN as f64, i16::MAX as f64, 2),
        Dtype::U16 => integers(0.0, u16::MAX as f64, 2),
        Dtype::I32 => integers(i32::MIN as f64, i32::MAX as f64, 4),
        Dtype::U32 => integers(0.0, u32::MAX as f64, 4),
        Dtype::U64 => integers(0.0, i64::MAX as f64, 8),
        Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16 | Dtype::I64 => {
            let target = DType::ALL.into_iter().find(|d| file_dtype(*d) == to).expect("native file dtype");
            encode(name, &host.to_dtype(target)?, to)
        }
        other => Err(bad(name, format!("nabla does not write {other:?}"))),
    }
}

/// Serialises named tensors (each in its own dtype) and string metadata to safetensors bytes.
pub fn serialize(tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let typed: Vec<(String, Tensor, Dtype)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.clone(), file_dtype(t.dtype()))).collect();
    serialize_as(&typed, metadata)
}

/// Serialises named tensors, each converted to the file dtype given beside it (integers to any
/// integer or BOOL dtype whose range holds every value, floats to F16/BF16/F32/F64).
pub fn serialize_as(tensors: &[(String, Tensor, Dtype)], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut encoded = Vec::with_capacity(tensors.len());
    for (name, tensor, to) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(bad(name, "the tensor name appears twice"));
        }
        encoded.push((name.as_str(), *to, tensor.shape().to_vec(), encode(name, tensor, *to)?));
    }
    let views = encoded
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|v| (*name, v)).map_err(|e| bad(name, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let info: Option<HashMap<String, String>> =
        (!metadata.is_empty()).then(|| metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    safetensors::tensor::serialize(views, info).map_err(|e| bad("serialize", e))
}

/// Writes named tensors to `path` atomically, each in its own dtype.
pub fn save(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let bytes = serialize(tensors, metadata)?;
    crate::io::write_atomically(path, &bytes).map_err(|source| Error::Io { path: path.display().to_string(), source })
}

/// Writes named tensors to `path` atomically, each converted to the file dtype beside it.
pub fn save_as(path: &Path, tensors: &[(String, Tensor, Dtype)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let bytes = serialize_as(tensors, metadata)?;
    crate::io::write_atomically(path, &bytes).map_err(|source| Error::Io { path: path.display().to_string(), source })
}

/// A loaded checkpoint: tensors by name, and the metadata.
pub struct Checkpoint {
    /// Tensors on the CPU, by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// `__metadata__` strings.
    pub metadata: BTreeMap<String, String>,
    /// Each tensor's dtype in the file (which differs from the tensor's for widened types).
    pub file_dtypes: BTreeMap<String, Dtype>,
}

/// A tensor of the file's `dtype` from its little-endian bytes, widened exactly where nabla has
/// no such dtype.
fn decode(name: &str, dtype: Dtype, shape: &[usize], data: &[u8]) -> Result<Tensor> {
    let ints = |width: usize, signed: bool| -> Vec<i64> {
        data.chunks_exact(width)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..width].copy_from_slice(c);
                let v = i64::from_le_bytes(b);
                let shift = 64 - 8 * width as u32;
                if signed && width < 8 { (v << shift) >> shift } else { v }
            })
            .collect()
    };
    let native = |d: DType| Tensor::from_cpu(CpuStorage::from_bytes(d, data), shape);
    Ok(match dtype {
        Dtype::F32 => native(DType::F32),
        Dtype::F64 => native(DType::F64),
        Dtype::F16 => native(DType::F16),
        Dtype::BF16 => native(DType::BF16),
        Dtype::I64 => native(DType::I64),
        Dtype::BOOL | Dtype::U8 => Tensor::from_vec(ints(1, false), shape, &Device::Cpu)?,
        Dtype::I8 => Tensor::from_vec(ints(1, true), shape, &Device::Cpu)?,
        Dtype::I16 => Tensor::from_vec(ints(2, true), shape, &Device::Cpu)?,
        Dtype::U16 => Tensor::from_vec(ints(2, false), shape, &Device::Cpu)?,
        Dtype::I32 => Tensor::from_vec(ints(4, true), shape, &Device::Cpu)?,
        Dtype::U32 => Tensor::from_vec(ints(4, false), shape, &Device::Cpu)?,
        Dtype::U64 => {
            let values = ints(8, false);
            if let Some(v) = values.iter().find(|v| **v < 0) {
                return Err(bad(name, format!("U64 value {} does not fit nabla's i64", *v as u64)));
            }
            Tensor::from_vec(values, shape, &Device::Cpu)?
        }
        Dtype::F8_E4M3 => {
            Tensor::from_vec(data.iter().map(|&b| f8_e4m3(b)).collect::<Vec<f32>>(), shape, &Device::Cpu)?
        }
        Dtype::F8_E5M2 => {
            Tensor::from_vec(data.iter().map(|&b| f8_e5m2(b)).collect::<Vec<f32>>(), shape, &Device::Cpu)?
        }
        other => return Err(bad(name, format!("nabla cannot hold {other:?} tensors"))),
    })
}

/// An OCP FP8 E4M3 byte (bias 7, no infinities, S.1111.111 is NaN) as f32.
fn f8_e4m3(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (exp, man) = ((b >> 3) & 0xf, (b & 7) as f32);
    if exp == 0xf && b & 7 == 7 {
        return f32::NAN;
    }
    sign * if exp == 0 { man / 8.0 * 2f32.powi(-6) } else { (1.0 + man / 8.0) * 2f32.powi(exp as i32 - 7) }
}

/// An FP8 E5M2 byte (IEEE-like, bias 15) as f32: exactly the upper byte of an f16.
fn f8_e5m2(b: u8) -> f32 {
    half::f16::from_bits((b as u16) << 8).to_f32()
}

/// Parses and validates safetensors bytes; `what` names the source in errors.
pub fn deserialize(what: &str, bytes: &[u8]) -> Result<Checkpoint> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(what, e))?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| bad(what, e))?;
    let metadata: BTreeMap<String, String> =
        header.metadata().as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
    let mut tensors = BTreeMap::new();
    let mut file_dtypes = BTreeMap::new();
    for (name, view) in file.iter() {
        let tensor = decode(name, view.dtype(), view.shape(), view.data()).map_err(|e| bad(what, e))?;
        tensors.insert(name.to_string(), tensor);
        file_dtypes.insert(name.to_string(), view.dtype());
    }
    Ok(Checkpoint { tensors, metadata, file_dtypes })
}

/// Reads and validates a safetensors file, memory-mapped so a large file is not first copied
/// whole into memory.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let io = |source| Error::Io { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and dropped before this call returns; every byte is copied
    // into owned tensors after validation. (Truncating the file meanwhile would fault, as with
    // any memory-mapped reader; checkpoints are replaced by rename, never truncated in place.)
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    deserialize(&path.display().to_string(), &map)
}
