#!/usr/bin/env bash
# The GPU work of this project, sized for one call of a lent GPU machine (10 minutes a command, 15 minutes
# of device time a session with the machine's start). TASK=cifar10 (the default), for one seed:
#   1. the tests marked gpu (training steps under CUDA's sync debug mode, the device path against the CPU)
#                                                                            -> $OUT/gpu-tests.log
#   2. benchmarks/cifar10_resnet20.py: FP, then uniform and LCQ at W2/A2, W3/A3, W4/A4, stopped after
#      BUDGET_S - 100 s if unfinished, then tabulated with --report        -> $OUT/cifar10-resnet20-seedN.json
#      and its run directory packed (checkpoints, metrics, logs)            -> $OUT/cifar10-resnet20-short-seedN.tar.gz
#      (unpack that into runs/ and carry runs/cifar10-resnet20-short-seedN: the next call resumes it)
#   3. benchmarks/quantizer_speed.py on the GPU in the time left            -> $OUT/quantizer_speed-cuda.json
# Commit the seed's result as benchmarks/results/cifar10-resnet20-seedN.json; benchmarks/cifar10_seeds.py averages
# the seeds.
# TASK=ablations, once the three seeds are in (the paper's ablations on CIFAR-10 ResNet-20, over several calls):
#   1. as above;
#   2. benchmarks/ablations.py --schedule short (FP 40 epochs per seed, 54 quantized runs of 15 epochs, six
#      side by side), stopped after BUDGET_S - 60 s, every finished run recorded at once -> $OUT/ablations-cifar10.json
#      (it starts from benchmarks/results/ablations-cifar10.json: commit it there after each call), and the FP
#      and unfinished runs packed                                           -> $OUT/ablations-cifar10-runs.tar.gz
#      (unpack that into runs/ and carry runs/ablations-cifar10: the next call goes on from them).
# Usage, from the repository root, with the data copied into the checkout (a git-ignored data/):
#   OUT=DIR bash benchmarks/gpu_session.sh data/cifar10-jpeg-q75.tar.gz [SEED [BUDGET_S]]
#   TASK=ablations OUT=DIR bash benchmarks/gpu_session.sh data/cifar10-jpeg-q75.tar.gz [SEED [BUDGET_S]]
#                                                           (SEED unused there: every seed runs)
#   DEVICE=cpu OUT=DIR bash benchmarks/gpu_session.sh ...   rehearses it on the CPU (TASK=cifar10: --tiny, few
#   repetitions; TASK=ablations: --schedule quick, seed 0, the outer-width table, on the DATA given)
#   RUNS=DIR moves the run directories (default runs/); PYTHON=... names the interpreter (default python3)
# Every step has its deadline; the exit status is the task's benchmark's (0: every run finished).
set -u -o pipefail
DATA=${1:?usage: OUT=DIR bash benchmarks/gpu_session.sh CIFAR10_DIR_OR_TAR [SEED [BUDGET_S]]}
SEED=${2:-0}
BUDGET_S=${3:-570}
OUT=${OUT:?set OUT to the folder for the results}
DEVICE=${DEVICE:-cuda}
TASK=${TASK:-cifar10}
case $TASK in cifar10|ablations) ;; *) echo "gpu_session.sh: TASK must be cifar10 or ablations, not $TASK" >&2; exit 2;; esac
RUNS=${RUNS:-runs}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
PY=${PYTHON:-python3}
start=$(date +%s)
until_end() { local s=$((BUDGET_S - ($(date +%s) - start) - $1)); echo $((s > 1 ? s : 1)); }   # s, less $1

mkdir -p "$OUT"
timeout 60 "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" | tee "$OUT/machine.txt"

timeout 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_train_step_device.py tests/test_quant_device.py \
    2>&1 | tee "$OUT/gpu-tests.log"

if [ "$TASK" = ablations ]; then
    json=$OUT/ablations-cifar10.json
    [ -f benchmarks/results/ablations-cifar10.json ] && cp benchmarks/results/ablations-cifar10.json "$json"
    options=(--dataset cifar10 --model resnet20 --data-dir "$DATA" --device "$DEVICE" --out "$RUNS/ablations-cifar10"
             --json-out "$json")
    if [ "$DEVICE" = cpu ]; then
        options+=(--schedule quick --seeds 0 --tables outer --jobs 2 --batch-size 50 --eval-images 8)
    else
        options+=(--schedule short --jobs 6)
    fi
    timeout -s INT -k 30 $(until_end 60) "$PY" benchmarks/ablations.py "${options[@]}" 2>&1 | tee "$OUT/ablations.log"
    status=$?
    # what the next call needs: each seed's FP run and the runs not yet recorded in the results file
    timeout 30 "$PY" - "$json" "$RUNS" ablations-cifar10 "$OUT/ablations-cifar10-runs.tar.gz" <<'PACK'
import json, sys, tarfile
from pathlib import Path
results, runs, name, archive = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
if not (runs / name).is_dir():
    sys.exit(f"gpu_session.sh: nothing to pack: {runs / name} was not made (ablations.py stopped before its first "
             "run: see ablations.log)")
recorded = json.loads(results.read_text())["results"] if results.exists() else {}
done = {Path(r["out"]).resolve() for seed in recorded.values() for label, r in seed.items() if label != "fp"}
with tarfile.open(archive, "w:gz") as tar:       # (a directory left out is left out whole)
    tar.add(runs / name, arcname=name, filter=lambda info: None if (runs / info.name).resolve() in done else info)
PACK
else
    run=cifar10-resnet20-short-seed$SEED
    json=$OUT/cifar10-resnet20-seed$SEED.json
    options=(--device "$DEVICE" --data-dir "$DATA" --seed "$SEED" --out "$RUNS/$run")
    [ "$DEVICE" = cpu ] && options+=(--tiny)
    timeout -s INT -k 20 $(until_end 100) "$PY" benchmarks/cifar10_resnet20.py "${options[@]}" --json-out "$json" \
        2>&1 | tee "$OUT/cifar10.log"
    status=$?
    if [ $status -ne 0 ]; then           # stopped or failed: tabulate what the runs reached
        timeout 60 "$PY" benchmarks/cifar10_resnet20.py "${options[@]}" --report --json-out "$json" 2>&1 \
            | tee -a "$OUT/cifar10.log"
    fi
    timeout 60 tar czf "$OUT/$run.tar.gz" -C "$RUNS" "$run"

    reps=(--reps 20 --steps 10)
    [ "$DEVICE" = cpu ] && reps=(--reps 2 --steps 2 --warmup 1)
    timeout -s INT -k 10 $(until_end 10) "$PY" benchmarks/quantizer_speed.py --device "$DEVICE" "${reps[@]}" \
        --json-out "$OUT/quantizer_speed-$DEVICE.json" 2>&1 | tee "$OUT/quantizer_speed.log"
fi
echo "gpu_session.sh: $(($(date +%s) - start)) s; $TASK run status $status"
exit $status
