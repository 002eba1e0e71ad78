#!/usr/bin/env bash
# The CUDA checks, in one pass, for a machine with a GPU (CI has none; see README "GPU check").
#
#   bash scripts/gpu_check.sh            # writes its logs and JSON under $OUT (default runs/gpu-check)
#
# 1. the core tests on the GPU (tests/core/test_cuda.py: bf16 autocast, channels_last,
#    torch.compile, checkpoint and resume on CUDA), with the rest of tests/core beside them;
# 2. `gradlab train --device cuda` (plain VGG38, then VGG38 with BN and residual, with and without
#    --compile) on a learnable synthetic CIFAR-100 in the npz layout (the real data stays home);
# 3. `gradlab bench --device "$DEVICE" --json $BENCH_ARGS`;
# 4. fused packs (issue 13): `gradlab bench --pack $PACK_SIZES` for VGG08 and VGG38 with CUDA
#    graphs on and off (fused vs single step rates, ratio to N separate steps), and the
#    projected full-scale seed-study time with packing (scripts/project_packed_study.py).
# Python packages that the GPU machine lacks may travel as wheels in .whl/ (installed first).
set -uo pipefail
OUT=${OUT:-runs/gpu-check}
DEVICE=${DEVICE:-cuda}        # DEVICE=cpu TRAIN_LIMIT=500 tries the script where there is no GPU
TRAIN_LIMIT=${TRAIN_LIMIT:-10000}
TESTS=${TESTS:-tests/core}
BENCH_ARGS=${BENCH_ARGS:-}   # e.g. "--quick --steps 2" for a dry run
PACK_SIZES=${PACK_SIZES:-1,2,4,8,16}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The project's virtualenv where `make setup` made one; else the machine's Python (a lent GPU
# machine brings its own PyTorch).
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=$PWD/.venv/bin/python; else PYTHON=python3; fi
fi
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
# A `gradlab` command without installing the project (the GPU machine's Python is not ours).
bin=$(mktemp -d)
printf '#!/bin/sh\nexec "%s" -c "from gradlab.cli.cli import main; main()" "$@"\n' "$PYTHON" \
    >"$bin/gradlab"
chmod +x "$bin/gradlab"
export PATH="$bin:$PATH"
status=0
step() { echo "== $*" >&2; "$@" || { echo "!! failed ($?): $*" >&2; status=1; }; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

step timeout 300 "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts= $TESTS \
    --junitxml="$OUT/pytest.xml"

data=$(mktemp -d)
"$PYTHON" - "$data" <<'EOF'
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
EOF
small=(--device "$DEVICE" --data-dir "$data" --epochs 2 --train-limit "$TRAIN_LIMIT"
       --val-limit 1000 --test-limit 1000)
step timeout 300 gradlab train --depth 38 "${small[@]}" --out "$OUT/vgg38"
step timeout 300 gradlab train --depth 38 --batch-norm --residual "${small[@]}" --out "$OUT/vgg38bnres"
step timeout 300 gradlab train --depth 38 --batch-norm --residual --compile "${small[@]}" \
    --out "$OUT/vgg38bnres-compiled"
"$PYTHON" - "$OUT" <<'EOF'
import json, math, sys
for run in ("vgg38", "vgg38bnres", "vgg38bnres-compiled"):
    try:
        r = json.load(open(f"{sys.argv[1]}/{run}/result.json"))
    except OSError as exc:
        print(run, "no result:", exc)
        continue
    g = r["gradflow"]["epoch_mean"]["mean_abs"][0]
    print(f"{run:20} {r['status']:9} loss {[round(e['train_loss'], 3) for e in r['epochs']]} "
          f"(ln 100 = {math.log(100):.3f}) first/last mean|g| {g[0]:.2e} / {g[-1]:.2e} "
          f"s/epoch {[round(e['seconds'], 1) for e in r['epochs']]}")
EOF

step timeout 300 gradlab bench --device "$DEVICE" --json $BENCH_ARGS >"$OUT/bench.json"
"$PYTHON" -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({k: r[k] for k in r if k not in ("environment",)}, indent=1))' "$OUT/bench.json"
for graphs in cuda-graphs no-cuda-graphs; do
    step timeout 600 gradlab bench --device "$DEVICE" --pack "$PACK_SIZES" --$graphs \
        $BENCH_ARGS --json >"$OUT/bench-pack-$graphs.json"
    step "$PYTHON" scripts/project_packed_study.py "$OUT/bench-pack-$graphs.json"
done
exit $status
