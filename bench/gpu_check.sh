#!/usr/bin/env bash
# The GPU checks of issue 20 in one go, on a CUDA machine (written without a GPU: not yet run on one):
#   1. bench/at_step.py --archs wrn28_4 wrn34_10: reference fp32 NCHW against the kit in fp32 (channels-last, BN
#      folded), without the fold, bf16, bf16 NCHW, and bf16 + torch.compile: img/s, TFLOP/s, bf16 MFU
#      (target: >= 35 % for WRN-34-10 PGD-7)                              -> bench/results/at_step.json
#   2. bench/gpu_check.py precision: compare_precision (bf16 vs fp32 robust accuracy within a point) on the GPU
#                                                                          -> bench/results/gpu_precision.json
#   3. bench/eval_ensemble.py --device cuda: the strong ensemble's throughput against pyautoattack and PGD-20
#                                                                          -> bench/results/eval_ensemble.json
#   4. bench/gpu_check.py paper-epoch: the paper preset for one epoch on random CIFAR-100 files in the real
#      on-disk format, its evaluation, determinism flags and checkpoint/resume on CUDA
#                                                                          -> bench/results/gpu_paper_epoch.json
# Usage: bash bench/gpu_check.sh   (PYTHON=... to choose the interpreter; default .venv/bin/python, else python3)
# It stops at the first failure; without a CUDA device it stops at once with one line on stderr (exit 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"  # deterministic cuBLAS for the resume check

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check.sh: no CUDA device (torch.cuda.is_available() is False with $PY); nothing was run" >&2
    exit 2
fi

echo "== $(date -u '+%F %T UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi absent')"
echo "== 1/4 adversarial-training step (bench/results/at_step.json)"
"$PY" bench/at_step.py --archs wrn28_4 wrn34_10 --bf16 --compile --ablation --repeats 5
echo "== 2/4 bf16 against fp32 robust accuracy (bench/results/gpu_precision.json)"
"$PY" bench/gpu_check.py precision --device cuda --n 500
echo "== 3/4 strong ensemble throughput (bench/results/eval_ensemble.json)"
"$PY" bench/eval_ensemble.py --device cuda --n 500 --repeats 1
echo "== 4/4 paper preset, one epoch on random CIFAR-100 files, evaluation, determinism, resume (bench/results/gpu_paper_epoch.json)"
"$PY" bench/gpu_check.py paper-epoch --device cuda --train 1024 --eval-n 64
echo "== done $(date -u '+%F %T UTC'); results in bench/results/"
