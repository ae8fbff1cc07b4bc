//! Pictures of what a network learned and how training went: first-layer filters, feature
//! maps, loss/accuracy curves and confusion-matrix heat-maps, as images ready for PNG.

use crate::io::image::Image;
use crate::metrics::ConfusionMatrix;
use crate::train::EpochSummary;
use crate::{Error, Result, Tensor};

/// Tiles equally sized square-ish grey or RGB tiles into a grid with 2-pixel gutters.
fn grid(tiles: &[Image], columns: usize, background: u8) -> Image {
    let (tw, th, c) = (tiles[0].width, tiles[0].height, tiles[0].channels);
    let columns = columns.clamp(1, tiles.len());
    let rows = tiles.len().div_ceil(columns);
    let gap = 2;
    let (width, height) = (columns * (tw + gap) + gap, rows * (th + gap) + gap);
    let mut data = vec![background; width * height * c];
    for (i, tile) in tiles.iter().enumerate() {
        let (x0, y0) = (gap + (i % columns) * (tw + gap), gap + (i / columns) * (th + gap));
        for y in 0..th {
            let src = &tile.data[y * tw * c..(y + 1) * tw * c];
            let at = ((y0 + y) * width + x0) * c;
            data[at..at + tw * c].copy_from_slice(src);
        }
    }
    Image { width, height, channels: c, data }
}

/// One `[C, H, W]` or `[H, W]` map stretched to 0-255 (its own min to max) and enlarged
/// `scale` times with square pixels.
fn normalised(map: &Tensor, scale: usize) -> Result<Image> {
    let values = map.to_vec::<f32>()?;
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let stretched =
        Tensor::from_vec(values.iter().map(|v| (v - lo) / span).collect(), map.shape(), &crate::Device::Cpu)?;
    let small = Image::from_tensor(&stretched)?;
    let (w, h, c) = (small.width * scale, small.height * scale, small.channels);
    let mut data = vec![0u8; w * h * c];
    for y in 0..h {
        for x in 0..w {
            let src = ((y / scale) * small.width + x / scale) * c;
            data[(y * w + x) * c..(y * w + x + 1) * c].copy_from_slice(&small.data[src..src + c]);
        }
    }
    Ok(Image { width: w, height: h, channels: c, data })
}

/// The filters of a `[O, C, k, k]` weight as a grid: RGB for three input channels, else the
/// mean over input channels in grey; each filter stretched to its own range.
pub fn filter_grid(weight: &Tensor) -> Result<Image> {
    let [o, c, _, _] = weight.shape() else {
        return Err(Error::shape("viz", format!("filters must be [O, C, k, k], got {:?}", weight.shape())));
    };
    let (o, c) = (*o, *c);
    let scale = (64 / weight.shape()[2].max(1)).clamp(4, 16);
    let mut tiles = Vec::with_capacity(o);
    for i in 0..o {
        let filter = weight.narrow(0, i, 1)?.squeeze(0)?;
        let shown = if c == 3 { filter } else { filter.mean(&[0], false)? };
        tiles.push(normalised(&shown, scale)?);
    }
    Ok(grid(&tiles, (o as f64).sqrt().ceil() as usize, 255))
}

/// The channels of a `[C, H, W]` activation as a grid of grey maps.
pub fn feature_grid(maps: &Tensor) -> Result<Image> {
    let [c, h, _] = maps.shape() else {
        return Err(Error::shape("viz", format!("feature maps must be [C, H, W], got {:?}", maps.shape())));
    };
    let scale = (96 / (*h).max(1)).clamp(1, 8);
    let tiles = (0..*c).map(|i| normalised(&maps.narrow(0, i, 1)?.squeeze(0)?, scale)).collect::<Result<Vec<_>>>()?;
    Ok(grid(&tiles, (*c as f64).sqrt().ceil() as usize, 255))
}

/// A canvas for line charts.
struct Canvas {
    image: Image,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Canvas { image: Image { width, height, channels: 3, data: vec![255; width * height * 3] } }
    }

    fn dot(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.image.width && (y as usize) < self.image.height {
            let at = (y as usize * self.image.width + x as usize) * 3;
            self.image.data[at..at + 3].copy_from_slice(&rgb);
        }
    }

    /// A 2-pixel-wide segment (Bresenham).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), rgb: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.dot(x, y, rgb);
            self.dot(x, y + 1, rgb);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// A panel at `(left, top)` of `w` x `h` with axes, plotting `values` scaled to [lo, hi].
    fn plot(&mut self, (left, top, w, h): (i64, i64, i64, i64), values: &[f64], (lo, hi): (f64, f64), rgb: [u8; 3]) {
        let grey = [160, 160, 160];
        self.line((left, top), (left, top + h), grey);
        self.line((left, top + h), (left + w, top + h), grey);
        for i in 1..4 {
            let y = top + h * i / 4;
            for x in (left..left + w).step_by(6) {
                self.dot(x, y, [225, 225, 225]);
            }
        }
        let span = if hi > lo { hi - lo } else { 1.0 };
        let point = |i: usize, v: f64| {
            let x = left + if values.len() > 1 { w * i as i64 / (values.len() as i64 - 1) } else { w / 2 };
            (x, top + h - ((v - lo) / span * h as f64).round() as i64)
        };
        for i in 1..values.len() {
            self.line(point(i - 1, values[i - 1]), point(i, values[i]), rgb);
        }
        if values.len() == 1 {
            let (x, y) = point(0, values[0]);
            self.line((x - 2, y), (x + 2, y), rgb);
        }
    }
}

/// Training loss per epoch (left panel, red, from 0 to its maximum) and validation accuracy
/// (right panel, blue, from its minimum to 100%), one point per epoch.
pub fn curves(history: &[EpochSummary]) -> Result<Image> {
    if history.is_empty() {
        return Err(Error::invalid("viz", "the history has no epochs"));
    }
    let loss: Vec<f64> = history.iter().map(|h| h.train_loss).collect();
    let acc: Vec<f64> = history.iter().map(|h| h.val_accuracy).collect();
    let mut canvas = Canvas::new(640, 280);
    let max_loss = loss.iter().copied().fold(0.0, f64::max);
    canvas.plot((30, 20, 270, 230), &loss, (0.0, max_loss), [200, 30, 30]);
    let min_acc = acc.iter().copied().fold(1.0, f64::min).min(0.9);
    canvas.plot((340, 20, 270, 230), &acc, (min_acc, 1.0), [30, 60, 200]);
    Ok(canvas.image)
}

/// The confusion matrix as a heat-map: each cell shaded by its share of the true class's
/// examples (white 0% to dark blue 100%), 24 pixels a cell.
pub fn confusion_heatmap(cm: &ConfusionMatrix) -> Image {
    let k = cm.counts.len();
    let cell = 24;
    let side = k * cell;
    let mut data = vec![255u8; side * side * 3];
    for (t, row) in cm.counts.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (p, &count) in row.iter().enumerate() {
            let share = if total == 0 { 0.0 } else { count as f64 / total as f64 };
            let shade = |full: f64| (255.0 - share * (255.0 - full)).round() as u8;
            let rgb = [shade(8.0), shade(48.0), shade(107.0)];
            for y in t * cell + 1..(t + 1) * cell {
                for x in p * cell + 1..(p + 1) * cell {
                    data[(y * side + x) * 3..(y * side + x) * 3 + 3].copy_from_slice(&rgb);
                }
            }
        }
    }
    Image { width: side, height: side, channels: 3, data }
}
