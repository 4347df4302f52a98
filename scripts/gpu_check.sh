#!/usr/bin/env bash
# The checks that need CUDA, in one go, for a machine with a GPU:
#   - the tests marked `gpu` (extract-features --gpu against the CPU path; evaluate on CUDA),
#   - the GPU sections of the benchmarks (bench_extract, bench_train, bench_evaluate,
#     bench_distributed --gpu-only: JPEG frames decoded on the GPU vs in the workers),
#     written into benchmarks/RESULTS.md (each its own `_gpu` section) and copied to OUTDIR.
#
#   bash scripts/gpu_check.sh [OUTDIR]     (PYTHON=... picks the interpreter; STEPS="tests" or
#                                           "tests bench-extract ..." runs only those steps)
#
# Uses the project's own interpreter when the machine has one (`make` made .venv), else
# `python3` with the repository on PYTHONPATH. Wheels in .whl/ (packages that machine lacks) are
# installed into a scratch folder first; with no ffmpeg on PATH, the static one that the
# imageio-ffmpeg wheel ships stands in. Each step has its own time limit; the script goes on
# after a failed step and exits non-zero if any failed.
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/mrw-site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/mrw-site"
fi
if ! command -v ffmpeg >/dev/null; then
    exe=$("$py" -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())" 2>/dev/null) \
        && mkdir -p /tmp/mrw-bin && ln -sf "$exe" /tmp/mrw-bin/ffmpeg && export PATH="/tmp/mrw-bin:$PATH"
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$py" -c "import sys, torch, torchvision, pyarrow; print(sys.version.split()[0], 'torch', torch.__version__,
'torchvision', torchvision.__version__, 'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available())"
    command -v ffmpeg ffprobe; ffmpeg -version 2>&1 | head -1
    nproc
} 2>&1 | tee "$out/environment.txt"

failed=0
steps=${STEPS:-tests-gpu bench-extract bench-train bench-evaluate bench-gpu-decode}
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    case " $steps " in *" $name "*|*" ${name%-gpu} "*) ;; *) return 0 ;; esac
    echo "== $name (at most ${limit} s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed=1
}

step tests-gpu 150 "$py" -m pytest -q -rs -m gpu -p no:cacheprovider tests/test_features.py tests/test_stage.py \
    tests/test_evaluation_scoring.py tests/test_evaluation_exact.py tests/test_pienet_train.py
step bench-extract 220 "$py" benchmarks/bench_extract.py --gpu-only
step bench-train 90 "$py" benchmarks/bench_train.py --gpu-only
step bench-evaluate 90 "$py" benchmarks/bench_evaluate.py --gpu-only
step bench-gpu-decode 240 "$py" benchmarks/bench_distributed.py --gpu-only
cp benchmarks/RESULTS.md "$out/RESULTS.md"
exit "$failed"
