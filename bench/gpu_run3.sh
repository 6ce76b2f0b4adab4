#!/usr/bin/env bash
# GPU pass for issue 17 items 1, 3, 5 (not yet run: written in a session without a GPU).
# About 8 minutes on an H200; uses the machine's own python3 (torch + timm):  OUT=/some/dir bash bench/gpu_run3.sh
set -u
export PYTHONPATH=.
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee "$OUT/gpu3.txt"
# host syncs a step before / after item 1 (aten::_local_scalar_dense per step)
timeout 40 python3 -m bench.profile_step --device cuda --checks --out "$OUT/profile_step_checks_gpu.txt" 2>&1 | head -3
timeout 40 python3 -m bench.profile_step --device cuda --out "$OUT/profile_step_nosync_gpu.txt" 2>&1 | head -3
# step time and syncs: before / fast / bf16 / fp16 / compile / compile+bf16 (compile takes ~1-2 min)
timeout 300 python3 -m bench.bench_gpu_fastpath --device cuda --backbone resnet101 --size 256 --batch 8 \
    --steps 25 --reps 5 --out "$OUT/gpu_fastpath.json" 2>&1 | grep -v "^W" | tail -12
# loader wait: workers x pin_memory, real training steps
timeout 150 python3 -m bench.bench_loader_wait --device cuda --backbone resnet101 --workers 0,2,4,8 \
    --steps 40 --out "$OUT/loader_wait_gpu.json" 2>&1 | tail -12
# data parallel: 1 rank x 8 pairs vs 2 ranks x 4 (NCCL) and the all-reduce share; skips with one GPU
timeout 120 python3 -m bench.bench_ddp --device cuda --backbone resnet101 --finetune all --size 256 \
    --batch 8 --reps 10 --out "$OUT/ddp_gpu.json" 2>&1 | tail -6
echo done
