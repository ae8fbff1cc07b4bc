//! Data: datasets, a batching loader with seeded shuffling, the MNIST IDX reader, synthetic
//! sets for tests and demos, and a CSV loader.

pub mod augment;
pub mod cifar;
pub mod csv;
pub mod mnist;
pub mod synthetic;
pub mod text;

use crate::{DType, Device, Error, Generator, Result, Tensor};

/// A labelled set of examples held in memory: features `[N, ...]` and targets `[N, ...]`.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Inputs, one row per example.
    pub features: Tensor,
    /// Targets: i64 class labels `[N]`, or float values for regression.
    pub targets: Tensor,
}

impl Dataset {
    /// Pairs features and targets, which must have the same number of rows.
    pub fn new(features: Tensor, targets: Tensor) -> Result<Self> {
        if features.rank() == 0 || targets.rank() == 0 || features.shape()[0] != targets.shape()[0] {
            return Err(Error::shape(
                "dataset",
                format!(
                    "features {:?} and targets {:?} need the same number of rows",
                    features.shape(),
                    targets.shape()
                ),
            ));
        }
        Ok(Dataset { features, targets })
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.features.shape()[0]
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Result<Dataset> {
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_vec(idx, &[indices.len()], &self.features.device())?;
        Ok(Dataset { features: self.features.index_select(0, &idx)?, targets: self.targets.index_select(0, &idx)? })
    }

    /// Splits off the last `fraction` of the examples (e.g. 0.1 for a validation split).
    pub fn split(&self, fraction: f64) -> Result<(Dataset, Dataset)> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(Error::invalid("split", format!("fraction {fraction} is not in [0, 1]")));
        }
        let n = self.len();
        let tail = ((n as f64) * fraction).round() as usize;
        let head = n - tail;
        let part = |start, len| -> Result<Dataset> {
            Ok(Dataset { features: self.features.narrow(0, start, len)?, targets: self.targets.narrow(0, start, len)? })
        };
        Ok((part(0, head)?, part(head, tail)?))
    }

    /// The same examples on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Dataset> {
        Ok(Dataset { features: self.features.to_device(device)?, targets: self.targets.to_device(device)? })
    }
}

/// Iterates a dataset in mini-batches, optionally shuffled with a seeded generator (a new
/// order each epoch, the same orders for the same seed) and dropping the last short batch.
pub struct DataLoader {
    data: Dataset,
    batch_size: usize,
    shuffle: Option<Generator>,
    drop_last: bool,
}

impl DataLoader {
    /// A loader over `data` in batches of `batch_size`.
    pub fn new(data: Dataset, batch_size: usize) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::invalid("data_loader", "batch size must be positive"));
        }
        Ok(DataLoader { data, batch_size, shuffle: None, drop_last: false })
    }

    /// Shuffles before every epoch with a generator seeded by `seed`.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(Generator::new(seed));
        self
    }

    /// Drops the last batch when it is short.
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last { self.data.len() / self.batch_size } else { self.data.len().div_ceil(self.batch_size) }
    }

    /// The underlying dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.data
    }

    /// One epoch of batches (the shuffle advances the generator).
    pub fn epoch(&mut self) -> Result<Vec<Dataset>> {
        let n = self.data.len();
        let mut order: Vec<usize> = (0..n).collect();
        if let Some(rng) = &mut self.shuffle {
            rng.shuffle(&mut order);
        }
        let mut batches = Vec::with_capacity(self.batches_per_epoch());
        for chunk in order.chunks(self.batch_size) {
            if self.drop_last && chunk.len() < self.batch_size {
                break;
            }
            batches.push(match &self.shuffle {
                Some(_) => self.data.select(chunk)?,
                None => Dataset {
                    features: self.data.features.narrow(0, chunk[0], chunk.len())?,
                    targets: self.data.targets.narrow(0, chunk[0], chunk.len())?,
                },
            });
        }
        Ok(batches)
    }
}

/// Converts u8 pixels to f32 in [0, 1].
pub(crate) fn pixels_to_f32(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&p| p as f32 / 255.0).collect()
}

/// The f32 dtype features are delivered in.
pub const FEATURE_DTYPE: DType = DType::F32;
