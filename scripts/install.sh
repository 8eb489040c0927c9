#!/usr/bin/env bash
# Set PageLens up from nothing: a virtual environment in .venv with torch (pinned, first),
# then PageLens and its dependencies. With --dev: test tools too, and Debian's chromium for
# the browser tests, tesseract-ocr for the OCR tests and LibreOffice's nogui packages for the
# office formats (docx, pptx, xlsx, odt...; optional outside --dev: without LibreOffice those
# files are refused with what to install, and PDFs and images index as always). Safe to run
# again; it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
PY="${PYTHON:-python3}"

if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install --quiet --upgrade pip

# torch first, pinned to a pair whose torchvision loads beside it (transformers 5's Qwen2-VL
# processor and qwen-vl-utils need torchvision). Override with TORCH_SPEC for other platforms.
if ! "$VPY" -c "import torch, torchvision" >/dev/null 2>&1; then
  case "$(uname -m)" in
    aarch64|arm64) DEFAULT_TORCH="torch==2.9.1 torchvision==0.24.1" ;;
    *)             DEFAULT_TORCH="torch==2.14.1 torchvision==0.29.1" ;;
  esac
  # shellcheck disable=SC2086
  "$VPY" -m pip install --quiet ${TORCH_SPEC:-$DEFAULT_TORCH}
fi

if [[ $DEV == 1 ]]; then
  "$VPY" -m pip install --quiet -e ".[dev]"
  if { [[ ! -x /usr/bin/chromium ]] || ! command -v tesseract >/dev/null 2>&1 \
       || ! command -v soffice >/dev/null 2>&1; } \
     && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [[ $(id -u) != 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium tesseract-ocr >/dev/null
    # LibreOffice without its desktop parts (headless conversion is all PageLens uses).
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui >/dev/null
  fi
else
  "$VPY" -m pip install --quiet -e .
fi
echo "PageLens is installed in .venv (run: .venv/bin/pagelens --help)" >&2
