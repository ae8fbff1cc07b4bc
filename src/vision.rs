//! The convolution operator, hands on: the classic 3x3 image kernels applied through the
//! library's `conv2d` to whole images, on any device.

use crate::{Conv2dOptions, DType, Device, Error, Result, Tensor};

/// The names `classic_kernel` knows.
pub const CLASSIC_KERNELS: [&str; 7] = ["identity", "edge", "edge-cross", "edge-all", "sharpen", "box-blur", "emboss"];

/// A classic 3x3 kernel by name: identity; edge detection `[[1,0,-1],[0,0,0],[-1,0,1]]`
/// (`edge`), `[[0,-1,0],[-1,4,-1],[0,-1,0]]` (`edge-cross`), `[[-1,-1,-1],[-1,8,-1],[-1,-1,-1]]`
/// (`edge-all`); `sharpen` `[[0,-1,0],[-1,5,-1],[0,-1,0]]`; the normalised `box-blur` (1/9 of
/// ones); `emboss` `[[-18,-9,0],[-9,9,9],[0,9,18]] / 9`.
pub fn classic_kernel(name: &str) -> Result<Tensor> {
    let values: [f32; 9] = match name {
        "identity" => [0., 0., 0., 0., 1., 0., 0., 0., 0.],
        "edge" => [1., 0., -1., 0., 0., 0., -1., 0., 1.],
        "edge-cross" => [0., -1., 0., -1., 4., -1., 0., -1., 0.],
        "edge-all" => [-1., -1., -1., -1., 8., -1., -1., -1., -1.],
        "sharpen" => [0., -1., 0., -1., 5., -1., 0., -1., 0.],
        "box-blur" => [1. / 9.; 9],
        "emboss" => [-2., -1., 0., -1., 1., 1., 0., 1., 2.],
        _ => {
            return Err(Error::invalid(
                "convolve",
                format!("unknown kernel `{name}` ({})", CLASSIC_KERNELS.join(", ")),
            ));
        }
    };
    Tensor::from_vec(values.to_vec(), &[3, 3], &Device::Cpu)
}

/// Parses a user kernel: rows separated by `;`, values by `,` (e.g. `0,-1,0;-1,5,-1;0,-1,0`).
/// The kernel must be square with an odd side.
pub fn parse_kernel(text: &str) -> Result<Tensor> {
    let bad = |detail: String| Error::invalid("convolve", detail);
    let rows: Vec<Vec<f32>> = text
        .split(';')
        .map(|row| {
            row.split(',')
                .map(|v| {
                    v.trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| bad(format!("`{v}` in kernel `{text}` is not a finite number")))
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    let k = rows.len();
    if k.is_multiple_of(2) || rows.iter().any(|r| r.len() != k) {
        return Err(bad(format!("kernel `{text}` is not square with an odd side")));
    }
    Tensor::from_vec(rows.concat(), &[k, k], &Device::Cpu)
}

/// What lies beyond an image's edge when a kernel reaches past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Border {
    /// Zeros (`conv2d`'s padding): a dark frame for kernels that sum to more than 0.
    Zero,
    /// The image mirrored at its edge, without repeating the edge pixel (PyTorch's `reflect`).
    Reflect,
}

/// Convolves every channel of a `[C, H, W]` image with one `[k, k]` kernel (a depthwise
/// `conv2d` with zero padding k/2, so the size is kept) on `device`. Values are not clamped.
pub fn convolve(image: &Tensor, kernel: &Tensor, device: &Device) -> Result<Tensor> {
    convolve_with(image, kernel, Border::Zero, device)
}

/// The image's rows (axis 1) or columns (axis 2) mirrored `pad` deep at both ends.
fn reflect(image: &Tensor, axis: usize, pad: usize) -> Result<Tensor> {
    let n = image.shape()[axis];
    if pad == 0 {
        return Ok(image.clone());
    }
    if pad >= n {
        return Err(Error::shape(
            "convolve",
            format!("reflecting {pad} pixels needs an image larger than that, got {:?}", image.shape()),
        ));
    }
    let last = n as i64 - 1;
    let index: Vec<i64> = (-(pad as i64)..n as i64 + pad as i64)
        .map(|i| {
            if i < 0 {
                -i
            } else if i > last {
                2 * last - i
            } else {
                i
            }
        })
        .collect();
    let index = Tensor::from_vec(index, &[n + 2 * pad], &image.device())?;
    image.index_select(axis as isize, &index)
}

/// [`convolve`] with a choice of what lies beyond the edge.
pub fn convolve_with(image: &Tensor, kernel: &Tensor, border: Border, device: &Device) -> Result<Tensor> {
    let [c, h, w] = image.shape() else {
        return Err(Error::shape("convolve", format!("image must be [C, H, W], got {:?}", image.shape())));
    };
    let [k, k2] = kernel.shape() else {
        return Err(Error::shape("convolve", format!("kernel must be [k, k], got {:?}", kernel.shape())));
    };
    if k != k2 || k % 2 == 0 {
        return Err(Error::shape("convolve", format!("kernel {:?} is not square with an odd side", kernel.shape())));
    }
    let (c, h, w, k) = (*c, *h, *w, *k);
    let x = image.to_dtype(DType::F32)?.to_device(device)?;
    let (x, padding) = match border {
        Border::Zero => (x, k / 2),
        Border::Reflect => (reflect(&reflect(&x, 1, k / 2)?, 2, k / 2)?, 0),
    };
    let x = x.reshape(&[1, c, h + 2 * (k / 2 - padding), w + 2 * (k / 2 - padding)])?;
    let weight = kernel
        .to_dtype(DType::F32)?
        .to_device(device)?
        .reshape(&[1, 1, k, k])?
        .broadcast_as(&[c, 1, k, k])?
        .contiguous()?;
    let opt = Conv2dOptions { padding: (padding, padding), groups: c, ..Default::default() };
    x.conv2d(&weight, None, opt)?.reshape(&[c, h, w])
}
