//! Shapes, strides and offsets: how a tensor's logical elements map onto its storage.
//!
//! Every view op (reshape of contiguous data, permute, narrow, broadcast, squeeze, unsqueeze)
//! is a new `Layout` over the same storage. Strides count elements, not bytes.

use crate::{Error, Result};

/// The shape, strides and storage offset of a tensor view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major strides of a shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1].max(1);
    }
    strides
}

/// The NumPy broadcast of two shapes: aligned at the right, each pair of sizes equal or one of
/// them 1.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(Error::shape(op, format!("cannot broadcast {a:?} with {b:?}"))),
        };
    }
    checked_numel(op, &out)?;
    Ok(out)
}

/// Resolves a possibly negative axis against a rank.
pub fn normalize_axis(op: &'static str, axis: isize, shape: &[usize]) -> Result<usize> {
    resolve_axis(op, axis, shape.len(), shape)
}

fn resolve_axis(op: &'static str, axis: isize, rank: usize, shape: &[usize]) -> Result<usize> {
    let resolved = if axis < 0 { axis + rank as isize } else { axis };
    if resolved < 0 || resolved >= rank as isize {
        return Err(Error::AxisOutOfRange { op, axis, shape: shape.to_vec() });
    }
    Ok(resolved as usize)
}

impl Layout {
    /// A row-major layout at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }

    /// A layout from its parts, unchecked: for backends splitting a view they already hold.
    pub(crate) fn from_parts(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        Layout { shape, strides, offset }
    }

    /// The sizes of each dimension.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The stride of each dimension, in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Where element 0 sits in the storage, in elements.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether several indices share an element (a dimension longer than 1 with stride 0, as
    /// `broadcast_as` and `expand` make).
    pub fn is_broadcast(&self) -> bool {
        self.shape.iter().zip(&self.strides).any(|(&size, &stride)| size > 1 && stride == 0)
    }

    /// Whether the elements are row-major and gap-free (dims of size 1 may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&size, &stride) in self.shape.iter().zip(&self.strides).rev() {
            if size == 0 {
                return true;
            }
            if size != 1 && stride != expected {
                return false;
            }
            expected *= size;
        }
        true
    }

    /// The same elements under a new shape, if this layout is contiguous.
    pub fn reshape(&self, shape: &[usize]) -> Result<Option<Layout>> {
        let numel = checked_numel("reshape", shape)?;
        if numel != self.numel() {
            return Err(Error::shape("reshape", format!("cannot reshape {:?} into {shape:?}", self.shape)));
        }
        if !self.is_contiguous() {
            return Ok(None);
        }
        Ok(Some(Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: self.offset }))
    }

    /// Reorders the dimensions: output dim i is input dim `dims[i]`.
    pub fn permute(&self, dims: &[usize]) -> Result<Layout> {
        let mut seen = vec![false; self.rank()];
        if dims.len() != self.rank() || dims.iter().any(|&d| d >= self.rank() || std::mem::replace(&mut seen[d], true))
        {
            return Err(Error::invalid(
                "permute",
                format!("{dims:?} is not a permutation of the dims of a tensor of shape {:?}", self.shape),
            ));
        }
        Ok(Layout {
            shape: dims.iter().map(|&d| self.shape[d]).collect(),
            strides: dims.iter().map(|&d| self.strides[d]).collect(),
            offset: self.offset,
        })
    }

    /// Swaps two dimensions.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Layout> {
        let a = normalize_axis("transpose", a, &self.shape)?;
        let b = normalize_axis("transpose", b, &self.shape)?;
        let mut dims: Vec<usize> = (0..self.rank()).collect();
        dims.swap(a, b);
        self.permute(&dims)
    }

    /// Elements `start..start + len` along `dim`.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Layout> {
        let d = normalize_axis("narrow", dim, &self.shape)?;
        if start.checked_add(len).is_none_or(|end| end > self.shape[d]) {
            return Err(Error::invalid(
                "narrow",
                format!("range {start}..{} is outside dim {d} of shape {:?}", start.saturating_add(len), self.shape),
            ));
        }
        let mut out = self.clone();
        out.shape[d] = len;
        if len > 0 {
            out.offset += start * self.strides[d];
        }
        Ok(out)
    }

    /// Views this layout as `shape` by NumPy broadcasting (stride 0 along expanded dims).
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Layout> {
        checked_numel("broadcast_as", shape)?;
        let err = || Error::shape("broadcast_as", format!("cannot broadcast {:?} to {shape:?}", self.shape));
        if shape.len() < self.rank() {
            return Err(err());
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (i, &size) in shape.iter().enumerate() {
            if i < lead {
                continue;
            }
            let own = self.shape[i - lead];
            strides[i] = match own {
                s if s == size => self.strides[i - lead],
                1 => 0,
                _ => return Err(err()),
            };
        }
        Ok(Layout { shape: shape.to_vec(), strides, offset: self.offset })
    }

    /// Removes dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: isize) -> Result<Layout> {
        let d = normalize_axis("squeeze", dim, &self.shape)?;
        if self.shape[d] != 1 {
            return Err(Error::shape(
                "squeeze",
                format!("dim {d} of shape {:?} has size {}, not 1", self.shape, self.shape[d]),
            ));
        }
        let mut out = self.clone();
        out.shape.remove(d);
        out.strides.remove(d);
        Ok(out)
    }

    /// Inserts a dimension of size 1 at `dim` (which may equal the rank, or be negative).
    pub fn unsqueeze(&self, dim: isize) -> Result<Layout> {
        let d = resolve_axis("unsqueeze", dim, self.rank() + 1, &self.shape)?;
        let mut out = self.clone();
        let stride = if d < self.rank() { self.strides[d] * self.shape[d] } else { 1 };
        out.shape.insert(d, 1);
        out.strides.insert(d, stride);
        Ok(out)
    }

    /// The storage offset of every logical element, in row-major order.
    pub fn offsets(&self) -> StridedOffsets {
        StridedOffsets {
            shape: self.shape.clone(),
            strides: self.strides.clone(),
            index: vec![0; self.rank()],
            next: self.offset,
            remaining: self.numel(),
            contiguous: self.is_contiguous(),
        }
    }
}

/// Iterator over the storage offsets of a layout's elements, in row-major order.
pub struct StridedOffsets {
    shape: Vec<usize>,
    strides: Vec<usize>,
    index: Vec<usize>,
    next: usize,
    remaining: usize,
    contiguous: bool,
}

impl Iterator for StridedOffsets {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let current = self.next;
        if self.contiguous {
            self.next += 1;
            return Some(current);
        }
        for d in (0..self.shape.len()).rev() {
            self.index[d] += 1;
            self.next += self.strides[d];
            if self.index[d] < self.shape[d] {
                break;
            }
            self.next -= self.strides[d] * self.shape[d];
            self.index[d] = 0;
        }
        Some(current)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for StridedOffsets {}

/// The most elements a tensor may have: its bytes (8 per element at most) must fit an `isize`,
/// as every allocation's must.
pub const MAX_ELEMENTS: usize = (isize::MAX as usize) / 8;

/// The number of elements of `shape`, or an error naming `op` when the product overflows or
/// passes [`MAX_ELEMENTS`] (a shape read from a file or computed from options can be anything).
pub fn checked_numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| Error::shape(op, format!("shape {shape:?} has more elements than memory can hold")))
}
