#!/usr/bin/env bash
# One call on a lent GPU machine (the project's device tool), run from the repository root with OUT
# set to the folder whose files come back; .whl/ (the timm 1.0.31 wheel) carried along where the
# machine's timm is another version, .data/fashion-mnist (the IDX files) for the Fashion-MNIST parts.
#
#   bash benchmarks/gpu_run.sh block speed        # the default, first whenever a GPU is available
#   bash benchmarks/gpu_run.sh warm_start speed   # what one call of at most 600 s holds: the parts in order
#   bash benchmarks/gpu_run.sh accuracy           # the Fashion-MNIST sweep (done: results/accuracy.json)
#
# block: benchmarks/inductor_block.py, one layer3.1 block compiled per model (resnet50, seresnet50,
# saeresnet50 and saeresnet50 with the SE-form squeeze), bf16 autocast, batch 128: Inductor's kernels
# and traffic, and interleaved timings, eval and train. Returns inductor_block_cuda.{json,md}.
# warm_start: benchmarks/warm_start.py, 3 seeds: 6 sources, 3 scratch runs and 12 fine-tunings, 15 runs
# at a time; no new run starts after 240 s. Returns warm_start.json.
# speed: bf16 autocast, channels_last, 224 px, inference batch 256 and training batch 128, eager then
# torch.compile (inductor): saeresnet50 vs saeresnet50 with the SE-form squeeze (before / after the
# narrow squeeze) vs seresnet50 vs resnet50, saeresnext50_32x4d vs
# seresnext50_32x4d. speed.py rewrites its JSON and table after every mode, in the order eager (4
# modes), then compiled resnet50 infer, train, resnext50 infer, train; it gets the call's time left
# (DEADLINE_S, default 570 s from the start), and the cut takes only what is left. Returns speed_cuda.{json,md}.
# accuracy: 9 configurations x 3 seeds x 15 epochs, 14 runs at a time. Returns accuracy.json and the
# saeresnet18 seed-0 checkpoint in parts.
# Every part appends to gpu_run.log, which comes back too.
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
(( $# )) || set -- block speed
for part; do
    [[ $part == block || $part == speed || $part == accuracy || $part == warm_start ]] || {
        echo "usage: bash benchmarks/gpu_run.sh [block] [warm_start] [speed] [accuracy]" >&2; exit 2; }
done
deadline=${DEADLINE_S:-570}
export PYTHONPATH=. PYTHONUNBUFFERED=1
if compgen -G '.whl/timm-1.0.31-*.whl' >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/timm-1.0.31-*.whl || exit 1
    export PYTHONPATH=/tmp/site:.
fi
log=$OUT/gpu_run.log
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c 'import sys, torch, timm; print("python", sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__)'
} >"$log" 2>&1

for part; do
    left=$((deadline - SECONDS))
    echo "== $part: $(date -u +%FT%TZ), ${left} s left" >>"$log"
    case $part in
    block)
        timeout $((left < 150 ? left : 150)) python3 benchmarks/inductor_block.py --device cuda --precision bf16 \
            --batch-size 128 --out "$OUT/inductor_block_cuda.json" >>"$log" 2>&1
        ;;
    warm_start)
        timeout $((left < 330 ? left : 330)) python3 benchmarks/warm_start.py --device cuda --workers 15 \
            --time-budget 240 --data-dir .data/fashion-mnist --results "$OUT/warm_start.json" \
            --checkpoint-dir /tmp/ck_warm_start 2>>"$log"
        ;;
    speed)
        timeout "$left" python3 benchmarks/speed.py --device cuda --batch-size 256 --train-batch-size 128 \
            --rounds 21 --warmup 5 --pairs resnet50 resnext50 --modes infer-cl train-cl --compile \
            --out "$OUT/speed_cuda.json" >>"$log" 2>&1
        ;;
    accuracy)
        timeout "$left" python3 benchmarks/accuracy.py --device cuda --seeds 3 --workers 14 --time-budget 300 \
            --data-dir .data/fashion-mnist --results "$OUT/accuracy.json" --checkpoint-dir /tmp/ck 2>>"$log"
        # the checkpoint (~45 MB) comes back in parts of at most 15 MiB
        [ -f /tmp/ck/saeresnet18_seed0.pth.tar ] && split -b 15M /tmp/ck/saeresnet18_seed0.pth.tar "$OUT/saeresnet18_seed0.pth.tar.part-"
        ;;
    esac
    echo "$part: exit $? (124: cut by the time limit; the JSON holds what finished)" >>"$log"
done
tail -n 40 "$log"
