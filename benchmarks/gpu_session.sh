#!/usr/bin/env bash
# The GPU work of this project in one command, sized for one call of a lent GPU machine (10 minutes a
# command, 15 minutes of device time a session with the machine's start):
#   1. the tests marked gpu (training steps under CUDA's sync debug mode)          -> $OUT/gpu-tests.log
#   2. benchmarks/cifar10_resnet20.py: FP, then uniform and LCQ at W2/A2, W3/A3, W4/A4, stopped after
#      BUDGET_S - 100 s if unfinished, then tabulated with --report        -> $OUT/cifar10-resnet20-seedN.json
#      and its run directory packed (checkpoints, metrics, logs)            -> $OUT/cifar10-resnet20-short-seedN.tar.gz
#      (unpack that into runs/ and carry runs/cifar10-resnet20-short-seedN: the next call resumes it)
#   3. benchmarks/quantizer_speed.py on the GPU in the time left            -> $OUT/quantizer_speed-cuda.json
# Commit the seed's result as benchmarks/results/cifar10-resnet20-seedN.json; benchmarks/cifar10_seeds.py averages
# the seeds.
# Usage, from the repository root, with the data copied into the checkout (a git-ignored data/):
#   OUT=DIR bash benchmarks/gpu_session.sh data/cifar10-jpeg-q75.tar.gz [SEED [BUDGET_S]]
#   DEVICE=cpu OUT=DIR bash benchmarks/gpu_session.sh ...   rehearses it on the CPU (--tiny, few repetitions)
#   RUNS=DIR moves the run directories (default runs/); PYTHON=... names the interpreter (default python3)
# Every step has its deadline; the exit status is the CIFAR-10 run's (0: every run finished).
set -u -o pipefail
DATA=${1:?usage: OUT=DIR bash benchmarks/gpu_session.sh CIFAR10_DIR_OR_TAR [SEED [BUDGET_S]]}
SEED=${2:-0}
BUDGET_S=${3:-570}
OUT=${OUT:?set OUT to the folder for the results}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-runs}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
PY=${PYTHON:-python3}
start=$(date +%s)
until_end() { local s=$((BUDGET_S - ($(date +%s) - start) - $1)); echo $((s > 1 ? s : 1)); }   # s, less $1

mkdir -p "$OUT"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" | tee "$OUT/machine.txt"

timeout 90 $PY -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_train_step_device.py 2>&1 | tee "$OUT/gpu-tests.log"

run=cifar10-resnet20-short-seed$SEED
json=$OUT/cifar10-resnet20-seed$SEED.json
options=(--device "$DEVICE" --data-dir "$DATA" --seed "$SEED" --out "$RUNS/$run")
[ "$DEVICE" = cpu ] && options+=(--tiny)
timeout -s INT -k 20 $(until_end 100) $PY benchmarks/cifar10_resnet20.py "${options[@]}" --json-out "$json" \
    2>&1 | tee "$OUT/cifar10.log"
status=$?
if [ $status -ne 0 ]; then           # stopped or failed: tabulate what the runs reached
    timeout 60 $PY benchmarks/cifar10_resnet20.py "${options[@]}" --report --json-out "$json" 2>&1 | tee -a "$OUT/cifar10.log"
fi
tar czf "$OUT/$run.tar.gz" -C "$RUNS" "$run"

reps=(--reps 20 --steps 10)
[ "$DEVICE" = cpu ] && reps=(--reps 2 --steps 2 --warmup 1)
timeout -s INT -k 10 $(until_end 10) $PY benchmarks/quantizer_speed.py --device "$DEVICE" "${reps[@]}" \
    --json-out "$OUT/quantizer_speed-$DEVICE.json" 2>&1 | tee "$OUT/quantizer_speed.log"
echo "gpu_session.sh: $(($(date +%s) - start)) s; CIFAR-10 run status $status"
exit $status
