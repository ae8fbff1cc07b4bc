"""PyTorch twin of benches/train_step.rs: one training step of the 784-512-512-10 ReLU MLP at
batch 256 with Adam, timed with CUDA events after warm-up (median of 50). Run it in the same
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


if __name__ == "__main__":
    main()
