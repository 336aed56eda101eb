#!/usr/bin/env bash
# README "A real model on one GPU": the whole pipeline on Qwen2.5-Coder-0.5B-Instruct (configs/experiment/
# qwen0.5b-gsm8k-mbpp.yaml) on one GPU, as one detached batch. Stage it as benchmarks/gpu/stage.sh says (the
# wheels and Ray, then the GGUF in parts: `benchmarks/gpu/stage.sh /path/to/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`
# cuts it into .stage/qwen/part-*), join the parts into $DISTILLERY_MODELS/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
# and touch READY beside it; this waits for READY. Run from the repo root with the GPU wheels on PYTHONPATH;
# writes the log, nvidia-smi samples and the report under ${OUT:-gpu-out}, progress in done.txt.
set -uo pipefail
# the trainer and the rollout share the GPU: let freed blocks be reused across sizes rather than stay reserved
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
source "$(dirname "$0")/batch.sh"  # $out, $models, gpu.txt, note, wait_for_model
# beside the staging and the base stage (the GGUF's conversion runs on the CPU): the W4A16 kernel's GPU tests (the
# int32-offset one is what broke the MBPP eval on 2026-12-06); a failure is reported, not fatal
(timeout 240 python -m pytest -q -p no:cacheprovider -m gpu tests/test_fp4_triton.py > "$out/gpu_tests.log" 2>&1
 note "fp4 kernel gpu tests rc=$? ($(tail -n 1 "$out/gpu_tests.log"))") &
wait_for_model
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 5 > "$out/nvidia_smi.csv" &
smi=$!
python -m jobs.pipeline +experiment=qwen0.5b-gsm8k-mbpp runs_root="$out/runs" run_name=qwen logger=disabled \
  "$@" > "$out/pipeline_qwen.log" 2>&1
note "pipeline rc=$?"
kill "$smi"
note "all"
