#!/usr/bin/env bash
# One GPU check (issue 9): the CUDA tests and the GPU benchmarks in one call, < 8 minutes
# on one GPU, ending with ONE summary table.
#
#   bash bench/gpu_check.sh               # on a machine with one CUDA GPU
#   bash bench/gpu_check.sh --cpu-smoke   # everything tiny on CPU (Triton interpreter):
#                                         # checks the script itself, figures meaningless
#
# Steps (each under its own timeout, so the whole stays under 8 minutes):
#   1. pytest: every test whose name or id contains "cuda" (the test_cuda_* tests of
#      tests/test_batchnorm_triton.py, the [cuda] parametrisations, ...);
#   2. bench/bench_batchnorm.py: MaskedBatchNorm1d (eager, fused = Triton) vs
#      nn.BatchNorm1d, fwd+bwd at (64, 256, 512) and (16, 1280, 1024), fp32 and bf16 autocast;
#   3. bench/bench_models.py --compiled: masked ByteNet CNN training step vs the native-layer
#      CNN, eager and torch.compile-d, and the masked CNN under mode="reduce-overhead".
# Raw outputs go to $GPU_CHECK_OUT (default bench/_work/gpu_check).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${GPU_CHECK_OUT:-bench/_work/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}

if [ "${1:-}" = "--cpu-smoke" ]; then
    export TRITON_INTERPRET=1
    TEST_T=300; BN_T=300; MODEL_T=300
    BN_ARGS=(--device cpu --triton-interpret --shape 4x8x24 --shape 2x16x40 --repeats 2)
    MODEL_ARGS=(--device cpu --quick --d-model 16 --n-layers 2 --max-tokens 512
                --max-length 128 --compile-backend aot_eager)
else
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA device (use --cpu-smoke to check the script on CPU)" >&2
        exit 2
    fi
    TEST_T=150; BN_T=90; MODEL_T=210
    BN_ARGS=(--device cuda --shape 64x256x512 --shape 16x1280x1024 --repeats 30)
    MODEL_ARGS=(--device cuda --max-tokens 65536 --d-model 256 --batches 4 --repeats 5)
fi
start=$(date +%s)

echo "== 1/3 CUDA tests"
timeout "$TEST_T" "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda tests \
    > "$OUT/tests.txt" 2>&1
echo "pytest exit $?" >> "$OUT/tests.txt"
tail -n 3 "$OUT/tests.txt"

echo "== 2/3 batch norm benchmark"
timeout "$BN_T" "$PY" bench/bench_batchnorm.py "${BN_ARGS[@]}" --dtype float32 \
    --dtype bfloat16 --json "$OUT/batchnorm.json" > "$OUT/batchnorm.txt" 2>&1
tail -n 6 "$OUT/batchnorm.txt"

echo "== 3/3 model benchmark"
timeout "$MODEL_T" "$PY" bench/bench_models.py "${MODEL_ARGS[@]}" --only cnn --compiled \
    --json "$OUT/models.json" > "$OUT/models.txt" 2>&1
tail -n 10 "$OUT/models.txt"

"$PY" - "$OUT" "$(( $(date +%s) - start ))" <<'EOF'
import json, re, sys
from pathlib import Path

out, secs = Path(sys.argv[1]), sys.argv[2]
rows = []
tests = (out / "tests.txt").read_text() if (out / "tests.txt").exists() else ""
summary = [ln for ln in tests.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
rows.append(("CUDA tests (pytest -k cuda)", summary[-1].strip("= ") if summary else "no result",
             "all pass"))
try:
    bn = json.loads((out / "batchnorm.json").read_text())["results"]
except (OSError, ValueError, KeyError):
    bn = []
    rows.append(("batch norm benchmark", "no result (see batchnorm.txt)", ""))
for r in bn:
    shape = "x".join(map(str, r["shape"]))
    kind = "fp32" if r["dtype"] == "float32" else f"{r['dtype']} autocast"
    for name in ("eager", "fused"):
        if name in r:
            label = "fused (Triton on CUDA)" if name == "fused" else name
            rows.append((f"MaskedBatchNorm1d {label} fwd+bwd {shape} {kind}",
                         f"{r[name]:.2f}x native ({r['native_ms']:.3f} ms)", "<= 1.2x"))
try:
    mj = json.loads((out / "models.json").read_text())
    models, mdev = mj["results"], mj["device"]
except (OSError, ValueError, KeyError):
    models, mdev = [], "CPU"
    rows.append(("CNN training step benchmark", "no result (see models.txt)", ""))
targets = {"cnn masked": "<= 1.15x", "cnn masked compiled": "<= 1.1x",
           "cnn masked reduce-overhead": "runs", "cnn masked fused-BN": ""}
for r in models:
    if "ratio" in r:
        rows.append((f"{r['name']} step vs {r['base']}",
                     f"{r['ratio']:.2f}x (paired {r['paired']:.2f}x), {r['ms']:.1f} ms",
                     targets.get(r["name"], "")))
if models and mdev != "CPU" and not any(
        r["name"] == "cnn masked reduce-overhead" for r in models):
    rows.append(("cnn masked reduce-overhead", "not run / failed (see models.txt)", "runs"))
w = [max(len(str(r[i])) for r in [("check", "result", "target"), *rows]) for i in range(3)]
line = lambda r: "| " + " | ".join(str(c).ljust(n) for c, n in zip(r, w)) + " |"
print(f"\n== gpu_check summary ({secs} s; raw output in {out})")
print(line(("check", "result", "target")))
print("|" + "|".join("-" * (n + 2) for n in w) + "|")
for r in rows:
    print(line(r))
EOF
