//! Image augmentation on host batches `[N, C, H, W]`: random crops from a zero-padded image
//! and random horizontal flips, drawn from a seeded generator.

use crate::{Error, Generator, Result, Tensor};

/// Pads each image by `pad` zeros on every side and crops a random H x W window: the image
/// moves by a random (dy, dx) in [-pad, pad]², out[y][x] = in[y - dy][x - dx]; with `flip`, mirrors each image left-right with probability
/// one half. The batch stays on its device (augment on the host, before the upload).
pub fn random_crop_flip(batch: &Tensor, pad: usize, flip: bool, rng: &mut Generator) -> Result<Tensor> {
    let [n, c, h, w] = batch.shape() else {
        return Err(Error::shape("augment", format!("batch must be [N, C, H, W], got {:?}", batch.shape())));
    };
    let (n, c, h, w) = (*n, *c, *h, *w);
    if pad >= h.min(w) {
        return Err(Error::invalid(
            "augment",
            format!(
                "a shift of {pad} pixels would move a {h}x{w} image out of its frame (at most {})",
                h.min(w).saturating_sub(1)
            ),
        ));
    }
    let src = batch.to_vec::<f32>()?;
    let mut out = vec![0f32; src.len()];
    let span = 2 * pad as u64 + 1;
    for i in 0..n {
        let dy = rng.below(span)? as isize - pad as isize;
        let dx = rng.below(span)? as isize - pad as isize;
        let mirror = flip && rng.below(2)? == 1;
        for ch in 0..c {
            let plane = (i * c + ch) * h * w;
            for y in 0..h {
                let sy = y as isize - dy;
                if sy < 0 || sy >= h as isize {
                    continue;
                }
                for x in 0..w {
                    let tx = if mirror { w - 1 - x } else { x };
                    let sx = tx as isize - dx;
                    if sx >= 0 && sx < w as isize {
                        out[plane + y * w + x] = src[plane + sy as usize * w + sx as usize];
                    }
                }
            }
        }
    }
    Tensor::from_vec(out, batch.shape(), &batch.device())
}
