#!/usr/bin/env bash
# The checks that need a CUDA device, as one script for a machine lent for a few minutes:
# the machine, the CUDA tests (tests/test_gpu.py, skipped on CPU machines) and bench/gpu.py
# at full size. Uses the machine's python3 (its own torch); every step has its own time limit
# so a slow one cannot eat the others. Logs go to $OUT (or ./gpu-check) for the issue note.
#   bash bench/gpu_check.sh [PYTHON]
set -u
PY=${1:-python3}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() { # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, report time and status
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $((SECONDS - t0)) s"
    tail -n 25 "$OUT/$name.log"
}
step machine 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
    --format=csv; $PY -c 'import torch, torchvision, sys; print(sys.version.split()[0], \
    torch.__version__, torchvision.__version__, torch.cuda.get_device_name(), \
    torch.backends.cudnn.version(), torch.cuda.nccl.version())'; nproc"
step tests 240 "$PY" -m pytest tests/test_gpu.py -v -s -p no:cacheprovider
step bench 240 "$PY" bench/gpu.py
step hand 200 "$PY" bench/gpu.py --hand
