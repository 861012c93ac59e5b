#!/usr/bin/env bash
# The paper's 24 encoders profiled on one GPU, with exactness checks: one command, under 8 minutes on an H200.
#
#   bench/gpu.sh                       # on the GPU machine (device tool), writes under $OUT
#   bench/gpu.sh --device cpu --smoke  # here: the same code at tiny sizes (N = 16, M = 2), under bench/out/
#   bench/gpu.sh --fetch-wheels        # here, once, where pip reaches PyPI: the wheels the GPU machine lacks
#
# Through the device tool (docs/benchmarks.md, "GPU (not yet measured)"), from the repository root:
#   run(command="BENCH_COMMIT=<short hash> bash bench/gpu.sh", carry=["bench/.whl"], timeout_s=540)
#
# The GPU machine's python3 (3.12, torch 2.11, timm, transformers, scikit-learn, scipy, pyyaml, numpy) lacks
# pydantic, which phasecore.settings imports, and its dependencies. They travel as wheels in bench/.whl
# (ignored by git, about 2.8 MB): pydantic 2.14.4, pydantic-core 2.50.5 (cp312 manylinux), annotated-types
# 0.8.0, typing-inspection 0.4.5, typing-extensions 4.16.0 (pydantic needs a recent one; newer is compatible).
# Everything else phasecore imports is on that machine (KINDS.md's package list).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d bench/.whl \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  exit 0
fi

# missing packages: install the carried wheels into /tmp/site (nothing can be fetched there)
if ! "$PY" -c "import pydantic, yaml" 2>/dev/null; then
  if ! ls bench/.whl/*.whl >/dev/null 2>&1; then
    echo "pydantic is missing and bench/.whl holds no wheels: run bench/gpu.sh --fetch-wheels where pip works," \
         "then carry bench/.whl" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site bench/.whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# cuBLAS is deterministic only with a fixed workspace, set before the process first uses it
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
# the device machine's copy has no .git: pass BENCH_COMMIT=<sha> in the command there
if [[ -z "${BENCH_COMMIT:-}" ]] && git rev-parse --short HEAD >/dev/null 2>&1; then
  BENCH_COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- phasecore bench || echo +dirty)"
fi
export BENCH_COMMIT="${BENCH_COMMIT:-}"
OUTDIR="${OUT:-$ROOT/bench/out}"
mkdir -p "$OUTDIR"
if [[ "$*" != *--device* ]]; then
  set -- --device cuda "$@"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version \
    --format=csv >"$OUTDIR/nvidia-smi.csv" 2>&1 || true
fi
DEVICE=cuda
[[ "$*" == *"--device cpu"* ]] && DEVICE=cpu
# 1. the engine on BERT-base built with SDPA (as users build it) vs eager, on this device: at most 50 s
if [[ "$*" != *--smoke* ]]; then
  timeout --kill-after=5 50 "$PY" bench/attention.py --device "$DEVICE" --n 64 --tokens 16 --repeat 2 \
    --out "$OUTDIR/attention.json" >"$OUTDIR/attention.log" 2>&1 || echo "attention bench: exit $? (see attention.log)"
fi
# 2. the profiles: 355 s of measurement, SIGINT at 395 s (the report is still written), SIGKILL 15 s later;
#    with the wheels and step 1, inside 8 minutes
set +e
timeout --signal=INT --kill-after=15 395 "$PY" bench/gpu_profiles.py --out "$OUTDIR" --budget-s "${BUDGET_S:-355}" "$@" \
  2>&1 | tee "$OUTDIR/gpu_profiles.log"
status=${PIPESTATUS[0]}
tail -n 3 "$OUTDIR/attention.log" 2>/dev/null || true
exit "$status"
