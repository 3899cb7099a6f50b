#!/bin/bash
# The side-by-side LLM table (benchmarks/results/llm_cl_baselines/): MoRAM, sequential LoRA, O-LoRA,
# MoE-LoRA, rank-r experts (MoRAM's routing over rank-8 blocks, the LLM tau and scale) and zero-shot
# on configs/llm_cl.yaml, per seed, under one of two settings:
#
#   project   the config as shipped: lr 3e-3, 10 warmup steps then cosine per task, no clipping
#   official  the official MoRAM/TRACE optimiser settings: lr 5e-4 constant, no warmup, clip 1.0
#             (betas 0.9/0.95 and the atom settings are the config's in both)
#
# Usage: bash benchmarks/llm_cl_baselines.sh SETTING OUT SEED...    e.g.  ... project runs/llm 0 1 2
# Each (method, seed) is one `moram fit` into OUT/SETTING/METHOD/seedS; finished ones are skipped, so
# an interrupted call resumes; a trailing --report-only tabulates the finished runs and fits nothing.
# OUT/SETTING/comparison.md is the table. About 4-6 CPU-minutes a run
# (1 thread); the two settings in parallel on 2 cores: 35 runs in about 75 min.
set -euo pipefail
setting=${1:?SETTING: project or official}; out=${2:?OUT folder}; shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
USAGE='--trainer.callbacks+=moram.callbacks.AtomUsageCallback --trainer.callbacks.save_plots false'
case $setting in
  project) S=''; extra=(--run zero_shot="--model.method moram.baselines.ZeroShot") ;;
  official) S='--model.lr 5e-4 --model.lr_schedule constant --model.warmup_steps 0 --trainer.gradient_clip_val 1.0'
            extra=() ;;  # zero-shot does not train: the same under both settings
  *) echo "SETTING must be project or official, got '$setting'" >&2; exit 2 ;;
esac
cd "$here"
exec python benchmarks/compare.py --config configs/llm_cl.yaml --seeds "$@" --out "$out/$setting" \
  --run moram="$USAGE $S" \
  --run seq_lora="--model.method moram.baselines.SequentialLoRA --model.method.rank 8 $S" \
  --run o_lora="--model.method moram.baselines.OLoRA $S" \
  --run moe_lora="--model.method moram.baselines.MoELoRA --model.method.rank 8 $USAGE $S" \
  --run rank_r_experts="--model.method moram.baselines.RankRExperts --model.method.rank 8 --model.method.temperature 0.03 --model.method.scale 2.0 $USAGE $S" \
  "${extra[@]}"
