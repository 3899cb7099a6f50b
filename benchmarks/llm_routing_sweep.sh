#!/bin/bash
# MoRAM's routing settings on the LLM default, one setting changed at a time (seed 0 unless given): the
# temperature tau (trained with it, so one fit each) and signed against unsigned scores. The baseline
# (tau 0.03, signed) is the side-by-side table's MoRAM run; delta acts at inference only and is swept
# after the fact on finished runs (benchmarks/llm_gate_sweep.py). Every run keeps the config's optimiser.
#
# Usage: bash benchmarks/llm_routing_sweep.sh OUT [SEED...]
#   e.g. bash benchmarks/llm_routing_sweep.sh runs/llm_routing_sweep 0
# then, per run, whether the keys learnt to route:
#   python benchmarks/llm_key_routing.py --run OUT/tau0.3/seed0 --out OUT/tau0.3/key_routing.md
set -euo pipefail
out=${1:?OUT folder}; shift
seeds=("${@:-0}")
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
USAGE='--trainer.callbacks+=moram.callbacks.AtomUsageCallback --trainer.callbacks.save_plots false'
exec python benchmarks/compare.py --config "${CONFIG:-configs/llm_cl.yaml}" --seeds "${seeds[@]}" --out "$out" \
  --run "tau0.01=$USAGE --model.method.temperature 0.01" \
  --run "tau0.1=$USAGE --model.method.temperature 0.1" \
  --run "tau0.3=$USAGE --model.method.temperature 0.3" \
  --run "unsigned=$USAGE --model.method.signed_scores false"
