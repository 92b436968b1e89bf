#!/usr/bin/env bash
# Sourced by demo.sh / test.sh: makes .venv (unless a virtualenv is already
# active) and installs lavislite with its test extras. Safe to re-run.
#   LAVISLITE_TORCH   the torch requirement(s) to install when torch is missing
#                     (default "torch==2.14.1 torchvision==0.29.1": timm, which builds
#                     llava's vision towers, needs a torchvision that matches torch)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
if ! python -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing ${LAVISLITE_TORCH:-torch==2.14.1 torchvision==0.29.1}"
  # shellcheck disable=SC2086  (the requirements are words)
  python -m pip install -q ${LAVISLITE_TORCH:-torch==2.14.1 torchvision==0.29.1} 2>&1 | grep -vE "^WARNING: Location|^$" || true
  python -c "import torch" || { echo "[setup] torch did not install" >&2; exit 1; }
fi
echo "[setup] installing lavislite[dev]"
python -m pip install -q -e ".[dev]" 2>&1 | grep -vE "^WARNING: Location|^$" || true
python -c "import lavislite" || { echo "[setup] lavislite does not import" >&2; exit 1; }
