"""What the tests share: tiny models from config, CLI argument builders, subprocess runners, probes.

A helpers module, not a test module: tests import from here and never from each other. Callbacks
that subprocess runs load by class path (``helpers.RankAtoms``) come from here too; the subprocess
environment puts ``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch import Callback
from PIL import Image
from torch import nn

from moram import AtomConfig, AtomLinear, routed_layers
from moram.backbones.lm.tiny import char_tokenizer
from moram.cli import main
from moram.distributed import full_parameters, full_value
from moram.protocols import continual_layers

ROOT = Path(__file__).resolve().parents[1]


TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def fit_args(tmp_path, model_config, *extra):
    return [
        "fit", "--config", str(ROOT / "configs" / "clip_cl.yaml"),
        "--model.backbone.model_config", str(model_config), "--model.backbone.pretrained", "null",
        "--model.method.rank", "2", "--model.method.top_k", "2",
        "--data.source", "moram.data.synthetic.SyntheticTasks",
        "--data.source.num_tasks", "2", "--data.source.image_size", "16", "--data.source.samples_per_class", "8",
        "--data.steps_per_task", "3", "--data.batch_size", "4",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *extra,
    ]


def run_fit(tmp_path, model_config, *extra):
    cli = main(fit_args(tmp_path, model_config, *extra))
    log_dir = Path(cli.trainer.log_dir)
    return cli, json.loads((log_dir / "continual_metrics.json").read_text()), log_dir


def copy_run(fit, root: Path) -> Path:
    """Copy the run folders of a shared fit (conftest.py's ``finished_fit``, ``stopped_fit``) into ``root``.

    For tests that run a command on a run's folder (``root`` is their ``default_root_dir``): the copy is
    theirs to change. Returns the copied run folder.
    """
    shutil.copytree(fit.root / "lightning_logs", root / "lightning_logs")
    return root / fit.log_dir.relative_to(fit.root)


def atoms_of(cli):
    return [(layer.keys.detach(), layer.values.detach()) for _, layer in routed_layers(cli.model.model)]


TOK = char_tokenizer()


CONFIGS = {
    "llama": {
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 64, "max_position_embeddings": 64,
    },
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": 64, "n_positions": 64,
             "bos_token_id": TOK.bos_token_id, "eos_token_id": TOK.eos_token_id},
    "t5": {
        "model_type": "t5", "d_model": 32, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
        "d_kv": 16, "vocab_size": 64, "decoder_start_token_id": TOK.pad_token_id, "pad_token_id": TOK.pad_token_id,
        "eos_token_id": TOK.eos_token_id,
    },
}


def lm_args(tmp_path, *extra, subcommand="fit"):
    """``moram`` arguments: the digit-string LLM config shrunk to a tiny LLaMA and two short tasks."""
    return [
        subcommand, "--config", str(ROOT / "configs" / "llm_cl_adversarial.yaml"),
        "--model.backbone.model", "null", "--model.backbone.config", json.dumps(CONFIGS["llama"]),
        "--model.backbone.tokenizer", "char",
        "--model.backbone.max_new_tokens", "6",
        "--data.source.tasks", '["rotate", "decrement"]', "--data.source.train_size", "24",
        "--data.source.test_size", "6", "--data.source.max_len", "4",
        "--data.steps_per_task", "3", "--data.batch_size", "4",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", *extra,
    ]


def run_lm(tmp_path, *extra, subcommand="fit"):
    cli = main(lm_args(tmp_path, *extra, subcommand=subcommand))
    return cli, Path(cli.trainer.log_dir)


class Snapshot(Callback):
    """State of every adapted layer at the end of each task."""

    def __init__(self):
        self.ends: list[list[dict[str, torch.Tensor]]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.ends.append([{k: v.detach().clone() for k, v in layer.state_dict().items() if "base" not in k}
                          for _, layer in continual_layers(pl_module)])


def fit_with(tmp_path, config, method, *extra):
    snap = Snapshot()
    cli = main(fit_args(tmp_path, config, "--model.method", method, *extra)[1:], run=False)
    cli.trainer.callbacks.append(snap)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli, snap.ends


E = torch.eye(4)


def hand_built_layer():
    """Task 1's atoms have keys e0, e1; task 2's e2, e3 (r = k = 2, tau 0.01, delta 0.2)."""
    layer = AtomLinear(nn.Linear(4, 3), 4, 3, AtomConfig(rank=2, top_k=2, max_tasks=2, temperature=0.01, threshold=0.2))
    bank = layer
    with torch.no_grad():
        bank.current_keys.copy_(E[:2])
        bank.current_values.normal_()
        layer.consolidate()
        bank.current_keys.copy_(E[2:])
        bank.current_values.normal_()
    layer.train()
    layer.mark_trained()  # as a training step does: the current atoms take part at inference
    return layer.eval()


class Host(pl.LightningModule):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.layer(batch[0])


def write_domain(root, domain, classes, per_class):
    for split, count in (("train", per_class), ("test", 1)):
        for c, name in enumerate(classes):
            folder = root / domain / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.full((20, 30, 3), 40 * c + i, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


STRATEGIES = ROOT / "configs" / "strategy"


class RankAtoms(Callback):
    """Write this rank's atoms to ``<out>/<tag>.rank<r>.pt`` (``tag``: ``task<t>`` after its first step, ``end``)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:  # after the boundary into this task (and its first step)
            self._dump(trainer, pl_module, f"task{trainer.current_epoch}", current=False)

    def on_fit_start(self, trainer, pl_module):
        torch.backends.cuda.matmul.allow_tf32 = False  # GPU runs: fp32 differences are rounding only
        torch.backends.cudnn.allow_tf32 = False

    def on_fit_end(self, trainer, pl_module):
        with full_parameters(pl_module):  # FSDP1: the flat parameters gathered; FSDP2: full_value below
            self._dump(trainer, pl_module, "end", current=True)

    def _dump(self, trainer, pl_module, tag, current):
        tensors = {}
        for name, layer in routed_layers(pl_module.model):
            bank = layer
            n = bank.num_frozen_atoms
            tensors[f"{name}.frozen_keys"] = bank.frozen_keys[:n].clone()
            tensors[f"{name}.frozen_values"] = bank.frozen_values[:n].clone()
            if current:  # full_tensor() under FSDP2: a collective, same order on every rank
                tensors[f"{name}.current_keys"] = full_value(bank.current_keys).detach().clone()
                tensors[f"{name}.current_values"] = full_value(bank.current_values).detach().clone()
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(tensors, self.out / f"{tag}.rank{trainer.global_rank}.pt")


def recording_args(root: Path) -> list[str]:
    """A CSV logger and :class:`RankAtoms` writing under ``root``."""
    return [
        "--trainer.logger.class_path", "CSVLogger", "--trainer.logger.init_args.save_dir", str(root),
        "--trainer.callbacks+=helpers.RankAtoms", "--trainer.callbacks.out", str(root / "atoms"),
    ]


def run_args(root: Path, tiny: Path, *extra: str) -> list[str]:
    return [*fit_args(root, tiny), *recording_args(root), *extra]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def fit_in_subprocess(root: Path, tiny: Path, *extra: str, timeout: float = 240) -> dict:
    """Run ``moram fit`` of the tiny CLIP in a fresh process; returns the accuracy matrix it wrote."""
    return moram_in_subprocess(root, run_args(root, tiny, *extra), timeout)


def moram_in_subprocess(root: Path, args: list[str], timeout: float = 240) -> dict:
    """Run ``moram ARGS`` in a fresh process in ``root``; returns the accuracy matrix it wrote."""
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "moram.cli", *args]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout, cwd=root)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(next(root.rglob("continual_metrics.json")).read_text())


class Stall(Callback):
    """Once ``at_step`` optimizer steps are done (and checkpointed), write ``<marker>`` and hang."""

    def __init__(self, at_step: int = -1, marker: str = "") -> None:
        self.at_step, self.marker = at_step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            trainer.strategy.barrier()  # every rank has finished writing its shard of the checkpoint
            if trainer.is_global_zero:
                Path(self.marker).write_text(str(trainer.global_step))
            time.sleep(600)  # killed long before this returns




class Pace(Callback):
    """From global step ``at_step`` on, write ``<marker>`` (once) and sleep ``seconds`` after every step.

    Slows a run down at a known point (the math is unchanged) so that a signal sent once the marker
    exists lands mid-task.
    """

    def __init__(self, marker: str = "", at_step: int = 0, seconds: float = 0.5) -> None:
        self.marker, self.at_step, self.seconds = Path(marker), at_step, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step < self.at_step:
            return
        if trainer.is_global_zero and not self.marker.exists():
            self.marker.write_text(str(trainer.global_step))
        time.sleep(self.seconds)


# ---------------------------------------------------------------------------- files of earlier versions
def fixture_backbone() -> nn.Module:
    """The MLP the files of earlier versions were written on (tests/fixtures/pre_*; its weights are not in them)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))


def check_fixture_outputs(model: nn.Module, expected: dict[str, torch.Tensor], name: str) -> None:
    """``model`` gives the fixture's recorded eval output ``expected["<name>_y"]`` and has finished one task."""
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(expected["x"]), expected[f"{name}_y"], rtol=1e-6, atol=1e-7)
    assert [layer.task_index for _, layer in continual_layers(model)] == [1, 1]
