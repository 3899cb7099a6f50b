"""Your own data: the template configs run on folders in their documented layouts, and bad data is named early."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, write_domain
from PIL import Image

from moram.cli import main
from moram.data.folder import FolderTasks

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_args(tmp_path: Path, root: Path, *extra: str) -> list[str]:
    tiny = tmp_path / "tiny_clip.json"
    tiny.write_text(json.dumps(TINY))
    return [
        "fit", "--config", str(CONFIGS / "own_images.yaml"),
        "--model.backbone.model_config", str(tiny), "--model.backbone.pretrained", "null",
        "--model.method.rank", "2", "--model.method.top_k", "2",
        "--data.source.root", str(root), "--data.source.domains", "[pets, food]",
        "--data.steps_per_task", "2", "--data.batch_size", "4",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", *extra,
    ]


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write_domain(root, "pets", ["cat", "golden_retriever"], per_class=3)
    write_domain(root, "food", ["pizza", "sushi"], per_class=3)
    return root


def test_image_folder_template_runs_both_views(tmp_path, folders):
    cli = main(tiny_args(tmp_path, folders, "--data.source.image_size", "16"))
    log_dir = Path(cli.trainer.log_dir)
    aware = json.loads((log_dir / "continual_metrics.json").read_text())
    assert aware["task_names"] == ["pets", "food"]
    assert aware["finished"] is True
    assert (log_dir / "continual_metrics_task_agnostic.json").is_file()


def test_image_size_other_than_the_towers_is_refused_before_training(tmp_path, folders):
    with pytest.raises(ValueError, match=r"data.source.image_size gives 24-pixel images but the model's image tower "
                                         r"takes 16.*set data.source.image_size: 16"):
        main(tiny_args(tmp_path, folders, "--data.source.image_size", "24"))


def test_truncated_or_unreadable_image_is_named_when_the_tasks_are_built(tmp_path, folders):
    bad = folders / "food" / "train" / "sushi" / "broken.jpg"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    (folders / "pets" / "test" / "cat" / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"2 unreadable or truncated image\(s\): .*notes.png.*broken.jpg"):
        FolderTasks(["pets", "food"], root=str(folders), image_size=16).build()
    assert len(FolderTasks(["pets"], root=str(folders), image_size=16, check_images=False).build()[0].test) == 3


def test_text_template_reads_jsonl_task_folders(tmp_path):
    root = tmp_path / "tasks"
    for task in ("add", "echo"):
        (root / task).mkdir(parents=True)
        for split in ("train", "test"):
            lines = [json.dumps({"prompt": f"{task} {i} =", "answer": str(i)}) for i in range(4)]
            (root / task / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    cli = main(["--config", str(CONFIGS / "own_text.yaml"), "--model.backbone.model", "packaged",
                "--data.source.root", str(root), "--trainer.default_root_dir", str(tmp_path)], run=False)
    source = cli.datamodule.source
    assert [t.name for t in source.build()] == ["add", "echo"]
