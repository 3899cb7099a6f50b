"""Speed of one routed layer against LoRA of the same rank and the frozen linear alone (CPU).

A routed layer holding N atoms (N/16 tasks of rank 16: N - 16 frozen, 16 trainable) is timed
against a plain LoRA of rank N written here, peft's ``lora.Linear`` of rank N (if peft is
installed) and the frozen ``nn.Linear(d, d)`` alone, for forward + backward in training mode and
for inference (eval, no_grad). The input requires grad in every case, as it does inside a network
whose earlier layers carry adapters, so every backward also computes the input gradient.
Methods are timed round-robin (one call of each per repeat) so drift on a shared machine hits all
of them alike; the table shows medians. On a shared, oversubscribed machine wall time mostly
measures waiting for a core (every multi-threaded op waits for its slowest thread); ``--clock cpu
--threads 1`` times the CPU the process actually used, which is stable there.

Run::

    python benchmarks/bench_layer.py --threads 2 --repeats 30
    python benchmarks/bench_layer.py --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from moram import AtomConfig, AtomLinear

RANK = 16


class PlainLoRA(nn.Module):
    """Frozen linear plus ``scale * B A x`` with trainable A (r, d_in) and B (d_out, r)."""

    def __init__(self, base: nn.Linear, r: int) -> None:
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_b = nn.Parameter(torch.randn(base.out_features, r) * 1e-3)
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_a.T) @ self.lora_b.T * self.scale  # (..., r) then (..., d_out)


def frozen_linear(d: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d, d).requires_grad_(False)


def routed_layer(d: int, n_atoms: int) -> AtomLinear:
    """An AtomLinear with n_atoms atoms: n_atoms/16 - 1 consolidated tasks plus the current one."""
    tasks = n_atoms // RANK
    layer = AtomLinear(frozen_linear(d, 0), d, d, AtomConfig(rank=RANK, top_k=RANK, max_tasks=tasks))
    gen = torch.Generator().manual_seed(1)
    for task in range(tasks):
        with torch.no_grad():
            values = layer.bank.current_values
            values.copy_(1e-2 * torch.randn(values.shape, generator=gen))
        if task < tasks - 1:
            layer.consolidate()
    assert layer.bank.num_atoms == n_atoms
    assert layer.bank.current_values.requires_grad
    return layer


def peft_layer(d: int, r: int) -> nn.Module | None:
    try:
        from peft import LoraConfig
        from peft.tuners.lora import Linear as PeftLoraLinear
    except ImportError:
        return None
    config = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0)
    layer = PeftLoraLinear(frozen_linear(d, 0), "default", config=config, r=r, lora_alpha=r)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 1e-3)
    return layer


def train_step(layer: nn.Module, x: Tensor, grad_out: Tensor) -> Callable[[], None]:
    params = [p for p in layer.parameters() if p.requires_grad]

    def step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        layer(x).backward(grad_out)

    return step


def infer_step(layer: nn.Module, x: Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            layer(x)

    return step


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def median_ms(
    steps: dict[str, Callable[[], None]], warmup: int, repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Round-robin timing: every repeat calls each step once; returns medians in milliseconds."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = clock()
            step()
            times[name].append((clock() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(
    n_atoms: int, d: int, shape: tuple[int, ...], warmup: int, repeats: int, clock: Callable[[], float]
) -> dict[str, dict[str, float]]:
    layers: dict[str, nn.Module] = {
        "routed": routed_layer(d, n_atoms),
        "lora": PlainLoRA(frozen_linear(d, 0), n_atoms),
        "frozen": frozen_linear(d, 0),
    }
    peft = peft_layer(d, n_atoms)
    if peft is not None:
        layers["peft"] = peft
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, d, generator=gen).requires_grad_(True)
    grad_out = torch.randn(*shape, d, generator=gen)
    for layer in layers.values():
        layer.train()
    train = median_ms({k: train_step(m, x, grad_out) for k, m in layers.items()}, warmup, repeats, clock)
    for layer in layers.values():
        layer.eval()
    bank = layers["routed"].bank  # type: ignore[union-attr]
    assert bank.num_routed == n_atoms, "the trained current atoms must route at inference"
    infer = median_ms({k: infer_step(m, x.detach()) for k, m in layers.items()}, warmup, repeats, clock)
    return {"fwd+bwd": train, "inference": infer}


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per method (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per method first")
    parser.add_argument("--d", type=int, default=768, help="width of the frozen nn.Linear(d, d)")
    parser.add_argument("--tokens", type=parse_shape, default=(8, 197), help="leading input shape, e.g. 8x197")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or CPU time of the process (stable on a shared machine)")
    parser.add_argument("--atoms", default="16,64,160", help="atom counts N (multiples of 16), comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counts = [int(v) for v in args.atoms.split(",")]
    bad = [n for n in counts if n < RANK or n % RANK]
    if bad:
        parser.error(f"--atoms must be positive multiples of {RANK}, got {bad}")
    shape = "x".join(map(str, args.tokens))
    print(f"torch {torch.__version__}, {args.threads} threads, d={args.d}, tokens={shape}, {args.clock} clock, "
          f"median of {args.repeats} after {args.warmup} warmup\n")
    clock = CLOCKS[args.clock]
    results = {n: measure(n, args.d, args.tokens, args.warmup, args.repeats, clock) for n in counts}
    for mode in ("fwd+bwd", "inference"):
        print(f"**{mode}** (ms)\n")
        print("| N | routed | LoRA-N | peft LoRA-N | frozen | routed/LoRA-N | routed/frozen |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for n, res in results.items():
            t = res[mode]
            peft = f"{t['peft']:.2f}" if "peft" in t else "n/a"
            print(f"| {n} | {t['routed']:.2f} | {t['lora']:.2f} | {peft} | {t['frozen']:.2f} | "
                  f"{t['routed'] / t['lora']:.2f} | {t['routed'] / t['frozen']:.2f} |")
        print()


if __name__ == "__main__":
    main()
