#!/usr/bin/env bash
# The GPU check: exercises every CUDA path of contrastlab on a machine with one or more NVIDIA
# GPUs and records images/s, peak GPU memory and MFU per method.
#   bash benchmarks/gpu_check.sh            # after bash install.sh (a CUDA build of torch 2.13)
# 1. benchmarks/suites/gpu-check.yaml through `contrastlab bench`: every method under bf16 and
#    fp16 (gradient scaling) autocast with channels-last, the meta-learning methods' exact
#    (forward-over-reverse) meta step, the streaming loader with pinned memory on a generated
#    image folder; report in benchmarks/results/gpu_check/.
# 2. DDP over every GPU with NCCL and SyncBatchNorm (torchrun), two epochs of SimCLR on the digits.
# Never run in CI (no GPU there). Output: benchmarks/results/gpu_check/{report.md,report.json,ddp.log}.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/gpu_check}
IMAGES=/tmp/contrastlab-gpu-check-images  # the folder gpu-check.yaml's folder-stream dataset reads

"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else
  'no CUDA device visible to torch ' + torch.__version__ + ': the GPU check needs one')"
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
mkdir -p "$OUT"
[ -d "$IMAGES/train" ] || "$PYTHON" benchmarks/make_image_folder.py "$IMAGES" --train 4000 --test 500

"$PYTHON" -m contrastlab bench benchmarks/suites/gpu-check.yaml --out "$OUT"

echo "DDP: $GPUS GPU(s), NCCL, SyncBatchNorm" | tee "$OUT/ddp.log"
rm -rf "$OUT/runs/ddp"
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m contrastlab train \
  configs/simclr-gray-small-convnet.yaml --run-dir "$OUT/runs/ddp" data.name=digits train.device=cuda \
  train.sync_batchnorm=true train.epochs=2 train.batch_size=64 train.progress=false eval.knn_k=20 \
  2>&1 | tee -a "$OUT/ddp.log"
grep -h images_per_s "$OUT/runs/ddp/metrics.jsonl" | tail -1 | tee -a "$OUT/ddp.log"
echo "GPU check done: $OUT/report.md, $OUT/ddp.log"
