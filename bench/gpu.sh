#!/usr/bin/env bash
# The GPU benchmark in one command (bench/gpu.py; docs/PERFORMANCE.md quotes its reports).
#
#   bash bench/gpu.sh prepare        # here, where PageLens is installed: writes .gpukit/
#   bash bench/gpu.sh run [OUT.json] # on the GPU machine (python3 with torch + transformers)
#   bash bench/gpu.sh dry-run        # any CPU machine: the tiny model, every phase, seconds
#
# The kit (rendered pages and their text, the tokenizers, a copy of qwen_vl_utils: a few MiB;
# GME and the reranker resize images with it) travels with the repository to
# a GPU machine that can fetch nothing. The run caps each phase and the whole run (6.5 min
# of measuring by default) so that it ends inside an 8-minute window, start-up included.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[[ -x .venv/bin/python && "${1:-}" != run ]] && PY=.venv/bin/python
case "${1:-run}" in
  prepare) exec "$PY" -m bench.gpu --prepare .gpukit --pages "${PAGES:-16}" ;;
  dry-run) exec "$PY" -m bench.gpu --dry-run --out "${2:-/dev/stdout}" ;;
  run)
    out="${2:-bench/results/gpu-$(date -u +%Y-%m-%d).json}"
    kit=()
    [[ -d .gpukit ]] && kit=(--kit .gpukit)
    PYTHONUNBUFFERED=1 exec "$PY" -m bench.gpu "${kit[@]}" --out "$out" ;;
  *) echo "usage: bash bench/gpu.sh [prepare|run [OUT.json]|dry-run [OUT.json]]" >&2; exit 2 ;;
esac
