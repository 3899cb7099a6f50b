"""`moram fit` end to end on a tiny CLIP through the real CLI, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import atoms_of, fit_args, run_fit

from moram import routed_layers
from moram.cli import main
from moram.metrics import AccuracyMatrix, average, last, transfer

ROOT = Path(__file__).resolve().parents[1]
def test_fit_writes_the_accuracy_matrix_and_grows_atoms(finished_fit):
    cli, metrics, log_dir = finished_fit.cli, finished_fit.metrics, finished_fit.log_dir
    names = metrics["task_names"]
    assert len(names) == 2
    rows = [metrics["zero_shot"], *metrics["matrix"]]
    assert len(rows) == 3  # zero-shot + one row per task
    assert all(0.0 <= v <= 100.0 for row in rows for v in row)
    # Derived metrics equal the hand-written formulas of docs/design.md §2 on this matrix.
    r = metrics["matrix"]
    assert metrics["last"]["mean"] == pytest.approx((r[1][0] + r[1][1]) / 2)
    assert metrics["average"]["mean"] == pytest.approx(((r[0][0] + r[1][0]) / 2 + (r[0][1] + r[1][1]) / 2) / 2)
    assert metrics["transfer"]["per_task"][names[1]] == pytest.approx(r[0][1])  # task 2 seen only after task 1
    assert metrics["transfer"]["mean"] == pytest.approx(r[0][1])
    assert metrics["bwt"] == pytest.approx(r[1][0] - r[0][0])
    matrix = AccuracyMatrix(task_names=names, rows=r, zero_shot=metrics["zero_shot"])
    assert transfer(matrix)["mean"] == pytest.approx(metrics["transfer"]["mean"])
    assert average(matrix)["mean"] == pytest.approx(metrics["average"]["mean"])
    assert last(matrix)["mean"] == pytest.approx(metrics["last"]["mean"])
    assert (log_dir / "continual_metrics.csv").is_file()
    assert (log_dir / "accuracy_matrix.png").is_file()
    # One consolidation for two tasks: r atoms frozen in every routed layer, the last task's still current.
    layers = routed_layers(cli.model.model)
    assert len(layers) == 12  # 1 block x (q, k, v, out, c_fc, c_proj) x 2 towers
    assert all(layer.num_frozen_atoms == 2 for _, layer in layers)
    assert cli.trainer.max_epochs == 2  # taken from the task stream


@pytest.mark.slow  # by default: test_atoms.py (AdamW, 3 tasks), other methods' fits in test_baselines.py
def test_frozen_atoms_are_bit_identical_after_their_task(tmp_path, tiny_config):
    from lightning.pytorch import Callback

    class Snap(Callback):
        ends: list = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.ends.append([lay.current_values.detach().clone() for _, lay in routed_layers(pl_module.model)])

    snap = Snap()
    args = fit_args(tmp_path, tiny_config, "--data.source.num_tasks", "3")
    cli = main(args[1:], run=False)  # without a subcommand: build only
    cli.trainer.callbacks.append(snap)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    layers = routed_layers(cli.model.model)
    for task, values in enumerate(snap.ends[:-1]):
        for v, (_, layer) in zip(values, layers, strict=True):
            assert torch.equal(layer.frozen_values[2 * task:2 * task + 2], v)
    assert all(layer.num_frozen_atoms == 4 for _, layer in layers)
    assert any(v.abs().sum() > 0 for v in snap.ends[0])  # the atoms did train


@pytest.mark.parametrize("stop", [pytest.param(4, marks=pytest.mark.slow), 3],  # mid-task: test_run_safety.py
                         ids=["mid-task", "last-batch-of-task"])
def test_resume_gives_the_same_matrix_and_atoms(tmp_path, tiny_config, finished_fit, stop):
    # Step 4 is inside task 2 (3 steps per task). Step 3 is task 1's last batch: Lightning then skips
    # that task's validation on resume, and the metrics callback must evaluate to fill the row.
    full_cli, full = finished_fit.cli, finished_fit.metrics  # the uninterrupted run
    ckpt_dir = tmp_path / "ckpt"
    interrupted = fit_args(
        tmp_path / "part", tiny_config, "--trainer.max_steps", str(stop),
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.dirpath", str(ckpt_dir), "--trainer.callbacks.every_n_train_steps", str(stop),
        "--trainer.callbacks.save_top_k", "-1",
    )
    main(interrupted)
    ckpt = next(ckpt_dir.glob("*.ckpt"))
    resumed_cli, resumed, _ = run_fit(tmp_path / "resumed", tiny_config, "--ckpt_path", str(ckpt))
    assert resumed["zero_shot"] == full["zero_shot"]
    assert resumed["matrix"] == full["matrix"]
    for (k1, v1), (k2, v2) in zip(atoms_of(full_cli), atoms_of(resumed_cli), strict=True):
        assert torch.equal(k1, k2)
        assert torch.equal(v1, v2)
    assert any(v.abs().sum() > 0 for _, v in atoms_of(full_cli))


def test_pretrained_unavailable_offline_names_the_option(tmp_path):
    with pytest.raises(Exception, match="model.backbone.pretrained"):
        main(["fit", "--config", str(ROOT / "configs" / "clip_cl.yaml"), "--model.backbone.model_config", "null",
              "--model.backbone.model_name", "ViT-B-32",
              "--model.backbone.pretrained", str(tmp_path / "missing.safetensors"),
              "--trainer.default_root_dir", str(tmp_path)])


def test_checkpoint_from_other_atom_setting_is_refused(tmp_path, stopped_fit):
    # the checkpoint of step 1 (the config's ModelCheckpoint, every step), of an unfinished run
    ckpt, tiny_config = next((stopped_fit.log_dir / "checkpoints").glob("*step=1.ckpt")), stopped_fit.config
    with pytest.raises(ValueError, match=r"model.method.rank: checkpoint 2, config 3"):
        main(fit_args(tmp_path / "b", tiny_config, "--model.method.rank", "3", "--ckpt_path", str(ckpt)))


def test_both_protocol_views_are_tracked(finished_fit):
    aware, log_dir = finished_fit.metrics, finished_fit.log_dir  # 2 tasks of 2 classes
    agnostic = json.loads((log_dir / "continual_metrics_task_agnostic.json").read_text())
    assert agnostic["task_names"] == aware["task_names"]
    assert (log_dir / "continual_metrics_task_agnostic_matrix.png").is_file()
    # Among the union of all 4 classes a test image is never easier than among its task's 2.
    for row_aware, row_agnostic in zip([aware["zero_shot"], *aware["matrix"]],
                                       [agnostic["zero_shot"], *agnostic["matrix"]], strict=True):
        assert all(b <= a for a, b in zip(row_aware, row_agnostic, strict=True))


@pytest.mark.slow  # `moram test` equals the last row by default in test_checkpoints.py (old checkpoint)
def test_test_subcommand_scores_equal_the_last_row(tmp_path, tiny_config):
    ckpt_dir = tmp_path / "ckpt"
    _, fitted, _ = run_fit(tmp_path / "fit", tiny_config,
                           "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                           "--trainer.callbacks.dirpath", str(ckpt_dir))
    ckpt = next(ckpt_dir.glob("*.ckpt"))
    args = fit_args(tmp_path / "test", tiny_config, "--ckpt_path", str(ckpt))
    cli = main(["test", *args[1:]])
    metrics = cli.trainer.callback_metrics
    # moram test scores the final model on every task's test set: the same as the last row of fit.
    for name, score in zip(fitted["task_names"], fitted["matrix"][-1], strict=True):
        assert float(metrics[f"test/score/{name}"]) == pytest.approx(score)


def test_non_finite_loss_is_a_clear_error(tmp_path, tiny_config):
    from lightning.pytorch import Callback

    class Poison(Callback):
        def on_train_start(self, trainer, pl_module):
            with torch.no_grad():
                routed_layers(pl_module.model)[0][1].current_keys.fill_(float("nan"))

    cli = main(fit_args(tmp_path, tiny_config)[1:], run=False)
    cli.trainer.callbacks.append(Poison())
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* lower model.lr"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
