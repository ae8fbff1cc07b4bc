#!/bin/bash
# The GPU lab: the rows docs/benchmarks.md lists as waiting for a GPU, each beside the row it
# would replace, for the minutes a device session has left after the battery
# (../shared/gpu/README.md). From the project's root, after `../shared/gpu/prepare --benches`,
# in the same warm session as the battery:
#   run(command="bash benches/lab.sh", carry=[".gpu"], timeout_s=230)
# The parts run most decisive first (the GEMM versions, the convolution versions, attention, the
# training steps, then the PyTorch twins of the same shapes), criterion at its shortest settings,
# each part cut at its share of LAB_S seconds (default 200), so whatever ran comes back even
# when time runs out. Logs under $OUT as lab-<part>.log; each row's name and time are echoed.
# Which version wins a family decides its default (`cuda::gemm`'s and attention's setters).
set -u
cd "$(dirname "$0")/.." || exit 2
OUTDIR=${OUT:-/tmp/gpu-out}; mkdir -p "$OUTDIR"
S=${LAB_S:-200}
QUICK=(--warm-up-time 0.3 --measurement-time 1 --noplot)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUTDIR/lab-card.txt"
# Executables carried xz-compressed (a call carries 64 MiB; docs/benchmarks.md) are unpacked first.
(cd .gpu/bin && for f in *.xz; do if [ -e "$f" ]; then xz -d -f "$f" & fi; done; wait)

# part NAME SHARE_PERCENT COMMAND...: runs COMMAND for at most SHARE_PERCENT of S seconds.
part() {
  local name=$1 share=$2; shift 2
  echo "=== $name (at most $((S * share / 100))s)"
  timeout -k 5 $((S * share / 100)) "$@" > "$OUTDIR/lab-$name.log" 2>&1
  local rc=$?
  # criterion prints a row's name, then (on the same line or the next) its time
  grep -B1 "time:" "$OUTDIR/lab-$name.log" | grep -v "^--$"
  echo "=== $name: exit $rc"
}

# f32 GEMM versions 1-5 and TF32 versions 1-3 at 4096³, and the 16-bit tensor-core versions
part gemm 22 .gpu/bin/bench-ops --bench "${QUICK[@]}" 'matmul_(f32|tf32|bf16)'
# f32 convolution versions 1-3, TF32 on tensor-core convolution versions 1-2, bf16 versions 1-2,
# the direct grad-input kernel (alexnet_c1), and LeNet-5's step, eager and as a CUDA graph
part conv 20 .gpu/bin/bench-conv --bench "${QUICK[@]}" 'conv2d_(resnet_3x3|alexnet_c1)/|lenet5_sgd_momentum_batch[0-9]+/cuda'
# f32 attention versions 1-2 and the bf16 rows
part attention 12 .gpu/bin/bench-attention --bench "${QUICK[@]}" 'attention/'
# the MLP's step, eager and as a CUDA graph; the GPT steps (f32 with 3xTF32 products and
# attention, bf16 with each tensor-core GEMM version)
part steps 18 .gpu/bin/bench-train_step --bench "${QUICK[@]}" '(mlp_784_512_512_10_adam_batch[0-9]+|char_gpt_adamw_step)/cuda'
# the PyTorch twins of the same shapes, in the same session
part peer-matmul 12 python3 benches/peer/matmul.py
part peer-conv 16 python3 benches/peer/conv.py
