//! Checkpoints in the safetensors format (the layout PyTorch users load with
//! `safetensors.torch.load_file`): an 8-byte little-endian header length, a JSON header naming
//! each tensor's dtype, shape and byte range, then the raw little-endian data. Files are
//! validated before use and written atomically (temporary file, then rename).

use super::json::Json;
use crate::storage::CpuStorage;
use crate::{DType, Device, Error, Result, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

fn dtype_tag(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::F64 => "F64",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I64 => "I64",
    }
}

fn parse_tag(tag: &str) -> Option<DType> {
    DType::ALL.into_iter().find(|d| dtype_tag(*d) == tag)
}

/// Serialises named tensors and string metadata to safetensors bytes.
pub fn serialize(tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut header = BTreeMap::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".to_string(),
            Json::Object(metadata.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect()),
        );
    }
    let mut data = Vec::new();
    for (name, tensor) in tensors {
        let host = tensor.to_device(&Device::Cpu)?.contiguous()?;
        let bytes = match host.storage() {
            crate::storage::StorageRef::Cpu(s) => s.gather_same(&host.layout).as_bytes().to_vec(),
            crate::storage::StorageRef::Cuda(_) => unreachable!("moved to the host above"),
        };
        let entry = BTreeMap::from([
            ("dtype".to_string(), Json::String(dtype_tag(tensor.dtype()).into())),
            ("shape".to_string(), Json::Array(tensor.shape().iter().map(|&s| Json::Number(s as f64)).collect())),
            (
                "data_offsets".to_string(),
                Json::Array(vec![Json::Number(data.len() as f64), Json::Number((data.len() + bytes.len()) as f64)]),
            ),
        ]);
        if header.insert(name.clone(), Json::Object(entry)).is_some() {
            return Err(Error::invalid("safetensors", format!("tensor name `{name}` appears twice")));
        }
        data.extend_from_slice(&bytes);
    }
    let mut head = Json::Object(header).to_string().into_bytes();
    while !(8 + head.len()).is_multiple_of(8) {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + data.len());
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Writes named tensors to `path` atomically.
pub fn save(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let bytes = serialize(tensors, metadata)?;
    crate::io::write_atomically(path, &bytes).map_err(|source| Error::Io { path: path.display().to_string(), source })
}

/// A loaded checkpoint: tensors by name, and the metadata.
pub struct Checkpoint {
    /// Tensors on the CPU, by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// `__metadata__` strings.
    pub metadata: BTreeMap<String, String>,
}

/// Parses and validates safetensors bytes; `what` names the source in errors.
pub fn deserialize(what: &str, bytes: &[u8]) -> Result<Checkpoint> {
    let bad = |detail: String| Error::invalid("safetensors", format!("{what}: {detail}"));
    if bytes.len() < 8 {
        return Err(bad(format!("{} bytes is too short for a header", bytes.len())));
    }
    let head_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let data_start = 8usize
        .checked_add(head_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| bad(format!("header length {head_len} runs past the end of a {}-byte file", bytes.len())))?;
    let head = std::str::from_utf8(&bytes[8..data_start]).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let Json::Object(header) = Json::parse(head).map_err(|e| bad(format!("header is not valid JSON: {e}")))? else {
        return Err(bad("header is not a JSON object".into()));
    };
    let data = &bytes[data_start..];
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    let mut ranges = Vec::new();
    for (name, entry) in &header {
        if name == "__metadata__" {
            let Json::Object(map) = entry else { return Err(bad("__metadata__ is not an object".into())) };
            for (k, v) in map {
                let v = v.as_str().ok_or_else(|| bad(format!("metadata `{k}` is not a string")))?;
                metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        let field = |key: &str| entry.get(key).ok_or_else(|| bad(format!("tensor `{name}` has no `{key}`")));
        let tag = field("dtype")?.as_str().ok_or_else(|| bad(format!("tensor `{name}`: dtype is not a string")))?;
        let dtype = parse_tag(tag).ok_or_else(|| bad(format!("tensor `{name}`: unsupported dtype {tag}")))?;
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(Json::as_usize).collect())
            .ok_or_else(|| bad(format!("tensor `{name}`: shape is not a list of sizes")))?;
        let offsets: Vec<usize> = field("data_offsets")?
            .as_array()
            .and_then(|a| a.iter().map(Json::as_usize).collect())
            .filter(|v: &Vec<usize>| v.len() == 2)
            .ok_or_else(|| bad(format!("tensor `{name}`: data_offsets is not [begin, end]")))?;
        let (begin, end) = (offsets[0], offsets[1]);
        let numel = shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s));
        let expected = numel.and_then(|n| n.checked_mul(dtype.size_in_bytes()));
        if begin > end || end > data.len() || Some(end - begin) != expected {
            return Err(bad(format!(
                "tensor `{name}` ({tag} {shape:?}) claims bytes {begin}..{end} of a {}-byte data section",
                data.len()
            )));
        }
        ranges.push((begin, end, name.clone()));
        let storage = CpuStorage::from_bytes(dtype, &data[begin..end]);
        tensors.insert(name.clone(), Tensor::from_cpu(storage, &shape));
    }
    ranges.sort();
    let mut covered = 0;
    for (begin, end, name) in &ranges {
        if *begin != covered {
            return Err(bad(format!("tensor `{name}` starts at byte {begin}, expected {covered} (gap or overlap)")));
        }
        covered = *end;
    }
    if covered != data.len() {
        return Err(bad(format!("{} trailing bytes after the last tensor", data.len() - covered)));
    }
    Ok(Checkpoint { tensors, metadata })
}

/// Reads and validates a safetensors file.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    deserialize(&path.display().to_string(), &bytes)
}
