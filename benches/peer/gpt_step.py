"""PyTorch twin of benches/train_step.rs `char_gpt_adamw_step` on the GPU: one AdamW step of the
`--preset gpu` char-GPT (6 layers, 6 heads, width 384, context 256, batch 64, 76 characters, no
dropout) on random tokens, in f32 (TF32 off, as nabla's default) and with the products autocast to
bf16 (the twin of `--precision bf16`), timed with CUDA events after warm-up, median of 20. The
model is char_gpt.py's. Run it in the same device session as the nabla bench.

    python3 benches/peer/gpt_step.py
"""

import torch

from char_gpt import PRESETS, Gpt
from timing import cuda_median_ms


def main():
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    p = dict(PRESETS["gpu"], dropout=0.0)
    vocab = 76
    model = Gpt(vocab, p).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (p["batch"], p["context"]), device=dev)
    y = torch.randint(0, vocab, (p["batch"], p["context"]), device=dev)
    name = torch.cuda.get_device_name()
    for precision, dtype in (("f32", None), ("bf16", torch.bfloat16)):

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = model(x, y)
            loss.backward()
            opt.step()

        ms = cuda_median_ms(step, 5, 20)
        print(f"pytorch {torch.__version__} on {name}: char-gpt step {precision} median {ms:.3f} ms over 20")


if __name__ == "__main__":
    main()
