"""The language-model continual-learning LightningModule: a frozen transformers LM with atom banks.

Any transformers causal LM (LLaMA, Mistral, Qwen, Gemma, GPT-2 families) or seq2seq LM (T5) runs
the same loop as CLIP (DESIGN.md §3): one ``fit`` = the task sequence, one epoch = one task, the
same :class:`~moram.callbacks.task_boundary.TaskBoundaryCallback` and continual-metrics callback.

* Training: the LM loss on answer tokens only (prompt and padding masked, :mod:`moram.lm_batch`),
  summed over tokens and divided by the *global* number of answer tokens, so N processes compute
  the gradient of one process over the same global batch (DDP averages over ranks).
* Evaluation: greedy (or beam) generation of every test prompt, scored per example with the task's
  metric (:mod:`moram.text_metrics`: accuracy, exact match, ROUGE-L, edit similarity, SARI) and
  averaged over the task's examples across processes; the mean (0–100) is logged under
  :func:`moram.protocols.score_key`, where the metrics callback builds the accuracy matrix
  (with TRACE's OP and BWT beside ACC, FWT and forgetting).
* Mixed precision is the Trainer's ``precision`` (``bf16-mixed``); ``model.dtype`` loads the
  weights in a lower precision to save memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from moram.adapters.method import AdapterMethod
from moram.atoms.config import AtomConfig
from moram.lm_batch import IGNORE, decode_answers, encode_causal, encode_causal_prompts, encode_seq2seq
from moram.module_base import ContinualModule, LRSchedule
from moram.protocols import score_key

PREDICTIONS_DIR = "predictions"


class LMContinualModule(ContinualModule):
    """Continual learning of a transformers LM with MoRAM atoms (or a baseline ``method``).

    Args:
        model: weights: a folder written by ``save_pretrained``, a hub id, or ``packaged`` (the tiny
            LLaMA moram ships, pretrained on a mixture of string tasks); exclusive with ``config``.
        config: build the model with random weights from a transformers config (a ``config.json``
            path or a dict with ``model_type``); needs ``tokenizer``.
        tokenizer: tokenizer folder or hub id (default: ``model``); ``char`` is moram's character
            tokenizer.
        dtype: load the weights in ``float32`` / ``bfloat16`` / ``float16`` (null: as stored).
        atoms: atom settings; default the paper's LLM settings (``AtomConfig.llm()``: r = k = 8,
            tau 0.03, delta 0.2, scale 2, dropout 0.1) on q, k, v, o.
        method: a baseline from :mod:`moram.baselines` instead of atoms (same targets).
        include_mlp: also adapt the feed-forward linears (default targets only).
        max_length: longest training / prompt sequence in tokens (prompts are cut from the left).
        max_new_tokens: generation budget per answer (a task's own ``max_new_tokens`` wins).
        num_beams: beams of the evaluation generation (1: greedy).
        lr: learning rate of the current atoms (Adam; the paper uses 5e-4).
        weight_decay: AdamW weight decay (paper: 0).
        betas: Adam betas (paper: 0.9, 0.95).
        warmup_steps: linear warmup steps at the start of every task (both schedules).
        lr_schedule: the learning rate within each task, restarted at every task: ``cosine`` (warmup,
            then cosine to zero) or ``constant`` (warmup, then ``lr``; the official TRACE setting).
        steps_per_task: length of the per-task schedule; None takes the data's ``steps_per_task``.
        trust_remote_code: allow models with custom code from their folder / hub id.
    """

    def __init__(
        self,
        model: str | None = "packaged",
        config: str | dict[str, Any] | None = None,
        tokenizer: str | None = None,
        dtype: str | None = None,
        atoms: AtomConfig | None = None,
        method: AdapterMethod | None = None,
        include_mlp: bool = False,
        max_length: int = 512,
        max_new_tokens: int = 64,
        num_beams: int = 1,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "cosine",
        steps_per_task: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if (model is None) == (config is None):
            raise ValueError("set exactly one of model.model (weights) and model.config (random weights)")
        for option, value in (("max_length", max_length), ("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
            if value < 1:
                raise ValueError(f"model.{option} must be a positive integer, got {value}")
        self.save_hyperparameters()
        self.model_source, self.config_source, self.tokenizer_source = model, config, tokenizer
        self.dtype_name, self.trust_remote_code = dtype, trust_remote_code
        self.atoms = atoms if atoms is not None else AtomConfig.llm()
        self.method = method
        self.include_mlp = include_mlp
        self.max_length, self.max_new_tokens, self.num_beams = max_length, max_new_tokens, num_beams
        self.lr, self.weight_decay, self.betas = lr, weight_decay, (float(betas[0]), float(betas[1]))
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"model.lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        self.warmup_steps, self.lr_schedule, self.steps_per_task = warmup_steps, lr_schedule, steps_per_task
        self._trains = True
        self.model: Any = None
        self.tokenizer: Any = None
        self.adapted: list[str] = []
        self._eval: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    def _build_model(self) -> None:
        from moram.backbones.lm import load_lm, prepare_lm

        model, tokenizer = load_lm(
            self.model_source, self.config_source, self.tokenizer_source, self.dtype_name, self.trust_remote_code
        )
        self.adapted = prepare_lm(model, self.atoms, include_mlp=self.include_mlp, method=self.method)
        # from_pretrained returns the model in eval mode and Lightning keeps each module's mode: train
        # like transformers' own Trainer does (the backbone's dropout, if any, on while training)
        model.train()
        self.model, self.tokenizer = model, tokenizer

    @property
    def lm(self) -> Any:
        """The transformers model (built on first use)."""
        return self.backbone

    @property
    def is_seq2seq(self) -> bool:
        """Whether the model is an encoder-decoder (T5) rather than a causal LM."""
        return bool(getattr(self.lm.config, "is_encoder_decoder", False))

    # ------------------------------------------------------------------ training
    def _on_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def answer_loss(self, prompts: list[str], answers: list[str]) -> tuple[Tensor, Tensor]:
        """Summed cross-entropy over the answer tokens of a batch, and the number of those tokens."""
        if self.is_seq2seq:
            enc = self._on_device(encode_seq2seq(self.tokenizer, prompts, answers, self.max_length))
            labels = enc.pop("labels")
            decoder_inputs = self.lm.prepare_decoder_input_ids_from_labels(labels=labels)
            logits = self.lm(**enc, decoder_input_ids=decoder_inputs).logits
            targets = labels
        else:
            enc = self._on_device(encode_causal(self.tokenizer, prompts, answers, self.max_length))
            labels = enc.pop("labels")
            logits = self.lm(**enc).logits[:, :-1]
            targets = labels[:, 1:]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        return loss, (targets != IGNORE).sum()

    def training_step(self, batch: dict[str, list[str]], batch_idx: int) -> Tensor | None:
        if not self._trains:  # zero-shot: nothing to train
            return None
        total, tokens = self.answer_loss(list(batch["prompt"]), list(batch["answer"]))
        # divide by the global token count, times the world size that DDP's gradient mean divides by
        world = self.trainer.world_size
        global_tokens = self.trainer.strategy.reduce(tokens.float(), reduce_op="sum") if world > 1 else tokens.float()
        loss = total * world / global_tokens.clamp(min=1)
        self.check_loss(loss, batch_idx)
        self.log("train/loss", total.detach() / tokens.clamp(min=1), prog_bar=True, batch_size=len(batch["prompt"]))
        return self.add_adapter_penalty(loss)  # O-LoRA's regulariser; nothing for other methods

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Answers generated for ``prompts`` (greedy, or ``num_beams`` beam search), decoded and stripped."""
        budget = max_new_tokens or self.max_new_tokens
        pad = self.tokenizer.pad_token_id
        settings = {
            "max_new_tokens": budget, "do_sample": False, "num_beams": self.num_beams,
            "pad_token_id": pad, "eos_token_id": self.tokenizer.eos_token_id,
        }
        if self.is_seq2seq:
            enc = self._on_device(encode_seq2seq(self.tokenizer, prompts, None, self.max_length))
            out = self.lm.generate(**enc, **settings)
            return decode_answers(self.tokenizer, out)
        enc = self._on_device(encode_causal_prompts(self.tokenizer, prompts, max(self.max_length - budget, 1)))
        out = self.lm.generate(**enc, **settings)
        return decode_answers(self.tokenizer, out[:, enc["input_ids"].shape[1] :])

    # ------------------------------------------------------------------ evaluation
    def _start_eval(self, keep_predictions: bool = False) -> None:
        tasks = self.stream.tasks
        self._eval = {
            "sums": torch.zeros(len(tasks), 2, dtype=torch.float64, device=self.device),  # score sum, examples
            "predictions": [[] for _ in tasks] if keep_predictions else None,
        }

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval(keep_predictions=True)

    def _eval_step(self, batch: dict[str, list[str]], task_index: int) -> None:
        from moram.text_metrics import example_scores

        task = self.stream.tasks[task_index]
        prompts, answers = list(batch["prompt"]), list(batch["answer"])
        predictions = self.generate(prompts, getattr(task, "max_new_tokens", None))
        sources = list(batch["source"]) if "source" in batch else prompts
        scores = example_scores(task.metric, predictions, answers, sources)
        sums = self._eval["sums"][task_index]
        sums[0] += float(sum(scores))
        sums[1] += len(scores)
        kept = self._eval.get("predictions")
        if kept is not None:
            kept[task_index] += [
                {"prompt": p, "answer": a, "prediction": y, "score": s}
                for p, a, y, s in zip(prompts, answers, predictions, scores, strict=True)
            ]

    def validation_step(self, batch: dict[str, list[str]], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: dict[str, list[str]], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def _finish_eval(self, prefix: str) -> dict[str, float]:
        sums = self.trainer.strategy.reduce(self._eval["sums"], reduce_op="sum")  # each example once
        scores: dict[str, float] = {}
        for task, name in enumerate(self.stream.task_names):
            scores[name] = float(sums[task, 0]) / max(float(sums[task, 1]), 1.0)
            self.log(f"{prefix}{name}", scores[name], sync_dist=False)
        return scores

    def on_validation_epoch_end(self) -> None:
        self._finish_eval(score_key(""))

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test/score/")
        self._write_predictions()

    def _write_predictions(self) -> None:
        """This process's test predictions, one JSONL file per task under ``<log_dir>/predictions``."""
        kept = self._eval.get("predictions")
        log_dir = self.trainer.log_dir
        if kept is None or log_dir is None:
            return
        folder = Path(log_dir) / PREDICTIONS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        rank = self.trainer.global_rank
        for name, rows in zip(self.stream.task_names, kept, strict=True):
            suffix = f".rank{rank}" if self.trainer.world_size > 1 else ""
            with open(folder / f"{name}{suffix}.jsonl", "w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[str]:
        """Generated answers for the batch's prompts."""
        task = self.stream.tasks[dataloader_idx]
        return self.generate(list(batch["prompt"]), getattr(task, "max_new_tokens", None))
