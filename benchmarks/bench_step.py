"""Speed and memory of a whole CLIP training step with atoms in all adapted layers, against peft LoRA.

Variants, all on the same random-weight open_clip model (ViT-B-16 by default; no download) whose
attention is converted to separate q/k/v/out linears, sharing its frozen weights:

* ``routed-tN``: MoRAM atoms (r = 16 per task, top_k = 16) in every layer of
  :func:`moram.backbones.clip.clip_targets` (both towers, attention q/k/v/out + MLP c_fc/c_proj:
  144 layers on ViT-B-16) after t tasks: t - 1 consolidated tasks plus the current one, N = t·r atoms
  per layer (banks sized for the largest t, as in a run);
* ``peft-R``: peft LoRA of rank R = t·r (equal total rank) on the same 144 converted linears;
* ``frozen fwd+bwd``: the cost floor of any adapter method: the same forward and loss, and a backward
  through both towers that computes activation gradients only (the positional embeddings of both
  towers are the only parameters requiring grad, so no weight gradient of the backbone is formed);
* ``frozen fwd``: forward and loss only, under ``no_grad`` (training mode).

A step is: text features of C class prompts (with grad), image features of a batch of B images,
:func:`moram.backbones.clip.loss.clip_class_loss` (what ``moram.backbones.clip.CLIPBackbone.training_loss`` does),
backward, and an AdamW step over the trainable parameters. Variants are timed round-robin; the
tables show medians, images/s (B / median step) and ratios of medians with the issue's targets:
routed after the most tasks ≤ 1.0 × peft LoRA of equal total rank, and step(t_max)/step(t_min) ≤
FLOP ratio + 10 % (i.e. × 1.1). The FLOP ratio is analytic: FLOPs(t) = F_floor + 3·A(t), where
F_floor is the ``torch.utils.flop_counter`` count of the frozen fwd+bwd step (dense base: forward +
activation gradients) and A(t) = Σ over adapted layers of tokens × ``moram.accounting`` FLOPs/token
(the method's cost: all keys, only the k selected values), × 3 for forward, input gradient and
weight gradient. The flop-counter count of each routed step ("FLOPs counted") is printed beside it:
it covers matmuls, convolutions and attention only, so work done by other ops (``embedding_bag``
sums of selected values, gathers, top-k, norms) is missing from it.

Memory: as in ``bench_layer.py`` — on CPU the tensors saved for backward during one step (each
storage once, model parameters and buffers excluded) plus 4 × the trainable bytes (param, grad,
AdamW m and v); on CUDA the peak allocated during a step above what was allocated before it, plus
2 × the trainable bytes (AdamW moments).

``--device cuda`` uses bf16 autocast, batch 64 and 100 class prompts by default, and adds
``--schedule``: the X-TAIL compute schedule (10 tasks × ``--steps-per-task`` steps on synthetic
images of the real shape, consolidating between tasks), extrapolated to 500 steps per task, against
the target "< 10 minutes on one H200". It fails with a clear message when CUDA is absent.

Run::

    python benchmarks/bench_step.py --batch 4 --classes 10 --repeats 3              # CPU, ~15 min
    python benchmarks/bench_step.py --device cuda --schedule                        # GPU: step table + schedule
    python benchmarks/bench_step.py --model-config tiny.json --schedule --steps-per-task 2   # plumbing check
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layer import (  # noqa: E402 -- the sibling script, importable once its folder is on the path
    CLOCKS,
    autocast,
    check_device,
    median_ms,
    source_fingerprint,
    step_memory,
    synced,
)

from moram import AtomConfig, consolidate_atoms, routed_layers  # noqa: E402
from moram.accounting import adapter_cost  # noqa: E402
from moram.backbones.clip.build import build_clip, clip_targets, prepare_clip  # noqa: E402
from moram.backbones.clip.loss import clip_class_loss  # noqa: E402

RANK = 16
POSITIONAL = ("positional_embedding", "visual.positional_embedding")


# ---------------------------------------------------------------------------- models
def build_base(model_name: str | None, model_config: str | None, device: str) -> tuple[nn.Module, Any]:
    """The frozen backbone with converted attention (random weights), and its tokenizer."""
    from moram.backbones.clip.attention import convert_attention

    torch.manual_seed(0)
    model, tokenizer = build_clip(model_name=model_name, model_config=model_config)
    convert_attention(model)
    model.requires_grad_(False)
    return model.to(device), tokenizer


def share_copy(base: nn.Module, own: Sequence[str] = ()) -> nn.Module:
    """A deep copy of ``base`` that shares its parameters and buffers, except those named in ``own``."""
    shared = [*base.named_parameters(), *base.named_buffers()]
    memo: dict[int, Any] = {id(t): t for name, t in shared if name not in own}
    return copy.deepcopy(base, memo)


def routed_model(base: nn.Module, tasks: int, max_tasks: int, rank: int = RANK) -> nn.Module:
    """``base`` with atoms in every CLIP target after ``tasks`` tasks (``tasks - 1`` consolidations)."""
    model = share_copy(base)
    prepare_clip(model, AtomConfig(rank=rank, top_k=rank, max_tasks=max_tasks))
    gen = torch.Generator().manual_seed(1)
    for task in range(tasks):
        for _, layer in routed_layers(model):
            _, values = layer.current_parameters()  # trained atoms have non-zero values
            with torch.no_grad():
                values.copy_(1e-2 * torch.randn(values.shape, generator=gen))
        if task < tasks - 1:
            consolidate_atoms(model)
    return model


def peft_model(base: nn.Module, rank: int) -> nn.Module:
    """``base`` with peft LoRA of ``rank`` on the same layers as the atoms (lora_B small, not zero)."""
    from peft import LoraConfig, inject_adapter_in_model

    model = share_copy(base)
    regex = "|".join(f"(?:{p.removeprefix('re:')})" for p in clip_targets())
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=regex), model)
    model.requires_grad_(False)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            if "lora_B" in name:
                with torch.no_grad():
                    p.normal_(0, 1e-3)
    return model


def frozen_model(base: nn.Module) -> nn.Module:
    """``base`` whose own copies of the positional embeddings require grad (backward through both towers)."""
    model = share_copy(base, own=POSITIONAL)
    for name, p in model.named_parameters():
        p.requires_grad_(name in POSITIONAL)
    return model


def lora_ranks(model: nn.Module) -> list[int]:
    """Rank of every peft LoRA layer of ``model``."""
    return [int(m.weight.shape[0]) for n, m in model.named_modules() if n.endswith("lora_A.default")]


def atoms_per_layer(model: nn.Module) -> list[int]:
    return [int(layer.keys.shape[0]) for _, layer in routed_layers(model)]


# ---------------------------------------------------------------------------- workload and step
@dataclass
class Workload:
    images: Tensor  # (B, 3, H, W)
    labels: Tensor  # (B,)
    tokens: Tensor  # (C, context)

    @property
    def batch(self) -> int:
        return int(self.images.shape[0])


def make_workload(model: nn.Module, tokenizer: Any, batch: int, classes: int, device: str, seed: int = 0) -> Workload:
    gen = torch.Generator().manual_seed(seed)
    size = model.visual.image_size  # type: ignore[union-attr]
    h, w = (size, size) if isinstance(size, int) else size
    images = torch.randn(batch, 3, h, w, generator=gen)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    tokens = tokenizer([f"a photo of a class{seed}x{c}." for c in range(classes)])
    return Workload(images.to(device), labels.to(device), tokens.to(device))


def loss_of(model: nn.Module, work: Workload, device: str) -> Tensor:
    with autocast(device):
        text = model.encode_text(work.tokens)  # type: ignore[operator]
        image = model.encode_image(work.images)  # type: ignore[operator]
    return clip_class_loss(image.float(), text.float(), work.labels, model.logit_scale.exp())  # type: ignore[operator]


def train_step(model: nn.Module, work: Workload, device: str) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, work, device).backward()
        optimizer.step()

    return step


def forward_step(model: nn.Module, work: Workload, device: str) -> Callable[[], None]:
    model.train()

    def step() -> None:
        with torch.no_grad():
            loss_of(model, work, device)

    return step


def counted_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call, as counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def adapter_flops(model: nn.Module, tasks: int, work: Workload) -> int:
    """Forward FLOPs of the adapters per ``moram.accounting``, summed over layers × tokens through each."""
    image_tokens = work.batch * int(model.visual.positional_embedding.shape[0])  # type: ignore[union-attr]
    text_tokens = int(work.tokens.numel())
    layers = adapter_cost(model, num_tasks=tasks)["layers"]
    return sum(c["flops_per_token"] * (image_tokens if name.startswith("visual.") else text_tokens)
               for name, c in layers.items())


# ---------------------------------------------------------------------------- the step benchmark
def build_variants(
    base: nn.Module, task_counts: Sequence[int], with_peft: bool, rank: int = RANK
) -> dict[str, nn.Module]:
    variants: dict[str, nn.Module] = {}
    for t in task_counts:
        variants[f"routed-t{t}"] = routed_model(base, t, max(task_counts), rank)
    if with_peft:
        for t in task_counts:
            variants[f"peft-{t * rank}"] = peft_model(base, t * rank)
    variants["frozen fwd+bwd"] = frozen_model(base)
    variants["frozen fwd"] = base
    return variants


def run_steps(args: argparse.Namespace, base: nn.Module, tokenizer: Any) -> dict[str, Any]:
    tasks = sorted(set(args.tasks))
    variants = build_variants(base, tasks, not args.no_peft, args.rank)
    work = make_workload(base, tokenizer, args.batch, args.classes, args.device)
    steps = {name: (forward_step(m, work, args.device) if name == "frozen fwd" else train_step(m, work, args.device))
             for name, m in variants.items()}
    info: dict[str, dict[str, Any]] = {name: {} for name in variants}
    for name, model in variants.items():
        trains = name != "frozen fwd"
        info[name]["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad) if trains else 0
        info[name]["memory"] = step_memory(model, steps[name], args.device) if trains else None
        if name.startswith("routed"):
            info[name]["atoms"] = atoms_per_layer(model)
        elif name.startswith("peft"):
            info[name]["ranks"] = lora_ranks(model)
        print(f"built and stepped {name}", flush=True)
    if not args.no_flops:
        for name in variants:
            if name.startswith("routed") or name == "frozen fwd+bwd":
                info[name]["counted_flops"] = counted_flops(steps[name])
        floor = info["frozen fwd+bwd"]["counted_flops"]
        for t in tasks:
            info[f"routed-t{t}"]["adapter_flops"] = adapter_flops(variants[f"routed-t{t}"], t, work)
            info[f"routed-t{t}"]["analytic_flops"] = floor + 3 * info[f"routed-t{t}"]["adapter_flops"]
    clock = synced(CLOCKS["wall" if args.device == "cuda" else args.clock], args.device)
    times = median_ms(steps, args.warmup, args.repeats, clock)
    for name, ms in times.items():
        info[name]["ms"] = ms
        info[name]["images_per_s"] = 1e3 * work.batch / ms
    return {"tasks": tasks, "rank": args.rank, "batch": work.batch, "classes": args.classes, "variants": info}


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    """The issue's ratios from the medians of ``result``."""
    v, tasks, rank = result["variants"], result["tasks"], result["rank"]
    lo, hi = tasks[0], tasks[-1]
    out: dict[str, float | None] = {
        "step(t_max)/step(t_min)": v[f"routed-t{hi}"]["ms"] / v[f"routed-t{lo}"]["ms"],
        "flop_ratio": None,
        "counted_flop_ratio": None,
    }
    if "analytic_flops" in v[f"routed-t{hi}"]:
        out["flop_ratio"] = v[f"routed-t{hi}"]["analytic_flops"] / v[f"routed-t{lo}"]["analytic_flops"]
        out["counted_flop_ratio"] = v[f"routed-t{hi}"]["counted_flops"] / v[f"routed-t{lo}"]["counted_flops"]
    for t in tasks:
        peft = v.get(f"peft-{t * rank}")
        out[f"routed-t{t}/peft-{t * rank}"] = v[f"routed-t{t}"]["ms"] / peft["ms"] if peft else None
    return out


def format_steps(result: dict[str, Any]) -> str:
    v = result["variants"]
    floor = v["frozen fwd+bwd"]["ms"]
    lines = ["| variant | adapter rank / layer | median step (ms) | images/s | × frozen fwd+bwd | memory (MiB) | "
             "trainable params | FLOPs counted (G) | FLOPs analytic (G) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, i in v.items():
        width = (str(sorted(set(i["atoms"]))[0]) if "atoms" in i else
                 str(sorted(set(i["ranks"]))[0]) if "ranks" in i else "0")
        flops = f"{i['counted_flops'] / 1e9:.4g}" if "counted_flops" in i else "—"
        analytic = f"{i['analytic_flops'] / 1e9:.4g}" if "analytic_flops" in i else "—"
        memory = "—" if i["memory"] is None else f"{i['memory'] / 2**20:.1f}"
        lines.append(f"| {name} | {width} | {i['ms']:.1f} | {i['images_per_s']:.2f} | {i['ms'] / floor:.2f} | "
                     f"{memory} | {i['trainable']:,} | {flops} | {analytic} |")
    return "\n".join(lines)


def format_ratios(result: dict[str, Any]) -> str:
    r, tasks = ratios(result), result["tasks"]
    lines = ["| ratio | measured | target | met |", "|---|---:|---:|---:|"]
    step_ratio, flop_ratio = r["step(t_max)/step(t_min)"], r["flop_ratio"]
    assert step_ratio is not None
    name = f"routed step({tasks[-1]} tasks) / step({tasks[0]} task{'s' if tasks[0] > 1 else ''})"
    if flop_ratio is None:
        lines.append(f"| {name} | {step_ratio:.2f} | FLOP ratio × 1.1 (not counted: --no-flops) | — |")
    else:
        bound = 1.1 * flop_ratio
        met = "yes" if step_ratio <= bound else "**no**"
        lines.append(f"| {name} | {step_ratio:.2f} | ≤ {bound:.2f} (analytic FLOP ratio {flop_ratio:.2f} × 1.1; "
                     f"counted FLOP ratio {r['counted_flop_ratio']:.2f}) | {met} |")
    for t in tasks:
        key = f"routed-t{t}/peft-{t * result['rank']}"
        value = r[key]
        if value is None:
            continue
        goal = "≤ 1.00" if t == tasks[-1] else "—"
        met = ("yes" if value <= 1.0 else "**no**") if t == tasks[-1] else "—"
        lines.append(f"| {key} | {value:.2f} | {goal} | {met} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the X-TAIL schedule
def run_schedule(args: argparse.Namespace, base: nn.Module, tokenizer: Any) -> dict[str, Any]:
    """Train one routed model through ``--schedule-tasks`` tasks of ``--steps-per-task`` steps; time it.

    The clock runs over the training steps after the first of each task (allocation, autotuning);
    consolidations and building are not timed (they are negligible). Each task's mean step time is
    extrapolated to ``--full-steps`` steps.
    """
    tasks, steps = args.schedule_tasks, args.steps_per_task
    model = routed_model(base, 1, tasks, args.rank)
    clock = synced(CLOCKS["wall" if args.device == "cuda" else args.clock], args.device)
    per_task: list[float] = []
    for task in range(tasks):
        work = make_workload(base, tokenizer, args.batch, args.classes, args.device, seed=task)
        step = train_step(model, work, args.device)  # a fresh AdamW per task, as at a task boundary
        step()  # first step of the task: allocations and autotuning, timed below with the rest
        start = clock()
        for _ in range(steps - 1):
            step()
        elapsed = clock() - start
        per_task.append(elapsed / max(steps - 1, 1))
        if task < tasks - 1:
            consolidate_atoms(model)
    seconds = sum(per_task) * args.full_steps
    return {"tasks": tasks, "steps_per_task": steps, "full_steps": args.full_steps, "batch": args.batch,
            "step_s": per_task, "estimated_s": seconds,
            "images_per_s": args.batch * len(per_task) / sum(per_task)}


def format_schedule(sched: dict[str, Any], device: str) -> str:
    minutes = sched["estimated_s"] / 60
    steps = ", ".join(f"{1e3 * s:.0f}" for s in sched["step_s"])
    verdict = ("yes" if minutes < 10 else "**no**") if device == "cuda" else "n/a (not a GPU)"
    return (f"X-TAIL compute schedule: {sched['tasks']} tasks × {sched['full_steps']} steps × batch {sched['batch']} "
            f"(measured {sched['steps_per_task']} steps per task, extrapolated)\n\n"
            f"- mean step time per task (ms, first step of each task excluded): {steps}\n"
            f"- throughput: {sched['images_per_s']:.1f} images/s\n"
            f"- estimated time: {minutes:.1f} min; target < 10 minutes on one H200: {verdict}")


# ---------------------------------------------------------------------------- command line
def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip model name (random weights)")
    p.add_argument("--model-config", default=None, help="a moram model config name or JSON file instead of --model")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: bf16 autocast, wall clock")
    p.add_argument("--tasks", type=parse_ints, default=[1, 5, 10], help="task counts of the routed variants")
    p.add_argument("--rank", type=int, default=RANK, help="atoms per task per layer (r = top_k)")
    p.add_argument("--batch", type=int, default=None, help="images per step (CPU 4, CUDA 64)")
    p.add_argument("--classes", type=int, default=None, help="class prompts per task (CPU 10, CUDA 100)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per variant (CPU 3, CUDA 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant first (CPU 1, CUDA 3)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="CPU clock (stable) or wall; CUDA: wall")
    p.add_argument("--no-peft", action="store_true", help="leave out the peft LoRA variants")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP counting (one extra step per variant)")
    p.add_argument("--no-steps", action="store_true", help="skip the step table (e.g. only --schedule)")
    p.add_argument("--schedule", action="store_true", help="also time the X-TAIL schedule (see the docstring)")
    p.add_argument("--schedule-tasks", type=int, default=10, help="tasks of the schedule")
    p.add_argument("--steps-per-task", type=int, default=None, help="steps measured per task (CUDA 50, CPU 2)")
    p.add_argument("--full-steps", type=int, default=500, help="steps per task extrapolated to")
    return p


def resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    gpu = args.device == "cuda"
    for name, cpu_value, gpu_value in (("batch", 4, 64), ("classes", 10, 100), ("repeats", 3, 10), ("warmup", 1, 3),
                                       ("steps_per_task", 2, 50)):
        if getattr(args, name) is None:
            setattr(args, name, gpu_value if gpu else cpu_value)
    if args.model_config is not None:
        args.model = None
    if not args.tasks or min(args.tasks) < 1:
        parser.error("--tasks must be positive task counts, e.g. 1,5,10")
    if args.steps_per_task < 2:
        parser.error("--steps-per-task must be >= 2 (the first step of a task is not timed)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print its tables; returns ``{"steps": ..., "ratios": ..., "schedule": ...}``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve(args, parser)
    check_device(args.device)
    torch.set_num_threads(args.threads)
    base, tokenizer = build_base(args.model, args.model_config, args.device)
    print(f"torch {torch.__version__}, {args.model or args.model_config} (random weights), device {args.device}"
          f"{' bf16 autocast' if args.device == 'cuda' else ' fp32'}, {torch.get_num_threads()} threads, "
          f"{'wall (synchronised)' if args.device == 'cuda' else args.clock} clock, batch {args.batch}, "
          f"{args.classes} class prompts, median of {args.repeats} after {args.warmup} warmup, r = {args.rank}; "
          f"moram layer sources sha256 {source_fingerprint()}\n",
          flush=True)
    out: dict[str, Any] = {}
    if not args.no_steps:
        result = run_steps(args, base, tokenizer)
        layers = len(result["variants"][f"routed-t{result['tasks'][0]}"]["atoms"])
        memory = ("peak allocated above resident + AdamW moments" if args.device == "cuda"
                  else "saved for backward + 4 × trainable")
        print(f"\n**training step** ({layers} adapted layers; memory: {memory})\n")
        print(format_steps(result))
        print("\n**targets**\n")
        print(format_ratios(result))
        out["steps"], out["ratios"] = result, ratios(result)
    if args.schedule:
        sched = run_schedule(args, base, tokenizer)
        print()
        print(format_schedule(sched, args.device))
        out["schedule"] = sched
    return out


if __name__ == "__main__":
    main()
