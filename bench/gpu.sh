#!/usr/bin/env bash
# Every GPU measurement of bench/, in one script for a lent device machine.
# Uses the machine's own python3 (torch + timm), installs nothing:
#   OUT=/some/dir bash bench/gpu.sh            # the cases whose GPU figures RESULTS.md still lacks
#   OUT=/some/dir bash bench/gpu.sh all        # every case (about 15 minutes on an H200)
#   OUT=/some/dir bash bench/gpu.sh ddp eval   # the named cases
# Each case has its own time limit, so one slow case cannot eat the others' time.
set -u
export PYTHONPATH=.
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
PY=python3

overhead()    { timeout 90 $PY -m bench.bench_overhead --device cuda --reps 20 --warmup 3 --out "$OUT/overhead_gpu.json" 2>&1 | tail -8; }
loss_memory() { timeout 110 $PY -m bench.bench_loss_memory --device cuda --out "$OUT/loss_memory_gpu.json" 2>&1 | tail -9; }
eval()        { timeout 45 $PY -m bench.bench_eval --device cuda --backbones resnet101,dino_vitb8 --pairs 64 --reps 5 --out "$OUT/eval_gpu.json" 2>&1 | tail -6; }
options()     { timeout 120 $PY -m bench.bench_options --device cuda --backbone resnet101 --reps 10 --no-loader --compile --out "$OUT/options_compile_gpu.json" 2>&1 | tail -18; }
scaling()     { timeout 30 $PY -m bench.bench_scaling --device cuda --backbone resnet50 --reps 10 --out "$OUT/scaling_gpu.json" 2>&1 | tail -12; }
# host syncs per step (aten::_local_scalar_dense) with and without the per-step checks
profile()     {
    timeout 40 $PY -m bench.profile_step --device cuda --checks --out "$OUT/profile_step_checks_gpu.txt" 2>&1 | head -3
    timeout 40 $PY -m bench.profile_step --device cuda --out "$OUT/profile_step_nosync_gpu.txt" 2>&1 | head -3
}
# step time and syncs: before / fast / bf16 / fp16 / compile / compile+bf16 (compile takes ~1-2 min)
fastpath()    { timeout 300 $PY -m bench.bench_gpu_fastpath --device cuda --backbone resnet101 --size 256 --batch 8 \
                    --steps 25 --reps 5 --out "$OUT/gpu_fastpath.json" 2>&1 | grep -v "^W" | tail -12; }
# loader wait: workers x pin_memory, real training steps
loader_wait() { timeout 150 $PY -m bench.bench_loader_wait --device cuda --backbone resnet101 --workers 0,2,4,8 \
                    --steps 40 --out "$OUT/loader_wait_gpu.json" 2>&1 | tail -12; }
# data parallel: 1 rank x 8 pairs vs 2 ranks x 4 (NCCL) and the all-reduce share; skips with one GPU
ddp()         { timeout 120 $PY -m bench.bench_ddp --device cuda --backbone resnet101 --finetune all --size 256 \
                    --batch 8 --reps 10 --out "$OUT/ddp_gpu.json" 2>&1 | tail -6; }

ALL="overhead loss_memory eval options scaling profile fastpath loader_wait ddp"
PENDING="profile fastpath loader_wait ddp"  # RESULTS.md marks these GPU figures as pending
case "${1:-pending}" in
    pending) CASES=$PENDING ;;
    all) CASES=$ALL ;;
    *) CASES="$*" ;;
esac
for c in $CASES; do
    if [[ " $ALL " != *" $c "* ]]; then echo "bench/gpu.sh: unknown case '$c' (cases: $ALL)" >&2; exit 2; fi
done
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1
  $PY -c "import torch,timm;print('torch',torch.__version__,'timm',timm.__version__)"; } | tee "$OUT/gpu.txt"
for c in $CASES; do
    echo "== $c"; "$c"
done
echo done
