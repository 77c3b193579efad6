#!/usr/bin/env bash
# The GPU check of issue #23, in one go on a lent GPU machine (torch, torchvision, timm, transformers,
# pytest, hypothesis and tabulate are in its image; nothing can be fetched there):
#
#   here, once:   bash benchmarks/gpu_check.sh --prepare      # wheels of the peers into .whl/ (ignored by git)
#   there:        bash benchmarks/gpu_check.sh [MINUTES]      # the CUDA tests, then the CUDA benchmark
#
# It installs the carried wheels into /tmp/site, runs every test marked `cuda`, then
# benchmarks/run.py --device cuda (written to benchmarks/RESULTS-cuda.md, copied to $OUT when set),
# stopping the benchmark so that the whole check ends within MINUTES (default 8).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PEERS="thop ptflops torchinfo fvcore iopath yacs termcolor"
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  for peer in $PEERS; do  # pure-Python wheels: from the index, or built here when it has only a source archive
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 -d .whl "$peer" 2>/dev/null || python3 -m pip wheel -q --no-deps -w .whl "$peer"
  done
  ls -la .whl
  exit 0
fi
budget=$(( ${1:-8} * 60 ))
start=$SECONDS
py=${PYTHON:-python3}
$py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device"; exit 2; }
if ls .whl/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || echo "the peers' wheels did not install: the benchmark runs without them"
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
$py -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
timeout $(( budget / 3 )) $py -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tee /tmp/cuda-tests.log
tests=${PIPESTATUS[0]}
left=$(( budget - (SECONDS - start) - 20 ))
timeout "$left" $py benchmarks/run.py --device cuda --repeat 7 --first-pairs 1 --no-profile
bench=$?
[ -n "${OUT:-}" ] && cp benchmarks/RESULTS-cuda.md /tmp/cuda-tests.log "$OUT"/ 2>/dev/null
echo "cuda tests exit $tests, benchmark exit $bench, $(( SECONDS - start )) s"
exit $(( tests != 0 || bench != 0 ))
