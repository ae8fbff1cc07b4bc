"""PyTorch twin of examples/cpu_table.rs: the CPU speed table of docs/benchmarks.md, each row's
median wall time in milliseconds, printed as `row<TAB>ms`. Pin both to the same threads:

    NABLA_NUM_THREADS=2 cargo run --release --example cpu_table
    python3 benches/peer/cpu_table.py --threads 2
"""
import argparse
import importlib.util
import os

import torch

from timing import cpu_median_ms


def lenet5():
    """nabla's ConvNet::lenet5(1, 28, 10): conv5(6, pad 2)-relu-maxpool-conv5(16)-relu-maxpool,
    then 400-120-84-10 with ReLU."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("filter", nargs="?", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# pytorch {torch.__version__} on the CPU, {torch.get_num_threads()} threads")

    def row(name, warmup, runs, f):
        if args.filter in name:
            print(f"{name}\t{cpu_median_ms(f, warmup, runs):.3f}", flush=True)

    for batch in (64, 256):
        model = torch.nn.Sequential(
            torch.nn.Linear(784, 512), torch.nn.ReLU(),
            torch.nn.Linear(512, 512), torch.nn.ReLU(),
            torch.nn.Linear(512, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = torch.rand(batch, 784), torch.randint(0, 10, (batch,))

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        row(f"mlp_adam_step_batch{batch}", 5, 30, step)
    for batch in (64, 256):
        model = lenet5()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        row(f"lenet5_sgd_step_batch{batch}", 3, 15, step)
    # `--preset cpu`'s char-GPT (benches/peer/char_gpt.py's model) on random tokens.
    spec = importlib.util.spec_from_file_location(
        "char_gpt", os.path.join(os.path.dirname(__file__), "char_gpt.py"))
    char_gpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(char_gpt)
    gpt = char_gpt.Gpt(76, dict(char_gpt.PRESETS["cpu"]))
    gpt_opt = torch.optim.AdamW(gpt.parameters(), lr=1e-3)
    tokens, targets = torch.randint(0, 76, (12, 64)), torch.randint(0, 76, (12, 64))

    def gpt_step():
        gpt_opt.zero_grad(set_to_none=True)
        gpt(tokens, targets).backward()
        gpt_opt.step()
    row("char_gpt_adamw_step", 5, 40, gpt_step)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    row("matmul_f32_1024", 2, 11, lambda: a @ b)
    a, b = torch.randn(1 << 22), torch.randn(1 << 22)
    row("add_f32_4M", 3, 21, lambda: a + b)
    row("sum_f32_4M", 3, 21, lambda: a.sum())
    x = torch.randn(256, 4096)
    row("softmax_f32_256x4096", 3, 21, lambda: torch.softmax(x, -1))
    x, w = torch.randn(16, 64, 56, 56), torch.randn(64, 64, 3, 3)
    row("conv2d_fwd_16x64x56x56_k3", 1, 5, lambda: torch.nn.functional.conv2d(x, w, padding=1))
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()

    def conv_step():
        xl.grad, wl.grad = None, None
        torch.nn.functional.conv2d(xl, wl, padding=1).sum().backward()
    row("conv2d_fwd_bwd_16x64x56x56_k3", 1, 5, conv_step)


if __name__ == "__main__":
    main()
