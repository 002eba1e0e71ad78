#!/usr/bin/env bash
# The prepared command for a lent GPU machine: docs/gpu.md has the calls in order, with their
# carry paths and time budgets. Modes run in the order given, within one time budget:
#
#   bash scripts/gpu_check.sh prepare [STATE]  # HERE, before the calls: wheels, the data and
#                                              # a returned study state in pieces under
#                                              # .gpu-transfer/call-N (one carried path a call)
#   bash scripts/gpu_check.sh receive          # there: install the wheels, unpack the pieces
#                                              # that arrived, say which calls are still to come
#   bash scripts/gpu_check.sh data             # there: the data complete, SHA-256 checked
#   bash scripts/gpu_check.sh measure [MODELS] # there: one run alone, fused packs 1-8 with
#                                              # CUDA graphs on and off, 1-8 processes sharing
#                                              # the GPU; the table and which of packs and
#                                              # processes won (scripts/gpu_measure.py)
#   bash scripts/gpu_check.sh train-final      # there: `gradlab study run --cell FINAL_CELL`
#   bash scripts/gpu_check.sh train-rest       # there: the whole study (what is left of it)
#   bash scripts/gpu_check.sh cuda-tests       # there: tests/core on CUDA, `gradlab train`
#                                              # and `gradlab bench` on synthetic data
#
# e.g. `bash scripts/gpu_check.sh data train-final`. Every mode on that machine stops itself
# within BUDGET seconds of the start (default 540: a call is 10 minutes at most) and leaves what
# it made in $OUT, which a call brings back (at most 8 files: see each mode). DEVICE=cpu with a
# tiny STUDY and MEASURE_ARGS runs the whole script where there is no GPU
# (tests/scripts/test_gpu_check.py).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
BUDGET=${BUDGET:-540}
OUT=${OUT:-runs/gpu-check}
DEVICE=${DEVICE:-cuda}
TRANSFER=${TRANSFER:-.gpu-transfer}
SITE=${SITE:-.gpu-site}
DATA_DIR=${DATA_DIR:-runs/cifar100}
STUDY=${STUDY:-examples/seed-study.yaml}
SCALE=${SCALE:-full}
STUDY_OUT=${STUDY_OUT:-runs/full-scale}
# The seed report's final model: VGG38 BN+residual, weight decay 1e-3, four seeds.
FINAL_CELL=${FINAL_CELL:-vgg38-bn-res-wd1e-3}
MEASURE_ARGS=${MEASURE_ARGS:-}      # e.g. "--packs 1 --processes 1 --quick --window 1"
COLLECT_RESERVE=${COLLECT_RESERVE:-60}  # seconds kept after training for collecting
mkdir -p "$OUT"
SITE=$(realpath -m "$SITE")
export PYTHONUNBUFFERED=1

left() { echo $((START + BUDGET - SECONDS)); }
seconds() { if [ "$1" -gt 1 ]; then echo "$1"; else echo 1; fi; }  # a timeout of at least 1 s
say() { echo "== $*" >&2; }
die() { echo "!! $*" >&2; exit "${2:-1}"; }

choose_python() {
    # The project's virtualenv where `make setup` made one; else the machine's Python (a lent
    # GPU machine brings its own PyTorch).
    if [ -z "${PYTHON:-}" ]; then
        if [ -x .venv/bin/python ]; then PYTHON=$PWD/.venv/bin/python; else PYTHON=python3; fi
    fi
}

# --- here: prepare -------------------------------------------------------------------------------

# What `gradlab study run` and `gradlab bench` import that the lent machines' image lacks
# (/work/.library/device/KINDS.md lists what it has): carried as wheels of the versions this
# checkout's .venv holds. `receive` fails at once, naming the module, if one is missing.
WHEEL_DISTS="alembic amqp annotated-types billiard celery greenlet kombu Mako pydantic
pydantic_core pydantic-settings python-dotenv SQLAlchemy typing-inspection typing_extensions
tzlocal vine"
GPU_PYTHON=${GPU_PYTHON:-3.12}      # the lent machines' python3

prepare() {
    local state=${1:-} wheels=.whl data=${GRADLAB_DATA_DIR:-../shared/data/cifar100}
    local pins
    pins=$("$PYTHON" -c 'import sys; from importlib.metadata import version
print(" ".join(f"{d}=={version(d)}" for d in sys.argv[1:]))' $WHEEL_DISTS) || exit 1
    rm -rf "$wheels" && mkdir -p "$wheels"
    say "wheels for Python $GPU_PYTHON: $pins"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$wheels" $pins || die "pip download failed"
    say "packing $data${state:+ and the state in $state} into $TRANSFER/call-N"
    "$PYTHON" scripts/gpu_transfer.py pack --data "$data" --wheels "$wheels" \
        --out "$TRANSFER" --call-mib "${CALL_MIB:-56}" ${state:+--state "$state"} || exit 1
    local tree
    tree=$(git ls-files -z --cached --others --exclude-standard | du -ch --files0-from=- \
        2>/dev/null | tail -1 | cut -f1)
    say "the working tree that travels with each call: $tree (a call carries 64 MiB in all)"
}

# --- there: the environment --------------------------------------------------------------------

link_gradlab() {
    # `import gradlab.<part>` without installing the project: a gradlab/ folder of links to
    # the checkout's parts (pyproject's package-dir), ahead of the wheels the machine lacks.
    mkdir -p "$SITE/src/gradlab"
    "$PYTHON" - "$SITE/src/gradlab" <<'EOF' || die "cannot read pyproject.toml"
import os, sys, tomllib
parts = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"]
for name, folder in parts.items():
    link = os.path.join(sys.argv[1], name.split(".", 1)[1])
    if not os.path.islink(link):
        os.symlink(os.path.abspath(folder), link)
EOF
    export PYTHONPATH="$SITE/src:$SITE/lib${PYTHONPATH:+:$PYTHONPATH}"
}

install_wheels() {
    local found stamp="$SITE/lib/.installed"
    found=$(ls "$TRANSFER"/call-*/wheels/*.whl 2>/dev/null | sort)
    [ -n "$found" ] || return 0
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$found" ]; then return 0; fi
    say "installing $(echo "$found" | wc -l) wheels into $SITE/lib"
    rm -rf "$SITE/lib"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$SITE/lib" $found || die "installing the wheels failed"
    echo "$found" >"$stamp"
}

# What the modes import; it prints PyTorch's version, so that one Python start (about 2 s of
# imports) both checks the environment and names it.
IMPORTS='import gradlab.cli.cli, gradlab.cli.study_commands, gradlab.worker.runner, gradlab.core.pack, gradlab.core.sharing_benchmark, torch; print("torch", torch.__version__)'

environment() {
    choose_python
    # A checkout with `make setup` has everything; a lent machine has PyTorch but not gradlab
    # nor some of its needs, which came as wheels.
    local torch
    if ! torch=$("$PYTHON" -c "$IMPORTS" 2>/dev/null); then
        install_wheels
        link_gradlab
        torch=$("$PYTHON" -c "$IMPORTS") || die "gradlab does not import here: its wheels come \
with $TRANSFER/call-1 (carry it first: a machine given back loses what earlier calls carried), \
or one is missing from WHEEL_DISTS in scripts/gpu_check.sh"
    fi
    # The `gradlab` command, for this checkout's Python
    mkdir -p "$SITE/bin"
    printf '#!/bin/sh\nexec "%s" -c "from gradlab.cli.cli import main; main()" "$@"\n' \
        "$PYTHON" >"$SITE/bin/gradlab"
    chmod +x "$SITE/bin/gradlab"
    export PATH="$SITE/bin:$PATH"
    if command -v nvidia-smi >/dev/null; then
        GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
            | head -1)
    else
        GPU="no GPU (DEVICE=$DEVICE)"
    fi
    say "$GPU; $torch"
}

receive() {
    # Exit status 3 from the unpacking: pieces still to come (said by gpu_transfer.py).
    [ -d "$TRANSFER" ] && compgen -G "$TRANSFER/call-*/MANIFEST.json" >/dev/null || return 0
    "$PYTHON" scripts/gpu_transfer.py unpack --transfer "$TRANSFER" --data-out "$DATA_DIR" \
        --state-out "$STUDY_OUT"
}

# --- there: the modes ----------------------------------------------------------------------------

check_data() {
    receive
    case $? in
        0) ;;
        3) die "the data is not complete here yet (see above)" 3 ;;
        *) die "unpacking failed" ;;
    esac
    [ -f "$DATA_DIR/SHA256SUMS" ] || die "no $DATA_DIR/SHA256SUMS"
    say "checking $DATA_DIR against its SHA256SUMS"
    (cd "$DATA_DIR" && sha256sum --check --strict SHA256SUMS) || die "the data's SHA-256 differs"
}

measure() {
    local models=${1:-vgg38,vgg08} results=${MEASURE_RESULTS:-runs/gpu-measure}
    mkdir -p "$results" && : >"$results/bench.log"
    # shellcheck disable=SC2086
    timeout -k 10 "$(seconds $(($(left) - 10)))" "$PYTHON" scripts/gpu_measure.py \
        --models "$models" --budget "$(seconds $(($(left) - 40)))" --results "$results" \
        --device "$DEVICE" $MEASURE_ARGS
    local status=$?
    cp "$results/sharing.json" "$results/sharing.md" "$OUT/" 2>/dev/null
    # The benches' own output (errors of a measurement that failed) goes into this log: a call
    # brings back 8 files at most.
    [ -s "$results/bench.log" ] && { say "the benches' output:"; cat "$results/bench.log"; }
    return $status
}

train() {
    local cells=() limit
    [ "${1:-}" = final ] && cells=(--cell "$FINAL_CELL")
    limit=$(($(left) - COLLECT_RESERVE))
    [ "$limit" -ge 60 ] || die "only $(left) s left: too little to train"
    say "gradlab study run $STUDY --scale $SCALE ${cells[*]} --time-limit $limit"
    local started=$SECONDS
    # The command stops itself within its --time-limit (report included). If not: Ctrl-C
    # (SIGINT) 20 s later, which hands its runs back and reports; SIGKILL 15 s after that.
    timeout -s INT -k 15 $((limit + 20)) gradlab study run "$STUDY" --scale "$SCALE" \
        --device "$DEVICE" --data-dir "$DATA_DIR" --out "$STUDY_OUT" --time-limit "$limit" \
        "${cells[@]}"
    local status=$?
    say "study run: exit $status after $((SECONDS - started)) s"
    "$PYTHON" scripts/gpu_transfer.py collect --study "$STUDY_OUT" --out "$OUT" \
        || say "collecting $STUDY_OUT failed"
    return $status
}

cuda_tests() {
    # The CUDA checks of issue 6: tests/core (test_cuda.py: bf16 autocast, channels_last,
    # torch.compile, checkpoint and resume on CUDA), two epochs of `gradlab train` on learnable
    # synthetic data, `gradlab bench`. Logs under runs/gpu-check; the bench's JSON in $OUT.
    local logs=runs/gpu-check data rc=0
    mkdir -p "$logs"
    timeout "$(seconds $(($(left) / 3)))" "$PYTHON" -m pytest -q -p no:cacheprovider \
        -o addopts= "${TESTS:-tests/core}" --junitxml="$logs/pytest.xml" || rc=1
    data=$(mktemp -d)
    "$PYTHON" - "$data" <<'PY' || return 1
# 50,000 + 10,000 images whose class sets a colour and a stripe: learnable within an epoch.
import sys
import numpy as np
rng = np.random.default_rng(0)
def make(n):
    labels = rng.integers(0, 100, n)
    base = np.stack([labels % 5, labels // 5 % 5, labels // 25], 1) * 50.0
    images = base[:, None, None, :] + rng.normal(0, 20, (n, 32, 32, 3))
    images[np.arange(n), labels % 32, :, :] += 60.0  # a class-dependent row stripe
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)
for part, n in (("train", 50_000), ("test", 10_000)):
    images, labels = make(n)
    np.savez(f"{sys.argv[1]}/{part}.npz", images=images, fine_labels=labels,
             coarse_labels=labels // 5)
PY
    local small=(--device "$DEVICE" --data-dir "$data" --epochs 2 --train-limit
                 "${TRAIN_LIMIT:-10000}" --val-limit 1000 --test-limit 1000)
    local name flags
    for name in vgg38 vgg38bnres vgg38bnres-compiled; do
        case $name in
            vgg38) flags=() ;;
            vgg38bnres) flags=(--batch-norm --residual) ;;
            *) flags=(--batch-norm --residual --compile) ;;
        esac
        timeout "$(seconds $(($(left) / 4)))" gradlab train --depth 38 "${flags[@]}" \
            "${small[@]}" --out "$logs/$name" || rc=1
        "$PYTHON" - "$logs/$name/result.json" <<'PY'
import json, math, sys
try:
    r = json.load(open(sys.argv[1]))
except OSError as exc:
    sys.exit(f"no result: {exc}")
g = r["gradflow"]["epoch_mean"]["mean_abs"][0]
print(f"{sys.argv[1]}: {r['status']} loss {[round(e['train_loss'], 3) for e in r['epochs']]} "
      f"(ln 100 = {math.log(100):.3f}) first/last mean|g| {g[0]:.2e} / {g[-1]:.2e} "
      f"s/epoch {[round(e['seconds'], 1) for e in r['epochs']]}")
PY
    done
    # shellcheck disable=SC2086
    timeout "$(seconds $(($(left) - 20)))" gradlab bench --device "$DEVICE" --json \
        ${BENCH_ARGS:-} >"$OUT/bench.json" || rc=1
    return $rc
}

choose_python
[ $# -gt 0 ] || die "usage: bash scripts/gpu_check.sh MODE... (see the top of this file)"
if [ "$1" = prepare ]; then
    prepare "${2:-}"
    exit $?
fi
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
environment
status=0
while [ $# -gt 0 ]; do
    mode=$1; shift
    say "$mode: $(left) s of $BUDGET left"
    case $mode in
        receive) receive; rc=$?; [ $rc -eq 3 ] && rc=0 ;;
        data) check_data; rc=$? ;;
        measure)
            models=vgg38,vgg08
            if [ $# -gt 0 ] && [[ $1 == vgg* ]]; then models=$1; shift; fi
            measure "$models"; rc=$? ;;
        train-final) check_data && train final; rc=$? ;;
        train-rest) check_data && train; rc=$? ;;
        cuda-tests) cuda_tests; rc=$? ;;
        *) die "unknown mode $mode (see the top of scripts/gpu_check.sh)" ;;
    esac
    [ $rc -eq 0 ] || { say "$mode failed (exit $rc)"; status=$rc; }
done
say "done on $GPU: wall $((SECONDS - START)) s of $BUDGET"
exit $status
