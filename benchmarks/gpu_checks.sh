#!/usr/bin/env bash
# The GPU checks of issue 7 as one device call: CUDA correctness, then the figures it asks for.
#
# The device machines have torch 2.11 but no package index, so the packages they lack travel as
# wheels. Once, on a machine with the registry:
#     bash benchmarks/gpu_checks.sh --fetch-wheels      # -> .gpu_wheels/ (about 18 MB, git-ignored)
# Then two device calls (tool `run`, carry [".gpu_wheels"], timeout_s 600), the machine kept warm:
#     bash benchmarks/gpu_checks.sh climate cifar          # at most 330 s
#     bash benchmarks/gpu_checks.sh correctness sampling   # at most 300 s
# (no arguments: all four, which can outlast one call's 600 s). Every section appends JSON lines
# to $OUT (or ./gpu_results) and has its own time limit, so a slow compile costs its section, not
# the call. Sections, in order of what the issue needs:
#   climate      4 x 64 x 128 net, bf16, batch 64: our MFU (>= 35% asked) against diffusers, eager
#   cifar        3 x 32 x 32 net, bf16, batch 256: ours vs diffusers, eager and torch.compile
#                (>= 1.5x diffusers with compile asked), compile times included
#   correctness  benchmarks/cuda_checks.py: bf16 + compiled training, GPU = CPU samples,
#                compiled sampling in CUDA graphs = eager, no host syncs in the sampler loop
#   sampling     members/s at 32 NFE, bf16, CUDA graphs, largest batch that fits
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    # For the device image's Python 3.12 on x86_64; versions as in our CI venv.
    set -e
    mkdir -p .gpu_wheels
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        -d .gpu_wheels zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c hydra-core==1.3.8 \
        omegaconf==2.3.0 diffusers==0.42.1 importlib_metadata soundfile==0.14.0 cffi pycparser h5netcdf==1.8.2 \
        xarray==2026.9.0  # the image's xarray may predate zarr 3
    python3 -m pip wheel -q --no-deps -w .gpu_wheels antlr4-python3-runtime==4.9.3  # sdist only on PyPI
    du -sh .gpu_wheels
    exit 0
fi

OUT="${OUT:-$PWD/gpu_results}"
mkdir -p "$OUT"
sections=("$@")
[[ ${#sections[@]} -eq 0 ]] && sections=(climate cifar correctness sampling)
for section in "${sections[@]}"; do
    case "$section" in
        climate|cifar|correctness|sampling) ;;
        *) echo "unknown section $section: climate, cifar, correctness or sampling" >&2; exit 2 ;;
    esac
done
log="$OUT/gpu_checks.log"

if ! ls .gpu_wheels/*.whl >/dev/null 2>&1; then
    echo "no .gpu_wheels/: run 'bash benchmarks/gpu_checks.sh --fetch-wheels' here first and carry .gpu_wheels" >&2
    exit 2
fi
# beside the image's packages, not into them (device/README.md's way): /tmp/site comes first on the path
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu_wheels/*.whl >>"$log" 2>&1 || { tail "$log"; exit 2; }
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$OUT/gpu.csv"
python3 -c "import torch, sciddpm, diffusers, zarr, hydra, xarray, pandas; print(*(f'{m.__name__} {m.__version__}' for m in (torch, diffusers, zarr, xarray, pandas)))"

status=0
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s)" | tee -a "$log"
    timeout "$limit" "$@" 2>>"$log"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
    [[ $rc -ne 0 ]] && status=1
}

for section in "${sections[@]}"; do
    case "$section" in
        climate) step climate 90 python3 benchmarks/train_throughput.py --device cuda --nets climate \
                     --models sciddpm diffusers --batch 64 --rounds 3 --steps 10 --out "$OUT/train_gpu.jsonl" ;;
        cifar) step cifar 240 python3 benchmarks/train_throughput.py --device cuda --nets cifar \
                   --models sciddpm sciddpm+compile diffusers diffusers+compile --batch 256 --rounds 3 \
                   --steps 10 --out "$OUT/train_gpu.jsonl" ;;
        correctness) step correctness 150 bash -c "set -o pipefail; python3 benchmarks/cuda_checks.py | tee '$OUT/cuda_checks.jsonl'" ;;
        sampling) step sampling 150 python3 benchmarks/sample_throughput.py --device cuda --dtype bfloat16 \
                      --compile --compile-mode reduce-overhead --batch 0 --nets climate cifar --rounds 2 \
                      --out "$OUT/sample_gpu.jsonl" ;;
    esac
done
exit $status
