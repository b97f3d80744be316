#!/usr/bin/env bash
# One-step setup on a fresh Debian 12 machine with Python 3.11 (run as root, or with sudo).
#
#   bash scripts/setup.sh           # runtime: engine + napari plugin + gradio app in .venv
#   bash scripts/setup.sh --dev     # + test tools and the Debian packages the tests need
#   bash scripts/setup.sh --gpu     # let pip choose a CUDA build of torch (GPU machines)
#
# On CPU machines torch is pinned through a pip constraint file (constraints/cpu.txt) on
# every pip call, so no dependency can pull a multi-GB CUDA build. If your pip cannot find
# a CPU build of that torch version, point PIP_EXTRA_INDEX_URL at PyTorch's CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
gpu=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --gpu) gpu=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (use --dev, --gpu)" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# Debian packages: the venv module, Qt6's xcb plugin dependencies (napari), a virtual
# display for headless GUI tests, and Chromium for the real-browser test.
pkgs="python3-venv libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1
      libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0
      libxcb-xkb1 libxcb-cursor0 libdbus-1-3 libfontconfig1"
if [ "$dev" = 1 ]; then pkgs="$pkgs xvfb chromium chromium-driver"; fi
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "setup.sh: warning: apt-get not found; make sure these are installed:$missing" >&2
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ "$gpu" = 0 ]; then
  export PIP_CONSTRAINT="$PWD/constraints/cpu.txt"
fi
extras="all"
if [ "$dev" = 1 ]; then extras="dev"; fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, alone, so the constraint (or the GPU index) decides which build arrives.
.venv/bin/python -m pip install -q torch
.venv/bin/python -m pip install -q -e ".[$extras]"
echo "setup.sh: ready (.venv, extras [$extras], $( .venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
