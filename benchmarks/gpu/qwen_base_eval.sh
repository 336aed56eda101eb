#!/usr/bin/env bash
# Qwen2.5-Coder-0.5B-Instruct's greedy GSM8K score on the whole test set (1,319) with FP4 off (bf16 rollouts), the
# number the NVFP4 rollout's base score is read against: a GSM8K job of one step at a learning rate that moves
# nothing, evaluated before and after (the two evals show the greedy noise). Staged as benchmarks/gpu/qwen.sh is
# (benchmarks/gpu/device.sh); ran on one H100 on 2026-12-07 (benchmarks/results/qwen_mbpp_h100_2026-12-07/bf16_gsm8k/).
set -uo pipefail
out=${OUT:-gpu-out}
python -m jobs.train_specialist specialist=gsm8k run_name=bf16-gsm8k model=qwen2.5-coder-0.5b fp4=${FP4:-none} \
  rollout.dtype=bfloat16 logger=disabled runs_root="$out/runs3" steps=1 prompts_per_step=8 eval_every=0 \
  eval_samples=0 specialist.num_eval_tasks=0 trainer.lr=1e-9 trainer.micro_batch_size=8 trainer.tf32=true \
  rollout.max_new_tokens=384 rollout.max_batch_size=512 "$@" > "$out/bf16.log" 2>&1
