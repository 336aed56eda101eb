#!/usr/bin/env bash
# README "Agent specialists on real environments": Qwen2.5-Coder-0.5B-Instruct as a BFCL specialist and a
# TextWorld specialist (GRPO, NVFP4 rollouts + QAT, tools in Qwen's own <tool_call> format), each evaluated greedy on
# its held-out set before and after, then each distilled into a student from the base (on-policy, full-vocabulary
# reverse KL), which the distillation job evaluates beside its base and teacher. The two domains run side by side
# (their rollouts and training interleave on the GPU). One detached batch on one GPU,
# staged as benchmarks/gpu/qwen.sh is (benchmarks/gpu/device.sh start benchmarks/gpu/qwen_agents.sh, carrying .ray
# .stage/whl; then `device.sh part` per .stage/qwen/part-NN, the last also carrying .stage/qwen/SHA256 and
# .stage/agent, the wheels of textworld and bfcl-eval). Progress in done.txt.
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
source "$(dirname "$0")/batch.sh"  # $out, $models, gpu.txt, note, wait_for_model
wait_for_model  # the model's last part brings TextWorld's and BFCL's wheels
# the GGUF converted once, before two jobs would both start converting it
python -c "from pathlib import Path; from rl.models import gguf_model_dir; gguf_model_dir(Path('$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf'))" \
  > "$out/convert.log" 2>&1
note "model converted rc=$?"
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 5 > "$out/nvidia_smi.csv" &
smi=$!
qwen=(model=qwen2.5-coder-0.5b fp4=nvfp4 rollout.dtype=bfloat16 trainer.tf32=true logger=disabled
      trainer.micro_batch_size=4)  # 4: two jobs share the GPU (a trainer's peak is its widest micro-batch)
rl=(eval_samples=0 eval_every=0 trainer.lr=3e-6 trainer.num_minibatches=4 rollout.max_batch_size=512)
student() {  # the student of one specialist, evaluated on its held-out set (n: 0 = all) beside base and teacher
  python -m jobs.distill run_name=student-$1 "~distill.teachers.math" "~distill.teachers.code" distill.teachers.agent=$1 \
    "${qwen[@]}" runs_root="$out/runs_$1" steps=${DISTILL_STEPS:-10} prompts_per_step=32 distill.lr=8e-6 \
    distill.num_eval_tasks=$2 distill.max_turns=6 rollout.max_new_tokens=256 rollout.max_batch_size=1024 \
    > "$out/distill_$1.log" 2>&1
  note "distill $1 rc=$?"
}
bfcl() {
  python -m jobs.train_specialist specialist=bfcl run_name=bfcl "${qwen[@]}" "${rl[@]}" runs_root="$out/runs_bfcl" \
    steps=${BFCL_STEPS:-20} prompts_per_step=32 specialist.num_eval_tasks=0 rollout.max_new_tokens=256 \
    > "$out/spec_bfcl.log" 2>&1
  note "spec bfcl rc=$?"
  student bfcl 0
}
textworld() {  # the games compiled on the CPUs into the cache the jobs read, then the specialist and its student
  python -c "from specialists import text_games as t; t.games(t.game_seeds(${TW_TRAIN:-96}, 'train', 0, (1, 2, 3)) + t.game_seeds(48, 'heldout', 0, (1, 2, 3)))" \
    > "$out/games.log" 2>&1
  note "textworld games rc=$?"
  python -m jobs.train_specialist specialist=textworld run_name=textworld "${qwen[@]}" "${rl[@]}" \
    runs_root="$out/runs_textworld" steps=${TW_STEPS:-8} prompts_per_step=16 specialist.dense_reward=true \
    specialist.num_train_tasks=${TW_TRAIN:-96} specialist.max_turns=6 rollout.max_new_tokens=64 \
    > "$out/spec_textworld.log" 2>&1
  note "spec textworld rc=$?"
  student textworld 48
}
# the two domains side by side (each job its own Ray instance and registry; DOMAINS=bfcl: BFCL only)
bfcl &
chains=($!)
if [[ " ${DOMAINS:-bfcl textworld} " == *" textworld "* ]]; then textworld & chains+=($!); fi
wait "${chains[@]}"
kill "$smi"
note "all"
