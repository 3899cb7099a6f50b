"""scikit-learn digits as a task stream, the CLIP image conversion, and building it from a config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moram.data.digits import DIGIT_NAMES, DigitsTasks
from moram.data.stream import TaskStreamDataModule
from moram.data.transforms import CLIP_MEAN, CLIP_STD, to_clip_images


@pytest.fixture(scope="module")
def tasks():
    return DigitsTasks(image_size=12).build()


def test_five_tasks_of_two_digits_named_in_order(tasks):
    assert [t.name for t in tasks] == ["digits 0-1", "digits 2-3", "digits 4-5", "digits 6-7", "digits 8-9"]
    assert tasks[1].classnames == ["two", "three"]
    assert tasks[0].prompts() == ["a photo of the handwritten digit zero.", "a photo of the handwritten digit one."]


def test_split_is_stratified_and_complete(tasks):
    train = sum(len(t.train) for t in tasks)
    test = sum(len(t.test) for t in tasks)
    assert train + test == 1797
    assert test == pytest.approx(0.3 * 1797, abs=1)
    for t in tasks:  # every class in both splits, at about the same ratio
        for split in (t.train, t.test):
            counts = torch.bincount(split.labels, minlength=2)
            assert counts.tolist()[0] > 0
            assert counts.tolist()[1] > 0
        ratio = len(t.test) / (len(t.train) + len(t.test))
        assert ratio == pytest.approx(0.3, abs=0.02)


def test_labels_index_the_task_classes(tasks):
    for t in tasks:
        assert set(t.train.labels.tolist()) == {0, 1}
        assert set(t.test.labels.tolist()) == {0, 1}


def test_split_is_deterministic_and_seeded():
    a, b = DigitsTasks(image_size=8).build(), DigitsTasks(image_size=8).build()
    assert torch.equal(a[0].train.images, b[0].train.images)
    c = DigitsTasks(image_size=8, split_seed=1).build()
    assert not torch.equal(a[0].train.images, c[0].train.images)


def test_images_are_clip_tensors(tasks):
    image, label = tasks[2].train[0]
    assert image.shape == (3, 12, 12)
    assert image.dtype == torch.float32
    assert isinstance(label, int)
    low = torch.tensor([(0 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]).view(3, 1, 1)
    high = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]).view(3, 1, 1)
    assert bool(((image >= low - 1e-5) & (image <= high + 1e-5)).all())
    assert float(image.std()) > 0.1  # not a blank image
    gray = image * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)
    torch.testing.assert_close(gray[0], gray[1])  # grayscale repeated


def test_class_order_and_names():
    source = DigitsTasks(classes_per_task=3, class_order=[9, 8, 7, 1, 2, 3], image_size=8)
    assert source.num_tasks == 2
    built = source.build()
    assert [t.name for t in built] == ["digits 9,8,7", "digits 1-3"]
    assert built[0].classnames == [DIGIT_NAMES[9], DIGIT_NAMES[8], DIGIT_NAMES[7]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes_per_task": 3}, r"data\.source\.classes_per_task \(3\)"),
        ({"classes_per_task": 0}, r"data\.source\.classes_per_task"),
        ({"class_order": [1, 1]}, r"data\.source\.class_order"),
        ({"class_order": [3, 10]}, r"data\.source\.class_order"),
        ({"test_fraction": 1.0}, r"data\.source\.test_fraction"),
        ({"template": "a digit"}, r"data\.source\.template"),
    ],
)
def test_bad_options_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitsTasks(**kwargs)


def test_to_clip_images_layouts():
    gray = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    rgb_last = np.stack([gray] * 3, axis=-1)  # (N, H, W, 3)
    rgb_first = torch.as_tensor(rgb_last).permute(0, 3, 1, 2)  # (N, 3, H, W)
    outs = [to_clip_images(x, 8) for x in (gray, rgb_last, rgb_first)]
    assert all(o.shape == (2, 3, 8, 8) for o in outs)
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(outs[1], outs[2])
    white = to_clip_images(torch.ones(1, 3, 32, 32), 16)  # float input: 1.0 is white
    expected = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)])
    torch.testing.assert_close(white[0, :, 5, 5], expected)
    with pytest.raises(ValueError, match="images must be"):
        to_clip_images(torch.zeros(2, 5, 4, 4), 8)


def test_datamodule_builds_from_a_config():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(TaskStreamDataModule, "data")
    config = parser.parse_object(
        {
            "data": {
                "source": {"class_path": "moram.data.digits.DigitsTasks", "init_args": {"classes_per_task": 5}},
                "batch_size": 8,
                "shots": 4,
            }
        }
    )
    dm = parser.instantiate_classes(config).data
    assert isinstance(dm, TaskStreamDataModule)
    assert (dm.num_tasks, dm.batch_size, dm.shots) == (2, 8, 4)
    loader = dm.train_dataloader()
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 32, 32)
    assert labels.max() < 5
    assert len(loader) == dm.steps_per_task
