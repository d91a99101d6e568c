#!/usr/bin/env bash
# The GPU checks of issue 18 in one go, for a lent CUDA machine: the gpu-marked test (the demo catalogue
# built on CUDA against the CPU fp32 build), then bench/extraction.py --device cuda (ViT-B/32- and
# ViT-L/14-sized random CLIPs, 4096 photo-like 1000x800 JPEGs made there). Logs go to $OUT (or ./gpu-out).
#   bash bench/gpu_check.sh [--images N] [--repeats R] [any other bench/extraction.py argument]
# On a machine without CUDA the test skips and the bench stops with one line; IMAGESEARCH_GPU_CHECK_DEVICE=cpu
# runs the same steps on the CPU (a dry run of this script).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
device="${IMAGESEARCH_GPU_CHECK_DEVICE:-cuda}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
  echo "cores: $(nproc)"
  python3 -c 'import sys, torch, transformers, PIL, numpy
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), "transformers", transformers.__version__, "pillow", PIL.__version__,
      "numpy", numpy.__version__)'
} 2>&1 | tee "$out/machine.txt"

echo "== gpu-marked test"
python3 -m pytest tests/pipeline/test_gpu.py -q -rs -p no:cacheprovider 2>&1 | tee "$out/gpu_test.log"
test_rc=${PIPESTATUS[0]}

echo "== bench/extraction.py --device $device"
python3 bench/extraction.py --device "$device" --scaling-images 512 --repeats 2 "$@" 2> "$out/bench_stderr.log" \
  | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}
[ "$bench_rc" = 0 ] && tail -n 3 "$out/bench_stderr.log" || tail -n 40 "$out/bench_stderr.log"
echo "gpu test exit $test_rc, bench exit $bench_rc"
exit $(( test_rc || bench_rc ))
