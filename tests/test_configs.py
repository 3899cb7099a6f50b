"""Every shipped YAML parses against the code; the paper configs build."""

from __future__ import annotations

from pathlib import Path

import pytest

from moram import routed_layers
from moram.cli import main

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
FRAGMENTS = sorted((CONFIG_DIR / "strategy").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"clip_cl.yaml", "clip_xtail.yaml", "llm_cl.yaml"} <= names


#: the offline defaults parse by default; every other shipped config in the slow suite
DEFAULTS = ("clip_cl.yaml", "llm_cl.yaml")


@pytest.mark.parametrize("path", [p if p.name in DEFAULTS else pytest.param(p, marks=pytest.mark.slow)
                                  for p in CONFIGS], ids=lambda p: p.name)
def test_config_parses_and_instantiates(path, tmp_path):
    text = path.read_text()
    assert text.startswith("#"), f"{path.name} must start with a comment header (what, command, hardware)"
    extra = []
    if path.name == "own_text.yaml":  # the template reads the user's task folders when built: give it one
        (tmp_path / "tasks" / "t").mkdir(parents=True)
        for split in ("train", "test"):
            (tmp_path / "tasks" / "t" / f"{split}.jsonl").write_text('{"prompt": "1 =", "answer": "1"}\n')
        extra = ["--data.source.root", str(tmp_path / "tasks")]
    cli = main(["--config", str(path), "--trainer.default_root_dir", str(tmp_path), *extra], run=False)
    assert cli.model is not None
    assert cli.datamodule is not None


@pytest.mark.parametrize("path", FRAGMENTS, ids=lambda p: p.name)
def test_strategy_fragment_parses_after_a_run_config(path, capsys):
    assert path.read_text().startswith("#")
    with pytest.raises(SystemExit):  # --print_config parses everything, then exits
        main(["fit", "--config", str(CONFIG_DIR / "clip_cl.yaml"), "--config", str(path), "--print_config"])
    assert "strategy:" in capsys.readouterr().out


def test_print_config_shows_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS[0].parent / "clip_cl.yaml"), "--print_config"])
    out = capsys.readouterr().out
    for option in ("temperature:", "threshold:", "max_tasks:", "steps_per_task:", "protocol:", "towers:"):
        assert option in out


@pytest.mark.slow  # ViT-B/16-sized
def test_xtail_config_builds_vit_b16_with_random_weights(tmp_path):
    cli = main(["--config", str(CONFIGS[0].parent / "clip_xtail.yaml"), "--model.backbone.pretrained", "null",
                "--trainer.default_root_dir", str(tmp_path)], run=False)
    module = cli.model
    module.max_tasks = cli.datamodule.num_tasks
    module.configure_model()
    layers = routed_layers(module.model)
    assert len(layers) == 144  # both towers x 12 blocks x (q, k, v, out, c_fc, c_proj), as in the paper
    bank = layers[0][1]
    assert (bank.rank, bank.top_k, bank.temperature, bank.threshold) == (16, 16, 0.01, 0.2)
    assert bank.capacity == 16 * 10
    assert cli.datamodule.num_tasks == 10
    assert module.protocol == "task_agnostic"


def test_task_stream_trainer_settings_are_the_commands_defaults(tmp_path):
    from moram.cli import TASK_STREAM_TRAINER_DEFAULTS

    for path in CONFIGS:  # run configs no longer copy them; the pretraining recipe sets its own
        text = path.read_text()
        assert all(f"  {key}:" not in text for key in TASK_STREAM_TRAINER_DEFAULTS) or path.name.startswith("pretrain")
    cli = main(["--config", str(CONFIG_DIR / "clip_cl.yaml"), "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.trainer.reload_dataloaders_every_n_epochs == 1
    assert cli.trainer.num_sanity_val_steps == float("inf")  # -1: every validation batch before training
    assert cli.trainer._accelerator_connector.use_distributed_sampler is False
    assert cli.trainer.max_epochs == cli.datamodule.num_tasks
    other = main(["--config", str(CONFIG_DIR / "clip_cl.yaml"), "--trainer.num_sanity_val_steps", "0",
                  "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert other.trainer.num_sanity_val_steps == 0  # still an ordinary option
