"""Atoms in transformers language models: the contract suite over LLaMA, T5, GPT-2 and BERT.

Every model is tiny, built from config (no network), with all its dropouts at 0 so a
training-mode forward is deterministic.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moram import AtomConfig, consolidate_atoms, routed_layers
from moram.atoms.linear import AtomLinear
from moram.atoms.routing import reference_delta
from moram.backbones.lm.build import default_lm_targets, prepare_lm

ADAPTER_ENTRIES = ("current_keys", "current_values", "frozen_keys", "frozen_values", "tasks_done", "current_trained")

transformers = pytest.importorskip("transformers")

VOCAB = 100
STEPS = 3


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _llama() -> nn.Module:
    cfg = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=VOCAB, attention_dropout=0.0,
    )
    return transformers.LlamaForCausalLM(cfg)


def _t5() -> nn.Module:
    cfg = transformers.T5Config(
        d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2, vocab_size=VOCAB,
        dropout_rate=0.0,
    )
    return transformers.T5ForConditionalGeneration(cfg)


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForMaskedLM(cfg)


# name -> (builder, adapted layers by default (counted by hand), adapted with include_mlp)
MODELS = {
    "llama": (_llama, 2 * 4, 2 * (4 + 3)),  # q k v o (+ gate up down) per layer
    "t5": (_t5, 2 * 4 + 2 * 8, 2 * (4 + 2) + 2 * (8 + 2)),  # encoder self-attn; decoder self + cross (+ wi wo)
    "gpt2": (_gpt2, 2 * 2, 2 * (2 + 2)),  # c_attn c_proj (+ c_fc c_proj)
    "bert": (_bert, 2 * 4, 2 * (4 + 2)),  # query key value attention.output.dense (+ intermediate, output)
}


def atom_config(**overrides) -> AtomConfig:
    values = {"rank": 4, "top_k": 4, "max_tasks": 3, "dropout": 0.0}
    values.update(overrides)
    return AtomConfig.llm(**values)


def build(kind: str, include_mlp: bool = False, **overrides) -> tuple[nn.Module, dict, torch.Tensor, list[str]]:
    """A fresh injected model in eval mode, its inputs, the token targets, and the adapted names."""
    torch.manual_seed(0)
    model = MODELS[kind][0]().eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, 7), generator=gen)
    inputs = {"input_ids": ids}
    targets = ids
    if kind == "t5":
        targets = torch.randint(1, VOCAB, (2, 5), generator=gen)
        inputs["decoder_input_ids"] = targets
    names = prepare_lm(model, atom_config(**overrides), include_mlp=include_mlp)
    return model, inputs, targets, names


def logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits


def next_token_loss(model: nn.Module, inputs: dict, targets: torch.Tensor) -> torch.Tensor:
    out = logits(model, inputs)[:, :-1]  # (B, T-1, V)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), targets[:, 1:].reshape(-1))


def banks(model: nn.Module) -> list[tuple[str, AtomLinear]]:
    return [(name, layer) for name, layer in routed_layers(model)]


def train(model: nn.Module, inputs: dict, targets: torch.Tensor, steps: int = STEPS) -> dict[str, torch.Tensor]:
    """A few AdamW steps (weight decay on) over *all* parameters; returns the last step's gradients."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    grads: dict[str, torch.Tensor] = {}
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        next_token_loss(model, inputs, targets).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
    model.eval()
    return grads


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything in the state dict that is not atom memory."""
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(ADAPTER_ENTRIES)}


@pytest.mark.parametrize("kind", list(MODELS))
def test_injection_is_a_no_op(kind):
    torch.manual_seed(0)
    plain = MODELS[kind][0]().eval()
    model, inputs, _, _ = build(kind)
    with torch.no_grad():
        ref = logits(plain, inputs)
        torch.testing.assert_close(logits(model, inputs), ref, atol=1e-6, rtol=0)  # eval: fresh atoms left out
        model.train()
        torch.testing.assert_close(logits(model, inputs), ref, atol=1e-6, rtol=0)  # train: routed, values zero
    logits(model, inputs).sum().backward()  # a gradient reaching the current atoms marks them trained
    model.eval()
    assert all(bank.uses_current for _, bank in banks(model))
    with torch.no_grad():
        torch.testing.assert_close(logits(model, inputs), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_target_is_live(kind):
    model, inputs, _, names = build(kind, include_mlp=True)  # the attention defaults are a subset
    assert len(names) == MODELS[kind][2]
    assert [n for n, _ in routed_layers(model)] == names
    model.train()
    with torch.no_grad():
        ref = logits(model, inputs)
        gen = torch.Generator().manual_seed(2)
        for name, bank in banks(model):
            values = bank.current_values
            values.copy_(torch.randn(values.shape, generator=gen))
            moved = (logits(model, inputs) - ref).abs().max().item()
            values.zero_()
            assert moved > 1e-4, f"layer '{name}' does not change the logits"


@pytest.mark.parametrize("kind", list(MODELS))
def test_training_moves_only_atoms(kind):
    model, inputs, targets, _ = build(kind)
    before = backbone_state(model)
    atoms_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    grads = train(model, inputs, targets)
    after = backbone_state(model)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"backbone entry '{key}' changed"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == trainable  # no backbone parameter received a gradient
    for name, bank in banks(model):
        assert bank.frozen_keys.count_nonzero() == 0
        for part in ("current_keys", "current_values"):
            full = f"{name}.{part}"
            assert full in grads, f"no gradient reached '{full}'"
            assert grads[full].count_nonzero() > 0, f"zero gradient in '{full}'"
            assert not torch.equal(getattr(bank, part), atoms_before[full]), f"'{full}' did not train"


@pytest.mark.parametrize("kind", list(MODELS))
def test_consolidated_atoms_are_immune_to_training(kind):
    model, inputs, targets, _ = build(kind)
    train(model, inputs, targets)
    trained = {name: (bank.current_keys.detach().clone(), bank.current_values.detach().clone())
               for name, bank in banks(model)}
    consolidate_atoms(model)
    backbone = backbone_state(model)
    frozen = {name: (bank.frozen_keys.clone(), bank.frozen_values.clone()) for name, bank in banks(model)}
    grads = train(model, inputs, targets)  # a fresh AdamW, weight decay on
    for name, bank in banks(model):
        r = bank.rank
        assert bank.num_frozen_atoms == r
        assert int(bank.tasks_done) == 1
        assert torch.equal(bank.frozen_keys[:r], trained[name][0])
        assert torch.equal(bank.frozen_values[:r], trained[name][1])
        assert torch.equal(bank.frozen_keys, frozen[name][0]), f"frozen keys of '{name}' moved"
        assert torch.equal(bank.frozen_values, frozen[name][1]), f"frozen values of '{name}' moved"
        assert grads[f"{name}.current_values"].count_nonzero() > 0
    assert all(torch.equal(v, backbone[k]) for k, v in backbone_state(model).items())


def routed_by_hand(x, keys, values, cfg: AtomConfig, training: bool) -> torch.Tensor:
    """docs/design.md §1 from a layer's keys (N, d_in) and values (N, d_out)."""
    return reference_delta(
        x, keys, values, top_k=cfg.top_k, temperature=cfg.temperature, eps=AtomLinear.eps,
        threshold=None if training else cfg.threshold, scale=cfg.scale, signed=cfg.signed_scores,
    )


@pytest.mark.parametrize("name", ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"])
def test_gpt2_conv1d_orientation(name):
    cfg = atom_config(top_k=3, threshold=0.0)
    model, _, _, _ = build("gpt2", include_mlp=True, top_k=3, threshold=0.0)
    layer = model.get_submodule(name)
    conv = layer.base
    assert type(conv).__name__ == "Conv1D"
    d_in, d_out = conv.weight.shape  # Conv1D stores (in, out)
    assert (layer.in_features, layer.out_features) == (d_in, d_out) != (d_out, d_in)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen))
        for _ in range(2):  # frozen and current atoms, all non-trivial
            layer.current_values.copy_(torch.randn(layer.current_values.shape, generator=gen))
            layer.current_keys.copy_(torch.randn(layer.current_keys.shape, generator=gen))
            if layer.num_frozen_atoms == 0:
                layer.consolidate()
    x = torch.randn(2, 5, d_in, generator=gen)
    torch.testing.assert_close(conv(x), x @ conv.weight + conv.bias)
    layer.train()
    y = layer(x)
    assert y.shape == (2, 5, d_out)
    torch.testing.assert_close(y, conv(x) + routed_by_hand(x, layer.keys, layer.values, cfg, training=True))
    layer.mark_trained()  # as a training step does: the current atoms route at inference too
    layer.eval()
    with torch.no_grad():
        expected = conv(x) + routed_by_hand(x, layer.keys, layer.values, cfg, training=False)
        torch.testing.assert_close(layer(x), expected)


def test_default_targets_per_architecture():
    names = {kind: set(build(kind, include_mlp=True)[3]) for kind in MODELS}
    for kind, adapted in names.items():
        assert len(adapted) == MODELS[kind][2]
        attention = set(build(kind)[3])
        assert len(attention) == MODELS[kind][1]
        assert attention < adapted
        assert not any(n.endswith("lm_head") or ".cls." in n or n.startswith("cls.") for n in adapted), kind
    assert default_lm_targets(_llama()) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert default_lm_targets(_llama(), include_mlp=True)[4:] == ["gate_proj", "up_proj", "down_proj"]
    t5_attention = {n for n in names["t5"] if "Attention" in n}
    assert len(t5_attention) == MODELS["t5"][1]
    assert {n.rsplit(".", 1)[-1] for n in names["t5"] - t5_attention} == {"wi", "wo"}
    assert {n.rsplit(".", 1)[-1] for n in names["gpt2"]} == {"c_attn", "c_proj", "c_fc"}


def test_bert_pooler_is_not_a_target():
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
    ))
    names = prepare_lm(bert, atom_config(), include_mlp=True)
    assert len(names) == MODELS["bert"][2]
    assert "pooler.dense" not in names
    assert "encoder.layer.1.output.dense" in names
    assert "encoder.layer.1.attention.output.dense" in names


def test_t5_mlp_with_gated_units():
    torch.manual_seed(0)
    cfg = transformers.MT5Config(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=1, num_decoder_layers=1,
                                 vocab_size=VOCAB)
    names = prepare_lm(transformers.MT5ForConditionalGeneration(cfg), atom_config(), include_mlp=True)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
    assert len(names) == 4 + 8 + 3 + 3


def test_config_targets_override_the_defaults():
    model = _llama()
    names = prepare_lm(model, atom_config(targets=["v_proj"]), include_mlp=True)
    assert names == ["model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"]


def test_unknown_architecture_is_a_clear_error():
    opt = transformers.OPTForCausalLM(transformers.OPTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, ffn_dim=64, vocab_size=VOCAB,
        word_embed_proj_dim=32,
    ))
    with pytest.raises(ValueError, match=r"model_type 'opt'.*set model\.targets"):
        default_lm_targets(opt)
    with pytest.raises(ValueError, match=r"no config\.model_type.*set model\.targets"):
        prepare_lm(nn.Sequential(nn.Linear(4, 4)), atom_config())
    names = prepare_lm(opt, atom_config(targets=["q_proj", "v_proj"]))
    assert sorted(names) == ["model.decoder.layers.0.self_attn.q_proj", "model.decoder.layers.0.self_attn.v_proj"]


def test_moe_mlp_is_rejected():
    mixtral = transformers.MixtralForCausalLM(transformers.MixtralConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB, num_local_experts=2, num_experts_per_tok=1,
    ))
    assert len(prepare_lm(mixtral, atom_config())) == 4
    with pytest.raises(ValueError, match="include_mlp"):
        default_lm_targets(mixtral, include_mlp=True)


def test_wrapped_model_uses_the_inner_config():
    holder = nn.Module()
    holder.model = _gpt2()
    assert default_lm_targets(holder) == ["attn.c_attn", "attn.c_proj"]


# Every table entry is checked against a tiny model of that type: each default pattern must match.
ROLES = {"q_proj", "k_proj", "v_proj", "o_proj"}
GATED = {"gate_proj", "up_proj", "down_proj"}
EXPECTED_LEAVES = {
    "starcoder2": (ROLES, {"c_fc", "c_proj"}),
    "phi3": ({"qkv_proj", "o_proj"}, {"gate_up_proj", "down_proj"}),
    "mixtral": (ROLES, None),
    "qwen2_moe": (ROLES, None),
    "qwen3_moe": (ROLES, None),
    "roberta": ({"query", "key", "value", "dense"}, {"query", "key", "value", "dense"}),
    "xlm-roberta": ({"query", "key", "value", "dense"}, {"query", "key", "value", "dense"}),
}
DECODERS = [
    "llama", "mistral", "ministral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "cohere",
    "granite", "helium", "smollm3", "stablelm", "exaone4", "starcoder2", "phi3", "mixtral", "qwen2_moe", "qwen3_moe",
    "roberta", "xlm-roberta",
]


@pytest.mark.parametrize("model_type", DECODERS)
def test_table_entry_matches_its_architecture(model_type):
    from moram.backbones.lm.build import SUPPORTED_MODEL_TYPES

    assert model_type in SUPPORTED_MODEL_TYPES
    tiny = {
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 64, "vocab_size": VOCAB, "head_dim": 8, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 2, "num_local_experts": 2, "num_experts": 2, "num_experts_per_tok": 1,
        "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16,
    }
    cfg = transformers.AutoConfig.for_model(model_type, **tiny)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    attention, mlp = EXPECTED_LEAVES.get(model_type, (ROLES, GATED))
    names = prepare_lm(model, atom_config())
    assert {n.rsplit(".", 1)[-1] for n in names} == attention
    if mlp is None:
        return
    fresh = transformers.AutoModelForCausalLM.from_config(cfg)
    names = prepare_lm(fresh, atom_config(), include_mlp=True)
    assert {n.rsplit(".", 1)[-1] for n in names} == attention | mlp
    assert not any("lm_head" in n for n in names)
