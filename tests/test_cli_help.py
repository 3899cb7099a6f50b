"""Every option is discoverable: ``moram --help`` names every subcommand, and each advertised help flag works."""

from __future__ import annotations

from pathlib import Path

import pytest

from moram.cli import main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "clip_cl.yaml")


def help_text(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_top_level_help_lists_every_subcommand_and_how_to_find_moram_options(capsys):
    text = help_text(capsys, ["--help"])
    for subcommand in ("fit", "validate", "test", "predict", "moram data"):
        assert subcommand in text
    assert "--model.method.help" in text
    assert "--data.source.help" in text
    assert text.startswith("usage: moram [-h] [-c CONFIG] {fit,validate,test,predict,data} ...")


def test_ckpt_path_help_says_what_moram_does_with_last(capsys):
    text = " ".join(help_text(capsys, ["fit", "--help"]).split())
    assert "'last': the newest *unfinished* run of this configuration" in text
    assert "A finished run is never resumed" in text


def test_fit_help_starts_with_the_guide_to_moram_options(capsys):
    text = help_text(capsys, ["fit", "--help"])
    guide = text.index("--model.help moram.module.ContinualModule")
    assert guide < text.index("--trainer.accelerator ACCELERATOR\n")


@pytest.mark.parametrize(("args", "expected"), [
    (["fit", "--config", CONFIG, "--model.method.help"], "--model.method.rank RANK"),
    (["fit", "--model", "moram.module.ContinualModule", "--model.method.help"], "--model.method.top_k TOP_K"),
    (["fit", "--model.backbone.help", "moram.backbones.clip.CLIPBackbone"], "--model.backbone.protocol"),
    (["fit", "--model.backbone.help", "moram.backbones.lm.LMBackbone"], "--model.backbone.max_new_tokens"),
    (["fit", "--data.source.help", "moram.data.folder.FolderTasks"], "--data.source.domains"),
    (["fit", "--data.source.help=moram.data.text_benchmarks.JsonlTasks"], "--data.source.root ROOT"),
    (["fit", "--model.help", "moram.module.ContinualModule"], "--model.backbone.help"),
    (["fit", "--data.help", "moram.data.stream.TaskStreamDataModule"], "--data.source.help"),
    # a config and no class: the configured class's options (the declared type has none)
    (["fit", "--config", CONFIG, "--data.source.help"], "--data.source.classes_per_task"),
    (["fit", "--config", CONFIG, "--model.backbone.help"], "--model.backbone.towers"),
    (["fit", "--config", CONFIG, "--data.source", "moram.data.folder.FolderTasks", "--data.source.help"],
     "--data.source.domains"),
])
def test_advertised_help_flags_work(capsys, args, expected):
    assert expected in help_text(capsys, args)


def test_nested_help_without_the_owner_class_says_what_to_add():
    with pytest.raises(ValueError, match=r"--model\.\*\.help needs the model class first"):
        main(["fit", "--model.method.help"])
