"""The main job's figures per run and as mean ± std over seeds (see main_job_band.sh).

    python benchmarks/main_job_band.py OUT      # OUT/<name>/lightning_logs/version_0/continual_metrics.json
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

FIGURES = ("last", "bwt", "average", "transfer", "zero_shot")


def figures(run: Path) -> dict[str, float] | None:
    """The run's headline figures, None while it has not finished."""
    data = json.loads(next(run.rglob("continual_metrics.json")).read_text())
    if not data.get("finished"):
        return None
    return {"last": data["acc"], "bwt": data["bwt"], "average": data["average"]["mean"],
            "transfer": data["transfer"]["mean"], "zero_shot": statistics.mean(data["zero_shot"])}


def resources(log: Path) -> str:
    text = log.read_text() if log.exists() else ""
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return f"{float(user.group(1)):.0f} s" if user else "?", f"{int(rss.group(1)) / 1e6:.2f} GB" if rss else "?"


def main(out: Path) -> None:
    runs = sorted(p for p in out.iterdir() if p.is_dir() and any(p.rglob("continual_metrics.json")))
    found = {run.name: figures(run) for run in runs}
    table = {name: f for name, f in found.items() if f is not None}
    for name in sorted(set(found) - set(table)):
        print(f"({name}: not finished, left out)")
    print("| run | Last | BWT | Average | Transfer | zero-shot | user CPU | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for name, f in table.items():
        cpu, rss = resources(out / f"{name}.log")
        print(f"| {name} | " + " | ".join(f"{f[k]:.2f}" for k in FIGURES) + f" | {cpu} | {rss} |")
    seeds = [f for name, f in table.items() if name.startswith("t1_s")]
    if len(seeds) > 1:
        cells = [f"{statistics.mean(s[k] for s in seeds):.2f} ± {statistics.stdev(s[k] for s in seeds):.2f}"
                 for k in FIGURES]
        print(f"| 1 thread, {len(seeds)} seeds: mean ± std | " + " | ".join(cells) + " | | |")
    seed0 = [f for name, f in table.items() if name.endswith("_s0")]
    if len(seed0) > 1:
        band = [f"{min(s[k] for s in seed0):.2f} – {max(s[k] for s in seed0):.2f}" for k in FIGURES]
        names = ", ".join(n for n in table if n.endswith("_s0"))
        print(f"| seed 0 across {names}: range | " + " | ".join(band) + " | | |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
