#!/usr/bin/env bash
# One-step setup on a fresh Debian 12 machine with Python 3.11 (run as root, or with sudo).
#
#   bash scripts/setup.sh           # runtime: engine + napari plugin + gradio app in .venv
#   bash scripts/setup.sh --dev     # + test tools and the Debian packages the tests need
#   bash scripts/setup.sh --gpu     # let pip choose a CUDA build of torch (GPU machines)
#
# On CPU machines torch is pinned through a pip constraint file (constraints/cpu.txt) on
# every pip call, and taken from PyTorch's CPU wheel index (SAM3D_TORCH_CPU_INDEX, default
# https://download.pytorch.org/whl/cpu) when pip would otherwise pick PyPI's Linux build,
# which is a CUDA build with about 4 GB of nvidia packages. A pip that already finds a CPU
# build (a wheelhouse or mirror in its config) is left alone.
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

# Would pip install a CUDA build of torch? 0: yes, 1: no, 2: cannot tell (resolution failed).
# A dry run reads the wheels' metadata only.
would_pull_cuda() {
  local report rc
  report="$(mktemp)"
  if ! .venv/bin/python -m pip install -q --dry-run --ignore-installed --report "$report" \
      torch >/dev/null 2>&1; then
    rm -f "$report"
    return 2
  fi
  rc=0
  .venv/bin/python - "$report" <<'PYEOF' || rc=$?
import json, sys
names = [i["metadata"]["name"].lower() for i in json.load(open(sys.argv[1]))["install"]]
sys.exit(0 if any(n.startswith(("nvidia-", "cuda-")) for n in names) else 1)
PYEOF
  rm -f "$report"
  return "$rc"
}
if [ "$gpu" = 0 ]; then
  cuda=0
  would_pull_cuda || cuda=$?
  if [ "$cuda" = 0 ]; then
    cpu_index="${SAM3D_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
    echo "setup.sh: pip would install torch's CUDA build; taking torch from $cpu_index"
    export PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL:+$PIP_EXTRA_INDEX_URL }$cpu_index"
    cuda=0
    would_pull_cuda || cuda=$?
    if [ "$cuda" != 1 ]; then
      echo "setup.sh: error: no CPU build of $(cat constraints/cpu.txt) found at $cpu_index;" \
        "set SAM3D_TORCH_CPU_INDEX to a reachable PyTorch CPU wheel index, or use --gpu" >&2
      exit 1
    fi
  fi
fi
# torch first, alone, so the constraint (or the GPU index) decides which build arrives.
.venv/bin/python -m pip install -q torch
.venv/bin/python -m pip install -q -e ".[$extras]"
echo "setup.sh: ready (.venv, extras [$extras], $( .venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
