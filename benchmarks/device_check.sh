#!/usr/bin/env bash
# GPU check of bmc_calib.torch in one unattended go (issue: "BMCLoss ready for real training
# loops", item 3): install the project over the machine's own PyTorch, run the torch tests on
# CUDA, then `bench_loss.py --device cuda` (eager, compiled, CUDA graphs at batch 256 / 1024 /
# 4096 / 16384). About 3-4 minutes on one H100/H200; the table is what docs/performance.md
# quotes. Writes its log to ${OUT:-.}/device_check.log.
#
# The machine has no network. Core dependencies it lacks (shapely, ijson, rdp; its image has
# numpy, scipy, h5py, typer and rich) travel as wheels in ./.whl (git-ignored; name it in the
# device tool's `carry`), fetched beforehand where pip works:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl shapely==2.2.0 ijson==3.6.0
#   python3 -m pip download --no-deps -d .whl rdp==0.8 && python3 -m pip wheel --no-deps \
#     -w .whl .whl/rdp-0.8.tar.gz && rm .whl/rdp-0.8.tar.gz   # rdp ships no wheel
set -uo pipefail
log="${OUT:-.}/device_check.log"
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || export PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python3 -c "import torch, bmc_calib.torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/test_torch_loss.py
tests=$?
timeout 300 python3 benchmarks/bench_loss.py --device cuda --warmup 20 --repeat 100
bench=$?
echo "tests exit $tests, benchmark exit $bench"
exit $(( tests || bench ))
