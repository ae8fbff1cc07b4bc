//! Images: PNG and JPEG decoding to 8-bit grey or RGB, PNG encoding (written atomically),
//! bilinear resizing, and conversion to and from `[C, H, W]` tensors in [0, 1].

use crate::{Device, Error, Result, Tensor};
use std::path::Path;

/// An 8-bit image, row-major, channels interleaved (1 = grey, 3 = RGB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// 1 or 3.
    pub channels: usize,
    /// `height * width * channels` bytes.
    pub data: Vec<u8>,
}

fn bad(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::invalid("image", format!("{what}: {detail}"))
}

/// The most pixels an image may claim in its header before anything is decoded: 2^26 (a
/// 8192 x 8192 picture), or `NABLA_MAX_IMAGE_PIXELS`. A few bytes of header can claim billions
/// of pixels; this turns such a file into an error instead of an allocation the machine cannot
/// hold.
pub fn max_pixels() -> u64 {
    std::env::var("NABLA_MAX_IMAGE_PIXELS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(1 << 26)
}

/// Refuses a header's `width` x `height` over [`max_pixels`].
fn check_size(what: &str, width: u64, height: u64) -> Result<()> {
    let (pixels, limit) = (width.saturating_mul(height), max_pixels());
    if pixels > limit {
        return Err(bad(
            what,
            format!("{width}x{height} = {pixels} pixels exceeds the limit of {limit} (NABLA_MAX_IMAGE_PIXELS)"),
        ));
    }
    Ok(())
}

impl Image {
    /// Decodes PNG or JPEG bytes (recognised by their signature); alpha is dropped, palettes
    /// and 16-bit samples are reduced to 8-bit grey or RGB.
    pub fn decode(what: &str, bytes: &[u8]) -> Result<Image> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Self::decode_png(what, bytes)
        } else if bytes.starts_with(&[0xff, 0xd8]) {
            Self::decode_jpeg(what, bytes)
        } else {
            Err(bad(what, "not a PNG or JPEG file"))
        }
    }

    fn decode_png(what: &str, bytes: &[u8]) -> Result<Image> {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().map_err(|e| bad(what, e))?;
        check_size(what, reader.info().width as u64, reader.info().height as u64)?;
        let size = reader.output_buffer_size().ok_or_else(|| bad(what, "image too large"))?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).map_err(|e| bad(what, e))?;
        let (w, h) = (info.width as usize, info.height as usize);
        let from = match info.color_type {
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Indexed => return Err(bad(what, "palette not expanded")),
        };
        let keep = if from <= 2 { 1 } else { 3 };
        let data = buf[..w * h * from].chunks(from).flat_map(|px| px[..keep].to_vec()).collect();
        Ok(Image { width: w, height: h, channels: keep, data })
    }

    fn decode_jpeg(what: &str, bytes: &[u8]) -> Result<Image> {
        let mut decoder = jpeg_decoder::Decoder::new(bytes);
        decoder.read_info().map_err(|e| bad(what, e))?;
        let header = decoder.info().ok_or_else(|| bad(what, "no image header"))?;
        check_size(what, header.width as u64, header.height as u64)?;
        let limit = usize::try_from(max_pixels().saturating_mul(4)).unwrap_or(usize::MAX);
        decoder.set_max_decoding_buffer_size(limit);
        let pixels = decoder.decode().map_err(|e| bad(what, e))?;
        let info = decoder.info().ok_or_else(|| bad(what, "no image header"))?;
        let (w, h) = (info.width as usize, info.height as usize);
        let (channels, data) = match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => (1, pixels),
            jpeg_decoder::PixelFormat::L16 => (1, pixels.chunks(2).map(|p| p[0]).collect()),
            jpeg_decoder::PixelFormat::RGB24 => (3, pixels),
            jpeg_decoder::PixelFormat::CMYK32 => (
                3,
                pixels
                    .chunks(4)
                    .flat_map(|p| {
                        // The decoder gives ink amounts (0 = none, Adobe's inversion already
                        // undone), as Pillow reads them: each colour is what neither its ink
                        // nor the black takes away.
                        let paper = 255 - p[3] as u32;
                        [0, 1, 2].map(|i| ((255 - p[i] as u32) * paper / 255) as u8)
                    })
                    .collect(),
            ),
        };
        Ok(Image { width: w, height: h, channels, data })
    }

    /// Reads and decodes an image file.
    pub fn load(path: &Path) -> Result<Image> {
        let bytes = crate::io::read_file(path, crate::io::MAX_IMAGE_FILE)?;
        Image::decode(&path.display().to_string(), &bytes)
    }

    /// Encodes as PNG.
    pub fn encode_png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            encoder.set_color(if self.channels == 1 { png::ColorType::Grayscale } else { png::ColorType::Rgb });
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().map_err(|e| bad("png", e))?;
            writer.write_image_data(&self.data).map_err(|e| bad("png", e))?;
        }
        Ok(out)
    }

    /// Writes a PNG file atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let bytes = self.encode_png()?;
        crate::io::write_atomically(path, &bytes)
            .map_err(|source| Error::Io { path: path.display().to_string(), source })
    }

    /// `[C, H, W]` f32 in [0, 1] on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        self.check("to_tensor")?;
        let (h, w, c) = (self.height, self.width, self.channels);
        let mut planar = vec![0f32; c * h * w];
        for (i, &v) in self.data.iter().enumerate() {
            let (pixel, ch) = (i / c, i % c);
            planar[ch * h * w + pixel] = v as f32 / 255.0;
        }
        Tensor::from_vec(planar, &[c, h, w], device)
    }

    /// An image from a `[C, H, W]` (C = 1 or 3) or `[H, W]` tensor, values clamped to [0, 1].
    pub fn from_tensor(t: &Tensor) -> Result<Image> {
        let (c, h, w) = match t.shape() {
            [h, w] => (1, *h, *w),
            [c, h, w] if *c == 1 || *c == 3 => (*c, *h, *w),
            other => return Err(Error::shape("image", format!("cannot show a tensor of shape {other:?} as an image"))),
        };
        let planar = t.to_vec::<f32>()?;
        let mut data = vec![0u8; c * h * w];
        for ch in 0..c {
            for p in 0..h * w {
                data[p * c + ch] = (planar[ch * h * w + p].clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
        Ok(Image { width: w, height: h, channels: c, data })
    }

    /// Bilinear resize to `width` x `height` (pixel centres aligned, as PIL and torchvision do).
    /// An empty image, or an empty or oversized target, is an error.
    pub fn resize(&self, width: usize, height: usize) -> Result<Image> {
        self.check("resize")?;
        if width == 0 || height == 0 {
            return Err(bad("resize", format!("cannot resize to {width}x{height}")));
        }
        check_size("resize", width as u64, height as u64)?;
        let c = self.channels;
        let mut data = vec![0u8; width * height * c];
        let sample = |src: usize, dst: usize, i: usize| -> (usize, usize, f32) {
            let pos = ((i as f32 + 0.5) * src as f32 / dst as f32 - 0.5).max(0.0);
            let lo = (pos.floor() as usize).min(src - 1);
            (lo, (lo + 1).min(src - 1), pos - lo as f32)
        };
        for y in 0..height {
            let (y0, y1, fy) = sample(self.height, height, y);
            for x in 0..width {
                let (x0, x1, fx) = sample(self.width, width, x);
                for ch in 0..c {
                    let at = |yy: usize, xx: usize| self.data[(yy * self.width + xx) * c + ch] as f32;
                    let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                    let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                    data[(y * width + x) * c + ch] = (top * (1.0 - fy) + bottom * fy).round() as u8;
                }
            }
        }
        Ok(Image { width, height, channels: c, data })
    }

    /// Converts to `channels` (1: luminance, 3: grey repeated).
    pub fn with_channels(&self, channels: usize) -> Result<Image> {
        self.check("with_channels")?;
        if channels != 1 && channels != 3 {
            return Err(bad("with_channels", format!("{channels} channels: images have 1 (grey) or 3 (RGB)")));
        }
        if channels == self.channels {
            return Ok(self.clone());
        }
        let data = if channels == 1 {
            self.data
                .chunks(3)
                .map(|p| (0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32).round() as u8)
                .collect()
        } else {
            self.data.iter().flat_map(|&v| [v, v, v]).collect()
        };
        Ok(Image { width: self.width, height: self.height, channels, data })
    }

    /// Refuses an image whose fields disagree (they are public): 1 or 3 channels, and
    /// `width * height * channels` bytes of data; `op` names the caller.
    fn check(&self, op: &str) -> Result<()> {
        let expected = self.width.checked_mul(self.height).and_then(|p| p.checked_mul(self.channels));
        if (self.channels != 1 && self.channels != 3) || expected != Some(self.data.len()) {
            return Err(bad(
                op,
                format!(
                    "a {}x{} image with {} channels cannot hold {} bytes",
                    self.width,
                    self.height,
                    self.channels,
                    self.data.len()
                ),
            ));
        }
        if self.width == 0 || self.height == 0 {
            return Err(bad(op, format!("the image is empty ({}x{})", self.width, self.height)));
        }
        Ok(())
    }
}

/// Reads an image folder with one sub-folder per class (sorted names are the classes), every
/// PNG/JPEG resized to `size` x `size` with `channels` channels: features `[N, C, size, size]`
/// in [0, 1], targets `[N]` i64, and the class names.
pub fn load_image_folder(
    dir: &Path,
    size: usize,
    channels: usize,
    device: &Device,
) -> Result<(crate::data::Dataset, Vec<String>)> {
    let io = |source| Error::Io { path: dir.display().to_string(), source };
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    if classes.len() < 2 {
        return Err(bad(
            &dir.display().to_string(),
            format!("{} class folder(s) ({}); a classifier needs at least 2", classes.len(), classes.join(", ")),
        ));
    }
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut counts = vec![0usize; classes.len()];
    for (label, class) in classes.iter().enumerate() {
        let mut files: Vec<_> =
            std::fs::read_dir(dir.join(class)).map_err(io)?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let ext = file.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
            if !matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
                continue;
            }
            let image = Image::load(&file)?.with_channels(channels)?.resize(size, size)?;
            pixels.extend(image.to_tensor(&Device::Cpu)?.to_vec::<f32>()?);
            labels.push(label as i64);
            counts[label] += 1;
        }
    }
    if counts.contains(&0) {
        let listed: Vec<String> = classes.iter().zip(&counts).map(|(c, n)| format!("{c}: {n}")).collect();
        return Err(bad(
            &dir.display().to_string(),
            format!("every class folder needs PNG or JPEG images; images per class: {}", listed.join(", ")),
        ));
    }
    let n = labels.len();
    let features = Tensor::from_vec(pixels, &[n, channels, size, size], device)?;
    let data = crate::data::Dataset::new(features, Tensor::from_vec(labels, &[n], device)?)?;
    Ok((data, classes))
}
