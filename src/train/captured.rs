//! `nabla train --cuda-graph`: the image models' training step (forward, loss, backward and the
//! optimizer's fused update) captured once as a CUDA graph and replayed for every batch of the
//! same shape, so the step costs one launch from the host instead of one per kernel (see
//! `cuda/graph.rs` for what a capture requires).
//!
//! The first full-size batch runs eagerly (it makes the optimizer's state); the second is
//! captured into the graph and run by `replay`; each later one is copied into the graph's input
//! tensors, the optimizer's learning rate and step counts are refreshed on the graph's node,
//! and the graph replays. A batch of another shape (an epoch's short last batch) runs eagerly.
//! Every replay runs the kernels an eager step would, on the same values, so the run is the
//! eager run (`tests/all/graphs.rs` checks this bit for bit).

use crate::nn::Module;
use crate::optim::Optimizer;
use crate::{CudaGraph, Device, Precision, Result, Tensor};

/// The captured step, once a full-size batch has been captured.
struct Captured {
    graph: CudaGraph,
    x: Tensor,
    y: Tensor,
    scores: Tensor,
    loss: Tensor,
    /// Each parameter's gradient as the capture left it: the graph writes these buffers, so the
    /// refreshed optimizer must read them even after an eager step has replaced them.
    grads: Vec<Option<Tensor>>,
}

/// A training step that is eager until it can be captured, then replayed.
pub(crate) struct TrainingStep {
    device: Device,
    precision: Precision,
    /// The batch shape that ran eagerly once, which the next batch of that shape captures.
    warmed_up: Option<Vec<usize>>,
    captured: Option<Captured>,
}

impl TrainingStep {
    /// A step on `device` with the products in `precision`.
    pub(crate) fn new(device: Device, precision: Precision) -> Self {
        TrainingStep { device, precision, warmed_up: None, captured: None }
    }

    /// One step on the batch (`x`, `y`; on the host or the device) at the optimizer's current
    /// learning rate: the batch's scores and mean loss, on the device (the graph's own tensors
    /// after a replay, overwritten by the next one).
    pub(crate) fn run(
        &mut self,
        model: &dyn Module,
        optimizer: &mut dyn Optimizer,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        if let Some(c) = &self.captured
            && c.x.shape() == x.shape()
            && c.y.shape() == y.shape()
        {
            c.x.copy_(x)?;
            c.y.copy_(y)?;
            for (p, g) in optimizer.params().iter().zip(&c.grads) {
                p.set_grad(g.clone())?;
            }
            c.graph.replay_with(|| optimizer.step())?;
            return Ok((c.scores.clone(), c.loss.clone()));
        }
        let precision = self.precision;
        let step = |x: &Tensor, y: &Tensor, optimizer: &mut dyn Optimizer| -> Result<(Tensor, Tensor)> {
            optimizer.zero_grad();
            let scores = precision.run(|| model.forward(x))?;
            let loss = scores.cross_entropy(y)?;
            loss.backward()?;
            optimizer.step()?;
            Ok((scores.detach(), loss.detach()))
        };
        let full_size = self.warmed_up.as_deref() == Some(x.shape());
        if self.captured.is_some() || !full_size {
            // A first batch, or one whose shape differs from the captured step's.
            if self.warmed_up.is_none() {
                self.warmed_up = Some(x.shape().to_vec());
            }
            return step(&x.to_device(&self.device)?, &y.to_device(&self.device)?, optimizer);
        }
        let static_x = x.to_device(&self.device)?.copy_contiguous()?;
        let static_y = y.to_device(&self.device)?.copy_contiguous()?;
        let (graph, (scores, loss)) = CudaGraph::capture(&self.device, || step(&static_x, &static_y, optimizer))?;
        graph.replay()?;
        let grads = optimizer.params().iter().map(Tensor::grad).collect();
        let captured = Captured { graph, x: static_x, y: static_y, scores, loss, grads };
        let outputs = (captured.scores.clone(), captured.loss.clone());
        self.captured = Some(captured);
        Ok(outputs)
    }
}
