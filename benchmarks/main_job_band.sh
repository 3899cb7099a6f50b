#!/usr/bin/env bash
# The main job's figures and the band a user may see: seeds 0, 1, 2 at one thread, seed 0 at two threads
# and as 2-process DDP (one thread each). Each run is `moram fit --config configs/clip_cl.yaml`, as the
# README's command, with only the seed, thread count or strategy changed. Prints the table at the end.
#
#   bash benchmarks/main_job_band.sh OUT [NAME ...]      # NAME: t1_s0 t1_s1 t1_s2 t2_s0 ddp_s0 (default: all)
#   python benchmarks/main_job_band.py OUT               # the table again, from the run folders
set -euo pipefail
out=${1:?usage: main_job_band.sh OUT [NAME ...]}; shift
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(t1_s0 t1_s1 t1_s2 t2_s0 ddp_s0)
cd "$(dirname "$0")/.."
export MORAM_THREAD_WARNING=0
for name in "${names[@]}"; do
  case $name in
    t1_s*) threads=1; seed=${name#t1_s}; extra=() ;;
    t2_s*) threads=2; seed=${name#t2_s}; extra=() ;;
    ddp_s*) threads=1; seed=${name#ddp_s}; extra=(--config configs/strategy/ddp.yaml --trainer.devices 2) ;;
    *) echo "unknown run $name" >&2; exit 2 ;;
  esac
  echo "== $name: $threads thread(s), seed $seed ${extra[*]:-}"
  /usr/bin/time -v env OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads \
    moram fit --config configs/clip_cl.yaml --trainer.default_root_dir "$out/$name" \
    --seed_everything "$seed" --data.seed "$seed" "${extra[@]}" > "$out/$name.log" 2>&1
done
python benchmarks/main_job_band.py "$out"
