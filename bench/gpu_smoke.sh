#!/usr/bin/env bash
# One-GPU smoke run, offline (docs/gpu.md). Installs the wheels in .whl/ (packages the GPU image lacks) and
# posttrain itself into $SMOKE_SITE, then runs bench/gpu_smoke.py: PASS/FAIL per check, summary in
# $OUT/gpu_smoke.txt. Dry run on a CPU: SMOKE_DEVICE=cpu SMOKE_SIZE=tiny SMOKE_SKIP_INSTALL=1 PY=.venv/bin/python
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
SITE=${SMOKE_SITE:-/tmp/site}
if [ "${SMOKE_SKIP_INSTALL:-0}" != 1 ]; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "FAIL setup: no wheels in .whl/ (see docs/gpu.md)"; exit 2; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 2
  # posttrain from this checkout (setuptools is in the image; nothing is fetched)
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade --target "$SITE" . || exit 2
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
[ "${SMOKE_DEVICE:-cuda}" = cpu ] && export CUDA_VISIBLE_DEVICES=""
export DS_BUILD_OPS=0 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8
timeout -k 10 "${SMOKE_TIMEOUT:-470}" "$PY" bench/gpu_smoke.py "$@"
rc=$?
[ $rc = 124 ] && echo "FAIL overall: the smoke run passed its ${SMOKE_TIMEOUT:-470}s limit" | tee -a "${OUT:-/tmp/gpu_smoke}/gpu_smoke.txt"
exit $rc
