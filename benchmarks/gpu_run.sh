#!/usr/bin/env bash
# One call on a lent GPU machine (the project's device tool): the Fashion-MNIST sweep, then the GPU
# speed benchmark. Run from the repository root with .whl/ (the timm wheel) and .data/fashion-mnist/
# carried along and OUT set to the folder whose files come back:
#   bash benchmarks/gpu_run.sh
# Each step has its own time limit, so one that overruns still leaves the others' results.
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/timm-1.0.31-*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
log=$OUT/gpu_run.log
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$log" 2>&1

# 9 configurations x 3 seeds x 15 epochs, 14 runs at a time; no new run starts after 300 s
timeout 420 python3 benchmarks/accuracy.py --device cuda --seeds 3 --workers 14 --time-budget 300 \
    --data-dir .data/fashion-mnist --results "$OUT/accuracy.json" --checkpoint-dir /tmp/ck 2>>"$log"
echo "accuracy: exit $?" >>"$log"
# the checkpoint (~45 MB) comes back in parts of at most 15 MiB
[ -f /tmp/ck/saeresnet18_seed0.pth.tar ] && split -b 15M /tmp/ck/saeresnet18_seed0.pth.tar "$OUT/saeresnet18_seed0.pth.tar.part-"

# eager: bf16 autocast, channels_last and NCHW, inference batch 256, training batch 128
timeout 150 python3 benchmarks/speed.py --device cuda --batch-size 256 --train-batch-size 128 --rounds 11 \
    --warmup 3 --pairs resnet50 resnet18 resnext50 --modes infer-cl train-cl infer-nchw train-nchw \
    --out "$OUT/speed_cuda.json" >>"$log" 2>&1
echo "speed eager: exit $?" >>"$log"
# torch.compile on the 50-layer trio, channels_last
timeout 300 python3 benchmarks/speed.py --device cuda --batch-size 256 --train-batch-size 128 --rounds 11 \
    --warmup 3 --pairs resnet50 --modes infer-cl train-cl --compile resnet50 \
    --out "$OUT/speed_cuda_compile.json" >>"$log" 2>&1
echo "speed compile: exit $?" >>"$log"
rm -f "$OUT"/*.md  # regenerated here with speed.py --table-only; keeps the returned files under 8
tail -n 40 "$log"
