"""Methods are configs: frozen dataclasses of their own options, chosen and shown like any other option."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from helpers import fit_args
from torch import nn

from moram import MoRAMConfig, continual_layers
from moram.adapters import MethodConfig
from moram.baselines import MoELoRAConfig, OLoRAConfig, RankRExpertsConfig, SequentialLoRAConfig, ZeroShotConfig
from moram.cli import fresh_method_options, main
from moram.errors import ConfigError

CONFIGS = [MoRAMConfig, SequentialLoRAConfig, OLoRAConfig, MoELoRAConfig, RankRExpertsConfig, ZeroShotConfig]
RUN_LEVEL = {"targets", "max_tasks", "seed"}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_method_is_a_frozen_dataclass_of_its_own_options_only(cls):
    assert issubclass(cls, MethodConfig)
    assert dataclasses.is_dataclass(cls)
    config = cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    assert not fields & RUN_LEVEL  # targets, capacity and seed belong to the injector and the module
    assert set(config.options()) == fields
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, sorted(fields)[0], 1)


@pytest.mark.parametrize("cls", [c for c in CONFIGS if c is not ZeroShotConfig], ids=lambda c: c.__name__)
def test_a_layers_settings_are_its_configs_learnt_options_and_capacity(cls):
    model = nn.Sequential(nn.Linear(6, 4))
    config = cls(rank=2)
    config.inject(model, ["0"], max_tasks=3, seed=1)
    [(_, layer)] = continual_layers(model)
    assert layer.config is config
    assert layer.settings() == {**config.learnt_options(), "max_tasks": 3}
    assert set(config.options()) - set(config.learnt_options()) == set(cls.runtime_options)


def test_bad_option_values_name_the_option():
    with pytest.raises(ConfigError, match=r"OLoRAConfig\.dropout must be a float in \[0, 1\), got 1\.5"):
        OLoRAConfig(dropout=1.5)
    with pytest.raises(ConfigError, match=r"MoELoRAConfig\.top_k must be an integer >= 1"):
        MoELoRAConfig(top_k=0)


def test_zero_shot_adapts_nothing_and_freezes_the_model():
    model = nn.Sequential(nn.Linear(6, 4))
    assert ZeroShotConfig().inject(model, ["0"], max_tasks=2) == []
    assert not any(p.requires_grad for p in model.parameters())


def printed_method(capsys, tmp_path, tiny_config, *extra: str) -> dict:
    with pytest.raises(SystemExit):
        main([*fit_args(tmp_path, tiny_config, *extra), "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["method"]


def test_print_config_shows_the_methods_options(capsys, tmp_path, tiny_config):
    method = printed_method(capsys, tmp_path, tiny_config)  # clip_cl.yaml spells MoRAM's options out
    assert method["class_path"] == "moram.atoms.MoRAMConfig"
    assert method["init_args"] == {**MoRAMConfig(rank=2, top_k=2, scale=1.0).options(), "top_k": 2, "rank": 2}


def test_a_method_given_on_the_command_line_starts_from_its_own_defaults(capsys, tmp_path, tiny_config):
    """The config's MoRAM ``scale`` is not handed to O-LoRA (jsonargparse would keep shared options)."""
    config = tmp_path / "scaled.yaml"
    config.write_text(yaml.safe_dump({"model": {"init_args": {"method": {
        "class_path": "moram.atoms.MoRAMConfig", "init_args": {"scale": 2.0, "dropout": 0.3}}}}}))
    method = printed_method(capsys, tmp_path, tiny_config, "--config", str(config),
                            "--model.method", "moram.baselines.OLoRAConfig", "--model.method.rank", "4")
    assert method == {"class_path": "moram.baselines.OLoRAConfig",
                      "init_args": OLoRAConfig(rank=4).options()}  # scale 4.0 and dropout 0.1: O-LoRA's own
    assert fresh_method_options(["--model.method=X"]) == ["--model.method", "null", "--model.method=X"]


def test_a_run_adapts_the_same_targets_whatever_the_method(tmp_path, tiny_config):
    names = {}
    for method in ("moram.atoms.MoRAMConfig", "moram.baselines.RankRExpertsConfig"):
        args = fit_args(tmp_path / method, tiny_config, "--model.method", method, "--model.method.rank", "2",
                        "--model.targets", "[re:.*attn\\.(q|v)_proj]", "--model.max_tasks", "2")
        cli = main(args[1:], run=False)  # without the subcommand: build, do not fit
        cli.model.configure_model()  # what fit does first; the targets, capacity and seed are the module's
        names[method] = [n for n, _ in continual_layers(cli.model.model)]
        assert cli.model.adapted == names[method]
        assert {layer.max_tasks for _, layer in continual_layers(cli.model.model)} == {2}
    moram = names["moram.atoms.MoRAMConfig"]
    assert moram == names["moram.baselines.RankRExpertsConfig"]
    assert moram
    assert all(n.endswith(("q_proj", "v_proj")) for n in moram)
