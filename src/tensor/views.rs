//! Views: new shapes and strides over the same storage, without copying.

use super::Tensor;
use crate::autograd::{record, record_slice};
use crate::layout::{Layout, normalize_axis};
use crate::{Error, Result};

impl Tensor {
    /// The same elements under `shape`: a view when the tensor is contiguous, else a copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let out = match self.layout.reshape(shape)? {
            Some(layout) => self.with_layout(layout),
            None => self.copy_contiguous()?.with_layout(Layout::contiguous(shape)),
        };
        let from = self.shape().to_vec();
        Ok(record(out, &[self], move |g| Ok(vec![Some(g.reshape(&from)?)])))
    }

    /// Merges dims `start..=end` into one (negative dims count from the back).
    pub fn flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        if self.rank() == 0 {
            return self.reshape(&[1]);
        }
        let s = normalize_axis("flatten", start, self.shape())?;
        let e = normalize_axis("flatten", end, self.shape())?;
        if s > e {
            return Err(Error::invalid("flatten", format!("start dim {s} is after end dim {e}")));
        }
        let shape = self.shape();
        let mut out: Vec<usize> = shape[..s].to_vec();
        out.push(shape[s..=e].iter().product());
        out.extend_from_slice(&shape[e + 1..]);
        self.reshape(&out)
    }

    /// All elements as one dimension.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])
    }

    /// Reorders the dims: output dim i is input dim `dims[i]`.
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        let out = self.with_layout(self.layout.permute(dims)?);
        let mut inverse = vec![0; dims.len()];
        for (i, &d) in dims.iter().enumerate() {
            inverse[d] = i;
        }
        Ok(record(out, &[self], move |g| Ok(vec![Some(g.permute(&inverse)?)])))
    }

    /// Swaps two dims.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let out = self.with_layout(self.layout.transpose(a, b)?);
        Ok(record(out, &[self], move |g| Ok(vec![Some(g.transpose(a, b)?)])))
    }

    /// Swaps the last two dims (a matrix transpose, batched).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::invalid("t", format!("needs at least 2 dims, shape is {:?}", self.shape())));
        }
        self.transpose(-2, -1)
    }

    /// Elements `start..start + len` along `dim`.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let out = self.with_layout(self.layout.narrow(dim, start, len)?);
        let d = normalize_axis("narrow", dim, self.shape())?;
        // The backward pass joins the gradients of the slices of one tensor (one `cat` when they
        // tile it), or places each in zeros around it.
        Ok(record_slice(out, self, (d, start)))
    }

    /// Views the tensor as `shape` by NumPy broadcasting, without copying.
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Tensor> {
        let out = self.with_layout(self.layout.broadcast_as(shape)?);
        let from = self.shape().to_vec();
        Ok(record(out, &[self], move |g| Ok(vec![Some(g.sum_to(&from)?)])))
    }

    /// Removes dim `dim`, which must have size 1.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let out = self.with_layout(self.layout.squeeze(dim)?);
        let from = self.shape().to_vec();
        Ok(record(out, &[self], move |g| Ok(vec![Some(g.reshape(&from)?)])))
    }

    /// Inserts a dim of size 1 at `dim`.
    pub fn unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let out = self.with_layout(self.layout.unsqueeze(dim)?);
        let from = self.shape().to_vec();
        Ok(record(out, &[self], move |g| Ok(vec![Some(g.reshape(&from)?)])))
    }
}
