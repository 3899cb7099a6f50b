"""The ``moram`` command: LightningCLI over moram's (or any) LightningModule and DataModule.

``moram fit --config configs/clip_cl.yaml`` runs a whole task sequence (one epoch per task).
Model and data are chosen by ``class_path`` in the YAML; every option shows in ``--help``.

Values that must agree are derived, not written twice: when the data is a task stream
(:class:`moram.protocols.TaskStream`), ``trainer.max_epochs`` left null becomes the number of tasks,
and the module sizes its continual layers from the same number (``model.max_tasks: null``).
The trainer defaults of a task stream (:data:`TASK_STREAM_TRAINER_DEFAULTS`: a reload per epoch, the
full zero-shot validation, no distributed sampler) are the command's defaults, not lines in every config.
A continual run always gets a :class:`~moram.callbacks.task_boundary.TaskBoundaryCallback` and a
:class:`~moram.callbacks.continual_metrics.ContinualMetricsCallback`; list either under
``trainer.callbacks`` to configure it, and the default one is not added. It also gets an
:class:`~moram.callbacks.adapter_export.AdapterExportCallback` (the memory after every task as an
adapter folder) and, when standard output is not a terminal, a
:class:`~moram.callbacks.progress.ProgressLogCallback` (plain progress lines for log files).

Resuming: ``--ckpt_path last`` finds the newest run directory with a ``checkpoints/last.ckpt``
(:func:`find_last_checkpoint`), resumes from it and keeps logging into that same directory; when
there is none it is an error, not a fresh start. Without a logger configured, runs log with a
``CSVLogger`` into ``<default_root_dir>/lightning_logs/version_N`` (Lightning's default, named).

Errors: moram's own errors about a user's input (:class:`moram.errors.MoramError`: bad option values,
missing data, checkpoints of another model) and jsonargparse's reports of bad options end the command
with one line, ``moram: error: ...``, and exit code 2; ``MORAM_TRACEBACK=1`` shows the full traceback
instead. Any other exception is a bug and ends the command with its full traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from moram.cli_help import HELP_GUIDE, nested_help
from moram.errors import CheckpointError, ConfigError, DataNotFoundError, MoramError
from moram.protocols import is_task_stream
from moram.runs import flat_options as _flat

TRACEBACK_ENV = "MORAM_TRACEBACK"
LOG_NAME = "lightning_logs"
CSV_LOGGER = "moram.loggers.AppendingCSVLogger"
_LIGHTNING_CSV = ("CSVLogger", "lightning")  # first part of the class path of Lightning's CSV logger, replaced
_FOLDER_LOGGERS = ("AppendingCSVLogger", "CSVLogger", "TensorBoardLogger")  # loggers that keep a version_N folder
_PACKAGE = Path(__file__).resolve().parent


def quiet() -> None:
    """Silence what every run printed without telling the user anything (each filter says why)."""
    # Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecated, once per loop restart.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # The frozen backbone is kept in eval mode on purpose (no dropout in frozen layers; the atoms
    # train in train mode), which Lightning reports as "may lead to unexpected behavior".
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # One-step tasks in tests and tiny streams are shorter than the logging interval; harmless.
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging")
    # Multi-process runs: moram's scores come from counts already summed over ranks and its loss from the
    # gathered global batch, so the value logged is the same on every rank and sync_dist adds nothing.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\(.*sync_dist=True")
    # FSDP2: last.ckpt is a folder rewritten at every save, by design.
    warnings.filterwarnings("ignore", message=r"Detected an existing checkpoint in .*last")
    # On a machine with SLURM installed, Lightning says on every run outside a job that srun "is available but
    # not used"; moram's cluster path is configs/cluster/slurm.sbatch (srun moram fit), documented in the README.
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    # Advertisements for cloud services, printed by Lightning on every run.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning_utilities.core.rank_zero", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for target in [logger, *logger.handlers]:
            if not any(isinstance(f, _NoTips) for f in target.filters):
                target.addFilter(_NoTips())
    try:  # the shipped MiniLM text tower has a pooler CLIP never uses: transformers reports it unused
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def continual_callbacks(configured: list[Callback], model: object = None, progress_bar: bool = True) -> list[Callback]:
    """The callbacks a continual run needs, minus those the user already configured.

    On a terminal, with ``progress_bar`` (``trainer.enable_progress_bar``), the progress bar is moram's
    per-task one unless one is configured; without a terminal, plain progress lines.

    A model may declare other views of its scores as ``score_views`` (view name -> logged metric
    prefix, e.g. the task-agnostic view of a task-aware run); each gets its own metrics callback.
    """
    from moram.callbacks.adapter_export import AdapterExportCallback
    from moram.callbacks.continual_metrics import ContinualMetricsCallback
    from moram.callbacks.input_check import ImageSizeCheckCallback
    from moram.callbacks.progress import ProgressLogCallback, TaskProgressBar
    from moram.callbacks.requeue import SlurmRequeueCallback
    from moram.callbacks.task_boundary import TaskBoundaryCallback

    defaults: list[Callback] = []
    if not any(isinstance(c, TaskBoundaryCallback) for c in configured):
        defaults.append(TaskBoundaryCallback())
    if not any(isinstance(c, AdapterExportCallback) for c in configured):
        defaults.append(AdapterExportCallback())
    if not any(isinstance(c, ImageSizeCheckCallback) for c in configured):
        defaults.append(ImageSizeCheckCallback())
    if not any(isinstance(c, SlurmRequeueCallback) for c in configured):
        defaults.append(SlurmRequeueCallback())  # does nothing outside SLURM
    if not sys.stdout.isatty() and not any(isinstance(c, ProgressLogCallback) for c in configured):
        defaults.append(ProgressLogCallback())
    elif sys.stdout.isatty() and progress_bar and not any(isinstance(c, ProgressBar) for c in configured):
        defaults.append(TaskProgressBar())
    metric_names = {c.name for c in configured if isinstance(c, ContinualMetricsCallback)}
    if "continual_metrics" not in metric_names:
        defaults.append(ContinualMetricsCallback())
    for view, prefix in dict(getattr(model, "score_views", {})).items():
        if f"continual_metrics_{view}" not in metric_names:
            defaults.append(ContinualMetricsCallback(score_prefix=prefix, name=f"continual_metrics_{view}"))
    return defaults




def _restore_nulls(node: Any) -> None:
    """Turn the string ``"None"`` back into None in the options of nested classes (in place).

    jsonargparse 4.x parses ``null`` given on the command line for an option of a class nested in
    another (``--model.backbone.pretrained null``) into the string ``"None"``; the YAML form and
    the top-level options are parsed right. No option of moram takes the string ``"None"``.
    """
    from jsonargparse import Namespace

    if isinstance(node, Namespace):
        for key in list(node.keys()):
            value = node[key]
            if value == "None":
                node[key] = None
            elif isinstance(value, (Namespace, list)):
                _restore_nulls(value)
    elif isinstance(node, list):
        for item in node:
            _restore_nulls(item)


def requeued_run(default_root_dir: Path, log_root: Path) -> tuple[Path, int] | None:
    """The checkpoint and run folder (``version_N``) a requeued SLURM job continues, or None when this is not one.

    Under SLURM, :class:`moram.callbacks.requeue.SlurmRequeueCallback` writes
    ``<default_root_dir>/hpc_ckpt_N.ckpt`` before requeueing (the file Lightning itself would resume
    from); the run is the newest ``version_N`` under ``log_root``, which a job-specific
    ``default_root_dir`` (``configs/cluster/slurm.sbatch``) makes the job's own.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from moram.callbacks.requeue import hpc_checkpoint
    from moram.runs import version_number

    checkpoint = hpc_checkpoint(default_root_dir) if SLURMEnvironment.detect() else None
    versions = [version_number(v) for v in log_root.glob("version_*") if version_number(v) >= 0]
    if checkpoint is None or not versions:
        return None
    return checkpoint, max(versions)


def _log_root(logger: Any, root: Path) -> Path:
    args = logger.init_args
    return Path(args.get("save_dir") or root) / (args.get("name") or LOG_NAME)


def _run_folder_logger(trainer: Any, root: Path) -> Any:
    """Name the default logger in ``trainer`` (config) and return the logger that holds the run folder."""
    from jsonargparse import Namespace

    logger = trainer.get("logger")
    csv = Namespace(class_path=CSV_LOGGER, init_args=Namespace(save_dir=str(root), name=LOG_NAME))
    if logger is None or logger is True:  # Lightning's default, without its tensorboardX notice
        logger = trainer.logger = csv
    elif logger is not False and _class_name(_first(logger)) not in _FOLDER_LOGGERS:
        # a tracker with no run folder of its own (MLflow, W&B): the default CSV logger goes first, so the
        # run folder (metrics files, checkpoints, adapters) is lightning_logs/version_N as without it
        trainer.logger = [csv, *(logger if isinstance(logger, list) else [logger])]
        logger = csv
    logger = _first(logger)
    if _class_name(logger) == "CSVLogger" and str(logger.get("class_path")).split(".")[0] in _LIGHTNING_CSV:
        logger.class_path = CSV_LOGGER  # same options; appends to metrics.csv instead of deleting it
    return logger


def _first(logger: Any) -> Any:
    return logger[0] if isinstance(logger, list) and logger else logger


def _runtime_options(class_path: Any) -> tuple[str, ...]:
    """The ``runtime_options`` of a method config class path (none when it is not one)."""
    if not isinstance(class_path, str) or "." not in class_path:
        return ()
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return ()
    return tuple(getattr(cls, "runtime_options", ()))


def _class_name(node: Any) -> str:
    path = node.get("class_path") if hasattr(node, "get") else None
    return str(path or "").rsplit(".", 1)[-1]


TASK_STREAM_TRAINER_DEFAULTS: dict[str, Any] = {
    "reload_dataloaders_every_n_epochs": 1,  # one epoch is one task: each epoch serves its own task
    "num_sanity_val_steps": -1,  # the full validation before training is the accuracy matrix's zero-shot row
    "use_distributed_sampler": False,  # the task stream shards each task across ranks itself (exact resume)
}
"""Trainer defaults of the ``moram`` command, for a task stream (``max_epochs`` null becomes the number of
tasks). A config that trains on something else sets its own values (``recipes/pretrain_tiny_clip.yaml``)."""


CKPT_PATH_HELP = (
    "Checkpoint to resume from (fit) or to evaluate (validate, test). 'last': the newest *unfinished* run of "
    "this configuration (same model settings and data options) under the logger's folder, continued in its own "
    "run folder (metrics.csv appended, config.yaml kept, history.jsonl extended); other runs are skipped and "
    "never touched. A finished run is never resumed. A file inside a run folder (version_N/checkpoints/) "
    "continues that run."
)

_STRUCTURE = re.compile(
    r"^(Does not validate|Subtypes:|Errors:|- Problem with given class_path"
    r"|- Expected a <class 'NoneType'>|Given value)"
)
_PARSER_KEY = re.compile(r'^(\s*)(?:- )?Parser key "([^"]+)":\s*(.*)$')


def parser_error_line(message: str) -> str:
    r"""The nested report jsonargparse gives of a bad option, as one line: the option's dotted name and the reason.

    >>> report = ['Parser key "model":', '  Errors:', "    - Problem with given class_path 'm.M':",
    ...           '        Parser key "lr":', "          Expected a <class 'float'>. Got value: abc"]
    >>> parser_error_line(chr(10).join(report))
    '--model.lr: expected a float, got value: abc'
    """
    lines = message.splitlines()
    stack: list[tuple[int, str]] = []
    deepest: tuple[int, list[str]] = (-1, [])
    reason = ""
    for i, line in enumerate(lines):
        match = _PARSER_KEY.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        if indent > deepest[0]:
            rest = match.group(3).strip()
            if not rest:
                rest = next((t.strip() for t in lines[i + 1:] if t.strip() and not _STRUCTURE.match(t.strip())), "")
            deepest, reason = (indent, [k for _, k in stack]), rest
    if not reason:
        return _one_line(message)
    unknown = re.fullmatch(r"Option '(\w+)' is not accepted", reason)
    if unknown:
        option = ".".join([*deepest[1], unknown.group(1)])
        return f"--{option}: no such option (--{'.'.join(deepest[1])}.help lists the options there)"
    reason = re.sub(r"<class '([\w.]+)'>", r"\1", reason)
    reason = reason.replace("Expected a ", "expected a ").replace(". Got value:", ", got value:")
    return f"--{'.'.join(deepest[1])}: {reason}"


ATOMS_MOVED = (
    "model.atoms was split in moram 0.3: MoRAM's options are model.method (moram.atoms.MoRAMConfig), "
    "the capacity, targets and seed are model.max_tasks, model.targets and model.seed"
)


def fresh_method_options(args: list[str]) -> list[str]:
    """``args`` where each ``--model.method X`` starts from ``X``'s own defaults.

    jsonargparse keeps the init_args of the previous class_path that the new class also has, so
    ``--config llm_cl.yaml --model.method moram.baselines.OLoRAConfig`` would hand O-LoRA MoRAM's ``scale``
    and ``dropout`` from the config. A ``--model.method null`` is put before each such option, so a method
    given on the command line gets its defaults plus the options given after it.

    Example:
        >>> fresh_method_options(["fit", "--model.method", "OLoRAConfig", "--model.method.rank", "4"])
        ['fit', '--model.method', 'null', '--model.method', 'OLoRAConfig', '--model.method.rank', '4']
    """
    out: list[str] = []
    for arg in args:
        if arg == "--model.method" or arg.startswith("--model.method="):
            out += ["--model.method", "null"]
        out.append(arg)
    return out


class MoramArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, reporting a bad option in one line plus a hint, and moram's meaning of ``ckpt_path``."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        line = parser_error_line(message)
        if re.search(r"\batoms\b", line):  # an option of moram 0.2
            line += f" ({ATOMS_MOVED})"
        print(f"moram: error: {line}\n(all options: {prog} --help; "
              f"{TRACEBACK_ENV}=1 for jsonargparse's full report)", file=sys.stderr)
        sys.exit(2)

    def add_method_arguments(self, *args: Any, **kwargs: Any) -> list[str]:
        added = super().add_method_arguments(*args, **kwargs)
        for action in self._actions:
            if action.dest == "ckpt_path":
                action.help = CKPT_PATH_HELP
        return list(added)


class MoramCLI(LightningCLI):
    """LightningCLI with the continual-run defaults described in the module docstring."""

    def init_parser(self, **kwargs: Any) -> Any:
        """Every parser's help starts with how to list moram's own options (:data:`HELP_GUIDE`)."""
        from jsonargparse import DefaultHelpFormatter

        class _Formatter(DefaultHelpFormatter):  # keep the guide's line breaks
            def _fill_text(self, text: str, width: int, indent: str) -> str:
                return "".join(indent + line for line in text.splitlines(keepends=True))

        description = kwargs.get("description")
        kwargs["description"] = f"{description}\n\n{HELP_GUIDE}" if description else HELP_GUIDE
        kwargs.setdefault("formatter_class", _Formatter)
        kwargs.setdefault("prog", "moram")
        return super().init_parser(**kwargs)

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """Lightning's parsers; the usage line also names ``data`` (handled before LightningCLI, see :func:`entry`)."""
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            self.parser.usage = "moram [-h] [-c CONFIG] {fit,validate,test,predict,data} ..."

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse, then restore the nulls jsonargparse turns into ``"None"`` in nested classes (see below).

        See :func:`_restore_nulls`.
        """
        fresh = fresh_method_options(sys.argv[1:]) if args is None else None
        if fresh is not None and fresh != sys.argv[1:]:
            self.config = parser.parse_args(fresh)  # what LightningCLI does with argv
        else:
            if isinstance(args, (list, tuple)):
                args = fresh_method_options(list(args))
            super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        for group in ("model", "data"):
            _restore_nulls(config.get(group))

    def _resolve_logger_and_last(self, subcommand: str | None, config: Any) -> None:
        """Name the default logger (moram's appending CSV logger), then resolve the checkpoint to resume.

        ``ckpt_path: last`` becomes the newest unfinished run of this configuration
        (:func:`moram.runs.select_run`); a ``fit`` from a checkpoint inside a run folder continues
        that folder; a finished run is never resumed. Every check here reads files only.
        """
        from moram.runs import finished_run, run_folder_of, select_run, version_number

        trainer = config.trainer
        root = Path(trainer.get("default_root_dir") or os.getcwd())
        logger = _run_folder_logger(trainer, root)
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path and subcommand == "fit" and _class_name(logger) in _FOLDER_LOGGERS:
            requeued = requeued_run(root, _log_root(logger, root))
            if requeued is not None:  # a requeued SLURM job: on from its hpc checkpoint, in its own run folder
                config.ckpt_path, logger.init_args.version = str(requeued[0]), requeued[1]
        if not ckpt_path:
            return
        folder_logger = _class_name(logger) in ("AppendingCSVLogger", "TensorBoardLogger") and logger.get("init_args")
        log_root = root / LOG_NAME
        if folder_logger:
            args = logger.init_args
            log_root = Path(args.get("save_dir") or root) / (args.get("name") or LOG_NAME)
        if ckpt_path == "last":
            dirpaths = [Path(c.init_args.dirpath) for c in trainer.get("callbacks") or []
                        if _class_name(c) == "ModelCheckpoint" and c.get("init_args") and c.init_args.get("dirpath")]
            data = _flat(config.data.as_dict()) if subcommand == "fit" and config.get("data") else {}
            run = select_run(log_root, dirpaths, lambda path: self._model_differences(subcommand, str(path)), data)
            config.ckpt_path = str(run.checkpoint)
            run_dir: Path | None = run.run_dir
        else:
            run_dir = run_folder_of(ckpt_path)
            if subcommand == "fit" and finished_run(run_dir):
                raise CheckpointError(
                    f"--ckpt_path {ckpt_path}: run {run_dir} finished all its tasks (its continual_metrics.json says "
                    "so); resuming would overwrite its results. Evaluate it with 'moram test', or start a new run"
                )
        if (subcommand == "fit" and folder_logger and run_dir is not None and version_number(run_dir) >= 0
                and run_dir.parent.resolve() == log_root.resolve()):
            logger.init_args.version = version_number(run_dir)  # keep writing into the run being resumed

    def _model_differences(self, subcommand: str | None, ckpt_path: str) -> str:
        """How the model settings of ``ckpt_path`` differ from the config's ("" when they agree)."""
        from moram.checkpoint import checkpoint_hparams

        hparams = checkpoint_hparams(ckpt_path)
        if not hparams or not subcommand:
            return ""
        before = _flat(self.config[subcommand].model.as_dict())
        parsed = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        after = _flat(parsed[subcommand].model.as_dict())
        keys = sorted(set(before) | set(after))
        diff = {k: (after.get(k), before.get(k)) for k in keys if before.get(k) != after.get(k)}
        if subcommand != "fit":  # evaluating: how to compute at inference (delta, dropout) may differ from training
            runtime = _runtime_options(after.get("method.class_path"))
            diff = {k: v for k, v in diff.items() if not (k.startswith("method.") and k[7:] in runtime)}
        return "; ".join(f"model.{k}: checkpoint {a!r}, config {b!r}" for k, (a, b) in diff.items())

    def _parse_ckpt_path(self) -> None:
        # The one override of a private LightningCLI hook (tests/test_cli_hooks.py fails if Lightning
        # renames it or stops calling it right after parsing, before any class is built). Lightning's
        # version silently replaces the model options by the checkpoint's hyperparameters; moram
        # instead resolves `last` and the run folder, upgrades the hyperparameters of checkpoints
        # written before the composed module (moram.checkpoint.upgrade_hparams), and refuses a
        # checkpoint trained with other settings (atoms, backbone, method), naming each difference.
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        given = config.get("ckpt_path")
        if given and given != "last" and not Path(given).exists():
            raise DataNotFoundError(f"--ckpt_path {given}: no such file; give a checkpoint file, or 'last'")
        self._resolve_logger_and_last(subcommand, config)
        if not subcommand:
            return
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).exists():  # a file, or an FSDP2 folder of shards
            return
        if given == "last":
            return  # select_run compared this checkpoint's model settings already: they agree
        diff = self._model_differences(subcommand, ckpt_path)
        if diff:
            raise CheckpointError(
                f"the checkpoint {ckpt_path} was trained with other model settings ({diff}); "
                "use the config it was trained with, or a checkpoint that matches this one"
            )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with a task stream's callbacks added and ``max_epochs`` = its number of tasks."""
        if is_task_stream(self.datamodule):
            node = self.config_init.get(self.subcommand) if self.subcommand else self.config_init
            config = {**dict(node.get("trainer") or {}), **kwargs}
            configured = config.get("callbacks") or []
            configured = list(configured) if isinstance(configured, (list, tuple)) else [configured]
            progress_bar = config.get("enable_progress_bar") is not False
            kwargs["callbacks"] = configured + continual_callbacks(configured, self.model, progress_bar)
            tasks = self.datamodule.num_tasks
            if config.get("max_epochs") is None:
                kwargs["max_epochs"] = tasks
            elif config["max_epochs"] != tasks:
                raise ConfigError(
                    f"trainer.max_epochs={config['max_epochs']} but the task stream has {tasks} tasks "
                    "(one epoch per task); leave trainer.max_epochs null"
                )
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """Say when torch's threads outnumber the free cores (:func:`thread_warning`; off: MORAM_THREAD_WARNING=0)."""
        import torch

        if os.environ.get("MORAM_THREAD_WARNING", "1") == "0":
            return
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        message = thread_warning(torch.get_num_threads(), os.cpu_count() or 1, load)
        if message and int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
            print(message, file=sys.stderr, flush=True)

    # Results are written by then (callbacks save on rank 0 during fit); end every rank together so a
    # multi-process gloo run does not abort at interpreter exit (moram.distributed). LightningCLI calls
    # these after a subcommand succeeded only: a rank that failed must not wait in a barrier its peers
    # may never reach.
    def after_fit(self) -> None:
        log_dir = self.trainer.log_dir  # a collective: every rank asks
        if log_dir and self.trainer.is_global_zero:
            print(files_written(Path(log_dir)), flush=True)
        self._finish()

    def after_validate(self) -> None:
        self._finish()

    def after_test(self) -> None:
        self._finish()

    def after_predict(self) -> None:
        self._finish()

    @staticmethod
    def _finish() -> None:
        from moram.distributed import finish_distributed

        finish_distributed()


def thread_warning(threads: int, cores: int, load: float) -> str | None:
    """A warning when ``threads`` (torch's per process) exceed the free cores (``cores`` minus the load), else None.

    >>> thread_warning(2, 2, 0.1) is None
    True
    >>> thread_warning(2, 2, 1.5).split(";")[0]
    'moram: torch uses 2 threads but about 0.5 of 2 cores are free (load 1.5)'
    """
    free = max(cores - load, 0.0)
    if threads <= 1 or threads <= free + 0.5:
        return None
    return (
        f"moram: torch uses {threads} threads but about {free:.1f} of {cores} cores are free (load {load:.1f}); "
        "on a busy machine extra threads can cost several times the CPU time. Set OMP_NUM_THREADS to the free "
        "cores (1 here) to avoid it; note that results are bit-identical only at the same thread count"
    )


def files_written(log_dir: Path) -> str:
    """A listing of the run folder: every file the run wrote (checkpoint folders as one entry)."""
    lines = [f"Run folder {log_dir}:"]
    for path in sorted(log_dir.rglob("*")):
        inside_ckpt = any(p.suffix == ".ckpt" for p in path.relative_to(log_dir).parents if p.name)
        if inside_ckpt or not (path.is_file() or path.suffix == ".ckpt"):
            continue
        lines.append(f"  {path.relative_to(log_dir)}")
    return "\n".join(lines)


def user_error(err: BaseException) -> str | None:
    """The one-line message of the user error behind ``err`` (following its causes), else None (a bug).

    A user error is one of moram's own :class:`~moram.errors.MoramError` family (a bad option value,
    missing data, a checkpoint of another model, ...) or jsonargparse's report of a bad option (which
    names the option). Anything else is a bug: ``entry`` lets it through with its full traceback.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    found: str | None = None
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, MoramError):
            return _one_line(str(e) if not isinstance(e, KeyError) else str(e.args[0] if e.args else e))
        if type(e).__name__ == "ArgumentError" and found is None:
            found = _one_line(str(e))
        pending.extend([e.__context__, e.__cause__])
    return found


# a method config's fields are model.method options
_OPTION_NAMES = {r"\b(?!AtomConfig)[A-Z]\w*Config\.": "model.method."}

def _one_line(message: str) -> str:
    for pattern, option in _OPTION_NAMES.items():
        message = re.sub(rf"{pattern}(\w+)", rf"{option}\1", message)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    # jsonargparse nests the cause under "Problem with given class_path ...": keep the innermost reason
    for i, line in enumerate(lines):
        if line.startswith("- Problem with given class_path") and i + 1 < len(lines):
            return lines[i + 1]
    return " ".join(lines[:3]) if lines else message


def main(args: list[str] | None = None, run: bool = True) -> MoramCLI:
    """Entry point of the ``moram`` console script (``args`` defaults to ``sys.argv[1:]``)."""
    from moram.callbacks.trackers import TrackerConfigCallback

    quiet()
    if nested_help(sys.argv[1:] if args is None else args):
        sys.exit(0)
    return MoramCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TASK_STREAM_TRAINER_DEFAULTS,
        parser_class=MoramArgumentParser,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        save_config_callback=TrackerConfigCallback,  # config.yaml, and the config in TensorBoard/MLflow/W&B
    )


def entry() -> None:
    """The ``moram`` console script: ``moram data ...`` for datasets, else the Lightning subcommands.

    A user error (:func:`user_error`) ends it with one line on stderr and exit code 2;
    ``MORAM_TRACEBACK=1`` re-raises it with the full traceback. Any other exception propagates (a bug).
    """
    try:
        if sys.argv[1:2] == ["data"]:
            from moram.data.benchmarks.prepare import main as data_main

            sys.exit(data_main(sys.argv[2:]))
        main()  # LightningCLI reads sys.argv itself; returning None exits 0
    except Exception as err:
        message = user_error(err)
        if message is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"moram: error: {message}\n(set {TRACEBACK_ENV}=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    entry()
