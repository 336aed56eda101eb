#!/usr/bin/env bash
# README "Agent specialists on real environments": Qwen2.5-Coder-0.5B-Instruct as a BFCL specialist and a
# TextWorld specialist (GRPO, NVFP4 rollouts + QAT, tools in Qwen's own <tool_call> format), each evaluated greedy on
# its held-out set before and after, then each distilled into a student from the base (on-policy, full-vocabulary
# reverse KL), which the distillation job evaluates beside its base and teacher. One detached batch on one GPU,
# staged as benchmarks/gpu/qwen.sh is (benchmarks/gpu/device.sh start benchmarks/gpu/qwen_agents.sh, carrying .ray
# .stage/whl; then `device.sh part` per .stage/qwen/part-NN, the last also carrying .stage/qwen/SHA256 and
# .stage/agent, the wheels of textworld and bfcl-eval). Progress in done.txt.
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
source "$(dirname "$0")/batch.sh"  # $out, $models, gpu.txt, note, wait_for_model
wait_for_model  # the model's last part brings TextWorld's and BFCL's wheels
# the TextWorld games, compiled on the CPUs into the cache the jobs read, while BFCL trains
(python -c "from specialists import text_games as t; t.games(t.game_seeds(${TW_TRAIN:-96}, 'train', 0, (1, 2, 3)) + t.game_seeds(48, 'heldout', 0, (1, 2, 3)))" \
  > "$out/games.log" 2>&1; note "textworld games rc=$?") &
games=$!
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 5 > "$out/nvidia_smi.csv" &
smi=$!
qwen=(model=qwen2.5-coder-0.5b fp4=nvfp4 rollout.dtype=bfloat16 trainer.tf32=true logger=disabled runs_root="$out/runs")
rl=(eval_samples=0 eval_every=0 trainer.lr=3e-6 trainer.num_minibatches=4 trainer.micro_batch_size=8
    rollout.max_batch_size=512)
student() {  # the student of one specialist, evaluated on its held-out set (n: 0 = all) beside base and teacher
  python -m jobs.distill run_name=student-$1 "~distill.teachers.math" "~distill.teachers.code" distill.teachers.agent=$1 \
    "${qwen[@]}" steps=${DISTILL_STEPS:-6} prompts_per_step=32 distill.lr=8e-6 distill.num_eval_tasks=$2 \
    distill.max_turns=6 trainer.micro_batch_size=8 rollout.max_new_tokens=256 rollout.max_batch_size=1024 \
    > "$out/distill_$1.log" 2>&1
  note "distill $1 rc=$?"
}
# in order of what the device time may not cover: BFCL (specialist, student), then TextWorld
python -m jobs.train_specialist specialist=bfcl run_name=bfcl "${qwen[@]}" "${rl[@]}" steps=${BFCL_STEPS:-10} \
  prompts_per_step=32 specialist.num_eval_tasks=0 rollout.max_new_tokens=256 > "$out/spec_bfcl.log" 2>&1
note "spec bfcl rc=$?"
student bfcl 0
wait $games
[[ " ${DOMAINS:-bfcl textworld} " == *" textworld "* ]] || { kill "$smi"; note "all"; exit 0; }  # DOMAINS=bfcl: BFCL only
python -m jobs.train_specialist specialist=textworld run_name=textworld "${qwen[@]}" "${rl[@]}" \
  steps=${TW_STEPS:-8} prompts_per_step=16 specialist.dense_reward=true specialist.num_train_tasks=${TW_TRAIN:-96} \
  specialist.max_turns=6 rollout.max_new_tokens=64 > "$out/spec_textworld.log" 2>&1
note "spec textworld rc=$?"
student textworld 48
kill "$smi"
note "all"
