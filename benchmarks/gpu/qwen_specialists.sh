#!/usr/bin/env bash
# The Qwen2.5-Coder-0.5B GSM8K and MBPP specialists alone (12 GRPO steps each, NVFP4 rollouts + QAT), each evaluated
# on its whole test set before and after (greedy, strict and lenient): what ran on one H200 on 2026-12-06 after the
# pipeline's first attempt ran out of GPU memory (results in benchmarks/results/qwen_specialists_h200/). Staged as
# benchmarks/gpu/qwen.sh is (benchmarks/gpu/device.sh); run from the repo root with the GPU wheels on PYTHONPATH,
# DISTILLERY_MODELS and DISTILLERY_DATA set. That run had micro-batches of 8 and no TF32 (pass trainer.tf32=true
# as an extra argument for the experiment's current setting).
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
source "$(dirname "$0")/batch.sh"  # $out, $models, gpu.txt, note, wait_for_model
# beside the staging: the W4A16 kernel's GPU tests (benchmarks/gpu/qwen.sh does the same)
(timeout 240 python -m pytest -q -p no:cacheprovider -m gpu tests/test_fp4_triton.py > "$out/gpu_tests.log" 2>&1
 note "fp4 kernel gpu tests rc=$? ($(tail -n 1 "$out/gpu_tests.log"))") &
wait_for_model
for spec in ${SPECS:-gsm8k mbpp}; do  # SPECS=mbpp: the code specialist alone
  python -m jobs.train_specialist specialist=$spec run_name=s-$spec model=qwen2.5-coder-0.5b fp4=nvfp4 \
    rollout.dtype=bfloat16 logger=disabled runs_root="$out/runs2" steps=12 prompts_per_step=32 eval_every=0 \
    eval_samples=0 specialist.num_eval_tasks=0 trainer.lr=2e-6 trainer.num_minibatches=4 trainer.micro_batch_size=8 \
    rollout.max_new_tokens=384 rollout.max_batch_size=512 "$@" > "$out/spec_$spec.log" 2>&1
  note "spec $spec rc=$?"
done
