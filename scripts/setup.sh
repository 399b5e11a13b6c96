#!/usr/bin/env bash
# Create the virtual environment and install optwatch with its test tools.
# A torch that is already installed (your CUDA build) is kept: the venv sees it, and nothing replaces it.
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "optwatch needs Python 3.10 or newer ($("$python" --version 2>&1) found)" >&2
    exit 1
}
if [ ! -x "$venv/bin/python" ]; then
    if "$python" -c 'import torch' 2>/dev/null; then
        echo "setup: using the torch already installed for $python"
        "$python" -m venv --system-site-packages "$venv"
    else
        "$python" -m venv "$venv"
    fi
fi
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    # The pinned release first: where a wheel for it is staged locally (a CPU build, say) pip takes
    # that one instead of downloading the newest build with gigabytes of CUDA libraries.
    "$venv/bin/python" -m pip install "torch==2.13.0" || "$venv/bin/python" -m pip install torch
fi
# The test extra, the real training frameworks the tests run (they keep the torch installed above), the web
# extra (`optwatch attach --web`) and TensorBoard (`optwatch export --tensorboard`).
"$venv/bin/python" -m pip install -e ".[test,frameworks,web,tensorboard]"
# A Chromium for tests/test_web.py (skipped without one): Debian's, else the one Playwright downloads.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) ||
            echo "setup: could not install chromium: tests/test_web.py will be skipped" >&2
    else
        "$venv/bin/python" -m playwright install chromium ||
            echo "setup: no Chromium (as root, apt-get install chromium): tests/test_web.py will be skipped" >&2
    fi
fi
"$venv/bin/python" -c 'import torch, optwatch; print(f"setup: optwatch {optwatch.__version__} with torch {torch.__version__}")'
