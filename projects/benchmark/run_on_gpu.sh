#!/usr/bin/env bash
# The benchmark on a CUDA machine without internet, in under 10 minutes (projects/benchmark/README.md):
# installs what prepare_offline.sh put in .whl/, runs benchmark.py in fp32, with --amp --channels-last
# and with --precision, trains Mask R-CNN on the shapes data in bf16 and prints the tables ($OUT).
# Needs python3 with CUDA PyTorch, torchvision, numpy and OpenCV (PYTHON=... for another). On a CPU:
#     DEVICE=cpu TRAIN_ITERS=2 BENCH_ARGS="--image-size 64 --batch-size 2 --iters 1 --warmup 1 \
#         --detectors faster_rcnn" bash projects/benchmark/run_on_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
out=${OUT:-output/gpu_benchmark}
device=${DEVICE:-cuda}
# Seed scale: 1333x800 images (COCO's training scale), 2 per training step, 8 per inference batch.
read -r -a bench_args <<<"${BENCH_ARGS:---image-size 800x1333 --batch-size 8 --iters 20 --warmup 5}"
train_iters=${TRAIN_ITERS:-300}
# float16 needs CUDA; bfloat16 runs on CUDA and on the CPU.
precisions=$([ "$device" = cuda ] && echo "float16 bfloat16" || echo bfloat16)
work=$(mktemp -d /tmp/rsb_gpu_benchmark.XXXXXX)
mkdir -p "$out"
started=$SECONDS
step() { echo; echo "=== [$((SECONDS - started)) s] $*"; }

step "install from $wheels"
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$work/site" "$wheels"/*.whl || exit 1
tar -xzf "$wheels"/detectron2-*-python.tar.gz -C "$work/site" || exit 1
export PYTHONPATH="$work/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=$device "$python" - <<'EOF' || exit 1
import os
import detectron2, timm, torch, torchvision, rsb_backbone
if os.environ["DEVICE"] == "cuda":
    assert torch.cuda.is_available(), "torch sees no CUDA device"
    print(torch.cuda.get_device_name())
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) | "
      f"torchvision {torchvision.__version__} | detectron2 {detectron2.__version__} | timm {timm.__version__}")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true

bench=("$python" projects/benchmark/benchmark.py --device "$device" "${bench_args[@]}")
step "benchmark, fp32"
timeout -k 20 200 "${bench[@]}" --json "$out/benchmark_fp32.json" >"$out/benchmark_fp32.md"
echo "exit code $?"
step "benchmark, AMP + channels_last"
timeout -k 20 150 "${bench[@]}" --amp --channels-last --json "$out/benchmark_amp_channels_last.json" \
    >"$out/benchmark_amp_channels_last.md"
echo "exit code $?"

for precision in $precisions; do
    step "benchmark, fp32 against $precision (RSB models)"
    timeout -k 20 60 "${bench[@]}" --precision "$precision" --iters 8 --warmup 2 \
        --json "$out/benchmark_$precision.json" >"$out/benchmark_$precision.md"
    echo "exit code $?"
done

step "$train_iters bf16 training iterations: Mask R-CNN on the generated shapes data"
RSB_DATASETS="$work/datasets" timeout -k 20 120 "$python" train_net.py \
    --config-file configs/shapes/mask_rcnn_rsb_r50_fpn_shapes.py \
    train.device="$device" train.amp.enabled=True train.amp.precision=bfloat16 train.max_iter="$train_iters" \
    train.eval_period="$train_iters" train.checkpointer.period=100000 train.log_period=50 train.output_dir="$work/shapes" \
    >"$out/train_shapes_amp.log" 2>&1
echo "exit code $?"
# Detectron2's own summary lines: the training speed and the COCO AP of the final evaluation.
grep -E "Overall training speed|copypaste: " "$out/train_shapes_amp.log" | tee "$out/train_shapes_amp.md"

step "results"
cat "$out/benchmark_fp32.md" "$out/benchmark_amp_channels_last.md"
for precision in $precisions; do cat "$out/benchmark_$precision.md"; done
rm -rf "$work"
echo "total $((SECONDS - started)) s"
