"""The README's library example runs as printed (the public surface a user copies first)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def library_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    [block] = [b for b in blocks if "inject_atoms(model, config)" in b and "save_atoms(" in b]
    return block


def test_readme_example_runs_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(library_example(), "README.md", "exec"), scope)  # noqa: S102 - our own README
    model = scope["model"]
    from moram import load_atoms, routed_layers

    layers = routed_layers(model)
    assert [name for name, _ in layers] == scope["config"].targets
    assert all(layer.task_index == 1 and layer.keys.shape[0] == 2 * scope["config"].rank for _, layer in layers)
    assert (tmp_path / "my_memory" / "adapters.json").is_file()
    fresh = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 10))
    for index in (0, 2):  # the same frozen backbone; the memory comes from the adapter file alone
        fresh[index].load_state_dict(model[index].base.state_dict())
    load_atoms(fresh, tmp_path / "my_memory")
    x = torch.randn(4, 32)
    model.eval()
    fresh.eval()
    assert torch.equal(fresh(x), model(x))
