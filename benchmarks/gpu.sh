#!/bin/bash
# GPU throughput, for when a GPU is lent: images/s certified at 256x256 with n=100 for
# the paper's path (one draw per forward pass, fp32) vs certframe's batched +
# mixed-precision path, measured in ONE run on the same card (see gpu_throughput.py).
#
#   bash benchmarks/gpu.sh            # writes benchmarks/results/gpu.txt
#
# Also checks, on CUDA, that the votes need no host sync per batch
# (torch.cuda.set_sync_debug_mode raises on a synchronising call) and that
# mixed precision is what `auto` chooses there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
mkdir -p benchmarks/results
OUT=${OUT_FILE:-benchmarks/results/gpu.txt}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python - <<'PY'
import torch
from certframe.accelerate import Acceleration
from certframe.sampler import NoiseVoter
from certframe.smoothing import SmoothedSegmenter
from certframe.registry import get_registry
assert torch.cuda.is_available(), "no CUDA device"
print("[gpu] auto options on cuda:", Acceleration().resolve("cuda").as_dict())
import warnings
seg = get_registry().create("segmenter", "monai", weights="synthetic-lung").cuda().eval()
x = torch.rand(1, 256, 256, device="cuda")
voter = SmoothedSegmenter(seg, None, 0.25).voter(x, batch_size=16)
voter.counts("warm", 16)
torch.cuda.synchronize()
syncs = []
for n in (16, 64):                      # 1 batch, then 4 batches
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        voter.counts("estimation", n)
        torch.cuda.set_sync_debug_mode(0)
    syncs.append(sum("synchroniz" in str(w.message) for w in caught))
print(f"[gpu] host syncs while counting votes: 1 batch {syncs[0]}, 4 batches {syncs[1]} "
      f"({'none per batch' if syncs[0] == syncs[1] else 'PER-BATCH SYNC'})")
PY
  python benchmarks/gpu_throughput.py --images "${IMAGES:-16}" --size 256 --n0 10 --n 100 --device cuda
  python benchmarks/gpu_throughput.py --images "${IMAGES:-16}" --size 256 --n0 10 --n 100 --device cuda --no-denoiser
} 2>&1 | tee "$OUT"
