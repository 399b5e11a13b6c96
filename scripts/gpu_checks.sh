#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go: the gpu-marked tests, the cifar example end to end under
# optwatch (AMP and cudnn.benchmark toggled mid-run, a profiler window), the overhead benchmark with
# its host-device sync count, and what optwatch costs the LLM-shaped loop on CUDA. Logs and the run's
# record go to $OUT (default /tmp/optwatch-gpu).
#
#     bash scripts/gpu_checks.sh            # on a machine with CUDA, from the repository root
#     FULL_SUITE=1 bash scripts/gpu_checks.sh   # and then the whole test suite there
set -u
out=${OUT:-/tmp/optwatch-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    "$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
    nproc
} 2>&1 | tee "$out/machine.txt"

echo "== gpu-marked tests"
"$python" -m pytest -m gpu -v -p no:cacheprovider 2>&1 | tee "$out/gpu-tests.log" | tail -25

echo "== cifar under optwatch on CUDA"
"$python" -m optwatch run --headless --record "$out/cifar.jsonl" --profile-at 100:5 \
    --control amp=on@150 --control cudnn_benchmark=on@250 --control amp=off@350 \
    examples/cifar.py --steps 400 --workers 4 2>&1 | tee "$out/cifar.log" | tail -25

echo "== overhead benchmark on CUDA"
"$python" benchmarks/overhead.py --rounds "${ROUNDS:-5}" --steps "${STEPS:-50}" --modes bare,default,light,every-step,all --json "$out/overhead.json" 2>&1 |
    tee "$out/overhead.log"

echo "== the LLM-shaped loop on CUDA: the probe switched on and off in one process (defaults, every check)"
"$python" benchmarks/toggle_ab.py --loop-args "--device cuda" 2>&1 | tee "$out/toggle_default.log"
"$python" benchmarks/toggle_ab.py --budget 0 --loop-args "--device cuda" 2>&1 | tee "$out/toggle_every.log"

echo "== the LLM-shaped loop on CUDA: bare against optwatch run, taking turns"
"$python" benchmarks/wall_clock.py --workload llm --device cuda --rounds "${ROUNDS:-5}" --configs bare,aa,default,every \
    2>&1 | tee "$out/wall_clock_llm.log" | tail -16

echo "== what optwatch adds per step on CUDA (operators, launches, Python)"
"$python" benchmarks/step_work.py --workload cifar --device cuda --ops 20 --top 20 2>&1 | tee "$out/step_work.log"

if [ -n "${FULL_SUITE:-}" ]; then
    echo "== the whole suite on the GPU machine"
    "$python" -m pytest -q -p no:cacheprovider -x --timeout 300 2>&1 | tee "$out/suite.log" | tail -30
fi
