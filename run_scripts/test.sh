#!/usr/bin/env bash
# Installs lavislite into .venv and runs the test suite (CPU only, offline).
# Extra arguments go to pytest, e.g.: bash run_scripts/test.sh -k config
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python -m pytest -q tests "$@"
