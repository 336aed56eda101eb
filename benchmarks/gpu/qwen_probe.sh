#!/usr/bin/env bash
# Sizing probe for benchmarks/gpu/qwen.sh, when less than a whole GPU session is left: two short specialist runs
# on Qwen2.5-Coder-0.5B-Instruct with the experiment's settings (NVFP4 rollouts served in bf16, QAT), each
# evaluated on its whole held-out set at the end -- the RL step time and the full-eval time per domain, from
# which the pipeline's stage counts are chosen. Staged and started as qwen.sh is (benchmarks/gpu/stage.sh).
set -uo pipefail
source "$(dirname "$0")/batch.sh"  # $out, $models, gpu.txt, note, wait_for_model
wait_for_model
common=(model=qwen2.5-coder-0.5b fp4=nvfp4 rollout.dtype=bfloat16 logger=disabled runs_root="$out/runs"
        steps=2 prompts_per_step=32 eval_every=0 eval_samples=0 specialist.num_eval_tasks=0
        trainer.lr=2e-6 trainer.num_minibatches=4 trainer.micro_batch_size=8 trainer.tf32=true
        rollout.max_new_tokens=384 rollout.max_batch_size=1024)
for spec in gsm8k mbpp; do
  python -m jobs.train_specialist specialist=$spec run_name=probe-$spec "${common[@]}" > "$out/probe_$spec.log" 2>&1
  note "probe $spec rc=$?"
done
note "all"
