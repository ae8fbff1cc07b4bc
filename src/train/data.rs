//! The data sets `nabla train` knows: MNIST, CIFAR-10 and folders of your own images, with
//! their image geometry, class names and splits.

use crate::data::augment::random_crop_flip;
use crate::data::{Dataset, mnist};
use crate::{Device, Error, Generator, Result, Tensor};
use std::path::Path;

/// Which data set to train on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// MNIST digits, 1x28x28 (the shipped subset unless a folder is given).
    Mnist,
    /// CIFAR-10 colour images, 3x32x32, from a folder of the binary files.
    Cifar10,
    /// Your own images: one sub-folder per class of PNG/JPEG files, resized to
    /// `channels` x `size` x `size` (3 x 32 x 32 unless told), split after a shuffle by the run's
    /// seed into 80% train, 10% validation, 10% test.
    Folder,
}

/// Image channels and side length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Width and height in pixels.
    pub size: usize,
}

impl Geometry {
    /// Pixels per example, `channels * size * size`.
    pub fn pixels(self) -> usize {
        self.channels * self.size * self.size
    }
}

/// The CIFAR-10 classes, in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// The three splits of a data set, and its classes.
pub struct Splits {
    /// Training examples, on the host.
    pub train: Dataset,
    /// Validation examples, on the device.
    pub val: Dataset,
    /// Test examples, on the device.
    pub test: Dataset,
    /// The class names, in label order.
    pub class_names: Vec<String>,
}

impl Splits {
    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.class_names.len()
    }
}

/// The fewest images a folder data set may have: one test, one validation and eight training
/// images (its 80/10/10 split).
pub const MIN_FOLDER_IMAGES: usize = 10;

impl DataKind {
    /// Every data set, in the order `nabla help` lists them.
    pub const ALL: [DataKind; 3] = [DataKind::Mnist, DataKind::Cifar10, DataKind::Folder];

    /// Parses `mnist`, `cifar10` or `folder`.
    pub fn parse(name: &str) -> Result<Self> {
        DataKind::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| Error::invalid("train", format!("unknown dataset `{name}` (mnist, cifar10, folder)")))
    }

    /// The name used on the command line and in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            DataKind::Mnist => "mnist",
            DataKind::Cifar10 => "cifar10",
            DataKind::Folder => "folder",
        }
    }

    /// The images' geometry: fixed for MNIST (1x28x28) and CIFAR-10 (3x32x32); for folders the
    /// requested channels (default 3) and size (default 32). Asking MNIST or CIFAR-10 for
    /// another geometry is an error.
    pub fn geometry(self, channels: Option<usize>, size: Option<usize>) -> Result<Geometry> {
        let fixed = match self {
            DataKind::Mnist => Some(Geometry { channels: 1, size: 28 }),
            DataKind::Cifar10 => Some(Geometry { channels: 3, size: 32 }),
            DataKind::Folder => None,
        };
        match fixed {
            Some(g) => {
                if channels.is_some_and(|c| c != g.channels) || size.is_some_and(|s| s != g.size) {
                    return Err(Error::invalid(
                        "train",
                        format!(
                            "{} images are {}x{}x{}: --channels and --image-size apply to folder data sets",
                            self.name(),
                            g.channels,
                            g.size,
                            g.size
                        ),
                    ));
                }
                Ok(g)
            }
            None => {
                let (channels, size) = (channels.unwrap_or(3), size.unwrap_or(32));
                if channels != 1 && channels != 3 {
                    return Err(Error::invalid("train", format!("--channels must be 1 or 3, got {channels}")));
                }
                if !(8..=512).contains(&size) {
                    return Err(Error::invalid("train", format!("--image-size must be in 8..=512, got {size}")));
                }
                Ok(Geometry { channels, size })
            }
        }
    }

    /// Whether left-right flips suit the data by default: natural images yes, digits no.
    pub fn flips_by_default(self) -> bool {
        self != DataKind::Mnist
    }

    /// Train (on the host), validation (the training part's last 10%) and test splits, the
    /// evaluation splits on `device`. A folder is shuffled by `seed` before it is cut.
    pub fn splits(self, dir: Option<&Path>, geometry: Geometry, seed: u64, device: &Device) -> Result<Splits> {
        let (train, test, class_names) = match (self, dir) {
            (DataKind::Folder, Some(dir)) => {
                let (all, names) =
                    crate::io::image::load_image_folder(dir, geometry.size, geometry.channels, &Device::Cpu)?;
                if all.len() < MIN_FOLDER_IMAGES {
                    return Err(Error::invalid(
                        "train",
                        format!(
                            "{}: {} images in all; a folder data set needs at least {MIN_FOLDER_IMAGES} \
                             (8 to train on, 1 to validate, 1 to test)",
                            dir.display(),
                            all.len()
                        ),
                    ));
                }
                // Folders are read class by class: shuffle (by the run's seed) before cutting.
                let mut order: Vec<usize> = (0..all.len()).collect();
                Generator::new(seed).shuffle(&mut order);
                let (rest, test) = all.select(&order)?.split(0.1)?;
                (rest, test, names)
            }
            (DataKind::Folder, None) => {
                return Err(Error::invalid("train", "folder needs --data DIR (one sub-folder per class)"));
            }
            (DataKind::Mnist, dir) => {
                let (train, test) = match dir {
                    Some(dir) => (mnist::load(dir, "train", &Device::Cpu)?, mnist::load(dir, "t10k", &Device::Cpu)?),
                    None => (mnist::shipped("train", &Device::Cpu)?, mnist::shipped("t10k", &Device::Cpu)?),
                };
                (train, test, (0..10).map(|d| d.to_string()).collect())
            }
            (DataKind::Cifar10, Some(dir)) => {
                let (train, test) = crate::data::cifar::load_dir(dir, &Device::Cpu)?;
                (train, test, CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect())
            }
            (DataKind::Cifar10, None) => {
                return Err(Error::invalid("train", "cifar10 needs --data DIR (the binary version's folder)"));
            }
        };
        let (train, val) = train.split(0.1)?;
        Ok(Splits { train, val: val.to_device(device)?, test: test.to_device(device)?, class_names })
    }

    /// Random shifts of up to `shift` pixels and, with `flip`, left-right flips. On the host,
    /// seeded.
    pub(crate) fn augment(
        geometry: Geometry,
        batch: &Tensor,
        shift: usize,
        flip: bool,
        rng: &mut Generator,
    ) -> Result<Tensor> {
        if shift == 0 && !flip {
            return Ok(batch.clone());
        }
        let Geometry { channels: c, size: s } = geometry;
        let images = batch.reshape(&[batch.shape()[0], c, s, s])?;
        random_crop_flip(&images, shift, flip, rng)?.reshape(batch.shape())
    }
}
