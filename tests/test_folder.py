"""Image-folder tasks read from files written in the real layout."""

from __future__ import annotations

import pytest
import torch
from helpers import write_domain

from moram.data.folder import FolderTasks
from moram.data.transforms import CLIP_MEAN, CLIP_STD


def test_reads_layout_labels_classnames_and_templates(tmp_path):
    write_domain(tmp_path, "pets", ["cat", "golden_retriever"], per_class=3)
    write_domain(tmp_path, "food", ["pizza"], per_class=2)
    source = FolderTasks(["pets", "food"], root=str(tmp_path), templates={"food": "a photo of {}, a type of food."},
                         image_size=16)
    assert source.num_tasks == 2
    pets, food = source.build()
    assert pets.classnames == ["cat", "golden retriever"]
    assert pets.prompts()[1] == "a photo of a golden retriever."
    assert food.prompts() == ["a photo of pizza, a type of food."]
    assert len(pets.train) == 6
    assert len(pets.test) == 2
    assert len(food.train) == 2
    assert pets.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    image, label = pets.train[4]
    assert image.shape == (3, 16, 16)
    assert label == 1
    expected = (41 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)  # a flat image stays flat
    torch.testing.assert_close(image[:, 8, 8], expected, atol=1e-5, rtol=0)


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_domain(tmp_path, "pets", ["cat"], per_class=1)
    monkeypatch.setenv("MORAM_DATA", str(tmp_path))
    assert FolderTasks(["pets"], image_size=8).build()[0].classnames == ["cat"]


def test_errors_name_what_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("MORAM_DATA", raising=False)
    with pytest.raises(ValueError, match="data.source.root .* MORAM_DATA"):
        FolderTasks(["pets"]).build()
    with pytest.raises(FileNotFoundError, match=r"domain 'pets' not found.*<root>/<domain>/\{train,test\}"):
        FolderTasks(["pets"], root=str(tmp_path)).build()
    (tmp_path / "pets" / "train").mkdir(parents=True)
    (tmp_path / "pets" / "test").mkdir(parents=True)
    with pytest.raises(ValueError, match="task 'pets' has no class names"):
        FolderTasks(["pets"], root=str(tmp_path)).build()
    (tmp_path / "pets" / "train" / "cat").mkdir()
    (tmp_path / "pets" / "train" / "dog").mkdir()
    (tmp_path / "pets" / "train" / "dog" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"class folder\(s\) with no images .*: \S*pets/train/cat; a class needs"):
        FolderTasks(["pets"], root=str(tmp_path)).build()  # an empty class would train on nothing, silently
    (tmp_path / "pets" / "train" / "dog" / "0.png").unlink()
    (tmp_path / "pets" / "train" / "dog").rmdir()
    (tmp_path / "pets" / "train" / "cat" / "0.png").write_bytes(b"not a png")
    (tmp_path / "pets" / "test" / "cat").mkdir()
    (tmp_path / "pets" / "test" / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"2 unreadable or truncated image\(s\): '.*0\.png'"):
        FolderTasks(["pets"], root=str(tmp_path)).build()  # found when the tasks are built
    task = FolderTasks(["pets"], root=str(tmp_path), check_images=False).build()[0]
    with pytest.raises(OSError, match=r"cannot read image '.*0\.png'"):
        task.train[0]
