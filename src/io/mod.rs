//! Files: safetensors checkpoints, JSON, and loading checkpoints into modules.

pub mod image;
pub mod json;
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

/// Copies a checkpoint's tensors into a module's parameters and buffers (in place, on their device).
/// Every parameter must be present with its shape; extra tensors are an error too, so a
/// checkpoint of another architecture is caught.
pub fn load_into_module(checkpoint: &safetensors::Checkpoint, module: &dyn Module) -> Result<()> {
    let params = state_dict(module);
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
    if let Some(extra) = checkpoint.tensors.keys().find(|k| !params.iter().any(|(n, _)| n == *k)) {
        return Err(Error::invalid("load", format!("checkpoint tensor `{extra}` is not a parameter of this model")));
    }
    for (name, param) in &params {
        param.copy_(&checkpoint.tensors[name])?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see a
/// partial file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
