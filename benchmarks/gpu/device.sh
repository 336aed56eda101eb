#!/usr/bin/env bash
# The device-side steps of a staged GPU batch (staging: benchmarks/gpu/stage.sh), one per `run` of the device
# tool, from the repo root the run starts in. Results go to /root/res (the run's $OUT is emptied by every run);
# `poll` copies the small ones to $OUT.
#   benchmarks/gpu/device.sh start SCRIPT [ARGS]  carry .ray .stage/whl: install Ray and the wheels into /tmp/site
#                                                 (once), snapshot the tree to /root/repo, start SCRIPT there,
#                                                 detached, with DISTILLERY_MODELS=/root/models (it waits for READY)
#                                                 and DISTILLERY_DATA=/root/data
#   benchmarks/gpu/device.sh part                 carry one .stage/qwen/part-NN (the last one with .stage/qwen/SHA256
#                                                 and .stage/data, a copy of ../shared/data, which the device lacks,
#                                                 and .stage/agent, the agent environments' wheels, if staged):
#                                                 keep it; with SHA256, join the parts, check, touch READY
#   benchmarks/gpu/device.sh poll SECONDS         sleep, print progress and the log's tail, copy results to $OUT
# Issue the runs back to back: a machine idle for 30 s is given back, and /root with it.
set -euo pipefail
res=/root/res
case ${1:?start, part or poll} in
start)
  script=${2:?the batch script, e.g. benchmarks/gpu/qwen.sh}
  shift 2
  mkdir -p /tmp/site /root/stage/qwen $res /root/models
  if [ ! -d /tmp/site/ray ]; then
    tar -xJf .ray/ray-*.tar.xz -C /tmp/site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .stage/whl/*.whl
  fi
  rm -rf /root/repo && mkdir /root/repo
  cp -r $(ls -A | grep -v '^\.stage$\|^\.ray$\|^\.whl$\|^\.venv$') /root/repo/
  cd /root/repo
  PYTHONPATH=/root/repo:/tmp/site HF_HUB_OFFLINE=1 OUT=$res DISTILLERY_MODELS=/root/models DISTILLERY_DATA=/root/data \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True setsid nohup "$script" "$@" > $res/batch.log 2>&1 < /dev/null &
  sleep 5
  cat $res/batch.log
  python3 -c "import sys; sys.path[:0] = ['/tmp/site']; import ray, hydra, torch; print('ray', ray.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
  ;;
part)
  if [ -d .stage/data ]; then rm -rf /root/data && cp -r .stage/data /root/data; fi
  if [ -d .stage/agent ]; then  # the agent environments' wheels (benchmarks/gpu/stage.sh), with the last part
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .stage/agent/*.whl
  fi
  cp .stage/qwen/part-* /root/stage/qwen/
  ls -la /root/stage/qwen
  if [ -f .stage/qwen/SHA256 ]; then
    gguf=/root/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    cat /root/stage/qwen/part-* > $gguf
    echo "$(cat .stage/qwen/SHA256)  $gguf" | sha256sum -c
    rm -rf /root/stage/qwen
    touch /root/models/READY
  fi
  ;;
poll)
  sleep "${2:?seconds}"
  cat $res/done.txt 2>/dev/null || echo "(no stage done yet)"
  logs=$(ls $res/pipeline_*.log $res/spec_*.log $res/distill_*.log 2>/dev/null || true)
  if [ -n "$logs" ]; then tail -n 12 $logs; else tail -n 25 $res/batch.log; fi
  tail -n 2 $res/nvidia_smi.csv 2>/dev/null || true
  (cd $res && find . -type f -size -8M ! -path '*/checkpoints/*' ! -path '*/wandb/*' ! -name '*.safetensors' \
    ! -name '*.bin' ! -name '*.pt' -print0 | xargs -0r cp --parents -t "$OUT")
  ;;
*)
  echo "error: unknown step '$1' (start, part or poll)" >&2
  exit 2
  ;;
esac
