#!/bin/bash
# The causal check of the LLM diagnosis: MoRAM on an LLM config (default configs/llm_cl.yaml) with
# GPM-style key-subspace protection -- each new task's keys (their initialisation, every gradient and
# every step) projected off the input subspace that earlier tasks occupied in that layer, so earlier
# tasks' tokens cannot select later atoms. The callback is not part of moram: it was measured and removed
# in issue 15 (benchmarks/results/key_subspace/); this script takes it unchanged from that commit into a
# temporary folder and adds it to the run with --trainer.callbacks+=. Everything else is the side-by-side
# table's MoRAM run (benchmarks/llm_cl_baselines.sh), so the two compare seed for seed.
#
# Usage: bash benchmarks/llm_key_subspace.sh OUT THRESHOLD SEED...
#   e.g.  bash benchmarks/llm_key_subspace.sh runs/llm_key_subspace 0.97 0 1 2
# Results: OUT/key_subspace_THRESHOLD/seedS (result.json, fit.log) and OUT/comparison.md.
set -euo pipefail
out=${1:?OUT folder}; threshold=${2:?THRESHOLD: the share of each task input energy kept out of later keys, e.g. 0.97}
shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
git show 819dc83:callbacks/key_subspace.py > "$tmp/key_subspace_cb.py" \
  || { echo "needs the repository's history (commit 819dc83); clone without --depth" >&2; exit 2; }
USAGE='--trainer.callbacks+=moram.callbacks.AtomUsageCallback --trainer.callbacks.save_plots false'
PYTHONPATH="$tmp${PYTHONPATH:+:$PYTHONPATH}" python benchmarks/compare.py --config "${CONFIG:-configs/llm_cl.yaml}" \
  --seeds "${@:-0}" --out "$out" \
  --run "key_subspace_$threshold=$USAGE --trainer.callbacks+=key_subspace_cb.KeySubspaceCallback --trainer.callbacks.threshold $threshold"
