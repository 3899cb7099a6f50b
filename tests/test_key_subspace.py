"""KeySubspaceCallback: GPM bases equal a hand SVD; current keys and their gradients stay off the old inputs' subspace.

The guarantees checked: the first basis is the energy-threshold SVD basis of the task's inputs; a
later task adds the fewest residual directions; the current keys' gradient and the keys themselves
(after every AdamW step with weight decay) are orthogonal to the basis of earlier tasks; frozen atoms
are never touched; old inputs stop routing to new atoms; off by default, and with an empty basis the
run is bit-identical to one without the callback; ``--ckpt_path last`` resumes bit-identically.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import STRATEGIES, TINY, atoms_of, fit_args, fit_in_subprocess, run_fit
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from moram import AtomConfig, inject_atoms
from moram.callbacks import KeySubspaceCallback, TaskBoundaryCallback
from moram.callbacks.key_subspace import extend_basis, project_out
from moram.cli import continual_callbacks, main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EVERY_STEP = ("--trainer.callbacks.every_n_train_steps", "1")
REMEDY = "--trainer.callbacks+=moram.callbacks.KeySubspaceCallback"


def svd_projector(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``V_k V_kᵀ`` of the fewest right singular vectors of ``x`` holding ``threshold`` of its energy."""
    _, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    energy = s**2
    k = int((torch.cumsum(energy, 0) / energy.sum() < threshold).sum()) + 1
    v = vh[:k].T
    return v @ v.T


# ---------------------------------------------------------------------------------------------- the math
def test_first_basis_is_the_energy_threshold_svd_of_the_inputs():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=gen, dtype=torch.float64) * torch.tensor([5.0, 3, 1, 0.3, 0.1, 0.05],
                                                                                dtype=torch.float64)
    x = x @ torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))[0]  # a rotated ellipsoid
    for threshold in (0.5, 0.9, 0.97, 0.999):
        u = extend_basis(None, x.T @ x, threshold)
        torch.testing.assert_close(u.T @ u, torch.eye(u.shape[1], dtype=torch.float64))
        torch.testing.assert_close(u @ u.T, svd_projector(x, threshold))
    assert extend_basis(None, x.T @ x, 0.0).shape == (6, 0)
    assert extend_basis(None, x.T @ x, 1.0, max_dims=2).shape == (6, 2)


def test_a_later_task_adds_the_fewest_residual_directions_that_reach_the_threshold():
    gen = torch.Generator().manual_seed(1)
    x1 = torch.randn(100, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 8, generator=gen, dtype=torch.float64)
    x2 = torch.randn(100, 8, generator=gen, dtype=torch.float64) * torch.linspace(3, 0.1, 8, dtype=torch.float64)
    u1 = extend_basis(None, x1.T @ x1, 0.99)
    assert u1.shape == (8, 3)  # rank-3 inputs
    c2 = x2.T @ x2
    u2 = extend_basis(u1, c2, 0.9)
    assert torch.equal(u2[:, :3], u1)  # earlier directions kept as they are
    torch.testing.assert_close(u2.T @ u2, torch.eye(u2.shape[1], dtype=torch.float64))
    total = torch.trace(c2)
    assert torch.trace(u2.T @ c2 @ u2) >= 0.9 * total - 1e-9
    assert torch.trace(u2[:, :-1].T @ c2 @ u2[:, :-1]) < 0.9 * total  # one direction fewer does not reach it
    # by hand: the new directions are the leading eigenvectors of the residual covariance
    p = torch.eye(8, dtype=torch.float64) - u1 @ u1.T
    evals, evecs = torch.linalg.eigh(p @ c2 @ p)
    k = u2.shape[1] - 3
    lead = evecs[:, -k:]
    torch.testing.assert_close(u2[:, 3:] @ u2[:, 3:].T, lead @ lead.T)
    assert torch.equal(extend_basis(u2, c2, 0.5), u2)  # already holds the energy: nothing added
    assert extend_basis(u1, c2, 1.0, max_dims=5).shape == (8, 5)  # capped
    rows = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    assert float((project_out(rows, u2) @ u2).abs().max()) < 1e-12


# ---------------------------------------------------------------------------------------------- in a run
D, R, STEPS = 8, 2, 6


def task_inputs(task: int, n: int = 48) -> torch.Tensor:
    """Task t's inputs: coordinates 3t..3t+2 (2 for the last), plus a little noise everywhere."""
    gen = torch.Generator().manual_seed(100 + task)
    x = 0.01 * torch.randn(n, D, generator=gen)
    cols = list(range(3 * task, min(3 * task + 3, D)))
    x[:, cols] += torch.randn(n, len(cols), generator=gen) * 2
    return x


class Stream(pl.LightningDataModule):
    num_tasks = 3
    task_names = ["t0", "t1", "t2"]

    @property
    def current_task(self) -> int:
        return self.trainer.current_epoch

    def train_dataloader(self):
        x = task_inputs(self.current_task)
        y = (x.sum(-1) > 0).long() + self.current_task  # a different target per task
        return DataLoader(TensorDataset(x, y), batch_size=8)


class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D, 5))
        inject_atoms(self.net, AtomConfig(rank=R, top_k=R, max_tasks=3, temperature=0.1, threshold=0.2,
                                          targets=["0"]))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):  # AdamW with weight decay: a pure gradient projection would not hold
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1)


class Probe(pl.Callback):
    """Inputs of each task, the keys' gradient before each step, the keys after it, the keys at each task end."""

    def __init__(self, remedy: KeySubspaceCallback | None):
        self.remedy = remedy
        self.inputs: dict[int, list[torch.Tensor]] = {}
        self.grads: list[tuple[torch.Tensor, torch.Tensor]] = []  # (grad, basis) in tasks 2 and 3
        self.after_step: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.ends: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module):
        layer = pl_module.net[0]
        layer.register_forward_pre_hook(lambda m, a: self.inputs.setdefault(trainer.current_epoch, []).append(
            a[0].detach().clone()) if m.training else None)

    def basis(self):
        return None if self.remedy is None else self.remedy.bases.get("net.0")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.current_epoch and self.basis() is not None:
            self.grads.append((pl_module.net[0].bank.current_keys.grad.clone(), self.basis().clone()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch and self.basis() is not None:
            self.after_step.append((pl_module.net[0].bank.current_keys.detach().clone(), self.basis().clone()))

    def on_train_epoch_end(self, trainer, pl_module):
        self.ends.append(pl_module.net[0].bank.current_keys.detach().clone())


def fit_model(*callbacks: pl.Callback) -> Model:
    model = Model()
    trainer = pl.Trainer(max_epochs=3, reload_dataloaders_every_n_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         callbacks=list(callbacks))
    trainer.fit(model, datamodule=Stream())
    return model


def new_block_share(model: Model, x: torch.Tensor) -> float:
    """Share of the routing weight of inputs ``x`` (eval mode, delta applied) going to the atoms of tasks 2 and 3."""
    layer = model.net[0].eval()
    seen: list[torch.Tensor] = []
    handle = layer.register_route_hook(seen.append)
    with torch.no_grad():
        layer(x)
    handle.remove()
    w = seen[0]
    return float(w[:, R:].sum() / w.sum().clamp_min(1e-12))


@pytest.mark.parametrize("order", ["remedy_first", "boundary_first"])
def test_keys_and_their_gradients_stay_off_the_earlier_inputs_under_adamw(order, one_thread):
    remedy = KeySubspaceCallback(threshold=0.97, tokens_per_step=1000)
    probe = Probe(remedy)
    first, second = (remedy, TaskBoundaryCallback()) if order == "remedy_first" else (TaskBoundaryCallback(), remedy)
    model = fit_model(first, second, probe)
    bank = model.net[0].bank
    assert remedy.tasks_in_basis == 2
    # the basis after task 1 is the hand SVD basis of task 1's inputs (every row collected)
    x0 = torch.cat(probe.inputs[0])
    u = remedy.bases["net.0"]
    u1 = u[:, : extend_basis(None, x0.T @ x0, 0.97).shape[1]]
    torch.testing.assert_close((u1 @ u1.T).double(), svd_projector(x0, 0.97), atol=1e-5, rtol=0)
    # gradients (tasks 2, 3) and keys after every AdamW step are orthogonal to the basis
    assert len(probe.grads) == len(probe.after_step) == 2 * STEPS
    for grad, basis in probe.grads:
        assert float(grad.norm()) > 0
        assert float((grad @ basis).norm()) <= 1e-6 * float(grad.norm())
    for keys, basis in probe.after_step:
        assert float((keys @ basis).norm()) <= 1e-6 * float(keys.norm())
    # frozen atoms are the keys each task ended with, bit for bit (the remedy never touched them)
    assert torch.equal(bank.frozen_keys[:R], probe.ends[0])
    assert torch.equal(bank.frozen_keys[R : 2 * R], probe.ends[1])
    # the protection is what it is for: task 1's inputs no longer route to the newer atoms
    assert new_block_share(model, task_inputs(0)) < 0.02


def test_adam_update_leaves_the_complement_without_the_projection_of_the_keys(one_thread):
    remedy = KeySubspaceCallback(threshold=0.97, tokens_per_step=1000)
    before = Probe(remedy)  # on_train_batch_end before the remedy's: the raw AdamW step
    fit_model(TaskBoundaryCallback(), before, remedy)
    leaks = [float((keys @ basis).norm() / keys.norm()) for keys, basis in before.after_step]
    assert max(leaks) > 1e-4  # Adam's per-coordinate scaling moved the keys into the basis ...
    # ... and the remedy's projection after the step removed it (checked in the test above)


def test_without_the_remedy_the_newer_atoms_take_the_old_inputs(one_thread):
    assert new_block_share(fit_model(TaskBoundaryCallback()), task_inputs(0)) > 0.05


# ---------------------------------------------------------------------------------------------- the CLI
def test_off_by_default_and_an_empty_basis_changes_nothing(tmp_path, tiny_config, one_thread):
    assert not any(isinstance(c, KeySubspaceCallback) for c in continual_callbacks([]))
    plain_cli, plain, _ = run_fit(tmp_path / "plain", tiny_config)
    hooked_cli, hooked, _ = run_fit(tmp_path / "hooked", tiny_config, REMEDY, "--trainer.callbacks.threshold", "0.0")
    remedy = next(c for c in hooked_cli.trainer.callbacks if isinstance(c, KeySubspaceCallback))
    assert remedy.tasks_in_basis == 1
    assert all(b.shape[1] == 0 for b in remedy.bases.values())
    assert remedy.tokens
    assert all(n > 0 for n in remedy.tokens.values())  # it did collect
    assert hooked["matrix"] == plain["matrix"]
    for (k1, v1), (k2, v2) in zip(atoms_of(plain_cli), atoms_of(hooked_cli), strict=True):
        assert torch.equal(k1, k2)
        assert torch.equal(v1, v2)


def test_resume_from_last_is_bit_identical(tmp_path, tiny_config, one_thread):
    three = ("--data.source.num_tasks", "3", *EVERY_STEP, REMEDY)
    full_cli, full, _ = run_fit(tmp_path / "full", tiny_config, *three)
    root = tmp_path / "run"
    main(fit_args(root, tiny_config, *three, "--trainer.max_steps", "2"))  # inside task 1: covariance only
    main(fit_args(root, tiny_config, *three, "--trainer.max_steps", "5", "--ckpt_path", "last"))  # inside task 2
    resumed_cli, resumed, _ = run_fit(root, tiny_config, *three, "--ckpt_path", "last")
    assert resumed["matrix"] == full["matrix"]
    for (k1, v1), (k2, v2) in zip(atoms_of(full_cli), atoms_of(resumed_cli), strict=True):
        assert torch.equal(k1, k2)
        assert torch.equal(v1, v2)
    a, b = (next(c for c in cli.trainer.callbacks if isinstance(c, KeySubspaceCallback)).state_dict()
            for cli in (full_cli, resumed_cli))
    assert a["tasks_in_basis"] == b["tasks_in_basis"] == 2
    assert a["bases"].keys() == b["bases"].keys()
    assert all(torch.equal(a["bases"][k], b["bases"][k]) for k in a["bases"])
    assert all(torch.equal(a["covariances"][k], b["covariances"][k]) for k in a["covariances"])
    assert any(v.shape[1] > 0 for v in a["bases"].values())


def test_yaml_class_path_builds_it(tmp_path):
    fragment = tmp_path / "callbacks.yaml"
    fragment.write_text("trainer:\n  callbacks:\n    - class_path: moram.callbacks.KeySubspaceCallback\n"
                        "      init_args: {threshold: 0.99, tokens_per_step: 64}\n")
    cli = main(["--config", str(CONFIGS / "clip_cl.yaml"), "--config", str(fragment),
                "--trainer.default_root_dir", str(tmp_path)], run=False)
    found = [c for c in cli.trainer.callbacks if isinstance(c, KeySubspaceCallback)]
    assert len(found) == 1
    assert (found[0].threshold, found[0].tokens_per_step) == (0.99, 64)
    with pytest.raises(ValueError, match="threshold"):
        KeySubspaceCallback(threshold=1.5)


def test_a_model_without_atom_keys_is_refused():
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="no layers with atom keys"):
        KeySubspaceCallback()._attach(Plain())


def test_state_dict_round_trip_keeps_bases_and_covariance():
    remedy = KeySubspaceCallback()
    remedy.tasks_in_basis, remedy.bases = 1, {"a": torch.eye(3)[:, :1]}
    remedy._local = {"a": torch.ones(3, 3)}
    state = json.loads(json.dumps({"n": remedy.state_dict()["tasks_in_basis"]}))
    other = KeySubspaceCallback()
    other.load_state_dict(remedy.state_dict())
    assert state["n"] == other.tasks_in_basis == 1
    assert torch.equal(other.bases["a"], remedy.bases["a"])
    assert torch.equal(other.state_dict()["covariances"]["a"], torch.ones(3, 3))


class BasisDump(pl.Callback):
    """Write this rank's key-subspace bases to ``<out>/bases.rank<r>.pt`` at the end of fit (loaded by class path)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_fit_end(self, trainer, pl_module):
        remedy = next(c for c in trainer.callbacks if isinstance(c, KeySubspaceCallback))
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in remedy.bases.items()}, self.out / f"bases.rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_sums_the_ranks_inputs_like_one_process(tmp_path):
    tiny = tmp_path / "tiny_clip.json"
    tiny.write_text(json.dumps(TINY))
    dump = ("--trainer.callbacks+=test_key_subspace.BasisDump", "--trainer.callbacks.out")
    one = fit_in_subprocess(tmp_path / "one", tiny, "--data.source.num_tasks", "3", REMEDY,
                            *dump, str(tmp_path / "one" / "bases"))
    two = fit_in_subprocess(tmp_path / "two", tiny, "--data.source.num_tasks", "3", REMEDY,
                            *dump, str(tmp_path / "two" / "bases"),
                            "--config", str(STRATEGIES / "ddp.yaml"), "--trainer.devices", "2")
    ref = torch.load(tmp_path / "one" / "bases" / "bases.rank0.pt")
    rank0, rank1 = (torch.load(tmp_path / "two" / "bases" / f"bases.rank{r}.pt") for r in (0, 1))
    assert ref.keys() == rank0.keys() == rank1.keys()
    assert any(u.shape[1] > 0 for u in ref.values())
    for name, u in ref.items():
        assert torch.equal(rank0[name], rank1[name])  # every rank folds the same summed covariance
        assert rank0[name].shape == u.shape, name
        torch.testing.assert_close(rank0[name] @ rank0[name].T, u @ u.T, atol=1e-4, rtol=0)
    assert two["matrix"] == one["matrix"]
    end0, end1 = (torch.load(tmp_path / "two" / "atoms" / f"end.rank{r}.pt") for r in (0, 1))
    ref_atoms = torch.load(tmp_path / "one" / "atoms" / "end.rank0.pt")
    for key, value in ref_atoms.items():
        assert torch.equal(end0[key], end1[key])
        torch.testing.assert_close(end0[key], value, rtol=0, atol=1e-5, msg=key)
