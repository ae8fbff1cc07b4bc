"""PyTorch twin of `nabla train --model gpt --preset cpu|gpu`: nanoGPT's character-level GPT on
the shipped plays (first 90% to train, last 10% to validate), with the recipe of
src/train/text.rs: pre-LayerNorm blocks, GELU MLP of 4x width, tied head, weights from
N(0, 0.02) (residual projections 0.02/sqrt(2 layers)), AdamW (betas 0.9/0.99, weight decay 0.1 on 2-D parameters only), linear warm-up
then cosine to min_lr, gradient clipping at 1.0, train and validation loss over 200 batches
every eval_every steps. Prints each report and the wall time.

    python3 benches/peer/char_gpt.py --preset cpu --threads 2
    python3 benches/peer/char_gpt.py --preset gpu --device cuda
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "cpu": dict(layers=4, heads=4, width=128, context=64, batch=12, steps=2000, dropout=0.0, eval_every=250),
    "gpu": dict(layers=6, heads=6, width=384, context=256, batch=64, steps=5000, dropout=0.2, eval_every=500),
}


class Block(nn.Module):
    def __init__(self, width, heads, dropout):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.c_fc, self.mlp_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0)
        x = x + self.drop(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)))))


class Gpt(nn.Module):
    def __init__(self, vocab, p):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, p["width"]), nn.Embedding(p["context"], p["width"])
        self.drop = nn.Dropout(p["dropout"])
        self.h = nn.ModuleList(Block(p["width"], p["heads"], p["dropout"]) for _ in range(p["layers"]))
        self.ln_f = nn.LayerNorm(p["width"])
        self.lm_head = nn.Linear(p["width"], vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, w in self.named_parameters():
            if name.endswith("proj.weight"):  # nanoGPT's scaled init of the residual projections
                nn.init.normal_(w, 0.0, 0.02 / math.sqrt(2 * p["layers"]))
            elif w.dim() == 2:
                nn.init.normal_(w, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(w)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(t, device=idx.device)))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--data", default="data/shakespeare/plays.txt")
    # The twin of `nabla train --precision bf16`: the products under torch.autocast in bf16.
    parser.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    args = parser.parse_args()
    p = dict(PRESETS[args.preset])
    if args.steps:
        p["steps"] = args.steps
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    text = open(args.data, encoding="utf-8").read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(len(ids) * 0.9)
    train, val = ids[:cut], ids[cut:]
    model = Gpt(len(chars), p).to(dev)
    decay = [w for w in model.parameters() if w.dim() >= 2]
    no_decay = [w for w in model.parameters() if w.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    warmup, steps, lr, min_lr = 100, p["steps"], 1e-3, 1e-4

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))

    def batch(data):
        i = torch.randint(len(data) - p["context"] - 1, (p["batch"],))
        x = torch.stack([data[j:j + p["context"]] for j in i])
        y = torch.stack([data[j + 1:j + 1 + p["context"]] for j in i])
        return x.to(dev), y.to(dev)

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    @torch.no_grad()
    def estimate(data):
        model.eval()
        with autocast():
            loss = sum(model(*batch(data)).item() for _ in range(200)) / 200
        model.train()
        return loss

    start = time.perf_counter()
    for step in range(steps + 1):
        if step % p["eval_every"] == 0 or step == steps:
            tl, vl = estimate(train), estimate(val)
            print(f"step {step:5d}/{steps}  train loss {tl:.4f}  val loss {vl:.4f} ({vl / math.log(2):.3f} bits/char)  "
                  f"{time.perf_counter() - start:.1f}s", flush=True)
        if step == steps:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with autocast():
            loss = model(*batch(train))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    print(f"pytorch {torch.__version__} on {dev} ({args.threads} threads, {args.precision}): {steps} steps, "
          f"validation loss {vl:.4f} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
