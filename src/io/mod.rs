//! Files: safetensors checkpoints, images, and loading checkpoints into modules.

pub mod image;
pub mod safetensors;

use crate::nn::Module;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// A module's parameters and buffers (its state dict) under their dotted names.
pub fn state_dict(module: &dyn Module) -> Vec<(String, crate::Tensor)> {
    let mut all = module.named_parameters();
    all.extend(module.named_buffers());
    all
}

/// Saves a module's parameters and buffers under their dotted names, with metadata, atomically.
pub fn save_module(path: &Path, module: &dyn Module, metadata: &BTreeMap<String, String>) -> Result<()> {
    safetensors::save(path, &state_dict(module), metadata)
}

/// Whether a state-dict entry is batch norm's `num_batches_tracked`, which PyTorch saves and
/// nabla writes but never needs: loading ignores it whether present or not.
fn is_step_counter(name: &str) -> bool {
    name.rsplit('.').next() == Some(crate::nn::NUM_BATCHES_TRACKED)
}

/// Copies a checkpoint's tensors into a module's parameters and buffers (in place, on their device).
/// Every parameter must be present with its shape; extra tensors are an error too, so a
/// checkpoint of another architecture is caught. Batch norm's `num_batches_tracked` is ignored.
pub fn load_into_module(checkpoint: &safetensors::Checkpoint, module: &dyn Module) -> Result<()> {
    let params: Vec<(String, crate::Tensor)> =
        state_dict(module).into_iter().filter(|(name, _)| !is_step_counter(name)).collect();
    for (name, param) in &params {
        let saved = checkpoint
            .tensors
            .get(name)
            .ok_or_else(|| Error::invalid("load", format!("checkpoint has no tensor `{name}`")))?;
        if saved.shape() != param.shape() {
            return Err(Error::shape(
                "load",
                format!("`{name}` is {:?} in the checkpoint but {:?} in the model", saved.shape(), param.shape()),
            ));
        }
    }
    if let Some(extra) = checkpoint.tensors.keys().find(|k| !is_step_counter(k) && !params.iter().any(|(n, _)| n == *k))
    {
        return Err(Error::invalid("load", format!("checkpoint tensor `{extra}` is not a parameter of this model")));
    }
    for (name, param) in &params {
        let saved = &checkpoint.tensors[name];
        let saved = if saved.dtype() == param.dtype() { saved.clone() } else { saved.to_dtype(param.dtype())? };
        param.copy_(&saved)?;
    }
    Ok(())
}

/// The largest data file (MNIST, CIFAR-10, CSV, text) nabla reads: 4 GiB.
pub const MAX_DATA_FILE: u64 = 4 << 30;

/// The largest image file nabla reads: 256 MiB.
pub const MAX_IMAGE_FILE: u64 = 256 << 20;

/// The bytes of the file at `path`, refusing more than `limit` bytes (checked against the
/// file's length first, and while reading, so a device like `/dev/zero` cannot fill memory).
pub fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let io = |source| Error::Io { path: path.display().to_string(), source };
    let too_big = || Error::invalid("read", format!("{} is larger than the limit of {limit} bytes", path.display()));
    let file = std::fs::File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.len() > limit {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(bytes)
}

/// [`read_file`] as UTF-8 text.
pub fn read_text_file(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_file(path, limit)?)
        .map_err(|e| Error::invalid("read", format!("{} is not UTF-8 text: {e}", path.display())))
}

/// Whether `name` is a temporary file of [`write_atomically`] (`.NAME.tmpPID`), which only an
/// interrupted write leaves behind.
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.')
        && name.rsplit_once(".tmp").is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Writes `bytes` to `path` through a temporary file, an fsync and a rename (then an fsync of
/// the folder), so readers never see a partial file and a crash leaves the old or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the folder's entry is on disk; not every file system lets
        // a folder be opened for syncing, which only weakens durability, not atomicity.
        if let Ok(folder) = std::fs::File::open(dir) {
            let _ = folder.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
