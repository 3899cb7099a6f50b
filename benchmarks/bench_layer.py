"""Speed and memory of one routed layer against LoRA of rank N, LoRA of rank r and the frozen linear.

A routed layer holding N atoms (N/16 tasks of rank r = 16: N - 16 frozen, 16 trainable) is timed
against a plain LoRA of rank N written here (``LoRA-N``), peft's ``lora.Linear`` of rank N (if
peft is installed), a plain LoRA of rank r = 16 (``LoRA-r``, what one task trains) and the frozen
``nn.Linear(d, d)`` alone, for forward + backward in training mode and for inference (eval,
no_grad). The input requires grad in every case, as it does inside a network whose earlier layers
carry adapters, so every backward also computes the input gradient. Methods are timed round-robin
(one call of each per repeat) so drift on a shared machine hits all of them alike; tables show
medians and ratios of those medians, with the targets of the "Speed and scale" issue beside them:
routed ≤ 1.1 × LoRA-N at N = 16 and ≤ 0.8 × LoRA-N for N ≥ 160, in training and inference.

On a shared, oversubscribed CPU, wall time mostly measures waiting for a core; ``--clock cpu
--threads 1`` times the CPU the process used, which is stable there. ``--device cuda`` runs in
bf16 autocast and times wall clock with a device synchronisation around every call (it fails with
a clear message when CUDA is absent).

Memory (one fwd+bwd per method): on CPU, the bytes of the tensors saved for backward (counted by
``torch.autograd.graph.saved_tensors_hooks``, each storage once, module parameters and buffers
excluded) plus the training state of the trainable parameters (parameter + gradient + two AdamW
moments = 4 × their bytes); on CUDA, the peak of ``torch.cuda.max_memory_allocated`` during the
step above the memory allocated before it, plus the same AdamW moments (2 × trainable bytes).

Run::

    python benchmarks/bench_layer.py --quick                      # a few minutes on one CPU core
    python benchmarks/bench_layer.py --threads 1 --clock cpu --dims 768,3072 --atoms 16,64,160,640,1600
    python benchmarks/bench_layer.py --device cuda --dims 768,3072 --atoms 16,64,160,640,1600 --repeats 50
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from moram import AtomConfig, AtomLinear

RANK = 16
MODES = ("fwd+bwd", "inference")
METHODS = ("routed", "lora_n", "peft_n", "lora_r", "frozen")
HEADERS = {"routed": "routed", "lora_n": "LoRA-N", "peft_n": "peft LoRA-N", "lora_r": "LoRA-r", "frozen": "frozen"}


def floor_ratio(d: int, n_atoms: int, mode: str, k: int = RANK, r: int = RANK) -> float:
    """The arithmetic floor of routed / LoRA-N: multiply-adds per token, routed at its least against LoRA-N.

    fwd+bwd: ``(2d² + 2dN + 2dk + 2dr) / (2d² + 6dN)`` (base forward and input gradient; keys forward and
    input gradient; the k selected values forward and their coefficients' gradient; the r current
    atoms' weight gradients) against LoRA-N's base plus three products of width N each way. Inference:
    ``(d² + dN + dk) / (d² + 2dN)``. Top-k, norm, softmax and gathers count nothing here.
    """
    if mode == "inference":
        return (d * d + d * n_atoms + d * k) / (d * d + 2 * d * n_atoms)
    return (2 * d * d + 2 * d * n_atoms + 2 * d * k + 2 * d * r) / (2 * d * d + 6 * d * n_atoms)


FLOOR_TARGET = 1.1
"""The issue's bound on (routed / LoRA-N) / floor at N = 160 and 640."""

# Profile categories of the routed layer's operators (``--profile``).
_GEMM = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::linear", "aten::matmul"}
_TOPK = {"aten::topk", "aten::sort", "aten::kthvalue"}


def _category(name: str) -> str | None:
    if not name.startswith("aten::") or name in {"aten::t", "aten::view", "aten::reshape", "aten::transpose",
                                                 "aten::expand", "aten::as_strided", "aten::slice",
                                                 "aten::select", "aten::empty", "aten::unsqueeze", "aten::squeeze",
                                                 "aten::detach", "aten::alias", "aten::resolve_conj",
                                                 "aten::_reshape_alias", "aten::empty_strided", "aten::clone",
                                                 "aten::contiguous", "aten::to", "aten::_to_copy", "aten::narrow"}:
        return None if name != "aten::clone" else "routing (elementwise, gather, scatter, copies)"
    if name in _GEMM:
        return "matrix products (base, keys, values, gradients)"
    if name in _TOPK:
        return "top-k"
    if "embedding_bag" in name:
        return "embedding_bag (frozen value sums)"
    return "routing (elementwise, gather, scatter, copies)"


def profile_routed(layer: nn.Module, step: Callable[[], None], repeats: int = 5) -> dict[str, float]:
    """Self CPU time (ms per call) of the routed step's operators by category (``torch.profiler``, one thread)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        category = _category(event.key)
        if category is not None:
            totals[category] = totals.get(category, 0.0) + event.self_cpu_time_total / 1e3 / repeats
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def target(n_atoms: int) -> float | None:
    """The issue's bound on routed / LoRA-N at N atoms (same in training and inference); None: no target."""
    if n_atoms <= RANK:
        return 1.1
    if n_atoms >= 160:
        return 0.8
    return None


# ---------------------------------------------------------------------------- the layers
class PlainLoRA(nn.Module):
    """Frozen linear plus ``scale * B A x`` with trainable A (r, d_in) and B (d_out, r)."""

    def __init__(self, base: nn.Linear, r: int) -> None:
        super().__init__()
        self.base = base
        kw: dict[str, Any] = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(r, base.in_features, **kw))
        self.lora_b = nn.Parameter(torch.randn(base.out_features, r, **kw) * 1e-3)
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_a.T) @ self.lora_b.T * self.scale  # (..., r) then (..., d_out)


def frozen_linear(d: int, seed: int = 0, device: str = "cpu") -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d, d, device=device).requires_grad_(False)


def routed_layer(d: int, n_atoms: int, device: str = "cpu", rank: int = RANK) -> AtomLinear:
    """An AtomLinear with n_atoms atoms: n_atoms/rank - 1 consolidated tasks plus the current one.

    Public API only: the current atoms are ``current_parameters()`` = [keys, values]; values get small
    random entries (trained atoms are non-zero) before each ``consolidate()``. The last task's atoms
    stay current and are marked trained (as a training step does), so they route at inference too.
    """
    tasks = n_atoms // rank
    config = AtomConfig(rank=rank, top_k=rank, max_tasks=tasks)
    layer = AtomLinear(frozen_linear(d, 0, device), d, d, config)
    gen = torch.Generator().manual_seed(1)
    for task in range(tasks):
        _, values = layer.current_parameters()
        with torch.no_grad():
            values.copy_(1e-2 * torch.randn(values.shape, generator=gen))
        if task < tasks - 1:
            layer.consolidate()
    layer.mark_trained()  # as a training step does: the current atoms route at inference
    assert layer.keys.shape[0] == n_atoms
    assert all(p.requires_grad for p in layer.current_parameters())
    return layer


def peft_layer(d: int, r: int, device: str = "cpu") -> nn.Module | None:
    try:
        from peft import LoraConfig
        from peft.tuners.lora import Linear as PeftLoraLinear
    except ImportError:
        return None
    config = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0)
    layer = PeftLoraLinear(frozen_linear(d, 0, device), "default", config=config, r=r, lora_alpha=r)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 1e-3)
    return layer


def build_layers(d: int, n_atoms: int, device: str = "cpu", with_peft: bool = True) -> dict[str, nn.Module]:
    layers: dict[str, nn.Module] = {
        "routed": routed_layer(d, n_atoms, device),
        "lora_n": PlainLoRA(frozen_linear(d, 0, device), n_atoms),
        "lora_r": PlainLoRA(frozen_linear(d, 0, device), RANK),
        "frozen": frozen_linear(d, 0, device),
    }
    peft = peft_layer(d, n_atoms, device) if with_peft else None
    if peft is not None:
        layers["peft_n"] = peft
    return {name: layers[name] for name in METHODS if name in layers}


def routed_count(layer: AtomLinear, x: Tensor) -> int:
    """Atoms that take part in routing in the layer's present mode (read through the public route hook)."""
    widths: list[int] = []
    handle = layer.register_route_hook(lambda w: widths.append(int(w.shape[-1])))
    try:
        with torch.no_grad():
            layer(x[:1])
    finally:
        handle.remove()
    return widths[0] if widths else 0


# ---------------------------------------------------------------------------- timing and memory
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def source_fingerprint() -> str:
    """Short hash of the routed layer's source files, printed so a table names the implementation it measured."""
    import hashlib

    import moram.adapters.layer
    import moram.atoms.kernels
    import moram.atoms.linear
    import moram.atoms.routing

    digest = hashlib.sha256()
    modules = (moram.atoms.kernels, moram.atoms.routing, moram.atoms.linear, moram.adapters.layer)
    for module in modules:
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:12]


def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here (torch.cuda.is_available() is False); "
                         "run on a GPU machine or use --device cpu")


def autocast(device: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA, nothing on CPU (fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()


def synced(clock: Callable[[], float], device: str) -> Callable[[], float]:
    """A clock that first waits for the device, so a reading includes the queued kernels."""
    if device != "cuda":
        return clock

    def read() -> float:
        torch.cuda.synchronize()
        return clock()

    return read


def train_step(layer: nn.Module, x: Tensor, grad_out: Tensor, device: str = "cpu") -> Callable[[], None]:
    params = [p for p in layer.parameters() if p.requires_grad]

    def step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        with autocast(device):
            y = layer(x)
        y.backward(grad_out.to(y.dtype))

    return step


def infer_step(layer: nn.Module, x: Tensor, device: str = "cpu") -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad(), autocast(device):
            layer(x)

    return step


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


@contextlib.contextmanager
def count_saved_bytes(exclude: Sequence[Tensor] = ()) -> Iterator[list[int]]:
    """Count the bytes of tensors saved for backward inside the block; yields a one-item list with the total.

    Each storage is counted once (views share it); storages of ``exclude`` (parameters, buffers:
    resident anyway) are not counted.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    total = [0]

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in seen:
            seen.add(ptr)
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def trainable_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)


def step_memory(module: nn.Module, step: Callable[[], None], device: str) -> int:
    """Bytes one training step needs beyond the resident model (see the module docstring)."""
    state = trainable_bytes(module)
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before + 2 * state
    resident = [*module.parameters(), *module.buffers()]
    with count_saved_bytes(resident) as saved:
        step()
    return saved[0] + 4 * state


def measure(
    n_atoms: int, d: int, shape: tuple[int, ...], warmup: int, repeats: int, clock: Callable[[], float],
    device: str = "cpu", with_peft: bool = True, profile: bool = False,
) -> dict[str, dict[str, float]]:
    """Median ms per method for fwd+bwd and inference, and the memory (bytes) of one training step."""
    layers = build_layers(d, n_atoms, device, with_peft)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, d, generator=gen).to(device).requires_grad_(True)
    grad_out = torch.randn(*shape, d, generator=gen).to(device)
    clock = synced(clock, device)
    for layer in layers.values():
        layer.train()
    train = {k: train_step(m, x, grad_out, device) for k, m in layers.items()}
    memory = {k: float(step_memory(layers[k], s, device)) for k, s in train.items()}
    times = median_ms(train, warmup, repeats, clock)
    profiled = profile_routed(layers["routed"], train["routed"]) if profile else {}
    for layer in layers.values():
        layer.eval()
    routed = layers["routed"]
    assert isinstance(routed, AtomLinear)
    assert routed_count(routed, x.detach()) == n_atoms, "the trained current atoms must route at inference"
    infer = median_ms({k: infer_step(m, x.detach(), device) for k, m in layers.items()}, warmup, repeats, clock)
    return {"fwd+bwd": times, "inference": infer, "memory": memory, "profile": profiled}


# ---------------------------------------------------------------------------- tables
def ratio_rows(results: dict[tuple[int, int], dict[str, dict[str, float]]], mode: str) -> list[dict[str, Any]]:
    """One row per (d, N): the medians of ``mode`` and the ratios of those medians."""
    rows = []
    for (d, n), res in results.items():
        t = res[mode]
        row: dict[str, Any] = {"d": d, "N": n, **t}
        row["routed/LoRA-N"] = t["routed"] / t["lora_n"]
        row["routed/peft-N"] = t["routed"] / t["peft_n"] if "peft_n" in t else None
        row["routed/LoRA-r"] = t["routed"] / t["lora_r"]
        row["routed/frozen"] = t["routed"] / t["frozen"]
        row["target"] = target(n)
        row["ok"] = None if row["target"] is None else row["routed/LoRA-N"] <= row["target"]
        row["floor"] = floor_ratio(d, n, mode)
        row["x floor"] = row["routed/LoRA-N"] / row["floor"]
        rows.append(row)
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(rows: list[dict[str, Any]], unit: str = "ms") -> str:
    methods = [m for m in METHODS if any(m in row for row in rows)]
    floors = all("floor" in row for row in rows)
    head = ["d", "N", *(f"{HEADERS[m]} ({unit})" for m in methods),
            "routed/LoRA-N", "target", "met", "routed/peft-N", "routed/LoRA-r", "routed/frozen",
            *(["floor", f"÷ floor (≤ {FLOOR_TARGET} at N = 160, 640)"] if floors else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for row in rows:
        met = "—" if row["ok"] is None else ("yes" if row["ok"] else "**no**")
        cells = [str(row["d"]), str(row["N"]), *(_fmt(row.get(m), ".2f") for m in methods),
                 _fmt(row["routed/LoRA-N"], ".2f"), "—" if row["target"] is None else f"≤ {row['target']}", met,
                 *(_fmt(row[k], ".2f") for k in ("routed/peft-N", "routed/LoRA-r", "routed/frozen")),
                 *([_fmt(row["floor"], ".3f"), _fmt(row["x floor"], ".3f")] if floors else [])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _div(a: float, b: float | None) -> float | None:
    return None if not b else a / b


def memory_rows(results: dict[tuple[int, int], dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    rows = []
    for (d, n), res in results.items():
        mem = {k: v / 2**20 for k, v in res["memory"].items()}  # MiB
        rows.append({"d": d, "N": n, **mem, "routed/LoRA-N": _div(mem["routed"], mem["lora_n"]), "target": None,
                     "ok": None, "routed/peft-N": _div(mem["routed"], mem.get("peft_n")),
                     "routed/LoRA-r": _div(mem["routed"], mem["lora_r"]),
                     "routed/frozen": _div(mem["routed"], mem["frozen"])})
    return rows


# ---------------------------------------------------------------------------- command line
QUICK = {"dims": "768,3072", "atoms": "16,160", "repeats": 5, "warmup": 1}


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per method (median reported; 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per method first (3)")
    parser.add_argument("--dims", default=None, help="widths d of the frozen nn.Linear(d, d), comma-separated (768)")
    parser.add_argument("--d", type=int, default=None, help="one width (same as --dims D)")
    parser.add_argument("--atoms", default=None, help="atom counts N (multiples of 16; 16,64,160,640,1600)")
    parser.add_argument("--tokens", type=parse_shape, default=(8, 197), help="leading input shape, e.g. 8x197")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="CPU time of the process (stable on a shared machine) or wall time; CUDA: always wall")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: bf16 autocast")
    parser.add_argument("--no-peft", action="store_true", help="leave out peft's LoRA-N")
    parser.add_argument("--profile", action="store_true",
                        help="also print the routed fwd+bwd's operator time by category (torch.profiler)")
    parser.add_argument("--quick", action="store_true",
                        help="defaults that finish in minutes on one CPU core: --dims 768,3072 --atoms 16,160 "
                             "--repeats 5 --warmup 1 (explicit options still win)")
    return parser


def resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[list[int], list[int]]:
    defaults = QUICK if args.quick else {"dims": "768", "atoms": "16,64,160,640,1600", "repeats": 20, "warmup": 3}
    args.repeats = defaults["repeats"] if args.repeats is None else args.repeats
    args.warmup = defaults["warmup"] if args.warmup is None else args.warmup
    dims = [args.d] if args.d is not None else parse_ints(args.dims or str(defaults["dims"]))
    counts = parse_ints(args.atoms or str(defaults["atoms"]))
    bad = [n for n in counts if n < RANK or n % RANK]
    if bad:
        parser.error(f"--atoms must be positive multiples of {RANK}, got {bad}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return dims, counts


def main(argv: Sequence[str] | None = None) -> dict[tuple[int, int], dict[str, dict[str, float]]]:
    """Run the benchmark, print the tables; returns ``{(d, N): {"fwd+bwd"|"inference"|"memory": {method: v}}}``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    dims, counts = resolve(args, parser)
    check_device(args.device)
    torch.set_num_threads(args.threads)
    clock_name = "wall (synchronised)" if args.device == "cuda" else args.clock
    shape = "x".join(map(str, args.tokens))
    print(f"torch {torch.__version__}, device {args.device}{' bf16 autocast' if args.device == 'cuda' else ' fp32'}, "
          f"{torch.get_num_threads()} threads, tokens={shape}, {clock_name} clock, "
          f"median of {args.repeats} after {args.warmup} warmup; r = {RANK}, N = tasks x r; "
          f"moram layer sources sha256 {source_fingerprint()}\n", flush=True)
    clock = CLOCKS["wall" if args.device == "cuda" else args.clock]
    results: dict[tuple[int, int], dict[str, dict[str, float]]] = {}
    for d in dims:
        for n in counts:
            results[d, n] = measure(n, d, args.tokens, args.warmup, args.repeats, clock, args.device,
                                    not args.no_peft, args.profile)
            print(f"measured d={d} N={n}", flush=True)
    print()
    for mode in MODES:
        print(f"**{mode}** (median ms; target: routed/LoRA-N ≤ 1.1 at N = 16, ≤ 0.8 for N ≥ 160)\n")
        print(format_table(ratio_rows(results, mode)))
        print()
    what = ("peak allocated during the step above the resident model + AdamW moments" if args.device == "cuda"
            else "tensors saved for backward + trainable params x 4 (param, grad, AdamW m, v)")
    print(f"**memory of one training step** (MiB; {what})\n")
    print(format_table(memory_rows(results), unit="MiB"))
    if args.profile:
        print("\n**routed fwd+bwd by operator** (torch.profiler self CPU ms per step; its own run, so the sum "
              "differs from the median above)\n")
        print(format_profile(results))
    return results


def format_profile(results: dict[tuple[int, int], dict[str, dict[str, float]]]) -> str:
    """One row per (d, N): ms per category, its share, and routed / LoRA-N ÷ floor with the non-product time removed."""
    lines = ["| d | N | category | ms | share |", "|---:|---:|---|---:|---:|"]
    for (d, n), res in results.items():
        prof = res.get("profile") or {}
        total = sum(prof.values()) or 1.0
        for category, ms in prof.items():
            lines.append(f"| {d} | {n} | {category} | {ms:.2f} | {ms / total:.0%} |")
        products = prof.get("matrix products (base, keys, values, gradients)", 0.0)
        ratio = res["fwd+bwd"]["routed"] * products / total / res["fwd+bwd"]["lora_n"]
        lines.append(f"| {d} | {n} | routed/LoRA-N ÷ floor with only the products left | — | "
                     f"{ratio / floor_ratio(d, n, 'fwd+bwd'):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
