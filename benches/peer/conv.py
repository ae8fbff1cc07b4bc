"""PyTorch (cuDNN) twin of benches/conv.rs, timed with CUDA events after warm-up, median of 50,
TF32 off: conv2d forward and forward+backward on the four layers (also with TF32 on, and in bf16
channels-last, where nabla's rows do), and one LeNet-5 training step at batch 256 with SGD
momentum. Run it in the same device session as the nabla benches.

    python3 benches/peer/conv.py
"""
import torch

from timing import cuda_median_ms

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.benchmark = True
dev = torch.device("cuda")


LAYERS = [
    ("lenet_c1", (256, 1, 28, 28), 6, 5, 1, 0),
    ("resnet_3x3_n16", (16, 64, 56, 56), 64, 3, 1, 1),
    ("resnet_3x3", (64, 64, 56, 56), 64, 3, 1, 1),
    ("alexnet_c1", (128, 3, 224, 224), 64, 11, 4, 2),
]

def forward_and_both_ms(x, w, stride, pad):
    """Median ms of conv2d's forward, and of its forward+backward, on leaf tensors x and w."""
    fwd = cuda_median_ms(lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=pad), 10, 50)

    def fwd_bwd():
        x.grad = None
        w.grad = None
        torch.nn.functional.conv2d(x, w, stride=stride, padding=pad).sum().backward()

    return fwd, cuda_median_ms(fwd_bwd, 10, 50)


for name, shape, out_c, k, stride, pad in LAYERS:
    x = torch.randn(shape, device=dev, requires_grad=True)
    w = torch.randn(out_c, shape[1], k, k, device=dev, requires_grad=True)
    y = torch.nn.functional.conv2d(x, w, stride=stride, padding=pad)
    flops = 2 * y.numel() * shape[1] * k * k
    fwd, both = forward_and_both_ms(x, w, stride, pad)
    print(f"{name}: forward {fwd:.3f} ms ({flops / fwd / 1e9:.1f} TFLOP/s), forward+backward {both:.3f} ms")
    if shape[1] % 4 == 0:  # the layers nabla's *_tf32 rows time
        torch.backends.cudnn.allow_tf32 = True
        fwd, both = forward_and_both_ms(x, w, stride, pad)
        torch.backends.cudnn.allow_tf32 = False
        print(f"{name}: TF32 forward {fwd:.3f} ms ({flops / fwd / 1e9:.1f} TFLOP/s), forward+backward {both:.3f} ms")
    if shape[1] % 8 == 0:  # the layers nabla's *_bf16 rows time
        xb = x.detach().to(torch.bfloat16, memory_format=torch.channels_last).requires_grad_()
        wb = w.detach().to(torch.bfloat16, memory_format=torch.channels_last).requires_grad_()
        fwd, both = forward_and_both_ms(xb, wb, stride, pad)
        print(f"{name}: bf16 channels-last forward {fwd:.3f} ms ({flops / fwd / 1e9:.1f} TFLOP/s), "
              f"forward+backward {both:.3f} ms")

model = torch.nn.Sequential(
    torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
    torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10),
).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
xb = torch.rand(256, 1, 28, 28, device=dev)
yb = torch.randint(0, 10, (256,), device=dev)


def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(xb), yb).backward()
    opt.step()


print(f"pytorch {torch.__version__} on {torch.cuda.get_device_name()}: lenet5 step {cuda_median_ms(step, 10, 50):.3f} ms")
