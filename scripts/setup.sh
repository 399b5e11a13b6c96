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
# The test extra, the real training frameworks the tests run (they keep the torch installed above), and
# TensorBoard for `optwatch export --tensorboard`.
"$venv/bin/python" -m pip install -e ".[test,frameworks,tensorboard]"
"$venv/bin/python" -c 'import torch, optwatch; print(f"setup: optwatch {optwatch.__version__} with torch {torch.__version__}")'
