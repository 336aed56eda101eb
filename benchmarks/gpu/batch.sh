# Sourced by the GPU batch scripts (benchmarks/gpu/qwen*.sh): where results go ($OUT, else gpu-out), the GPU's name
# in gpu.txt, and two helpers: `note TEXT` appends "TEXT <seconds since start> s" to done.txt (the progress that
# benchmarks/gpu/device.sh poll prints); `wait_for_model` waits for $DISTILLERY_MODELS/READY, which the last
# `device.sh part` touches once the model's parts are joined and checked.
out=${OUT:-gpu-out}
models=${DISTILLERY_MODELS:?set DISTILLERY_MODELS to the folder that will hold the GGUF}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
start=$(date +%s)
note() { echo "$1 $(( $(date +%s) - start )) s" >> "$out/done.txt"; }
wait_for_model() {
  until [ -f "$models/READY" ]; do sleep 5; done
  note "model staged"
}
