"""Adapter-only checkpoints: what a run cannot rebuild, and the fingerprint of what it rebuilds.

A moram checkpoint holds the atoms (current Parameters, frozen buffers, counters), every other
trainable tensor, and whatever Lightning adds (optimizer, schedulers, loops, callbacks, RNG). The
frozen backbone is *not* in it: the module rebuilds it from its source (open_clip tag, weight
file, ``packaged`` weights, LM folder or config) before the checkpoint is restored, so a
checkpoint grows with the atoms, not with the backbone (docs/design.md §3).

Instead, ``checkpoint["moram_checkpoint"]`` records:

* ``format`` (:data:`FORMAT`) and the moram version that wrote it;
* ``kept``: the state-dict keys it holds, which a resume must find in the model;
* ``backbone``: a fingerprint — the backbone's build options (``model_config``, ``pretrained``,
  ...: :meth:`moram.backbones.base.Backbone.build_options`), the names, shapes and dtypes of every
  frozen tensor, and a SHA-256 over the bytes of a
  few of them (the four largest of at most 4 M elements: cheap even for a 1B-parameter LM).
  Resuming on another backbone is refused with a message naming both.

Checkpoints written before this format (they hold the whole backbone and no ``moram_checkpoint``)
still load: their backbone entries are loaded over the rebuilt backbone, as before.

Under FSDP2 (``moram.strategies.FSDP2Strategy``) the sharded checkpoint folder holds the same
keys; :func:`load_sharded_state` reads just those. Every rank computes the fingerprint (reading a
sharded tensor in full is a collective, done in the same order everywhere). Under FSDP1
(``FSDPStrategy``) the fingerprint holds the build options only: its flattened shards have no
per-tensor shapes to hash (that path is untested: FSDP1 needs CUDA).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from moram.errors import CheckpointError

# reading what earlier versions wrote lives in moram.upgrades; these names stay importable from here
from moram.upgrades import LEGACY_MODULES, stored_task_count, upgrade_hparams  # noqa: F401

FORMAT = 2  # 1 (implicit): the full state dict, backbone included
KEY = "moram_checkpoint"
SAMPLE_LIMIT = 1 << 22  # elements: tensors up to this size may be hashed in full
SAMPLES = 4




def clean_key(name: str) -> str:
    """``name`` without the parts wrappers (FSDP1, activation checkpointing, compile) insert."""
    from moram.protocols import clean_name

    return clean_name(name)


FINGERPRINT_CACHE = "_moram_backbone_fingerprint"
"""Attribute of the module holding its fingerprint, computed at the first checkpoint of the run."""


def _is_fsdp1(module: nn.Module) -> bool:
    return any(type(m).__name__ == "FullyShardedDataParallel" for m in module.modules())


def adapter_keys(module: nn.Module) -> set[str]:
    """The state-dict keys a checkpoint of ``module`` holds: everything but the frozen backbone.

    That is every tensor of an adapted (continual) layer outside its frozen ``base`` layer — the
    atoms, frozen atom buffers and counters, baselines' routers and experts — plus any parameter
    that trains.
    """
    from moram.protocols import continual_layers

    keep = {clean_key(n) for n, p in module.named_parameters() if p.requires_grad}
    layers = {id(layer) for _, layer in continual_layers(module)}
    for name, sub in module.named_modules():  # names as in module.state_dict(), whatever a host reports
        if id(sub) in layers:
            prefix = clean_key(name) + "."
            keep.update(prefix + clean_key(k) for k in sub.state_dict(keep_vars=True) if not k.startswith("base."))
    return keep


def _frozen_entries(module: nn.Module, keep: set[str]) -> dict[str, Tensor]:
    entries = {clean_key(k): v for k, v in module.state_dict(keep_vars=True).items()}
    return {k: v for k, v in sorted(entries.items()) if k not in keep}


def _tensor_bytes(t: Tensor) -> bytes:
    from moram.distributed import full_value

    value = full_value(t.detach()).cpu().contiguous().reshape(-1)
    return value.view(torch.uint8).numpy().tobytes() if value.numel() else b""


def backbone_fingerprint(module: nn.Module, keep: set[str] | None = None) -> dict[str, Any]:
    """The backbone's build options and a hash of its frozen tensors (see the module docstring).

    ``keep``: :func:`adapter_keys` of ``module`` when the caller has it already.
    """
    host: Any = module  # a moram.module.ContinualModule: its backbone plugin's build options
    options = {k: _plain(v) for k, v in host.backbone_options().items()}
    record: dict[str, Any] = {"class": type(host.backbone).__name__, "options": options}
    if _is_fsdp1(module):
        record["weights"] = "not hashed under FSDP1"
        return record
    frozen = _frozen_entries(module, adapter_keys(module) if keep is None else keep)
    digest = hashlib.sha256()
    for name, t in frozen.items():
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    small = [(t.numel(), name) for name, t in frozen.items() if 0 < t.numel() <= SAMPLE_LIMIT]
    for _, name in sorted(small, reverse=True)[:SAMPLES]:  # same names, same order on every rank
        digest.update(_tensor_bytes(frozen[name]))
    record["tensors"] = len(frozen)
    record["weights"] = digest.hexdigest()[:16]
    return record


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def describe(fingerprint: dict[str, Any]) -> str:
    """One line naming a backbone: its options and its weights' hash."""
    options = ", ".join(f"{k}={v!r}" for k, v in fingerprint.get("options", {}).items() if v is not None)
    return f"{fingerprint.get('class', '?')}({options}) weights {fingerprint.get('weights', '?')}"


# --------------------------------------------------------------------------------------- save / load


def strip_backbone(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Drop the frozen backbone from ``checkpoint["state_dict"]`` and record what it holds (in place)."""
    from moram import __version__

    state = checkpoint.get("state_dict")
    keep = adapter_keys(module)
    # The backbone is frozen for the whole run: hash it at the first save only (on every rank, the
    # same saves, so the collectives that reading sharded tensors needs stay matched).
    fingerprint = getattr(module, FINGERPRINT_CACHE, None)
    if fingerprint is None:
        fingerprint = backbone_fingerprint(module, keep)
        setattr(module, FINGERPRINT_CACHE, fingerprint)
    if isinstance(state, dict):
        for key in [k for k in state if clean_key(k) not in keep]:
            del state[key]
        kept = sorted(clean_key(k) for k in state)
    else:
        kept = sorted(keep)
    checkpoint[KEY] = {"format": FORMAT, "version": __version__, "kept": kept, "backbone": fingerprint}


def check_resume(module: nn.Module, checkpoint: dict[str, Any], path: str | Path | None) -> None:
    """Refuse ``checkpoint`` unless it resumes ``module``: same backbone, every adapter key present.

    A checkpoint of the old format (the whole state dict, no ``moram_checkpoint``) passes: it
    carries its backbone. ``checkpoint["state_dict"]`` is checked when present (it is not for a
    sharded folder, whose keys :func:`load_sharded_state` checks).
    """
    where = f"the checkpoint {path}" if path else "the checkpoint"
    info = checkpoint.get(KEY)
    if info is None:
        return
    if int(info.get("format", 0)) > FORMAT:
        raise CheckpointError(
            f"{where} was written by moram {info.get('version')} (checkpoint format {info.get('format')}), "
            f"newer than this one (format {FORMAT}); upgrade moram to resume it"
        )
    mine = backbone_fingerprint(module)
    theirs = info.get("backbone", {})
    if theirs.get("weights") != mine.get("weights") or theirs.get("options") != mine.get("options"):
        raise CheckpointError(
            f"{where} was trained on another backbone: checkpoint {describe(theirs)}, this run {describe(mine)}; "
            "resume with the model options and weights it was trained with"
        )
    state = checkpoint.get("state_dict")
    if isinstance(state, dict):
        check_keys(module, {clean_key(k) for k in state}, where)


def check_keys(module: nn.Module, stored: set[str], where: str) -> None:
    """Raise unless ``stored`` holds every adapter key of ``module`` and only keys ``module`` has."""
    own = {clean_key(k) for k in module.state_dict(keep_vars=True)}
    missing = sorted(adapter_keys(module) & own - stored)
    unexpected = sorted(stored - own)
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} adapter entries (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} entries this model does not have (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"{where} does not match this model: {'; '.join(detail)}; resume with the config it was "
            "trained with (its run directory's config.yaml)"
        )


def load_sharded_state(module: nn.Module, path: Path) -> None:
    """Load a sharded (torch.distributed.checkpoint) folder's model entries into ``module``.

    Only the keys the folder holds are requested, so an adapter-only folder restores over the
    rebuilt backbone; :func:`check_keys` first makes sure no adapter entry is missing.
    """
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    stored_meta = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    stored = {k.removeprefix("state_dict.") for k in stored_meta if k.startswith("state_dict.")}
    check_keys(module, {clean_key(k) for k in stored}, f"the checkpoint {path}")
    state = {k: v for k, v in get_model_state_dict(module).items() if k in stored}
    wrapped = {"state_dict": state}
    load(wrapped, checkpoint_id=path)
    module.load_state_dict(wrapped["state_dict"], strict=False)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` of a checkpoint file (tensors only, on CPU); an unreadable file is a :class:`CheckpointError`.

    A sharded (FSDP2) checkpoint folder is read through its metadata file: everything but the shards.
    """
    if Path(path).is_dir():
        from lightning.fabric.utilities.load import _METADATA_FILENAME

        if not (Path(path) / _METADATA_FILENAME).is_file():
            raise CheckpointError(f"{path} is a folder without {_METADATA_FILENAME}: not a sharded checkpoint")
        path = Path(path) / _METADATA_FILENAME
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"cannot read the checkpoint {path} ({reason}): a truncated or partly written file, or not a "
            "checkpoint; give another one (a run keeps its newest periodic checkpoint beside last.ckpt)"
        ) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


def checkpoint_hparams(path: str | Path) -> dict[str, Any]:
    """The model hyperparameters of a checkpoint file in ``class_path`` form (upgraded from moram 0.1), or {}."""
    checkpoint = read_checkpoint(path)
    hparams = upgrade_hparams(dict(checkpoint.get("hyper_parameters") or {}))
    hparams.pop("_instantiator", None)
    if "_class_path" in hparams:
        return {"class_path": hparams.pop("_class_path"), "init_args": hparams}
    return hparams
