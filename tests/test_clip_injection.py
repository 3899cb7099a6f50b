"""Atoms in CLIP backbones: the injection contract per backbone, target patterns, pretrained loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from moram.atoms import AtomConfig, AtomLinear, target_matches
from moram.backbones.clip.attention import convert_attention
from moram.backbones.clip.build import (
    build_clip,
    build_clip_from_config,
    clip_targets,
    load_model_config,
    load_pretrained,
    prepare_clip,
)

open_clip = pytest.importorskip("open_clip")

VISION = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
TEXT = {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 2}
CONFIG = AtomConfig(rank=4, top_k=2, max_tasks=2, threshold=None)  # no gate: every routed atom acts
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "."]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_bert_dir(root: Path) -> str:
    """A 2-layer BERT config and a word-piece tokenizer, written to ``root`` (no weights: random init)."""
    from transformers import BertConfig, BertTokenizer

    (root / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root)
    BertConfig(
        vocab_size=len(BERT_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32,
    ).save_pretrained(root)
    return str(root)


def build(kind: str, tmp_path: Path) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A model in eval mode with an image batch and a token batch for it."""
    torch.manual_seed(0)
    tokenizer = None
    if kind == "clip":
        model = open_clip.CLIP(32, VISION, TEXT)
    elif kind == "custom_text":
        model = open_clip.CustomTextCLIP(32, VISION, TEXT)
    elif kind == "bert":
        path = tiny_bert_dir(tmp_path)
        text = {"hf_model_name": path, "hf_tokenizer_name": path, "hf_proj_type": "linear",
                "hf_pooler_type": "mean_pooler", "context_length": 16}
        model, tokenizer = build_clip_from_config({"embed_dim": 32, "vision_cfg": VISION, "text_cfg": text},
                                                  load_text_weights=False)
    else:
        model, tokenizer = build_clip_from_config(load_model_config("moram-tiny-minilm"), load_text_weights=True)
    image_size = model.visual.image_size[0]
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, image_size, image_size, generator=g)
    if tokenizer is None:
        tokens = torch.randint(1, TEXT["vocab_size"] - 1, (2, TEXT["context_length"]), generator=g)
    else:
        tokens = tokenizer(["a photo of a cat.", "a dog"])
    return model.eval(), images, tokens


# (image layers, text layers) adapted by the default targets: blocks × (q, k, v, out, fc, proj)
EXPECTED = {"clip": (2 * 6, 2 * 6), "custom_text": (2 * 6, 2 * 6), "bert": (2 * 6, 2 * 6), "minilm": (4 * 6, 6 * 6)}


# the packaged MiniLM tower in the slow suite: the same Hugging Face (BERT) layers are checked by default ("bert"),
# and the packaged model is adapted by default in tests/test_adapter_reload.py and tests/test_memory_options.py
@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k == "minilm" else k for k in EXPECTED])
def test_injection_contract(kind: str, tmp_path: Path) -> None:
    model, images, tokens = build(kind, tmp_path)

    def encode(tower: str) -> torch.Tensor:
        with torch.no_grad():
            return model.encode_image(images) if tower == "image" else model.encode_text(tokens)

    reference = {tower: encode(tower) for tower in ("image", "text")}
    names = prepare_clip(model, CONFIG)

    # (c) exactly the hand-counted layers, per tower
    image_names = [n for n in names if n.startswith("visual.")]
    assert (len(image_names), len(names) - len(image_names)) == EXPECTED[kind]
    # (d) only the current atoms train
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.current_{part}" for n in names for part in ("keys", "values")}
    # (a) a no-op at injection, and still after the atoms were marked trained (as a training step does)
    for tower, want in reference.items():
        torch.testing.assert_close(encode(tower), want, rtol=0, atol=1e-6)
    for name in names:
        model.get_submodule(name).mark_trained()  # current atoms take part at inference from now on
    model.eval()
    for tower, want in reference.items():
        torch.testing.assert_close(encode(tower), want, rtol=0, atol=1e-6)
    # (b) every adapted layer is live: its atoms alone change its tower's output
    g = torch.Generator().manual_seed(2)
    for name in names:
        tower = "image" if name.startswith("visual.") else "text"
        values = model.get_submodule(name).current_values
        with torch.no_grad():
            values.copy_(10 * torch.randn(values.shape, generator=g))  # large: random-init towers damp some layers
        changed = (encode(tower) - reference[tower]).abs().max()
        with torch.no_grad():
            values.zero_()
        assert changed > 1e-5, f"atoms of '{name}' do not change the {tower} features"


def test_targets_are_selected_by_path() -> None:
    [image_attn, image_mlp, text_attn, text_mlp] = clip_targets()
    assert target_matches("visual.transformer.resblocks.11.attn.out_proj", image_attn)
    assert not target_matches("visual.attn_pool.attn.out_proj", image_attn)  # poolers are not targets
    assert target_matches("visual.transformer.resblocks.0.mlp.c_proj", image_mlp)
    assert not target_matches("visual.transformer.resblocks.0.mlp.c_proj", text_mlp)  # c_proj in both towers
    assert not target_matches("visual.attnpool.c_proj", image_mlp)  # ResNet pool's output layer
    assert target_matches("transformer.resblocks.3.attn.q_proj", text_attn)
    assert target_matches("text.transformer.resblocks.3.mlp.c_fc", text_mlp)
    assert not target_matches("text_decoder.resblocks.0.mlp.c_fc", text_mlp)
    bert = "text.transformer.encoder.layer.5"
    assert target_matches(f"{bert}.attention.output.dense", text_attn)
    assert not target_matches(f"{bert}.attention.output.dense", text_mlp)
    assert target_matches(f"{bert}.output.dense", text_mlp)
    assert not target_matches(f"{bert}.output.dense", text_attn)
    assert not target_matches("text.proj", text_mlp)


def test_towers_and_layers_choose_the_targets(tmp_path: Path) -> None:
    model, _, _ = build("clip", tmp_path)
    names = prepare_clip(model, CONFIG, towers=["text"], layers=["mlp"])
    assert names == [f"transformer.resblocks.{i}.mlp.{c}" for i in range(2) for c in ("c_fc", "c_proj")]


def test_config_targets_override_the_defaults(tmp_path: Path) -> None:
    model, _, _ = build("clip", tmp_path)
    config = AtomConfig(rank=4, max_tasks=2, targets=["visual.transformer.resblocks.1.attn.out_proj"])
    assert prepare_clip(model, config) == ["visual.transformer.resblocks.1.attn.out_proj"]
    assert isinstance(model.visual.transformer.resblocks[1].attn.out_proj, AtomLinear)


@pytest.mark.parametrize(
    ("towers", "layers", "match"),
    [(["vision"], ["attn"], r"towers .*\['image', 'text'\]"), (["image"], "mlp", r"layers .*\['attn', 'mlp'\]"),
     ([], ["mlp"], "towers must be a non-empty list")],
)
def test_invalid_towers_or_layers_name_the_option(towers: list[str], layers: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        clip_targets(towers, layers)


# ---------------------------------------------------------------------------- pretrained weights
def _tiny(seed: int, width: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    return open_clip.CLIP(32, {**VISION, "width": width}, TEXT).eval()


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "nested_pt"])
def test_load_pretrained_from_a_file(fmt: str, tmp_path: Path) -> None:
    source, target = _tiny(0), _tiny(1)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3} if fmt == "nested_pt" else state, path)
    image = torch.randn(2, 3, 32, 32)
    assert not torch.equal(target.encode_image(image), source.encode_image(image))
    assert load_pretrained(target, str(path)) == str(path)
    assert torch.equal(target.encode_image(image), source.encode_image(image))


def test_a_file_that_does_not_fit_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    torch.save(_tiny(0, width=96).state_dict(), path)
    fit = r"model.backbone.pretrained='.*wide.pt' does not fit CLIP: .*shape mismatch .*visual"
    with pytest.raises(ValueError, match=fit):
        load_pretrained(_tiny(1), str(path))
    converted = _tiny(1)
    convert_attention(converted)
    torch.save(_tiny(0).state_dict(), path)
    with pytest.raises(ValueError, match=r"missing .*q_proj.*unexpected .*in_proj_weight.*before convert_attention"):
        load_pretrained(converted, str(path))
    with pytest.raises(FileNotFoundError, match="model.backbone.pretrained='missing/weights.pt'"):
        load_pretrained(converted, "missing/weights.pt")


def test_open_clip_tags_fail_clearly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # Hermetic: no network and an empty cache, whatever the environment.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="model.backbone.pretrained='openai'.*model.backbone.model_name"):
        load_pretrained(_tiny(0), "openai")  # a model built from a config has no tags
    with pytest.raises(ValueError, match=r"not a pretrained tag of 'ViT-B-16'; its tags are \[.*'openai'"):
        load_pretrained(_tiny(0), "no-such-tag", "ViT-B-16")
    with pytest.raises(RuntimeError, match="model.backbone.pretrained='openai' for 'ViT-B-16'.*pass its path"):
        load_pretrained(_tiny(0), "openai", "ViT-B-16")
    with pytest.raises(RuntimeError, match="model.backbone.pretrained='openai'"):  # before building ViT-B-16
        build_clip(model_name="ViT-B-16", pretrained="openai")


def test_build_clip(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of model.backbone.model_name .* and model.backbone.model_config"):
        build_clip()
    with pytest.raises(ValueError, match="model.backbone.model_name='ViT-Tiny-0' is not an open_clip model"):
        build_clip(model_name="ViT-Tiny-0")
    source = _tiny(0)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    cfg = {"embed_dim": 32, "vision_cfg": VISION, "text_cfg": TEXT}
    model, tokenizer = build_clip(model_config=cfg, pretrained=str(tmp_path / "w.pt"))
    assert tokenizer(["a photo of a cat."]).shape == (1, TEXT["context_length"])
    tokens = torch.randint(1, TEXT["vocab_size"] - 1, (1, TEXT["context_length"]))
    torch.testing.assert_close(model.eval().encode_text(tokens), source.encode_text(tokens), rtol=0, atol=0)
    assert type(open_clip.get_tokenizer("ViT-B-16")).__name__ == "SimpleTokenizer"  # bundled: works offline
