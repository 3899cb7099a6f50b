#!/bin/bash
# The side-by-side LLM table: MoRAM, sequential LoRA, O-LoRA, MoE-LoRA, rank-r experts (MoRAM's routing
# over rank-8 blocks, the LLM tau and scale) and zero-shot on an LLM config (CONFIG, default
# configs/llm_cl.yaml: the TRACE-shaped domain stream, benchmarks/results/llm_domains/; the former default
# is configs/llm_cl_adversarial.yaml, benchmarks/results/llm_cl_baselines/), per seed, under one of two settings:
#
#   project   the config as shipped: lr 3e-3, 10 warmup steps then cosine per task, no clipping
#   official  the official MoRAM/TRACE optimiser settings: lr 5e-4 constant, no warmup, clip 1.0
#             (betas 0.9/0.95 and the atom settings are the config's in both)
#
# Every method gets the same learning rate and schedule (no method is tuned alone).
#
# Usage: [CONFIG=...] [METHODS="moram seq_lora ..."] bash benchmarks/llm_cl_baselines.sh SETTING OUT SEED...
#   e.g.  bash benchmarks/llm_cl_baselines.sh project benchmarks/results/llm_domains 0 1 2
# Each (method, seed) is one `moram fit` into OUT/SETTING/METHOD/seedS; finished ones are skipped, so
# an interrupted call resumes; a trailing --report-only tabulates the finished runs and fits nothing.
# METHODS (default: all six) fits a subset -- two calls with disjoint METHODS can share OUT on two
# cores; a final call with all methods and --report-only writes the whole table.
# OUT/SETTING/comparison.md is the table.
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
declare -A RUN=(
  [moram]="$USAGE $S"
  [seq_lora]="--model.method moram.baselines.SequentialLoRA --model.method.rank 8 $S"
  [o_lora]="--model.method moram.baselines.OLoRA $S"
  [moe_lora]="--model.method moram.baselines.MoELoRA --model.method.rank 8 $USAGE $S"
  [rank_r_experts]="--model.method moram.baselines.RankRExperts --model.method.rank 8 --model.method.temperature 0.03 --model.method.scale 2.0 $USAGE $S"
)
runs=()
for m in ${METHODS:-moram seq_lora o_lora moe_lora rank_r_experts zero_shot}; do
  if [[ $m == zero_shot ]]; then runs+=("${extra[@]}"); continue; fi
  [[ -n ${RUN[$m]+x} ]] || { echo "METHODS: unknown method '$m' (moram seq_lora o_lora moe_lora rank_r_experts zero_shot)" >&2; exit 2; }
  runs+=(--run "$m=${RUN[$m]}")
done
exec python benchmarks/compare.py --config "${CONFIG:-configs/llm_cl.yaml}" --seeds "$@" --out "$out/$setting" "${runs[@]}"
