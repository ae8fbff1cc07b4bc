//! Convolutional networks: LeNet-5, an AlexNet-style network scaled to small inputs, and a
//! small ResNet for 32x32 colour images. Parameter names follow torchvision's layouts
//! (`features.0.weight`, `layer1.0.conv1.weight`, `fc.weight`).

use super::layers::prefixed;
use super::{
    Activation, AdaptiveAvgPool2d, BatchNorm2d, BatchNormOptions, Conv2d, Dropout, Flatten, Linear, MaxPool2d, Module,
    Sequential,
};
use crate::nn::Init;
use crate::{Conv2dOptions, Device, Generator, Pool2dOptions, Result, Tensor};

/// A convolutional feature extractor followed by a fully connected classifier, as torchvision
/// lays out LeNet and AlexNet (`features.0.weight`, `classifier.0.weight`).
pub struct ConvNet {
    /// The convolutional part.
    pub features: Sequential,
    /// The fully connected part.
    pub classifier: Sequential,
}

impl ConvNet {
    /// LeNet-5 for `in_channels`-channel `size` x `size` images (S = 28 for digits, 32 for
    /// CIFAR; at least 12) and `classes` outputs: conv5(6, pad 2) - maxpool - conv5(16) - maxpool
    /// - fc120 - fc84 - fc(classes), with ReLU activations.
    pub fn lenet5(
        in_channels: usize,
        size: usize,
        classes: usize,
        device: &Device,
        rng: &mut Generator,
    ) -> Result<Self> {
        let side = (size / 2).checked_sub(4).map(|s| s / 2).filter(|&s| s > 0).ok_or_else(|| {
            crate::Error::invalid("lenet5", format!("{size}x{size} images are too small (at least 12x12)"))
        })?;
        let features = Sequential::new()
            .push(Conv2d::new(in_channels, 6, 5, Conv2dOptions::new(1, 2), device, rng)?)
            .push(Activation::Relu)
            .push(MaxPool2d(Pool2dOptions::new(2)))
            .push(Conv2d::new(6, 16, 5, Conv2dOptions::default(), device, rng)?)
            .push(Activation::Relu)
            .push(MaxPool2d(Pool2dOptions::new(2)));
        let classifier = Sequential::new()
            .push(Linear::new(16 * side * side, 120, true, Init::Kaiming, device, rng)?)
            .push(Activation::Relu)
            .push(Linear::new(120, 84, true, Init::Kaiming, device, rng)?)
            .push(Activation::Relu)
            .push(Linear::new(84, classes, true, Init::Default, device, rng)?);
        Ok(ConvNet { features, classifier })
    }

    /// An AlexNet-style network scaled to small `in_channels` x `size` x `size` inputs: five
    /// convolutions (the first 5x5, the rest 3x3) with ReLU, three max-pools, then three fully
    /// connected layers with dropout. `width` scales the channel counts (64 gives AlexNet's
    /// 64-192-384-256-256; 32 halves them).
    pub fn alexnet(
        in_channels: usize,
        size: usize,
        classes: usize,
        width: usize,
        device: &Device,
        rng: &mut Generator,
    ) -> Result<Self> {
        let ch = |k: usize| (k * width / 64).max(1);
        let (c1, c2, c3, c4, c5) = (ch(64), ch(192), ch(384), ch(256), ch(256));
        let pool = || MaxPool2d(Pool2dOptions::new(2));
        let features = Sequential::new()
            .push(Conv2d::new(in_channels, c1, 5, Conv2dOptions::new(1, 2), device, rng)?)
            .push(Activation::Relu)
            .push(pool())
            .push(Conv2d::new(c1, c2, 3, Conv2dOptions::new(1, 1), device, rng)?)
            .push(Activation::Relu)
            .push(pool())
            .push(Conv2d::new(c2, c3, 3, Conv2dOptions::new(1, 1), device, rng)?)
            .push(Activation::Relu)
            .push(Conv2d::new(c3, c4, 3, Conv2dOptions::new(1, 1), device, rng)?)
            .push(Activation::Relu)
            .push(Conv2d::new(c4, c5, 3, Conv2dOptions::new(1, 1), device, rng)?)
            .push(Activation::Relu)
            .push(pool());
        let side = size / 8;
        let hidden = ch(4096).clamp(64, 1024);
        let classifier = Sequential::new()
            .push(Dropout::new(0.5, rng.next_u64())?)
            .push(Linear::new(c5 * side * side, hidden, true, Init::Kaiming, device, rng)?)
            .push(Activation::Relu)
            .push(Dropout::new(0.5, rng.next_u64())?)
            .push(Linear::new(hidden, hidden, true, Init::Kaiming, device, rng)?)
            .push(Activation::Relu)
            .push(Linear::new(hidden, classes, true, Init::Default, device, rng)?);
        Ok(ConvNet { features, classifier })
    }
}

impl Module for ConvNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.classifier.forward(&self.features.forward(x)?.flatten(1, -1)?)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = prefixed("features", self.features.named_parameters());
        out.extend(prefixed("classifier", self.classifier.named_parameters()));
        out
    }

    fn feature_maps(&self, x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let maps = self.features.forward_each(x)?;
        Ok(prefixed("features", maps).into_iter().filter(|(_, t)| t.rank() == 4).collect())
    }

    fn set_training(&mut self, training: bool) {
        self.features.set_training(training);
        self.classifier.set_training(training);
    }

    fn reseed(&mut self, stream: u64) {
        self.features.reseed(stream);
        self.classifier.reseed(stream);
    }
}

/// ResNet's basic block: two 3x3 convolutions with batch norm, added to a shortcut (a 1x1
/// convolution with batch norm where the shape changes), then ReLU.
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<Sequential>,
}

impl BasicBlock {
    fn new(
        input: usize,
        output: usize,
        stride: usize,
        bn: BatchNormOptions,
        device: &Device,
        rng: &mut Generator,
    ) -> Result<Self> {
        let mut conv1 = Conv2d::new(input, output, 3, Conv2dOptions::new(stride, 1), device, rng)?;
        let mut conv2 = Conv2d::new(output, output, 3, Conv2dOptions::new(1, 1), device, rng)?;
        conv1.bias = None;
        conv2.bias = None;
        let downsample = if stride != 1 || input != output {
            let mut proj = Conv2d::new(input, output, 1, Conv2dOptions::new(stride, 0), device, rng)?;
            proj.bias = None;
            Some(Sequential::new().push(proj).push(BatchNorm2d::with_options(output, bn, device)?))
        } else {
            None
        };
        Ok(BasicBlock {
            conv1,
            bn1: BatchNorm2d::with_options(output, bn, device)?,
            conv2,
            bn2: BatchNorm2d::with_options(output, bn, device)?,
            downsample,
        })
    }
}

impl Module for BasicBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let h = self.bn2.forward(&self.conv2.forward(&h)?)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        h.add(&shortcut)?.relu()
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = prefixed("conv1", self.conv1.named_parameters());
        out.extend(prefixed("bn1", self.bn1.named_parameters()));
        out.extend(prefixed("conv2", self.conv2.named_parameters()));
        out.extend(prefixed("bn2", self.bn2.named_parameters()));
        if let Some(d) = &self.downsample {
            out.extend(prefixed("downsample", d.named_parameters()));
        }
        out
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = prefixed("bn1", self.bn1.named_buffers());
        out.extend(prefixed("bn2", self.bn2.named_buffers()));
        if let Some(d) = &self.downsample {
            out.extend(prefixed("downsample", d.named_buffers()));
        }
        out
    }

    fn set_training(&mut self, training: bool) {
        self.bn1.set_training(training);
        self.bn2.set_training(training);
        if let Some(d) = &mut self.downsample {
            d.set_training(training);
        }
    }
}

/// A small ResNet for 32x32 (or 28x28) images: a 3x3 stem, three stages of two basic blocks
/// (widths w, 2w, 4w; the last two stages halve the resolution), global average pooling and
/// a linear classifier.
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Sequential>,
    pool: AdaptiveAvgPool2d,
    fc: Linear,
}

impl ResNet {
    /// A ResNet with base width `width` (16 gives the classic CIFAR ResNet-14 layout).
    pub fn new(in_channels: usize, classes: usize, width: usize, device: &Device, rng: &mut Generator) -> Result<Self> {
        Self::with_batch_norm(in_channels, classes, width, BatchNormOptions::default(), device, rng)
    }

    /// [`ResNet::new`] with batch-norm layers of the given momentum and eps.
    pub fn with_batch_norm(
        in_channels: usize,
        classes: usize,
        width: usize,
        bn: BatchNormOptions,
        device: &Device,
        rng: &mut Generator,
    ) -> Result<Self> {
        let mut conv1 = Conv2d::new(in_channels, width, 3, Conv2dOptions::new(1, 1), device, rng)?;
        conv1.bias = None;
        let mut stages = Vec::new();
        let mut channels = width;
        for (i, out) in [width, 2 * width, 4 * width].into_iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            let stage = Sequential::new()
                .push(BasicBlock::new(channels, out, stride, bn, device, rng)?)
                .push(BasicBlock::new(out, out, 1, bn, device, rng)?);
            stages.push(stage);
            channels = out;
        }
        Ok(ResNet {
            conv1,
            bn1: BatchNorm2d::with_options(width, bn, device)?,
            stages,
            pool: AdaptiveAvgPool2d((1, 1)),
            fc: Linear::new(channels, classes, true, Init::Default, device, rng)?,
        })
    }
}

impl Module for ResNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        for stage in &self.stages {
            h = stage.forward(&h)?;
        }
        self.fc.forward(&Flatten.forward(&self.pool.forward(&h)?)?)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = prefixed("conv1", self.conv1.named_parameters());
        out.extend(prefixed("bn1", self.bn1.named_parameters()));
        for (i, stage) in self.stages.iter().enumerate() {
            out.extend(prefixed(&format!("layer{}", i + 1), stage.named_parameters()));
        }
        out.extend(prefixed("fc", self.fc.named_parameters()));
        out
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = prefixed("bn1", self.bn1.named_buffers());
        for (i, stage) in self.stages.iter().enumerate() {
            out.extend(prefixed(&format!("layer{}", i + 1), stage.named_buffers()));
        }
        out
    }

    fn feature_maps(&self, x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let mut h = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let mut out = vec![("conv1".to_string(), h.clone())];
        for (i, stage) in self.stages.iter().enumerate() {
            h = stage.forward(&h)?;
            out.push((format!("layer{}", i + 1), h.clone()));
        }
        Ok(out)
    }

    fn set_training(&mut self, training: bool) {
        self.bn1.set_training(training);
        self.stages.iter_mut().for_each(|s| s.set_training(training));
    }
}
