"""moram's own errors: the problems moram detects in what a user gave it.

Every error moram raises because of a user's input (a config value, a data folder, a checkpoint or
adapter file, a loss that diverged) is a :class:`MoramError`. The command line prints such an error
as one line (plus a hint) and exits with status 2; anything else is a bug and keeps its traceback.

Each subclass also derives from the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``, ...), so ``except ValueError`` written against earlier versions still catches it.
"""

from __future__ import annotations

__all__ = [
    "AdapterFileError",
    "CapacityError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "MoramError",
    "NonFiniteLossError",
    "StateError",
]


class MoramError(Exception):
    """Base of the errors moram raises about a user's input (printed as one line by the CLI)."""


class ConfigError(MoramError, ValueError):
    """An option has a value moram cannot use; the message names the option."""


class DataError(MoramError, ValueError):
    """A dataset, task or file of data is malformed or empty; the message names it."""


class DataNotFoundError(MoramError, FileNotFoundError):
    """A dataset root or data file does not exist; the message names the option or path to fix."""


class CheckpointError(MoramError, ValueError):
    """A checkpoint cannot be read or does not fit the configured model."""


class StateError(MoramError, ValueError):
    """A state dict or adapter file does not fit the model's continual layers."""


class AdapterFileError(StateError):
    """An adapter folder is not one moram wrote, or does not fit the model (layers, methods, settings)."""


class CapacityError(MoramError, RuntimeError):
    """A continual layer is full: the run has more tasks than ``model.max_tasks`` allows."""


class NonFiniteLossError(MoramError, FloatingPointError):
    """The training loss became NaN or infinite; nothing was updated."""
