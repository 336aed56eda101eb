#!/usr/bin/env bash
# The FP4 W4A16 kernel's GPU tests alone, in one device run (carry .stage/whl, made by benchmarks/gpu/stage.sh,
# for pytest): kernel == torch reference across formats, shapes, bias and split-K, rows past 32-bit offsets (the
# MBPP eval's failure of 2026-12-06), and the tuning file the next process reads. Output in $OUT.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out" /tmp/site
python3 -m pip install -q --no-index --no-deps --target /tmp/site .stage/whl/{pytest,pluggy,iniconfig,pygments}-*.whl
export PYTHONPATH=$PWD:/tmp/site DISTILLERY_CACHE=/tmp/distillery-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
timeout 420 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fp4_triton.py 2>&1 | tee "$out/kernel_tests.log" | tail -n 30
cp /tmp/distillery-cache/triton_w4a16/*.json "$out/" 2>/dev/null && ls "$out"
