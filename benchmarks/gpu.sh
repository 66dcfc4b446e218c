#!/usr/bin/env bash
# GPU benchmarks in one command of under 10 minutes, from the project root, on a machine that has only
# the project tree, a CUDA build of torch and vitkit's dependencies:
#
#   python benchmarks/cifar_array.py pack          # once, where ../shared/data exists (14.7 MiB, ignored by git)
#   bash benchmarks/gpu.sh                         # on the GPU machine, with benchmarks/data/ carried there
#
# Parts, each under `timeout` so that one slow part cannot eat the others' time:
#   data        unpack benchmarks/data/cifar10-train-jpeg.npz into class folders (the original JPEG files)
#   tests       the fast (not slow) tests of training, engine options, models and augmentation, 109 of them;
#               their runs use --device auto, i.e. CUDA there (the suite has no CUDA-only tests)
#   speedrun    each of SPEEDRUN_RECIPES (cifar-fast, then cifar-hybrid) on CIFAR-10 (45,000 train / 5,000
#               held out) for SPEEDRUN_MINUTES each, bf16, compiled, one after the other; per recipe the time
#               at which held-out top-1 first reaches TARGET (0.94), or "not reached", its epochs, img/s,
#               share of the measured bf16 matrix-product peak and multi-crop TTA top-1
#   throughput  every recipe preset at its own size and batch, and vit_small_patch16_224 at 224 px, on
#               CUDA, bf16 autocast, compiled (benchmarks/throughput.py); gets the time that is left
# Results: benchmarks/results/gpu.json (and gpu.log), copied into $OUT when that is set.
# Knobs (environment): DEADLINE_S, DEVICE, TESTS_S, SPEEDRUN_RECIPES, SPEEDRUN_MINUTES, SPEEDRUN_SET (overrides
# for every recipe; default none: each preset carries its recipe),
# TARGET, TP_ROUNDS, TP_STEPS, TP_RECIPES, VIT_BATCH, COMPILE (0: eager), DATA_FILE, SKIP (part names),
# DATA_DIR (where the data is unpacked and the parts work, default benchmarks/data), RESULTS (default
# benchmarks/results).
# A dry run on a CPU, on a small file (cifar_array.py pack --limit 30 --out ...):
#   DEVICE=cpu COMPILE=0 SKIP=tests SPEEDRUN_MINUTES=0.1 TP_ROUNDS=1 TP_STEPS=1 VIT_BATCH=2 \
#       TP_RECIPES=cifar-mixer DATA_FILE=... bash benchmarks/gpu.sh
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
START=$SECONDS
DEADLINE_S=${DEADLINE_S:-550}
DEVICE=${DEVICE:-cuda}
TESTS_S=${TESTS_S:-75}
SPEEDRUN_RECIPES=${SPEEDRUN_RECIPES:-cifar-fast cifar-hybrid}
SPEEDRUN_MINUTES=${SPEEDRUN_MINUTES:-2}
SPEEDRUN_SET=${SPEEDRUN_SET:-}
TARGET=${TARGET:-0.94}
TP_ROUNDS=${TP_ROUNDS:-3}
TP_STEPS=${TP_STEPS:-20}
VIT_BATCH=${VIT_BATCH:-256}
TP_RECIPES=${TP_RECIPES:-}
COMPILE=${COMPILE:-1}
SKIP=${SKIP:-}
DATA_FILE=${DATA_FILE:-benchmarks/data/cifar10-train-jpeg.npz}
DATA_DIR=${DATA_DIR:-benchmarks/data}
RESULTS=${RESULTS:-benchmarks/results}
FULL=$DATA_DIR/cifar10-train
SMALL=$DATA_DIR/cifar10-small
WORK=$DATA_DIR/gpu-work # by default inside the project (ignored), so the log names no machine's paths
PARTS=$WORK/parts.tsv
rm -rf "$WORK"
mkdir -p "$RESULTS" "$WORK"
: >"$PARTS"
exec > >(tee "$RESULTS/gpu.log") 2>&1

export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
VITKIT_DATA="$(cd "$WORK" && pwd)/cache"
export VITKIT_DATA
PY=${PYTHON:-python3}

left() { echo $((DEADLINE_S - (SECONDS - START))); }
skipped() { [[ " $SKIP " == *" $1 "* ]]; }
# record PART STATUS SECONDS [NOTE]
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$PARTS"; echo "== $1: $2 (${3}s) ${4:-}"; }
# part NAME LIMIT_S COMMAND...: run under timeout, record ok / failed (rc) / timeout
part() {
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    if ((limit < 20)); then
        record "$name" skipped 0 "no time left"
        return 1
    fi
    echo "== $name (limit ${limit}s, $(left)s left): $*"
    timeout -k 10 "$limit" "$@"
    rc=$?
    if ((rc == 124 || rc == 137)); then
        record "$name" timeout $((SECONDS - t0)) "stopped at ${limit}s"
    elif ((rc != 0)); then
        record "$name" failed $((SECONDS - t0)) "exit $rc"
    else
        record "$name" ok $((SECONDS - t0))
    fi
    return "$rc"
}
min() { if (($1 < $2)); then echo "$1"; else echo "$2"; fi; }

echo "== $(date -u +%FT%TZ) deadline ${DEADLINE_S}s, device $DEVICE"
if ! "$PY" -c "import vitkit" 2>/dev/null; then
    "$PY" -m pip install --no-deps --no-build-isolation -q -e . || echo "vitkit is not importable and did not install"
fi
"$PY" - <<'EOF' || exit 1
import torch, vitkit
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
print("vitkit", vitkit.__version__)
EOF
if [[ $DEVICE == cuda* ]] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA device: set DEVICE=cpu for a dry run"
    exit 1
fi

# data: the carried file, else the shared folder itself when this machine has it
DATA=""
if [[ -f $DATA_FILE ]]; then
    part data 120 "$PY" benchmarks/cifar_array.py unpack --file "$DATA_FILE" --folder "$FULL" &&
        part data-small 60 "$PY" benchmarks/cifar_array.py unpack --file "$DATA_FILE" --folder "$SMALL" --limit 250 &&
        DATA=$FULL
elif [[ -d ../shared/data/cifar10-train ]]; then
    DATA=../shared/data/cifar10-train
    SMALL=../shared/data/cifar10-dev
    record data ok 0 "read ../shared/data/cifar10-train in place"
else
    record data failed 0 "neither $DATA_FILE nor ../shared/data/cifar10-train: run cifar_array.py pack and carry benchmarks/data"
fi

# tests: device-independent tests whose training runs pick CUDA through --device auto
if ! skipped tests; then
    part tests "$(min "$TESTS_S" $(($(left) - 300)))" env -u CI "$PY" -m pytest -q -m "not slow" -n 8 \
        -p no:cacheprovider --junitxml="$WORK/tests.xml" \
        tests/test_training_core.py tests/test_engine_options.py tests/test_train.py tests/test_models.py tests/test_augment.py
fi

# speedrun: the recipe against the clock on the held-out split; retried uncompiled if compiling broke it
if [[ -n $DATA ]] && ! skipped speedrun; then
    read -ra recipes <<<"$SPEEDRUN_RECIPES"
    budget_s=$(awk -v m="$SPEEDRUN_MINUTES" -v n="${#recipes[@]}" 'BEGIN { printf "%d", n * (m * 60 + 30) + 0.999 }')
    read -ra overrides <<<"$SPEEDRUN_SET" # KEY=VALUE words
    speed=(benchmarks/time_to_accuracy.py --data "$DATA" --minutes "$SPEEDRUN_MINUTES" --recipes "${recipes[@]}"
        --out "$WORK/speedrun" --set "${overrides[@]}" device="$DEVICE" amp=bf16)
    compiled=$([[ $COMPILE == 1 ]] && echo true || echo false)
    if ! part speedrun "$(min $((budget_s + 120)) $(($(left) - 150)))" "$PY" "${speed[@]}" compile="$compiled"; then
        if [[ $compiled == true && $(tail -n 1 "$PARTS" | cut -f 2) == failed ]] && (($(left) > budget_s + 150)); then
            part speedrun-eager "$(min $((budget_s + 120)) $(($(left) - 60)))" "$PY" "${speed[@]}" compile=false
        fi
    fi
fi

# throughput: vit_small_patch16_224 first (one process), then the recipes (one process), rows saved as they finish
if ! skipped throughput; then
    tp_data=${DATA:+$SMALL}
    tp=(benchmarks/throughput.py --data "${tp_data:-digits}" --device "$DEVICE" --amp bf16 --save-each
        --rounds "$TP_ROUNDS" --steps "$TP_STEPS")
    [[ $COMPILE == 1 ]] && tp+=(--compile)
    part throughput-vit "$(min 150 $(($(left) - 90)))" "$PY" "${tp[@]}" --presets --models vit_small_patch16_224 \
        --image-size 224 --batch-size "$VIT_BATCH" --json "$WORK/throughput-vit.json"
    recipes=${TP_RECIPES:-$("$PY" -c "from vitkit.models.presets import RECIPES; print(' '.join(p.name for p in RECIPES))")}
    # shellcheck disable=SC2086  # one word per recipe
    part throughput-recipes "$(($(left) - 10))" "$PY" "${tp[@]}" --presets $recipes --json "$WORK/throughput-recipes.json"
fi

"$PY" benchmarks/gpu_collect.py --work "$WORK" --target "$TARGET" --json "$RESULTS/gpu.json" \
    --elapsed $((SECONDS - START)) --deadline "$DEADLINE_S"
rc=$?
if [[ -n ${OUT:-} ]]; then
    cp "$RESULTS/gpu.json" "$RESULTS/gpu.log" "$OUT/" 2>/dev/null
    cp "$WORK"/speedrun/*.png "$WORK"/speedrun/*.csv "$OUT/" 2>/dev/null
fi
rm -rf "$WORK"
exit "$rc"
