#!/usr/bin/env bash
# One script a GPU owner runs: tests with CUDA present, certify throughput against its forward
# floor, training speed, fp32-vs-bf16 agreement, CPU-vs-CUDA noise, torchrun vs one process.
#
#   bash benchmarks/gpu.sh OUT                       # on a CUDA machine: at most 6 minutes (step limits)
#   bash benchmarks/gpu.sh --device cpu --quick OUT  # the same steps, small, in about a minute (CI runs it)
#
# Needs only an environment where `import certframe` works (no network; it installs nothing).
# Every step writes its own file under OUT (pytest.txt, certify.json, training.json, noise.json,
# torchrun.json, env.json, and each step's log); steps.txt records each step's exit code and
# seconds, and the summary table is printed last (and kept in OUT/summary.txt). A step that
# fails or runs out of its time is reported as such and the others still run; the script exits
# non-zero if any step failed.
set -uo pipefail
DEVICE=cuda
QUICK=0
OUT=
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "gpu.sh: unknown option $1 (expected --device DEVICE, --quick, OUT)" >&2; exit 2 ;;
    *) OUT="$1"; shift ;;
  esac
done
if [ -z "$OUT" ]; then echo "gpu.sh: give an output folder: bash benchmarks/gpu.sh [--device cpu] [--quick] OUT" >&2; exit 2; fi
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/steps.txt"
export PYTHONUNBUFFERED=1
if ! python -c "import certframe" 2>"$OUT/import.txt"; then
  echo "gpu.sh: 'import certframe' fails here (see $OUT/import.txt): install certframe first" >&2; exit 2
fi
if [ "$DEVICE" != cpu ] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: --device $DEVICE but torch sees no CUDA device (use --device cpu)" >&2; exit 2
fi
FAILED=0
step() {   # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "[gpu.sh] $name (limit ${limit}s) ..." >&2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local what=ok
  if [ $rc -eq 124 ]; then what="TIMED OUT"; FAILED=1; elif [ $rc -ne 0 ]; then what="FAILED rc $rc"; FAILED=1; fi
  echo "$name $what $((SECONDS - t0))s" >> "$OUT/steps.txt"
}

step env 60 python benchmarks/gpu_checks.py env "$OUT" --device "$DEVICE"
if [ $QUICK -eq 1 ]; then
  # the tests of the device-dependent pieces (CI runs the whole suite separately)
  step pytest 120 python -m pytest -rf -q -p no:cacheprovider tests/test_philox.py -k \
       "known_answers or golden or cpu_and_cuda or counter_layout or compiled_cpu_loop"
  step certify 120 python benchmarks/certify_throughput.py --device "$DEVICE" --sizes 32 --ns 20 --images 1 \
       --paper-images 1 --json "$OUT/certify.json"
  step training 90 python benchmarks/training_speed.py --device "$DEVICE" --seconds 2 --json "$OUT/training.json"
else
  # every test, CUDA present: the ones that need CUDA run instead of skipping. Workers x threads
  # = cores: 14 workers of 16 threads each on 16 cores ran out of their time on an H200 machine.
  WORKERS=""
  CORES=$(python -c "import os; print(os.cpu_count() or 2)")
  if python -c "import xdist" 2>/dev/null && [ "$CORES" -ge 4 ]; then WORKERS="-n $((CORES / 2))"; fi
  step pytest 100 env OMP_NUM_THREADS=2 python -m pytest -rf -q -p no:cacheprovider --durations=15 $WORKERS
  step certify 80 python benchmarks/certify_throughput.py --device "$DEVICE" --sizes 128,256 --ns 100,1000 \
       --images 6 --paper-images 2 --json "$OUT/certify.json"
  step training 70 python benchmarks/training_speed.py --device "$DEVICE" --seconds 25 --json "$OUT/training.json"
fi
cp "$OUT/pytest.log" "$OUT/pytest.txt" 2>/dev/null
step noise 25 python benchmarks/gpu_checks.py noise "$OUT" --device "$DEVICE"
step torchrun 50 python benchmarks/gpu_checks.py torchrun "$OUT" --device "$DEVICE" $([ $QUICK -eq 1 ] && echo --quick)
python benchmarks/gpu_checks.py summary "$OUT" | tee "$OUT/summary.txt"
exit $FAILED
