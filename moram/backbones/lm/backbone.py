"""The language-model backbone plugin: a frozen transformers causal or seq2seq LM.

Causal LMs of the LLaMA, Mistral, Qwen, Gemma and GPT-2 families, and seq2seq LMs (T5).

* Training: the LM loss on answer tokens only (prompt and padding masked, :mod:`moram.backbones.lm.batch`),
  summed over tokens and divided by the *global* number of answer tokens, so N processes compute the
  gradient of one process over the same global batch (DDP averages over ranks).
* Evaluation: greedy (or beam) generation of every test prompt, scored per example with the task's
  metric (:mod:`moram.backbones.lm.metrics`: accuracy, exact match, ROUGE-L, edit similarity, SARI);
  the module averages them per task across processes (TRACE's OP and BWT come with the matrix).
* ``moram test`` writes every prediction to ``<log_dir>/predictions/<task>.jsonl``.
* Mixed precision is the Trainer's ``precision`` (``bf16-mixed``); ``dtype`` loads the weights in a
  lower precision to save memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moram.backbones.base import Backbone, EvalScores, StepLoss, TaskInfo
from moram.errors import ConfigError

if TYPE_CHECKING:
    from moram.adapters.method import MethodConfig
    from moram.module import ContinualModule


class LMBackbone(Backbone):
    """A transformers LM for continual instruction learning.

    Args:
        model: weights: a folder written by ``save_pretrained``, a hub id, or ``packaged`` (the tiny
            LLaMA moram ships, pretrained on a mixture of string tasks); exclusive with ``config``.
        config: build the model with random weights from a transformers config (a ``config.json``
            path or a dict with ``model_type``); needs ``tokenizer``.
        tokenizer: tokenizer folder or hub id (default: ``model``); ``char`` is moram's character
            tokenizer.
        dtype: load the weights in ``float32`` / ``bfloat16`` / ``float16`` (null: as stored).
        include_mlp: also adapt the feed-forward linears (default targets only).
        max_length: longest training sequence (prompt and answer) in tokens; prompts are cut from the left,
            to ``max_length - max_new_tokens`` for generation. A task's own ``max_length`` wins.
        max_new_tokens: generation budget per answer (a task's own ``max_new_tokens`` wins).
        num_beams: beams of the evaluation generation (1: greedy).
        trust_remote_code: allow models with custom code from their folder / hub id.
    """

    def __init__(
        self,
        model: str | None = "packaged",
        config: str | dict[str, Any] | None = None,
        tokenizer: str | None = None,
        dtype: str | None = None,
        include_mlp: bool = False,
        max_length: int = 512,
        max_new_tokens: int = 64,
        num_beams: int = 1,
        trust_remote_code: bool = False,
    ) -> None:
        if (model is None) == (config is None):
            raise ConfigError("set exactly one of model.backbone.model (weights) and model.backbone.config "
                             "(random weights)")
        for option, value in (("max_length", max_length), ("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
            if value < 1:
                raise ConfigError(f"model.backbone.{option} must be a positive integer, got {value}")
        self.model, self.config, self.tokenizer_source = model, config, tokenizer
        self.dtype, self.trust_remote_code, self.include_mlp = dtype, trust_remote_code, include_mlp
        self.max_length, self.max_new_tokens, self.num_beams = max_length, max_new_tokens, num_beams
        self.tokenizer: Any = None
        self.is_seq2seq = False

    # ------------------------------------------------------------------ construction
    def default_method(self) -> MethodConfig:
        """MoRAM with the paper's LLM settings: ``MoRAMConfig.llm()`` (r = k = 8, tau 0.03, delta 0.2, scale 2)."""
        from moram.atoms.config import MoRAMConfig

        return MoRAMConfig.llm()

    def build_options(self) -> dict[str, Any]:
        return {"model": self.model, "config": self.config, "tokenizer": self.tokenizer_source, "dtype": self.dtype}

    def build(self) -> nn.Module:
        from moram.backbones.lm.build import load_lm

        model, self.tokenizer = load_lm(self.model, self.config, self.tokenizer_source, self.dtype,
                                        self.trust_remote_code)
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        # from_pretrained returns the model in eval mode and Lightning keeps each module's mode: train
        # like transformers' own Trainer does (the backbone's dropout, if any, on while training)
        model.train()
        return model

    def default_targets(self, model: nn.Module) -> list[str]:
        """The architecture's attention projections (and feed-forward linears with ``include_mlp``)."""
        from moram.backbones.lm.build import default_lm_targets

        return default_lm_targets(model, self.include_mlp)

    # ------------------------------------------------------------------ training
    def answer_loss(
        self, host: ContinualModule, prompts: list[str], answers: list[str], max_length: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Summed cross-entropy over the answer tokens of a batch, and the number of those tokens."""
        from moram.backbones.lm.batch import IGNORE, encode_causal, encode_seq2seq

        lm = host.model
        max_length = max_length or self.max_length
        if self.is_seq2seq:
            enc = _to(encode_seq2seq(self.tokenizer, prompts, answers, max_length), host.device)
            labels = enc.pop("labels")
            decoder_inputs = lm.prepare_decoder_input_ids_from_labels(labels=labels)
            logits = lm(**enc, decoder_input_ids=decoder_inputs).logits
            targets = labels
        else:
            enc = _to(encode_causal(self.tokenizer, prompts, answers, max_length), host.device)
            labels = enc.pop("labels")
            logits = lm(**enc).logits[:, :-1]
            targets = labels[:, 1:]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        return loss, (targets != IGNORE).sum()

    def training_loss(self, host: ContinualModule, batch: dict[str, list[str]], task: TaskInfo) -> StepLoss:
        spec = task.spec
        total, tokens = self.answer_loss(
            host, list(batch["prompt"]), list(batch["answer"]), getattr(spec, "max_length", None)
        )
        # divide by the global token count, times the world size that DDP's gradient mean divides by
        world = host.trainer.world_size
        strategy = host.trainer.strategy
        global_tokens = strategy.reduce(tokens.float(), reduce_op="sum") if world > 1 else tokens.float()
        loss = total * world / global_tokens.clamp(min=1)
        return StepLoss(loss, total.detach() / tokens.clamp(min=1), len(batch["prompt"]))

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        host: ContinualModule,
        prompts: list[str],
        max_new_tokens: int | None = None,
        max_length: int | None = None,
    ) -> list[str]:
        """Answers generated for ``prompts`` (greedy, or ``num_beams`` beam search), decoded and stripped."""
        from moram.backbones.lm.batch import decode_answers, encode_causal_prompts, encode_seq2seq

        budget = max_new_tokens or self.max_new_tokens
        max_length = max_length or self.max_length
        settings = {
            "max_new_tokens": budget, "do_sample": False, "num_beams": self.num_beams,
            "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": self.tokenizer.eos_token_id,
        }
        lm = host.model
        if self.is_seq2seq:
            enc = _to(encode_seq2seq(self.tokenizer, prompts, None, max_length), host.device)
            return decode_answers(self.tokenizer, lm.generate(**enc, **settings))
        enc = _to(encode_causal_prompts(self.tokenizer, prompts, max(max_length - budget, 1)), host.device)
        out = lm.generate(**enc, **settings)
        return decode_answers(self.tokenizer, out[:, enc["input_ids"].shape[1] :])

    # ------------------------------------------------------------------ evaluation
    def eval_scores(
        self, host: ContinualModule, batch: dict[str, list[str]], task: TaskInfo, keep_records: bool
    ) -> EvalScores:
        from moram.backbones.lm.metrics import example_scores

        spec = task.spec
        prompts, answers = list(batch["prompt"]), list(batch["answer"])
        predictions = self.generate(
            host, prompts, getattr(spec, "max_new_tokens", None), getattr(spec, "max_length", None)
        )
        sources = list(batch["source"]) if "source" in batch else prompts
        scores = example_scores(spec.metric, predictions, answers, sources)
        records = None
        if keep_records:
            records = [
                {"prompt": p, "answer": a, "prediction": y, "score": s}
                for p, a, y, s in zip(prompts, answers, predictions, scores, strict=True)
            ]
        return EvalScores({"": torch.tensor(scores, dtype=torch.float64, device=host.device)}, records)

    def predict(self, host: ContinualModule, batch: Any, task: TaskInfo) -> list[str]:
        """Generated answers for the batch's prompts."""
        spec = task.spec
        return self.generate(
            host, list(batch["prompt"]), getattr(spec, "max_new_tokens", None), getattr(spec, "max_length", None)
        )


def _to(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
