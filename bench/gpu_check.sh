#!/usr/bin/env bash
# The GPU checks in one pass, for a machine with CUDA and a CUDA build of torch already installed
# (no network needed): install ldfa from this checkout, run the CUDA tests, then the step and
# memory benchmarks on the GPU (allocator peaks there: one process per rule is enough). Takes a
# few minutes on a recent GPU.
#
#     bash bench/gpu_check.sh [OUT_DIR]        # logs and tables into OUT_DIR (default gpu-check/)
#
# Each part's output goes to its own file; a failing part is reported and the rest still run,
# and the exit status is non-zero if any part failed.
set -u
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0

part() {  # part NAME COMMAND...: run COMMAND, its output to OUT/NAME.txt and the terminal
    local name=$1; shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=1
}

part install "$py" -m pip install -q --no-deps --no-index --no-build-isolation -e .
part machine "$py" -c "import torch, platform; print(platform.python_version(), torch.__version__, \
torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
part tests "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
part step_fp32 "$py" bench/bench_step.py --device cuda --repeats 15
part step_bf16 "$py" bench/bench_step.py --device cuda --repeats 15 --precision bf16
part step_resnet224_bf16 "$py" bench/bench_step.py --device cuda --repeats 15 --precision bf16 \
    --models resnet18 --resnet-size 224 --resnet-batch 64
part memory_mlp "$py" bench/bench_memory.py --device cuda --repeats 1
part memory_resnet18 "$py" bench/bench_memory.py --device cuda --repeats 1 --model resnet18 --batch 64
echo "logs in $out/"
exit $status
