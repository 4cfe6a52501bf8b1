#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test tools.
#
# torch: if the active interpreter has no torch yet, install the pinned CPU wheel
# first, so pip never resolves the package's torch range to a multi-GB CUDA build
# on a CPU machine.  GPU users: install your CUDA torch into the venv first (or set
# HALO_TORCH_SPEC), this script then leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${HALO_TORCH_SPEC:-torch==2.13.0}

# System libraries for headless rendering (EGL through Mesa) and libusb (open3d
# refuses to import without it); installed only when missing and we can (root +
# apt).  Most Debian/Ubuntu images already have them.
need_pkgs=()
for pkg in libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libusb-1.0-0; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing system packages: ${need_pkgs[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "[setup] warning: missing ${need_pkgs[*]} (needed for rendering / open3d); install them with apt" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_SPEC (CPU wheel)"
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
echo "[setup] installing halo-hands and test tools"
"$PY" -m pip install -q -e ".[dev]"
"$PY" -c "import torch, halo; print(f'[setup] ok: torch {torch.__version__}, halo {halo.__version__}')"
