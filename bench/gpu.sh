#!/usr/bin/env bash
# GPU check for issue 16, at most ~8 minutes: the CUDA tests, then ferry float16/bfloat16 (plain and
# with CUDA-graph replay) vs CTranslate2 float16 and int8_float16 on the same weights and sentences.
# Writes bench/results/gpu/{compare.json,compare.md,tests.txt} (or $OUT/gpu when $OUT is set).
#
#   bash bench/gpu.sh                # PYTHON=... to use another interpreter (needs a CUDA build of torch)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
DEST="${OUT:-bench/results}/gpu"
mkdir -p "$DEST"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$DEST/gpu.txt" || true
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "torch in $PY has no CUDA ($("$PY" -c 'import torch; print(torch.__version__)')); set PYTHON to a CUDA build" | tee -a "$DEST/gpu.txt"
  exit 2
fi
"$PY" -c 'import ctranslate2; print("ctranslate2", ctranslate2.__version__, "cuda devices", ctranslate2.get_cuda_device_count())' | tee -a "$DEST/gpu.txt"

# 1. CUDA tests (~1-2 min; the tiny checkpoint trains once on the GPU machine's CPU).
FERRY_TEST_THREADS=4 timeout 180 "$PY" -m pytest -q -rs tests/test_model_graph_step.py tests/test_model_fastpath.py \
  2>&1 | tee "$DEST/tests.txt" | tail -20
tests_rc=${PIPESTATUS[0]}

# 2. Engine comparison (~4-5 min): 500 Multi30k test2016 sentences, batch 32, greedy and beam 4.
ENGINES="ferry float16,ferry bfloat16,ferry float16 graphs,ferry bfloat16 graphs,CTranslate2 float16,CTranslate2 int8_float16"
timeout 330 "$PY" bench/compare.py --device cuda --limit 500 --threads 4 --engines "$ENGINES" \
  --timeout 120 --out "$DEST" 2>&1 | tail -40
bench_rc=${PIPESTATUS[0]}
echo "tests rc=$tests_rc bench rc=$bench_rc; results in $DEST"
exit $(( tests_rc != 0 || bench_rc != 0 ))
