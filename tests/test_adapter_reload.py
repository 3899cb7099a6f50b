"""An adapter folder exported by ``moram fit`` loads into the plain backbone in one call, as the README shows."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from helpers import fit_args

from moram.backbones.clip import build_clip
from moram.cli import main
from moram.module import ContinualModule

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    [block] = [b for b in blocks if "load_atoms(model, " in b and "adapters/task4" in b]
    return block


def test_exported_adapter_loads_into_the_plain_backbone_as_the_readme_shows(tmp_path, tiny_config, one_thread):
    plain, _ = build_clip(model_config=str(tiny_config))
    weights = tmp_path / "tiny.pt"
    torch.save(plain.state_dict(), weights)  # the backbone's weights, in a real torch file
    cli = main(fit_args(tmp_path, tiny_config, "--model.backbone.pretrained", str(weights)))
    run = Path(cli.trainer.log_dir)
    folder = run / "adapters" / "task1-synthetic_1"
    # the README's lines, with the tiny backbone and this run's folder in place of the shipped ones
    code = readme_block()
    code = code.replace('model_config="moram-tiny-minilm", pretrained="packaged"',
                        f'model_config={str(tiny_config)!r}, pretrained={str(weights)!r}')
    code = code.replace('"lightning_logs/version_0/adapters/task4-digits_8-9"', repr(str(folder)))
    assert code != readme_block()
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    loaded = scope["model"].eval()
    trained = ContinualModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt").model.eval()
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want, got = trained.encode_image(images), loaded.encode_image(images)
        base = plain.eval().encode_image(images)
    assert torch.equal(got, want)
    assert not torch.allclose(got, base)  # the memory changed the features: the adapter did load
