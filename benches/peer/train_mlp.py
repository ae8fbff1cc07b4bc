"""PyTorch twin of `nabla train --shift 0` (the defaults without augmentation): the
784-512-512-10 ReLU MLP (Kaiming-uniform hidden layers), Adam at lr 2e-3 with a per-step cosine
schedule to 0, batch 64, 20 epochs over the shipped MNIST subset (the first 90% of the 8,000
training images; the last 10% validate after every epoch, as nabla does), then the 2,000 test
images. Prints wall time, test accuracy and the process's peak RSS. Compare with

    /usr/bin/time -f '%e s, %M KiB' target/release/nabla train --shift 0 --threads 2
    python3 benches/peer/train_mlp.py --threads 2
"""
import argparse
import gzip
import math
import resource
import struct
import time

import torch


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">i", data[:4])
    dims = magic & 0xFF
    shape = struct.unpack(">" + "i" * dims, data[4:4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    root = "data/mnist-10k/"
    x = idx(root + "train-images-idx3-ubyte.gz").reshape(-1, 784).float() / 255
    y = idx(root + "train-labels-idx1-ubyte.gz").long()
    xt = idx(root + "t10k-images-idx3-ubyte.gz").reshape(-1, 784).float() / 255
    yt = idx(root + "t10k-labels-idx1-ubyte.gz").long()
    head = len(x) - round(len(x) * 0.1)
    (xtr, ytr), (xv, yv) = (x[:head], y[:head]), (x[head:], y[head:])
    nn = torch.nn
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    for layer in (model[0], model[2]):
        nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batch, steps_per_epoch = 64, math.ceil(head / 64)
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    def accuracy(xs, ys):
        with torch.no_grad():
            return (model(xs).argmax(1) == ys).float().mean().item()

    for epoch in range(args.epochs):
        order = torch.randperm(head)
        for i in range(0, head, batch):
            j = order[i:i + batch]
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(xtr[j]), ytr[j]).backward()
            opt.step()
            sched.step()
        val = accuracy(xv, yv)
    test = accuracy(xt, yt)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pytorch {torch.__version__}, {args.threads} threads: {args.epochs} epochs in {wall:.1f} s, "
          f"validation {val:.2%}, test {test:.2%}, peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
