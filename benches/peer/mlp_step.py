"""PyTorch twin of benches/train_step.rs: one training step of the 784-512-512-10 ReLU MLP at
batch 256 with Adam, timed with CUDA events after warm-up (median of 50), eagerly and captured
as a CUDA graph. Run it in the same
device session as the nabla bench and record both figures, their ratio and the card.

    python3 benches/peer/mlp_step.py
"""

import torch

from timing import cuda_median_ms


def main():
    torch.manual_seed(0)
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 10),
    ).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(256, 784, device=dev)
    y = torch.randint(0, 10, (256,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    print(f"pytorch {torch.__version__} on {torch.cuda.get_device_name()}: "
          f"mlp step median {cuda_median_ms(step, 20, 50):.3f} ms over 50")

    # The same step captured as a CUDA graph (the twin of the bench's `cuda_graph` row), as
    # PyTorch's documentation captures a whole training step: an optimizer whose step count
    # lives on the device, a few warm-up steps on a side stream, then capture and replay.
    try:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        print(f"pytorch mlp step as a CUDA graph median {cuda_median_ms(graph.replay, 20, 50):.3f} ms over 50")
    except RuntimeError as error:  # the eager figure above stands either way
        print(f"pytorch mlp step as a CUDA graph: not measured ({error})")


if __name__ == "__main__":
    main()
