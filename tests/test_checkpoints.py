"""Checkpoints hold what a run cannot rebuild, and ``--ckpt_path last`` resumes the same run exactly."""

from __future__ import annotations

import io
import json

import pytest
import torch
from helpers import atoms_of, fit_args, run_fit

from moram.atoms import MoRAMConfig
from moram.checkpoint import CheckpointError, adapter_keys, strip_backbone
from moram.cli import main

EVERY_STEP = ("--trainer.callbacks.every_n_train_steps", "1")  # the config's ModelCheckpoint, every step


def _ckpt_bytes(module: torch.nn.Module) -> int:
    checkpoint = {"state_dict": module.state_dict()}
    strip_backbone(module, checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.tell()


def test_checkpoint_holds_the_atoms_and_a_fingerprint_not_the_backbone(finished_fit):
    cli, log_dir, tiny_config = finished_fit.cli, finished_fit.log_dir, finished_fit.config  # fitted with EVERY_STEP
    ckpt = torch.load(log_dir / "checkpoints" / "last.ckpt", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert keys == adapter_keys(cli.model)
    assert not any(".base." in k or "logit_scale" in k for k in keys)  # no frozen backbone tensor
    assert any(k.endswith("frozen_keys") for k in keys)
    assert any(k.endswith("current_keys") for k in keys)
    info = ckpt["moram_checkpoint"]
    assert info["backbone"]["options"]["model_config"] == str(tiny_config)
    assert len(info["backbone"]["weights"]) == 16
    assert {"optimizer_states", "lr_schedulers", "loops", "moram_rng"} <= set(ckpt)
    # the memory after every task, as adapter folders
    assert sorted(p.name for p in (log_dir / "adapters").iterdir()) == ["task0-synthetic_0", "task1-synthetic_1"]


def test_a_checkpoint_loads_outside_a_trainer_as_the_trained_model(finished_fit):
    """``ContinualModule.load_from_checkpoint``: no stream, no seed (the random backbone's build RNG is stored)."""
    from moram.module import ContinualModule

    cli, log_dir = finished_fit.cli, finished_fit.log_dir
    torch.manual_seed(123)  # another global RNG state than the run's
    loaded = ContinualModule.load_from_checkpoint(log_dir / "checkpoints" / "last.ckpt")
    assert not loaded.training
    assert loaded.max_tasks == 2  # null in the config: the stream's task count, read from the file
    trained, got = cli.model.state_dict(), loaded.state_dict()
    assert got.keys() == trained.keys()
    assert all(torch.equal(got[k], trained[k]) for k in trained)  # backbone rebuilt bit for bit, atoms loaded


def test_llama_checkpoint_grows_with_the_atoms_not_the_backbone():
    from moram.backbones.lm import LMBackbone
    from moram.module import ContinualModule

    def llama(hidden: int, intermediate: int, vocab: int, rank: int) -> ContinualModule:
        config = {"model_type": "llama", "hidden_size": hidden, "intermediate_size": intermediate,
                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "vocab_size": vocab, "max_position_embeddings": 64}
        module = ContinualModule(LMBackbone(model=None, config=config, tokenizer="char"),
                                 method=MoRAMConfig(rank=rank, top_k=rank), max_tasks=2)
        module.configure_model()
        return module

    def full_bytes(module: torch.nn.Module) -> int:
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        return buffer.tell()

    small_model, wide_model = llama(64, 128, 256, rank=4), llama(64, 2048, 8192, rank=4)  # same atoms
    small, wide = _ckpt_bytes(small_model), _ckpt_bytes(wide_model)
    assert full_bytes(wide_model) > 8 * full_bytes(small_model)  # the backbone grew ...
    assert wide < small * 1.02  # ... the checkpoint did not
    more_atoms = _ckpt_bytes(llama(64, 128, 256, rank=8))  # twice the atoms per task
    assert more_atoms > small * 1.3


@pytest.mark.slow  # by default: test_run_safety.py::test_last_continues_only_its_own_configuration_and_appends
def test_resume_with_last_continues_the_same_run_and_ends_like_an_uninterrupted_one(tmp_path, tiny_config,
                                                                                    finished_fit):
    full_cli, full = finished_fit.cli, finished_fit.metrics  # fitted with EVERY_STEP
    root = tmp_path / "run"
    main(fit_args(root, tiny_config, *EVERY_STEP, "--trainer.max_steps", "4"))  # stopped inside task 2
    log_dir = root / "lightning_logs" / "version_0"
    assert json.loads((log_dir / "continual_metrics.json").read_text())["finished"] is False
    resumed_cli, resumed, resumed_dir = run_fit(root, tiny_config, *EVERY_STEP, "--ckpt_path", "last")
    assert resumed_dir == log_dir  # the same run folder, no version_1
    assert sorted(p.name for p in (root / "lightning_logs").iterdir()) == ["version_0"]
    assert resumed["finished"] is True
    assert resumed["matrix"] == full["matrix"]
    for (k1, v1), (k2, v2) in zip(atoms_of(full_cli), atoms_of(resumed_cli), strict=True):
        assert torch.equal(k1, k2)
        assert torch.equal(v1, v2)


def test_last_without_a_checkpoint_is_an_error(tmp_path, tiny_config):
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path last: no last checkpoint in .*lightning_logs"):
        main(fit_args(tmp_path, tiny_config, "--ckpt_path", "last"))
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow  # the one-message refusal runs by default in test_cli_errors.py
def test_checkpoint_of_another_backbone_is_refused(tmp_path, tiny_config):
    # an unfinished run (a finished one is refused before its backbone is compared: test_run_safety.py)
    _, _, log_dir = run_fit(tmp_path / "a", tiny_config, *EVERY_STEP, "--trainer.max_steps", "2")
    # same options, other random backbone weights (the tiny model is built from the seed)
    with pytest.raises(CheckpointError, match=r"trained on another backbone: checkpoint .* weights \w+, this run"):
        main(fit_args(tmp_path / "b", tiny_config, "--seed_everything", "1",
                      "--ckpt_path", str(log_dir / "checkpoints" / "last.ckpt")))


def test_old_full_checkpoint_still_loads(tmp_path, finished_fit):
    fit_cli, fitted, log_dir = finished_fit.cli, finished_fit.metrics, finished_fit.log_dir
    tiny_config = finished_fit.config
    ckpt = torch.load(log_dir / "checkpoints" / "last.ckpt", weights_only=False)
    del ckpt["moram_checkpoint"]  # as written before adapter-only checkpoints: the backbone included
    ckpt["state_dict"] = {k: v.clone() for k, v in fit_cli.model.state_dict().items()}
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    args = fit_args(tmp_path / "test", tiny_config, "--ckpt_path", str(old))
    cli = main(["test", *args[1:]])
    for name, score in zip(fitted["task_names"], fitted["matrix"][-1], strict=True):
        assert float(cli.trainer.callback_metrics[f"test/score/{name}"]) == pytest.approx(score)


