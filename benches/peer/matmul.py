"""PyTorch twin of the GPU rows of benches/ops.rs `matmul`: 4096^3 products in f32 (TF32 off, as
nabla's default "highest"), TF32 (torch.set_float32_matmul_precision("high"), as nabla's opt-in),
f16 and bf16 (cuBLAS on the tensor cores), timed with CUDA events after warm-up, median of 30.
Run it in the same device session as `cargo bench --bench ops` and record both with the card.

    python3 benches/peer/matmul.py
"""
import torch

from timing import cuda_median_ms

dev = torch.device("cuda")
N = 4096


CASES = [
    ("f32", torch.float32, "highest"),
    ("tf32", torch.float32, "high"),
    ("f16", torch.float16, "highest"),
    ("bf16", torch.bfloat16, "highest"),
]

for name, dtype, precision in CASES:
    torch.set_float32_matmul_precision(precision)
    a, b = (torch.randn(N, N, device=dev, dtype=dtype) for _ in range(2))
    ms = cuda_median_ms(lambda: a @ b)
    print(f"matmul_{name}_flops {N}^3: {ms:.3f} ms, {2 * N**3 / ms / 1e9:.1f} TFLOP/s")
torch.set_float32_matmul_precision("highest")
print(f"pytorch {torch.__version__} on {torch.cuda.get_device_name()}")
