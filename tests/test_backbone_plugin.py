"""The backbone plugin contract: a third kind of model, written outside the package in ~30 lines
(tests/backbone_plugin.py), runs through the same ContinualModule, callbacks and CLI as CLIP and LMs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from backbone_plugin import PrototypeClassifier

from moram.adapters import load_adapters
from moram.cli import main
from moram.protocols import continual_layers


def plugin_config(tmp_path: Path, method: str | None = None) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": {"class_path": "CSVLogger",
                    "init_args": {"save_dir": str(tmp_path)}}, "enable_progress_bar": False,
                    "enable_model_summary": False, "enable_checkpointing": False},
        "model": {"class_path": "moram.module.ContinualModule", "init_args": {
            "backbone": {"class_path": "backbone_plugin.PrototypeClassifier", "init_args": {"image_size": 8}},
            "lr": 1.0e-2, "method": {"class_path": "moram.atoms.MoRAMConfig", "init_args": {"rank": 4, "top_k": 4}}}},
        "data": {"class_path": "moram.data.stream.TaskStreamDataModule", "init_args": {
            "source": {"class_path": "moram.data.digits.DigitsTasks",
                       "init_args": {"classes_per_task": 5, "image_size": 8}},
            "batch_size": 32, "steps_per_task": 40, "seed": 0}},
    }
    if method:
        config["model"]["init_args"]["method"] = {"class_path": method}
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("method", [
    # the plugin backbone with MoRAM in the slow suite: by default the same backbone runs with a method of
    # one's own (own-method), and MoRAM's CLI fit is checked by default on CLIP (tests/test_clip_cl.py)
    pytest.param(None, marks=pytest.mark.slow),
    # sequential LoRA's fit through the CLI is checked by default in test_baselines.py
    pytest.param("moram.baselines.SequentialLoRAConfig", marks=pytest.mark.slow),
    "method_plugin.SummedLoRAConfig",
], ids=["moram", "sequential-lora", "own-method"])
def test_a_backbone_written_outside_the_package_learns_each_task_through_the_cli(tmp_path, method):
    cli = main(["fit", "--config", str(plugin_config(tmp_path, method))])
    log_dir = Path(cli.trainer.log_dir)
    metrics = json.loads((log_dir / "continual_metrics.json").read_text())
    assert metrics["task_names"] == ["digits 0-4", "digits 5-9"]
    zero_shot, learned = metrics["zero_shot"], [metrics["matrix"][t][t] for t in range(2)]
    # the frozen random encoder is near chance (16-19 %); its adapters learn each task. With numpy 2.4 /
    # scikit-learn 1.9 MoRAM's second task reaches 44.6 % (87.1 % the first), sequential LoRA more: the bar is
    # "well above chance", not a score
    for task in range(2):
        assert learned[task] >= zero_shot[task] + 20, (zero_shot, learned)
    # the frozen encoder is the one the plugin builds: nothing but the adapters changed
    fresh = PrototypeClassifier(image_size=8).build()
    base = {name.replace(".base", ""): t for name, t in cli.model.model.state_dict().items() if ".base." in name}
    assert base
    assert all(torch.equal(base[name], t) for name, t in fresh.state_dict().items())
    assert len(continual_layers(cli.model.model)) == 2
    assert len(list((log_dir / "adapters").iterdir())) == 2  # the per-task adapter export, for any backbone
    # one adapter format for every method: the last export rebuilds the adapted model on the plain backbone
    plain = PrototypeClassifier(image_size=8).build()
    assert load_adapters(plain, sorted((log_dir / "adapters").iterdir())[-1]) == ["1", "3"]
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), cli.model.model.eval()(x))
    assert json.loads((log_dir / "adapter_cost.json").read_text())  # the cost file, for any backbone


def test_print_config_shows_the_plugin_options(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(plugin_config(tmp_path)), "--print_config"])
    out = yaml.safe_load(capsys.readouterr().out)
    backbone = out["model"]["init_args"]["backbone"]
    assert backbone == {"class_path": "backbone_plugin.PrototypeClassifier",
                        "init_args": {"image_size": 8, "width": 32, "seed": 0}}


def test_a_pickled_backbone_keeps_its_options_not_its_tokenizer_or_caches():
    import pickle

    from moram.backbones.clip import CLIPBackbone

    backbone = CLIPBackbone(model_config="moram-tiny-minilm", pretrained="packaged", protocol="task_agnostic")
    backbone.tokenizer, backbone._eval = object(), {"text": torch.ones(3)}
    copy = pickle.loads(pickle.dumps(backbone))
    assert (copy.model_config, copy.pretrained, copy.protocol, copy.views) == (
        "moram-tiny-minilm", "packaged", "task_agnostic", backbone.views)
    assert copy.tokenizer is None
    assert copy._eval == {}
    assert copy._prompts == {}
