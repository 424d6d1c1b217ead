#!/usr/bin/env bash
# The GPU measurements, for anyone with an NVIDIA GPU: run from the repository root with OUT set to a
# folder for the results (which are then copied into benchmarks/results/ by hand), in one go of at most
# DEADLINE_S seconds (default 570, counted from the start; each part gets what is left).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh                              # block speed, the default
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh accuracy_placement block speed   # the new accuracy runs first
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh warm_start speed
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh accuracy                      # the whole Fashion-MNIST sweep
#
# The Fashion-MNIST parts read the IDX files from DATA_DIR (default .data/fashion-mnist, else the Debian
# package's /usr/share/datasets/fashion-mnist). A timm 1.0.31 wheel in .whl/ is used where the machine's
# timm is another version.
#
# block: benchmarks/inductor_block.py, one layer3.1 block compiled per model (resnet50, seresnet50,
# saeresnet50, saeresnet50 with timm's tail, and seresnet50 accelerated), bf16 autocast,
# batch 128: Inductor's kernels and traffic, and interleaved timings, eval and train; at most 150 s.
# Returns inductor_block_cuda.{json,md}.
# accuracy_placement: benchmarks/accuracy.py, the placement and branch-width configurations
# (saeresnet18_s12, _s34, _s4, _rd16, _rd8) x 3 seeds under the accuracy protocol, all 15 runs at once,
# added to a copy of benchmarks/results/accuracy.json (runs already there are skipped). Expected to take 3
# to 4 minutes on an H200 (the 27 runs of results/accuracy.json, 14 at a time, took 334 s, each run 136 s
# median and 250 s at most); cut at 300 s (the JSON keeps the runs that finished; rerun to resume), so
# that block and speed get at least the 270 s left. Returns accuracy.json.
# warm_start: benchmarks/warm_start.py, 3 seeds: 6 sources, 3 scratch runs and 12 fine-tunings, 15 runs
# at a time; no new run starts after 240 s. Returns warm_start.json.
# speed: bf16 autocast, channels_last, 224 px, inference batch 256 and training batch 128, eager then
# torch.compile (inductor): saeresnet50 vs saeresnet50 with timm's tail (before / after the exact tail and
# the folded eval gate) vs seresnet50 vs resnet50; saeresnet50 with the tail's Triton kernels
# (timm_sae.set_triton_tail) vs without, eager training; the ResNeXt twins likewise; seresnet50 and ecaresnet50d
# accelerated (timm_sae.accelerate) vs timm's vs their plain twins. Peak memory (max_memory_allocated) and,
# in eager training, the activation memory kept for the backward. speed.py rewrites its JSON and table after
# every mode, in the order eager (8 modes), then compiled; it gets the time left, and a cut takes only the
# modes not yet measured. Returns speed_cuda.{json,md}.
# accuracy: 14 configurations x 3 seeds x 15 epochs, 14 runs at a time, into a fresh accuracy.json.
# Returns it and the saeresnet18 seed-0 checkpoint in parts of at most 15 MiB.
# Every part appends to gpu_run.log in OUT.
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
(( $# )) || set -- block speed
parts='block accuracy_placement warm_start speed accuracy'
for part; do
    [[ " $parts " == *" $part "* ]] || { echo "usage: bash benchmarks/gpu_run.sh [${parts// /] [}]" >&2; exit 2; }
done
deadline=${DEADLINE_S:-570}
data=${DATA_DIR:-.data/fashion-mnist}
[[ -d $data ]] || data=/usr/share/datasets/fashion-mnist
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
            --batch-size 128 --models seresnet50 saeresnet50 'saeresnet50 (timm tail)' 'seresnet50 (accelerated)' \
            --out "$OUT/inductor_block_cuda.json" >>"$log" 2>&1
        ;;
    accuracy_placement)
        [[ -f $OUT/accuracy.json ]] || cp benchmarks/results/accuracy.json "$OUT/accuracy.json"
        timeout $((left < 300 ? left : 300)) python3 benchmarks/accuracy.py --device cuda --seeds 3 --workers 15 \
            --configs saeresnet18_s12 saeresnet18_s34 saeresnet18_s4 saeresnet18_rd16 saeresnet18_rd8 \
            --data-dir "$data" --results "$OUT/accuracy.json" --checkpoint-dir /tmp/ck 2>>"$log"
        ;;
    warm_start)
        timeout $((left < 330 ? left : 330)) python3 benchmarks/warm_start.py --device cuda --workers 15 \
            --time-budget 240 --data-dir "$data" --results "$OUT/warm_start.json" \
            --checkpoint-dir /tmp/ck_warm_start 2>>"$log"
        ;;
    speed)
        timeout "$left" python3 benchmarks/speed.py --device cuda --batch-size 256 --train-batch-size 128 \
            --rounds 21 --warmup 5 --pairs resnet50 resnet50_triton resnext50 seresnet50 ecaresnet50d \
            --modes train-cl infer-cl --compile resnet50 resnext50 seresnet50 ecaresnet50d \
            --out "$OUT/speed_cuda.json" >>"$log" 2>&1
        ;;
    accuracy)
        timeout "$left" python3 benchmarks/accuracy.py --device cuda --seeds 3 --workers 14 --time-budget 300 \
            --data-dir "$data" --results "$OUT/accuracy.json" --checkpoint-dir /tmp/ck 2>>"$log"
        # the checkpoint (~45 MB) in parts of at most 15 MiB
        [ -f /tmp/ck/saeresnet18_seed0.pth.tar ] && split -b 15M /tmp/ck/saeresnet18_seed0.pth.tar "$OUT/saeresnet18_seed0.pth.tar.part-"
        ;;
    esac
    echo "$part: exit $? (124: cut by the time limit; the JSON holds what finished)" >>"$log"
done
tail -n 40 "$log"
