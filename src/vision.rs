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
                .map(|v| v.trim().parse::<f32>().map_err(|_| bad(format!("`{v}` in kernel `{text}` is not a number"))))
                .collect()
        })
        .collect::<Result<_>>()?;
    let k = rows.len();
    if k.is_multiple_of(2) || rows.iter().any(|r| r.len() != k) {
        return Err(bad(format!("kernel `{text}` is not square with an odd side")));
    }
    Tensor::from_vec(rows.concat(), &[k, k], &Device::Cpu)
}

/// Convolves every channel of a `[C, H, W]` image with one `[k, k]` kernel (a depthwise
/// `conv2d` with zero padding k/2, so the size is kept) on `device`. Values are not clamped.
pub fn convolve(image: &Tensor, kernel: &Tensor, device: &Device) -> Result<Tensor> {
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
    let x = image.to_dtype(DType::F32)?.to_device(device)?.reshape(&[1, c, h, w])?;
    let weight = kernel
        .to_dtype(DType::F32)?
        .to_device(device)?
        .reshape(&[1, 1, k, k])?
        .broadcast_as(&[c, 1, k, k])?
        .contiguous()?;
    let opt = Conv2dOptions { padding: (k / 2, k / 2), groups: c, ..Default::default() };
    x.conv2d(&weight, None, opt)?.reshape(&[c, h, w])
}
