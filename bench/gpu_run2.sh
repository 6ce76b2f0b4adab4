#!/usr/bin/env bash
# Second short GPU pass: loss memory (CUDA allocator peak), profile of the step, torch.compile.
set -u
export PYTHONPATH=.
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
timeout 110 python3 -m bench.bench_loss_memory --device cuda --out "$OUT/loss_memory_gpu.json" 2>&1 | tail -9
timeout 40 python3 -m bench.profile_step --device cuda --out "$OUT/profile_step_gpu.txt" 2>&1 | head -40
timeout 120 python3 -m bench.bench_options --device cuda --backbone resnet101 --reps 10 --no-loader --compile --out "$OUT/options_compile_gpu.json" 2>&1 | tail -18
echo done
