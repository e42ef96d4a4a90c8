#!/usr/bin/env bash
# The GPU checks of issue #15, as one short script for a machine with a CUDA GPU (run from the repository root,
# after `pip install -e .`): learn + ask on the demo handbook in bfloat16 on the GPU, the training throughput
# benchmark on the GPU, and the 2-process paths (DDP, and FSDP with --shard) when the machine has 2 GPUs. Results land in $OUT (default
# ./gpu_check): each command's output and peak memory, and train_speed.{json,md}.
set -euo pipefail
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
export INWEIGHTS_HOME=${INWEIGHTS_HOME:-$OUT/home}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.csv"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'bf16', torch.cuda.is_bf16_supported())" | tee "$OUT/torch.txt"
/usr/bin/time -v python -m inweights demo --device cuda --dtype bfloat16 --no-progress --out "$OUT/demo.json" \
    > "$OUT/demo.log" 2>&1
python -m inweights ask demo-handbook "When was Fjordlight Instruments founded?" --device cuda --dtype bfloat16 \
    | tee "$OUT/ask.txt"
python benchmarks/train_speed.py --device cuda --dtype bfloat16 --processes 1 --out "$OUT/train_speed"
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    torchrun --standalone --nproc_per_node 2 -m inweights learn src/inweights/data/demo/handbook --memory two-gpus \
        --device cuda --dtype bfloat16 --no-progress > "$OUT/two_gpus.log" 2>&1
    torchrun --standalone --nproc_per_node 2 -m inweights learn src/inweights/data/demo/handbook --memory two-shards \
        --device cuda --dtype bfloat16 --shard --no-progress > "$OUT/two_shards.log" 2>&1
fi
tail -n 30 "$OUT/demo.log"
