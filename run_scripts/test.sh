#!/usr/bin/env bash
# Installs lavislite into .venv and runs the test suite (CPU only, offline).
# Extra arguments go to pytest, e.g.: bash run_scripts/test.sh -k config
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
# The web-chat test drives a real headless browser (Debian's chromium + chromedriver).
# Installed here, as set-up, where root can; otherwise the test installs or skips, saying why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing chromium + chromium-driver (web chat test)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
    || echo "[setup] chromium did not install; tests/test_webui.py will say so"
fi
# Two workers (pytest-xdist), one torch thread each: most tests launch short
# processes whose model gains little from a second thread, so two at a time
# shorten the suite (here: 27 minutes in one process, with other jobs beside it;
# 16 on two workers, a fresh clone). The tests that read one trained session run (the
# demo, llava, InstructBLIP, the two-process run) go to one worker together
# (--dist loadgroup; tests/conftest.py groups them and puts them first), so
# each is trained once and none starts last.
# LAVISLITE_TEST_WORKERS=0 runs everything in this process.
python -m pytest -q -n "${LAVISLITE_TEST_WORKERS:-2}" --dist loadgroup --no-loadscope-reorder --durations=30 tests "$@"
