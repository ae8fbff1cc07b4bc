//! A run folder as one unit, and exact resumption.
//!
//! `checkpoint.safetensors` is the run's commit record: besides the model's weights (under
//! their PyTorch names, so the file stays a plain `state_dict`), its metadata holds the run's
//! settings, its whole metric history and the name of the optimizer-state file of the same
//! epoch. An epoch is saved in three atomic writes (temporary file, fsync, rename, fsync of the
//! folder): first `optimizer-NNNN.safetensors` under the epoch's own name, then the checkpoint
//! (the commit), then `history.json` (a copy of the history for people and `viz curves`).
//! Older optimizer files go only after the commit. A `kill -9` at any moment therefore leaves
//! a checkpoint whose optimizer file and history exist and belong to it: the previous epoch or
//! the new one, never a mixture. Resuming rebuilds `history.json` from the checkpoint and
//! removes what an interrupted write left behind.

use super::{DataKind, EpochSummary, Geometry, ModelKind, OptimizerKind, TrainConfig};
use crate::io::{safetensors, save_module};
use crate::nn::{BatchNormOptions, Module};
use crate::optim::{GradScaler, Optimizer};
use crate::{Error, Precision, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The checkpoint's name inside a run folder.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// Metadata keys of the run's state in a checkpoint.
const RUN_KEY: &str = "run";
const HISTORY_KEY: &str = "history";
const OPTIMIZER_KEY: &str = "optimizer_state";

/// The checkpoint of a run given as its folder or as the checkpoint file itself.
pub fn checkpoint_in(run: &Path) -> PathBuf {
    if run.is_dir() { run.join(CHECKPOINT) } else { run.to_path_buf() }
}

/// The metric history beside a checkpoint (a copy of the one inside it).
pub fn history_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_file_name("history.json")
}

/// Everything a run's outcome depends on, as recorded in its checkpoint. Resuming takes these
/// from the checkpoint and refuses a request that differs in any of them. The device, the
/// output folder, the thread count and the reporting are not among them: a run may move.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// The model's name.
    pub model: String,
    /// The data set's name.
    pub dataset: String,
    /// The data set's folder (absolute when it existed), or none for the shipped subset.
    pub data: Option<String>,
    /// Epochs in all: the learning-rate schedule spans them.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// The optimizer's name.
    pub optimizer: String,
    /// The seed of initialisation, data order, augmentation and dropout.
    pub seed: u64,
    /// Random shifts, pixels.
    pub shift: usize,
    /// Random left-right flips.
    pub flip: bool,
    /// Dropout probability.
    pub dropout: f64,
    /// Image channels.
    pub channels: usize,
    /// Image side.
    pub image_size: usize,
    /// Batch norm's momentum.
    pub bn_momentum: f64,
    /// Batch norm's eps.
    pub bn_eps: f64,
    /// Warm-up epochs.
    pub warmup: usize,
    /// The products' precision (`f32`, `bf16`, `f16`; runs saved before it existed: `f32`).
    #[serde(default = "f32_name")]
    pub precision: String,
}

fn f32_name() -> String {
    Precision::F32.name().to_string()
}

impl RunSettings {
    /// The settings `config` (already validated into `geometry`) asks for.
    pub fn of(config: &TrainConfig, geometry: Geometry) -> RunSettings {
        RunSettings {
            model: config.model.name().to_string(),
            dataset: config.dataset.name().to_string(),
            data: config.data.as_deref().map(data_path),
            epochs: config.epochs,
            batch_size: config.batch_size,
            lr: config.lr,
            optimizer: config.optimizer.name().to_string(),
            seed: config.seed,
            shift: config.shift,
            flip: config.flips(),
            dropout: config.dropout,
            channels: geometry.channels,
            image_size: geometry.size,
            bn_momentum: config.batch_norm.momentum,
            bn_eps: config.batch_norm.eps,
            warmup: config.warmup_epochs(),
            precision: config.precision.name().to_string(),
        }
    }

    /// Each setting as the command line spells it: (flag, value).
    fn flags(&self) -> Vec<(&'static str, String)> {
        vec![
            ("--model", self.model.clone()),
            ("--dataset", self.dataset.clone()),
            ("--data", self.data.clone().unwrap_or_else(|| "(the shipped subset)".into())),
            ("--epochs", self.epochs.to_string()),
            ("--batch-size", self.batch_size.to_string()),
            ("--lr", self.lr.to_string()),
            ("--optimizer", self.optimizer.clone()),
            ("--seed", self.seed.to_string()),
            ("--shift", self.shift.to_string()),
            ("--no-flip", if self.flip { "off (flips on)" } else { "on (no flips)" }.to_string()),
            ("--dropout", self.dropout.to_string()),
            ("--channels", self.channels.to_string()),
            ("--image-size", self.image_size.to_string()),
            ("--bn-momentum", self.bn_momentum.to_string()),
            ("--bn-eps", self.bn_eps.to_string()),
            ("--warmup", self.warmup.to_string()),
            ("--precision", self.precision.clone()),
        ]
    }

    /// One phrase per setting in which `requested` differs from these (the run's) settings.
    pub fn differences(&self, requested: &RunSettings) -> Vec<String> {
        self.flags()
            .into_iter()
            .zip(requested.flags())
            .filter(|((_, ours), (_, theirs))| ours != theirs)
            .map(|((flag, ours), (_, theirs))| format!("{flag} {theirs} (the run's is {ours})"))
            .collect()
    }

    /// A configuration that continues the run in `checkpoint`: these settings, the checkpoint's
    /// folder as output, and `device`.
    pub fn to_config(&self, checkpoint: &Path, device: crate::Device) -> Result<TrainConfig> {
        let dataset = DataKind::parse(&self.dataset)?;
        let folder = dataset == DataKind::Folder;
        Ok(TrainConfig {
            model: ModelKind::parse(&self.model)?,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            optimizer: OptimizerKind::parse(&self.optimizer)?,
            seed: self.seed,
            device,
            dataset,
            data: self.data.as_ref().map(PathBuf::from),
            out_dir: checkpoint.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            resume: Some(checkpoint.to_path_buf()),
            shift: self.shift,
            flip: Some(self.flip),
            dropout: self.dropout,
            channels: folder.then_some(self.channels),
            image_size: folder.then_some(self.image_size),
            batch_norm: BatchNormOptions { momentum: self.bn_momentum, eps: self.bn_eps },
            warmup: Some(self.warmup),
            report: super::Report::Silent,
            detect_anomaly: false,
            precision: self.precision.parse()?,
            cuda_graph: false,
        })
    }
}

impl TrainConfig {
    /// The configuration that continues the run in `run` (its folder or its checkpoint) on
    /// `device`, every setting taken from the checkpoint. A checkpoint written before runs
    /// recorded their settings is an error that says so.
    pub fn resuming(run: &Path, device: crate::Device) -> Result<TrainConfig> {
        let path = checkpoint_in(run);
        let saved = safetensors::load(&path)?;
        match SavedRun::read(&path, &saved)?.settings {
            Some(settings) => settings.to_config(&path, device),
            None => Err(Error::invalid(
                "resume",
                format!("{} does not record its run's settings (an older nabla wrote it)", path.display()),
            )),
        }
    }
}

/// A data folder as recorded: absolute when it exists, so a resume from elsewhere finds it.
fn data_path(dir: &Path) -> String {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).display().to_string()
}

/// The run recorded in a checkpoint written by `nabla train`.
pub struct SavedRun {
    /// Its settings (`None` for checkpoints written before they were recorded).
    pub settings: Option<RunSettings>,
    /// Every finished epoch.
    pub history: Vec<EpochSummary>,
    /// The optimizer state of the same epoch, if the run saved one.
    pub optimizer_state: Option<PathBuf>,
}

impl SavedRun {
    /// Reads the run from a loaded checkpoint (`path` locates the files beside it). Checkpoints
    /// of older versions keep their history in `history.json` and the optimizer state in
    /// `optimizer.safetensors`.
    pub fn read(path: &Path, checkpoint: &safetensors::Checkpoint) -> Result<SavedRun> {
        let what = path.display();
        let bad = |key: &str, e: serde_json::Error| Error::invalid("resume", format!("{what}: `{key}` metadata: {e}"));
        let settings = match checkpoint.metadata.get(RUN_KEY) {
            Some(text) => Some(serde_json::from_str(text).map_err(|e| bad(RUN_KEY, e))?),
            None => None,
        };
        let history = match checkpoint.metadata.get(HISTORY_KEY) {
            Some(text) => {
                let history: Vec<EpochSummary> = serde_json::from_str(text).map_err(|e| bad(HISTORY_KEY, e))?;
                check_history(&history)?;
                history
            }
            None => read_history(&history_path(path))?,
        };
        let optimizer_state = match checkpoint.metadata.get(OPTIMIZER_KEY) {
            // Only a plain file name beside the checkpoint: metadata must not point elsewhere.
            Some(name) if is_optimizer_file(name) => Some(path.with_file_name(name)),
            Some(name) => {
                return Err(Error::invalid("resume", format!("{what}: `{OPTIMIZER_KEY}` is `{name}`")));
            }
            None => Some(path.with_file_name("optimizer.safetensors")).filter(|p| p.exists()),
        };
        Ok(SavedRun { settings, history, optimizer_state })
    }
}

/// Whether `name` is an optimizer-state file name this module writes.
fn is_optimizer_file(name: &str) -> bool {
    name.strip_prefix("optimizer-")
        .and_then(|rest| rest.strip_suffix(".safetensors"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Reads a metric history written by a training run, checked by [`check_history`].
pub fn read_history(path: &Path) -> Result<Vec<EpochSummary>> {
    let text =
        std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    let history: Vec<EpochSummary> =
        serde_json::from_str(&text).map_err(|e| Error::invalid("history", format!("{}: {e}", path.display())))?;
    check_history(&history).map_err(|e| Error::invalid("history", format!("{}: {e}", path.display())))?;
    Ok(history)
}

/// The most epochs a history may hold.
pub const MAX_EPOCHS: usize = 1_000_000;

/// Checks that a history could have come from a run: epochs numbered 1, 2, 3, ..., losses and
/// seconds finite and not negative, accuracies in [0, 1]. The error names the first bad epoch.
pub fn check_history(history: &[EpochSummary]) -> Result<()> {
    if history.len() > MAX_EPOCHS {
        return Err(Error::invalid("history", format!("{} epochs (at most {MAX_EPOCHS})", history.len())));
    }
    for (i, h) in history.iter().enumerate() {
        let bad = |what: String| Err(Error::invalid("history", format!("epoch {}: {what}", h.epoch)));
        let fraction = |v: f64| (0.0..=1.0).contains(&v);
        let amount = |v: f64| v.is_finite() && v >= 0.0;
        if h.epoch != i + 1 {
            return bad(format!("is entry {} (epochs are numbered 1, 2, 3, ...)", i + 1));
        }
        if !amount(h.train_loss) || !h.val_loss.is_none_or(amount) {
            return bad(format!("a loss is not a finite number >= 0 ({}, {:?})", h.train_loss, h.val_loss));
        }
        if !fraction(h.val_accuracy) || !h.train_accuracy.is_none_or(fraction) {
            return bad(format!("an accuracy is outside [0, 1] ({}, {:?})", h.val_accuracy, h.train_accuracy));
        }
        if !amount(h.seconds) {
            return bad(format!("seconds {} is not a finite number >= 0", h.seconds));
        }
    }
    Ok(())
}

/// Saves one finished epoch as a unit (see the module's documentation). `metadata` describes
/// the model; the run's settings, history and optimizer file are added to it.
pub(crate) fn commit_epoch(
    checkpoint: &Path,
    settings: &RunSettings,
    mut metadata: BTreeMap<String, String>,
    saved: Saved,
    history: &[EpochSummary],
) -> Result<()> {
    let Saved { model, optimizer, scaler } = saved;
    let json = |what: &str, value: serde_json::Result<String>| {
        value.map_err(|e| Error::invalid("checkpoint", format!("cannot write the {what}: {e}")))
    };
    let optimizer_name = format!("optimizer-{:04}.safetensors", history.len());
    safetensors::save(
        &checkpoint.with_file_name(&optimizer_name),
        &[optimizer_state(optimizer, model), scaler.map(GradScaler::state).unwrap_or_default()].concat(),
        &BTreeMap::new(),
    )?;
    metadata.insert(RUN_KEY.into(), json("settings", serde_json::to_string(settings))?);
    metadata.insert(HISTORY_KEY.into(), json("history", serde_json::to_string(history))?);
    metadata.insert(OPTIMIZER_KEY.into(), optimizer_name.clone());
    save_module(checkpoint, model, &metadata)?;
    write_history(checkpoint, history)?;
    remove_leftovers(checkpoint, &optimizer_name);
    Ok(())
}

/// Writes `history.json` beside `checkpoint`.
pub(crate) fn write_history<T: Serialize>(checkpoint: &Path, history: &[T]) -> Result<()> {
    let text = serde_json::to_string_pretty(history)
        .map_err(|e| Error::invalid("history", format!("cannot write the history: {e}")))?;
    let path = history_path(checkpoint);
    crate::io::write_atomically(&path, text.as_bytes())
        .map_err(|source| Error::Io { path: path.display().to_string(), source })
}

/// Removes, beside `checkpoint`, the temporary files an interrupted write left (`.NAME.tmpPID`).
/// Best effort: a file that cannot be removed costs only disk space.
pub(crate) fn remove_temporary_files(checkpoint: &Path) {
    remove_files_beside(checkpoint, crate::io::is_temporary_name);
}

/// Removes the temporary files and every optimizer-state file but `keep`, the one the
/// checkpoint names.
fn remove_leftovers(checkpoint: &Path, keep: &str) {
    remove_files_beside(checkpoint, |name| {
        crate::io::is_temporary_name(name) || (is_optimizer_file(name) && name != keep)
    });
}

fn remove_files_beside(checkpoint: &Path, doomed: impl Fn(&str) -> bool) {
    let dir = checkpoint.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if doomed(&entry.file_name().to_string_lossy()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// What an epoch's commit saves besides the run's record: the model, the optimizer, and the
/// loss scaler of an f16 run (its state goes in the optimizer's file).
pub(crate) struct Saved<'a> {
    pub(crate) model: &'a dyn Module,
    pub(crate) optimizer: &'a dyn Optimizer,
    pub(crate) scaler: Option<&'a GradScaler>,
}

/// Restores a loss scaler from an optimizer file written by an f16 run.
pub fn load_scaler(path: &Path, scaler: &mut GradScaler) -> Result<()> {
    scaler.set_state(&safetensors::load(path)?.tensors.into_iter().collect())
}

fn optimizer_state(optimizer: &dyn Optimizer, model: &dyn Module) -> Vec<(String, Tensor)> {
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    optimizer.state().into_iter().filter_map(|(i, key, t)| names.get(i).map(|n| (format!("{n}.{key}"), t))).collect()
}

/// Restores an optimizer's state for `model`'s parameters from a file written by a training
/// run (`optimizer-NNNN.safetensors`: each parameter's state under `NAME.exp_avg`, ...); every
/// state tensor must match its parameter's shape.
pub fn load_optimizer(path: &Path, optimizer: &mut dyn Optimizer, model: &dyn Module) -> Result<()> {
    let saved = safetensors::load(path)?;
    for (i, (name, _)) in model.named_parameters().iter().enumerate() {
        let prefix = format!("{name}.");
        let state: BTreeMap<String, Tensor> = saved
            .tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|key| (key.to_string(), t.clone())))
            .collect();
        optimizer.set_state(i, &state)?;
    }
    Ok(())
}
