"""PyTorch twin of benches/attention.rs: F.scaled_dot_product_attention (FlashAttention or
cuDNN, as PyTorch picks) forward and forward+backward on the same shapes, timed with CUDA events
after warm-up, median of 30. Run it in the same device session as the nabla bench.

    python3 benches/peer/attention.py
"""
import torch
import torch.nn.functional as F

from timing import cuda_median_ms

dev = torch.device("cuda")


CASES = [
    ("bf16_b4_h16_s2048_d64", torch.bfloat16, (4, 16, 2048, 64), False),
    ("bf16_b4_h16_s2048_d64_causal", torch.bfloat16, (4, 16, 2048, 64), True),
    ("bf16_b4_h16_s2048_d128", torch.bfloat16, (4, 16, 2048, 128), False),
    ("f32_b8_h8_s512_d64", torch.float32, (8, 8, 512, 64), False),
]

for name, dtype, shape, causal in CASES:
    q, k, v = (torch.randn(shape, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device=dev, dtype=dtype)
    fwd = cuda_median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))

    def step():
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(grad)

    both = cuda_median_ms(step)
    print(f"attention {name}: forward {fwd:.3f} ms, forward+backward {both:.3f} ms")
print(f"pytorch {torch.__version__} on {torch.cuda.get_device_name()}")
