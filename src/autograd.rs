//! Reverse-mode automatic differentiation.
//!
//! Every op whose inputs track gradients records a [`Node`] on its output: the inputs and a
//! closure that maps the output's gradient to the inputs' gradients. `backward()` walks the
//! graph from a scalar in reverse topological order, summing gradients where paths meet, and
//! adds the result into each leaf's `grad` (so repeated backward passes accumulate, as in
//! PyTorch, until `zero_grad`). Gradient closures run with recording switched off and use the
//! ordinary ops, so a GPU graph differentiates on the GPU without host synchronisation.

use crate::{Error, Result, Tensor};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::panic::Location;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Maps the gradient of an op's output to the gradients of its inputs (None: no gradient).
pub(crate) type BackwardFn = Box<dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// A vertex of the autograd graph: a leaf (a tensor the user asked gradients for) or the
/// record of the op that produced a tensor.
pub(crate) struct Node {
    id: usize,
    inputs: Vec<Tensor>,
    backward: Option<BackwardFn>,
    grad: Mutex<Option<Tensor>>,
    /// Where the op was recorded (its line in `src/ops`), for anomaly reports.
    origin: &'static Location<'static>,
    /// Set when the op is a slice of its one input (`narrow`): (dim, start). Such a node has no
    /// `backward`: the pass hands its gradient to the input's `Pending` as a slice.
    slice: Option<(usize, usize)>,
}

impl Node {
    #[track_caller]
    fn new(inputs: Vec<Tensor>, backward: Option<BackwardFn>, slice: Option<(usize, usize)>) -> Arc<Node> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        Arc::new(Node { id, inputs, backward, grad: Mutex::new(None), origin: Location::caller(), slice })
    }
}

/// A node's gradient while the backward pass gathers it: the sum of the dense contributions,
/// and apart from it the gradients that slices of the node (`narrow`) handed back. Slices that
/// tile the whole tensor along one dim become one `cat` (a fused q/k/v projection's three
/// gradients: one pass), where each slice's gradient as zeros around it and two sums made
/// three zero tensors and two full passes.
struct Pending {
    dense: Option<Tensor>,
    /// (dim, start, gradient of the slice), in the order the pass met them.
    slices: Vec<(usize, usize, Tensor)>,
    /// The node's shape (known once a slice arrives; the dense part has it otherwise).
    shape: Vec<usize>,
}

impl Pending {
    fn dense(g: Tensor) -> Pending {
        Pending { shape: g.shape().to_vec(), dense: Some(g), slices: Vec::new() }
    }

    fn add_dense(&mut self, g: Tensor) -> Result<()> {
        self.dense = Some(match self.dense.take() {
            Some(previous) => previous.add(&g)?,
            None => g,
        });
        Ok(())
    }

    /// The whole gradient.
    fn into_tensor(self) -> Result<Tensor> {
        let Pending { dense, mut slices, shape } = self;
        if slices.is_empty() {
            return dense.ok_or_else(|| Error::invalid("backward", "a gradient with no parts"));
        }
        // A stable sort: equal starts keep the pass's order, so sums run in a fixed order.
        slices.sort_by_key(|&(dim, start, _)| (dim, start));
        let dim = slices[0].0;
        let mut end = 0;
        let tiles = slices.iter().all(|(d, start, g)| {
            let fits = *d == dim && *start == end;
            end += g.shape()[dim];
            fits
        }) && end == shape[dim];
        let sliced = if tiles {
            let parts: Vec<&Tensor> = slices.iter().map(|(_, _, g)| g).collect();
            Tensor::cat(&parts, dim as isize)?
        } else {
            let first = &slices[0].2;
            let full = Tensor::zeros(&shape, first.dtype(), &first.device())?;
            for (d, start, g) in &slices {
                let region = full.narrow(*d as isize, *start, g.shape()[*d])?;
                region.copy_(&region.add(g)?)?;
            }
            full
        };
        match dense {
            Some(dense) => dense.add(&sliced),
            None => Ok(sliced),
        }
    }
}

thread_local! {
    /// Whether anomaly detection is on (see [`set_detect_anomaly`]).
    static DETECT_ANOMALY: Cell<bool> = const { Cell::new(false) };
    /// The first non-finite op output seen since anomaly detection was switched on.
    static FIRST_ANOMALY: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Switches anomaly detection on or off for this thread, like PyTorch's
/// `torch.autograd.set_detect_anomaly`: while on, every differentiable op's output is read
/// back and checked, the first non-finite one is remembered ([`take_anomaly`] says which op
/// made it, and where), and a backward pass fails at the first op whose gradient is not
/// finite. Each op then synchronises with the host: a mode for finding a NaN, not for speed.
pub fn set_detect_anomaly(on: bool) {
    DETECT_ANOMALY.with(|d| d.set(on));
    FIRST_ANOMALY.with(|f| f.replace(None));
}

/// Whether anomaly detection is on.
pub fn is_anomaly_enabled() -> bool {
    DETECT_ANOMALY.with(Cell::get)
}

/// The first non-finite op output seen since detection was switched on (and clears it).
pub fn take_anomaly() -> Option<String> {
    FIRST_ANOMALY.with(|f| f.take())
}

/// Whether every value of a float tensor is finite (integers always are). An unreadable
/// tensor counts as finite: its error surfaces where it is used.
fn all_finite(t: &Tensor) -> bool {
    !t.dtype().is_float() || t.to_vec::<f64>().map_or(true, |v| v.iter().all(|x| x.is_finite()))
}

/// Notes `out` as the first anomaly if it holds a non-finite value.
fn check_output(out: &Tensor, origin: &Location<'_>) {
    if FIRST_ANOMALY.with(|f| f.borrow().is_none()) && !all_finite(out) {
        let report = format!(
            "the first non-finite value came from the op at {}:{} (its {:?} output)",
            origin.file(),
            origin.line(),
            out.shape()
        );
        FIRST_ANOMALY.with(|f| f.replace(Some(report)));
    }
}

thread_local! {
    static RECORDING: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record the autograd graph.
pub fn is_grad_enabled() -> bool {
    RECORDING.with(|r| r.get())
}

/// Switches graph recording off on this thread until dropped (like `torch.no_grad()`).
pub struct NoGradGuard {
    previous: bool,
}

impl NoGradGuard {
    /// Stops recording; the previous state comes back when the guard drops.
    pub fn new() -> Self {
        NoGradGuard { previous: RECORDING.with(|r| r.replace(false)) }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        RECORDING.with(|r| r.set(self.previous));
    }
}

/// Runs `f` without recording the autograd graph.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = NoGradGuard::new();
    f()
}

/// Attaches the record of the op that made `out` from `inputs`, if any input tracks gradients
/// and recording is on. `backward` gets the gradient of `out` and returns one entry per input.
#[track_caller]
pub(crate) fn record(
    out: Tensor,
    inputs: &[&Tensor],
    backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
) -> Tensor {
    attach(out, inputs, Some(Box::new(backward)), None)
}

/// [`record`] for `out`, a slice of `input` (elements `start..` of dim `dim`): the backward pass
/// gathers the gradients of the slices of each tensor and joins them (see `Pending`).
#[track_caller]
pub(crate) fn record_slice(out: Tensor, input: &Tensor, (dim, start): (usize, usize)) -> Tensor {
    attach(out, &[input], None, Some((dim, start)))
}

/// The node of [`record`] or [`record_slice`] on `out`, when recording is on and an input
/// tracks gradients; checks the output first in anomaly mode.
#[track_caller]
fn attach(out: Tensor, inputs: &[&Tensor], backward: Option<BackwardFn>, slice: Option<(usize, usize)>) -> Tensor {
    if is_anomaly_enabled() {
        check_output(&out, Location::caller());
    }
    if !is_grad_enabled() || !inputs.iter().any(|t| t.node.is_some()) {
        return out;
    }
    let inputs = inputs.iter().map(|t| (*t).clone()).collect();
    Tensor { node: Some(Node::new(inputs, backward, slice)), ..out }
}

/// The error of a backward pass that met a non-finite gradient in anomaly mode: `what` says
/// where, after the op's source line.
fn non_finite_gradient(node: &Node, what: std::fmt::Arguments<'_>) -> Error {
    Error::invalid(
        "backward",
        format!("anomaly: the backward of the op at {}:{} {what}", node.origin.file(), node.origin.line()),
    )
}

impl Tensor {
    /// This tensor as a leaf of the autograd graph: ops on it record, and `backward()` fills
    /// its `grad()`. Shares the storage (like `requires_grad_()` in PyTorch).
    pub fn requires_grad_(&self) -> Result<Tensor> {
        if !self.dtype.is_float() {
            return Err(Error::unsupported("requires_grad_", self.dtype, " (only floats have gradients)"));
        }
        Ok(Tensor { node: Some(Node::new(Vec::new(), None, None)), ..self.clone() })
    }

    /// Whether this tensor is part of the autograd graph (a leaf or an op's output).
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }

    /// The same values outside the graph: ops on it record nothing.
    pub fn detach(&self) -> Tensor {
        Tensor { node: None, ..self.clone() }
    }

    /// The gradient accumulated by `backward()` into this leaf, if any.
    pub fn grad(&self) -> Option<Tensor> {
        let node = self.node.as_ref()?;
        node.grad.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces this leaf's gradient (`None` clears it, like `zero_grad(set_to_none=True)`).
    pub fn set_grad(&self, grad: Option<Tensor>) -> Result<()> {
        let node = self.node.as_ref().ok_or_else(|| Error::invalid("set_grad", "the tensor does not require grad"))?;
        *node.grad.lock().unwrap_or_else(|e| e.into_inner()) = grad.map(|g| g.detach());
        Ok(())
    }

    /// Clears this leaf's gradient.
    pub fn zero_grad(&self) {
        if let Some(node) = &self.node {
            *node.grad.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Back-propagates from this one-element tensor: adds d(self)/d(leaf) into every leaf's grad.
    pub fn backward(&self) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::shape("backward", format!("needs a one-element tensor, got shape {:?}", self.shape())));
        }
        let seed = self.detach().ones_like()?;
        self.backward_with(&seed)
    }

    /// Back-propagates `grad` (shaped like this tensor) through the graph.
    pub fn backward_with(&self, grad: &Tensor) -> Result<()> {
        let root = self.node.as_ref().ok_or_else(|| Error::invalid("backward", "the tensor does not require grad"))?;
        if grad.shape() != self.shape() {
            return Err(Error::shape(
                "backward",
                format!("gradient {:?} for a tensor of shape {:?}", grad.shape(), self.shape()),
            ));
        }
        let _guard = NoGradGuard::new();
        // Each product's backward runs in the dtype its forward chose (saved in the graph).
        let _autocast = crate::amp::AutocastOff::new();
        let order = topological_order(root);
        let mut grads: HashMap<usize, Pending> = HashMap::new();
        grads.insert(root.id, Pending::dense(grad.detach()));
        for node in order.iter().rev() {
            let Some(pending) = grads.remove(&node.id) else { continue };
            let g = pending.into_tensor()?;
            if let (Some((dim, start)), [input]) = (node.slice, node.inputs.as_slice()) {
                let Some(input_node) = &input.node else { continue };
                if is_anomaly_enabled() && !all_finite(&g) {
                    return Err(non_finite_gradient(node, format_args!("(a slice) received a non-finite gradient")));
                }
                let entry = grads.entry(input_node.id).or_insert_with(|| Pending {
                    dense: None,
                    slices: Vec::new(),
                    shape: input.shape().to_vec(),
                });
                entry.slices.push((dim, start, g));
                continue;
            }
            let Some(backward) = &node.backward else {
                // Leaves keep dense gradients (a broadcast view would reach optimizers as such).
                let g = g.contiguous()?;
                let mut slot = node.grad.lock().unwrap_or_else(|e| e.into_inner());
                *slot = Some(match slot.take() {
                    Some(previous) => previous.add(&g)?,
                    None => g,
                });
                continue;
            };
            let input_grads = backward(&g)?;
            for (index, (input, input_grad)) in node.inputs.iter().zip(input_grads).enumerate() {
                let (Some(input_node), Some(input_grad)) = (&input.node, input_grad) else { continue };
                if is_anomaly_enabled() && !all_finite(&input_grad) {
                    let what = format_args!("gave a non-finite gradient for its input {index} {:?}", input.shape());
                    return Err(non_finite_gradient(node, what));
                }
                if input_grad.shape() != input.shape() {
                    return Err(Error::shape(
                        "backward",
                        format!(
                            "an op produced gradient {:?} for an input of shape {:?}",
                            input_grad.shape(),
                            input.shape()
                        ),
                    ));
                }
                match grads.get_mut(&input_node.id) {
                    Some(pending) => pending.add_dense(input_grad)?,
                    None => {
                        grads.insert(input_node.id, Pending::dense(input_grad));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Nodes reachable from `root`, each after all nodes it depends on (inputs first).
fn topological_order(root: &Arc<Node>) -> Vec<Arc<Node>> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative DFS: (node, whether its inputs have been pushed).
    let mut stack = vec![(root.clone(), false)];
    while let Some((node, expanded)) = stack.pop() {
        if expanded {
            order.push(node);
            continue;
        }
        if !seen.insert(node.id) {
            continue;
        }
        stack.push((node.clone(), true));
        for input in &node.inputs {
            if let Some(n) = &input.node
                && !seen.contains(&n.id)
            {
                stack.push((n.clone(), false));
            }
        }
    }
    order
}
