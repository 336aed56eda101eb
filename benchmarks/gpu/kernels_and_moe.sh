#!/usr/bin/env bash
# One device run without a model to stage (carry .stage/whl; about 9 minutes on an H100: the two formats' matmul
# tables take ~160 s each): the W4A16 kernel's GPU tests, the FP4
# matmul benchmark (MXFP4 and NVFP4 against bf16, benchmarks/README.md's shapes) and the MoE decode row (issue
# "MoE specialists": a Qwen3-30B-A3B-shaped 4-layer stack, bf16 experts vs packed NVFP4 experts). Output in $OUT.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
benchmarks/gpu/kernel_tests.sh
# every staged wheel (Hydra among them: rl.config needs it), not only pytest's
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .stage/whl/*.whl
export PYTHONPATH=$PWD:/tmp/site DISTILLERY_CACHE=/tmp/distillery-cache
timeout 360 python3 -m benchmarks.fp4_matmul --fmt both --out "$out/fp4_matmul.json" 2>&1 | tee "$out/fp4_matmul.log" | tail -n 30
for batch in 32 128; do
  timeout 120 python3 -m benchmarks.moe_decode --layers 4 --batch $batch --new 64 --out "$out/moe_decode_b$batch.json" \
    2>&1 | tee -a "$out/moe_decode.log" | tail -n 3
done
