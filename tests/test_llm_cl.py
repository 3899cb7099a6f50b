"""Continual learning of language models: answer-only loss, generation scoring, loading, the CLI run.

Tiny LLaMA / GPT-2 / T5 models are built from config with moram's character tokenizer; nothing is
downloaded. The same TaskBoundaryCallback and metrics callback as the CLIP runs drive them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, TOK, run_lm
from lightning.pytorch import Trainer

from moram.atoms import MoRAMConfig
from moram.backbones.lm import LMBackbone
from moram.backbones.lm.batch import IGNORE, encode_causal, encode_seq2seq
from moram.backbones.lm.metrics import normalize_answer
from moram.callbacks.continual_metrics import ContinualMetricsCallback
from moram.callbacks.task_boundary import TaskBoundaryCallback
from moram.data.stream import TaskStreamDataModule
from moram.data.text import TextDataset, TextTask
from moram.module import ContinualModule
from moram.protocols import routed_layers

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["rotate: 1234 =", "decrement: 45 =", "sort: 9 ="]
ANSWERS = ["2341", "34", "9"]


def lm_module(kind: str, **kwargs) -> ContinualModule:
    torch.manual_seed(0)
    method = kwargs.pop("method", MoRAMConfig.llm(dropout=0.0))
    module = ContinualModule(LMBackbone(model=None, config=CONFIGS[kind], tokenizer="char", **kwargs), method=method,
                             max_tasks=2)
    module.configure_model()
    return module


def _hand_answer_nll(module: ContinualModule, prompt: str, answer: str) -> float:
    """-sum log p(answer tokens + eos | prompt), one example, no padding, written from the definition."""
    prompt_ids = TOK(prompt)["input_ids"]  # [bos] + characters
    answer_ids = [*TOK(answer, add_special_tokens=False)["input_ids"], TOK.eos_token_id]
    if module.backbone.is_seq2seq:
        decoder = [TOK.pad_token_id, *answer_ids[:-1]]  # the decoder start token, then the answer shifted
        logits = module.model(input_ids=torch.tensor([prompt_ids]), decoder_input_ids=torch.tensor([decoder])).logits[0]
        logp = logits.log_softmax(-1)
        return -sum(float(logp[i, t]) for i, t in enumerate(answer_ids))
    ids = prompt_ids + answer_ids
    logp = module.model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    start = len(prompt_ids)  # the token at position j is predicted from position j - 1
    return -sum(float(logp[j - 1, ids[j]]) for j in range(start, len(ids)))


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
def test_loss_counts_answer_tokens_only(kind):
    module = lm_module(kind).eval()
    total, tokens = module.backbone.answer_loss(module, PROMPTS, ANSWERS)
    expected = sum(_hand_answer_nll(module, p, a) for p, a in zip(PROMPTS, ANSWERS, strict=True))
    assert int(tokens) == sum(len(a) + 1 for a in ANSWERS)  # answer characters + eos, nothing of the prompt
    assert float(total) == pytest.approx(expected, rel=1e-5)
    # prompt and padding positions are masked; the answer positions are not
    batch = encode_causal(TOK, PROMPTS, ANSWERS) if kind != "t5" else encode_seq2seq(TOK, PROMPTS, ANSWERS)
    assert int((batch["labels"] != IGNORE).sum()) == int(tokens)


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_only_current_atoms_receive_gradients(kind):
    module = lm_module(kind).train()
    total, _ = module.backbone.answer_loss(module, PROMPTS, ANSWERS)
    total.backward()
    with_grad = {n for n, p in module.model.named_parameters() if p.grad is not None}
    assert with_grad
    assert all(n.endswith(("current_keys", "current_values")) for n in with_grad)
    assert not any(p.requires_grad for n, p in module.model.named_parameters() if n not in with_grad)


class _FixedSource:
    """Two text tasks given in memory."""

    def __init__(self, tasks):
        self._tasks = tasks

    @property
    def num_tasks(self):
        return len(self._tasks)

    def build(self):
        return self._tasks


def _reference_generation(module: ContinualModule, prompt: str, n: int) -> str:
    """Greedy answer of one unpadded prompt, token by token, from the model's logits."""
    ids = TOK(prompt)["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(module.model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == TOK.eos_token_id:
                break
            out.append(nxt)
    return TOK.decode(out, skip_special_tokens=True).strip()


def test_generation_scoring_matches_reference_greedy_answers(tmp_path):
    module = lm_module("llama", max_new_tokens=4).eval()
    prompts = ["copy: 12 =", "rotate: 98765 =", "sort: 3 =", "x", "increment: 4040 =", "reverse: 11 ="]
    greedy = [_reference_generation(module, p, 4) for p in prompts]
    # half the references are the model's own greedy answer (computed unbatched, without padding), half wrong
    refs = [g if i % 2 == 0 else g + "9z" for i, g in enumerate(greedy)]
    data = TextDataset([{"prompt": p, "answer": r} for p, r in zip(prompts, refs, strict=True)])
    wrong = TextDataset([{"prompt": p, "answer": g + "9z"} for p, g in zip(prompts, greedy, strict=True)])
    tasks = [TextTask("half", data, data, "exact_match"), TextTask("none", wrong, wrong, "exact_match")]
    stream = TaskStreamDataModule(_FixedSource(tasks), batch_size=2, eval_batch_size=4, steps_per_task=1)
    metrics = ContinualMetricsCallback()
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=[metrics])
    results = trainer.validate(module, datamodule=stream, verbose=False)[0]
    # batches of 4 left-padded prompts of different lengths give the unpadded greedy answers
    assert results["eval/score/half"] == pytest.approx(50.0)
    assert results["eval/score/none"] == pytest.approx(0.0)
    assert module.backbone.generate(module, prompts, 4) == greedy


def test_two_task_run_writes_the_matrix_with_trace_metrics(tmp_path):
    cli, log_dir = run_lm(tmp_path)
    assert any(isinstance(c, TaskBoundaryCallback) for c in cli.trainer.callbacks)  # the CLIP runs' callback
    metrics = json.loads((log_dir / "continual_metrics.json").read_text())
    assert metrics["task_names"] == ["rotate", "decrement"]
    r = metrics["matrix"]
    assert len(r) == 2
    assert len(metrics["zero_shot"]) == 2
    assert all(0.0 <= v <= 100.0 for row in [metrics["zero_shot"], *r] for v in row)
    assert metrics["op"] == pytest.approx((r[1][0] + r[1][1]) / 2)  # TRACE OP: mean of the final row
    assert metrics["trace_bwt"] == pytest.approx(-min(r[1][0] - r[0][0], 0.0) / 2)  # one earlier task, of two
    # atoms grew by r per task in every adapted layer, and the per-example scores were exact-match means
    layers = routed_layers(cli.model.model)
    assert layers
    assert all(layer.num_frozen_atoms == 8 for _, layer in layers)
    assert all(v * 6 / 100 == pytest.approx(round(v * 6 / 100)) for row in r for v in row)


def test_test_subcommand_writes_predictions(tmp_path):
    cli, log_dir = run_lm(tmp_path, subcommand="test")
    files = sorted(p.name for p in (log_dir / "predictions").iterdir())
    assert files == ["decrement.jsonl", "rotate.jsonl"]
    rows = [json.loads(line) for line in (log_dir / "predictions" / "rotate.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert {"prompt", "answer", "prediction", "score"} <= set(rows[0])
    same = [normalize_answer(row["prediction"]) == normalize_answer(row["answer"]) for row in rows]
    assert [row["score"] for row in rows] == [100.0 if s else 0.0 for s in same]


def test_loads_a_saved_pretrained_folder(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    values = dict(CONFIGS["llama"])
    values.pop("model_type")
    torch.manual_seed(1)
    reference = AutoModelForCausalLM.from_config(LlamaConfig(**values)).eval()
    reference.save_pretrained(tmp_path / "lm")  # the on-disk format of a hub checkpoint
    TOK.save_pretrained(tmp_path / "lm")
    module = ContinualModule(LMBackbone(model=str(tmp_path / "lm")), method=MoRAMConfig.llm(), max_tasks=2)
    module.configure_model()
    ids = torch.tensor([TOK("rotate: 12 =")["input_ids"]])
    with torch.no_grad():  # fresh atoms change nothing: the loaded model equals the saved one
        assert torch.allclose(module.model.eval()(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-6)
    assert len(module.backbone.tokenizer) == len(TOK)


def test_bad_inputs_name_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.backbone.model"):
        ContinualModule(LMBackbone(model=str(tmp_path / "missing")), method=MoRAMConfig.llm(), max_tasks=1
                        ).configure_model()
    bad = dict(CONFIGS["llama"], vocab_size=10)
    with pytest.raises(ValueError, match="model.backbone.tokenizer"):
        ContinualModule(LMBackbone(model=None, config=bad, tokenizer="char"), method=MoRAMConfig.llm(), max_tasks=1
                        ).configure_model()
    with pytest.raises(ValueError, match="model_type"):
        ContinualModule(LMBackbone(model=None, config={"hidden_size": 8}, tokenizer="char"),
                        method=MoRAMConfig.llm(), max_tasks=1).configure_model()
    with pytest.raises(ValueError, match="exactly one"):
        LMBackbone(model=None, config=None)
    data = TextDataset([{"prompt": "a", "answer": "b"}])
    stream = TaskStreamDataModule(_FixedSource([TextTask("t", data, data)]), shots=2)
    with pytest.raises(ValueError, match="data.shots"):
        stream.tasks  # noqa: B018


def test_bf16_mixed_precision_trains_the_atoms(tmp_path):
    cli, log_dir = run_lm(tmp_path, "--trainer.precision", "bf16-mixed", "--data.source.tasks", '["rotate"]')
    layers = routed_layers(cli.model.model)
    assert all(layer.current_values.dtype == torch.float32 for _, layer in layers)  # fp32 master weights
    assert any(layer.current_values.abs().sum() > 0 for _, layer in layers)  # and they trained
    assert (log_dir / "continual_metrics.json").exists()


def test_a_baseline_method_runs_on_a_language_model(tmp_path):
    cli, log_dir = run_lm(tmp_path, "--model.method", "moram.baselines.SequentialLoRA", "--model.method.rank", "2")
    assert routed_layers(cli.model.model) == []
    layers = cli.model.continual_layers()
    assert len(layers) == 8  # q, k, v, o of two blocks, the atoms' default targets
    assert len(json.loads((log_dir / "continual_metrics.json").read_text())["matrix"]) == 2


@pytest.mark.slow  # three LM fits; resuming mid-task bitwise runs by default in test_run_safety.py (CLIP)
def test_resume_mid_task_with_atom_dropout_is_exact(tmp_path):
    # Atom dropout (the paper's 0.1) draws from the global RNG; its state travels in the checkpoint.
    dropout = ("--model.method.dropout", "0.1")
    full_cli, full_dir = run_lm(tmp_path / "full", *dropout)
    ckpt_dir = tmp_path / "ckpt"
    run_lm(tmp_path / "part", *dropout, "--trainer.max_steps", "4",
         "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.dirpath",
         str(ckpt_dir), "--trainer.callbacks.every_n_train_steps", "4", "--trainer.callbacks.save_top_k", "-1")
    ckpt = next(ckpt_dir.glob("*.ckpt"))  # step 4: inside the second task
    resumed_cli, resumed_dir = run_lm(tmp_path / "resumed", *dropout, "--ckpt_path", str(ckpt))
    full = json.loads((full_dir / "continual_metrics.json").read_text())
    resumed = json.loads((resumed_dir / "continual_metrics.json").read_text())
    assert resumed["matrix"] == full["matrix"]
    for (_, a), (_, b) in zip(routed_layers(full_cli.model.model), routed_layers(resumed_cli.model.model), strict=True):
        for name in ("frozen_keys", "frozen_values", "current_keys", "current_values"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
