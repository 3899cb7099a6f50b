"""Peak memory of the X-TAIL training step and evaluation pass at the config's size, and how to shrink it.

The model is built as ``configs/clip_xtail.yaml`` builds it, without the download: open_clip
ViT-B-16 with QuickGELU (what ``pretrained: openai`` selects) and random weights, attention converted,
MoRAM atoms in both towers (attention q, k, v, out + MLP c_fc, c_proj: 144 layers), r = k = 16,
tau 0.01, delta 0.2, a bank of ``max_tasks`` = 10 tasks of which 9 are consolidated (trained values)
and the 10th is being trained: N = 160 atoms route in every layer, as in the last X-TAIL task.

* **training step** (``train-*``): the config's batch of 64 images (224 × 224) and the 397 class
  prompts of SUN397 (the largest task); ``CLIPBackbone``'s text features (with gradient) and image
  features, ``clip_class_loss``, backward, and an AdamW step over the current atoms whose moments exist
  already (as from the second step of a task on).
* **evaluation pass** (``eval-*``): the task-agnostic union of the ten tasks' class names (1,100
  prompts) encoded under ``inference_mode`` as ``CLIPBackbone.start_eval`` does, then one batch of the
  config's ``eval_batch_size`` (256) images scored against it.

Variants: ``fp32`` or ``bf16`` (CPU autocast, as Lightning's ``bf16-mixed``: fp32 weights, bf16
products), ``ckpt`` (``--model.backbone.checkpointing true``: both towers), ``chunk`` (``--model.backbone.
prompt_chunk``, ``--chunk`` prompts at a time).

How it is measured. Every configuration runs in a fresh child process (``--child``), single-threaded,
with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` so that every tensor above 64 KiB is its own mapping and
is returned to the system when freed: the resident set then follows the live tensors. Reported:

* weights, atoms, gradients and AdamW moments: bytes of those tensors, counted exactly;
* **peak RSS of the step**: the child resets the kernel's peak-RSS mark (``/proc/self/clear_refs``,
  5) just before the step and reads ``VmHWM`` after it; ``activations (RSS)`` is that peak minus the
  resident set before the step (everything the step adds at its worst moment: saved activations,
  gradients, transient buffers of the kernels);
* **saved for backward**: bytes of the tensors autograd keeps between forward and backward
  (``saved_tensors_hooks``, each storage once, parameters and buffers excluded): the device-independent
  core of the activation memory;
* **CPU s / step**: CPU time of the step (one thread); its ratio to the plain variant of the same
  dtype is the time cost of an option. CPU bf16 without native bf16 instructions is emulated: compare
  bf16 times only with bf16 times.

The parent watches every child's resident set (``/proc/PID/status``, every 0.1 s) and kills it past
``--limit-gb``; it starts a child only while ``MemAvailable`` exceeds that limit plus 2 GB. A killed
configuration is reported as such. ``--scale s`` multiplies the images, the prompts and the prompt
chunk, so that every activation term scales by s, for machines that cannot hold or run the full step:
``--extrapolate`` fits ``a + b·s`` per configuration through the scales in ``--out`` files and prints
the full-size (s = 1) values; the README says which values were measured and which extrapolated.

Run::

    python benchmarks/bench_memory.py                          # every configuration, full size, ~1 h on one core
    python benchmarks/bench_memory.py --configs train-bf16,train-bf16-ckpt --limit-gb 12
    python benchmarks/bench_memory.py --scale 0.25 --configs train-fp32,train-fp32-ckpt   # quarter size
    python benchmarks/bench_memory.py --tiny --configs train-fp32                            # plumbing check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

GIB = 2**30
RANK = 16
TASKS = 10
CONFIGS = (
    "train-bf16-ckpt-chunk", "train-bf16-ckpt", "train-bf16-chunk", "train-bf16",
    "train-fp32-ckpt-chunk", "train-fp32-ckpt", "train-fp32-chunk", "train-fp32",
    "eval-bf16-chunk", "eval-bf16", "eval-fp32-chunk", "eval-fp32",
)
TINY = {  # the tests' tiny CLIP with two blocks per tower (plumbing check only)
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


# ---------------------------------------------------------------------------- the model
def build_xtail(checkpointing: bool, chunk: int | None, tiny: bool = False) -> tuple[Any, Any, Any]:
    """``(backbone, model, atom_config)``: the X-TAIL model of ``configs/clip_xtail.yaml`` with random weights.

    Nine finished tasks are consolidated (values drawn small and non-zero, as trained values are) and
    the tenth is current and live, so every layer routes N = 160 atoms.
    """
    import open_clip

    from moram import AtomConfig
    from moram.backbones.clip import CLIPBackbone
    from moram.protocols import continual_layers

    torch.manual_seed(0)
    if tiny:
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_memory_tiny_{os.getpid()}.json"
        path.write_text(json.dumps(TINY))
        backbone = CLIPBackbone(model_config=str(path), towers=["image", "text"], layers=["attn", "mlp"],
                                protocol="task_agnostic", checkpointing=checkpointing, prompt_chunk=chunk)
        model = backbone.build()
    else:
        backbone = CLIPBackbone(model_name="ViT-B-16", pretrained=None, towers=["image", "text"],
                                layers=["attn", "mlp"], protocol="task_agnostic", checkpointing=checkpointing,
                                prompt_chunk=chunk)
        # build_clip with pretrained="openai" minus the download: the OpenAI weights need QuickGELU
        model = open_clip.create_model("ViT-B-16", force_quick_gelu=True, pretrained_text=False)
        backbone.tokenizer = open_clip.get_tokenizer("ViT-B-16")
    atoms = AtomConfig(rank=RANK, top_k=16, temperature=0.01, threshold=0.2, scale=1.0, dropout=0.0,
                       max_tasks=TASKS)
    adapted = backbone.adapt(model, atoms.method, max_tasks=TASKS)
    if not tiny and len(adapted) != 144:
        raise RuntimeError(f"expected 144 adapted layers, got {len(adapted)}")
    gen = torch.Generator().manual_seed(1)
    layers = [layer for _, layer in continual_layers(model)]
    for task in range(TASKS):
        for layer in layers:
            _, values = layer.current_parameters()
            with torch.no_grad():
                values.copy_(1e-2 * torch.randn(values.shape, generator=gen))
            if task < TASKS - 1:
                layer.consolidate()
    for layer in layers:
        layer.mark_trained()  # as a training step does: the tenth task's atoms route at inference too
    model.train()
    return backbone, model, atoms


def tensor_bytes(tensors: Sequence[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def resident_split(model: nn.Module) -> dict[str, int]:
    """Bytes of the frozen weights (parameters and buffers outside the atoms) and of the atoms."""
    from moram.protocols import continual_layers

    atom_ids: set[int] = set()
    for _, layer in continual_layers(model):
        atom_ids.update(id(t) for t in [*layer.parameters(recurse=False), *layer.buffers(recurse=False)])
    tensors = [*model.parameters(), *model.buffers()]
    return {"weights": tensor_bytes([t for t in tensors if id(t) not in atom_ids]),
            "atoms": tensor_bytes([t for t in tensors if id(t) in atom_ids])}


# ---------------------------------------------------------------------------- measuring
def _status(pid: int | str = "self") -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def count_saved(exclude: Sequence[Tensor]) -> Iterator[list[int]]:
    """Bytes of the tensors saved for backward in the block (each storage once, ``exclude`` left out)."""
    from torch.multiprocessing.reductions import StorageWeakRef  # storage identity, also of fake tensors

    skip = {StorageWeakRef(t.untyped_storage()) for t in exclude}
    seen: set[Any] = set()
    total = [0]

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ref = StorageWeakRef(storage)
        if ref not in skip and ref not in seen:
            seen.add(ref)
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def fake_model(model: nn.Module) -> Any:
    """Replace every parameter and buffer of ``model`` by a fake tensor (shape, dtype, no data); returns the mode.

    Under the returned ``FakeTensorMode`` the step runs without computing anything, so the tensors it
    saves for backward can be counted at any size in seconds, in any dtype. Shared tensors stay shared.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    memo: dict[int, Tensor] = {}
    for module in model.modules():
        for name, t in list(module._parameters.items()):
            if t is not None:
                if id(t) not in memo:
                    memo[id(t)] = nn.Parameter(mode.from_tensor(t), requires_grad=t.requires_grad)
                module._parameters[name] = memo[id(t)]  # type: ignore[assignment]
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                if id(buf) not in memo:
                    memo[id(buf)] = mode.from_tensor(buf)
                module._buffers[name] = memo[id(buf)]
    return mode


def parse_config(name: str) -> dict[str, Any]:
    parts = name.split("-")
    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; choose from {list(CONFIGS)}")
    return {"phase": parts[0], "dtype": parts[1], "ckpt": "ckpt" in parts, "chunk": "chunk" in parts}


def run_child(name: str, scale: float, chunk: int, tiny: bool, fake: bool = False) -> dict[str, Any]:
    """Measure one configuration in this process; returns the record (see the module docstring).

    ``fake``: count the tensors saved for backward of a training step under fake tensors (no compute, no
    RSS or time): exact at any size, the check of the scaled measurements.
    """
    from moram.backbones.clip.loss import clip_class_loss
    from moram.protocols import continual_layers

    cfg = parse_config(name)
    torch.set_num_threads(1)
    chunk = max(1, round(chunk * scale))  # scaled with the prompts: every term of the step scales alike
    backbone, model, _ = build_xtail(cfg["ckpt"], chunk if cfg["chunk"] else None, tiny)
    size = 16 if tiny else 224
    train = cfg["phase"] == "train"
    images_n = max(1, round((64 if train else 256) * scale))
    prompts_n = max(2, round((397 if train else 1100) * scale))
    if tiny:
        images_n, prompts_n = (6, 7) if train else (8, 9)
    tokens = backbone.tokenizer([f"a photo of a class {i}." for i in range(prompts_n)])
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(images_n, 3, size, size, generator=gen)
    labels = torch.randint(0, prompts_n, (images_n,), generator=gen)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg["dtype"] == "bf16" else contextlib.nullcontext()
    params = [p for _, layer in continual_layers(model) for p in layer.current_parameters()]
    if {id(p) for p in params} != {id(p) for p in model.parameters() if p.requires_grad}:
        raise RuntimeError("only the current atoms may require grad")
    record: dict[str, Any] = {"config": name, **cfg, "images": images_n, "prompts": prompts_n, "scale": scale,
                              "prompt_chunk": chunk if cfg["chunk"] else None, **resident_split(model)}
    resident = [*model.parameters(), *model.buffers()]
    if train:
        optimizer = torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.9999), weight_decay=0.0)
        for p in params:  # the moments exist from the second step on: create them (a zero step moves nothing)
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record["grads"] = tensor_bytes(params)
        record["optimizer"] = sum(tensor_bytes([v for v in s.values() if isinstance(v, Tensor) and v.dim()])
                                  for s in optimizer.state.values())
    else:
        model.eval()
        record["grads"] = record["optimizer"] = 0
    if fake:
        if not train:
            raise ValueError("--fake counts what a training step saves for backward; evaluation saves nothing")
        mode = fake_model(model)
        with mode, count_saved([*model.parameters(), *model.buffers()]) as saved, cast:
            text = backbone._encode_text(model, mode.from_tensor(tokens))
            image = backbone._encode_image(model, mode.from_tensor(images))
            clip_class_loss(image, text, mode.from_tensor(labels), model.logit_scale.exp())
        return {**record, "fake": True, "saved_for_backward": saved[0]}
    before = _status()["VmRSS"]
    record["reset_peak"] = reset_peak_rss()
    wall, cpu = time.perf_counter(), time.process_time()
    if train:
        with count_saved(resident) as saved:
            with cast:
                text = backbone._encode_text(model, tokens)  # as CLIPBackbone.training_loss
                image = backbone._encode_image(model, images)
                loss = clip_class_loss(image, text, labels, model.logit_scale.exp())
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record["saved_for_backward"] = saved[0]
        record["loss"] = float(loss)
    else:
        with torch.inference_mode(), cast:
            text = backbone._encode_text(model, tokens)  # as CLIPBackbone.start_eval: the union of class names
            scores = backbone._encode_image(model, images) @ text.T
        record["saved_for_backward"] = 0
        record["loss"] = float(scores.float().mean())
    record["cpu_s"] = time.process_time() - cpu
    record["wall_s"] = time.perf_counter() - wall
    after = _status()
    record["rss_before"] = before
    record["rss_peak"] = after["VmHWM"]
    record["activations_rss"] = after["VmHWM"] - before
    return record


# ---------------------------------------------------------------------------- the parent
def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def watch(cmd: list[str], limit: int, env: dict[str, str], timeout: float) -> tuple[int, str, int]:
    """Run ``cmd``, killing it when its RSS passes ``limit`` bytes; returns (exit code, stdout, max RSS seen)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0]
    killed = [False]

    def poll() -> None:
        start = time.time()
        while proc.poll() is None:
            try:
                rss = _status(proc.pid).get("VmRSS", 0)
            except OSError:
                break
            peak[0] = max(peak[0], rss)
            if rss > limit or time.time() - start > timeout:
                killed[0] = True
                proc.kill()
                break
            time.sleep(0.1)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    out, err = proc.communicate()
    thread.join()
    if killed[0]:
        return -9, out, peak[0]
    if proc.returncode:
        sys.stderr.write(err[-3000:])
    return proc.returncode, out, peak[0]


def gib(n: float | None) -> str:
    return "—" if n is None else f"{n / GIB:.2f}"


def table(records: list[dict[str, Any]]) -> str:
    """The markdown table: resident split, saved-for-backward, peak RSS, activations and the options' cost."""
    head = ["configuration", "images × prompts", "weights", "atoms", "grads + AdamW", "saved for backward",
            "activations (RSS)", "peak RSS", "CPU s / step", "× plain (time)", "× plain (activations)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    records = [r for r in records if not r.get("fake")]
    plain = {(r["phase"], r["dtype"], r["images"]): r for r in records
             if not r.get("killed") and not r["ckpt"] and not r["chunk"]}
    for r in records:
        base = plain.get((r["phase"], r["dtype"], r["images"]))
        if r.get("killed"):
            cells = [r["config"], f"{r['images']} × {r['prompts']}", "—", "—", "—", "—", "—",
                     f"> {gib(r['limit'])} (killed)", "—", "—", "—"]
        else:
            cells = [r["config"] + (f" ({r['prompt_chunk']})" if r["prompt_chunk"] else ""),
                     f"{r['images']} × {r['prompts']}", gib(r["weights"]), gib(r["atoms"]),
                     gib(r["grads"] + r["optimizer"]), gib(r["saved_for_backward"]) if r["phase"] == "train" else "—",
                     gib(r["activations_rss"]), gib(r["rss_peak"]), f"{r['cpu_s']:.1f}",
                     f"{r['cpu_s'] / base['cpu_s']:.2f}" if base else "—",
                     f"{r['activations_rss'] / base['activations_rss']:.2f}" if base else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fake_table(records: list[dict[str, Any]]) -> str:
    """Bytes saved for backward counted under fake tensors, per configuration, and the ratio to the plain one."""
    rows = [r for r in records if r.get("fake")]
    plain = {(r["dtype"], r["images"]): r for r in rows if not r["ckpt"] and not r["chunk"]}
    lines = ["| configuration | images × prompts | weights | atoms | grads + AdamW | saved for backward | × plain |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = plain.get((r["dtype"], r["images"]))
        ratio = f"{r['saved_for_backward'] / base['saved_for_backward']:.3f}" if base else "—"
        chunk = f" ({r['prompt_chunk']})" if r["prompt_chunk"] else ""
        lines.append(f"| {r['config']}{chunk} | "
                     f"{r['images']} × {r['prompts']} | {gib(r['weights'])} | {gib(r['atoms'])} | "
                     f"{gib(r['grads'] + r['optimizer'])} | {gib(r['saved_for_backward'])} | {ratio} |")
    return "\n".join(lines)


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``(a, b)`` of ``y = a + b·s`` through ``(s, y)`` points of at least two scales."""
    n = len(points)
    ms = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    var = sum((p[0] - ms) ** 2 for p in points)
    b = sum((p[0] - ms) * (p[1] - my) for p in points) / var
    return my - b * ms, b


EXTRAPOLATED = ("activations_rss", "saved_for_backward", "cpu_s")


def extrapolate(records: list[dict[str, Any]], to: float = 1.0) -> list[dict[str, Any]]:
    """Per configuration measured at two or more scales: the fitted values at scale ``to``.

    Each returned record is the largest-scale record with ``EXTRAPOLATED`` fields replaced by the fit at
    ``to`` and ``images``/``prompts`` at that scale; ``scales`` lists the measured ones, and with three
    or more scales ``check`` holds the relative error of the largest one predicted from the others.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if not r.get("killed") and not r.get("fake") and "scale" in r:
            groups.setdefault(r["config"], []).append(r)
    out = []
    for rs in groups.values():
        scales = sorted({r["scale"] for r in rs})
        if len(scales) < 2:
            continue
        top = max(rs, key=lambda r: r["scale"])
        fitted = {**top, "scales": scales, "extrapolated": True}
        train = top["phase"] == "train"
        fitted["images"] = round((64 if train else 256) * to)
        fitted["prompts"] = round((397 if train else 1100) * to)
        if top["prompt_chunk"]:
            fitted["prompt_chunk"] = round(top["prompt_chunk"] / top["scale"] * to)
        for key in EXTRAPOLATED:
            a, b = _fit([(r["scale"], r[key]) for r in rs])
            fitted[key] = a + b * to
        fitted["rss_peak"] = top["rss_before"] + fitted["activations_rss"]
        if len(scales) >= 3:
            a, b = _fit([(r["scale"], r["activations_rss"]) for r in rs if r["scale"] != scales[-1]])
            fitted["check"] = (a + b * scales[-1]) / top["activations_rss"] - 1
        out.append(fitted)
    return out


def gpu_estimate(r: dict[str, Any]) -> float:
    """Bytes a CUDA device would hold at the step's peak, from a CPU record (see the README).

    Tensors only: the weights, atoms and AdamW moments resident, plus the activations the step added
    at its peak (measured as RSS growth, which also holds the gradients of the current atoms). The CUDA
    context and the caching allocator's slack are added in the README's estimate, not here.
    """
    return r["weights"] + r["atoms"] + r["optimizer"] + r["activations_rss"]


OPTIONS = ("", "-ckpt", "-chunk", "-ckpt-chunk")


def summary(records: list[dict[str, Any]]) -> str:
    """The full-size training table from fake counts (exact) and fp32 measurements at two or more scales.

    Per option: fp32 activations are the RSS fit at scale 1; bf16 activations are estimated as the bf16
    bytes saved for backward (fake, exact) plus the fp32 transient (activations minus saved, at scale 1)
    times the plain step's bf16/fp32 ratio of saved bytes; the peak of tensors adds weights, atoms and
    AdamW moments (the gradients are inside the activations); the time cost is the fp32 CPU time per
    step over the plain one's at the largest measured scale.
    """
    fake = {r["config"]: r for r in records if r.get("fake") and r.get("scale", 1.0) == 1.0}
    fitted = {r["config"]: r for r in extrapolate(records)}
    measured = [r for r in records if not r.get("fake") and not r.get("killed")]
    if "train-fp32" not in fake or "train-bf16" not in fake or "train-fp32" not in fitted:
        return "(the summary needs fake counts of train-fp32 and train-bf16 and train-fp32 at two scales)"
    ratio = fake["train-bf16"]["saved_for_backward"] / fake["train-fp32"]["saved_for_backward"]
    head = ["option", "fp32 saved (exact)", "fp32 activations (fit)", "fp32 peak of tensors", "bf16 saved (exact)",
            "bf16 activations (est.)", "bf16 peak of tensors (est.)", "× plain (fp32 CPU time)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for option in OPTIONS:
        f32, b16 = fake.get(f"train-fp32{option}"), fake.get(f"train-bf16{option}")
        fit = fitted.get(f"train-fp32{option}")
        if f32 is None or fit is None:
            continue
        resident = fit["weights"] + fit["atoms"] + fit["optimizer"]
        transient = fit["activations_rss"] - f32["saved_for_backward"]
        bf16_act = None if b16 is None else b16["saved_for_backward"] + max(transient, 0) * ratio
        scale = max(r["scale"] for r in measured if r["config"] == f"train-fp32{option}")
        times = {r["config"]: r["cpu_s"] for r in measured if r["scale"] == scale}
        cost = times.get(f"train-fp32{option}", 0) / times["train-fp32"] if "train-fp32" in times else None
        name = {"": "none", "-ckpt": "checkpointing", "-chunk": "prompt chunks", "-ckpt-chunk": "both"}[option]
        lines.append("| " + " | ".join([
            name, gib(f32["saved_for_backward"]), gib(fit["activations_rss"]), gib(resident + fit["activations_rss"]),
            gib(None if b16 is None else b16["saved_for_backward"]), gib(bf16_act),
            gib(None if bf16_act is None else resident + bf16_act),
            "—" if cost is None else f"{cost:.2f} (at {scale:g})"]) + " |")
    return "\n".join(lines)


def print_extrapolated(files: Sequence[Path]) -> list[dict[str, Any]]:
    """Print the measured records of ``files`` and their fit at scale 1; returns the fitted records."""
    records = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    fitted = extrapolate(records)
    print("measured (every scale):\n")
    print(table(sorted(records, key=lambda r: (r.get("scale", 1.0), CONFIGS.index(r["config"])))))
    print("\nextrapolated to the config's size (a + b·scale through the measured scales):\n")
    print(table(fitted))
    print()
    for r in fitted:
        check = f", largest scale predicted from the others within {r['check']:+.1%}" if "check" in r else ""
        print(f"{r['config']}: scales {r['scales']}; tensors at the peak {gib(gpu_estimate(r))} GiB{check}")
    print("\ntraining step at the config's size (GiB):\n")
    print(summary(records))
    return fitted


def measure_all(names: list[str], args: argparse.Namespace, limit: int, env: dict[str, str]) -> list[dict[str, Any]]:
    """Measure each configuration in its own watched child process; returns the records."""
    records: list[dict[str, Any]] = []
    for name in names:
        while mem_available() < limit + 2 * GIB:
            print(f"waiting: {gib(mem_available())} GiB available, need {gib(limit + 2 * GIB)}", flush=True)
            time.sleep(30)
        cmd = [sys.executable, __file__, "--child", name, "--scale", str(args.scale), "--chunk", str(args.chunk),
               *(["--tiny"] if args.tiny else []), *(["--fake"] if args.fake else [])]
        code, out, seen = watch(cmd, limit, env, args.timeout)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if code == -9 or not lines:
            cfg = parse_config(name)
            train = cfg["phase"] == "train"
            record: dict[str, Any] = {
                "config": name, **cfg, "killed": True, "limit": limit, "rss_seen": seen,
                "images": max(1, round((64 if train else 256) * args.scale)),
                "prompts": max(2, round((397 if train else 1100) * args.scale)), "prompt_chunk": None,
            }
            print(f"{name}: {'killed at the RSS limit or timeout' if code == -9 else f'failed ({code})'}", flush=True)
        else:
            record = json.loads(lines[-1])
            record["rss_seen"] = seen
            if record.get("fake"):
                print(f"{name}: saved for backward {gib(record['saved_for_backward'])} GiB (fake tensors)", flush=True)
            else:
                print(f"{name}: peak RSS {gib(record['rss_peak'])} GiB, activations {gib(record['activations_rss'])} "
                      f"GiB, {record['cpu_s']:.1f} CPU s", flush=True)
        records.append(record)
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(json.dumps(record) + "\n")
    return records


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated, measured in this order; from {list(CONFIGS)}")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply images and prompts (1.0: the config's)")
    parser.add_argument("--chunk", type=int, default=64, help="prompts per chunk of the *-chunk variants (64)")
    parser.add_argument("--limit-gb", type=float, default=13.0, help="kill a child whose RSS passes this (13)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="kill a child running longer (s)")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny CLIP instead of ViT-B-16")
    parser.add_argument("--out", type=Path, default=None, help="append every record as a JSON line to this file")
    parser.add_argument("--extrapolate", type=Path, nargs="+", default=None,
                        help="JSON-lines files written by --out: fit each configuration over its scales and print "
                             "the table at scale 1 (no measuring)")
    parser.add_argument("--fake", action="store_true",
                        help="train-* only: count the bytes saved for backward under fake tensors (no compute: "
                             "exact at full size in seconds; no RSS, no time)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.chunk < 1 or args.scale <= 0 or args.limit_gb <= 0:
        parser.error("--chunk, --scale and --limit-gb must be positive")
    if args.child is not None:
        print(json.dumps(run_child(args.child, args.scale, args.chunk, args.tiny, args.fake)), flush=True)
        return []
    if args.extrapolate is not None:
        return print_extrapolated(args.extrapolate)
    names = [n for n in args.configs.split(",") if n]
    for n in names:
        try:
            parse_config(n)
        except ValueError as err:
            parser.error(str(err))
    limit = int(args.limit_gb * GIB)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    print(f"torch {torch.__version__}, CPU, 1 thread, {'tiny CLIP' if args.tiny else 'ViT-B-16 (QuickGELU)'}, "
          f"144 routed layers, r = 16, N = 160 atoms per layer, scale {args.scale}, chunk {args.chunk}, "
          f"child RSS limit {args.limit_gb} GB", flush=True)
    records = measure_all(names, args, limit, env)
    print()
    print(fake_table(records) if args.fake else table(records))
    return records


if __name__ == "__main__":
    main()
