#!/usr/bin/env bash
# One short GPU pass of the device-dependent benchmarks (used once through the lent device machine).
# Uses the machine's own python3 (torch + timm), nothing installed:  OUT=/some/dir bash bench/gpu_run.sh
set -u
export PYTHONPATH=.
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
PY=python3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import torch,timm;print('torch',torch.__version__,'timm',timm.__version__)" | tee -a "$OUT/gpu.txt"
timeout 90 $PY -m bench.bench_overhead --device cuda --reps 20 --warmup 3 --out "$OUT/overhead_gpu.json" 2>&1 | tail -8
timeout 55 $PY -m bench.bench_loss_memory --device cuda --out "$OUT/loss_memory_gpu.json" 2>&1 | tail -9
timeout 45 $PY -m bench.bench_eval --device cuda --backbones resnet101,dino_vitb8 --pairs 64 --reps 5 --out "$OUT/eval_gpu.json" 2>&1 | tail -6
timeout 60 $PY -m bench.bench_options --device cuda --backbone resnet101 --reps 10 --no-loader --out "$OUT/options_gpu.json" 2>&1 | tail -16
timeout 30 $PY -m bench.bench_scaling --device cuda --backbone resnet50 --reps 10 --out "$OUT/scaling_gpu.json" 2>&1 | tail -12
echo done
